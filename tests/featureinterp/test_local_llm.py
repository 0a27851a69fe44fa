import json

import numpy as np
import pytest
import torch

from featureinterp.explanations import explanation_schema, parse_structured
from featureinterp.llm import GenerationParams, user
from featureinterp.local_llm import LocalChatBackend


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
    what a full prefill would (same seed, same tokens)."""
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
    assert np.allclose(lp[0], lp[1], atol=1e-4)
