"""benchmarks/__main__.py: every benchmark module is registered, an incomplete JSON line is refused,
the table in docs/benchmarks.md is generated between its markers, and (slow) the quick run of the
benchmarks finishes with complete JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.__main__ as runner

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_module_is_registered():
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(runner.BY_NAME)


def test_incomplete_json_is_refused_with_the_reason():
    bench = runner.BY_NAME["simulator"]
    good = {"benchmark": "simulator", "ratios": {"speedup_vs_paper": 2.0, "speedup_cached": 3.0}, "checks": {}}
    assert runner.complete(bench, json.dumps(good)) == (good, "")
    missing = good | {"ratios": {"speedup_cached": 3.0}}
    assert "speedup_vs_paper" in runner.complete(bench, json.dumps(missing))[1]
    nan = good | {"ratios": {"speedup_vs_paper": float("nan"), "speedup_cached": 3.0}}
    assert "not finite" in runner.complete(bench, json.dumps(nan))[1]
    assert "does not name" in runner.complete(bench, json.dumps(good | {"benchmark": "other"}))[1]
    assert "not JSON" in runner.complete(bench, "Traceback (most recent call last):")[1]


def test_the_table_page_is_the_docs_benchmarks_page_and_holds_the_markers_once():
    assert runner.TABLE_PAGE == ROOT / "docs" / "benchmarks.md"
    text = runner.TABLE_PAGE.read_text()
    assert text.count(runner.BEGIN) == 1 and text.count(runner.END) == 1
    assert text.index(runner.BEGIN) < text.index(runner.END)
    assert runner.BEGIN not in (ROOT / "README.md").read_text()


def test_publish_regenerates_the_table_and_keeps_other_results(tmp_path, monkeypatch):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# x\n\n{runner.BEGIN}\nold table\n{runner.END}\n\nafter\n")
    monkeypatch.setattr(runner, "TABLE_PAGE", page)
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results.json")
    result = {
        "ratios": {"speedup": 2.5}, "checks": {"work": {"paper": {"rows_x_layers": 960}}},
        "date": "2026-12-06", "machine": {"cpu": "Test CPU", "cores": 2, "threads": 2}, "wall_s": 12.0,
    }  # fmt: skip
    runner.publish({"activations": result})
    text = page.read_text()
    assert "old table" not in text and text.endswith("after\n")
    row = next(line for line in text.splitlines() if line.startswith("| `activations`"))
    assert "`speedup` 2.5" in row and "rows_x_layers" in row and "2026-12-06, Test CPU, 2 cores" in row
    assert "| `simulator` |" in text and "not measured yet" in text
    assert json.loads((tmp_path / "results.json").read_text()) == {"activations": result}
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        runner.publish({})


def test_an_unknown_benchmark_name_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        runner.main(["--only", "nope"])
    assert "unknown benchmark(s) nope" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_of_the_model_benchmarks_prints_complete_json(tmp_path):
    """The benchmarks that compare ours with the paper's approach on the embedded model, at tiny
    sizes: they run, their baselines do the paper's work (each asserts it), the JSON is complete."""
    only = "activations,holistic,simulator,explainer"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", only, "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed"] == [] and set(summary["benchmarks"]) == set(only.split(","))
    ran = json.loads((tmp_path / "results.json").read_text())
    assert ran["explainer"]["checks"]["work"]["paper"]["memo_hits"] == 0
    assert ran["activations"]["checks"]["work"]["ours"]["rows_through_lm_head"] == 0
