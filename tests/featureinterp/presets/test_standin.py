"""Stand-in runs of the three paper presets, end to end through the three figures.

What a user would check after `FEATUREINTERP_PRESET=<preset> featureinterp run --standin`: every
asset of the slice materialized, finite scores, the preset's simulator prompt in use (chat layout
with the template's BOS, the paper's `unknown` placeholder), the explainer reached over the
OpenAI-compatible API, and no model loaded twice in one Dagster run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from featureinterp.explain.conditions import get_condition
from featureinterp_assets.resources import LOAD_LINE
from tests.conftest import CACHE

LAYER, FEATURES = "L00", ("F0000", "F0001")


def _conditions(preset: str) -> tuple[str, ...]:
    """Figure 4's structured cells; on Gemma also Figure 3's one-shot, whose explainer is another
    model on the same API route, and a holistic one-shot (the paper's corpus-wide holistic scale)."""
    gemma = ("fig3_one_shot", "one_shot_structured_holistic")
    return ("one_shot", "tree") + (gemma if preset == "gemma-2-9b" else ())


def _run_standin(preset: str, root: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = os.environ | {
        "FEATUREINTERP_PRESET": preset,
        "FEATUREINTERP_HOME": str(root / "home"),
        "FEATUREINTERP_MODELS": str(CACHE / "models"),  # converted tokenizers shared with other tests
        "DAGSTER_HOME": str(root / "dagster"),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "run", "--standin", "--layers", LAYER]
    cmd += ["--features", "0,1", "--conditions", ",".join(_conditions(preset))]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    return proc, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2-small", "gemma-2-9b", "llama-3.1-8b"])
def test_standin_run_of_a_paper_preset(preset, tmp_path, monkeypatch):
    conditions = _conditions(preset)
    proc, wall = _run_standin(preset, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    print(f"stand-in {preset}: {wall:.0f} s")
    assert proc.stdout.count("meaningless by design") == 2  # said first and last

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    instance = dg.DagsterInstance.get()
    for key in ("corpus_tokens", "corpus_embeddings", "fig3", "fig4", "fig5"):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    for key in ("sae", "sae_activations", "layer_results"):
        assert LAYER in instance.get_materialized_partitions(dg.AssetKey(key)), key
    keys = {dg.MultiPartitionKey({"layer": LAYER, "feature": f}) for f in FEATURES}
    for key in ["records"] + [f"{kind}/{c}" for c in conditions for kind in ("explanations", "scores")]:
        assert keys <= instance.get_materialized_partitions(dg.AssetKey(key.split("/"))), key

    storage = tmp_path / "home" / "storage" / f"{preset}-standin"
    finite = 0
    for cond in conditions:
        for feature in FEATURES:
            score = json.loads((storage / "scores" / cond / feature / LAYER / "value.json").read_text())
            expl = json.loads((storage / "explanations" / cond / feature / LAYER / "value.json").read_text())
            if math.isfinite(score["score"]):
                finite += 1
            else:  # only legitimate when the random explainer gave every rule strength 0
                rules = expl["explanation"]["rules"]
                assert score["reason"] == "predictions are constant", (cond, feature, score["reason"])
                assert all(r["strength"] <= 0 for r in rules), (cond, feature, rules)
            assert expl["explainer"].startswith("standin/") and expl["usage"]["requests"] >= 1
            model = get_condition(cond).explainer_model or "meta-llama/llama-4-scout"
            assert expl["explainer"] == f"standin/{model}", (cond, expl["explainer"])
        record = instance.fetch_materializations(dg.AssetKey(["scores", cond]), limit=1).records[0]
        simulator = record.asset_materialization.metadata["simulator"].value
        assert simulator["layout"] == "chat" and simulator["bos"] and simulator["placeholder"] == "unknown"
    assert finite >= len(conditions) * len(FEATURES) - 1, (
        "the simulator path must score nearly every partition"
    )
    for name in ("fig3", "fig4", "fig5"):
        assert (storage / "figures" / f"{name}.png").stat().st_size > 10_000
    if "one_shot_structured_holistic" in conditions:  # the paper's scale: the whole corpus's maximum
        for feature in FEATURES:
            hol = storage / "holistic_activations" / feature / LAYER
            meta = json.loads((hol / "meta.json").read_text()) if (hol / "meta.json").exists() else None
            assert meta is not None and meta["holistic_scale"] == "corpus", (feature, sorted(os.listdir(hol)))
            shown = float(np.load(hol / "holistic.npy").max())  # the rows its records show
            assert meta["max_holistic"] >= shown - 1e-6 and meta["max_holistic"] > 0, (meta, shown)

    loads_per_run: dict[str, Counter] = {}
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            match = LOAD_LINE.search(entry.user_message or "")
            if match:
                loads_per_run.setdefault(run.run_id, Counter())[match.group(1)] += 1
    # `featureinterp run` runs every partition in its own Dagster run, all in one process: each
    # model is read once for the whole invocation, not once per partition
    total = sum(loads_per_run.values(), Counter())
    assert total == Counter(subject=1, simulator=1), loads_per_run
