"""What a preset costs before a GPU is rented: partitions, runs, model loads, tokens, GPU hours.

No model is loaded. The counts of partitions, runs and model loads follow from the preset and the
way runs are launched: ``featureinterp run`` runs one Dagster run per (layer, feature) partition
for records, holistic values and the explain + score stage, all in one process that loads each
model once; a UI or daemon backfill gives each run its own process, which loads its models. The
token counts per feature are *measured*: read back from a stand-in run of the same preset
(``featureinterp run --standin``), whose simulator uses a Gemma tokenizer (so simulator token counts
are those of gemma-2-27b-it on the same prompt layout) and whose explainer prompts carry the same
records; its explainer *replies* come from a random model, so completion tokens are an upper
bound (every rule written to the schema's length limit).

GPU time is a FLOP projection, ``2 x parameters x forward tokens / (peak x utilisation)``, plus
model loads at a given read throughput. It ignores attention FLOPs (the simulator's prompts are
~1-2k tokens, where the MLPs dominate), queueing, the API explainer's latency (it runs
concurrently with GPU work) and Python overhead; ``utilisation`` is the knob for everything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from featureinterp.config import ApiSpec, Preset
from featureinterp.experiments import get_condition

__all__ = ["GpuSpec", "MeasuredCost", "PresetPlan", "measured_costs", "plan_preset", "MODEL_PARAMS"]

MODEL_PARAMS: dict[str, float] = {
    "gpt2": 124e6,
    "google/gemma-2-9b": 9.24e9,
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "google/gemma-2-27b-it": 27.2e9,
    "SmolLM2-135M-Instruct": 135e6,
}
"""Parameter counts of the presets' models (from their model cards)."""


@dataclass(frozen=True)
class GpuSpec:
    """The accelerator of the projection."""

    name: str = "H100 SXM"
    peak_flops: float = 989e12
    """Dense bf16 tensor-core peak (FLOP/s)."""
    utilisation: float = 0.25
    """Fraction of peak reached: small batches of 1-2k-token prompts and bitsandbytes 4-bit matmuls
    reach far less than training does."""
    load_gbps: float = 1.0
    """Weight read throughput (GB/s) when a model loads (local NVMe ~2-3, network volumes less)."""


@dataclass
class MeasuredCost:
    """Per-feature costs of one condition, averaged over the measured partitions."""

    partitions: int = 0
    explainer_requests: float = 0.0
    explainer_prompt_tokens: float = 0.0
    explainer_completion_tokens: float = 0.0
    simulator_tokens_explain: float = 0.0
    simulator_tokens_score: float = 0.0

    @property
    def simulator_tokens(self) -> float:
        return self.simulator_tokens_explain + self.simulator_tokens_score


Stored = Callable[[tuple[str, ...], str], "dict | None"]
"""Reads one stored value: (asset key path, partition key "F0003|L05") -> the value, or None."""


def measured_costs(
    readers: Sequence[Stored], partitions: Sequence[str], conditions: Iterable[str]
) -> dict[str, MeasuredCost]:
    """Per-condition costs averaged over the ``partitions`` that have a stored explanation with
    token accounting and a score, from the first of ``readers`` (the stand-in's storage, then the
    preset's own) that has any; conditions without a measurement are left out."""
    out: dict[str, MeasuredCost] = {}
    for cond in conditions:
        for stored in readers:
            rows = []
            for key in partitions:
                expl = stored(("explanations", cond), key)
                score = stored(("scores", cond), key)
                if expl is None or score is None or "simulator_tokens" not in expl:
                    continue  # not run, not scored yet, or stored before token accounting
                usage = expl.get("usage", {})
                rows.append(
                    (
                        usage.get("requests", 0),
                        usage.get("prompt_tokens", 0),
                        usage.get("completion_tokens", 0),
                        expl["simulator_tokens"],
                        score.get("simulator_tokens", 0),
                    )
                )
            if rows:
                means = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
                out[cond] = MeasuredCost(len(rows), *means)
                break
    return out


@dataclass
class PresetPlan:
    preset: str
    layers: int
    features: int
    conditions: list[str]
    partitions: dict[str, int]
    runs: dict[str, int]
    model_loads: dict[str, dict[str, int]]
    measured: dict[str, dict]
    explainer: dict
    gpu_hours: dict[str, float]
    dominant: str
    assumptions: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def text(self) -> str:
        lines = [
            f"preset {self.preset}: {self.layers} layer keys x {self.features} features, "
            f"conditions {', '.join(self.conditions)}",
            "partitions: " + ", ".join(f"{k} {v:,}" for k, v in self.partitions.items()),
            "runs (featureinterp run): " + ", ".join(f"{k} {v:,}" for k, v in self.runs.items()),
            *(
                f"model loads, {way}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                for way, counts in self.model_loads.items()
            ),
        ]
        if not self.measured:
            lines.append("tokens: not measured yet; run `featureinterp run --standin --features 0,1` first")
        for cond, m in self.measured.items():
            lines.append(
                f"  {cond}: per feature {m['explainer_requests']:.1f} explainer requests, "
                f"{m['explainer_prompt_tokens']:,.0f} prompt + {m['explainer_completion_tokens']:,.0f} "
                f"completion tokens; simulator {m['simulator_tokens']:,.0f} forward tokens "
                f"(measured on {m['partitions']} stand-in partitions)"
            )
        if self.explainer:
            lines.append(
                f"explainer {self.explainer['model']}: {self.explainer['requests']:,.0f} requests, "
                f"{self.explainer['prompt_tokens'] / 1e6:,.1f}M prompt + "
                f"{self.explainer['completion_tokens'] / 1e6:,.1f}M completion tokens, "
                f"~${self.explainer['cost_usd']:,.2f}"
            )
        if self.gpu_hours:
            lines.append(
                "projected GPU hours: "
                + ", ".join(f"{k} {v:,.1f}" for k, v in self.gpu_hours.items())
                + f" (dominated by {self.dominant})"
            )
        return "\n".join(lines)


def plan_preset(preset: Preset, readers: Sequence[Stored] = (), gpu: GpuSpec | None = None) -> PresetPlan:
    """Partitions, runs, model loads, measured tokens and projected GPU hours of ``preset``;
    ``readers`` give the stored values token counts are measured from (see ``measured_costs``)."""
    gpu = gpu or GpuSpec()
    conditions = list(preset.explain.conditions)
    conds = [get_condition(c) for c in conditions]
    n_layers, n_feat = len(preset.layer_keys), len(preset.features)
    lf = n_layers * n_feat
    holistic = any(c.holistic for c in conds)
    partitions = {
        "corpus_tokens": 1,
        "sae": n_layers,
        "sae_activations": n_layers,
        "corpus_embeddings": 1,
        "records": lf,
        **({"holistic_activations": lf} if holistic else {}),
        **{f"explanations/{c}": lf for c in conditions},
        **{f"scores/{c}": lf for c in conditions},
        "layer_results": n_layers,
        "figures": 3,
    }
    runs = {
        "tokens+sae+embeddings": 3,
        "records": lf,
        "explain+score": lf,
        "layer_results": n_layers,
        "figures": 1,
    }
    simulator = preset.explain.simulator or preset.model
    names = {"subject": f"subject ({preset.model.name})", "simulator": f"simulator ({simulator.name})"}
    per_partition = {names["subject"]: 1 + (lf if holistic else 0), names["simulator"]: lf}
    if preset.explain.explainer is not None and not isinstance(preset.explain.explainer, ApiSpec):
        names["explainer"] = f"explainer ({preset.explain.explainer.name})"
        per_partition[names["explainer"]] = lf
    loads = {
        # `featureinterp run`: every run of the invocation shares one process, so one load each
        "featureinterp run": {name: 1 for name in per_partition},
        # UI / daemon backfills: a process per partition run, a load per run
        "one process per run (UI backfill)": per_partition,
    }
    keys = [f"{f}|{layer}" for layer in preset.layer_keys for f in preset.feature_keys]
    measured = measured_costs(readers, keys, conditions)
    explainer: dict = {}
    if isinstance(preset.explain.explainer, ApiSpec) and measured:
        api = preset.explain.explainer
        req = sum(m.explainer_requests for m in measured.values()) * lf
        pt = sum(m.explainer_prompt_tokens for m in measured.values()) * lf
        ct = sum(m.explainer_completion_tokens for m in measured.values()) * lf
        cost = (pt * api.price_in_per_mtok + ct * api.price_out_per_mtok) / 1e6
        explainer = {
            "model": api.model,
            "requests": req,
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "cost_usd": cost,
        }
    gpu_hours: dict[str, float] = {}
    dominant = ""
    sim_params = MODEL_PARAMS.get(simulator.name)
    subj_params = MODEL_PARAMS.get(preset.model.name)
    if measured and sim_params and subj_params:
        rate = gpu.peak_flops * gpu.utilisation
        sim_tokens = sum(m.simulator_tokens for m in measured.values()) * lf
        # A load reads the bf16 weights (2 bytes per parameter; the simulator is quantized to 4-bit
        # after reading them).
        params = {names["subject"]: subj_params, names["simulator"]: sim_params}
        compute = {
            "simulator forward passes": 2 * sim_params * sim_tokens / rate,
            "subject activation pass": 2 * subj_params * preset.n_rows * preset.row_len / rate,
        }
        for way, counts in loads.items():
            load_s = sum(n * 2 * params.get(name, 0.0) for name, n in counts.items()) / (gpu.load_gbps * 1e9)
            parts = compute | {"model loads": load_s}
            one = sum(parts.values())
            # eight GPUs split the partitions; in `featureinterp run` each GPU's process loads once
            eight = sum(compute.values()) / 8 + (load_s if way == "featureinterp run" else load_s / 8)
            gpu_hours[f"{way}: 1x {gpu.name}"] = one / 3600
            gpu_hours[f"{way}: 8x {gpu.name}"] = eight / 3600
            if way == "featureinterp run":
                gpu_hours |= {f"of which {k}": v / 3600 for k, v in parts.items()}
                dominant = max(parts, key=parts.get)
    return PresetPlan(
        preset=preset.name,
        layers=n_layers,
        features=n_feat,
        conditions=conditions,
        partitions=partitions,
        runs=runs,
        model_loads=loads,
        measured={k: asdict(v) | {"simulator_tokens": v.simulator_tokens} for k, v in measured.items()},
        explainer=explainer,
        gpu_hours={k: round(v, 2) for k, v in gpu_hours.items() if math.isfinite(v)},
        dominant=dominant,
        assumptions=asdict(gpu),
    )
