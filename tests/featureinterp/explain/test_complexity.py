import math
import threading

import numpy as np
import pytest
import torch

from featureinterp.explain.complexity import (
    REPLY_PREFIX,
    ComplexityAnalyzer,
    ComplexityExample,
    expected_digit,
    mean_complexity,
)
from featureinterp.explanations.rules import Rule
from featureinterp.llm.backend import ChatBackend, Usage


class LogprobBackend(ChatBackend):
    """Returns queued digit log-probabilities and records the queries (arithmetic tests only)."""

    def __init__(self, rows):
        self.name, self.usage, self.rows, self.calls = "scripted", Usage(), list(rows), []
        self._lock = threading.Lock()

    def generate(self, messages, params):
        raise NotImplementedError

    def next_token_logprobs(self, messages, reply_prefix, candidates):
        with self._lock:
            self.calls.append((list(messages), reply_prefix, list(candidates)))
            return np.asarray(self.rows.pop(0), dtype=np.float64)


def test_expected_value_over_renormalised_digits():
    p = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.3])  # 0.6 of the mass is on other tokens: dropped
    with np.errstate(divide="ignore"):
        rows = [np.log(p), np.full(6, -np.inf), np.log(np.full(6, 1 / 6))]
    backend = LogprobBackend(rows)
    values = ComplexityAnalyzer(backend).rate([Rule("the word 'cat'", 4), "abstract irony", "x"])
    assert values[0] == pytest.approx((0 * 0.1 + 5 * 0.3) / 0.4) and math.isnan(values[1])
    assert values[2] == pytest.approx(2.5)
    messages, prefix, candidates = backend.calls[0]
    assert prefix == REPLY_PREFIX == "Complexity:\t" and candidates == ["0", "1", "2", "3", "4", "5"]
    assert messages[-1] == {"role": "user", "content": "Explanation:\nthe word 'cat'"}  # strength ignored
    assert messages[2]["content"].startswith("Complexity:\t0\nReason:\t")
    assert expected_digit([-1e4, 0, -1e4, -1e4, -1e4, -1e4]) == pytest.approx(1.0)


def test_mean_complexity_ignores_nan_and_is_nan_when_empty():
    assert mean_complexity([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(mean_complexity([])) and math.isnan(mean_complexity([float("nan")]))


def test_examples_outside_the_scale_are_rejected():
    with pytest.raises(ValueError, match="outside 0..5"):
        ComplexityAnalyzer(LogprobBackend([]), examples=[ComplexityExample("x", 7, "y")])


def test_local_rating_reads_the_digit_position_not_one_late(embedded_model):
    from featureinterp.llm.local import LocalChatBackend
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    # sharp logits: the distributions at neighbouring positions clearly differ
    model = tiny_llama_for(tok, seed=0, max_positions=1024, initializer_range=0.5)
    backend = LocalChatBackend(model, tok, "tiny")
    analyzer = ComplexityAnalyzer(backend)
    rule = "dates written with digits"
    (rated,) = analyzer.rate([rule])

    digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(6)]

    def ev_at(ids, position):
        with torch.no_grad():
            logits = backend.model(input_ids=torch.tensor([ids])).logits[0, position].float()
        return expected_digit(torch.log_softmax(logits, -1)[digit_ids].numpy())

    ids = backend.prompt_ids(analyzer.messages(rule), REPLY_PREFIX)
    assert tok.decode(ids[-1:]) == "\t"  # the next token is where the digit is written
    assert rated == pytest.approx(ev_at(ids, -1), abs=1e-5)
    # the original's read-out: a placeholder after the tab, read at the placeholder's own position
    late = backend.prompt_ids(analyzer.messages(rule), REPLY_PREFIX + "unknown")
    assert late[: len(ids)] == ids and abs(rated - ev_at(late, -1)) > 1e-3
    # the faithful analyzer (faithful presets) reproduces that read-out, to measure the fix
    (faithful,) = ComplexityAnalyzer(backend, faithful=True).rate([rule])
    assert faithful == pytest.approx(ev_at(late, -1), abs=1e-5)
