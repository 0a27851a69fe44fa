"""Subject models, SAEs and what their features do on the corpus (paper-method.md 1.2, 1.3).

- ``models``: loading a subject model, the residual-stream hook point, stop-at-layer passes.
- ``sae``: SAEs in sae-lens format (released, on disk, or trained here), loaded and validated.
- ``sae_training``: a small TopK SAE trained on the residual stream (the embedded default).
- ``latents``: the studied features' activations over every corpus row.
- ``holistic``: leave-one-token-out activations.
- ``kv_cache``: sharing a prefilled key/value cache (holistic values, the simulator, explainers).
"""
