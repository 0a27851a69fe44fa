import copy
import json

import numpy as np
import pytest
import torch

from featureinterp.explanations.rules import explanation_schema, parse_structured
from featureinterp.llm.backend import GenerationParams, user
from featureinterp.llm.local import LocalChatBackend
from featureinterp.presets.architectures import ARCHITECTURES

ARCH_CASES = [
    (a, w) for a in ARCHITECTURES for w in ((4096, 8) if a in ("qwen2", "gemma2", "gemma3") else (4096,))
]
"""(architecture, sliding window) of the tiny models the exactness test runs on (test_architectures' cases)."""


@pytest.fixture(scope="module")
def tiny_backend(embedded_model):
    """A tiny random-weight Llama with the real SmolLM2 tokenizer: random text, so a grammar is the
    only thing that can make its replies valid JSON."""
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    return LocalChatBackend(tiny_llama_for(tok, seed=1), tok, name="tiny")


def test_schema_replies_are_valid_by_construction(tiny_backend):
    params = GenerationParams(n=3, temperature=1.0, max_tokens=200, json_schema=explanation_schema(2), seed=7)
    outs = tiny_backend.generate([user("Explain the feature.")], params)
    assert len(outs) == 3
    finished = [o for o in outs if o.finish_reason == "stop"]
    assert finished, [o.text for o in outs]
    for o in finished:
        json.loads(o.text, strict=False)
        assert 1 <= len(parse_structured(o.text).rules) <= 2


def test_seeded_sampling_is_reproducible_and_private(tiny_backend):
    params = GenerationParams(n=2, temperature=1.0, max_tokens=12, seed=3)
    state = torch.random.get_rng_state()
    a = tiny_backend.generate([user("hi")], params)
    b = tiny_backend.generate([user("hi")], params)
    assert [o.text for o in a] == [o.text for o in b]
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG was not used
    c = tiny_backend.generate([user("hi")], GenerationParams(n=2, temperature=1.0, max_tokens=12, seed=4))
    assert [o.text for o in c] != [o.text for o in a]


def test_next_token_logprobs_match_a_full_forward(tiny_backend):
    msgs = [user("Rate it.")]
    digits = [str(d) for d in range(6)]
    got = tiny_backend.next_token_logprobs(msgs, "Complexity:\t", digits + ["two words"])
    ids = tiny_backend.prompt_ids(msgs, "Complexity:\t")
    with torch.no_grad():
        logits = tiny_backend.model(input_ids=torch.tensor([ids])).logits[0, -1]
    want = torch.log_softmax(logits.float(), -1).numpy()
    digit_ids = [tiny_backend.tok(d, add_special_tokens=False)["input_ids"][0] for d in digits]
    np.testing.assert_allclose(got[:6], want[digit_ids], atol=1e-5)
    assert got[6] == -np.inf


def test_prompts_sharing_a_prefix_prefill_only_the_rest_with_the_same_replies(embedded_model):
    """The prefix store: a second prompt that starts like a stored one (a tree child after its
    parent, the next feature after the few-shot examples) runs only its new tokens, and samples
    what a prefill with the store turned off would (same seed, same tokens, same logits bit for
    bit: reuse saves time only)."""
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    model = tiny_llama_for(tok, seed=1)
    reuse, full = LocalChatBackend(model, tok, name="a"), LocalChatBackend(model, tok, name="b")
    full.prefixes.usable = False
    shared = [user("Records:\n" + "token\t0\n" * 40)]
    params = GenerationParams(n=2, temperature=1.0, max_tokens=10, seed=5)
    first = [reuse.generate(shared, params), full.generate(shared, params)]
    longer = [*shared, {"role": "assistant", "content": "{}"}, user("Try again.")]
    second = [reuse.generate(longer, params), full.generate(longer, params)]
    assert [o.text for o in first[0]] == [o.text for o in first[1]]
    assert [o.text for o in second[0]] == [o.text for o in second[1]]
    assert full.usage.prefill_tokens == full.usage.prompt_tokens
    reused = reuse.usage.prompt_tokens - reuse.usage.prefill_tokens
    assert reused == reuse.prefixes.reused_tokens > 40  # the records turn was not run again
    # the complexity path (next-token log-probabilities) reads the same store
    lp = [b.next_token_logprobs(longer, "Answer:", ["0", "1"]) for b in (reuse, full)]
    assert np.array_equal(lp[0], lp[1])


def _feature_prompt(word: str, lines: int = 60) -> list[dict[str, str]]:
    """A one-shot-shaped prompt: the system turn every feature shares, then the feature's records."""
    from featureinterp.llm.backend import system

    header = system("You explain features of a language model. Reply with a short rule list. " * 8)
    return [header, user("Records:\n" + "".join(f"{word}{i}\t{i % 6}\n" for i in range(lines)))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_a_prompt_prefills_the_same_whatever_the_backend_ran_before(embedded_model, dtype):
    """Issue 28: a feature explained inside a ranged run got another explanation than the same
    feature explained alone. The prefix store cut a stored prompt wherever it stopped matching the
    new one, so a prompt was prefilled in pieces whose bounds depended on the prompts run before
    it (another feature's records, a sibling's feedback), and a forward pass over other pieces
    rounds differently (float32: ~2e-5 in the logits; bfloat16: ~0.3, enough to change sampled
    tokens). The pieces must be a function of the prompt alone: logits equal bit for bit, and
    the store still reuses the shared turns."""
    model, tok = embedded_model
    model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    target, other = _feature_prompt("alpha"), _feature_prompt("beta", lines=45)
    digits = [str(d) for d in range(6)]
    fresh = LocalChatBackend(model, tok, name="fresh")
    alone = fresh.next_token_logprobs(target, "Answer:", digits)
    seasoned = LocalChatBackend(model, tok, name="seasoned")
    seasoned.next_token_logprobs(other, "Answer:", digits)  # the feature before it in the range
    after = seasoned.next_token_logprobs(target, "Answer:", digits)
    assert seasoned.prefixes.reused_tokens > 100  # the shared system turn was not run again
    assert np.array_equal(alone, after), np.abs(alone - after).max()
    # a second request for the same prompt (a re-request after an unparseable reply) as well
    assert np.array_equal(fresh.next_token_logprobs(target, "Answer:", digits), alone)


@pytest.mark.parametrize("arch", ARCH_CASES, ids=[f"{a}-w{w}" for a, w in ARCH_CASES])
def test_stored_prefixes_are_exact_on_every_architecture(embedded_model, arch):
    """The exactness of the prefix store on each cache layer type the presets run on: full
    attention, and sliding windows both larger and smaller (evicting) than the prompt, whose
    reused prefix is a cut of a recorded past. Reused, not reused and with the store off give the
    same logits bit for bit (qwen2 with an evicting window differed by ~2e-6 before issue 28)."""
    from featureinterp.presets.architectures import TinySpec, tiny_model

    tok = embedded_model[1]
    name, window = arch
    spec = TinySpec(name, vocab_size=len(tok), n_layers=6, sliding_window=window, max_positions=4096)
    model = tiny_model(spec, seed=1, std=0.2)
    digits = [str(d) for d in range(6)]
    target, other = _feature_prompt("alpha", lines=30), _feature_prompt("beta", lines=20)
    alone = LocalChatBackend(model, tok, name="alone").next_token_logprobs(target, "Answer:", digits)
    seasoned = LocalChatBackend(model, tok, name="seasoned")
    seasoned.next_token_logprobs(other, "Answer:", digits)
    off = LocalChatBackend(model, tok, name="off")
    off.prefixes.usable = False
    assert np.array_equal(seasoned.next_token_logprobs(target, "Answer:", digits), alone)
    assert np.array_equal(off.next_token_logprobs(target, "Answer:", digits), alone)
    assert seasoned.prefixes.reused_tokens >= 16  # the system turn came from the store


def test_a_feature_is_explained_alone_as_after_others(embedded_model):
    """Issue 28 at the library level, through the real local path a ranged run takes (one
    backend and one simulator shared by the features, explained one after the other): a tree
    explanation of a feature -- roots, concurrent child requests, their completions (request ids
    included) and its usage -- equals the one explained by fresh models."""
    from featureinterp.explain import ExplainerConfig, explain
    from featureinterp.records.sources import FeatureRecords, Record
    from featureinterp.simulate.simulator import LocalSimulator
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    model = tiny_llama_for(tok, seed=0, max_positions=4096)
    sentences = [
        (" The", " ocean", " was", " not", " calm", " in", " March", "."),
        (" We", " never", " sailed", " the", " sea", " again"),
        (" No", " one", " saw", " the", " ship", " leave"),
        (" In", " July", " the", " sea", " was", " warm"),
    ]

    def records(word: str) -> FeatureRecords:
        made = [Record(s, [5.0 if t.strip().lower() in word else 0.0 for t in s]) for s in sentences]
        return FeatureRecords(tuple(made[:3]), tuple(made[1:]), 5.0)

    config = ExplainerConfig(
        method="tree", rule_cap=2, roots=2, branching=2, depth=1, width=2, max_tokens=60,
        child_max_tokens=80, parse_retries=1, stop_score=2.0, concurrency=4,
    )  # fmt: skip

    def run(backend: LocalChatBackend, simulator: LocalSimulator, word: str) -> dict:
        """The result as stored: JSON (NaN scores compare equal as text)."""
        result = explain(backend, simulator.simulate_explanation, records(word), config, seed=11)
        return json.loads(json.dumps(result.__dict__, default=lambda o: o.to_record()), parse_constant=str)

    def fresh() -> tuple[LocalChatBackend, LocalSimulator]:
        return LocalChatBackend(model, tok, name="tiny"), LocalSimulator(model, tok, batch_size=2)

    alone = run(*fresh(), "not never no")
    shared = fresh()
    run(*shared, "sea ocean")
    after = run(*shared, "not never no")
    assert shared[0].prefixes.reused_tokens > 0
    assert sum(c["stage"].startswith("child") for c in after["completions"]) == 4  # 2 roots x 2
    assert "prefill_tokens" not in after["usage"]  # what the store saved depends on what ran before
    assert after == alone
