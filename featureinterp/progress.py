"""Progress reporting for long loops: done/total, rate, ETA, at a steady cadence.

Every long stage (corpus embedding, SAE training, activations, holistic values) reports through
this one helper so logs look the same everywhere and never flood: one line at most every
``every_s`` seconds, plus the final line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Progress"]

logger = logging.getLogger("featureinterp")


class Progress:
    """Call ``update(n)`` after each batch; lines go to ``log`` (a logger method or Dagster's context.log.info)."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "rows",
        log: Callable[[str], None] | None = None,
        every_s: float = 10.0,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.log = log or logger.info
        self.every_s = every_s
        self.done = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
            f"{rate:,.0f} {self.unit}/s, elapsed {elapsed:.0f}s, ETA {eta:.0f}s"
        )
