import json
import math
import threading
import time

import numpy as np
import pytest

from featureinterp.config import ExplainSettings
from featureinterp.explain import (
    ExplainerConfig,
    ExplanationFailed,
    contrast_block,
    explain,
    explain_seed,
    feedback_message,
    leave_one_out,
    one_shot_messages,
)
from featureinterp.explanations.rules import Explanation, Rule
from featureinterp.llm.backend import BackendError, ChatBackend, Completion, Usage
from featureinterp.records.sources import FeatureRecords, Record, feature_generator
from featureinterp.simulate.scoring import score


class ScriptedBackend(ChatBackend):
    """Replies from a queue, or from ``fn(messages, params) -> list[str]``: parse and flow tests only."""

    def __init__(self, replies=(), fn=None):
        self.name, self.usage, self.fn = "scripted", Usage(), fn
        self.replies, self.calls, self.forgotten = list(replies), [], []
        self._lock = threading.Lock()

    def forget(self, messages, params):
        self.forgotten.append(params.seed)

    def generate(self, messages, params):
        with self._lock:
            self.calls.append((list(messages), params))
            self.usage.add(requests=1)
            if self.fn is None:
                texts = [self.replies.pop(0) for _ in range(min(params.n, len(self.replies)))]
        if self.fn is not None:
            texts = self.fn(messages, params)
        if texts and isinstance(texts[0], Exception):
            raise texts[0]
        return [Completion(t, "stop", f"req-{len(self.calls)}") for t in texts]

    def next_token_logprobs(self, messages, reply_prefix, candidates):
        raise NotImplementedError


def rules_json(*rules):
    return json.dumps({"rules": [{"activates_on": on, "strength": s} for on, s in rules]})


def is_child(params):
    return "improvement" in (params.json_schema or {}).get("properties", {})


def lookup_simulate(table, calls=None):
    """simulate() predicting per token from ``table[rule text][token]`` (0 when absent)."""

    def simulate(explanation, token_lists):
        if calls is not None:
            calls.append(explanation)
        (rule,) = explanation.rules
        values = table[rule.activates_on]
        return [np.array([float(values.get(t, 0.0)) for t in toks]) for toks in token_lists]

    return simulate


# Train tokens t*, valid tokens v* (so a simulate table can fit one split and not the other).
TRAIN = (
    Record(("t0", "t1", "t2", "t3"), [0, 5, 0, 2]),
    Record(("t4", "t5", "t6", "t7"), [4, 0, 0, 0]),
    Record(("t8", "t9", "t10", "t11"), [0, 0, 3, 0]),
)
VALID = (Record(("v0", "v1", "v2", "v3"), [0, 4, 0, 0]), Record(("v4", "v5", "v6", "v7"), [2, 0, 0, 5]))
RECORDS = FeatureRecords(TRAIN, VALID, max_act=5.0)
TRUTH = {f"t{i}": a for i, a in enumerate([0, 5, 0, 2, 4, 0, 0, 0, 0, 0, 3, 0])} | {
    f"v{i}": a for i, a in enumerate([0, 4, 0, 0, 2, 0, 0, 5])
}
EXACT = {t: a for t, a in TRUTH.items()}  # a rule predicting the truth: scores 1.0 on both splits
TABLE = {
    "exact": EXACT,
    "weak": {"t1": 5, "t3": 5, "t6": 4, "v1": 5, "v2": 3},
    "weaker": {"t1": 2, "t5": 4, "t9": 4, "v1": 1, "v3": 3},
    "train only": {t: a for t, a in TRUTH.items() if t.startswith("t")} | {"v0": 5, "v2": 5},
    "valid only": {"t1": 5, "t2": 3, "t7": 4} | {t: a for t, a in TRUTH.items() if t.startswith("v")},
}


# -- one-shot: parsing, retries, failure -----------------------------------------------------------


def test_malformed_json_with_prose_and_trailing_commas_is_repaired():
    reply = 'Sure! Here they are:\n[{"activates_on": "weak", "strength": 4,},]\nHope this helps.'
    backend = ScriptedBackend([reply])
    result = explain(backend, lookup_simulate(TABLE), RECORDS, ExplainerConfig(), seed=0)
    assert result.explanation.rules == (Rule("weak", 4),)
    assert [c["parsed_ok"] for c in result.completions] == [True]
    assert backend.calls[0][1].json_schema is not None and backend.calls[0][1].n == 1
    assert math.isfinite(result.train_score) and math.isfinite(result.valid_score)


def test_unparseable_sample_is_re_requested_with_a_new_seed():
    backend = ScriptedBackend(["I cannot tell.", rules_json(("weak", 3))])
    result = explain(backend, lookup_simulate(TABLE), RECORDS, ExplainerConfig(), seed=7)
    assert result.explanation.rules == (Rule("weak", 3),)
    assert [c["parsed_ok"] for c in result.completions] == [False, True]
    assert "no JSON list" in result.completions[0]["error"]
    (_, first), (_, second) = backend.calls
    assert second.n == 1 and first.seed != second.seed
    # explained anyway: the unusable reply stays cached, so a rerun replays this path for free
    assert backend.forgotten == []


def test_failure_is_raised_after_bounded_retries_never_a_dummy():
    backend = ScriptedBackend(["nope"] * 10)
    with pytest.raises(ExplanationFailed) as info:
        explain(backend, lookup_simulate(TABLE), RECORDS, ExplainerConfig(parse_retries=2), seed=0)
    assert len(backend.calls) == 3  # the first request + 2 retries
    assert len(info.value.completions) == 3 and not any(c["parsed_ok"] for c in info.value.completions)
    assert "3 completion(s)" in info.value.reason and "unparseable" in info.value.reason
    # failed: every unusable reply is forgotten, so a relaunch asks the server again
    assert backend.forgotten == [params.seed for _, params in backend.calls]


def test_backend_giving_up_is_an_explanation_failure():
    backend = ScriptedBackend([BackendError("HTTP 401 unauthorized")])
    with pytest.raises(ExplanationFailed, match="backend gave up"):
        explain(backend, lookup_simulate(TABLE), RECORDS, ExplainerConfig(), seed=0)


def test_rule_cap_is_enforced_in_schema_and_parsing():
    backend = ScriptedBackend([rules_json(*[(w, 3) for w in ("exact", "weak", "weaker", "train only")])])
    result = explain(backend, lookup_simulate(TABLE), RECORDS, ExplainerConfig(rule_cap=2), seed=0)
    assert [r.activates_on for r in result.explanation.rules] == ["exact", "weak"]
    assert backend.calls[0][1].json_schema["properties"]["rules"]["maxItems"] == 2
    messages = backend.calls[0][0]
    assert "at most 2 rules" in messages[-1]["content"]  # stated after the records
    # conditions that differ only in their cap share the prompt up to the target records' end
    other = one_shot_messages(RECORDS, ExplainerConfig(rule_cap=3))
    assert other[:-1] == messages[:-1] and "at most 2" not in messages[0]["content"]


def test_sparse_records_are_repeated_without_zeros():
    sparse = FeatureRecords((Record(tuple(f"w{i}" for i in range(10)), [0] * 9 + [5]),), (), max_act=5.0)
    text = one_shot_messages(sparse, ExplainerConfig())[-1]["content"]
    assert "left out" in text and text.endswith("Rules for these records, as JSON:")
    assert text.split("left out:")[1].count("\t") == 1  # only the non-zero token is repeated


def test_free_text_mode_asks_for_a_phrase_without_schema():
    backend = ScriptedBackend(["words about the sea\nand more"])
    config = ExplainerConfig(structured=False, free_text_first_line=True)  # default: every line
    result = explain(backend, lookup_simulate({"words about the sea": EXACT}), RECORDS, config, seed=0)
    assert result.explanation == Explanation.text("words about the sea") and result.valid_score == 1.0
    messages, params = backend.calls[0]
    assert params.json_schema is None and messages[-1]["content"].endswith("(one phrase):")
    assert messages[2]["content"] == "names of the days of the week"  # few-shot answers are phrases


def test_holistic_mode_shows_both_blocks_and_needs_holistic_values():
    with_hol = FeatureRecords(
        (Record(("a", "b"), [0, 4.0], holistic=[2.0, 1.0]),), (), max_act=4.0, max_holistic=2.0
    )
    config = ExplainerConfig(holistic=True)
    messages = one_shot_messages(with_hol, config)
    assert "Activation-causing tokens" in messages[0]["content"]
    assert "Activation-causing tokens:\n<start>\na\t5\nb\t2\n<end>" in messages[-1]["content"]
    with pytest.raises(ValueError, match="holistic"):
        explain(ScriptedBackend(), lookup_simulate(TABLE), RECORDS, config, seed=0)


# -- tree ------------------------------------------------------------------------------------------


def tree_backend(roots, child):
    """Roots: the given rule lists; children: ``child(parent rules text)`` in the text format."""

    def fn(messages, params):
        if not is_child(params):
            return [rules_json(*r) for r in roots][: params.n]
        return [child(messages[-2]["content"])]  # the parent's reply

    return ScriptedBackend(fn=fn)


def test_tree_stops_at_the_score_threshold():
    backend = tree_backend(
        roots=[[("weak", 5)], [("weaker", 5)], [("weak", 3)]],
        child=lambda parent: (
            f"IMPROVEMENT: use the exact rule\n\nNEW EXPLANATION: {rules_json(('exact', 5))}"
        ),
    )
    config = ExplainerConfig(method="tree", depth=3, roots=3, branching=2, width=2, stop_score=0.9)
    result = explain(backend, lookup_simulate(TABLE), RECORDS, config, seed=1)
    assert result.stop_reason == "stop_score"
    assert max(n["depth"] for n in result.nodes) == 1 and len(result.nodes) == 3 + 3 * 2
    assert len(backend.calls) == 1 + 3 * 2
    assert result.train_score == pytest.approx(1.0) and result.explanation.rules == (Rule("exact", 5),)
    assert all(n["improvement"] == "use the exact rule" for n in result.nodes if n["depth"] == 1)


def test_final_pick_uses_validation_not_train_score():
    backend = tree_backend(roots=[[("train only", 5)], [("valid only", 5)]], child=None)
    config = ExplainerConfig(method="tree", roots=2, depth=0)
    result = explain(backend, lookup_simulate(TABLE), RECORDS, config, seed=0)
    by_train = max(result.nodes, key=lambda n: n["train_score"])
    by_valid = max(result.nodes, key=lambda n: n["valid_score"])
    assert by_train["id"] != by_valid["id"]
    assert by_train["explanation"]["rules"][0]["activates_on"] == "train only"
    assert result.explanation.rules == (Rule("valid only", 5),)
    assert result.valid_score == pytest.approx(1.0) and result.train_score < by_train["train_score"]


def test_children_share_rule_simulations_through_the_cache():
    calls = []
    backend = tree_backend(
        roots=[[("weak", 5), ("weaker", 2)]],
        # every child keeps 'weak' (at another strength) and adds 'exact': one new simulation in all
        child=lambda parent: f"IMPROVEMENT: add\nNEW EXPLANATION: {rules_json(('weak', 2), ('exact', 4))}",
    )
    config = ExplainerConfig(method="tree", roots=1, branching=2, width=1, depth=2, stop_score=2.0)
    result = explain(backend, lookup_simulate(TABLE, calls), RECORDS, config, seed=0)
    assert len(result.nodes) == 1 + 2 + 2
    assert result.simulations == len(calls) == 3  # weak, weaker, exact: once each, train+valid together
    child = next(n for n in result.nodes if n["depth"] == 1)
    assert child["explanation"]["rules"] == [
        {"activates_on": "weak", "strength": 2},
        {"activates_on": "exact", "strength": 4},
    ]
    # combined from cached full-strength values: per token max over rules of value * strength / 5
    pred = [np.maximum(np.array([TABLE["weak"].get(t, 0) for t in r.tokens]) * 2 / 5,
                       np.array([TABLE["exact"].get(t, 0) for t in r.tokens]) * 4 / 5) for r in TRAIN]  # fmt: skip
    expected = score([r.acts for r in TRAIN], pred).correlation
    assert child["train_score"] == pytest.approx(expected)


def test_a_level_where_every_child_fails_ends_the_search():
    backend = tree_backend(roots=[[("weak", 5)], [("weaker", 5)]], child=lambda parent: "no idea, sorry")
    config = ExplainerConfig(method="tree", roots=2, depth=3)
    result = explain(backend, lookup_simulate(TABLE), RECORDS, config, seed=0)
    assert result.stop_reason == "no_children" and len(result.nodes) == 2
    children = [c for c in result.completions if c["stage"].startswith("child")]
    assert len(children) == 4 and not any(c["parsed_ok"] for c in children)
    assert result.explanation.rules == (Rule("weak", 5),)


def test_child_requests_of_a_level_run_concurrently():
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def fn(messages, params):
        if not is_child(params):
            return [rules_json(("weak", 5)), rules_json(("weaker", 5))][: params.n]
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return [f"IMPROVEMENT: x\nNEW EXPLANATION: {rules_json(('weak', 4))}"]

    config = ExplainerConfig(method="tree", roots=2, branching=2, depth=1, concurrency=4)
    result = explain(ScriptedBackend(fn=fn), lookup_simulate(TABLE), RECORDS, config, seed=0)
    assert state["peak"] == 4 and len(result.nodes) == 6
    assert [n["id"] for n in result.nodes] == list(range(6))
    assert [n["parent"] for n in result.nodes] == [None, None, 0, 0, 1, 1]  # fixed order, not arrival order


# -- feedback pieces -------------------------------------------------------------------------------


def test_leave_one_out_puts_the_most_harmful_record_first_and_nan_last():
    truth = [np.array([0, 5, 0]), np.array([0, 4, 0]), np.array([3, 0, 0])]
    preds = [np.array([0, 5, 0]), np.array([4, 0, 4]), np.array([3, 0, 0])]  # record 1 is wrong
    order = leave_one_out(truth, preds)
    assert order[0][0] == 1 and order[0][1] > 0
    # without record 0 only a constant-truth record is left: its gain is NaN and sorts last
    nan_case = leave_one_out([np.array([0, 3]), np.array([0, 0])], [np.array([0, 1]), np.array([1, 0])])
    assert [i for i, _ in nan_case] == [1, 0] and math.isnan(nan_case[1][1])


def test_contrasting_format_is_exact():
    text = contrast_block(["a", " b", "\n"], [0.4, 2.5, 3.6], [0, 4, 1])
    assert text == (
        "\n<start>\n"
        "a\t(predicted: 0) (actual: 0) (error: none)\n"
        " b\t(predicted: 2) (actual: 4) (error: 2 too low)\n"  # 2.5 rounds half to even
        "\\n\t(predicted: 4) (actual: 1) (error: 3 too high)\n"
        "<end>\n"
    )


def test_feedback_names_the_worst_records_by_their_real_index():
    preds = [np.array([0, 5, 0, 2.0]), np.array([0, 0, 5, 0.0]), np.array([0, 0, 0, 0.0])]
    text = feedback_message(RECORDS, preds, ExplainerConfig(worst_records=2))
    assert "The 2 records" in text and "(training record 2;" in text and "(training record 3;" in text
    assert text.index("training record 2") < text.index("training record 3")
    assert text.rstrip().endswith("Do not write comments inside the JSON.")


def test_config_from_settings_copies_the_preset_and_fields_win():
    settings = ExplainSettings(
        temperature=0.5, tree_roots=4, tree_depth=1, max_tokens=90, child_max_tokens=70
    )
    config = ExplainerConfig.from_settings(settings, method="tree", depth=2)
    assert (config.temperature, config.roots, config.depth, config.max_tokens) == (0.5, 4, 2, 90)
    assert config.child_max_tokens == 70 and config.method == "tree"
    assert ExplainerConfig.from_settings(None) == ExplainerConfig()
    want = int(feature_generator(3, "preset" + "tree", 5, 9).integers(2**31))
    assert explain_seed(3, "preset", "tree", 5, 9) == want


# -- the real local path ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(embedded_model):
    """A tiny random-weight Llama with the real SmolLM2 tokenizer."""
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    return tiny_llama_for(tok, seed=0, max_positions=2048), tok


def test_local_backend_writes_a_schema_valid_explanation_that_the_simulator_scores(tiny_lm):
    from featureinterp.llm.local import LocalChatBackend
    from featureinterp.simulate.simulator import LocalSimulator

    model, tok = tiny_lm
    records = FeatureRecords(
        train=(
            Record((" The", " ocean", " was", " calm", "."), [0, 4.0, 0, 1.0, 0]),
            Record((" In", " July", " we", " sailed"), [0, 0, 0, 3.0]),
        ),
        valid=(Record((" the", " sea", " is", " deep"), [0, 5.0, 0, 0]),),
        max_act=5.0,
    )
    backend = LocalChatBackend(model, tok, "tiny")
    simulator = LocalSimulator(model, tok, batch_size=2)
    config = ExplainerConfig(rule_cap=1, max_tokens=120, parse_retries=1)
    result = explain(backend, simulator.simulate_explanation, records, config, seed=3)
    assert isinstance(result.explanation, Explanation) and 1 <= len(result.explanation.rules) <= 1
    assert result.completions[0]["parsed_ok"] and result.completions[0]["finish_reason"] == "stop"
    node = result.nodes[0]
    for value, reason in (
        (result.train_score, node["train_reason"]),
        (result.valid_score, node["valid_reason"]),
    ):
        assert math.isfinite(value) or reason
    assert result.usage["requests"] == 1 and result.simulations == 1
