"""What a preset costs before a GPU is rented: partitions, runs, model loads, tokens, GPU hours.

No model is loaded. The counts of partitions, runs and model loads follow from the preset and the
way runs are launched. The per-feature assets take single-run backfills, so a run covers a range
of (layer, feature) partitions and loads each model once: ``featureinterp run`` launches one run
per layer for records (+ holistic values) and one for explain + score, all in one process (one
load per model for the whole invocation); a UI backfill or ``--partition-range`` launched per
layer gives each layer's run its own process (a load per layer), which is how eight GPUs share a
grid. The third way, a run per partition (what the paper's scripts and Dagster's default
backfills amount to), is kept as the baseline. The token counts per feature are *measured*: read back from a stand-in run of the same preset
(``featureinterp run --standin``), whose simulator uses a Gemma tokenizer (so simulator token counts
are those of gemma-2-27b-it on the same prompt layout) and whose explainer prompts carry the same
records; its explainer *replies* come from a random model, so completion tokens are an upper
bound (every rule written to the schema's length limit).

GPU time is a FLOP projection, ``2 x parameters x forward tokens / rate``, plus model loads at a
given read throughput. Without a calibration the rate is ``peak x utilisation``, an *assumption*
that ignores attention FLOPs, padding, queueing and Python overhead. With one (``featureinterp plan
--calibration FILE``, the JSON ``scripts/gpu-check`` writes) each stage's rate is what was measured
on full-size models on that GPU (``featureinterp.throughput.Calibration``: simulator forward
tokens, activation rows and holistic rows per second, as effective FLOP/s so other model sizes
scale by parameters), and everything the assumption ignored is in the measurement. The API
explainer's latency is left out either way (it runs concurrently with GPU work).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from featureinterp.config import ApiSpec, Preset
from featureinterp.explain.conditions import get_condition
from featureinterp.names import GENERATED_SOURCE, SYNTHETIC_KEY
from featureinterp.presets.scope import PresetScope

if TYPE_CHECKING:  # throughput imports torch; planning loads no model
    from featureinterp.throughput import Calibration

__all__ = [
    "GpuSpec",
    "MeasuredCost",
    "PresetPlan",
    "measured_costs",
    "measured_generated",
    "plan_preset",
    "MODEL_PARAMS",
]

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


def measured_generated(readers: Sequence[Stored], partitions: Sequence[str]) -> MeasuredCost | None:
    """Per-feature costs of the ``generated`` source (its request(s) and the simulation of its
    candidates), averaged over the ``partitions`` with a stored value, from the first reader that
    has any; None when none does."""
    for stored in readers:
        rows = []
        for key in partitions:
            value = stored((GENERATED_SOURCE,), key)
            meta = getattr(value, "meta", value)  # a table: its accounting is in the metadata
            if not isinstance(meta, dict) or "usage" not in meta:
                continue
            usage = meta["usage"]
            rows.append((usage.get("requests", 0), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), 0, meta.get("simulator_tokens", 0)))
        if rows:
            return MeasuredCost(len(rows), *(sum(column) / len(rows) for column in zip(*rows, strict=True)))
    return None


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
    figures: dict = field(default_factory=dict)
    """Each paper figure's grid and its own cost (``figure_plans``), for a paper preset."""
    generated: dict = field(default_factory=dict)
    """The generated counterexample source (ours): partitions, requests (at least one per
    partition, at most ``attempts``), candidates and the subject model's forward tokens on them,
    and the measured per-feature costs where a run stored some."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def text(self) -> str:
        lines = [
            f"preset {self.preset}: {self.layers} layer keys x {self.features} features, "
            f"conditions {', '.join(self.conditions)}",
            "partitions: " + ", ".join(f"{k} {v:,}" for k, v in self.partitions.items()),
            "runs (featureinterp run, one per layer and stage): "
            + ", ".join(f"{k} {v:,}" for k, v in self.runs.items()),
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
        if self.generated:
            g, gm = self.generated, self.generated.get("measured")
            lines.append(
                f"generated counterexamples ({g['condition']}): {g['partitions']:,} partitions, "
                f"{g['requests_min']:,}-{g['requests_max']:,} explainer requests, {g['candidates']:,} "
                f"candidates, {g['subject_forward_tokens']:,} subject forward tokens"
                + (
                    f"; per feature {gm['explainer_requests']:.1f} requests, {gm['explainer_prompt_tokens']:,.0f} "
                    f"prompt + {gm['explainer_completion_tokens']:,.0f} completion tokens, simulator "
                    f"{gm['simulator_tokens']:,.0f} forward tokens (measured on {gm['partitions']} partitions)"
                    if gm
                    else "; tokens not measured yet"
                )
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
            if self.assumptions.get("rates") == "measured":
                lines.append(f"rates: measured by scripts/gpu-check, {self.assumptions['calibration']}")
            else:
                lines.append(
                    f"rates: {self.assumptions.get('rates', 'assumed')} (no measurement; "
                    "`featureinterp plan --calibration FILE` uses what scripts/gpu-check measured)"
                )
        for name, fig in self.figures.items():
            g = fig["grid"]
            hours = next((v for k, v in fig["gpu_hours"].items() if k.startswith("featureinterp run: 1x")), None)
            lines.append(
                f"paper {name}: {len(g['layers'])} layers x {len(g['features'])} features x "
                f"{len(g['conditions'])} conditions, explainer {g['explainer']}"
                + (f", tree depth {g['tree']['depth']} width {g['tree']['width']}" if g["tree"] else "")
                + (
                    f"; {hours:,.1f} GPU hours (featureinterp run) for its measured conditions "
                    f"({', '.join(fig['measured_conditions'])})"
                    if hours is not None
                    else ""
                )
            )
        return "\n".join(lines)


def plan_preset(
    preset: Preset,
    readers: Sequence[Stored] = (),
    gpu: GpuSpec | None = None,
    scoped: bool = True,
    calibration: Calibration | None = None,
) -> PresetPlan:
    """Partitions, runs, model loads, measured tokens and projected GPU hours of ``preset``;
    ``readers`` give the stored values token counts are measured from (see ``measured_costs``).
    ``scoped``: each paper condition on its figures' partitions only, as ``featureinterp run``
    runs it (False: ``--whole-grid``, every condition everywhere). ``calibration``: measured rates
    (``scripts/gpu-check``) instead of ``gpu``'s assumed utilisation."""
    gpu = gpu or GpuSpec()
    if calibration is not None:
        import dataclasses

        gpu = dataclasses.replace(gpu, name=calibration.device)
    conditions = list(preset.explain.conditions)
    n_layers, n_feat = len(preset.layer_keys), len(preset.features)
    lf = n_layers * n_feat
    # a condition of a paper figure runs on that figure's partitions only (PresetScope)
    scope = PresetScope.of(preset, whole_grid=not scoped)
    counts = {c: len(scope.by_condition[c]) for c in conditions}
    explained = set().union(*scope.by_condition.values())
    holistic_keys = scope.holistic
    holistic = bool(holistic_keys)
    partitions = {
        "corpus_tokens": 1,
        "sae": n_layers,
        "sae_activations": n_layers,
        "corpus_embeddings": 1,
        "records": lf,
        **({"holistic_activations": len(holistic_keys)} if holistic else {}),
        **{f"explanations/{c}": counts[c] for c in conditions},
        **{f"scores/{c}": counts[c] for c in conditions},
        "layer_results": n_layers,
        "figures": 3,
    }
    runs = {
        "tokens+sae+embeddings": 3,
        "records": n_layers,
        "explain+score": len({k.split("|")[1] for k in explained}),  # layers with any condition
        "layer_results": n_layers,
        "figures": 1,
    }
    simulator = preset.explain.simulator or preset.model
    names = {"subject": f"subject ({preset.model.name})", "simulator": f"simulator ({simulator.name})"}
    model_spec = preset.explain.explainer
    local_explainer = model_spec is not None and not isinstance(model_spec, ApiSpec)
    if model_spec is not None and not isinstance(model_spec, ApiSpec):  # local_explainer, narrowed
        names["explainer"] = f"explainer ({model_spec.name})"

    def per_run(n: int, records_runs: int) -> dict[str, int]:
        """Loads when the explain stage takes ``n`` runs (the activation pass is one more
        subject load; holistic values need the subject model in every records run)."""
        return {
            names["subject"]: 1 + (records_runs if holistic else 0),
            names["simulator"]: n,
            **({names["explainer"]: n} if local_explainer else {}),
        }

    loads = {
        # every run of the invocation shares one process, so one load each
        "featureinterp run": {name: 1 for name in names.values()},
        # a backfill (or --partition-range) per layer: a process per layer run
        "UI backfill per layer": per_run(runs["explain+score"], n_layers),
        # the baseline: a run (and a process) per explained (layer, feature) partition
        "a run per partition": per_run(len(explained), len(explained)),
    }
    measured = measured_costs(readers, sorted(scope.every), conditions)
    generated: dict = {}
    gen_measured = measured_generated(readers, sorted(scope.generated)) if scope.generated else None
    if scope.generated:
        settings, n_gen = preset.generated, len(scope.generated)
        partitions[GENERATED_SOURCE] = n_gen
        n_candidates = n_gen * (settings.n_fire + settings.n_edits)
        generated = {
            "condition": settings.condition,
            "partitions": n_gen,
            "requests_min": n_gen,
            "requests_max": n_gen * settings.attempts,
            "candidates": n_candidates,
            "subject_forward_tokens": n_candidates * preset.row_len,  # at most: candidates are cut to seq_len
            "measured": asdict(gen_measured) | {"simulator_tokens": gen_measured.simulator_tokens}
            if gen_measured
            else None,
        }
    explainer: dict = {}
    if isinstance(preset.explain.explainer, ApiSpec) and measured:
        api = preset.explain.explainer
        req = pt = ct = cost = 0.0
        costs = [(cond, counts[cond], m) for cond, m in measured.items()]
        if gen_measured and preset.generated_condition is not None:  # its requests go to the condition's route
            costs.append((preset.generated_condition, len(scope.generated), gen_measured))
        for cond, n, m in costs:
            route = api.served(get_condition(cond).explainer_model)
            req += m.explainer_requests * n
            pt += m.explainer_prompt_tokens * n
            ct += m.explainer_completion_tokens * n
            cost += (
                n
                * (
                    m.explainer_prompt_tokens * route.price_in_per_mtok
                    + m.explainer_completion_tokens * route.price_out_per_mtok
                )
                / 1e6
            )
        models = {get_condition(c).explainer_model or api.model for c in measured}
        explainer = {
            "model": ", ".join(sorted(models)),
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
        assumed = gpu.peak_flops * gpu.utilisation
        rates = {
            "simulator forward passes": calibration.simulator_flops if calibration else assumed,
            "subject activation pass": calibration.activation_flops if calibration else assumed,
            "holistic corpus sweep": calibration.holistic_flops if calibration else assumed,
        }
        sim_tokens = sum(m.simulator_tokens * counts[c] for c, m in measured.items())
        if gen_measured:
            sim_tokens += gen_measured.simulator_tokens * len(scope.generated)
        # A load reads the bf16 weights (2 bytes per parameter; the simulator is quantized to 4-bit
        # after reading them).
        params = {names["subject"]: subj_params, names["simulator"]: sim_params}
        compute = {
            "simulator forward passes": 2 * sim_params * sim_tokens,
            "subject activation pass": 2 * subj_params * (preset.n_rows * preset.row_len + generated.get("subject_forward_tokens", 0)),
        }
        if holistic and preset.explain.holistic_scale == "corpus":
            # the paper's holistic scale: a drop-one-token sweep of every row per layer (the
            # variant dropping token d recomputes its T - d suffix tokens: ~T(T+1)/2 per row)
            hol_layers = len({k.split("|")[1] for k in holistic_keys} - {SYNTHETIC_KEY})
            per_row = preset.row_len * (preset.row_len + 1) / 2
            compute["holistic corpus sweep"] = 2 * subj_params * preset.n_rows * per_row * hol_layers
        compute = {k: flops / rates[k] for k, flops in compute.items()}  # FLOPs -> seconds
        for way, counts in loads.items():
            load_s = sum(n * 2 * params.get(name, 0.0) for name, n in counts.items()) / (gpu.load_gbps * 1e9)
            parts = compute | {"model loads": load_s}
            gpu_hours[f"{way}: 1x {gpu.name}"] = sum(parts.values()) / 3600
            if way != "featureinterp run":  # one process runs one thing at a time: a GPU
                # eight GPUs split the runs (pool `gpu` = 8), each run loading its own models
                gpu_hours[f"{way}: 8x {gpu.name}"] = sum(parts.values()) / 8 / 3600
            if way == "featureinterp run":
                gpu_hours |= {f"of which {k}": v / 3600 for k, v in parts.items()}
                dominant = max(parts, key=parts.__getitem__)
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
        generated=generated,
        assumptions=asdict(gpu)
        | (
            {"rates": "measured", "calibration": calibration.describe()}
            if calibration
            else {"rates": f"assumed: {gpu.utilisation:g} of {gpu.name} peak"}
        ),
    )


def figure_plans(
    preset: Preset,
    readers: Sequence[Stored] = (),
    gpu: GpuSpec | None = None,
    calibration: Calibration | None = None,
) -> dict[str, dict]:
    """Each paper figure's grid (featureinterp.figures.grids) with what that grid alone costs."""
    import dataclasses

    from featureinterp.figures.grids import figure_grids

    out = {}
    for name, grid in figure_grids(preset).items():
        sub = preset.replace(
            layers=grid.layers,
            features=grid.features,
            explain=dataclasses.replace(preset.explain, conditions=grid.conditions, synthetic=False),
        )
        cost = plan_preset(sub, readers, gpu, calibration=calibration)
        out[name] = {
            "grid": grid.to_dict(),
            "partitions_per_condition": len(grid.layers) * len(grid.features),
            "measured_conditions": sorted(cost.measured),
            "explainer_cost_usd": cost.explainer.get("cost_usd"),
            "gpu_hours": cost.gpu_hours,
        }
    return out
