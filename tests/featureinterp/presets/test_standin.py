"""Stand-in runs of the three paper presets, end to end through the three figures.

What a user would check after `FEATUREINTERP_PRESET=<preset> featureinterp run --standin`: every
asset of the slice materialized, finite scores, the preset's simulator prompt in use (chat layout
with the template's BOS, the paper's `unknown` placeholder), the explainer reached over the
OpenAI-compatible API, and no model loaded twice in one Dagster run.
"""

from __future__ import annotations

import pytest

from featureinterp_assets.standin_checks import check_standin_run, run_standin
from tests.conftest import CACHE


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2-small", "gemma-2-9b", "llama-3.1-8b"])
def test_standin_run_of_a_paper_preset(preset, tmp_path):
    """The checks live in featureinterp_assets.standin_checks: scripts/gpu-check asserts the same
    on CUDA, in the presets' real dtypes."""
    proc, wall = run_standin(preset, tmp_path, CACHE / "models")
    print(f"stand-in {preset}: {wall:.0f} s")
    facts = check_standin_run(preset, tmp_path, proc)
    assert facts["finite_scores"] >= facts["scores"] - 1
