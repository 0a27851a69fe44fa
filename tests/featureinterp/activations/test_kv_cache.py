"""The cache-sharing helper keeps each cache layer type's own bookkeeping consistent."""

from __future__ import annotations

import pytest
import torch

from featureinterp.activations import kv_cache
from featureinterp.errors import ConfigError
from featureinterp.presets.architectures import TinySpec, tiny_model


@pytest.fixture(scope="module")
def gemma():
    return tiny_model(TinySpec("gemma2", vocab_size=97, n_layers=2, sliding_window=6), seed=0)


def _prefill(model, cache, ids):
    model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    return cache


def test_fork_shares_the_prefix_and_never_writes_it(gemma):
    src = _prefill(gemma, kv_cache.new_cache(gemma), list(range(3, 13)))
    before = [(layer.keys.clone(), layer.get_seq_length()) for layer in src.layers]
    forked = kv_cache.fork(src, 3)
    assert forked.layers[0].keys.shape[0] == 3
    assert forked.layers[0].keys.data_ptr() == src.layers[0].keys.data_ptr()  # a view, no copy
    gemma(
        input_ids=torch.full((3, 4), 5), cache=forked, use_cache=True, position_ids=torch.arange(10, 14)[None]
    )
    for layer, (keys, length) in zip(src.layers, before, strict=True):
        assert torch.equal(layer.keys, keys) and layer.get_seq_length() == length == 10
    assert [layer.get_seq_length() for layer in forked.layers] == [14, 14]


def test_prefix_of_a_sliding_layer_needs_the_recorded_past(gemma):
    ids = list(range(3, 13))  # 10 positions, window 6: the sliding layer keeps only the last 5
    plain = _prefill(gemma, kv_cache.new_cache(gemma), ids)
    with pytest.raises(ConfigError, match="keep_past=True"):
        kv_cache.prefix(plain, 3)
    kept = _prefill(gemma, kv_cache.new_cache(gemma, keep_past=True), ids)
    cut = kv_cache.prefix(kept, 7)
    fresh = _prefill(gemma, kv_cache.new_cache(gemma), ids[:7])
    for a, b in zip(cut.layers, fresh.layers, strict=True):
        assert a.get_seq_length() == b.get_seq_length() == 7
        assert a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, atol=1e-6)


def test_prefix_store_pieces_depend_on_the_prompt_alone(gemma):
    """Issue 28: a prompt is prefilled in pieces ending after each end-of-turn token, and a stored
    prompt is reused only up to such a bound, so the passes that computed a reused prefix are
    the passes a prefill from scratch runs (whatever was stored, a prompt's logits are the same
    bit for bit). A prompt's pieces over a prefix are that prefix's own pieces."""
    end = 2  # the end-of-turn token
    store = kv_cache.PrefixStore(min_shared=2, cut_after=[end])
    first = [5, 6, end, 7, 8, 9, end, 10, 11]
    assert store.cuts(first) == [3, 7]
    assert store.pieces(first) == [(0, 3), (3, 7), (7, 9)]
    assert store.pieces(first, 3) == [(3, 7), (7, 9)]
    assert store.cuts([5, 6, end]) == []  # a prompt's end is no cut of its own
    cache = kv_cache.new_cache(gemma, keep_past=True)
    for a, b in store.pieces(first):
        gemma(
            input_ids=torch.tensor([first[a:b]]),
            cache=cache,
            use_cache=True,
            position_ids=torch.arange(a, b)[None],
        )
    store.store(first, cache)
    # shares 9 tokens with ``first`` (into its third piece): reused up to the last bound within
    second = [5, 6, end, 7, 8, 9, end, 10, 11, 12, end, 13]
    reused, forked = store.lookup(second)
    assert reused == 7 and forked.get_seq_length() == 7
    assert store.pieces(second, reused) == [(7, 11), (11, 12)]
    assert store.lookup([5, 6, end, 7, 99])[0] == 3  # diverges inside the second piece
    assert store.lookup([5, 99, end])[0] == 0  # no bound within what it shares
    assert kv_cache.PrefixStore(cut_after=()).lookup(first)[0] == 0  # no turns: no reuse
