"""The secondary scorers (featureinterp/scorers): metrics, reply parsing, the batched judge, and
each scorer on records whose truth is known."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest

from featureinterp.llm.backend import ChatBackend, Completion, GenerationParams, Message
from featureinterp.names import COMPLEMENTARY_SOURCES, POSITIVE_SOURCE, PRIMARY_SOURCE
from featureinterp.simulate.scorers import (
    Item,
    JudgeConfig,
    ScorerFailed,
    agreement,
    auroc,
    binary_metrics,
    detection_score,
    embedding_score,
    fuzzing_score,
    scorer_seed,
    split_items,
)
from featureinterp.simulate.scorers.fuzzing import fuzz_items, highlight
from featureinterp.simulate.scorers.judge import ask_labels, labels_schema, parse_labels
from featureinterp.simulate.scorers.metrics import by_source, headline, spearman


def _item(source: str, row: int, words: str, fires_on: Sequence[str] = ()) -> Item:
    tokens = tuple(" " + w for w in words.split())
    acts = np.array([3.0 if t.strip() in fires_on else 0.0 for t in tokens], dtype=np.float32)
    return Item(source, row, tokens, acts)


class ScriptedJudge(ChatBackend):
    """Answers each numbered text with ``rule(text)``; ``bad`` first replies are junk. A stub of
    the backend interface, for the flow and parsing of the judge (the real model is tested below)."""

    name = "scripted"

    def __init__(self, rule, bad: int = 0) -> None:
        self.rule, self.bad, self.requests = rule, bad, []

    def generate(self, messages: Sequence[Message], params: GenerationParams) -> list[Completion]:
        self.requests.append((messages, params))
        if self.bad:
            self.bad -= 1
            return [Completion("I think most of them do.", "stop", "r-bad")]
        texts = re.findall(r"^\d+\. '(.*)'$", messages[-1]["content"], flags=re.M)
        labels = [int(self.rule(t)) for t in texts]
        return [Completion(f'Sure. {{"labels": {labels}}}', "stop", f"r{len(self.requests)}")]

    def next_token_logprobs(self, messages, reply_prefix, candidates):  # pragma: no cover - unused
        raise NotImplementedError


def test_binary_metrics_exact_and_undefined() -> None:
    m = binary_metrics([True, True, False, False, False], [True, False, True, False, False])
    assert m["precision"] == 0.5 and m["recall"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["f1"] == 0.5 and m["n"] == 5 and m["n_positive"] == 2
    none_predicted = binary_metrics([True, False], [False, False])
    assert math.isnan(none_predicted["precision"]) and none_predicted["recall"] == 0.0
    assert math.isnan(binary_metrics([False, False], [False, True])["balanced_accuracy"])
    with pytest.raises(ValueError, match="2 labels but 1"):
        binary_metrics([True, False], [True])


def test_auroc_counts_ties_half_and_matches_pairs() -> None:
    labels = [True, True, False, False, False]
    scores = [0.9, 0.4, 0.4, 0.1, 0.95]
    # pairs (pos, neg): 0.9 beats 0.4, 0.1, loses to 0.95; 0.4 ties 0.4, beats 0.1, loses 0.95
    assert auroc(labels, scores) == pytest.approx((2 + 1.5) / 6)
    assert auroc([True, False], [1.0, 0.0]) == 1.0 and auroc([True, False], [0.0, 1.0]) == 0.0
    assert math.isnan(auroc([True, True], [0.1, 0.2]))


def test_by_source_pairs_positives_with_each_source() -> None:
    items = [
        _item(POSITIVE_SOURCE, 0, "a dog", ["dog"]),
        _item("random", 1, "a cat"),
        _item(PRIMARY_SOURCE, 2, "a wolf"),
    ]
    out = by_source(items, lambda y, v: (tuple(y), tuple(v)), [1, 2, 3])
    assert out["all"] == ((True, False, False), (1, 2, 3))
    assert out["random"] == ((True, False), (1, 2))
    assert out[PRIMARY_SOURCE] == ((True, False), (1, 3))
    assert "similar" not in out  # a source without test records has no entry
    assert headline({"all": 0.2, PRIMARY_SOURCE: 0.7}) == 0.7 and headline({"all": 0.2}) == 0.2


def test_split_items_read_the_test_split_in_source_order() -> None:
    frame = pl.DataFrame(
        {
            "row": [5, 6, 7, 8],
            "source": ["random", POSITIVE_SOURCE, POSITIVE_SOURCE, "random"],
            "rank": [0, 1, 0, 1],
            "split": ["test", "test", "test", "train"],
            "tokens": [[" x"], [" y", " z"], [" w"], [" v"]],
            "acts": [[0.0], [0.0, 2.0], [1.0], [0.0]],
        }
    )
    items = split_items(frame)
    assert [(it.source, it.row) for it in items] == [(POSITIVE_SOURCE, 7), (POSITIVE_SOURCE, 6), ("random", 5)]
    assert [it.active for it in items] == [True, True, False] and items[1].text == " y z"


def test_parse_labels_reads_wrapped_replies_and_names_what_is_wrong() -> None:
    assert parse_labels('Answer: {"labels": [1, 0, 1]}', 3) == [True, False, True]
    assert parse_labels("[0, 0]", 2) == [False, False]
    assert parse_labels('{"labels": ["yes", "no"]}', 2) == [True, False]
    with pytest.raises(ValueError, match="expected 3 labels.*found 2 values"):
        parse_labels('{"labels": [1, 0]}', 3)
    with pytest.raises(ValueError, match="no JSON list"):
        parse_labels("all of them", 2)
    schema = labels_schema(4)["properties"]["labels"]
    assert schema["minItems"] == schema["maxItems"] == 4


def test_judge_batches_retries_and_fails_loudly() -> None:
    texts = [f"text {i} dog" if i % 3 == 0 else f"text {i}" for i in range(7)]
    judge = ScriptedJudge(lambda t: "dog" in t, bad=1)
    out = ask_labels(judge, "instructions", "dogs", texts, JudgeConfig(batch_size=3), seed=1, stage="detection")
    assert out.labels == ["dog" in t for t in texts]
    assert len(judge.requests) == 4  # 3 batches + one retry of the first
    assert [c["parsed_ok"] for c in out.completions] == [False, True, True, True]
    assert judge.requests[1][1].temperature > 0  # the retry samples instead of repeating itself
    with pytest.raises(ScorerFailed, match="no parseable reply for texts 1-3 after 2 requests") as err:
        ask_labels(ScriptedJudge(bool, bad=5), "i", "e", texts, JudgeConfig(3, attempts=2), 1, "fuzzing")
    assert len(err.value.completions) == 2


def _feature_items() -> list[Item]:
    """A 'dog' feature: positives mention dogs; the similar-but-quiet source mentions cats."""
    return [
        _item(POSITIVE_SOURCE, 0, "the dog barked at night", ["dog"]),
        _item(POSITIVE_SOURCE, 1, "a dog and its owner", ["dog"]),
        _item(POSITIVE_SOURCE, 2, "walk the dog today", ["dog"]),
        _item("random", 3, "stock prices fell sharply"),
        _item("random", 4, "rain is expected tomorrow"),
        _item(PRIMARY_SOURCE, 5, "the cat sat quietly"),
        _item(PRIMARY_SOURCE, 6, "a cat and its owner"),
    ]


def test_detection_unshuffles_answers_and_exposes_a_too_broad_rule() -> None:
    items = _feature_items()
    exact = detection_score(ScriptedJudge(lambda t: "dog" in t), "dogs", items, JudgeConfig(4), seed=3)
    assert exact["score"] == 1.0 and exact["per_source"]["all"]["f1"] == 1.0
    assert [d["predicted"] for d in exact["items"]] == [it.active for it in items]
    broad = detection_score(
        ScriptedJudge(lambda t: "dog" in t or "cat" in t), "pets", items, JudgeConfig(4), seed=3
    )
    assert broad["per_source"]["random"]["precision"] == 1.0  # random rows are not fooled
    assert broad["per_source"][PRIMARY_SOURCE]["precision"] == 0.6  # the similar-but-quiet ones are
    assert broad["score"] == 0.5


def test_highlight_marks_runs_and_keeps_spaces_outside() -> None:
    tokens = (" the", " big", " dog", " ran")
    assert highlight(tokens, [1, 2]) == " the <<big dog>> ran"
    assert highlight(tokens, [0, 3]) == " <<the>> big dog <<ran>>"


def test_fuzz_items_half_true_highlights_the_rest_misplaced() -> None:
    items = _feature_items()
    fuzzed = fuzz_items(items, np.random.default_rng(0))
    active = [f for f in fuzzed if f.item.active]
    assert sum(f.correct for f in active) == 2  # ceil(3 / 2) positives keep their true highlights
    for f in fuzzed:
        fires = set(np.flatnonzero(f.item.acts > 0).tolist())
        if f.correct:
            assert set(f.positions) == fires
        else:
            assert f.positions and not fires & set(f.positions)


def test_fuzzing_scores_a_judge_that_knows_where_the_feature_fires() -> None:
    where = fuzzing_score(ScriptedJudge(lambda t: "<<dog>>" in t), "dogs", _feature_items(), JudgeConfig(), 5)
    assert where["score"] == 1.0
    topic_only = fuzzing_score(ScriptedJudge(lambda t: "dog" in t), "dogs", _feature_items(), JudgeConfig(), 5)
    assert topic_only["per_source"]["all"]["precision"] < 1.0  # misplaced marks on dog rows pass


def test_embedding_scorer_prefers_the_true_synthetic_rule() -> None:
    """Synthetic 'state_power' feature (featureinterp.simulate.synthetic): rows about the state fire. Its true
    rule must rank them above quiet rows better than another synthetic feature's rule."""
    from featureinterp.retrieval.index import EMBEDDED_EMBEDDER, embed_texts, load_embedder
    from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES, wrong_explanation

    index = [f.name for f in SYNTHETIC_FEATURES].index("state_power")
    rule = SYNTHETIC_FEATURES[index].fn
    texts = [
        "the state and its government passed a new law",
        "police authority comes from the state",
        "governments write laws that citizens obey",
        "the law gives the state its power",
        "she baked bread with flour and butter",
        "we watched the river flow past the hills",
        "the recipe needs two eggs and sugar",
        "my cat sleeps on the warm windowsill",
    ]
    items = []
    for i, t in enumerate(texts):
        tokens = tuple(" " + w for w in t.split())
        source = POSITIVE_SOURCE if i < 4 else COMPLEMENTARY_SOURCES[i % 2]
        items.append(Item(source, i, tokens, rule([tok.strip() for tok in tokens])))
    assert [it.active for it in items] == [True] * 4 + [False] * 4
    embedder = load_embedder(EMBEDDED_EMBEDDER)
    vectors = embed_texts(embedder, [it.text for it in items])
    true = embedding_score(embed_texts(embedder, [SYNTHETIC_FEATURES[index].explanation])[0], vectors, items)
    wrong = embedding_score(embed_texts(embedder, [wrong_explanation(index)])[0], vectors, items)
    assert true["score"] > wrong["score"] and true["per_source"]["all"] == 1.0


def test_agreement_is_rank_correlation_over_defined_pairs() -> None:
    rows = [
        {"score": 0.1, "detection": 0.5, "embedding": 0.9},
        {"score": 0.4, "detection": 0.6, "embedding": 0.8},
        {"score": 0.9, "detection": 0.8, "embedding": float("nan")},
        {"score": 0.5, "detection": 0.7, "embedding": 0.1},
    ]
    out = agreement(rows)
    assert out["detection"] == {"spearman": pytest.approx(1.0), "pairs": 4}
    assert out["embedding"]["pairs"] == 3 and out["embedding"]["spearman"] == pytest.approx(-1.0)
    assert out["fuzzing"]["pairs"] == 0 and math.isnan(out["fuzzing"]["spearman"])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])[0])


def test_scorer_seeds_differ_per_scorer_condition_and_feature() -> None:
    seeds = {
        scorer_seed(0, "p", c, s, 5, f) for c in ("one_shot", "tree") for s in ("detection", "fuzzing") for f in (0, 1)
    }
    assert len(seeds) == 8 and scorer_seed(0, "p", "tree", "fuzzing", 5, 1) == scorer_seed(0, "p", "tree", "fuzzing", 5, 1)


def test_a_grammar_makes_random_model_replies_parse(embedded_model) -> None:
    """A random-weight model with the real tokenizer: only the grammar can make its reply a list of
    exactly n labels."""
    from featureinterp.llm.local import LocalChatBackend
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    backend = LocalChatBackend(tiny_llama_for(tok, seed=2), tok, name="tiny")
    items = _feature_items()
    out = detection_score(backend, "dogs", items, JudgeConfig(batch_size=4), seed=1)
    assert len(out["items"]) == len(items) and all(c["parsed_ok"] for c in out["completions"])
    assert len(out["completions"]) == 2
