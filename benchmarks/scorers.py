"""Scorers: what each secondary score costs next to simulation, and which one tells a true rule
from a wrong one on the synthetic features.

Records: real embedded-corpus rows with the synthetic features (featureinterp.simulate.synthetic) as
activations, split as in benchmarks.explain_cost. Every synthetic feature is scored with its true
rule and with another feature's rule (``synthetic.wrong_explanation``) by

- *simulation* (the paper's approach): the embedded simulator, all-at-once, on the test records;
- *detection* and *fuzzing*: the embedded model as a grammar-constrained local scorer;
- *embedding*: the shipped sentence encoder, record vectors from a real LanceDB table.

``cost_ratio`` = simulation seconds per explanation / embedding seconds per explanation (the
explanation embedded and the feature's test rows looked up: what the embedding asset does);
checks: per scorer its seconds per explanation, the mean margin true - wrong and how many
features it ranks the true rule first, its rank agreement with simulation over all explanations,
and which scorer separates best.

    python -m benchmarks.scorers [--features 6] [--per-split 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks._common import report
from benchmarks.explain_cost import _frame
from featureinterp.activations.models import load_subject_model
from featureinterp.config import models_dir
from featureinterp.data.corpus import build_tokens, decode_tokens
from featureinterp.llm.local import LocalChatBackend
from featureinterp.presets import get_preset
from featureinterp.retrieval.index import CorpusIndex, embed_texts, load_embedder
from featureinterp.simulate.baselines import free_text
from featureinterp.simulate.evaluate import evaluate
from featureinterp.simulate.scorers import JudgeConfig, scorer_seed, spearman
from featureinterp.simulate.scorers.feature import embed_feature, judge_feature
from featureinterp.simulate.simulator import LocalSimulator, prompt_for
from featureinterp.simulate.synthetic import SYNTHETIC_FEATURES, synthetic_activations, wrong_explanation

SCORERS = ("simulation", "detection", "fuzzing", "embedding")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=len(SYNTHETIC_FEATURES))
    parser.add_argument("--per-split", type=int, default=None, help="records per split (default: the preset's)")
    parser.add_argument("--preset", default="embedded")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    preset = get_preset(args.preset)
    per_split = args.per_split or preset.per_split
    model, tok = load_subject_model(preset.model, models_dir(), device="cpu")
    ids = build_tokens(preset.replace(n_rows=2000), tok)
    tokens = decode_tokens(tok, ids)
    features = list(range(args.features))
    acts = synthetic_activations(tokens, features).acts.astype(np.float32)
    frames = [(_frame(tokens, acts[f], per_split, seed=f), float(acts[f].max())) for f in features]

    embedder = load_embedder(preset.embedding_model)
    tmp = tempfile.mkdtemp(prefix="bench-scorers-")
    texts = ["".join(t[1:]) for t in tokens]  # rows without BOS, as corpus_embeddings stores them
    index, _ = CorpusIndex.build(tmp, "rows", texts, lambda chunk: embed_texts(embedder, chunk))
    # each LLM scorer its own backend: no prompt prefix one stored is reused by the other
    backends = {s: LocalChatBackend(model, tok, name=preset.model.name) for s in ("detection", "fuzzing")}
    simulator = LocalSimulator(model, tok, prompt_for(preset.explain.simulator_prompt), batch_size=8)
    config = JudgeConfig(batch_size=preset.explain.scorer_batch)

    seconds = dict.fromkeys(SCORERS, 0.0)
    scores: dict[str, dict[tuple[int, str], float]] = {s: {} for s in SCORERS}
    for f, (frame, max_act) in zip(features, frames, strict=True):
        for kind, text in (("true", SYNTHETIC_FEATURES[f].explanation), ("wrong", wrong_explanation(f))):
            expl = free_text(text)
            start = time.perf_counter()
            scores["simulation"][(f, kind)] = evaluate(simulator.simulate_explanation, expl, frame, max_act).score
            seconds["simulation"] += time.perf_counter() - start
            for scorer in ("detection", "fuzzing"):
                start = time.perf_counter()
                seed = scorer_seed(0, preset.name, kind, scorer, -1, f)
                out = judge_feature(scorer, backends[scorer], expl.to_record(), frame, config, seed)
                seconds[scorer] += time.perf_counter() - start
                scores[scorer][(f, kind)] = out["score"]
            start = time.perf_counter()
            out = embed_feature(
                lambda t: embed_texts(embedder, t), expl.to_record(), frame, index.vectors_of, preset.embedding_model
            )
            seconds["embedding"] += time.perf_counter() - start
            scores["embedding"][(f, kind)] = out["score"]

    n = 2 * len(features)
    checks: dict = {"explanations": n, "per_split": per_split}
    separation = {}
    for s in SCORERS:
        margins = [scores[s][(f, "true")] - scores[s][(f, "wrong")] for f in features]
        finite = [m for m in margins if np.isfinite(m)]
        wins = sum(m > 0 for m in finite)
        separation[s] = wins / len(features)
        keys = sorted(scores[s])
        rho, pairs = spearman([scores["simulation"][k] for k in keys], [scores[s][k] for k in keys])
        checks[s] = {
            "seconds_per_explanation": round(seconds[s] / n, 3),
            "mean_margin_true_minus_wrong": round(float(np.mean(finite)), 3) if finite else None,
            "true_rule_first": f"{wins} of {len(features)}",
            "spearman_with_simulation": None if not np.isfinite(rho) else round(rho, 3),
            "pairs": pairs,
        }
    checks["work"] = {
        "simulation": {"simulator_forward_tokens": simulator.forward_tokens},
        **{
            s: {k: b.usage.snapshot()[k] for k in ("requests", "prompt_tokens", "prefill_tokens", "completion_tokens")}
            for s, b in backends.items()
        },
    }
    checks["best_separator"] = max(SCORERS, key=lambda s: (separation[s], checks[s]["mean_margin_true_minus_wrong"] or 0))
    ratio = (seconds["simulation"] / n) / max(seconds["embedding"] / n, 1e-9)
    report("scorers", {"cost_ratio": round(ratio, 1)}, checks)


if __name__ == "__main__":
    main()
