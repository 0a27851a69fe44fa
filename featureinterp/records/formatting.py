"""Record formatting for prompts (paper-method.md section 3).

Activations are shown on a 0..5 scale, ``floor(5 * a / max)`` clipped to [0, 5], where ``max`` is
the feature's maximum over the whole corpus (so only the global maximum shows 5). One line per
token, ``token<TAB>value``, inside ``<start>``/``<end>``. Tokens are escaped (tab, newline and
carriage return become ``\\t``, ``\\n``, ``\\r``) so that a token can never break the line
structure the simulator's readout relies on (the original inserts them raw).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_VALUE", "UNKNOWN", "escape_token", "quantize", "record_block", "nonzero_fraction"]

MAX_VALUE = 5
UNKNOWN = "unknown"
_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape_token(token: str) -> str:
    return token.translate(_ESCAPES)


def quantize(values: Sequence[float] | np.ndarray, max_value: float) -> np.ndarray:
    """0..5 integers: floor(5 * a / max), clipped; all zeros when the feature never fires."""
    values = np.asarray(values, dtype=np.float64)
    if not max_value > 0:
        return np.zeros(values.shape, dtype=np.int64)
    return np.clip(np.floor(MAX_VALUE * values / max_value), 0, MAX_VALUE).astype(np.int64)


def record_block(
    tokens: Sequence[str], values: Sequence[int] | np.ndarray | None, reveal: int | None = None
) -> str:
    """``<start>`` block of ``token<TAB>value`` lines; ``values=None`` (or positions >= ``reveal``)
    show the ``unknown`` placeholder the simulator fills in."""
    lines = []
    for i, tok in enumerate(tokens):
        shown = UNKNOWN if values is None or (reveal is not None and i >= reveal) else str(int(values[i]))
        lines.append(f"{escape_token(tok)}\t{shown}")
    return "\n<start>\n" + "\n".join(lines) + "\n<end>\n"


def nonzero_fraction(values: Sequence[Sequence[int] | np.ndarray]) -> float:
    """Share of non-zero formatted values over all tokens of all records (the < 0.2 repeat rule)."""
    flat = np.concatenate([np.asarray(v).ravel() for v in values]) if len(values) else np.zeros(0)
    return float((flat != 0).mean()) if flat.size else 0.0
