"""Synthetic features with a known rule, over real corpus rows: ground truth for the simulator.

SAE features have no true explanation, so the simulator's quality cannot be read off them. A
synthetic feature's activation is a deterministic function of the tokens (a word list, digits, the
token after a given word, ...), with a strength that varies in a checkable way, so:

- the simulator's *discrimination* is measurable: pooled score of the correct explanation minus
  that of another feature's explanation, on the same records;
- the whole pipeline (records, explainers, scoring) can be calibrated end to end: an explainer
  should recover something close to the known rule.

They are computed into the same ``FeatureActivations`` shape as SAE features (layer key ``SYN``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from featureinterp.activations.latents import FeatureActivations

__all__ = [
    "SyntheticFeature",
    "SYNTHETIC_FEATURES",
    "synthetic_activations",
    "wrong_explanation",
]


def _norm(token: str) -> str:
    return token.strip().lower()


def _words(*words: str, value: float = 5.0) -> Callable[[list[str]], np.ndarray]:
    wanted = {w.lower() for w in words}
    return lambda toks: np.array([value if _norm(t) in wanted else 0.0 for t in toks])


def _digits(toks: list[str]) -> np.ndarray:
    """Digit tokens; longer digit strings fire harder (1 digit: 3, 2: 4, 3 or more: 5)."""
    return np.array([float(min(5, 2 + len(_norm(t)))) if _norm(t).isdigit() else 0.0 for t in toks])


def _after(word: str) -> Callable[[list[str]], np.ndarray]:
    def fn(toks: list[str]) -> np.ndarray:
        out = np.zeros(len(toks))
        for i in range(1, len(toks)):
            if _norm(toks[i - 1]) == word:
                out[i] = 5.0
        return out

    return fn


_CAP = re.compile(r"^\s?[A-Z][a-z]+$")


def _capitalized(toks: list[str]) -> np.ndarray:
    """Capitalised words that do not start a sentence (the previous token is not '.', '!' or '?')."""
    out = np.zeros(len(toks))
    for i, t in enumerate(toks):
        if _CAP.match(t) and i > 0 and _norm(toks[i - 1]) not in {".", "!", "?", ""}:
            out[i] = 4.0
    return out


@dataclass(frozen=True)
class SyntheticFeature:
    name: str
    explanation: str
    """The correct explanation (one free-text rule)."""
    fn: Callable[[list[str]], np.ndarray]
    """Per-token activation of one row, given the row's token strings."""


SYNTHETIC_FEATURES: tuple[SyntheticFeature, ...] = (
    SyntheticFeature(
        "negation",
        "negation words such as not, no, never and nothing",
        _words("not", "no", "never", "nothing", "n't", "nor", value=5.0),
    ),
    SyntheticFeature("digits", "numbers written with digits", _digits),
    SyntheticFeature(
        "pronouns_we",
        "the first-person plural pronouns we, us and our",
        _words("we", "us", "our", "ours", value=5.0),
    ),
    SyntheticFeature("after_the", "the word that comes right after 'the'", _after("the")),
    SyntheticFeature("capitalized", "capitalized words and names in the middle of a sentence", _capitalized),
    SyntheticFeature(
        "state_power",
        "words about the state, government and law",
        _words("state", "government", "law", "laws", "authority", "police", "governments", "states"),
    ),
)


def wrong_explanation(index: int) -> str:
    """Another synthetic feature's explanation (the next one): the discrimination baseline."""
    return SYNTHETIC_FEATURES[(index + 1) % len(SYNTHETIC_FEATURES)].explanation


def synthetic_activations(
    token_strings: Sequence[Sequence[str]], features: Sequence[int], skip_first: bool = True
) -> FeatureActivations:
    """Activations [F, N, T] of the chosen synthetic features (indices past the list are silent) on rows given as token strings
    (the BOS column is included and, with ``skip_first``, left at zero like the SAE path)."""
    n, t = len(token_strings), len(token_strings[0]) if token_strings else 0
    acts = np.zeros((len(features), n, t), dtype=np.float32)
    start = int(skip_first)
    for fi, f in enumerate(features):
        if f < 0:
            raise ValueError(f"synthetic feature index {f} is negative")
        if f >= len(SYNTHETIC_FEATURES):
            continue  # no such synthetic feature: it stays silent (reported as dead, like an SAE latent)
        rule = SYNTHETIC_FEATURES[f].fn
        for r, toks in enumerate(token_strings):
            acts[fi, r, start:] = rule(list(toks[start:]))
    body = acts[:, :, start:]
    return FeatureActivations(
        acts=acts.astype(np.float16),
        features=list(features),
        max=body.reshape(len(features), -1).max(axis=1) if body.size else np.zeros(len(features)),
        token_freq=(body > 0).reshape(len(features), -1).mean(axis=1)
        if body.size
        else np.zeros(len(features)),
        row_count=(body > 0).any(axis=2).sum(axis=1),
    )


def discrimination(
    simulate: Callable[[str, list[list[str]]], list[np.ndarray]],
    token_strings: Sequence[Sequence[str]],
    features: Sequence[int] | None = None,
    n_top: int = 6,
    n_random: int = 4,
    seed: int = 0,
    skip_first: bool = True,
    empty: bool = False,
) -> list[dict[str, float | str]]:
    """Correct-minus-wrong pooled correlation per synthetic feature (``empty``: also the score of
    an empty explanation and correct minus it: what the simulator predicts from the records alone).

    Records per feature: its ``n_top`` rows with the most activation plus ``n_random`` other rows
    (seeded per feature). ``simulate(explanation, records)`` returns per-token predictions.
    """
    from featureinterp.simulate.scoring import score

    features = list(range(len(SYNTHETIC_FEATURES))) if features is None else list(features)
    built = synthetic_activations(token_strings, features, skip_first).acts
    assert isinstance(built, np.ndarray)  # synthetic activations are built in memory, never staged
    acts = built.astype(np.float32)
    start = int(skip_first)
    out: list[dict[str, float | str]] = []
    for fi, f in enumerate(features):
        strength = acts[fi, :, start:].sum(axis=1)
        top = np.argsort(-strength, kind="stable")[:n_top]
        rest = np.setdiff1d(np.arange(len(token_strings)), top)
        rng = np.random.default_rng([seed, f])
        rows = [*top.tolist(), *rng.choice(rest, size=min(n_random, len(rest)), replace=False).tolist()]
        records = [list(token_strings[r][start:]) for r in rows]
        true = [acts[fi, r, start:] for r in rows]
        right = score(true, simulate(SYNTHETIC_FEATURES[f].explanation, records)).correlation
        wrong = score(true, simulate(wrong_explanation(f), records)).correlation
        row: dict[str, float | str] = {
            "feature": SYNTHETIC_FEATURES[f].name,
            "correct": right,
            "wrong": wrong,
            "diff": right - wrong,
        }
        if empty:
            empty_score = score(true, simulate("", records)).correlation
            row["empty"] = empty_score
            row["diff_empty"] = right - empty_score
        out.append(row)
    return out
