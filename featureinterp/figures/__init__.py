"""The paper's figures (paper-method.md section 9) and the calibration figure.

- ``grids``: the experiment grid each figure draws (layers, features, conditions).
- ``paper``: Figures 3, 4 and 5 from one long table of per-feature results.
- ``panels``, ``detection``: the paper scripts' other panels; Figure 3's detection view.
- ``calibration``: what the synthetic features say about the simulator and the explainers.
- ``comparisons``: which of Figure 4's comparisons its test-record intervals cannot separate.
- ``common``: what the figures share (result schema, writing PNGs atomically).
"""
