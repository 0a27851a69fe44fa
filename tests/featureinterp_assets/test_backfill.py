"""A layer's explain + score partitions backfilled the way the Dagster UI launches them.

The backfill goes into the instance (what the UI's "Materialize partitions" dialog does), the real
`dagster-daemon` picks it up and launches its run in a fresh process, and the explainer is a real
OpenAI-compatible server (the gemma-2-9b stand-in's). The server answers nonsense to every request
about one feature in the middle of the range, as a misbehaving API would: that feature must fail
alone, the others must be stored, a re-launch must run only it, each model must load once per run,
and the values must equal those of ordinary one-partition runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from featureinterp.llm.backend import ChatBackend, Completion
from featureinterp.presets import get_preset
from featureinterp.storage import load_table
from featureinterp_assets import cli
from featureinterp_assets.definitions import build_definitions
from featureinterp_assets.resources import LOAD_LINE
from featureinterp_assets.standin_server import start_standin
from tests.conftest import CACHE
from tests.helpers import BACKFILL_ID_TAG, BulkActionStatus, launch_backfill, start_daemon, stop_daemon

pytestmark = pytest.mark.slow
LAYER, FEATURES = "L05", ("F0000", "F0001", "F0002")
BROKEN = "F0001"
CONDITIONS = ("one_shot", "tree")
ASSETS = [dg.AssetKey([kind, c]) for c in CONDITIONS for kind in ("explanations", "scores")]


class _Faulty(ChatBackend):
    """The served explainer, except that requests showing ``marker`` get a reply that is no
    explanation at all (the explainer re-asks a bounded number of times, then gives up)."""

    def __init__(self, inner: ChatBackend):
        self.inner, self.name, self.usage = inner, inner.name, inner.usage
        self.marker: str | None = None
        self.refused = 0

    def generate(self, messages, params):
        if self.marker and any(self.marker in m["content"] for m in messages):
            self.refused += 1
            return [
                Completion("Sorry, I can't tell.", "stop", f"fault-{self.refused}-{i}")
                for i in range(params.n)
            ]
        return self.inner.generate(messages, params)

    def next_token_logprobs(self, messages, reply_prefix, candidates):
        return self.inner.next_token_logprobs(messages, reply_prefix, candidates)


def _marker(storage: Path) -> str:
    """A token line shown only in the broken feature's records (so only its prompts carry it)."""
    tokens = {}
    for f in FEATURES:
        frame = load_table(storage / "records" / f / LAYER).frame
        tokens[f] = {t for row in frame["tokens"].to_list() for t in row}
    others = set().union(*(tokens[f] for f in FEATURES if f != BROKEN))
    only = sorted(t for t in tokens[BROKEN] - others if len(t.strip()) >= 4 and t.strip().isalpha())
    assert only, "the broken feature's records share every word with the others"
    return "\n" + only[0] + "\t"


def _wait(instance, backfill_id: str, timeout: float = 900) -> list[dg.DagsterRun]:
    """The backfill's runs once the daemon has launched them and they have finished."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        backfill = instance.get_backfill(backfill_id)
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        if backfill.status != BulkActionStatus.REQUESTED and runs and all(r.is_finished for r in runs):
            return runs
        time.sleep(2)
    raise AssertionError(
        f"backfill {backfill_id} did not finish: {instance.get_backfill(backfill_id).status}"
    )


def _launch(instance, defs, partitions: list[str]) -> str:
    return launch_backfill(instance, defs, ASSETS, partitions)


def _loads(instance, run_id: str) -> Counter:
    return Counter(
        m.group(1) for e in instance.all_logs(run_id) for m in [LOAD_LINE.search(e.user_message or "")] if m
    )


def _value(storage: Path, key: dg.AssetKey, feature: str) -> dict:
    value = json.loads((storage.joinpath(*key.path) / feature / LAYER / "value.json").read_text())
    # cost accounting is not a result: a ranged run's simulator memo already holds the values of
    # records that features share (random rows), so it pays fewer forward tokens for equal scores
    cost = ("usage", "completions", "simulator_tokens")
    return {k: v for k, v in value.items() if k not in cost}


def test_ui_backfill_of_a_layer_loads_once_and_fails_one_feature_alone(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = {
        "FEATUREINTERP_HOME": str(home),
        "FEATUREINTERP_MODELS": str(CACHE / "models"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "HF_HUB_OFFLINE": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # upstream of the explain stage (tokens, SAE, activations, embeddings, records), not under test
    cli.run("gemma-2-9b", False, explain=False, features=[0, 1, 2], layers=[LAYER], standin=True)
    preset = get_preset("gemma-2-9b-standin")
    storage = home / "storage" / preset.name
    monkeypatch.setenv("FEATUREINTERP_PRESET", preset.name)

    faulty = None

    def serve(backend):
        nonlocal faulty
        faulty = _Faulty(backend)
        return faulty

    _, server = start_standin("gemma-2-9b", serve=serve)  # sets the stand-in URL and key
    faulty.marker = _marker(storage)
    daemon = start_daemon(tmp_path / "daemon.log")
    try:
        instance = dg.DagsterInstance.get()
        defs = build_definitions(preset)
        keys = [str(dg.MultiPartitionKey({"layer": LAYER, "feature": f})) for f in FEATURES]
        broken = str(dg.MultiPartitionKey({"layer": LAYER, "feature": BROKEN}))

        runs = _wait(instance, _launch(instance, defs, keys))
        assert len(runs) == 1, "a layer's features must share one run"
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert _loads(instance, run.run_id) == Counter(simulator=1)  # the explainer is the API
        assert faulty.refused > 0
        ok = set(keys) - {broken}
        for key in ASSETS:
            assert instance.get_materialized_partitions(key) == ok, key
        status = instance.get_status_by_partition(
            ASSETS[0], keys, defs.resolve_asset_graph().get(ASSETS[0]).partitions_def
        )
        assert (
            status[broken] == dg.AssetPartitionStatus.FAILED
            and status[keys[0]] == dg.AssetPartitionStatus.MATERIALIZED
        )
        failure = [
            e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure
        ]
        assert all(broken in e.dagster_event.step_failure_data.error.message for e in failure), failure
        first = {(key, f): _value(storage, key, f) for key in ASSETS for f in FEATURES if f != BROKEN}

        faulty.marker = None  # the API is well again: re-launch the failed partitions only
        runs = _wait(instance, _launch(instance, defs, [broken]))
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert _loads(instance, runs[0].run_id) == Counter(simulator=1)
        made = {
            (e.dagster_event.asset_key, e.dagster_event.partition)
            for e in instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        }
        assert made == {(key, broken) for key in ASSETS}
        for key in ASSETS:
            assert instance.get_materialized_partitions(key) == set(keys), key
    finally:
        stop_daemon(daemon)
        server.stop()

    _, server = start_standin("gemma-2-9b")
    try:
        # --partition-range through the Dagster CLI: one run, one process, re-scores the features
        select = ",".join(k.to_user_string() for k in ASSETS if k.path[0] == "scores")
        cmd = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m"]
        cmd += [
            "featureinterp_assets.definitions",
            "--select",
            select,
            "--partition-range",
            f"{keys[0]}...{keys[-1]}",
        ]
        proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        latest = instance.get_runs(limit=1)[0]
        assert _loads(instance, latest.run_id) == Counter(simulator=1)
        # equal to an ordinary one-partition run: the first feature materialized on its own;
        # definitions built again, since the preset they carry names the new server's URL
        defs = build_definitions(get_preset("gemma-2-9b-standin"))
        result = dg.materialize(
            list(defs.assets),
            selection=[k.to_user_string() for k in ASSETS],
            instance=instance,
            resources=defs.resources,
            partition_key=keys[0],
        )
        assert result.success
    finally:
        server.stop()
    for (key, f), value in first.items():
        if f == FEATURES[0] or key.path[0] == "scores":
            assert _close(_value(storage, key, f), value), (key, f)


def _close(a: object, b: object, rel: float = 1e-5) -> bool:
    """Equal values, floats to ``rel``: a ranged run reads the complexity header from the prefix
    cache its previous partition stored, a one-partition run prefills it, and the two forward
    passes round differently in the last digits (the explanations and scores themselves match)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b) or abs(a - b) <= rel * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    return a == b
