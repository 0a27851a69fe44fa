"""The Kubernetes definitions load, and GPU-pool steps would get a GPU: no cluster needed.

The pod a step would get is built by dagster-k8s's own code (the k8s executor's step handler,
merging the instance's K8sRunLauncher config, the executor config and the step's op tags), from a
kubeconfig that points nowhere: nothing talks to a cluster.
"""

from __future__ import annotations

import json
import types

import dagster as dg
import pytest
from dagster_k8s.job import construct_dagster_k8s_job

from featureinterp.presets import get_preset
from featureinterp_assets.constants import POOL_GPU
from featureinterp_assets.definitions import build_definitions
from featureinterp_assets.k8s import K8S_GPU_TAGS, k8s_definitions, pool_step_k8s_config
from tests.helpers import InMemoryJob, create_execution_plan

PRESET = get_preset("embedded-tiny")
GPU = "nvidia.com/gpu"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


@pytest.fixture(scope="module")
def k8s_defs(tmp_path_factory) -> dg.Definitions:
    home = tmp_path_factory.mktemp("k8s_home")
    return k8s_definitions(PRESET, home=home, models=home / "models")


def _executor_name(defs: dg.Definitions) -> str:
    return defs.resolve_implicit_global_asset_job_def().executor_def.name


def test_k8s_definitions_load_and_match_the_default_definitions(k8s_defs, tmp_path_factory):
    dg.Definitions.validate_loadable(k8s_defs)
    assert k8s_defs.get_repository_def().get_top_level_resources()
    home = tmp_path_factory.mktemp("plain_home")
    plain = build_definitions(PRESET, home=home, models=home / "models")
    assert set(k8s_defs.resolve_all_asset_keys()) == set(plain.resolve_all_asset_keys())
    assert {j.name for j in k8s_defs.resolve_all_job_defs()} == {j.name for j in plain.resolve_all_job_defs()}
    assert {s.name for s in k8s_defs.sensors} == {s.name for s in plain.sensors}
    assert set(k8s_defs.resources) == set(plain.resources)
    assert _executor_name(plain) == "in_process" and _executor_name(k8s_defs) == "featureinterp_k8s"


def test_jobs_resolve_with_the_k8s_executor_and_valid_config(k8s_defs):
    for job in (k8s_defs.resolve_job_def("layer_job"), k8s_defs.resolve_implicit_global_asset_job_def()):
        assert job.executor_def.name == "featureinterp_k8s"
        # the configured defaults pass dagster-k8s's executor schema (what a launched run checks)
        execution = dg.validate_run_config(job, {})["execution"]["featureinterp_k8s"]
        assert execution["max_concurrent"] == 8
        assert execution["step_k8s_config"]["container_config"]["resources"]["requests"]["cpu"] == "1"
        per_step = execution["per_step_k8s_config"]
        assert {"sae", "sae_activations", "holistic_activations"} <= set(per_step)


def test_pool_step_config_covers_exactly_the_gpu_pool(k8s_defs):
    per_step = pool_step_k8s_config(k8s_defs.assets)
    gpu_ops = {
        a.node_def.name
        for a in k8s_defs.assets
        if isinstance(a, dg.AssetsDefinition) and a.op.pool == POOL_GPU
    }
    assert gpu_ops and set(per_step) == gpu_ops
    assert all(c["container_config"]["resources"]["limits"][GPU] == "1" for c in per_step.values())


@pytest.fixture(scope="module")
def step_pod(k8s_defs, tmp_path_factory):
    """Function: step key -> the V1Job dagster-k8s would submit for it (launcher mounts shared storage)."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    launcher = {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": {
            "service_account_name": "dagster",
            "instance_config_map": "dagster-instance",
            "dagster_home": "/opt/dagster/dagster_home",
            "load_incluster_config": False,
            "kubeconfig_file": str(kubeconfig),
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "featureinterp-data"}}],
            "volume_mounts": [{"name": "data", "mountPath": "/data"}],
        },
    }
    job = k8s_defs.resolve_implicit_global_asset_job_def()
    plan = create_execution_plan(job)
    config = dg.validate_run_config(job, {})["execution"]["featureinterp_k8s"]
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        executor = job.executor_def.executor_creation_fn(
            dg.InitExecutorContext(
                job=InMemoryJob(job),
                executor_def=job.executor_def,
                executor_config={
                    **config,
                    "load_incluster_config": False,
                    "kubeconfig_file": str(kubeconfig),
                },
                instance=instance,
            )
        )

        def pod(step_key: str, extra_tags: dict | None = None):
            step = plan.get_step_by_key(step_key)
            context = types.SimpleNamespace(  # what K8sStepHandler reads from a StepHandlerContext
                execute_step_args=types.SimpleNamespace(step_keys_to_execute=[step_key]),
                dagster_run=types.SimpleNamespace(job_code_origin=None, tags={}),
                instance=instance,
                step_tags={step_key: {**step.tags, **(extra_tags or {})}},
                get_step_context=lambda _key: types.SimpleNamespace(step=step),
            )
            container_context = executor._step_handler._get_container_context(context)
            return construct_dagster_k8s_job(
                container_context.get_k8s_job_config("featureinterp:test", instance.run_launcher),
                args=["dagster", "api", "execute_step"],
                job_name=f"step-{step_key}",
                user_defined_k8s_config=container_context.run_k8s_config,
                pod_name=f"step-{step_key}",
                component="step_worker",
            ).spec.template.spec

        yield plan, pod


def test_gpu_pool_steps_request_a_gpu_and_keep_cpu_requests(k8s_defs, step_pod):
    plan, pod = step_pod
    pools = {a.node_def.name: a.op.pool for a in k8s_defs.assets if isinstance(a, dg.AssetsDefinition)}
    seen_gpu = set()
    for step in plan.steps:
        resources = pod(step.key).containers[0].resources
        assert resources.requests == {"cpu": "1", "memory": "4Gi"}, step.key
        has_gpu = GPU in (resources.limits or {})
        assert has_gpu == (pools[step.key] == POOL_GPU), step.key
        if has_gpu:
            assert resources.limits[GPU] == "1"
            seen_gpu.add(step.key)
    assert {"sae", "sae_activations", "holistic_activations"} <= seen_gpu


def test_step_pods_mount_the_launchers_shared_storage(step_pod):
    _, pod = step_pod
    spec = pod("sae_activations")
    assert [m.mount_path for m in spec.containers[0].volume_mounts] == ["/data"]
    assert spec.volumes[0].persistent_volume_claim.claim_name == "featureinterp-data"


def test_gpu_op_tags_give_the_same_request(step_pod):
    """K8S_GPU_TAGS, attached as op_tags where an asset is defined, is read by the same code path."""
    _, pod = step_pod
    resources = (
        pod("corpus_tokens", extra_tags={k: json.dumps(v) for k, v in K8S_GPU_TAGS.items()})
        .containers[0]
        .resources
    )
    assert resources.limits == {GPU: "1"} and resources.requests["cpu"] == "1"
