"""The generated source (featureinterp/explain/generated.py): candidates written from an
explanation, measured on a real (tiny) subject model through a hand-made SAE, and the
counterexamples among them."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from featureinterp.activations.latents import sae_activations
from featureinterp.activations.sae import LoadedSae
from featureinterp.config import GeneratedSettings
from featureinterp.errors import ConfigError
from featureinterp.explain.generated import (
    GenerationFailed,
    build_generated,
    parse_candidates,
    write_candidates,
)
from featureinterp.explanations.rules import Explanation, Rule
from featureinterp.llm.backend import BackendError, ChatBackend, Completion, Usage
from featureinterp.names import GENERATED_SOURCE, POSITIVE_SOURCE
from featureinterp.records.sources import Record
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.scoring import score
from tests.helpers import random_sae, tiny_llama_for


class Scripted(ChatBackend):
    """Replies from a queue (a parse-and-flow stub; the activations below are real)."""

    def __init__(self, replies):
        self.name, self.usage, self.replies, self.calls = "scripted", Usage(), list(replies), []

    def generate(self, messages, params):
        self.calls.append((messages, params))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return [Completion(reply, "stop", f"req-{len(self.calls)}")]

    def forget(self, messages, params):
        pass

    def next_token_logprobs(self, messages, reply_prefix, candidates):
        raise NotImplementedError


WORD = " ocean"
SETTINGS = GeneratedSettings(condition="one_shot", n_fire=3, n_edits=3, top_records=2)
TOP = [Record(("The", " ocean", " is", " deep"), np.array([0.0, 6.0, 0.0, 0.0])), Record(("An", " ocean", " wave"), np.array([0, 5.0, 0]))]


@pytest.fixture(scope="module")
def ocean_feature(embedded_model):
    """A 2-layer random Llama over SmolLM2's vocabulary whose block 0 writes nothing (so its output
    is the token embedding), with " ocean" embedded along a unit direction ``u``, and a TopK SAE
    whose latent 0 reads ``u`` with bias -0.5: it fires (about 1.5) on " ocean" and nowhere else."""
    tok = embedded_model[1]
    model = tiny_llama_for(tok, seed=3)
    (word_id,) = tok(WORD, add_special_tokens=False)["input_ids"]
    u = torch.zeros(32)
    u[0] = 1.0
    sae = random_sae(32, d_sae=8, k=1, layer=0)
    with torch.no_grad():
        block = model.model.layers[0]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[word_id] = 2.0 * u
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = u
        sae.b_enc.fill_(-1e4)
        sae.b_enc[0] = -0.5
    loaded = LoadedSae.bind(sae, model, 0)

    def activate(rows: np.ndarray) -> np.ndarray:
        return sae_activations(model, {0: loaded}, rows, [0], batch_size=4)[0].acts[0].astype(np.float32)

    return tok, activate


def _reply(fire, edits):
    return json.dumps({"fire": fire, "edits": [{"record": r, "text": t} for r, t in edits]})


def test_the_stored_counterexamples_are_exactly_the_candidates_that_contradict_the_explanation(ocean_feature):
    tok, activate = ocean_feature
    fire = ["The ocean is calm today.", "We swam in the ocean.", "Mountains are tall."]  # the last never says ocean
    edits = [(1, "The sea is deep."), (2, "A big wave."), (1, "The ocean is shallow.")]  # the last keeps ocean
    backend = Scripted(["not JSON at all", _reply(fire, edits)])
    explanation = Explanation((Rule("the word ocean", 5),))
    got = build_generated(backend, explanation, TOP, SETTINGS, seed=11, tokenizer=tok, activate=activate,
                          seq_len=16, bos_id=tok.bos_token_id, max_act=2.0)  # fmt: skip
    frame = got.frame
    assert frame["text"].to_list() == [*fire, *(t for _, t in edits)]
    assert frame["fired"].to_list() == [True, True, False, False, False, True]  # the true activations decide
    assert got.counterexamples["text"].to_list() == ["Mountains are tall.", "The ocean is shallow."]
    assert frame.filter(pl.col("kind") == "edit")["origin"].to_list() == [0, 1, 0]
    # acts are true activations: only " ocean" fires, at 2 - 0.5 = 1.5 (float16), BOS dropped
    first = frame.row(0, named=True)
    assert first["tokens"][0] != tok.bos_token and "".join(first["tokens"]) == fire[0]
    assert [round(a, 2) for a in first["acts"]] == [1.5 if t == WORD else 0.0 for t in first["tokens"]]
    # the unusable reply was re-requested and both completions are kept for audit, the seed moves on
    assert [c["parsed_ok"] for c in got.completions] == [False, True]
    assert [p.seed for _, p in backend.calls] == [11, 12] and backend.calls[0][1].json_schema is not None
    prompt = backend.calls[0][0][1]["content"]
    assert "the word ocean" in prompt and "1. The ocean is deep" in prompt


def test_the_generated_source_is_scored_like_any_complementary_source(ocean_feature):
    tok, activate = ocean_feature
    backend = Scripted([_reply(["The ocean is calm."], [(1, "The sea is calm."), (2, "The ocean is here.")])])
    got = build_generated(backend, Explanation((Rule("ocean", 5),)), TOP, SETTINGS, 0, tok, activate, 16,
                          tok.bos_token_id, max_act=2.0)  # fmt: skip
    positives = pl.DataFrame(
        [{"source": POSITIVE_SOURCE, "split": "test", "rank": i, "row": i, "tokens": list(r.tokens), "acts": r.acts.tolist()}
         for i, r in enumerate(TOP)]
    )  # fmt: skip
    frame = pl.concat([positives, got.frame.select(positives.columns)])

    def simulate(explanation, records):  # predicts 5 on " ocean": right on positives, wrong on no candidate
        return [np.array([5.0 if t == WORD else 0.0 for t in r]) for r in records]

    ev = evaluate(simulate, Explanation((Rule("ocean", 5),)), frame, 2.0, interval_seed=1, sources=(GENERATED_SOURCE,))
    src = ev.per_source[GENERATED_SOURCE]
    records = [list(r["tokens"]) for r in frame.iter_rows(named=True)]
    pooled = score([list(r["acts"]) for r in frame.iter_rows(named=True)], simulate(None, records))
    assert src["n_records"] == 2 + 3 and src["score"] == pytest.approx(pooled.correlation)
    # false positives by the paper's absolute rule: the candidates' " ocean" (raw 1.5 < 10) counts as quiet
    assert src["n_fp"] == 2 and src["ci_low"] <= src["score"] <= src["ci_high"]


def test_a_backend_with_nothing_usable_fails_with_its_completions_never_a_made_up_sentence():
    backend = Scripted(['{"fire": [], "edits": [{"record": 9, "text": "no such record"}]}', "{}", "[1, 2]"])
    with pytest.raises(GenerationFailed, match="no usable candidate in 3 replies") as err:
        write_candidates(backend, Explanation((Rule("x", 5),)), TOP, SETTINGS, seed=0)
    assert len(err.value.completions) == 3 and not any(c["parsed_ok"] for c in err.value.completions)
    with pytest.raises(GenerationFailed, match="backend gave up"):
        write_candidates(Scripted([BackendError("HTTP 500")]), Explanation((Rule("x", 5),)), TOP, SETTINGS, seed=0)


def test_parsing_keeps_at_most_the_asked_counts_without_duplicates():
    reply = "thinking...\n" + _reply(["a b", "a  b", "c", "d", "e"], [(1, "f"), (3, "bad record"), (2, "g")])
    got = parse_candidates(reply, SETTINGS)
    assert [(c.kind, c.text, c.origin) for c in got] == [
        ("fire", "a b", None), ("fire", "c", None), ("fire", "d", None), ("edit", "f", 0), ("edit", "g", 1)
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="at least one candidate"):
        GeneratedSettings(n_fire=0, n_edits=0)
