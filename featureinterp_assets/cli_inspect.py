"""`featureinterp simulate | scores | plan | presets`: the commands that read, not materialize.

Apart from featureinterp_assets.cli (argument parsing and `featureinterp run`'s stage-by-stage
materialization) because these commands launch no Dagster run: they read a preset, its stored
assets (outside a run, through the same storage the Definitions configure) or its cost plan,
and print.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg

from featureinterp.config import models_dir
from featureinterp.errors import CorruptFileError
from featureinterp.names import SYNTHETIC_KEY
from featureinterp.presets import get_preset
from featureinterp_assets.io_managers import storage_of


def simulate(preset_name: str | None, layer: str, feature: str, text: str, structured: bool) -> None:
    """Score a hand-written explanation on one partition's stored test records."""
    from featureinterp.activations.models import load_subject_model
    from featureinterp.config import parse_feature_key, parse_layer_key
    from featureinterp.explanations.rules import Explanation, parse_structured
    from featureinterp.simulate.evaluate import evaluate
    from featureinterp.simulate.simulator import LocalSimulator, prompt_for

    preset = get_preset(preset_name)
    parse_layer_key(layer), parse_feature_key(feature)  # clear errors for bad keys
    storage = storage_of(preset)
    rec = storage.stored(dg.AssetKey("records"), f"{feature}|{layer}")
    if rec is None:
        raise CorruptFileError(
            f"no records for {layer}/{feature} under {storage.base_dir}: run `featureinterp run` first"
        )
    explanation = parse_structured(text) if structured else Explanation.text(text)
    s = preset.explain
    model, tok = load_subject_model(s.simulator or preset.model, models_dir())
    sim = LocalSimulator(model, tok, prompt_for(s.simulator_prompt), batch_size=s.simulator_batch or 2)
    ev = evaluate(sim.simulate_explanation, explanation, rec.frame, float(rec.meta["max_act"]), preset.scores)
    print(f"{preset.name} {layer}/{feature}: {explanation}")
    print(
        f"test score (positives + similar non-activating): {ev.score:.3f}"
        + (f" ({ev.reason})" if ev.reason else "")
    )
    for source, v in ev.per_source.items():
        print(f"  {source:20s} score {v['score']:.3f}  false-positive rate {v['fp_rate']:.3f}")


def scores(preset_name: str | None, show_explanations: bool) -> None:
    """Print every stored test score of a preset: one row per (layer, feature), one column per
    condition (a partition without a score shows `-`), then the results table `featureinterp run`
    ends with (per layer x condition: mean, spread, null baseline, counts)."""
    import math

    from featureinterp.config import parse_feature_key
    from featureinterp.explanations.rules import Explanation
    from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES

    preset = get_preset(preset_name)
    storage = storage_of(preset)
    root = Path(storage.base_dir) / "scores"
    conditions = sorted(p.name for p in root.glob("*") if p.is_dir())
    if not conditions:
        raise CorruptFileError(f"no scores under {root}: run `featureinterp run` first")

    def load(kind: str, cond: str, layer: str, feature: str) -> dict | None:
        return storage.stored(dg.AssetKey([kind, cond]), f"{feature}|{layer}")

    print(f"{preset.name}: test score (positives + similar non-activating), pooled Pearson r")
    print(
        "null: the empty explanation's score (the simulator's prior; an explanation near it explains nothing)"
    )
    print(f"{'layer':6s} {'feature':8s} " + " ".join(f"{c:>12s}" for c in [*conditions, "null"]))
    for layer in preset.layer_keys:
        for feature in preset.feature_keys:
            row = []
            for c in conditions:
                v = load("scores", c, layer, feature)
                score = None if v is None else v["score"]
                row.append("-" if v is None else f"{score:.3f}" if score is not None else "nan")
            base = storage.stored(dg.AssetKey("baselines"), f"{feature}|{layer}")
            null = (base or {}).get("null", {}).get("score")
            row.append("-" if base is None else "nan" if null is None or math.isnan(null) else f"{null:.3f}")
            print(f"{layer:6s} {feature:8s} " + " ".join(f"{x:>12s}" for x in row))
            if show_explanations:
                if layer == SYNTHETIC_KEY:
                    truth = SYNTHETIC_FEATURES[parse_feature_key(feature)].explanation
                    print(f"{'':15s} truth: {truth}")
                for c in conditions:
                    e = load("explanations", c, layer, feature)
                    if e is not None:
                        print(f"{'':15s} {c}: {Explanation.from_record(e['explanation'])}")
    from featureinterp.simulate.summary import results_table
    from featureinterp_assets.summaries import RESULTS_CAPTION, results

    print("\n" + RESULTS_CAPTION + "\n" + results_table(results(preset)))  # as at the end of a run
    generated_lines = []
    for layer in preset.layer_keys:
        for feature in preset.feature_keys:
            g = storage.stored(dg.AssetKey("generated"), f"{feature}|{layer}")
            if g is None or g.meta.get("skipped"):
                continue
            src = g.meta["per_source"]["generated"]
            generated_lines.append(
                f"{layer:6s} {feature:8s} {g.meta['candidates']:>10d} {g.meta['counterexamples']:>15d} "
                f"{src['score']:>7.3f} [{src.get('ci_low', math.nan):.3f}, {src.get('ci_high', math.nan):.3f}]"
            )
    if generated_lines:
        print(
            f"\ngenerated counterexamples, written from the {preset.generated.condition} explanations "
            "(score: positives + candidates, with its test-record interval)"
        )
        print(f"{'layer':6s} {'feature':8s} {'candidates':>10s} {'counterexamples':>15s} {'score':>7s} interval")
        print("\n".join(generated_lines))


def plan(
    preset_name: str | None,
    conditions: list[str] | None,
    as_json: bool,
    grid: bool = False,
    whole_grid: bool = False,
    calibration: str | None = None,
) -> None:
    """Print what the preset costs (no model is loaded); see featureinterp/plan.py. ``grid``: the
    paper's 8 layers x 30 features instead of the whole preset; ``whole_grid``: every condition
    on every partition (``featureinterp run --whole-grid``); ``calibration``: a scripts/gpu-check
    JSON file whose measured rates replace the assumed utilisation."""
    from featureinterp.explain.conditions import get_condition
    from featureinterp.figures.grids import paper_grid
    from featureinterp.plan import plan_preset

    cal = None
    if calibration is not None:
        from featureinterp.throughput import load_calibration

        cal = load_calibration(calibration)  # a missing or foreign file fails before any work
    preset = get_preset(preset_name)
    if grid:
        preset = paper_grid(preset)
    if conditions:
        [get_condition(c) for c in conditions]  # unknown names fail here, with the known ones
        preset = preset.replace(explain=dataclasses.replace(preset.explain, conditions=tuple(conditions)))
    from featureinterp.preflight import preflight

    # a layer the model lacks or a feature beyond the SAE's width, from local files only (a
    # paper preset without its model here is planned all the same); no explainer is asked
    preflight(preset, api=False, hub=False)
    from featureinterp.presets.standin import SUFFIX

    # measured token counts: the preset's stand-in run first, then the preset's own runs
    readers = [storage_of(preset.name + SUFFIX).stored, storage_of(preset.name).stored]
    from featureinterp.plan import figure_plans

    stored = [lambda key, part, r=r: r(dg.AssetKey(list(key)), part) for r in readers]
    result = plan_preset(preset, stored, scoped=not whole_grid, calibration=cal)
    result.figures = {} if grid else figure_plans(get_preset(preset_name), stored, calibration=cal)
    print(result.to_json() if as_json else result.text())


def presets(command: str, name: str | None, fmt: str) -> None:
    """``presets list``: the built-in names; ``presets show NAME``: the preset as a file's text
    (start a preset file of your own from this output; loading it gives the same preset)."""
    from featureinterp.presets.builtin import PRESETS
    from featureinterp.presets.files import dump_preset

    if command == "list":
        for key, preset in PRESETS.items():
            print(f"{key:16s} {preset.model.name}, layers {','.join(map(str, preset.layers))}")
        return
    print(dump_preset(get_preset(name), fmt), end="")


def reseed(
    preset_name: str | None,
    seeds: int,
    conditions: list[str] | None,
    layers: list[str] | None,
    features: list[int] | None,
    as_json: bool,
) -> None:
    """Re-explain a slice with ``seeds - 1`` more seeds and print, per condition, each seed's mean
    test score, the between-seed spread and the test-record half-width beside it; the stored
    explanations stay as they are (the report goes to ``exports/reseed.json``)."""
    import json
    import os

    import numpy as np

    from featureinterp.config import ApiSpec, data_home, feature_key, parse_feature_key, parse_layer_key
    from featureinterp.errors import ConfigError
    from featureinterp.explain.conditions import get_condition
    from featureinterp.explain.reseed import reseed as reseed_one
    from featureinterp.explain.reseed import seed_spread, stored_seed_score
    from featureinterp.explanations.rules import Explanation
    from featureinterp.presets.files import preset_to_json
    from featureinterp.storage import atomic_write
    from featureinterp_assets.assets.explanations import holistic_lookup, score_seed
    from featureinterp_assets.resources import LLMResource

    if seeds < 2:
        raise ConfigError(f"--seeds {seeds}: give at least 2 (the stored explanation is seed 0)")
    preset = get_preset(preset_name)
    storage = storage_of(preset)
    conditions = conditions or list(preset.explain.conditions)
    layer_keys = [k for k in (layers or preset.layer_keys)]
    feature_keys = [feature_key(f) for f in features] if features is not None else preset.feature_keys
    api = preset.explain.explainer
    llm = LLMResource(
        preset=preset.name, preset_json=preset_to_json(preset), home=str(data_home()), models_dir=str(models_dir()),
        device=os.environ.get("FEATUREINTERP_DEVICE", "auto"),
        api_key=os.environ.get(api.api_key_env) if isinstance(api, ApiSpec) else None,
    )  # fmt: skip
    runs, skipped = [], []
    for name in conditions:
        cond = get_condition(name)
        for layer in layer_keys:
            for feature in feature_keys:
                key = f"{feature}|{layer}"
                stored = storage.stored(dg.AssetKey(["scores", name]), key)
                expl = storage.stored(dg.AssetKey(["explanations", name]), key)
                rec = storage.stored(dg.AssetKey("records"), key)
                if not stored or not expl or not rec or expl.get("skipped") or not np.isfinite(stored.get("score", np.nan)):
                    skipped.append(f"{name} {key}")
                    continue
                runs.append(stored_seed_score(stored, str(Explanation.from_record(expl["explanation"]))))
                hol = None
                if cond.holistic:
                    hol = holistic_lookup(storage.stored(dg.AssetKey("holistic_activations"), key))
                lay, feat = parse_layer_key(layer), parse_feature_key(feature)
                simulator = llm.simulator()
                runs += reseed_one(
                    preset, cond, llm.explainer(cond.explainer_model), simulator.simulate_explanation, lay, feat,
                    rec.frame, float(expl["max_act"]), seeds, score_seed(preset, name, lay, feat), hol,
                )  # fmt: skip
                print(f"  {name} {key}: seeds 1-{seeds - 1} explained and scored", flush=True)
    spread = seed_spread(runs)
    report = {
        "preset": preset.name, "seeds": seeds, "layers": layer_keys, "features": feature_keys,
        "skipped (no stored score)": skipped, "conditions": spread,
        "runs": [dataclasses.asdict(r) for r in runs],
    }  # fmt: skip
    out = data_home() / "exports" / preset.name / "reseed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: p.write_text(json.dumps(report, indent=1, default=str)))
    if as_json:
        print(json.dumps(report, default=str))
        return
    print(f"{preset.name}: {seeds} seeds per feature (seed 0: the stored explanation); report: {out}")
    print(f"{'condition':36s} {'features':>8s} {'seed means':>28s} {'between-seed sd':>15s} {'records ±':>9s}")
    for name, s in spread.items():
        means = " ".join(f"{m:.3f}" for m in s["means"].values()) or "-"
        print(f"{name:36s} {s['features']:>8d} {means:>28s} {s['between_seed_sd']:>15.3f} {s['record_halfwidth']:>9.3f}")
