"""Builders for tests: tiny random-weight transformers models and SAEs (no hub, no files)."""

from __future__ import annotations

import torch
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

# Private Dagster names live here only (tests/test_layout.py checks it): Dagster has no public API
# for launching a backfill outside GraphQL, nor for a backfill's status enum; the tag strings below
# are the documented run tags of a ranged run (public values, private constants). The k8s executor's
# pod specs can only be built without a cluster from an execution plan (InMemoryJob, create_execution_plan).
__all__ = ["BulkActionStatus", "InMemoryJob", "create_execution_plan", "PARTITION_RANGE_END_TAG", "PARTITION_RANGE_START_TAG", "BACKFILL_ID_TAG"]
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_ID_TAG = "dagster/backfill"


def tiny_llama(n_layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # test-local model construction; library code never seeds globally
    cfg = LlamaConfig(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(n_layers: int = 3, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=101, n_embd=32, n_layer=n_layers, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def random_sae(
    d_in: int, d_sae: int = 64, k: int = 8, layer: int = 1, seed: int = 0, metadata: dict | None = None
):
    """A TopK sae-lens SAE with random weights and a small negative-biased encoder (sparse but alive)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = {"hook_name": f"blocks.{layer}.hook_resid_post", "model_class_name": "AutoModelForCausalLM"}
    meta.update(metadata or {})
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(**meta)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
    return sae.eval()


def tiny_llama_for(tokenizer, seed: int = 0, max_positions: int = 4096, **overrides):
    """A tiny random-weight Llama over a real tokenizer's vocabulary: real tokenization and chat
    templates, a forward pass in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # test-local model construction; library code never seeds globally
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        **overrides,
    )
    return LlamaForCausalLM(cfg).eval()


def launch_backfill(instance, defs, asset_selection, partitions: list[str] | None = None) -> str:
    """What the UI's launch-backfill mutation does: a PartitionBackfill added to the instance,
    for ``partitions`` of the selected assets (None: all their partitions); returns its id."""
    import time

    backfill_id = f"bf{int(time.time() * 1000) % 10**9}"
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=defs.resolve_asset_graph(),
        partition_names=partitions,
        asset_selection=list(asset_selection),
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=partitions is None,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


def start_daemon(log):
    """A real `dagster-daemon` for the code location, in its own process group (stop it with
    ``stop_daemon``: its run workers go with it). Its output goes to the file ``log``, not a pipe:
    run workers inherit the stream, and a full unread pipe would block them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-daemon"),
            "run",
            "-m",
            "featureinterp_assets.definitions",
        ],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=Path(log).open("w"),
        start_new_session=True,
    )


def stop_daemon(daemon) -> None:
    import os
    import signal

    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=60)
