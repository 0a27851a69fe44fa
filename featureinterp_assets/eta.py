"""Elapsed time and an ETA on every stage line of `featureinterp run` (featureinterp.progress reports
progress inside one stage; this module estimates the whole run).

A newcomer's first run takes minutes on a CPU; without an estimate it looks the same as a hang.
The run knows its work before it starts (stages, partitions, conditions), so each stage gets an
estimate from a small cost model: seconds per unit of work, measured on 2 CPU cores with the
embedded default (``python -m benchmarks.end_to_end``). As stages finish, the estimates of the
stages left are scaled by how fast the finished ones ran relative to theirs, so the ETA adapts to
a faster machine or a GPU after the first stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featureinterp.config import Preset

__all__ = [
    "BFLOAT16_SPEEDUP",
    "SECONDS_PER_UNIT",
    "RunEta",
    "block_seconds",
    "condition_weight",
    "estimate",
    "stage_kind",
    "stage_speedup",
]

SECONDS_PER_UNIT = {
    "corpus_tokens": 3e-4,  # per row
    "sae": 9.5e-3,  # per (row x layer): SAE training and the activation pass
    "corpus_embeddings": 3.4e-3,  # per row
    "records": 0.5,  # per (layer, feature) partition
    "holistic_activations": 3.0,  # per partition
    "explain": 6.0,  # per (partition, condition) of weight 1 (condition_weight)
    "baselines": 12.0,  # per partition (the null explanation; true and wrong rules on SYN)
    "detection": 4.0,  # per (partition, condition): batched yes/no labels from the local LLM
    "fuzzing": 4.0,  # per (partition, condition)
    "embedding": 0.1,  # per (partition, condition): no LLM
    "generated": 15.0,  # per partition: one candidate request, a forward pass, a simulation (estimate)
    "layer_results": 0.5,  # per layer
    "export": 0.5,  # per layer, and once for the whole preset
    "figures": 1.0,  # per figure
}
"""Seconds of one unit of each stage's work on 2 CPU cores (embedded default in float32, measured)."""

BFLOAT16_SPEEDUP = {"sae": 3.0, "records": 2.0, "explain": 2.3}
"""How much faster the model-bound stage kinds ran with the model in bfloat16 on a CPU that has it
natively (the embedded default's ``auto`` dtype; ``benchmarks.end_to_end`` on 2 cores, 2026-12-04:
SAE training and the activation pass 70 -> 23.5 s, records with holistic values 13 -> 6.5 s, the
explain blocks 547 -> 238 s). Without it the first ETA of a bfloat16 run is twice the real time."""


def condition_weight(method: str, structured: bool) -> float:
    """Relative cost of explaining and scoring one partition under a condition: a tree explores
    several nodes, an unstructured explanation has one rule to simulate."""
    base = 2.5 if method == "tree" else 1.0
    return base * (1.0 if structured else 0.6)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


@dataclass
class RunEta:
    """The planned work of each stage kind, in estimated seconds (``estimate``); ``line`` prefixes a
    stage line, ``done`` records a finished run."""

    planned: dict[str, float] = field(default_factory=dict)
    """Stage kind -> estimated seconds of its runs still to come."""
    speedup: dict[str, float] = field(default_factory=dict)
    """Stage kind -> how much faster than SECONDS_PER_UNIT it runs here (``BFLOAT16_SPEEDUP`` for
    a bfloat16 model on the CPU); estimates passed to ``plan`` and ``done`` are divided by it."""
    start: float = field(default_factory=time.perf_counter)
    _spent: float = 0.0
    _estimated: float = 0.0

    def plan(self, kind: str, estimated: float) -> None:
        estimated /= self.speedup.get(kind, 1.0)
        if estimated > 0:
            self.planned[kind] = self.planned.get(kind, 0.0) + estimated

    def _speed(self) -> float:
        """Actual / estimated seconds of the stages so far, damped by a minute of prior at the
        estimated speed (so a 2-second stage that took 3 does not rescale a 10-minute ETA), bounded."""
        prior = 60.0
        return min(5.0, max(0.2, (self._spent + prior) / (self._estimated + prior)))

    def eta(self) -> float:
        return self._speed() * sum(self.planned.values())

    def line(self) -> str:
        """``[elapsed 3:12, ETA 8:40]``: the time so far and the estimate of what is left."""
        return f"[elapsed {_clock(time.perf_counter() - self.start)}, ETA {_clock(self.eta())}]"

    def done(self, kind: str, estimated: float, seconds: float) -> None:
        """A run of ``kind`` estimated at ``estimated`` seconds took ``seconds``."""
        estimated /= self.speedup.get(kind, 1.0)
        left = self.planned.get(kind, 0.0) - estimated
        if left > 1e-6:
            self.planned[kind] = left
        else:
            self.planned.pop(kind, None)
        self._spent += seconds
        self._estimated += estimated


def stage_speedup(preset: Preset, device: str = "auto") -> dict[str, float]:
    """``RunEta.speedup`` of a run of ``preset``: ``BFLOAT16_SPEEDUP`` for the stages whose model
    computes in bfloat16 on the CPU (the subject model's for SAE and records, the simulator's for
    explain), none on a GPU (the ETA adapts after the first stage there)."""
    import torch

    from featureinterp.activations.models import resolve_device, resolve_dtype

    if resolve_device(device) != "cpu":
        return {}
    simulator = preset.explain.simulator or preset.model
    spec = {"sae": preset.model, "records": preset.model, "explain": simulator}
    return {
        kind: BFLOAT16_SPEEDUP[kind]
        for kind, model in spec.items()
        if resolve_dtype(model.dtype, "cpu") == torch.bfloat16
    }


def estimate(kind: str, units: float) -> float:
    """Estimated seconds of ``units`` of ``kind`` (SECONDS_PER_UNIT)."""
    return units * SECONDS_PER_UNIT[kind]


def stage_kind(selection: list[str]) -> str:
    """The kind of a run's selection (a key of SECONDS_PER_UNIT, or the first asset's name)."""
    first = selection[0]
    if first.startswith(("explanations/", "scores/")):
        return "explain"
    if first.startswith(("detection/", "fuzzing/", "embedding/")) or first == "generated":
        return "scorers"
    if first.startswith("fig"):
        return "figures"
    return first


def block_seconds(n_partitions: int, assets: list[str]) -> float:
    """Estimated seconds of one ranged run of ``assets`` over ``n_partitions`` (layer, feature)
    partitions; a condition's scores count with its explanations."""
    from featureinterp.explain.conditions import get_condition

    per_partition = 0.0
    for asset in assets:
        if asset.startswith("explanations/"):
            c = get_condition(asset.split("/", 1)[1])
            per_partition += estimate("explain", condition_weight(c.method, c.structured))
        elif asset.split("/", 1)[0] in ("detection", "fuzzing", "embedding"):
            per_partition += estimate(asset.split("/", 1)[0], 1.0)
        elif asset in ("records", "holistic_activations", "baselines", "generated"):
            per_partition += estimate(asset, 1.0)
    return n_partitions * per_partition
