"""Sharing a prefilled key/value cache without copying it, for every cache layer transformers builds.

The simulator (one header for every rule and record batch), the holistic values (one row prefix
for every dropped token) and local chat (one prompt for ``n`` samples) all reuse a prefix that was
run through the model once. Copying that cache per use is what the paper code does (a deep copy
per call); here a *fork* shares the prefix's tensors read-only and only new positions are stored:

- ``fork(cache, batch)``: a new cache whose layers view the source's tensors, expanded to ``batch``
  rows without a copy. ``DynamicLayer.update`` concatenates into a fresh tensor, so appending to the
  fork never writes into the shared prefix.
- ``prefix(cache, length)``: a fork of the first ``length`` positions (the holistic values drop one
  token at a time and reuse ``x[:d]``).

Why not assign ``layer.keys`` on a fresh ``DynamicCache``: each layer type keeps its own bookkeeping.
A sliding-window layer (Gemma-2, Gemma-3, Qwen2) stores only its last ``window - 1`` positions and
counts the positions it has seen in ``cumulative_length``; the attention mask and the positions are
derived from that count, so a layer built by hand with a count of 0 gives wrong shapes (or, worse,
silently wrong masks). A fork is a shallow copy of each layer object: every counter, window size and
flag travels with it, and only the key/value tensors are replaced by views.

A sliding layer has discarded positions older than its window, so ``prefix`` needs a source that
kept them: build it with ``new_cache(model, keep_past=True)`` (the layer's own
``activate_past_recording``). Layer types that hold a recurrent state (linear attention, hybrid
Mamba layers) are updated in place, so they are forked by a real copy of their (small) state, and
cannot be cut to a prefix at all (that raises).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featureinterp.errors import ConfigError

if TYPE_CHECKING:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

__all__ = ["PrefixStore", "can_cut", "fork", "new_cache", "prefix", "shared_prefix", "sharing_layer_types"]


def _layer_classes() -> tuple[type[DynamicLayer], type[DynamicSlidingWindowLayer]]:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return DynamicLayer, DynamicSlidingWindowLayer


def sharing_layer_types() -> tuple[type, ...]:
    """Cache layer classes whose prefix is shared as views (exact types: subclasses may add state)."""
    return _layer_classes()


def new_cache(model: torch.nn.Module, keep_past: bool = False) -> Any:
    """An empty ``DynamicCache`` laid out for ``model`` (sliding/global layers as its config says).

    ``keep_past``: sliding-window layers keep every position instead of their last ``window - 1``,
    so ``prefix`` can cut the cache at any length (memory grows with the sequence, as for a
    global layer).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)  # type: ignore[arg-type]  # Module.__getattr__: Tensor | Module
    if keep_past:
        _, sliding = _layer_classes()
        for layer in cache.layers:
            if isinstance(layer, sliding):
                layer.activate_past_recording()
    return cache


def _expand(t: torch.Tensor, batch: int | None) -> torch.Tensor:
    if batch is None or t.shape[0] == batch:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"cannot expand a cache of batch {t.shape[0]} to {batch}: fork a batch-1 cache")
    return t.expand(batch, *t.shape[1:])  # [batch, heads, seq, head_dim], a view


def _fork_layer(layer: Any, batch: int | None) -> Any:
    full, sliding = _layer_classes()
    if type(layer) in (full, sliding):
        out = copy.copy(layer)  # counters, window, flags: the layer's own bookkeeping
        if layer.is_initialized:
            out.keys, out.values = _expand(layer.keys, batch), _expand(layer.values, batch)
        return out
    if not getattr(layer, "is_initialized", False):
        return copy.copy(layer)  # holds nothing yet (or a DummyLayer)
    out = copy.deepcopy(layer)  # state updated in place: a real copy, through the layer's own op
    if batch is not None and batch > 1:
        out.batch_repeat_interleave(batch)
    return out


def fork(cache: Any, batch: int | None = None) -> Any:
    """A cache that continues ``cache`` without modifying it; ``batch`` expands a batch-1 source."""
    out = copy.copy(cache)
    out.layers = [_fork_layer(layer, batch) for layer in cache.layers]
    return out


def _prefix_layer(layer: Any, length: int) -> Any:
    full, sliding = _layer_classes()
    if not getattr(layer, "is_initialized", False):
        return copy.copy(layer)
    if type(layer) is full:
        assert layer.keys is not None and layer.values is not None  # set once is_initialized
        out = copy.copy(layer)
        out.keys, out.values = layer.keys[:, :, :length], layer.values[:, :, :length]
        return out
    if type(layer) is sliding:
        assert layer.keys is not None and layer.values is not None  # set once is_initialized
        seen, stored = layer.cumulative_length, layer.keys.shape[-2]
        first = seen - stored  # absolute position of the oldest stored key
        keep_from = max(0, length - layer.sliding_window + 1)  # what the layer holds after `length`
        if length > seen or keep_from < first:
            raise ConfigError(
                f"a sliding-window cache layer holding positions {first}..{seen - 1} cannot be cut to the "
                f"first {length} positions; build the source with new_cache(model, keep_past=True)"
            )
        out = copy.copy(layer)
        out.keys = layer.keys[:, :, keep_from - first : length - first]
        out.values = layer.values[:, :, keep_from - first : length - first]
        out.cumulative_length = length
        return out
    raise ConfigError(
        f"cache layer type {type(layer).__name__} keeps a recurrent state that cannot be cut to a prefix; "
        "holistic values need an attention-only model (full or sliding-window layers)"
    )


def prefix(cache: Any, length: int) -> Any:
    """A fork of the first ``length`` positions of ``cache`` (views, no copy)."""
    if length < 0:
        raise ValueError(f"prefix length must be >= 0, got {length}")
    out = copy.copy(cache)
    out.layers = [_prefix_layer(layer, length) for layer in cache.layers]
    return out


def can_cut(cache: Any) -> bool:
    """Whether ``prefix`` can cut ``cache`` back to any length it held: attention layers only
    (recurrent state cannot be rolled back), sliding-window ones built with ``keep_past``."""
    full, sliding = _layer_classes()
    return all(
        type(layer) is full or (type(layer) is sliding and layer.record_past) for layer in cache.layers
    )


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:m]) != np.asarray(b[:m]))
    return int(diff[0]) if diff.size else m


class PrefixStore:
    """Prefilled prompts kept for reuse: a new prompt starts from a stored prompt it shares a
    prefix with, and only its remaining tokens run through the model.

    Why: a local explainer's prompts repeat most of their tokens. Every feature of a condition
    starts with the same system message and few-shot examples; a tree's children all carry the
    feature's records and their parent's conversation; the complexity analyzer's few-shot header
    precedes every rule. Prefilling each prompt from scratch re-reads thousands of tokens per
    request on a CPU. Entries are batch-1 caches held as forks (views), evicted least recently
    used once ``max_tokens`` positions are held in all.

    Exactness: a forward pass over positions ``a..b`` rounds differently from one over ``0..b``
    (other matrix shapes, other kernels: ~2e-5 in float32 logits, ~0.3 in bfloat16), so a store
    that cut a stored prompt wherever it stopped matching made a prompt's logits depend on which
    prompts ran before it: another feature's records in a ranged run, a sibling's feedback in a
    tree level whose requests race (issue 28: a feature explained alone and inside its layer's
    run got different explanations). So every prompt is prefilled in the same *pieces*, whose
    bounds are a function of the prompt alone: a piece ends after every ``cut_after`` token (the
    chat template's end-of-turn token: whole turns are what prompts share) and at the prompt's
    end, and a stored prefix is reused only up to such a bound. A piece then sees the same
    tokens and the same cached keys and values whether its prefix came from the store or was
    run just before, and a prompt's logits are bit for bit those of a prompt prefilled alone,
    whatever ran before (and with the store turned off: reuse saves time only). Without a
    ``cut_after`` token in the shared part nothing is reused. Models whose cache layers cannot
    be cut to a prefix (recurrent state) are prefilled in the same pieces, never from the store.
    """

    def __init__(self, max_tokens: int = 8_192, min_shared: int = 16, cut_after: Iterable[int] = ()) -> None:
        self.max_tokens, self.min_shared = max_tokens, min_shared
        self.cut_after = np.array(sorted({int(t) for t in cut_after}), dtype=np.int64)
        """Token ids after which a piece ends (the tokenizer's end-of-turn ids)."""
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.reused_tokens = 0
        """Prompt positions taken from stored prefixes instead of being run through the model."""
        self.usable = True

    def cuts(self, ids: Sequence[int]) -> list[int]:
        """The bounds between pieces of prompt ``ids``: every position right after a
        ``cut_after`` token, before the prompt's end (ascending)."""
        if not len(ids) or not self.cut_after.size:
            return []
        after = np.flatnonzero(np.isin(np.asarray(ids[:-1], dtype=np.int64), self.cut_after)) + 1
        return [int(p) for p in after]

    def pieces(self, ids: Sequence[int], start: int = 0) -> list[tuple[int, int]]:
        """``(begin, end)`` of the forward passes that prefill ``ids[start:]``; ``start``: 0 or a
        bound returned by ``lookup``."""
        bounds = [start, *(p for p in self.cuts(ids) if p > start), len(ids)]
        return [(a, b) for a, b in pairwise(bounds) if b > a]

    def lookup(self, ids: Sequence[int]) -> tuple[int, Any]:
        """(length reused, a fork of a stored cache cut to that length) for prompt ``ids``: the
        last piece bound within the longest prefix a stored prompt shares with ``ids``, leaving at
        least one token to run (the caller always gets the last position's logits). (0, None)
        when that reuses fewer than ``min_shared`` tokens."""
        best, key = 0, None
        for stored in self._entries:
            n = shared_prefix(stored, ids)
            if n > best:
                best, key = n, stored
        limit = min(best, len(ids) - 1)
        reuse = max((p for p in self.cuts(ids) if p <= limit), default=0)
        if key is None or reuse < self.min_shared or not self.usable:
            return 0, None
        try:
            cache = prefix(self._entries[key], reuse)
        except ConfigError:  # recurrent layers: no prefix can be cut; never reuse (pieces unchanged)
            self.usable = False
            self._entries.clear()
            return 0, None
        self._entries.move_to_end(key)
        self.reused_tokens += reuse
        return reuse, cache

    def store(self, ids: Sequence[int], cache: Any) -> None:
        """Keep the prefilled cache of ``ids`` (before any generated token is appended to it)."""
        if not self.usable or len(ids) > self.max_tokens:
            return
        key = tuple(int(i) for i in ids)
        self._entries[key] = fork(cache)
        self._entries.move_to_end(key)
        while sum(len(k) for k in self._entries) > self.max_tokens:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
