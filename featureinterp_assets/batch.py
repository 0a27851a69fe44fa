"""Runs that cover many (layer, feature) partitions with one model load, each partition on its own.

A paper preset has 43 layers x 50 features; one run per partition would load a 27B simulator
thousands of times. The per-feature assets therefore take Dagster's single-run backfill policy:
a UI backfill, `dagster asset materialize --partition-range` and `featureinterp run` give one
run a range of partitions, and that run's process loads each model once (resources.load_model).

Dagster records a ranged output as one materialization per partition of the range, all or none,
and a raised error fails them all (dagster#17836). So a ranged run computes each partition
separately here: a partition that raises is logged and left out, the others are stored and
recorded, and the step fails at the end naming the failed ones. The instance then shows exactly
those partitions as failed (planned in a failed run, never materialized) and a re-launch of
"failed and missing" runs only them. A run of one partition behaves as an ordinary asset run
(its error fails it with its metadata; the retry policy applies).

Two ways to record a ranged run's partitions, chosen by the asset:

- ``as_you_go``: each partition is stored and recorded the moment it is done (progress shows in
  the UI, and a crashed run keeps what it finished). The step yields no output, so nothing
  downstream can run in the same run: used by the last per-feature step (explain + score).
- otherwise: when every partition succeeds the step yields one ordinary output for the range (so
  the downstream steps of the run go on), with each partition's own metadata; when one fails, the
  others are stored and recorded as above and the step fails.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from featureinterp.errors import CorruptFileError
from featureinterp.llm.memory import release_free_memory
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.terminal import partition_finished

BATCH_POLICY = dg.BackfillPolicy.single_run()
"""Backfill policy of the per-feature assets: one run per launched range (see the module doc)."""

CODE_VERSION_TAG = "dagster/code_version"

StepEvent = dg.Output | dg.AssetMaterialization | dg.AssetCheckResult
"""What a batched step yields (``each_partition``)."""


@dataclass
class Produced:
    """What one partition's computation made for one output of the step."""

    value: Any
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartitionResult:
    """One partition's outputs (by output name) and the asset-check outcomes it produced."""

    outputs: dict[str, Produced]
    checks: list[dg.AssetCheckResult] = field(default_factory=list)


def each_partition(
    context: dg.AssetExecutionContext,
    compute: Callable[[str], PartitionResult],
    storage: StorageIOManager,
    *,
    as_you_go: bool,
    retries: int = 0,
    retry_delay_s: float = 10.0,
    concurrency: int = 1,
) -> Iterator[StepEvent]:
    """Run ``compute(partition_key)`` for every partition of the step and yield Dagster's events.

    ``compute`` returns a :class:`PartitionResult` or raises; ``retries`` re-attempts a partition
    whose error is not a ``dg.Failure(allow_retries=False)`` (transient faults: a server that gave
    up, CUDA out of memory), after ``retry_delay_s`` seconds, before it counts as failed.
    ``concurrency`` > 1 computes that many partitions at once in threads (each in a copy of the
    context, so per-partition usage tallies stay exact); results are recorded in key order.
    """
    keys = list(context.partition_keys)
    outputs = _selected_outputs(context)
    if len(keys) == 1:  # an ordinary run: errors fail it and the step's retry policy applies
        result = compute(keys[0])
        partition_finished(keys[0], ok=True)
        for name, made in result.outputs.items():
            if name in outputs:
                yield dg.Output(made.value, output_name=name, metadata=made.metadata)
        yield from result.checks
        return

    done: dict[str, PartitionResult] = {}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=concurrency) if concurrency > 1 else None
    futures: dict[str, Future[PartitionResult]] = (
        {
            key: pool.submit(
                contextvars.copy_context().run, _attempt, context, compute, key, retries, retry_delay_s
            )
            for key in keys
        }
        if pool
        else {}
    )
    for i, key in enumerate(keys):
        try:
            if pool:
                result = futures[key].result()
            else:
                result = _attempt(context, compute, key, retries, retry_delay_s)
        except Exception as err:  # one partition's failure must not stop the others
            failed[key] = _reason(err)
            context.log.error(f"partition {key} failed: {failed[key]}")
            partition_finished(key, ok=False)
            continue
        done[key] = result
        if as_you_go:
            yield from _record(context, storage, outputs, key, result)
        release_free_memory(collect=False)  # this partition's freed tensors back to the OS (memory.py)
        partition_finished(key, ok=True)  # the terminal's stage bar (terminal.py)
        context.log.info(
            f"partition {key} done ({i + 1} of {len(keys)}, {len(failed)} failed, "
            f"{time.perf_counter() - started:.0f} s)"
        )
    if pool:
        pool.shutdown()
    yield from _checks(done)
    if failed:
        if not as_you_go:
            for key, result in done.items():
                yield from _record(context, storage, outputs, key, result)
        raise dg.Failure(
            description=f"{len(failed)} of {len(keys)} partitions failed (the other {len(done)} are "
            "stored; re-launch the failed ones): " + "; ".join(f"{k}: {r}" for k, r in failed.items()),
            metadata={"failed": dg.MetadataValue.json(failed), "succeeded": len(done)},
            allow_retries=False,
        )
    if not as_you_go:
        for name, asset_key in outputs.items():
            for key, result in done.items():
                context.add_asset_metadata(
                    result.outputs[name].metadata, asset_key=asset_key, partition_key=key
                )
            yield dg.Output({k: r.outputs[name].value for k, r in done.items()}, output_name=name)


def _attempt(
    context: dg.AssetExecutionContext,
    compute: Callable[[str], PartitionResult],
    key: str,
    retries: int,
    delay: float,
) -> PartitionResult:
    """``compute(key)``, re-attempted on transient errors; a ``dg.Failure(allow_retries=False)``
    or a ``CorruptFileError`` (a damaged stored file or table: reading it again cannot help)
    fails at once."""
    for attempt in range(retries + 1):
        try:
            return compute(key)
        except CorruptFileError:
            raise
        except dg.Failure as err:
            if not err.allow_retries or attempt == retries:
                raise
        except Exception:
            if attempt == retries:
                raise
        context.log.warning(f"partition {key}: attempt {attempt + 1} failed, retrying in {delay:.0f} s")
        time.sleep(delay)
    raise AssertionError("unreachable")


def _selected_outputs(context: dg.AssetExecutionContext) -> dict[str, dg.AssetKey]:
    """Output name -> asset key of the outputs this step must produce (a subset of a multi-asset)."""
    by_name = context.assets_def.keys_by_output_name
    selected = context.selected_output_names
    return {name: key for name, key in by_name.items() if name in selected}


def _record(
    context: dg.AssetExecutionContext,
    storage: StorageIOManager,
    outputs: Mapping[str, dg.AssetKey],
    key: str,
    result: PartitionResult,
) -> Iterator[dg.AssetMaterialization]:
    version = context.assets_def.code_versions_by_key
    for name, asset_key in outputs.items():
        made = result.outputs[name]
        storage.store(asset_key, key, made.value)
        tags = {CODE_VERSION_TAG: version[asset_key]} if version.get(asset_key) else {}
        yield dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata=made.metadata, tags=tags)


def _checks(done: Mapping[str, PartitionResult]) -> Iterator[dg.AssetCheckResult]:
    """One result per check for the whole range: passed when every partition passed; the failing
    partitions and their details in the metadata."""
    by_name: dict[tuple[dg.AssetKey | None, str | None], list[tuple[str, dg.AssetCheckResult]]] = {}
    for key, result in done.items():
        for check in result.checks:
            by_name.setdefault((check.asset_key, check.check_name), []).append((key, check))
    for (asset_key, name), results in by_name.items():
        bad = [(k, c) for k, c in results if not c.passed]
        first = (bad or results)[0][1]
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=name,
            passed=not bad,
            severity=first.severity,
            metadata={
                "partitions": len(results),
                "failed_partitions": dg.MetadataValue.json([k for k, _ in bad]),
                **({"first_failure": _text(first.metadata.get("detail"))} if bad else {}),
            },
        )


def _reason(err: BaseException) -> str:
    text = err.description if isinstance(err, dg.Failure) and err.description else str(err)
    return f"{type(err).__name__}: {text}" if not isinstance(err, dg.Failure) else text


__all__ = ["BATCH_POLICY", "PartitionResult", "Produced", "StepEvent", "each_partition"]


def _text(value: object) -> str:
    return str(getattr(value, "value", value) or "")
