"""Explaining one feature: the one-shot run and the tree search (paper-method.md sections 4, 6, 11).

An explainer LLM reads a feature's train records (0..5 activations, optionally holistic values)
and writes an explanation; a simulator predicts activations from it; the pooled correlation with
the truth is the score. Two methods:

- ``one_shot``: one request with ``n`` samples on a few-shot prompt; unparseable samples are
  re-requested a bounded number of times, and if none parse the run fails with
  ``ExplanationFailed`` (the original pads with a dummy explanation that is then scored as if real).
- ``tree``: roots from a one-shot call, then ``depth`` levels of children written from score
  feedback (train score + the worst train records in a predicted/actual/error format), keeping the
  ``width`` best children by train score. Fixes to the original: the final pick is by *validation*
  score over all nodes (with real validation records); NaN leave-one-out gains sort last,
  deterministically; the multi-record feedback labels name the right records; a level where every
  child fails ends the search instead of raising.

Why it is fast: tree nodes share most of their rules, so each distinct rule is simulated once per
``explain`` call (on train and validation records together) and explanations are combined from
cached per-rule values; the generation requests of one level run concurrently, and the rules of
each reply are simulated while the other requests of the level are still in flight.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from featureinterp.explain.config import (
    ExplainerConfig,
    ExplainResult,
    ExplanationFailed,
    Simulate,
    child_seed,
    one_shot_seed,
)
from featureinterp.explain.feedback import child_schema, feedback_message
from featureinterp.explain.prompts import one_shot_messages, root_messages
from featureinterp.explanations.rules import (
    Explanation,
    ParseError,
    Rule,
    combine_rules,
    explanation_schema,
    parse_child_reply,
    parse_explanation,
)
from featureinterp.llm.backend import (
    BackendError,
    ChatBackend,
    Completion,
    GenerationParams,
    Message,
    assistant,
    completion_record,
    tally_usage,
    user,
)
from featureinterp.records.formatting import MAX_VALUE, quantize
from featureinterp.records.sources import FeatureRecords
from featureinterp.simulate.scoring import score

__all__ = ["explain", "paper_tree_tokens"]


class _RuleCache:
    """Simulated values of each distinct rule on train + valid records, computed once per call."""

    def __init__(self, simulate: Simulate, records: FeatureRecords) -> None:
        self.simulate = simulate
        self.tokens = [list(r.tokens) for r in (*records.train, *records.valid)]
        self.n_train = len(records.train)
        self.values: dict[tuple[str, bool], list[np.ndarray]] = {}
        self.simulations = 0

    def ensure(self, explanation: Explanation) -> None:
        for rule in explanation.rules:
            key = (rule.activates_on, explanation.structured)
            if rule.strength <= 0 or key in self.values:
                continue  # a zero-strength rule predicts zeros (as simulate_explanation does)
            full = Explanation((Rule(rule.activates_on, MAX_VALUE),), explanation.structured)
            out = self.simulate(full, self.tokens)
            self.simulations += 1
            if len(out) != len(self.tokens) or any(
                np.shape(v) != (len(t),) for v, t in zip(out, self.tokens, strict=False)
            ):
                raise ValueError("simulate returned values whose shapes do not match the records' tokens")
            self.values[key] = [np.asarray(v, dtype=np.float64) for v in out]

    def predict(self, explanation: Explanation) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(train, valid) predictions: per token the max over rules of value * strength / 5."""
        self.ensure(explanation)
        values = self.values
        preds = combine_rules(
            explanation,
            [len(t) for t in self.tokens],
            lambda text: values[(text, explanation.structured)],
        )
        return preds[: self.n_train], preds[self.n_train :]


@dataclass
class _Node:
    id: int
    parent: int | None
    depth: int
    explanation: Explanation
    improvement: str | None
    conversation: list[Message]
    train_preds: list[np.ndarray]
    train_score: float
    valid_score: float
    train_reason: str | None
    valid_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "depth": self.depth,
            "explanation": self.explanation.to_record(),
            "train_score": self.train_score,
            "valid_score": self.valid_score,
            "improvement": self.improvement,
            "train_reason": self.train_reason,
            "valid_reason": self.valid_reason,
        }


def _by_score(nodes: Sequence[_Node], valid: bool) -> list[_Node]:
    """Best first by valid (or train) score; NaN last; ties by the other score, then by id."""

    def key(n: _Node) -> tuple[bool, float, bool, float, int]:
        a, b = (n.valid_score, n.train_score) if valid else (n.train_score, n.valid_score)
        return (
            math.isnan(a),
            -a if not math.isnan(a) else 0.0,
            math.isnan(b),
            -b if not math.isnan(b) else 0.0,
            n.id,
        )

    return sorted(nodes, key=key)


_ChildReply = tuple[Completion | None, str | None, Explanation | None, str | None]
"""(completion, error, explanation, improvement) of one child request."""


@dataclass
class _Run:
    backend: ChatBackend
    records: FeatureRecords
    config: ExplainerConfig
    seed: int
    cache: _RuleCache
    nodes: list[_Node] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    unusable: list[tuple[list[Message], GenerationParams]] = field(default_factory=list)
    """Requests whose reply did not parse. Kept in the backend's cache when the feature is
    explained anyway (a rerun replays the same path for free); forgotten when it fails, so a
    relaunch asks the server again instead of replaying the failure."""
    truth: tuple[list[np.ndarray], list[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        q = self.records.max_act
        self.truth = (
            [quantize(r.acts, q) for r in self.records.train],
            [quantize(r.acts, q) for r in self.records.valid],
        )

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, stage: str) -> list[Explanation]:
        """``n`` parsed explanations from the few-shot prompt (shortfall re-requested, bounded)."""
        cfg = self.config
        messages = one_shot_messages(self.records, cfg)
        schema = explanation_schema(cfg.rule_cap) if cfg.structured else None
        found: list[Explanation] = []
        last_error = "no completions returned"
        for attempt in range(cfg.parse_retries + 1):
            missing = n - len(found)
            if missing <= 0:
                break
            params = GenerationParams(
                n=missing,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens,
                json_schema=schema,
                seed=one_shot_seed(self.seed, attempt),
            )
            try:
                replies = self.backend.generate(messages, params)
            except BackendError as err:
                self.completions.append(completion_record(None, stage, f"backend: {err}"))
                last_error = f"the backend gave up: {err}"
                break
            unusable = False
            for c in replies:  # a server may return more than asked: all are recorded, n are kept
                try:
                    explanation = parse_explanation(
                        c.text,
                        cfg.structured,
                        cfg.rule_cap,
                        lenient=cfg.lenient_rules,
                        first_line=cfg.free_text_first_line,
                    )
                    found += [explanation] if len(found) < n else []
                    self.completions.append(completion_record(c, stage, None))
                except ParseError as err:
                    self.completions.append(completion_record(c, stage, str(err)))
                    last_error = f"unparseable reply: {err}"
                    unusable = True
            if unusable:
                self.unusable.append((messages, params))
        if not found:
            tried = sum(1 for c in self.completions if c["stage"] == stage)
            raise ExplanationFailed(
                f"no explanation after {tried} completion(s); last: {last_error}", self.completions
            )
        return found

    # -- nodes ---------------------------------------------------------------------------------
    def node(
        self,
        explanation: Explanation,
        parent: int | None,
        depth: int,
        improvement: str | None,
        conversation: list[Message],
        node_id: int,
    ) -> _Node:
        train_preds, valid_preds = self.cache.predict(explanation)
        metrics = self.config.metrics
        tr, va = score(self.truth[0], train_preds, metrics), score(self.truth[1], valid_preds, metrics)
        explanation = replace(explanation, meta={**explanation.meta, "node": node_id})
        return _Node(
            node_id, parent, depth, explanation, improvement, conversation, train_preds,
            tr.correlation, va.correlation, tr.reason, va.reason,
        )  # fmt: skip

    def request_child(self, parent: _Node, messages: list[Message], j: int) -> _ChildReply:
        cfg = self.config
        params = GenerationParams(
            n=1,
            temperature=cfg.tree_temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.child_max_tokens,
            json_schema=child_schema(cfg.rule_cap) if cfg.structured else None,
            seed=child_seed(self.seed, parent.depth + 1, parent.id, j),
        )
        try:
            replies = self.backend.generate(messages, params)
        except BackendError as err:
            return None, f"backend: {err}", None, None
        if not replies:
            return None, "backend returned no completion", None, None
        c = replies[0]
        try:
            explanation, improvement = parse_child_reply(
                c.text,
                cfg.structured,
                cfg.rule_cap,
                lenient=cfg.lenient_rules,
                first_line=cfg.free_text_first_line,
            )
        except ParseError as err:
            self.unusable.append((messages, params))
            return c, str(err), None, None
        return c, None, explanation, improvement

    def expand(self, pool: ThreadPoolExecutor, current: list[_Node], depth: int) -> list[_Node]:
        """One level: every child request concurrently; each reply's rules are simulated as soon as
        it arrives (main thread), nodes are built afterwards in a fixed order."""
        asks = []
        for parent in current:
            messages = [
                *parent.conversation,
                user(feedback_message(self.records, parent.train_preds, self.config)),
            ]
            asks += [(parent, messages, j) for j in range(self.config.branching)]
        # each request runs in a copy of this context, so the feature's usage tally counts it
        futures = {
            pool.submit(contextvars.copy_context().run, self.request_child, parent, messages, j): k
            for k, (parent, messages, j) in enumerate(asks)
        }
        results: dict[int, _ChildReply] = {}
        for fut in as_completed(futures):
            k = futures[fut]
            reply = results[k] = fut.result()
            if reply[2] is not None:
                self.cache.ensure(reply[2])  # overlap simulation with the requests still in flight
        children = []
        for k, (parent, messages, _) in enumerate(asks):
            c, error, explanation, improvement = results[k]
            self.completions.append(completion_record(c, f"child:{depth}:{parent.id}", error))
            if explanation is None:
                continue
            assert c is not None  # a parsed explanation comes from a completion
            conversation = [*messages, assistant(c.text)]
            children.append(
                self.node(explanation, parent.id, depth, improvement, conversation, len(self.nodes))
            )
            self.nodes.append(children[-1])
        return children

    # -- methods -------------------------------------------------------------------------------
    def one_shot(self) -> tuple[list[_Node], str]:
        for i, explanation in enumerate(self.sample(self.config.num_samples, "one_shot")):
            self.nodes.append(self.node(explanation, None, 0, None, [], i))
        return list(self.nodes), "one_shot"

    def tree(self) -> tuple[list[_Node], str]:
        cfg = self.config
        for explanation in self.sample(cfg.roots, "root"):
            conversation = root_messages(self.records, cfg, explanation)
            self.nodes.append(self.node(explanation, None, 0, None, conversation, len(self.nodes)))
        current, stop = list(self.nodes), "depth"

        def reached(nodes: list[_Node]) -> bool:
            best = _by_score(nodes, valid=False)[0].train_score
            return not math.isnan(best) and best >= cfg.stop_score

        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            for depth in range(1, cfg.depth + 1):
                # the paper tests the stop score only after a level of children (4.6 f), so every
                # tree revises at least once; ``stop_on_roots`` also tests the roots
                if depth == 1 and cfg.stop_on_roots and reached(current):
                    stop = "stop_score"
                    break
                children = self.expand(pool, current, depth)
                if not children:  # the paper raises here; we keep what was scored
                    stop = "no_children"
                    break
                current = _by_score(children, valid=False)[: cfg.width]
                if reached(current):
                    stop = "stop_score"
                    break
        return _by_score(self.nodes, valid=True)[: cfg.num_samples], stop


def explain(
    backend: ChatBackend, simulate: Simulate, records: FeatureRecords, config: ExplainerConfig, seed: int
) -> ExplainResult:
    """Explain one feature from its train records; score on train and valid (0..5 truth, section 4.7).

    Raises ``ExplanationFailed`` when no sample (one-shot) or no root (tree) parses, or the backend
    gives up before any does.
    """
    if not records.train:
        raise ValueError("explain needs at least one train record")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if config.holistic and any(r.holistic is None for r in records.train):
        raise ValueError("config.holistic is set but some train records have no holistic values")
    with tally_usage() as usage:  # this call's requests only, even when features share the backend
        run = _Run(backend, records, config, seed, _RuleCache(simulate, records))
        try:
            chosen, stop = run.tree() if config.method == "tree" else run.one_shot()
        except ExplanationFailed:
            for messages, params in run.unusable:
                backend.forget(messages, params)
            raise
    return ExplainResult(
        explanation=chosen[0].explanation,
        alternatives=[n.explanation for n in chosen[1:]],
        train_score=chosen[0].train_score,
        valid_score=chosen[0].valid_score,
        nodes=[n.to_dict() for n in run.nodes],
        completions=run.completions,
        usage={k: round(v, 6) for k, v in usage.snapshot().items()},
        simulations=run.cache.simulations,
        stop_reason=stop,
    )


def paper_tree_tokens(
    rule_tokens: Callable[[str], int],
    record_tokens: Sequence[int],
    n_train: int,
    node_rules: Sequence[Sequence[str]],
    batch_size: int,
) -> int:
    """Simulator forward tokens the paper code's tree loop spends scoring these nodes
    (paper-method.md 4.6-4.7 and 5.5), for comparison with ours on the same explanations.

    Each scored node simulates every rule of its explanation on the train records and then on the
    valid records: the rule message is appended to a copy of the header cache, then the records run
    in chunks of ``batch_size``, each chunk padded to its longest record and the last one filled up
    with copies. Nothing is shared between nodes, so a rule kept by a child is simulated again.
    ``record_tokens`` are the prompt lengths of the train records then the valid ones (the first
    ``n_train``); ``node_rules`` the rule texts of each node.
    """

    def chunks(lengths: Sequence[int]) -> int:
        return sum(
            batch_size * max(lengths[lo : lo + batch_size]) for lo in range(0, len(lengths), batch_size)
        )

    per_records = chunks(record_tokens[:n_train]) + chunks(record_tokens[n_train:])
    return sum(rule_tokens(rule) + per_records for rules in node_rules for rule in rules)
