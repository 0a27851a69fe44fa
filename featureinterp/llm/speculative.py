"""Speculative decoding for the local explainer: drafts from the prompt and the grammar, verified in one pass.

Why: a local explainer on a CPU spends most of its time decoding one token per forward pass, and
each pass re-reads every weight of the model (memory bound: a pass over 1 token costs nearly as
much as a pass over 8). Much of what an explainer writes is predictable without the model: the
JSON keys and punctuation are forced by the reply's schema (the grammar says what must come
next), and rule texts are copied from the prompt (a tree child repeats its parent's rules, a
rule quotes tokens of the records). So each step proposes a *draft* of up to ``max_draft``
tokens, the model runs over the pending token and the draft in one pass, and the longest prefix
of the draft the model agrees with is kept, plus the model's own next token.

Exactness: at temperature 0 a draft token is kept only when it is the model's (grammar-masked)
argmax, so the reply is the one plain decoding gives (up to the float rounding of a multi-token
pass). When sampling, a draft token ``d`` is kept with probability ``p(d)`` and otherwise the
token is drawn from ``p`` with ``d`` removed: the standard speculative-sampling rule for a
deterministic draft, which leaves the distribution of every reply unchanged (the random stream
differs from plain decoding, so a seed gives another, equally distributed, sample).

Drafts, in order: the grammar's forced tokens (``xgrammar``'s jump-forward tokens), else the
continuation of the latest earlier occurrence of the context's last ``ngram`` tokens (prompt
lookup decoding; longest n-gram first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DraftStats", "PromptLookup", "verify"]


@dataclass
class DraftStats:
    """Counts for cost accounting (``benchmarks.explain_cost``): passes run, draft tokens kept."""

    passes: int = 0
    """Forward passes of the decode loop (one per step, drafted or not)."""
    drafted: int = 0
    """Draft tokens run through the model."""
    accepted: int = 0
    """Draft tokens the model agreed with (each one a pass saved)."""


class PromptLookup:
    """Draft tokens copied from the context: what followed the latest earlier occurrence of the
    context's last n tokens (n from ``max_ngram`` down to ``min_ngram``).

    The index maps every n-gram to the end of its latest occurrence that has a continuation, and
    is updated as tokens are appended, so a lookup is a dictionary probe per n, not a scan.
    """

    def __init__(self, ids: Sequence[int], max_ngram: int = 3, min_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.context: list[int] = []
        self._latest: dict[tuple[int, ...], int] = {}
        self.extend(ids)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            # the n-grams ending just before this token now have a continuation (this token)
            end = len(self.context)
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self._latest[tuple(self.context[end - n : end])] = end
            self.context.append(int(t))

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the context's tail."""
        ctx = self.context
        for n in range(min(self.max_ngram, len(ctx)), self.min_ngram - 1, -1):
            end = self._latest.get(tuple(ctx[len(ctx) - n :]))
            if end is not None:
                return ctx[end : end + limit]
        return []


def verify(probs: torch.Tensor | None, logits: torch.Tensor, draft_token: int, gen: torch.Generator) -> int:
    """The token kept at a drafted position: ``draft_token`` or the model's replacement.

    ``probs`` [vocab]: the sampling distribution there (masked, tempered, top-p cut), None at
    temperature 0, where the (masked) argmax of ``logits`` [vocab] decides. A rejected draft
    token is never returned, so ``result != draft_token`` means the draft ends here.
    """
    if probs is None:
        return int(logits.argmax())
    p = float(probs[draft_token])
    if p > 0 and torch.rand((), generator=gen).item() < p:
        return draft_token
    rest = probs.clone()
    rest[draft_token] = 0
    if float(rest.sum()) <= 0:  # the draft token held all the mass (and lost to rounding): keep it
        return draft_token
    return int(torch.multinomial(rest, 1, generator=gen))
