"""Kubernetes scale-out: the same definitions, with every step in its own pod (dagster-k8s).

`featureinterp_assets.definitions` runs each run in one process (`in_process_executor`), so the
subject model loads once per run; that is the right default on one machine. On a cluster the
`k8s_job_executor` starts one Kubernetes Job per step instead, so a run's steps can land on
different nodes and only the steps that need a GPU ask for one. The price is one model load per
step pod, and stored values must live on storage every pod mounts ($FEATUREINTERP_HOME on a
ReadWriteMany volume; see deploy/k8s/values.yaml).

GPU requests follow the concurrency pool: every asset in the `gpu` pool gets
`nvidia.com/gpu: 1` in its step pod, through the executor's `per_step_k8s_config` (keyed by op
name). Dagster 1.13 cannot change an asset's op tags after it is defined
(dagster-io/dagster#20123), so the pool, which the assets already declare, is the single source
of truth. Equivalently, `K8S_GPU_TAGS` can be passed as `op_tags` where a GPU asset is defined.

Code location for the Helm chart's user deployment: `dagster api grpc -m featureinterp_assets.k8s`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_k8s import k8s_job_executor

from featureinterp.config import Preset
from featureinterp.presets import get_preset
from featureinterp_assets.constants import POOL_GPU
from featureinterp_assets.definitions import build_definitions

K8S_CONFIG_TAG = "dagster-k8s/config"
"""Op/run tag whose value dagster-k8s merges into the pod it launches."""

K8S_GPU_CONFIG: dict[str, Any] = {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
"""Pod config of a step that holds the subject model: one GPU (the device plugin's resource name)."""

K8S_GPU_TAGS: dict[str, Any] = {K8S_CONFIG_TAG: K8S_GPU_CONFIG}
"""The same request as op tags, for `@dg.asset(pool=POOL_GPU, op_tags=K8S_GPU_TAGS)`."""

POOL_K8S_CONFIG: dict[str, dict[str, Any]] = {POOL_GPU: K8S_GPU_CONFIG}
"""Extra pod config per concurrency pool; steps outside these pools get only the step default."""

DEFAULT_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}}}
}
"""Requests of every step pod: one core and room for a small subject model and a corpus shard."""


def pool_step_k8s_config(
    assets: Iterable[Any], pool_config: Mapping[str, Mapping[str, Any]] = POOL_K8S_CONFIG
) -> dict[str, dict[str, Any]]:
    """`per_step_k8s_config` for the k8s executor: op name -> pod config of the op's pool.

    Covers op-backed assets; asset specs, source assets and graph-backed assets (none here) are
    left to the step default.
    """
    out: dict[str, dict[str, Any]] = {}
    for a in assets:
        if not isinstance(a, dg.AssetsDefinition) or not a.is_executable:
            continue
        op = a.node_def
        if isinstance(op, dg.OpDefinition) and op.pool is not None and op.pool in pool_config:
            out[op.name] = copy.deepcopy(dict(pool_config[op.pool]))
    return out


def k8s_executor(
    per_step_k8s_config: Mapping[str, Mapping[str, Any]],
    max_concurrent: int = 8,
    step_k8s_config: Mapping[str, Any] = DEFAULT_STEP_K8S_CONFIG,
) -> dg.ExecutorDefinition:
    """`k8s_job_executor` with featureinterp's defaults; the Launchpad can still override them per run.

    ``max_concurrent`` caps the pods of one run (not global: the `gpu` pool limit in the instance
    caps GPU steps across runs). Image, namespace, env and volumes come from the K8sRunLauncher /
    user deployment, so they are not repeated here. dagster-k8s deep-merges the per-step config
    over ``step_k8s_config``, so GPU steps keep the CPU/memory requests.
    """
    return k8s_job_executor.configured(
        {
            "max_concurrent": max_concurrent,
            "step_k8s_config": copy.deepcopy(dict(step_k8s_config)),
            "per_step_k8s_config": copy.deepcopy({k: dict(v) for k, v in per_step_k8s_config.items()}),
        },
        name="featureinterp_k8s",
    )


def k8s_definitions(
    preset: Preset | str | None = None,
    home: Path | None = None,
    models: Path | None = None,
    max_concurrent: int = 8,
) -> dg.Definitions:
    """`build_definitions(...)` unchanged except for the executor (see the module docstring).

    ``preset`` is a Preset, a preset name, or None for $FEATUREINTERP_PRESET.
    """
    spec = preset if isinstance(preset, Preset) else get_preset(preset)
    base = build_definitions(spec, home=home, models=models)
    executor = k8s_executor(pool_step_k8s_config(base.assets or []), max_concurrent=max_concurrent)
    return dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        schedules=base.schedules,
        sensors=base.sensors,
        jobs=base.jobs,
        resources=base.resources,
        loggers=base.loggers,
        metadata=base.metadata,
        executor=executor,
    )


defs = k8s_definitions()
