"""Chat generation with a local transformers model, JSON schemas enforced by a grammar.

Why our own sampling loop instead of ``model.generate``: (1) sampling draws from a private
``torch.Generator`` seeded per request, so results are reproducible per (layer, feature) without
touching the global RNG; (2) the prompt is prefilled once and its key/value cache is shared by the
``n`` samples as expanded views (no per-sample prefill, no copies); (3) the JSON-schema grammar
(xgrammar) masks the logits of each sample every step, so a structured reply is valid by
construction even from a 135M model that ignores a "reply in JSON" instruction; (4) a single
sample is decoded speculatively (``featureinterp.llm.speculative``): drafts from the grammar and the
prompt are verified several tokens per pass, which a memory-bound CPU decoder runs for about the
price of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featureinterp.activations import kv_cache
from featureinterp.llm import speculative
from featureinterp.llm.backend import BackendError, ChatBackend, Completion, GenerationParams, Message, Usage

if TYPE_CHECKING:
    import xgrammar as xgr
    from transformers import PreTrainedModel

__all__ = ["LocalChatBackend"]

logger = logging.getLogger(__name__)


class LocalChatBackend(ChatBackend):
    """A transformers causal LM behind the ``ChatBackend`` interface (thread-safe: one request at a time)."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, name: str) -> None:
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        self.usage = Usage()
        self._lock = threading.Lock()
        self._compiler: xgr.GrammarCompiler | None = None
        self._grammars: dict[str, Any] = {}
        eos = {self.tok.eos_token_id} if self.tok.eos_token_id is not None else set()
        extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(extra if isinstance(extra, list) else [extra])
        self._eos = {int(e) for e in eos if e is not None}
        self.max_draft = 8
        """Draft tokens verified per decode pass of a single sample (0: one token per pass)."""
        self.drafts = speculative.DraftStats()
        self.prefixes = kv_cache.PrefixStore(cut_after=self._eos)
        """Prefilled prompts reused by later requests that start with the same turns (the system
        message and few-shot examples of every feature, a tree node's conversation for its
        children, the complexity analyzer's header). Every prompt is prefilled in pieces that end
        at its end-of-turn tokens, stored or not, so a reply never depends on what this backend
        answered before (``kv_cache.PrefixStore``)."""

    # -- prompts -----------------------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[Message], reply_prefix: str = "") -> list[int]:
        """Token ids of the conversation followed by the start of the assistant's reply, laid out by
        ``featureinterp.llm.chat`` so every chat template accepts it (system text folded where the
        template rejects the role, same-role turns merged; a plain transcript without a template)."""
        from featureinterp.llm import chat

        return chat.prompt_ids(self.tok, messages, reply_prefix)

    def _grammar(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                vocab = self.model.get_output_embeddings().weight.shape[0]
                info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=vocab)
                self._compiler = xgr.GrammarCompiler(info)
            self._grammars[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    # -- model calls -------------------------------------------------------------------------------
    def _prefill(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        """Last-position logits [1, vocab] and the batch-1 cache of prompt ``ids``, starting from the
        longest stored prefix that ends at a piece bound; the prompt's cache is stored for later
        requests. The rest runs piece by piece (one pass per turn): the same passes as a prefill
        from scratch, so the logits are bit for bit the same whatever was stored before."""
        reused, cache = self.prefixes.lookup(ids)
        if cache is None:
            cache = kv_cache.new_cache(self.model, keep_past=True)
        for begin, end in self.prefixes.pieces(ids, reused):
            logits = self._forward(torch.tensor([ids[begin:end]], device=self.device), cache, begin)
        self.prefixes.store(ids, cache)
        self.usage.add(prefill_tokens=len(ids) - reused)
        return logits, cache

    def _logits(self, ids: torch.Tensor, cache: Any, start: int, keep: int) -> torch.Tensor:
        """Float logits [batch, keep, vocab] after the last ``keep`` positions of ``ids`` [batch, len],
        which continue ``cache`` at position ``start``."""
        pos = torch.arange(start, start + ids.shape[1], device=self.device).expand(ids.shape[0], -1)
        out = self.model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=keep)
        return out.logits.float()

    def _forward(self, ids: torch.Tensor, cache: Any, start: int) -> torch.Tensor:
        """Logits [batch, vocab] after the last position of ``ids``."""
        return self._logits(ids, cache, start, keep=1)[:, -1]

    def _forward_rows(self, ids: torch.Tensor, cache: Any, start: int) -> torch.Tensor:
        """Logits [len, vocab] (on the CPU) after every position of the batch-1 ``ids`` [1, len]."""
        return self._logits(ids, cache, start, keep=ids.shape[1])[0].cpu()

    @staticmethod
    def _probs(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
        """The sampling distribution [..., vocab] of (masked) ``logits``: tempered, top-p cut."""
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return probs

    @classmethod
    def _sample(cls, logits: torch.Tensor, params: GenerationParams, gen: torch.Generator) -> torch.Tensor:
        if params.temperature == 0:
            return logits.argmax(-1)
        return torch.multinomial(cls._probs(logits, params), 1, generator=gen).squeeze(-1)

    @torch.no_grad()
    def generate(self, messages: Sequence[Message], params: GenerationParams) -> list[Completion]:
        ids = self.prompt_ids(messages)
        gen = torch.Generator(device="cpu")
        if params.seed is not None:
            gen.manual_seed(params.seed)
        else:
            gen.seed()
        grammar = self._grammar(params.json_schema) if params.json_schema is not None else None
        with self._lock:
            logits, cache = self._prefill(ids)
            if params.n == 1 and self.max_draft > 0 and kv_cache.can_cut(cache):
                out, reasons = self._decode_drafted(ids, logits, cache, params, gen, grammar)
            else:
                out, reasons = self._decode(ids, logits, cache, params, gen, grammar)
        self.usage.add(requests=1, prompt_tokens=len(ids), completion_tokens=sum(len(o) for o in out))
        request_id = self._request_id(ids, params)
        return [
            Completion(self.tok.decode(o, skip_special_tokens=True), reasons[i], request_id)
            for i, o in enumerate(out)
        ]

    def _request_id(self, ids: list[int], params: GenerationParams) -> str:
        """The id stored with a request's completions. A seeded request's replies are a function
        of the model, the prompt and the parameters, so its id is a digest of them: a feature's
        stored completions are then a function of the feature too (a random id differed between
        a feature explained alone and inside a ranged run), and equal requests share an id. An
        unseeded request draws fresh randomness and gets a fresh id."""
        if params.seed is None:
            return f"local-{uuid.uuid4().hex[:12]}"
        what = [self.name, self.max_draft, ids, dataclasses.asdict(params)]
        return (
            "local-" + hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=6).hexdigest()
        )

    def _decode(
        self,
        ids: list[int],
        logits: torch.Tensor,
        cache: Any,
        params: GenerationParams,
        gen: torch.Generator,
        grammar: xgr.CompiledGrammar | None,
    ) -> tuple[list[list[int]], list[str]]:
        """(tokens, finish reason) of ``params.n`` samples decoded together, one token per pass.

        ``logits`` [1, vocab]: the prompt's last position; ``cache``: the prompt's (batch 1)."""
        n = params.n
        cache = kv_cache.fork(cache, n) if n > 1 else cache
        logits = logits.expand(n, -1).clone()
        matchers: list[xgr.GrammarMatcher] | None = None
        bitmask: torch.Tensor | None = None
        if grammar is not None:
            import xgrammar as xgr

            matchers = [xgr.GrammarMatcher(grammar) for _ in range(n)]
            bitmask = xgr.allocate_token_bitmask(n, logits.shape[-1])
        out: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        reasons = ["length"] * n
        for step in range(params.max_tokens):
            if matchers is not None:
                import xgrammar as xgr

                assert bitmask is not None  # allocated with the matchers
                for i, m in enumerate(matchers):
                    if done[i]:
                        bitmask[i].fill_(-1)  # finished rows: allow anything (their tokens are ignored)
                    else:
                        m.fill_next_token_bitmask(bitmask, i)
                xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device))
            tokens = self._sample(logits.cpu(), params, gen).tolist()
            for i, t in enumerate(tokens):
                if done[i]:
                    continue
                if matchers is not None:
                    if not matchers[i].accept_token(t):
                        raise BackendError(f"grammar rejected token {t} of sample {i} (xgrammar bug?)")
                    if matchers[i].is_terminated():
                        done[i], reasons[i] = True, "stop"
                        continue
                if t in self._eos:
                    done[i], reasons[i] = True, "stop"
                    continue
                out[i].append(t)
            if all(done) or step == params.max_tokens - 1:
                break
            next_ids = torch.tensor(tokens, device=self.device)[:, None]
            logits = self._forward(next_ids, cache, len(ids) + step)
        return out, reasons

    def _decode_drafted(
        self,
        ids: list[int],
        logits: torch.Tensor,
        cache: Any,
        params: GenerationParams,
        gen: torch.Generator,
        grammar: xgr.CompiledGrammar | None,
    ) -> tuple[list[list[int]], list[str]]:
        """One sample by speculative decoding (``featureinterp.llm.speculative``): each pass runs the
        pending token and a draft of up to ``max_draft`` tokens, and keeps the draft's longest
        prefix the model agrees with. Same arguments and result as ``_decode``."""
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(grammar) if grammar is not None else None
        bitmask = xgr.allocate_token_bitmask(1, logits.shape[-1]) if matcher is not None else None
        lookup = speculative.PromptLookup(ids)
        out: list[int] = []

        def masked(row: torch.Tensor) -> torch.Tensor:
            """``row`` [vocab] with the tokens the grammar forbids after ``out`` set to -inf."""
            if matcher is not None:
                assert bitmask is not None  # allocated with the matcher
                matcher.fill_next_token_bitmask(bitmask, 0)
                xgr.apply_token_bitmask_inplace(row[None], bitmask.to(row.device))
            return row

        def keep(t: int) -> str | None:
            """Append token ``t`` to the reply; the finish reason once the reply has ended."""
            if matcher is not None:
                if not matcher.accept_token(t):
                    raise BackendError(f"grammar rejected token {t} (xgrammar bug?)")
                if matcher.is_terminated():
                    return "stop"
            if t in self._eos:
                return "stop"
            out.append(t)
            lookup.extend([t])
            return "length" if len(out) >= params.max_tokens else None

        pending = int(self._sample(masked(logits[0].cpu()), params, gen))
        length = len(ids)  # positions held by the cache
        while (reason := keep(pending)) is None:
            room = params.max_tokens - len(out) - 1  # draft tokens that still fit before max_tokens
            draft = matcher.find_jump_forward_tokens() if matcher is not None else []
            draft = (draft or lookup.draft(self.max_draft))[: min(self.max_draft, room)]
            rows = self._forward_rows(torch.tensor([[pending, *draft]], device=self.device), cache, length)
            length += 1
            self.drafts.passes += 1
            self.drafts.drafted += len(draft)
            nxt: int | None = None
            for j, d in enumerate(draft):
                row = masked(rows[j])
                t = speculative.verify(
                    None if params.temperature == 0 else self._probs(row, params), row, d, gen
                )
                if t != d:
                    nxt = t
                    break
                self.drafts.accepted += 1
                length += 1
                if (reason := keep(d)) is not None:
                    break
            if reason is not None:
                break
            if nxt is None:  # the whole draft was kept: the pass also gives the token after it
                nxt = int(self._sample(masked(rows[len(draft)]), params, gen))
            if cache.get_seq_length() > length:  # rejected draft tokens leave the cache
                cache = kv_cache.prefix(cache, length)
            pending = nxt
        return [out], [reason]

    @torch.no_grad()
    def next_token_logprobs(
        self, messages: Sequence[Message], reply_prefix: str, candidates: Sequence[str]
    ) -> np.ndarray:
        ids = self.prompt_ids(messages, reply_prefix)
        with self._lock:
            logits, _ = self._prefill(ids)
        logprobs = torch.log_softmax(logits[0], -1).cpu().numpy()
        self.usage.add(requests=1, prompt_tokens=len(ids))
        out = np.full(len(candidates), -np.inf)
        for i, cand in enumerate(candidates):
            cand_ids = self.tok(cand, add_special_tokens=False)["input_ids"]
            if len(cand_ids) == 1:
                out[i] = logprobs[cand_ids[0]]
        return out
