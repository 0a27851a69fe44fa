"""Explain cost: one-shot and tree explanations + test scores per (layer, feature), new way vs old.

Both ways use the real embedded models (SmolLM2-135M-Instruct as local explainer, simulator and
complexity rater) on the same records, at temperature 0, and explain each feature with the
embedded default's one-shot and tree conditions, then score both explanations on the test
records and rate their rules' complexity.

- *old* (the code before prefix reuse and speculative decoding): every prompt is prefilled from
  its first token, one token is decoded per pass, and rule simulations are cached within one
  explain call only (``memo_size=0``).
- *new*: the local backend decodes a single sample speculatively (``featureinterp.llm.speculative``:
  drafts from the reply's grammar and from the prompt, verified in one pass), reuses stored
  prompt prefixes (``kv_cache.PrefixStore``: the system message and few-shot examples across
  features, a tree node's conversation for its children, the complexity header across rules),
  and the simulator memoizes (rule, record) values across conditions, tree nodes and scoring.

Records: real corpus rows with synthetic features (featureinterp.simulate.synthetic) as activations, split
as the records asset splits them (positives by strength; complementary rows drawn at random).

Precision: the old way runs in float32 (what the code did before). The new way runs twice: in
float32, where the levers alone must give identical explanations and scores at temperature 0
(``exact_speedup``, check ``identical_at_temperature_0``), and in the dtype the embedded preset
resolves to here (``auto``: bfloat16 on a CPU with native bfloat16, see
``featureinterp.activations.models.native_bf16``), which is how the embedded default runs
(``explain_speedup``, goal >= 3; checks: how many explanations came out the same and the largest
score difference against the old way). Checks also give forward tokens per explanation.

    python -m benchmarks.explain_cost [--features 3] [--per-split 10]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from benchmarks._common import report
from featureinterp.activations.models import load_subject_model, resolve_dtype
from featureinterp.config import models_dir
from featureinterp.data.corpus import build_tokens, decode_tokens
from featureinterp.explain import explain
from featureinterp.explain.complexity import ComplexityAnalyzer
from featureinterp.explain.conditions import feature_records, get_condition
from featureinterp.llm.local import LocalChatBackend
from featureinterp.presets import get_preset
from featureinterp.records.sources import COMPLEMENTARY_SOURCES
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.simulator import LocalSimulator, prompt_for
from featureinterp.simulate.synthetic import synthetic_activations

CONDITIONS = ("one_shot", "tree")


def _frame(tokens: list[list[str]], acts: np.ndarray, per_split: int, seed: int):
    """A records frame (columns as the records asset writes them) for one synthetic feature."""
    import polars as pl

    strength = acts[:, 1:].max(axis=1)
    order = np.argsort(-strength, kind="stable")
    positives = [int(r) for r in order[: 3 * per_split] if strength[r] > 0]
    quiet = np.flatnonzero(strength == 0)
    rng = np.random.default_rng(seed)
    rows = []
    for rank, r in enumerate(positives):
        rows.append(("positive", ("train", "valid", "test")[rank % 3], rank // 3, r))
    for source in COMPLEMENTARY_SOURCES:
        pool = quiet if "negative" in source else np.arange(len(tokens))
        for rank, r in enumerate(rng.choice(pool, size=3 * per_split, replace=False)):
            rows.append((source, ("train", "valid", "test")[rank % 3], rank // 3, int(r)))
    return pl.DataFrame(
        {
            "source": [s for s, _, _, _ in rows],
            "split": [sp for _, sp, _, _ in rows],
            "rank": [k for _, _, k, _ in rows],
            "row": [r for _, _, _, r in rows],
            "tokens": [tokens[r][1:] for _, _, _, r in rows],
            "acts": [acts[r, 1:].astype(np.float32).tolist() for _, _, _, r in rows],
        }
    )


def _run(model, tok, frames, settings, new: bool) -> tuple[float, dict, list]:
    """Explain and score every (feature, condition); (wall s, forward tokens, results)."""
    backend = LocalChatBackend(model, tok, name="smollm2")
    if not new:
        backend.prefixes.usable = False
        backend.max_draft = 0
    sim = LocalSimulator(
        model, tok, prompt_for(settings.simulator_prompt), batch_size=8, memo_size=200_000 if new else 0
    )
    analyzer = ComplexityAnalyzer(backend)
    results = []
    start = time.perf_counter()
    for f, (frame, max_act) in enumerate(frames):
        for name in CONDITIONS:
            cond = get_condition(name)
            config = cond.explainer_config(settings, temperature=0.0, tree_temperature=0.0)
            records = feature_records(frame, max_act, cond)
            res = explain(backend, sim.simulate_explanation, records, config, seed=1000 + f)
            ev = evaluate(sim.simulate_explanation, res.explanation, frame, max_act)
            complexity = analyzer.rate(list(res.explanation.rules))
            results.append((f, name, str(res.explanation), ev.score, complexity))
    wall = time.perf_counter() - start
    tokens = {
        "explainer_prefill": backend.usage.prefill_tokens,
        "explainer_generated": backend.usage.completion_tokens,
        "explainer_drafted": backend.drafts.drafted,
        "explainer_decode_passes": backend.drafts.passes,
        "explainer_drafts_kept": backend.drafts.accepted,
        "simulator": sim.forward_tokens,
    }
    return wall, tokens, results


def _forward_tokens(t: dict) -> int:
    """Positions run through the model: prefills, simulator passes, and decoding (one position
    per generated token, or per speculative pass plus its draft tokens)."""
    decode = t["explainer_decode_passes"] + t["explainer_drafted"] or t["explainer_generated"]
    return t["explainer_prefill"] + t["simulator"] + decode


def _same(a: list, b: list, tol: float = 1e-4) -> bool:
    for (fa, na, ea, sa, ca), (fb, nb, eb, sb, cb) in zip(a, b, strict=True):
        if (fa, na, ea) != (fb, nb, eb):
            return False
        if not (math.isclose(sa, sb, abs_tol=tol) or (math.isnan(sa) and math.isnan(sb))):
            return False
        if not np.allclose(ca, cb, atol=tol, equal_nan=True):
            return False
    return True


def _agreement(a: list, b: list) -> dict[str, object]:
    """How close two ways' results are: explanations equal, largest score difference."""
    same = sum(x[:3] == y[:3] for x, y in zip(a, b, strict=True))
    diffs = [abs(x[3] - y[3]) for x, y in zip(a, b, strict=True) if not (math.isnan(x[3]) or math.isnan(y[3]))]
    return {"same_explanations": f"{same} of {len(a)}", "max_score_diff": round(max(diffs, default=0.0), 4)}


def main() -> None:
    import dataclasses

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=3, help="synthetic features explained")
    parser.add_argument(
        "--per-split", type=int, default=None, help="records per split (default: the preset's)"
    )
    parser.add_argument("--preset", default="embedded")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    preset = get_preset(args.preset)
    per_split = args.per_split or preset.per_split
    fp32, tok = load_subject_model(dataclasses.replace(preset.model, dtype="float32"), models_dir(), "cpu")
    dtype = resolve_dtype(preset.model.dtype, "cpu")
    model = fp32 if dtype == torch.float32 else load_subject_model(preset.model, models_dir(), "cpu")[0]
    ids = build_tokens(preset.replace(n_rows=2000), tok)
    tokens = decode_tokens(tok, ids)
    acts = synthetic_activations(tokens, list(range(args.features))).acts.astype(np.float32)
    frames = [
        (_frame(tokens, acts[f], per_split, seed=f), float(acts[f].max())) for f in range(args.features)
    ]
    old_wall, old_tokens, old_results = _run(fp32, tok, frames, preset.explain, new=False)
    exact_wall, exact_tokens, exact_results = _run(fp32, tok, frames, preset.explain, new=True)
    if model is fp32:
        new_wall, new_tokens, new_results = exact_wall, exact_tokens, exact_results
    else:
        new_wall, new_tokens, new_results = _run(model, tok, frames, preset.explain, new=True)
    n = len(new_results)
    per = {
        f"{way}_forward_tokens_per_explanation": round(_forward_tokens(t) / n)
        for way, t in (("old", old_tokens), ("new", new_tokens))
    }
    report(
        "explain_cost",
        {"explain_speedup": round(old_wall / new_wall, 2), "exact_speedup": round(old_wall / exact_wall, 2)},
        {
            "explanations": n,
            "new_dtype": str(dtype).removeprefix("torch."),
            "old_wall_s": round(old_wall, 1),
            "exact_wall_s": round(exact_wall, 1),
            "new_wall_s": round(new_wall, 1),
            **per,
            "old_tokens": old_tokens,
            "new_tokens": new_tokens,
            "identical_at_temperature_0": _same(old_results, exact_results),
            "new_vs_old": _agreement(old_results, new_results),
        },
    )


if __name__ == "__main__":
    main()
