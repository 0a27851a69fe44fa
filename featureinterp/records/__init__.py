"""Per-feature records (paper-method.md sections 1.5, 2, 3): what explainers and scores read.

- ``sources``: positives and the six complementary sources, splits, the records table's rows.
- ``build``: one feature's records end to end (row selection, splits, the table, its checks).
- ``formatting``: records as the prompts show them (activations on a 0..5 scale).
"""
