"""`featureinterp` command: register layers and materialize the main lineage stage by stage.

A single Dagster CLI run cannot span assets with different partition definitions
(unpartitioned tokens, per-layer activations, ...), so `featureinterp run` launches one run per
stage (per layer for the per-feature stages, each covering that layer's features) on the
persistent instance in $DAGSTER_HOME; every run shows in `dagster dev` afterwards.
Stages already materialized are skipped (reruns resume); `--force` rebuilds them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from featureinterp.activations.models import load_tokenizer
from featureinterp.config import PRESET_ENV, Preset, feature_key, models_dir
from featureinterp.errors import ConfigError, CorruptFileError, UnavailableError
from featureinterp.llm.memory import release_free_memory
from featureinterp.names import GENERATED_SOURCE, SYNTHETIC_KEY
from featureinterp.presets import get_preset
from featureinterp.presets.scope import PresetScope
from featureinterp.simulate.summary import results_table
from featureinterp_assets.eta import RunEta, block_seconds, estimate, stage_kind, stage_speedup
from featureinterp_assets.freshness import (
    Freshness,
    run_tags,
    stored_conditions,
    stored_features,
    stored_value_problem,
    sweep_dead_runs,
    with_conditions,
)
from featureinterp_assets.outcome import fail, failures, step_error, where_to_look
from featureinterp_assets.partitions import missing_blocks, range_tags
from featureinterp_assets.standin_server import start_standin
from featureinterp_assets.summaries import RESULTS_CAPTION, rebuild_summaries, results
from featureinterp_assets.terminal import Terminal

PRESET_MARKER = "featureinterp_preset"
"""File in $DAGSTER_HOME naming the preset whose runs the instance holds."""


def _instance(preset: str) -> dg.DagsterInstance:
    """The instance of ``preset``: $DAGSTER_HOME, else ./.dagster_home/<preset>.

    One instance serves one preset: every preset has the same asset keys and partition keys
    (``records`` F0000|L05), so a second preset in the same instance would find the first one's
    materializations and skip its own stages. The instance remembers its preset and refuses another.
    """
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path.cwd() / ".dagster_home" / preset)))
    home.mkdir(parents=True, exist_ok=True)
    marker = home / PRESET_MARKER
    if marker.exists() and marker.read_text().strip() != preset:
        raise ConfigError(
            f"DAGSTER_HOME={home} holds the runs of preset {marker.read_text().strip()!r}, not {preset!r}: "
            "one instance serves one preset (their asset keys are the same); set DAGSTER_HOME to "
            f"another folder, e.g. {Path.cwd() / '.dagster_home' / preset}"
        )
    marker.write_text(preset + "\n")
    (home / "dagster.yaml").touch()  # default local (SQLite) instance; see docs/operations.md for Postgres
    return dg.DagsterInstance.get()


_PROGRESS = RunEta()
"""Elapsed time and ETA of the current `featureinterp run` (re-planned by each run)."""

_OUT = Terminal(Path(os.devnull), verbose=True)
"""The current invocation's terminal output and log file (replaced by `run`)."""


def _steps(defs: dg.Definitions, selection: list[str]) -> int:
    """How many steps a run of ``selection`` has: one per asset definition (a multi-asset is one)."""
    keys = {dg.AssetKey.from_user_string(a) for a in selection}
    return sum(1 for a in cast("Iterable[dg.AssetsDefinition]", defs.assets) if keys & set(a.keys))


def _run(
    defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[str],
    tags: dict[str, str] | None = None, partition_key: str | None = None, units: float = 0.0,
    must_succeed: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialize ``selection`` in one run; ``units``: its estimated seconds (for the ETA).
    ``must_succeed``: a failed run ends the command (nothing downstream can go on); otherwise the
    caller reads what failed from the result (``_failures``)."""
    _OUT.note(
        f"{_PROGRESS.line()} --> materializing {', '.join(selection)}"
        + (f" [{partition_key or tags}]" if partition_key or tags else "")
    )
    _OUT.run_started(_steps(defs, selection))
    start = time.perf_counter()
    result = dg.materialize(
        list(cast("Iterable[dg.AssetsDefinition]", defs.assets)),  # build_definitions: only these
        selection=selection,
        instance=instance,
        resources=defs.resources,
        run_config=_OUT.run_config(),
        tags=(tags or {}) | run_tags(),  # which process runs it: a killed one is swept next time
        partition_key=partition_key,
        raise_on_error=False,
    )
    seconds = time.perf_counter() - start
    _OUT.append_run_log(instance, result.run_id)
    release_free_memory()  # the run's freed tensors back to the OS before the next run (memory.py)
    if not result.success:
        reason = step_error(result)
        if must_succeed:
            raise SystemExit(f"featureinterp: run {result.run_id} failed: {reason}")
        _OUT.note(f"    FAILED in {seconds:.1f} s (run {result.run_id}): {reason}")
        if not _OUT.verbose:
            _OUT.say(f"FAILED run {result.run_id}: {reason}")
        return result
    _PROGRESS.done(stage_kind(selection), units, seconds)
    _OUT.note(f"    done in {seconds:.1f} s")
    return result


def _whole_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, stage: str, selection: list[str], total: int,
    unit: str, **kwargs,
) -> None:
    """A stage of one run (tokens, the SAE + activation pass, embeddings): its line counts ``total``
    ``unit`` done when the run ends."""
    with _OUT.stage(stage, total, unit):
        _run(defs, instance, selection, **kwargs)
        _OUT.run_finished(total)


def _per_feature_stage(
    defs: dg.Definitions,
    fresh: Freshness,
    assets: list[str],
    layer_keys: list[str],
    feature_keys: list[str],
    force: bool,
    scope: dict[str, frozenset[str]] | None = None,
    stage: str = "",
) -> tuple[int, dict[tuple[str, str | None], str]]:
    """Materialize per-feature ``assets``, one run per layer (per block of features to compute):
    the run's process loads each model once and computes every (layer, feature) on its own. A
    failed partition is reported and the others go on. Returns how many partitions ran and
    ``(asset, partition) -> why`` for each one this command failed to materialize. ``stage``: the
    name of its terminal line (none when there is nothing to run)."""
    failed: dict[tuple[str, str | None], str] = {}
    blocks = [
        (layer, features, todo)
        for layer in layer_keys
        for features, todo in missing_blocks(fresh, layer, feature_keys, assets, force, scope)
    ]
    ran = sum(len(features) for _, features, _ in blocks)
    if not blocks:
        return 0, failed
    with _OUT.stage(stage or ", ".join(assets), ran):
        for layer, features, todo in blocks:
            units = block_seconds(len(features), todo)
            result = _run(
                defs, fresh.instance, todo, tags=range_tags(layer, features), units=units, must_succeed=False
            )
            keys = [str(dg.MultiPartitionKey({"layer": layer, "feature": f})) for f in features]
            within = scope or {}
            planned: dict[str, list[str | None]] = {
                a: [k for k in keys if a not in within or k in within[a]] for a in todo
            }
            now = failures(result, planned)
            _OUT.run_finished(len(features), len({p for _, p in now}))
            failed |= now
    return ran, failed


def run(
    preset_name: str | None,
    force: bool,
    explain: bool = True,
    conditions: list[str] | None = None,
    features: list[int] | None = None,
    layers: list[str] | None = None,
    standin: bool = False,
    whole_grid: bool = False,
    verbose: bool = False,
) -> None:
    """``verbose``: stream every log line and Dagster event; otherwise one line per stage
    (terminal.py) and the whole log in a file under $FEATUREINTERP_HOME/logs."""
    from featureinterp.config import data_home

    global _OUT
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _OUT = Terminal(data_home() / "logs" / f"run-{stamp}-{os.getpid()}.log", verbose=verbose)
    _OUT.start_logging()
    server = None
    # a stand-in preset named directly (e.g. FEATUREINTERP_PRESET=gemma-2-9b-standin) needs its
    # files and its explainer server just the same
    standin = standin or (preset_name or os.environ.get(PRESET_ENV) or "").endswith("-standin")
    with _OUT.session():
        try:
            if standin:
                preset, server = start_standin(preset_name)
            else:
                preset = get_preset(preset_name)
            _run_lineage(preset, force, explain, conditions, features, layers, whole_grid)
        except (SystemExit, Exception):  # a failure ends the command: say where its whole log is
            _OUT.say(f"the whole log of this run: {_OUT.log_path}")
            raise
        finally:
            if server is not None:
                _OUT.say(f"stand-in explainer server answered {server.requests} requests")
                server.stop()
    if standin:
        from featureinterp.presets.standin import MEANINGLESS

        print(f"featureinterp: {MEANINGLESS}", flush=True)


def _run_lineage(
    preset: Preset, force: bool, explain: bool, conditions: list[str] | None, features: list[int] | None,
    layers: list[str] | None, whole_grid: bool = False,
) -> None:
    from featureinterp.explain.conditions import get_condition
    from featureinterp_assets.definitions import build_definitions
    from featureinterp_assets.partitions import register_layers

    if conditions:
        [get_condition(c) for c in conditions]  # unknown names fail here, with the list of known ones
    # the run explains ``conditions``; the figures and exports keep the preset's whole grid (plus
    # any condition a run added): a slice adds to them, never removes
    run_conditions = tuple(conditions or preset.explain.conditions)
    preset = with_conditions(preset, run_conditions)
    feature_keys = preset.feature_keys
    if features:  # restricts records and explanations; activations always hold all preset features
        unknown = sorted(set(features) - set(preset.features))
        if unknown:
            raise ConfigError(
                f"--features {','.join(map(str, unknown))}: not studied by preset {preset.name!r} "
                f"(its features: {','.join(map(str, preset.features))})"
            )
        feature_keys = [feature_key(f) for f in sorted(set(features))]
    layer_keys = preset.layer_keys
    if layers:  # in the order given: e.g. `--layers SYN` explains the ground-truth features first
        unknown_layers = [k for k in layers if k not in layer_keys]
        if unknown_layers:
            raise ConfigError(
                f"--layers {','.join(unknown_layers)}: not studied by preset {preset.name!r} "
                f"(its layers: {','.join(layer_keys)})"
            )
        layer_keys = list(dict.fromkeys(layers))
    from featureinterp.presets.files import is_preset_file

    if not is_preset_file(os.environ.get(PRESET_ENV, "")):  # a preset file stays named by its path
        os.environ[PRESET_ENV] = preset.name
    load_tokenizer(preset.model, models_dir())  # fail fast, with one clear line, when offline
    from featureinterp.preflight import preflight

    preflight(preset, api=False)  # layers, SAE widths and folders: before any work
    instance = _instance(preset.name)
    swept = sweep_dead_runs(instance)
    if swept:
        _OUT.say(f"marked {len(swept)} run(s) failed that a killed process left STARTED: {', '.join(swept)}")
    preset = with_conditions(preset, stored_conditions(instance))
    defs = build_definitions(preset)  # $FEATUREINTERP_HOME / $FEATUREINTERP_MODELS
    added = register_layers(instance, preset)
    _OUT.say(
        f"preset {preset.name}: layers {', '.join(preset.layer_keys)}"
        + (f" (registered {', '.join(added)})" if added else "")
    )
    fresh = Freshness.of(defs, instance, problem=stored_value_problem(defs))

    global _PROGRESS
    _PROGRESS = RunEta(speedup=stage_speedup(preset, os.environ.get("FEATUREINTERP_DEVICE", "auto")))
    need_tokens = force or not fresh.done("corpus_tokens", [None])
    current = [fresh.done(a, layer_keys) for a in ("sae", "sae_activations")]
    todo = [
        k
        for k in layer_keys
        if force
        or any(k not in keys for keys in current)
        or not set(preset.features) <= stored_features(instance, k)  # the preset gained features
    ]
    need_embeddings = force or not fresh.done("corpus_embeddings", [None])
    # Holistic values cost a forward pass per (row, token) of the top records: only computed when
    # a condition of this run prompts with them (Fig. 4's structured_holistic cells).
    covers = PresetScope.of(preset, whole_grid)
    scope = covers.assets()
    stage = ["records"] + (
        ["holistic_activations"] if set(covers.holistic_conditions) & set(run_conditions) else []
    )
    assets = [f"{kind}/{c}" for c in run_conditions for kind in ("explanations", "scores")]
    scorers = [f"embedding/{c}" for c in run_conditions] + [
        f"{s}/{c}" for c in covers.secondary if c in run_conditions for s in ("detection", "fuzzing")
    ]
    if preset.generated_condition in run_conditions:  # counterexamples written from its explanations
        scorers.append(GENERATED_SOURCE)
    # the whole run's work, estimated up front, so every stage line carries an ETA
    sae_seconds = estimate("sae", preset.n_rows * len([k for k in todo if k != SYNTHETIC_KEY]))
    _PROGRESS.plan("corpus_tokens", estimate("corpus_tokens", preset.n_rows) if need_tokens else 0)
    _PROGRESS.plan("sae", sae_seconds)
    _PROGRESS.plan(
        "corpus_embeddings", estimate("corpus_embeddings", preset.n_rows) if need_embeddings else 0
    )
    for kind, selection in (
        ("records", stage),
        ("explain", assets + ["baselines"] if explain else []),
        ("scorers", scorers if explain else []),
    ):
        for layer in layer_keys if selection else []:
            for fs, block in missing_blocks(fresh, layer, feature_keys, selection, force, scope):
                _PROGRESS.plan(kind, block_seconds(len(fs), block))
    figures = ["fig3", "fig4", "fig5"] + (["fig_calibration"] if SYNTHETIC_KEY in preset.layer_keys else [])
    if explain and "explain" in _PROGRESS.planned:
        _PROGRESS.plan("layer_results", estimate("layer_results", len(layer_keys)))
        _PROGRESS.plan("figures", estimate("figures", len(figures)))
        _PROGRESS.plan("export", estimate("export", len(layer_keys) + 1))

    if {"explain", "scorers"} & set(_PROGRESS.planned):  # the API explainer will be asked
        from featureinterp.preflight import preflight

        preflight(preset, hub=False)  # its key and server, before any stage runs
    if need_tokens:
        units = estimate("corpus_tokens", preset.n_rows)
        _whole_run(defs, instance, "corpus tokens", ["corpus_tokens"], 1, "runs", units=units)
    if todo:  # one run for all layers: one forward pass serves them all
        keys = preset.layer_keys
        lo, hi = min(keys.index(k) for k in todo), max(keys.index(k) for k in todo)
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[lo], ASSET_PARTITION_RANGE_END_TAG: keys[hi]}
        _whole_run(
            defs, instance, "SAEs + activations", ["sae", "sae_activations"], len(todo), "layers",
            tags=tags, units=sae_seconds,
        )
    if need_embeddings:
        units = estimate("corpus_embeddings", preset.n_rows)
        _whole_run(defs, instance, "corpus embeddings", ["corpus_embeddings"], 1, "runs", units=units)
    _, failed = _per_feature_stage(defs, fresh, stage, layer_keys, feature_keys, force, scope, "records")
    if failed:
        fail(failed, "records", preset, run_conditions, conditions is not None)
    if explain:
        _, failed = _per_feature_stage(
            defs, fresh, assets + ["baselines"], layer_keys, feature_keys, force, scope, "explanations + scores"
        )
        # secondary scores of the explanations this run left current: never of one whose
        # recomputation just failed (its old value is still stored)
        every = {f"{f}|{x}" for x in layer_keys for f in feature_keys}
        broken = {(a.split("/")[1], k) for a, k in failed if "/" in a}

        def condition_of(asset: str) -> str | None:
            return preset.generated_condition if asset == GENERATED_SOURCE else asset.split("/")[1]

        scorer_scope = {
            a: frozenset(k for k in scope.get(a, every) if (condition_of(a), k) not in broken) for a in scorers
        }
        _, failed_scores = _per_feature_stage(
            defs, fresh, scorers, layer_keys, feature_keys, force, scope | scorer_scope, "secondary scores"
        )
        failed |= failed_scores
        # Summaries from everything stored, with an "n of m features" caption where cells lack.
        def build(selection: list[str], partition: str | None, units: float) -> dict[tuple[str, str | None], str]:
            result = _run(defs, fresh.instance, selection, partition_key=partition, units=units, must_succeed=False)
            now = failures(result, {a: [partition] for a in selection})
            _OUT.run_finished(1, 1 if now else 0)
            return now

        with _OUT.stage("tables, figures, exports", None, "runs"):
            failed |= rebuild_summaries(fresh, preset, figures, force, build, _OUT.say)
        _OUT.close_bars()
        rows = results(preset, failed, scope)
        if rows:  # what the stored explanations scored, this run's and earlier ones'
            _OUT.say("\n" + RESULTS_CAPTION + "\n" + results_table(rows))
        if failed:
            where_to_look(preset, figures, _PROGRESS.line(), done=False)
            step = "explanation" if any("/" in a or a == "baselines" for a, _ in failed) else "summary"
            fail(failed, step, preset, run_conditions, conditions is not None)
    where_to_look(preset, figures if explain else [], _PROGRESS.line())


def main(argv: list[str] | None = None) -> None:
    from featureinterp.llm.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before Dagster starts its threads (featureinterp/llm/memory.py)
    from featureinterp_assets.cli_parser import build_parser

    parser = build_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.command != "run":  # `run` sends its log to a file (terminal.py)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        from featureinterp.preflight import parse_conditions, parse_features, parse_layers
        from featureinterp.presets.files import is_preset_file
        from featureinterp_assets.cli_inspect import plan, presets, reseed, scores, simulate

        # flag values are parsed here, so a typo stops with one line before anything is loaded
        conditions = getattr(args, "conditions", None)
        conditions = parse_conditions(conditions) if conditions is not None else None
        if args.command == "run":
            if args.preset and is_preset_file(args.preset):
                # named by its path, as FEATUREINTERP_PRESET=<file> names it: the run's hints (a
                # figure's "no scores yet") then name a preset that resolves
                os.environ[PRESET_ENV] = str(Path(args.preset).resolve())
            run(
                args.preset,
                args.force,
                explain=not args.no_explain,
                conditions=conditions,
                features=parse_features(args.features) if args.features is not None else None,
                layers=parse_layers(args.layers) if args.layers is not None else None,
                standin=args.standin,
                whole_grid=args.whole_grid,
                verbose=args.verbose,
            )
        elif args.command == "plan":
            plan(
                args.preset,
                conditions,
                args.json,
                args.paper_grid,
                args.whole_grid,
                args.calibration,
            )
        elif args.command == "presets":
            presets(args.presets_command, getattr(args, "name", None), getattr(args, "format", "toml"))
        elif args.command == "scores":
            scores(args.preset, args.explanations)
        elif args.command == "reseed":
            reseed(
                args.preset,
                args.seeds,
                conditions,
                parse_layers(args.layers) if args.layers is not None else None,
                parse_features(args.features) if args.features is not None else None,
                args.json,
            )
        elif args.command == "simulate":
            simulate(args.preset, args.layer, args.feature, args.explanation, args.structured)
        else:
            from featureinterp_assets.partitions import register_layers

            preset = get_preset(args.preset)
            print("registered:", register_layers(_instance(preset.name), preset) or "nothing new")
    except (ConfigError, UnavailableError, CorruptFileError) as err:
        sys.exit(f"featureinterp: {err}")


if __name__ == "__main__":
    main()
