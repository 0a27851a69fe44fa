"""End to end through the command lines a user types (real subprocesses, real instance on disk)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.end_to_end import run_log, stage_seconds
from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(args, env, timeout=1800):
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path, model_cache):
    (tmp_path / "dagster_home").mkdir()
    return {
        **os.environ,
        "FEATUREINTERP_PRESET": "embedded-tiny",
        "FEATUREINTERP_HOME": str(tmp_path / "home"),
        "FEATUREINTERP_MODELS": str(model_cache),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }


def test_dagster_cli_then_featureinterp_run_resumes(env, tmp_path):
    storage = tmp_path / "home" / "storage" / "embedded-tiny"
    first = _run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "featureinterp_assets.definitions",
            "--select",
            "corpus_tokens",
        ],
        env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert (storage / "corpus_tokens" / "__all__" / "tokens.npy").exists()
    stamp = (storage / "corpus_tokens" / "__all__" / "tokens.npy").stat().st_mtime_ns

    # Kill the run (SIGKILL, whole process group) once two records partitions are complete, then
    # relaunch: finished partitions are not recomputed, nothing half-written is read.
    finished, stranded = _kill_when_records_done(env, storage, n=2)
    assert stranded  # killed inside a run: the sweep below has work to do
    before = {p: (storage / "records" / p / "table.parquet").stat().st_mtime_ns for p in finished}

    run = _run([BIN / "featureinterp", "run", "--conditions", "one_shot"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    # the killed process's run (records) is marked failed, not left STARTED forever (issue 28 #9)
    assert "that a killed process left STARTED" in run.stdout
    assert all(run_id in run.stdout for run_id in stranded)
    import dagster as dg

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        active = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
        assert instance.get_runs(filters=dg.RunsFilter(statuses=active)) == []
        assert instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    _check_quiet(run, storage)
    log = run_log(run.stdout)  # quiet: the per-run lines are in the log file
    assert "materializing corpus_tokens" not in log  # resumed: tokens already there
    assert "materializing sae, sae_activations" not in log  # finished before the kill
    assert "holistic_activations" not in log  # no condition of this run prompts with them
    stages = stage_seconds(log)  # what benchmarks.end_to_end reports per stage
    explain = "explanations/one_shot, scores/one_shot, baselines"
    assert {"records", explain, "fig3, fig4, fig5, fig_calibration"} <= set(stages), stages
    assert stages[explain] > 0
    for p in finished:
        assert (storage / "records" / p / "table.parquet").stat().st_mtime_ns == before[p]
    assert (storage / "corpus_tokens" / "__all__" / "tokens.npy").stat().st_mtime_ns == stamp
    for key in ("L03", "L06"):
        assert (storage / "sae_activations" / key / "acts.npy").exists()

    for key in ("F0000/L03", "F0001/L06", "F0000/SYN"):
        assert (storage / "scores" / "one_shot" / key / "value.json").exists()
    assert (storage / "figures" / "fig5.png").exists()
    assert "figures (" in run.stdout and "dagster dev" in run.stdout  # where to look, at the end
    assert {"embedding/one_shot, detection/one_shot, fuzzing/one_shot, generated", "export", "export_all"} <= set(stages)
    # the generated source on its slice (the first feature of each layer): candidates with true
    # activations, the explanation's score on them, the completions kept for audit
    for key in ("F0000/L03", "F0000/L06", "F0000/SYN"):
        meta = json.loads((storage / "generated" / key / "meta.json").read_text())
        assert meta["candidates"] >= 1 and meta["completions"] and "score" in meta["per_source"]["generated"]
    assert not (storage / "generated" / "F0001").exists()  # outside the slice
    _check_export(tmp_path / "home", storage)
    stage_lines = [line for line in log.splitlines() if "--> materializing" in line]
    assert all("ETA " in line for line in stage_lines)  # every stage line carries elapsed time and ETA
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    event = instance.get_latest_materialization_event(dg.AssetKey(["scores", "one_shot"]))
    strip = event.asset_materialization.metadata["activations"].value
    assert strip.startswith("![true vs simulated](data:image/png;base64,")
    instance.dispose()

    again = _run([BIN / "featureinterp", "run", "--conditions", "one_shot", "--verbose"], env)
    assert again.returncode == 0 and "materializing" not in again.stdout  # nothing left to do
    assert "log: " in again.stdout

    table = _run([BIN / "featureinterp", "scores", "--explanations"], env, timeout=300)
    assert table.returncode == 0, table.stderr[-3000:]
    stored = json.loads((storage / "scores" / "one_shot" / "F0000" / "SYN" / "value.json").read_text())
    row = next(line for line in table.stdout.splitlines() if line.startswith("SYN    F0000"))
    assert row.split()[2] == f"{stored['score']:.3f}"  # columns: layer, feature, one_shot, null
    null = json.loads((storage / "baselines" / "F0000" / "SYN" / "value.json").read_text())["null"]
    assert row.split()[3] == f"{null['score']:.3f}"
    assert "truth: negation words" in table.stdout and "one_shot: " in table.stdout
    assert "generated counterexamples, written from the one_shot explanations" in table.stdout
    assert "records ±" in table.stdout  # the results table's test-record half-width column

    sim = _run(
        [BIN / "featureinterp", "simulate", "SYN", "F0000", "negation words such as not, no, never"], env
    )
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert "test score" in sim.stdout and "similar_negative" in sim.stdout
    _check_ui(env)

    bad = _run([BIN / "featureinterp", "simulate", "L99", "F0000", "x"], env, timeout=300)
    assert bad.returncode != 0 and "no records for L99/F0000" in bad.stderr and "Traceback" not in bad.stderr

    one = _run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "featureinterp_assets.definitions",
            "--select",
            "sae_activations",
            "--partition",
            "L06",
        ],
        env,
    )
    assert one.returncode == 0, one.stderr[-3000:]


def _check_quiet(run, storage) -> None:
    """Issue 31: a quiet run prints one line per stage (stdout is a pipe here: no bar redraws), the
    log file's path, the results table and where to look; no Dagster DEBUG event, no migration
    line. The log file holds the whole event log."""
    out = run.stdout.splitlines()
    assert len(out) < 40, run.stdout
    assert "DEBUG" not in run.stdout + run.stderr and "alembic" not in run.stdout + run.stderr
    # no library chatter: LanceDB's Rust log lines, tqdm bars, matplotlib's glyph warnings
    for noise in ("lance::", "it/s]", "Glyph", "tight_layout"):
        assert noise not in run.stdout + run.stderr, noise
    stages = {line.split(":")[0]: line for line in out if " partitions" in line and " in " in line}
    assert {"records", "explanations + scores", "secondary scores"} <= set(stages), out
    explain = stages["explanations + scores"]  # e.g. "explanations + scores: 6/6 partitions in 80.1 s, ..."
    done, total = explain.split(": ", 1)[1].split()[0].split("/")
    assert done == total and int(total) == 6, explain  # 2 layers + SYN x 2 features
    header = next(i for i, line in enumerate(out) if line.startswith("layer ") and "test score" in line)
    stored = json.loads((storage / "scores" / "one_shot" / "F0000" / "SYN" / "value.json").read_text())
    other = json.loads((storage / "scores" / "one_shot" / "F0001" / "SYN" / "value.json").read_text())
    # every row of the preset's layer x condition grid (conditions this run did not touch included)
    syn = next(line for line in out[header + 2 :] if line.split()[:2] == ["SYN", "one_shot"])
    mean = (stored["score"] + other["score"]) / 2
    assert syn.split()[2] == f"{mean:.3f}" and syn.split()[-4] == "2", syn  # mean, explained
    log = Path(next(line for line in out if line.startswith("log: ")).split("log: ", 1)[1])
    text = log.read_text()
    assert "STEP_SUCCESS" in text and "ASSET_MATERIALIZATION" in text and "--> materializing" in text


SCREENSHOTS = REPO / ".cache" / "tests" / "screenshots"


def _check_export(home, storage) -> None:
    """The preset's export loads with HF datasets and holds exactly the stored values: one row per
    (layer, feature) explanation, its scores and the records' test rows."""
    import math

    from datasets import load_dataset

    parquet = home / "exports" / "embedded-tiny" / "embedded-tiny.parquet"
    ds = load_dataset("parquet", data_files=str(parquet), cache_dir=str(home / "hf"))["train"]
    stored = sorted((storage / "explanations" / "one_shot").glob("*/*/value.json"))
    alive = [p for p in stored if "skipped" not in json.loads(p.read_text())]
    assert len(ds) == len(alive) > 0
    for row in ds:
        key = f"F{row['feature']:04d}/{row['layer']}"
        expl = json.loads((storage / "explanations" / "one_shot" / key / "value.json").read_text())
        score = json.loads((storage / "scores" / "one_shot" / key / "value.json").read_text())
        assert json.loads(row["rules"]) == expl["explanation"]["rules"]
        assert row["simulation_score"] == score["score"] or (
            math.isnan(row["simulation_score"]) and math.isnan(score["score"])
        )
        for scorer in ("detection", "fuzzing", "embedding"):
            value = json.loads((storage / scorer / "one_shot" / key / "value.json").read_text())
            assert row[f"{scorer}_score"] == value["score"] or math.isnan(value["score"]), scorer
            judged = sorted(i["row"] for i in value["items"])
            tested = sorted(r for s in json.loads(row["record_rows"]).values() for r in s.get("test", []))
            assert judged == tested  # the scorers judged exactly the records' test rows
        assert row["preset"] == "embedded-tiny" and len(row["preset_hash"]) == 16
        # the code version and the fingerprint of the preset fields it depends on
        from featureinterp.presets import get_preset
        from featureinterp.provenance import asset_fingerprint

        fingerprint = asset_fingerprint(get_preset("embedded-tiny"), ["scores", "one_shot"])
        assert json.loads(row["code_versions"])["scores/one_shot"] == f"1+{fingerprint}"
    neuronpedia = json.loads(parquet.with_name("embedded-tiny.neuronpedia.json").read_text())
    assert len(neuronpedia) == len(ds) and {"modelId", "layer", "index", "description"} <= set(neuronpedia[0])


def _check_ui(env) -> None:
    """`dagster dev` as a person uses it: headless Chromium (Debian's, via playwright) opens the
    asset list, a records partition, one partition's score and explanation, and fig5;
    screenshots land in .cache/tests/screenshots."""
    import signal
    import socket
    import time
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    log = open(SCREENSHOTS / "dagster_dev.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [BIN / "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, "dagster dev exited; see .cache/tests/screenshots/dagster_dev.log"
                time.sleep(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def visit(path: str, shot: str, expect: list[str]) -> str:
                page.goto(base + path, wait_until="networkidle", timeout=180_000)
                skip = page.get_by_role("button", name="Skip")  # the community pop-up, if shown
                try:
                    skip.wait_for(timeout=5_000)
                    skip.click()
                except Exception:  # noqa: BLE001 - no pop-up this time
                    pass
                for text in expect:
                    page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
                page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)
                return page.inner_text("body")

            # the catalog lists its ~30 assets in a virtualized table (rows below the fold are not
            # rendered); each asset's own page is visited below
            visit("/assets", "assets", ["records", "fig5"])
            body = visit("/assets/records", "records", ["preview"])
            assert "counts" in body and "row " in body  # the partition's metadata preview
            # every asset says what it is (no "No description found"); a score shows its strip
            for key, text in (
                ("explanations/one_shot", "explanation of the feature"),
                ("scores/one_shot", "Test-split evaluation"),
                ("fig3", "Figure 3:"),
                ("fig4", "Figure 4:"),
                ("detection/one_shot", "Detection:"),
                ("fuzzing/one_shot", "Fuzzing:"),
                ("embedding/one_shot", "Embedding:"),
                ("export_all", "Every layer's export"),
            ):
                body = visit(f"/assets/{key}", key.replace("/", "_"), [text])
                assert "No description" not in body, key
            visit("/assets/scores/one_shot", "scores", ["activations"])  # the strip's metadata entry
            # one partition as a person reads it (issue 31): per-source scores and false-positive
            # rates, and token usage, as rendered tables; the rules as a table with strengths and
            # the search path as a list (Markdown), not JSON blobs
            part = "view=partitions&partition=F0000%7CSYN"
            body = visit(f"/assets/scores/one_shot?{part}", "scores_partition", ["per_source"])
            assert "similar_negative" in body and "fp_rate" in body and "n_records" in body, body[-3000:]
            assert '"fp_rate"' not in body  # rendered as a table, not a JSON value
            body = visit(f"/assets/explanations/one_shot?{part}", "explanations_partition", ["rules"])
            assert "activates on" in body and "strength" in body and "search path" in body, body[-3000:]
            assert '"activates_on"' not in body and "prompt_tokens" in body
            visit("/assets/fig5", "fig5", ["caption"])
            page.get_by_text("[Show Markdown]").first.click()  # the `image` metadata entry
            image = page.locator('img[src^="data:image/png;base64,"]').first
            image.wait_for(state="visible", timeout=60_000)
            assert image.bounding_box()["width"] > 100
            page.screenshot(path=str(SCREENSHOTS / "fig5_image.png"))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _kill_when_records_done(env, storage: Path, n: int, timeout: float = 1500) -> tuple[list[str], list[str]]:
    """Start `featureinterp run`, SIGKILL its process group once ``n`` (layer, feature) partitions
    have records and one of its Dagster runs is in progress; return those partitions
    ("F0000/L03") and the runs the kill left STARTED (read after the kill: they cannot change)."""
    import signal
    import time

    import dagster as dg

    proc = subprocess.Popen(
        [BIN / "featureinterp", "run", "--conditions", "one_shot"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    active = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        while time.time() < deadline and proc.poll() is None:
            # what the instance has recorded as materialized (the files are written first)
            have = map(str, instance.get_materialized_partitions(dg.AssetKey("records")))
            done = sorted(k.replace("|", "/") for k in have)
            if len(done) >= n and instance.get_runs(filters=active):  # not between two runs
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return done, [r.run_id for r in instance.get_runs(filters=active)]
            time.sleep(0.2)
        raise AssertionError(f"run ended (rc {proc.poll()}) or timed out before {n} records partitions")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        instance.dispose()


def test_bad_preset_and_offline_paper_preset_give_one_clear_line(env):
    bad = _run([BIN / "featureinterp", "run", "--preset", "nope"], env, timeout=120)
    assert bad.returncode != 0 and "unknown preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    offline = _run(
        [BIN / "featureinterp", "run", "--preset", "gemma-2-9b"], {**env, "HF_HUB_OFFLINE": "1"}, timeout=120
    )
    assert offline.returncode != 0 and "Traceback" not in offline.stderr
    assert "google/gemma-2-9b" in offline.stderr and "needs the" in offline.stderr
    lines = [line for line in offline.stderr.splitlines() if line.startswith("featureinterp:")]
    assert len(lines) == 1 and "featureinterp run --standin" in lines[0]
    wrong = _run([BIN / "featureinterp", "run", "--standin"], env, timeout=120)  # embedded-tiny: no stand-in
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "has no stand-in; --standin works for the paper presets: gpt2-small" in wrong.stderr
    for flag, value, named in (("--layers", "SYN,L99", "L99"), ("--features", "0,99", "99")):
        bad = _run([BIN / "featureinterp", "run", flag, value], env, timeout=120)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert f"{flag} {named}: not studied by preset 'embedded-tiny'" in bad.stderr


def test_stored_features_tell_the_sae_stage_to_rerun_a_layer_that_lacks_features():
    """A preset that gained features must rewrite the activations of layers stored without them
    (records would otherwise not find the new features)."""
    import dagster as dg

    from featureinterp_assets.freshness import stored_features as _stored_features

    def meta(features):
        return {"feature_indices": dg.MetadataValue.json(features)}

    with dg.DagsterInstance.ephemeral() as instance:
        assert _stored_features(instance, "SYN") == set()
        for features in ([0, 1], [0, 1, 2, 13]):
            instance.report_runless_asset_event(
                dg.AssetMaterialization("sae_activations", partition="SYN", metadata=meta(features))
            )
        instance.report_runless_asset_event(
            dg.AssetMaterialization("sae_activations", partition="L05", metadata=meta([7]))
        )
        # a materialization from before the JSON field: holds none, so the layer is rebuilt
        instance.report_runless_asset_event(
            dg.AssetMaterialization("sae_activations", partition="L06", metadata={"features": "| F0001 |"})
        )
        assert _stored_features(instance, "L06") == set()
        assert _stored_features(instance, "SYN") == {0, 1, 2, 13}  # the latest, not the union
        assert _stored_features(instance, "L05") == {7}
