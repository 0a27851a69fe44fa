"""`featureinterp plan`: counts follow from the preset, tokens from a stored stand-in measurement."""

from __future__ import annotations

import dataclasses
import json

import pytest

from featureinterp.explain.conditions import get_condition
from featureinterp.plan import MODEL_PARAMS, GpuSpec, plan_preset
from featureinterp.presets import get_preset


def _store(home, preset, cond, feature, layer, usage, explain_tokens, score_tokens):
    root = home / "storage" / f"{preset}-standin"
    for kind, value in (
        ("explanations", {"usage": usage, "simulator_tokens": explain_tokens}),
        ("scores", {"score": 0.1, "simulator_tokens": score_tokens}),
    ):
        path = root / kind / cond / feature / layer / "value.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _readers(home, preset):
    """Read stored values the way `featureinterp plan` does: through the IO manager."""
    import dagster as dg

    from featureinterp_assets.io_managers import StorageIOManager

    storages = [
        StorageIOManager(base_dir=str(home / "storage" / name)) for name in (f"{preset}-standin", preset)
    ]
    return [lambda key, part, s=s: s.stored(dg.AssetKey(list(key)), part) for s in storages]


def test_counts_without_a_measurement(tmp_path):
    plan = plan_preset(get_preset("gemma-2-9b"), _readers(tmp_path, "gemma-2-9b"))
    lf = 43 * 50  # 42 layers + SYN, features 0-49
    assert plan.partitions["records"] == lf
    # each condition on its figures' partitions (+ the 50 SYN ones): Figure 4's 8 x 30, Figure 3's 21 x 50
    assert plan.partitions["explanations/tree"] == plan.partitions["scores/one_shot_cap1"] == 8 * 30 + 50
    assert plan.partitions["explanations/fig3_tree"] == 21 * 50 + 50
    assert plan.partitions["holistic_activations"] == 8 * 30 + 50
    # partitions explained by anything: Figure 3's, Figure 4's odd or > 40 layers (23, 29, 35, 41), SYN
    explained = 21 * 50 + 4 * 30 + 50
    loads = plan.model_loads
    assert loads["featureinterp run"] == {
        "subject (google/gemma-2-9b)": 1,
        "simulator (google/gemma-2-27b-it)": 1,
    }
    # holistic values (Figure 4's structured + holistic cells) need the subject model in every
    # records run
    assert loads["UI backfill per layer"] == {
        "subject (google/gemma-2-9b)": 1 + 43,
        "simulator (google/gemma-2-27b-it)": 21 + 4 + 1,  # the layers with an explain run
    }
    assert loads["a run per partition"] == {
        "subject (google/gemma-2-9b)": 1 + explained,
        "simulator (google/gemma-2-27b-it)": explained,
    }
    assert plan.runs["records"] == 43
    assert plan.runs["explain+score"] == 21 + 4 + 1  # Figure 3's layers, Figure 4's others, SYN
    assert not plan.measured and not plan.gpu_hours and "not measured yet" in plan.text()


def test_projection_from_stored_stand_in_measurements(tmp_path):
    base = get_preset("gemma-2-9b")
    preset = base.replace(explain=dataclasses.replace(base.explain, conditions=("one_shot",)))
    usage = {"requests": 2, "prompt_tokens": 1000, "completion_tokens": 100}
    _store(tmp_path, "gemma-2-9b", "one_shot", "F0000", "L05", usage, 20_000, 10_000)
    _store(
        tmp_path, "gemma-2-9b", "one_shot", "F0001", "L05", usage | {"prompt_tokens": 3000}, 40_000, 10_000
    )
    gpu = GpuSpec(peak_flops=1e15, utilisation=0.5, load_gbps=2.0)
    plan = plan_preset(preset, _readers(tmp_path, "gemma-2-9b"), gpu=gpu)
    m = plan.measured["one_shot"]
    assert m["partitions"] == 2 and m["explainer_prompt_tokens"] == 2000 and m["simulator_tokens"] == 40_000
    lf = 8 * 30 + 50  # one_shot runs on the partitions of Figures 4-5 and SYN (condition_scope)
    api = preset.explain.explainer
    assert plan.explainer["cost_usd"] == pytest.approx(
        lf * (2000 * api.price_in_per_mtok + 100 * api.price_out_per_mtok) / 1e6
    )
    sim = 2 * MODEL_PARAMS["google/gemma-2-27b-it"] * 40_000 * lf / 5e14 / 3600
    weights = 2 * MODEL_PARAMS["google/gemma-2-27b-it"], 2 * MODEL_PARAMS["google/gemma-2-9b"]
    one_load = sum(weights) / 2e9 / 3600
    per_layer_loads = (9 * weights[0] + weights[1]) / 2e9 / 3600  # explain runs: Figure 4's 8 layers + SYN
    subject = 2 * MODEL_PARAMS["google/gemma-2-9b"] * 100_000 * 33 / 5e14 / 3600
    assert plan.gpu_hours["of which simulator forward passes"] == pytest.approx(sim, abs=0.01)
    assert plan.gpu_hours["of which model loads"] == pytest.approx(one_load, abs=0.01)
    ui = plan.gpu_hours["UI backfill per layer: 8x H100 SXM"]
    assert ui == pytest.approx((sim + subject + per_layer_loads) / 8, abs=0.02)
    assert "featureinterp run: 8x H100 SXM" not in plan.gpu_hours  # one process drives one GPU
    assert (
        plan.dominant == "simulator forward passes" and json.loads(plan.to_json())["preset"] == "gemma-2-9b"
    )


def test_projection_counts_the_holistic_corpus_sweep_of_the_papers_scale(tmp_path):
    base = get_preset("gemma-2-9b")
    usage = {"requests": 2, "prompt_tokens": 1000, "completion_tokens": 100}
    _store(tmp_path, "gemma-2-9b", "one_shot_structured_holistic", "F0000", "L06", usage, 20_000, 10_000)
    gpu = GpuSpec(peak_flops=1e15, utilisation=0.5, load_gbps=2.0)

    def plan_with(scale: str):
        explain = dataclasses.replace(base.explain, conditions=("one_shot_structured_holistic",), holistic_scale=scale)
        return plan_preset(base.replace(explain=explain), _readers(tmp_path, "gemma-2-9b"), gpu=gpu)

    # Figure 4's 8 layers; per row 33 variants of ~33 * 34 / 2 tokens in all
    sweep = 2 * MODEL_PARAMS["google/gemma-2-9b"] * 100_000 * (33 * 34 / 2) * 8 / 5e14 / 3600
    assert plan_with("corpus").gpu_hours["of which holistic corpus sweep"] == pytest.approx(sweep, abs=0.01)  # hours, 2 decimals
    assert "of which holistic corpus sweep" not in plan_with("records").gpu_hours


def _calibration(path, tokens_per_s: float, rows_per_s: float = 500.0, **over) -> None:
    """A made-up scripts/gpu-check report: the fields `plan --calibration` reads."""
    report = {
        "device": "Test GPU 80GB",
        "measured_on": "2026-12-06",
        "small": False,
        "simulator": {"params": 27.2e9, "cached": {"tokens_per_s": tokens_per_s}, "load_s": 30.0},
        "subject": {
            "params": 9.24e9,
            "layers": 42,
            "activation_rows_per_s": rows_per_s,
            "holistic_rows_per_s": rows_per_s / 20,
            "row_len": 33,
            "sae_layer": 20,
            "load_s": 10.0,
        },
    } | over
    path.write_text(json.dumps(report))


def test_calibration_moves_the_projection_as_the_measured_rates_say(tmp_path):
    from featureinterp.throughput import load_calibration

    base = get_preset("gemma-2-9b")
    preset = base.replace(explain=dataclasses.replace(base.explain, conditions=("one_shot",)))
    usage = {"requests": 2, "prompt_tokens": 1000, "completion_tokens": 100}
    _store(tmp_path, "gemma-2-9b", "one_shot", "F0000", "L05", usage, 20_000, 10_000)
    readers = _readers(tmp_path, "gemma-2-9b")
    _calibration(tmp_path / "slow.json", tokens_per_s=2_000.0)
    _calibration(tmp_path / "fast.json", tokens_per_s=8_000.0, rows_per_s=1000.0)
    slow = plan_preset(preset, readers, calibration=load_calibration(tmp_path / "slow.json"))
    fast = plan_preset(preset, readers, calibration=load_calibration(tmp_path / "fast.json"))
    assumed = plan_preset(preset, readers)
    key = "of which simulator forward passes"
    lf = 8 * 30 + 50
    # the same simulator as measured: hours = tokens / measured tokens per second
    assert slow.gpu_hours[key] == pytest.approx(30_000 * lf / 2_000 / 3600, abs=0.01)
    assert fast.gpu_hours[key] == pytest.approx(slow.gpu_hours[key] / 4, abs=0.01)
    subject = "of which subject activation pass"
    assert fast.gpu_hours[subject] < slow.gpu_hours[subject]
    assert slow.gpu_hours[key] != assumed.gpu_hours[key]
    assert "featureinterp run: 1x Test GPU 80GB" in slow.gpu_hours
    assert "measured by scripts/gpu-check" in slow.text() and "Test GPU 80GB, 2026-12-06" in slow.text()
    assert "assumed: 0.25 of H100 SXM peak" in assumed.text()
    assert slow.assumptions["rates"] == "measured"


def test_a_bad_calibration_file_is_named_with_the_fix(tmp_path):
    from featureinterp.errors import ConfigError
    from featureinterp.throughput import load_calibration

    with pytest.raises(ConfigError, match="does not exist: run scripts/gpu-check"):
        load_calibration(tmp_path / "none.json")
    (tmp_path / "text.json").write_text("tokens: 5")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_calibration(tmp_path / "text.json")
    (tmp_path / "partial.json").write_text(json.dumps({"device": "x", "measured_on": "y"}))
    with pytest.raises(ConfigError, match="lacks 'simulator'"):
        load_calibration(tmp_path / "partial.json")
    _calibration(tmp_path / "zero.json", tokens_per_s=0.0)
    with pytest.raises(ConfigError, match="simulator_tokens_per_s"):
        load_calibration(tmp_path / "zero.json")


def test_plan_command_prints_json_without_loading_a_model(tmp_path):
    import os
    import subprocess
    import sys

    env = os.environ | {"FEATUREINTERP_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "plan", "--preset", "llama-3.1-8b", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout)
    assert plan["preset"] == "llama-3.1-8b" and plan["partitions"]["records"] == 33 * 50
    assert not (tmp_path / "models").exists()  # nothing was converted or downloaded


PAPER_LAYERS = {  # paper-method.md 9: get_layer_indices(model, subpoints=8)
    "gemma-2-9b": [0, 6, 12, 18, 23, 29, 35, 41],
    "gpt2-small": [0, 2, 3, 5, 6, 8, 9, 11],
    "llama-3.1-8b": [0, 4, 9, 13, 18, 22, 27, 31],
}


@pytest.mark.parametrize("preset", sorted(PAPER_LAYERS))
def test_figure_grids_of_the_paper_presets_are_the_papers(preset):
    from featureinterp.figures.grids import figure_grids

    grids = {k: g.to_dict() for k, g in figure_grids(get_preset(preset)).items()}
    assert sorted(grids) == (["fig3", "fig4", "fig5"] if preset == "gemma-2-9b" else ["fig4", "fig5"])
    fig4, fig5 = grids["fig4"], grids["fig5"]
    assert fig4["layers"] == fig5["layers"] == tuple(PAPER_LAYERS[preset])
    assert fig4["features"] == fig5["features"] == tuple(range(30))
    assert sorted(fig4["conditions"]) == sorted(
        f"{m}{s}"
        for m in ("one_shot", "tree")
        for s in ("_unstructured", "", "_structured_holistic", "_structured_train_negatives")
    )
    assert fig4["explainer"] == fig5["explainer"] == "meta-llama/llama-4-scout"
    assert (
        fig4["tree"]["depth"],
        fig4["tree"]["width"],
        fig4["tree"]["roots"],
        fig4["tree"]["branching"],
    ) == (2, 2, 3, 2)
    caps = [get_condition(c).rule_cap for c in fig5["conditions"]]
    assert caps == [1, 2, 3, 4, 5] and {get_condition(c).method for c in fig5["conditions"]} == {"one_shot"}
    assert fig5["complexity"] and fig5["tree"] is None
    if preset == "gemma-2-9b":
        fig3 = grids["fig3"]
        assert fig3["layers"] == tuple(range(0, 41, 2)) and len(fig3["layers"]) == 21
        assert fig3["features"] == tuple(range(50))
        assert [get_condition(c).method for c in fig3["conditions"]] == ["one_shot", "tree"]
        assert fig3["explainer"] == "google/gemini-flash-1.5-8b"
        tree = fig3["tree"]
        assert (tree["depth"], tree["width"], tree["roots"], tree["branching"]) == (3, 3, 3, 2)
        assert (tree["stop_score"], tree["temperature"]) == (0.9, 1.2)


@pytest.mark.parametrize("preset", sorted(PAPER_LAYERS))
def test_each_figure_condition_explains_as_its_figure_did(preset):
    """The grids are not only labels: the explainer config a condition builds (with the preset's
    settings, as the explain asset does) has the figure's tree size and explainer model, and the
    preset materializes every condition of its figures."""
    from featureinterp.figures.grids import figure_grids, paper_conditions

    spec = get_preset(preset)
    assert spec.explain.conditions == paper_conditions()
    s = spec.explain
    for grid in figure_grids(spec).values():
        for name in grid.conditions:
            cond = get_condition(name)
            config = cond.explainer_config(s)
            assert (cond.explainer_model or s.explainer.model) == grid.explainer, (grid.figure, name)
            assert spec.explain.explainer.served(cond.explainer_model).model == grid.explainer
            if cond.method == "tree":
                got = (config.roots, config.branching, config.depth, config.width, config.stop_score)
                want = (grid.tree.roots, grid.tree.branching, grid.tree.depth, grid.tree.width)
                assert got == (*want, grid.tree.stop_score), (grid.figure, name)
                assert config.tree_temperature == grid.tree.temperature
            assert config.rule_cap == (cond.rule_cap if cond.structured else None)


def test_conditions_run_only_on_the_partitions_of_their_figures():
    from featureinterp.figures.grids import condition_scope

    spec = get_preset("gemma-2-9b")
    scope = condition_scope(spec)
    syn = {f"{f}|SYN" for f in spec.feature_keys}
    assert scope["fig3_tree"] == {f"F{f:04d}|L{x:02d}" for x in range(0, 41, 2) for f in range(50)} | syn
    fig4_keys = {f"F{f:04d}|L{x:02d}" for x in PAPER_LAYERS["gemma-2-9b"] for f in range(30)} | syn
    assert scope["tree_structured_holistic"] == fig4_keys
    assert scope["one_shot"] == fig4_keys  # Figures 4 and 5 share the cap-5 one-shot cells
    assert condition_scope(get_preset("embedded-large")) == {}  # no paper grid: everything runs everywhere
    # the embedded default runs its synthetic features under one-shot and tree only
    embedded = get_preset("embedded")
    small = condition_scope(embedded)
    own = {f"F{f:04d}|L{x:02d}" for x in embedded.layers for f in embedded.features}
    assert set(small) == set(embedded.explain.conditions) - {"one_shot", "tree"}
    assert all(keys == own for keys in small.values())


def test_plan_json_prints_each_figure_grid(tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "FEATUREINTERP_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "featureinterp_assets.cli", "plan", "--preset", "gemma-2-9b", "--json"]
    out = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    assert out["figures"]["fig3"]["partitions_per_condition"] == 21 * 50
    assert out["figures"]["fig4"]["grid"]["layers"] == PAPER_LAYERS["gemma-2-9b"]


def test_a_figure_keeps_only_the_rows_of_its_paper_grid():
    import polars as pl

    from featureinterp.figures.grids import figure_grids, select_grid

    rows = [
        {"layer": layer, "feature": f, "experiment": name, "rule_cap": cap}
        for layer in ("L00", "L01", "L06", "SYN")
        for f in (0, 31)
        for name, cap in (("one_shot_cap1", 1), ("one_shot", 5), ("fig3_one_shot", 5), ("tree", 5))
    ]
    table = pl.DataFrame(rows)
    grids = figure_grids(get_preset("gemma-2-9b"))
    present = ("one_shot", "one_shot_cap1", "fig3_one_shot", "tree")
    fig5, note5 = select_grid(table, grids["fig5"], present, "fig5")
    assert sorted(set(zip(fig5["layer"], fig5["feature"], strict=True))) == [("L00", 0), ("L06", 0)]
    assert sorted(set(fig5["rule_cap"])) == [1, 5]
    assert "8 layers x 30 features" in note5 and "one_shot_cap2" in note5  # caps 2-4 not run
    fig4, _ = select_grid(table, grids["fig4"], present, "fig4")
    assert set(fig4["experiment"]) == {"one_shot", "tree"}  # cap 1 and Figure 3's runs are not Figure 4's
    fig3, note3 = select_grid(table, grids["fig3"], present, "fig3")
    assert set(fig3["experiment"]) == {"fig3_one_shot"} and "fig3_tree" in note3
    assert set(fig3["layer"]) == {"L00", "L06"}  # L01 is odd: not in Figure 3's layers
    # the preset's own grid: Figure 3 takes its own runs when the preset has them, else the
    # structured one-shot and tree; SYN rows are dropped by the figure asset, not here
    whole, note = select_grid(table, None, present, "fig3")
    assert set(whole["experiment"]) == {"fig3_one_shot"} and "preset" in note
    plain, _ = select_grid(table, None, ("one_shot", "tree"), "fig3")
    assert set(plain["experiment"]) == {"one_shot", "tree"}
    old = table.drop("experiment")
    with pytest.raises(ValueError, match="rematerialize layer_results"):
        select_grid(old, None, present, "fig4")


def test_the_generated_source_is_counted_and_its_measured_requests_priced(tmp_path):
    """gemma-2-9b writes counterexamples on the first 5 features of each one-shot layer: its
    requests, candidates and subject tokens are counted, and once a run stored some, its measured
    requests join the explainer's bill and its simulator tokens the GPU projection."""
    import polars as pl

    from featureinterp.storage import save_table

    base = get_preset("gemma-2-9b")
    preset = base.replace(explain=dataclasses.replace(base.explain, conditions=("one_shot",)))
    bare = plan_preset(preset, _readers(tmp_path, "gemma-2-9b"))
    n = (8 + 1) * 5  # Figure 4's 8 layers and SYN, 5 features each
    g = bare.generated
    assert (g["partitions"], g["requests_min"], g["requests_max"], g["candidates"]) == (n, n, 3 * n, 10 * n)
    assert g["subject_forward_tokens"] == 10 * n * 33 and g["measured"] is None
    assert bare.partitions["generated"] == n and "generated counterexamples (one_shot)" in bare.text()

    usage = {"requests": 2, "prompt_tokens": 1000, "completion_tokens": 100}
    _store(tmp_path, "gemma-2-9b", "one_shot", "F0000", "L00", usage, 20_000, 10_000)
    before = plan_preset(preset, _readers(tmp_path, "gemma-2-9b"))
    root = tmp_path / "storage" / "gemma-2-9b-standin" / "generated"
    for feature, requests in (("F0000", 1), ("F0001", 3)):
        meta = {"usage": {"requests": requests, "prompt_tokens": 800, "completion_tokens": 300}, "simulator_tokens": 5_000}
        save_table(root / feature / "L00", pl.DataFrame({"text": ["a"]}), meta)
    after = plan_preset(preset, _readers(tmp_path, "gemma-2-9b"))
    m = after.generated["measured"]
    assert m["partitions"] == 2 and m["explainer_requests"] == 2 and m["simulator_tokens"] == 5_000
    assert after.explainer["requests"] == pytest.approx(before.explainer["requests"] + 2 * n)
    api = preset.explain.explainer
    extra = n * (800 * api.price_in_per_mtok + 300 * api.price_out_per_mtok) / 1e6
    assert after.explainer["cost_usd"] == pytest.approx(before.explainer["cost_usd"] + extra)
    more = after.gpu_hours["of which simulator forward passes"] - before.gpu_hours["of which simulator forward passes"]
    assert more == pytest.approx(2 * MODEL_PARAMS["google/gemma-2-27b-it"] * 5_000 * n / (989e12 * 0.25) / 3600, abs=0.01)
