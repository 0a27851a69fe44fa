"""Metadata the Dagster UI renders readably: tables for per-source scores and usage, Markdown for
explanations.

The UI shows a JSON metadata value as one collapsed blob; a table value as a table with typed
columns, and Markdown as formatted text. Scores per test source, token usage and record counts
are tables; an explanation is its rules as a table with strengths and the tree search's path as a
short list. The stored values (value.json) keep every number; this is only how they are shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

__all__ = ["counts_table", "explanation_markdown", "source_table", "usage_table"]

_SOURCE_COLUMNS = (
    ("score", "float", "Pearson r of simulated vs true activations on this source's test records"),
    ("ci_low", "float", "bootstrap interval of the score over test records: low end"),
    ("ci_high", "float", "bootstrap interval of the score over test records: high end"),
    ("fp_rate", "float", "false-positive rate: quiet tokens the simulation predicts above the threshold"),
    ("n_records", "int", "test records"),
    ("n_fp", "int", "false-positive tokens"),
    ("n_quiet", "int", "quiet tokens"),
    ("n_tokens", "int", "tokens"),
)


def _cell(value: Any, kind: str) -> Any:
    """A table cell: NaN / None become None (shown empty) rather than a misleading number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value) if kind == "int" else round(float(value), 4) if kind == "float" else value


def source_table(scores: Mapping[str, Mapping[str, Any] | float]) -> dg.TableMetadataValue:
    """One row per test source (positive, similar_negative, ...) with its score and false positives
    (a scorer that gives one number per source: ``{source: score}``)."""
    per_source: dict[str, Mapping[str, Any]] = {
        k: v if isinstance(v, Mapping) else {"score": v} for k, v in scores.items()
    }
    present = [(name, kind, doc) for name, kind, doc in _SOURCE_COLUMNS if any(name in v for v in per_source.values())]
    known = {name for name, _, _ in _SOURCE_COLUMNS} | {"ci_undefined", "ci_level"}
    present += [  # a scorer's own numbers (detection: precision, recall, ...), in the order they come
        (name, "float", "")
        for name in dict.fromkeys(k for v in per_source.values() for k in v)
        if name not in known and all(isinstance(v.get(name, 0.0), (int, float)) for v in per_source.values())
    ]
    schema = dg.TableSchema(
        columns=[dg.TableColumn("source", "string", description="test records of this kind")]
        + [dg.TableColumn(name, kind, description=doc) for name, kind, doc in present]
    )
    records = [  # a value that is absent from one source is shown empty
        dg.TableRecord({"source": source} | {name: _cell(v.get(name), kind) for name, kind, _ in present})
        for source, v in per_source.items()
    ]
    return dg.MetadataValue.table(records, schema)


def usage_table(usage: Mapping[str, Any]) -> dg.TableMetadataValue:
    """Token usage and requests as two columns (what, how many)."""
    schema = dg.TableSchema(columns=[dg.TableColumn("what", "string"), dg.TableColumn("count", "float")])
    rows = [
        dg.TableRecord({"what": str(k), "count": float(v)})
        for k, v in usage.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return dg.MetadataValue.table(rows, schema)


def counts_table(counts: Mapping[str, Mapping[str, int] | int]) -> dg.TableMetadataValue:
    """Records per source and split (``{source: {split: n}}``, or ``{source: n}``)."""
    splits = sorted({s for v in counts.values() if isinstance(v, Mapping) for s in v})
    columns = [dg.TableColumn("source", "string")] + (
        [dg.TableColumn(s, "int") for s in splits] if splits else [dg.TableColumn("records", "int")]
    )
    rows = [
        dg.TableRecord(
            {"source": source} | ({s: int(v.get(s, 0)) for s in splits} if isinstance(v, Mapping) else {"records": int(v)})
        )
        for source, v in counts.items()
    ]
    return dg.MetadataValue.table(rows, dg.TableSchema(columns=columns))


def _md(text: str) -> str:
    """A rule's text inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def explanation_markdown(rules: Sequence[Mapping[str, Any]], path: Sequence[Mapping[str, Any]] = ()) -> str:
    """The rules as a table (strength: how strongly the feature fires on it, 1-10 as the paper's
    prompt asks) and the tree search's path, one line per node."""
    lines = ["| # | activates on | strength |", "|---|---|---|"]
    lines += [f"| {i + 1} | {_md(str(r['activates_on']))} | {r.get('strength', '')} |" for i, r in enumerate(rules)]
    if not rules:
        lines = ["_no rules (the empty explanation)_"]
    if path:
        lines += ["", "**search path** (train / valid score per node):", ""]
        for node in path:
            train, valid = (node.get(k) for k in ("train", "valid"))
            score = " / ".join("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" for v in (train, valid))
            lines.append(f"- depth {node.get('depth', 0)}: {score}")
    return "\n".join(lines)
