"""How a `featureinterp run` ends: what each run failed to materialize, and the one command that
retries it. A partition the instance held before the run is not this run's result: a run that
fails over a broken input must never report the old value as done (issue 28)."""

from __future__ import annotations

import os
import shlex

import dagster as dg

from featureinterp.config import PRESET_ENV, Preset


def step_errors(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Failed step key -> its error, one line each, in the order the steps failed."""
    errors: dict[str, str] = {}
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_key:
            err = event.step_failure_data.error
            errors[event.step_key] = (err.cause or err).message.strip().splitlines()[0] if err else "see the log above"
    return errors


def step_error(result: dg.ExecuteInProcessResult) -> str:
    """The first failed step's error, one line."""
    return next(iter(step_errors(result).values()), "see the log above")


def not_drawn(figure: str, preset: Preset, cells: dict[str, list[str]]) -> str:
    """The line for a figure with no scores in its grid: said, never reported as drawn or failed
    (a run of other conditions or layers has nothing to put in it; materializing the figure on
    its own still fails with the same reason)."""
    conditions = sorted(a.split("/", 1)[1] for a, keys in cells.items() if keys)
    if not conditions:
        return f"{figure}: not drawn: preset {preset.name!r} studies no cell of its grid"
    layers = sorted({k.split("|")[1] for keys in cells.values() for k in keys})
    return (
        f"{figure}: not drawn: no scores in its grid yet (conditions {', '.join(conditions)}; "
        f"layers {', '.join(layers)}); draw it with: featureinterp run --preset "
        f"{os.environ.get(PRESET_ENV, preset.name)} "
        f"--layers {','.join(layers)} --conditions {','.join(conditions)}"
    )


def failures(
    result: dg.ExecuteInProcessResult, planned: dict[str, list[str | None]]
) -> dict[tuple[str, str | None], str]:
    """(asset, partition) -> why, for every planned partition the run did not materialize: what
    the instance held before the run is not this run's result, even when it exists (``--force``
    over a broken input must not report the old value as done)."""
    made = {
        (e.asset_key.to_user_string(), e.partition)
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key is not None
    }
    reasons: dict[str, str] = {}  # partition -> reason, from a ranged run's failure metadata
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        failed = (event.step_failure_data.user_failure_data or dg.Failure("")).metadata.get("failed")
        if isinstance(failed, dg.JsonMetadataValue) and isinstance(failed.value, dict):
            reasons |= {str(k): str(v) for k, v in failed.value.items()}
    errors = step_errors(result)  # an asset's own step's error, where the step is named after it
    fallback = next(iter(errors.values()), "see the log above") if not result.success else "not materialized by its run"
    return {
        (asset, part): reasons.get(str(part), errors.get(asset.replace("/", "__"), fallback))
        for asset, parts in planned.items()
        for part in parts
        if (asset, part) not in made
    }


def fail(
    failed: dict[tuple[str, str | None], str], stage: str, preset: Preset, conditions: tuple[str, ...],
    named_conditions: bool,
) -> None:
    """End the command with a non-zero status: what failed, why, and the command that retries it
    (a plain rerun computes exactly the failed partitions again: Freshness.done)."""
    print(f"featureinterp: {len(failed)} partition(s) failed in this run:", flush=True)
    for (asset, part), why in sorted(failed.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"    {asset} {part or ''}: {why}", flush=True)
    keys = [p for (_, p) in failed if p is not None]
    layers = sorted({k.split("|")[1] for k in keys if "|" in k} | {k for k in keys if "|" not in k})
    features = sorted({int(k.split("|")[0][1:]) for k in keys if "|" in k})
    retry = ["featureinterp", "run"]
    source = os.environ.get(PRESET_ENV, preset.name)
    retry += ["--preset", source]
    if layers:
        retry += ["--layers", ",".join(layers)]
    if features:
        retry += ["--features", ",".join(map(str, features))]
    if named_conditions:
        retry += ["--conditions", ",".join(conditions)]
    raise SystemExit(
        f"featureinterp: {stage} stage: {len(failed)} partition(s) failed (above); fix the cause, then "
        f"retry them with: {' '.join(retry)}"
    )


def where_to_look(preset: Preset, figures: list[str], progress: str, done: bool = True) -> None:
    """The run's last lines (after ``progress``, the elapsed time): where the figures are and how
    to open the UI. ``done``: the run materialized everything (else the failures follow)."""
    from featureinterp.config import data_home

    folder = data_home() / "storage" / preset.name / "figures"
    if done:
        print(f"{progress} done: {preset.name} lineage materialized")
    if figures:
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        print(f"figures ({len(pngs)} PNG files) in {folder}:")
        for png in pngs:
            print(f"    {png.name}")
    exports = data_home() / "exports" / preset.name
    if (exports / f"{preset.name}.parquet").is_file():
        print(
            f"explanations and scores as data: {exports / (preset.name + '.parquet')} (load it with "
            f"datasets.load_dataset(\"parquet\", data_files=...)) and {preset.name}.neuronpedia.json"
        )
    from featureinterp.presets.files import preset_reference

    home = os.environ["DAGSTER_HOME"]
    print(
        "browse every asset, its metadata and the figures in the Dagster UI:\n"
        f"    DAGSTER_HOME={home} FEATUREINTERP_PRESET={shlex.quote(preset_reference(preset.name))} "
        ".venv/bin/dagster dev\n"
        "    then open http://127.0.0.1:3000 (Assets -> fig5 -> the image in its metadata)"
    )


__all__ = ["fail", "failures", "step_error", "where_to_look"]
