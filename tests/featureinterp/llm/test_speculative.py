import numpy as np
import pytest
import torch

from featureinterp.llm.backend import GenerationParams, assistant, user
from featureinterp.llm.local import LocalChatBackend
from featureinterp.llm.speculative import PromptLookup, verify


def test_prompt_lookup_drafts_what_followed_the_latest_match():
    lookup = PromptLookup([5, 6, 7, 8, 9, 1, 5, 6, 7, 2, 3], max_ngram=3, min_ngram=2)
    lookup.extend([5, 6, 7])  # the tail (5, 6, 7) last occurred before "2 3"
    assert lookup.draft(4) == [2, 3, 5, 6]
    assert lookup.draft(1) == [2]


def test_prompt_lookup_prefers_the_longest_ngram_and_never_matches_the_tail_itself():
    lookup = PromptLookup([1, 2, 3, 4, 9, 2, 3, 8], max_ngram=3, min_ngram=2)
    lookup.extend([1, 2, 3])
    assert lookup.draft(2) == [4, 9]  # (1, 2, 3) beats the later (2, 3) -> 8
    fresh = PromptLookup([1, 2, 3])
    assert fresh.draft(5) == []  # the only (2, 3) is the tail: nothing follows it
    assert PromptLookup([4, 4, 4, 4]).draft(3) == [4]
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup([1], max_ngram=1, min_ngram=2)


def test_greedy_verification_keeps_only_the_argmax():
    logits = torch.tensor([0.1, 2.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert verify(None, logits, 1, gen) == 1
    assert verify(None, logits, 0, gen) == 1  # rejected: the model's own token instead


def test_sampled_verification_leaves_the_distribution_unchanged():
    """Speculative sampling with a fixed draft token: the kept token is distributed as p, whatever
    the draft (a draft the model gives no mass is never kept)."""
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    gen = torch.Generator().manual_seed(1)
    for draft in (0, 2, 3):
        counts = np.bincount([verify(probs, probs.log(), draft, gen) for _ in range(20_000)], minlength=4)
        assert np.abs(counts / counts.sum() - probs.numpy()).max() < 0.015, (draft, counts)
        assert counts[3] == 0


def test_real_model_decodes_speculatively_with_the_plain_replies(embedded_model):
    """SmolLM2-135M-Instruct copying from its prompt: at temperature 0 the speculative reply is
    the plain one, in fewer passes than tokens; sampled replies stay seeded and valid JSON."""
    from featureinterp.explanations.rules import explanation_schema, parse_structured

    model, tok = embedded_model
    fast, plain = LocalChatBackend(model, tok, name="fast"), LocalChatBackend(model, tok, name="plain")
    plain.max_draft = 0
    schema = explanation_schema(3)
    conversation = [
        user("Explain the feature. It fires on the word 'ocean' after 'the'."),
        assistant('{"rules": [{"activates_on": "the word ocean after the", "strength": 4}]}'),
        user("Write the same rules again, exactly."),
    ]
    for params in (
        GenerationParams(n=1, temperature=0, max_tokens=60, json_schema=schema),
        GenerationParams(n=1, temperature=0, max_tokens=40),
    ):
        a, b = fast.generate(conversation, params), plain.generate(conversation, params)
        assert a[0].text == b[0].text and a[0].finish_reason == b[0].finish_reason
    assert fast.drafts.accepted > 0
    assert fast.drafts.passes < fast.usage.completion_tokens  # passes saved
    assert plain.drafts.passes == 0
    sampled = GenerationParams(n=1, temperature=1.0, max_tokens=60, json_schema=schema, seed=11)
    first, again = fast.generate(conversation, sampled), fast.generate(conversation, sampled)
    assert first[0].text == again[0].text
    if first[0].finish_reason == "stop":
        assert parse_structured(first[0].text).rules
