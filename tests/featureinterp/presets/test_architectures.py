"""Architecture conformance: every code path that reuses a key/value cache or reads the residual
stream gives the reference result on each architecture the presets run on.

Tiny random-weight models of the real transformers classes (featureinterp.presets.architectures) with the
real tokenizer of the embedded model; sliding-window architectures run with a window both larger
(4096, as the real checkpoints) and smaller (8 or 16) than the sequences, so both the "window not
yet full" and the "window evicting" branches of the cache layers are exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featureinterp.activations.holistic import holistic_activations, holistic_activations_naive
from featureinterp.activations.models import residuals
from featureinterp.activations.sae import LoadedSae
from featureinterp.llm.backend import GenerationParams, user
from featureinterp.llm.local import LocalChatBackend
from featureinterp.presets.architectures import ARCHITECTURES, TinySpec, tiny_model
from featureinterp.simulate.simulator import DEFAULT_PROMPT, PAPER_PROMPT, LocalSimulator
from tests.helpers import random_sae

SLIDING = {"gemma2", "gemma3", "qwen2"}
CASES = [(arch, w) for arch in ARCHITECTURES for w in ((4096, 8) if arch in SLIDING else (4096,))]
IDS = [f"{a}-w{w}" if a in SLIDING else a for a, w in CASES]
RECORDS = [
    [" The", " ocean", " was", " calm", " in", " March", "."],
    [" In", " 1999", " we", " sailed", " the", " sea", "\n", " unknown", "\t", " again"],
    [" hello"],
]


@pytest.fixture(scope="module")
def tok(embedded_model):
    return embedded_model[1]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request, tok):
    arch, window = request.param
    spec = TinySpec(arch, vocab_size=len(tok), n_layers=6, sliding_window=window, max_positions=4096)
    return arch, window, tiny_model(spec, seed=1, std=0.2)


def _rows(n: int, t: int, vocab: int, seed: int = 0) -> np.ndarray:
    rows = torch.randint(10, vocab, (n, t), generator=torch.Generator().manual_seed(seed)).numpy()
    rows[:, 0] = 1
    return rows


def test_sae_activations_equal_a_full_forward(case, tok):
    """Residuals read by a hook with an early stop == the model's own hidden states."""
    _, _, model = case
    ids = torch.as_tensor(_rows(3, 20, len(tok)))
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # [L+1] x [B, T, d]
    got = residuals(model, ids, [1, 4])
    sae = LoadedSae.bind(random_sae(64, d_sae=64, k=8, layer=4), model, 4)
    for layer in (1, 4):
        assert (
            torch.equal(got[layer], hidden[layer + 1]) or (got[layer] - hidden[layer + 1]).abs().max() < 1e-6
        )
    acts, ref = sae.encode(got[4]), sae.encode(hidden[5])
    assert (acts > 0).any() and (acts - ref).abs().max() <= 1e-5


def test_holistic_values_equal_the_naive_definition(case, tok):
    _, _, model = case
    sae = LoadedSae.bind(random_sae(64, d_sae=64, k=8, layer=3), model, 3)
    rows = _rows(3, 13, len(tok), seed=2)
    fast = holistic_activations(model, sae, rows, [0, 5, 9, 17, 30], batch_size=2)
    naive = holistic_activations_naive(model, sae, rows, [0, 5, 9, 17, 30])
    assert np.abs(naive).max() > 1e-3  # not vacuous
    assert np.abs(fast - naive).max() <= 1e-4


@pytest.mark.parametrize("prompt", [DEFAULT_PROMPT, PAPER_PROMPT], ids=["tiny", "paper"])
def test_cached_simulation_equals_uncached(case, tok, prompt):
    _, _, model = case
    sim = LocalSimulator(model, tok, prompt, batch_size=2, memo_size=0)  # padded; every call runs
    cached = sim.simulate("the names of months", RECORDS)
    uncached = sim.simulate("the names of months", RECORDS, cached=False)
    assert max(float(np.std(c)) for c in cached) > 1e-4  # predictions differ between tokens
    for a, b in zip(cached, uncached, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4
    # the shared header is untouched by a second rule
    sim.simulate("something else", RECORDS[:1])
    again = sim.simulate("the names of months", RECORDS)
    assert max(np.abs(a - b).max() for a, b in zip(again, cached, strict=True)) <= 1e-6


def test_local_chat_n_samples(case, tok):
    from featureinterp.explanations.rules import explanation_schema

    _, _, model = case
    backend = LocalChatBackend(model, tok, name="tiny")
    msgs = [user("Explain the feature.")]
    schema = explanation_schema(2)
    sampled = backend.generate(
        msgs, GenerationParams(n=3, temperature=1.0, max_tokens=40, json_schema=schema, seed=3)
    )
    assert len(sampled) == 3
    greedy = GenerationParams(n=3, temperature=0, max_tokens=40, json_schema=schema)
    many = backend.generate(msgs, greedy)
    one = backend.generate(msgs, GenerationParams(n=1, temperature=0, max_tokens=40, json_schema=schema))
    assert len(one[0].text) > 5
    assert [c.text for c in many] == [one[0].text] * 3
    # a prompt that starts like a stored one runs only its new tokens, with the same logits as a
    # full prefill, on every architecture (recurrent layers: the store turns itself off)
    plain = LocalChatBackend(model, tok, name="plain")
    plain.prefixes.usable = False
    longer = [*msgs, {"role": "assistant", "content": many[0].text}, user("Shorter, please.")]
    digits = [str(d) for d in range(6)]
    reused = backend.next_token_logprobs(longer, "Answer:", digits)
    full = plain.next_token_logprobs(longer, "Answer:", digits)
    assert np.allclose(reused, full, atol=1e-4)
    assert backend.prefixes.reused_tokens > 0 or not backend.prefixes.usable


def test_speculative_decoding_equals_plain_decoding(case, tok):
    """Drafts rejected and accepted on every architecture: the cache is cut back after each
    rejection (sliding windows both evicting and not), and greedy replies equal plain decoding.
    Models whose cache cannot be cut (recurrent layers) decode one token per pass."""
    from featureinterp.activations import kv_cache
    from featureinterp.explanations.rules import explanation_schema

    _, _, model = case
    fast, plain = LocalChatBackend(model, tok, name="fast"), LocalChatBackend(model, tok, name="plain")
    plain.max_draft = 0
    msgs = [user("rules rules rules " * 6 + "Explain the feature.")]
    for schema in (explanation_schema(2), None):
        params = GenerationParams(n=1, temperature=0, max_tokens=30, json_schema=schema)
        assert fast.generate(msgs, params)[0].text == plain.generate(msgs, params)[0].text
    cuttable = kv_cache.can_cut(kv_cache.new_cache(model, keep_past=True))
    if cuttable:
        assert fast.drafts.drafted > fast.drafts.accepted >= 0 and fast.drafts.passes > 0
    else:
        assert fast.drafts.passes == 0
