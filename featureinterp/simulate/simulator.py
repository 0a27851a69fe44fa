"""All-at-once simulation with a local causal LM (paper-method.md section 5).

The prompt is a shared header (instructions and few-shot examples), then the explanation (one
rule), then one record as ``token<TAB>unknown`` lines. The simulator's expected activation for a
token is ``sum_d d * p(d) / sum_d p(d)`` over the digit tokens 0..5, read from the logits at the
TAB position (the next token after the TAB is where the model writes the value).

Input ids are assembled piece by piece (header, rule, then each token's text, TAB, placeholder,
newline, each tokenized on its own), so the readout positions are known by construction: record
tokens never need to be re-aligned with the simulator's tokenizer, whatever the subject model's
tokenizer was.

Speed: the header is prefilled once and the rule once per rule; every record batch reuses those
key/value tensors read-only (views expanded to the batch, no copies), with right padding, a mask
covering header + suffix, and explicit positions. Only the readout rows go through the LM head.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from featureinterp.activations import kv_cache
from featureinterp.activations.models import _base_model
from featureinterp.errors import ConfigError
from featureinterp.explanations.rules import Explanation, combine_rules
from featureinterp.llm import chat
from featureinterp.llm.backend import Message, assistant, system, user
from featureinterp.records.formatting import MAX_VALUE, UNKNOWN, escape_token

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "DEFAULT_PROMPT",
    "PAPER_PROMPT",
    "LocalSimulator",
    "SimulatorPrompt",
    "alignment_stats",
    "expected_values",
    "prompt_for",
]

_EXAMPLES = (
    (
        "the names of months",
        (
            (" We", 0),
            (" met", 0),
            (" in", 0),
            (" March", 5),
            (" and", 0),
            (" again", 0),
            (" in", 0),
            (" June", 4),
            (".", 0),
        ),
    ),
    (
        "the word 'cat'",
        ((" The", 0), (" cat", 5), (" sat", 0), (" on", 0), (" the", 0), (" mat", 0), (".", 0))
        + ((" A", 0), (" cat", 5), (" again", 0)),
    ),
    (
        "words about water and the sea",
        (
            ("The", 0),
            (" boat", 2),
            (" drifted", 0),
            (" over", 0),
            (" the", 0),
            (" ocean", 5),
            (" waves", 4),
            (" at", 0),
            (" night", 0),
        ),
    ),
    (
        "the words red, blue and green",
        (
            (" She", 0),
            (" wore", 0),
            (" a", 0),
            (" red", 5),
            (" hat", 0),
            (" and", 0),
            (" green", 5),
            (" shoes", 0),
            (".", 0),
        ),
    ),
    (
        "numbers",
        ((" In", 0), (" 1999", 5), (",", 0), (" about", 0), (" 40", 5), (" people", 0), (" came", 0)),
    ),
)


@dataclass(frozen=True)
class SimulatorPrompt:
    """Our own prompt text (not the paper's wording), in one of two layouts.

    ``transcript``: one plain text (instructions, few-shot blocks, ``Explanation: rule``, the record
    block), tuned for ~100M models. ``chat`` (the paper's structure, section 5.1): a conversation
    laid out by the simulator's chat template (BOS from the template; system text folded into the
    first user turn where the template has no system role), one user turn per few-shot
    explanation answered by an assistant turn of ``token<TAB>value`` lines whose first third
    still reads ``unknown`` (so the model learns that ``unknown`` runs turn into numbers), then a
    user turn with the rule and an open assistant turn holding the record block.
    """

    instructions: str = (
        "A feature of a language model responds to some tokens of a text. Given a short explanation of the "
        "feature, predict its activation on every token, as an integer from 0 (silent) to 5 (strongest). "
        "Each line shows one token, a tab, and the feature's activation on that token. Most tokens are 0.\n"
    )
    examples: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = _EXAMPLES

    placeholder: str = UNKNOWN
    """What stands in the value column of the lines being simulated. The paper uses ``unknown``;
    a tiny model then mostly predicts ``unknown`` after every tab and its digit distribution is
    noise, so the embedded preset uses ``0`` (the most common value), which keeps the model in
    "writing digits" mode while each readout still happens before the placeholder is seen."""

    layout: Literal["transcript", "chat"] = "transcript"
    explanation_prefix: str = "Explanation: "
    reply_prefix: str = "Activations:\n"
    """Start of the assistant turn before the record block (chat layout)."""

    def header(self) -> str:
        """The transcript layout's shared text (instructions and few-shot blocks)."""
        parts = [self.instructions]
        for explanation, lines in self.examples:
            body = "\n".join(f"{escape_token(t)}\t{v}" for t, v in lines)
            parts.append(f"\nExplanation: {explanation}\n<start>\n{body}\n<end>\n")
        return "".join(parts)

    def rule_text(self, i: int, explanation: str) -> str:
        """Content of the user turn that states feature ``i``'s explanation (chat layout)."""
        return f"Feature {i}\n{self.explanation_prefix}{explanation}"

    def messages(self) -> list[Message]:
        """The chat layout's conversation up to the user turn of the rule being simulated (whose
        content the simulator fills in; see ``rule_text``)."""
        msgs: list[Message] = [system(self.instructions.strip())]
        for i, (explanation, lines) in enumerate(self.examples, start=1):
            reveal = len(lines) // 3
            body = "\n".join(
                f"{escape_token(t)}\t{self.placeholder if j < reveal else v}"
                for j, (t, v) in enumerate(lines)
            )
            msgs += [
                user(self.rule_text(i, explanation)),
                assistant(f"{self.reply_prefix}<start>\n{body}\n<end>"),
            ]
        return [*msgs, user(self.rule_text(len(self.examples) + 1, "..."))]


DEFAULT_PROMPT = SimulatorPrompt(placeholder="0")
"""Tuned on the synthetic features with SmolLM2-135M (see docs/scores.md, "Simulator notes")."""
PAPER_PROMPT = SimulatorPrompt(
    instructions=(
        "We study features of a language model. Each feature looks for something particular in a short "
        "text. Read the explanation of what a feature looks for, then predict the feature's activation on "
        "every token of a text, one line per token written as token<TAB>activation, with activations from "
        "0 (silent) to 5 (strongest). The word unknown marks an activation that is not known yet. Most "
        "activations are 0."
    ),
    placeholder=UNKNOWN,
    layout="chat",
    explanation_prefix="Explanation of the feature: ",
)
"""For large chat simulators (the paper presets' gemma-2-27b-it): the paper's layout and its
``unknown`` placeholder."""


def prompt_for(name: str) -> SimulatorPrompt:
    """The simulator prompt a preset names: ``tiny`` (DEFAULT_PROMPT) or ``paper``."""
    prompts = {"tiny": DEFAULT_PROMPT, "paper": PAPER_PROMPT}
    if name not in prompts:
        raise ConfigError(f"unknown simulator prompt {name!r}; choose one of {sorted(prompts)}")
    return prompts[name]


def expected_values(digit_logits: torch.Tensor) -> torch.Tensor:
    """[..., 6] logits of the tokens '0'..'5' -> expected value (the distribution renormalised to digits)."""
    probs = torch.softmax(digit_logits.float(), dim=-1)
    return probs @ torch.arange(MAX_VALUE + 1, dtype=torch.float32, device=probs.device)


def alignment_stats(tokenizer: Any, records: Sequence[Sequence[str]]) -> dict[str, int]:
    """How the subject tokens map onto the simulator's tokenizer.

    Readout positions are exact by construction (each subject token is tokenized on its own), so
    nothing can be misaligned; what can go wrong is a token the simulator cannot *see*: empty
    strings and byte fragments decoded as U+FFFD. Those are counted here (and reported with every
    score) rather than silently scored.
    """
    stats = {"tokens": 0, "multi_piece": 0, "empty": 0, "byte_fragment": 0, "literal_unknown": 0}
    for tokens in records:
        for token in tokens:
            stats["tokens"] += 1
            if not token:
                stats["empty"] += 1
                continue
            if "\ufffd" in token:
                stats["byte_fragment"] += 1
            if token.strip().lower() == UNKNOWN:
                stats["literal_unknown"] += 1
            if len(tokenizer(escape_token(token), add_special_tokens=False)["input_ids"]) > 1:
                stats["multi_piece"] += 1
    return stats


class LocalSimulator:
    """Simulate feature activations with a transformers causal LM on records given as token strings."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        prompt: SimulatorPrompt = DEFAULT_PROMPT,
        batch_size: int = 8,
        memo_size: int = 200_000,
    ) -> None:
        """``memo_size``: (rule, record) values kept, so a rule simulated on a record once is never
        simulated there again: the tree's nodes share rules, a feature's conditions and its tree
        roots often write the same rules, and every condition scores on the same test records."""
        self.model, self.tok, self.prompt, self.batch_size = model.eval(), tokenizer, prompt, batch_size
        self.device = next(model.parameters()).device
        self.digit_ids = [self._single_id(str(d)) for d in range(MAX_VALUE + 1)]
        self.tab_id = self._single_id("\t")
        self.unknown_ids = self._ids(self.prompt.placeholder)
        self.newline_ids = self._ids("\n")
        if prompt.layout == "chat":
            # Header: everything before the rule's user turn content; tail: that turn's end and
            # the open assistant turn. Tokenized as pieces, so every readout position is known.
            before, self._rule_tail = chat.split_around(
                tokenizer, prompt.messages(), assistant_prefix=prompt.reply_prefix
            )
            self.header_ids = self._ids(before)
        else:
            self.header_ids = self._ids(self.prompt.header())
        self._header_cache: Any = None
        self.forward_tokens = 0
        """Token positions run through the model so far (prefills, padded record batches, uncached
        prompts): the simulator's compute, for cost accounting (``featureinterp plan``)."""
        self._lock = threading.RLock()  # features explained at once share the model: one pass at a time
        self._thread = threading.local()
        self._memo: OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = OrderedDict()
        self.memo_size = memo_size
        self.memo_hits = 0
        """Records whose values under a rule came from the memo instead of a forward pass."""

    def thread_tokens(self) -> int:
        """``forward_tokens`` run for the calling thread only: per-feature accounting when several
        features' explanations share this simulator from their own threads."""
        return getattr(self._thread, "tokens", 0)

    def _count(self, n: int, shared: bool = False) -> None:
        """Count ``n`` forward tokens; ``shared`` ones (the header, prefilled once per simulator)
        go to the total only, so a feature's count does not depend on whether it came first."""
        self.forward_tokens += n
        if not shared:
            self._thread.tokens = self.thread_tokens() + n

    def describe(self) -> dict[str, object]:
        """What the simulator is prompted with (stored with every score, so a run shows which
        layout, placeholder and BOS its scores came from)."""
        bos = getattr(self.tok, "bos_token_id", None)
        return {
            "layout": self.prompt.layout,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "placeholder": self.prompt.placeholder,
            "bos": bos is not None and self.header_ids[:1] == [bos],
            "header_tokens": len(self.header_ids),
            "header_start": self.tok.decode(self.header_ids[:24]),
        }

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _single_id(self, text: str) -> int:
        ids = self._ids(text)
        if len(ids) != 1:
            raise ConfigError(
                f"simulator tokenizer splits {text!r} into {len(ids)} tokens; it needs one token"
            )
        return ids[0]

    def record_ids(self, tokens: Sequence[str]) -> tuple[list[int], list[int]]:
        """Ids of one record block and the positions (within it) of each token's TAB."""
        ids = self._ids("<start>\n")
        positions = []
        for token in tokens:
            ids += self._ids(escape_token(token)) if token else []
            positions.append(len(ids))
            ids += [self.tab_id, *self.unknown_ids, *self.newline_ids]
        ids += self._ids("<end>\n")
        return ids, positions

    def rule_ids(self, explanation: str) -> list[int]:
        """Ids of the rule's part of the prompt (between the shared header and the record block)."""
        if self.prompt.layout == "chat":
            text = self.prompt.rule_text(len(self.prompt.examples) + 1, explanation.strip())
            return self._ids(text) + self._ids(self._rule_tail)
        return self._ids(f"\nExplanation: {explanation}\n")

    # -- forward helpers -------------------------------------------------------------------------
    def _digit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the six digit tokens for hidden states [..., d] (LM head on these rows only)."""
        head = self.model.get_output_embeddings()
        weight = head.weight[self.digit_ids]
        logits = hidden @ weight.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.digit_ids]
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def _prefill(self, ids: list[int], cache: Any = None, shared: bool = False) -> Any:
        cache = cache if cache is not None else kv_cache.new_cache(self.model)
        start = cache.get_seq_length()
        x = torch.tensor([ids], device=self.device)
        pos = torch.arange(start, start + len(ids), device=self.device)[None]
        _base_model(self.model)(input_ids=x, position_ids=pos, cache=cache, use_cache=True)
        self._count(len(ids), shared)
        return cache

    def _header(self) -> Any:
        if self._header_cache is None:
            self._header_cache = self._prefill(self.header_ids, shared=True)
        return self._header_cache

    def simulate(
        self, explanation: str, records: Sequence[Sequence[str]], cached: bool = True
    ) -> list[np.ndarray]:
        """Expected activation (0..5) of every token of every record under one explanation."""
        with self._lock:
            if not cached:
                return self._simulate(explanation, records, cached)
            keys = [(explanation, tuple(tokens)) for tokens in records]
            todo = [i for i, k in enumerate(keys) if k not in self._memo]
            done = self._simulate(explanation, [records[i] for i in todo], cached) if todo else []
            for i, values in zip(todo, done, strict=True):
                values.setflags(write=False)  # shared by every caller that asks again
                self._memo[keys[i]] = values
            self.memo_hits += len(records) - len(todo)
            out = []
            for k in keys:
                self._memo.move_to_end(k)
                out.append(self._memo[k])
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
            return out

    @torch.no_grad()
    def _simulate(self, explanation: str, records: Sequence[Sequence[str]], cached: bool) -> list[np.ndarray]:
        rule = self.rule_ids(explanation)
        blocks = [self.record_ids(tokens) for tokens in records]
        if not cached:
            return [self._simulate_uncached(self.header_ids + rule, ids, pos) for ids, pos in blocks]
        rule_cache = self._prefill(rule, kv_cache.fork(self._header())) if rule else self._header()
        prefix_len = rule_cache.get_seq_length()
        # longest first, so each batch pads to lengths close to its own (results are put back in
        # the records' order; a row's values do not depend on its batch neighbours)
        order = sorted(range(len(blocks)), key=lambda i: -len(blocks[i][0]))
        blocks = [blocks[i] for i in order]
        out: list[np.ndarray] = []
        for lo in range(0, len(blocks), self.batch_size):
            chunk = blocks[lo : lo + self.batch_size]
            b, length = len(chunk), max(len(ids) for ids, _ in chunk)
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
            x = torch.full((b, length), pad, dtype=torch.long, device=self.device)
            mask = torch.zeros((b, prefix_len + length), dtype=torch.long, device=self.device)
            mask[:, :prefix_len] = 1
            for i, (ids, _) in enumerate(chunk):
                x[i, : len(ids)] = torch.tensor(ids, device=self.device)
                mask[i, prefix_len : prefix_len + len(ids)] = 1
            pos = (prefix_len + torch.arange(length, device=self.device)).expand(b, -1)
            cache = kv_cache.fork(rule_cache, b)
            hidden = _base_model(self.model)(
                input_ids=x, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
            )[0]
            self._count(x.numel())
            for i, (_, positions) in enumerate(chunk):
                idx = torch.tensor(positions, device=self.device, dtype=torch.long)
                out.append(expected_values(self._digit_logits(hidden[i, idx])).cpu().numpy())
        restored: list[np.ndarray] = [np.empty(0)] * len(out)
        for j, i in enumerate(order):
            restored[i] = out[j]
        return restored

    def simulate_explanation(
        self, explanation: Explanation, records: Sequence[Sequence[str]], cached: bool = True
    ) -> list[np.ndarray]:
        """Per token: the max over rules of the rule's expected value scaled by strength / 5
        (section 5.4). A free-text explanation is one rule at full strength; no rules -> zeros."""
        return combine_rules(
            explanation,
            [len(r) for r in records],
            lambda text: self.simulate(text, records, cached=cached) if text.strip() else None,
        )

    def _simulate_uncached(self, prefix: list[int], ids: list[int], positions: list[int]) -> np.ndarray:
        x = torch.tensor([prefix + ids], device=self.device)
        hidden = _base_model(self.model)(input_ids=x, use_cache=False)[0][0]
        self._count(x.numel())
        idx = torch.tensor([len(prefix) + p for p in positions], device=self.device, dtype=torch.long)
        return expected_values(self._digit_logits(hidden[idx])).cpu().numpy()
