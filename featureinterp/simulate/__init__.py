"""Simulation and scores (paper-method.md sections 5, 6): what an explanation predicts, and
how well.

- ``simulator``: all-at-once simulation of an explanation with a local causal LM.
- ``memory``: records per simulator forward pass, from the free accelerator memory.
- ``scoring``: simulated vs true activations (pooled Pearson and the other metrics).
- ``evaluate``: one explanation's test-time evaluation, per complementary source.
- ``baselines``: the null and true-rule reference scores every score is read against.
- ``synthetic``: synthetic features with a known rule, ground truth for the simulator.
- ``summary``: the results table per layer x condition (mean, spread, null, counts).
- ``previews``: a small picture of one score, token by token.
- ``scorers/``: the cheap second opinions (detection, fuzzing, embedding) and their agreement.
"""
