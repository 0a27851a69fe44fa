"""Run every benchmark (or some), one at a time, and publish one table of their ratios.

    python -m benchmarks                         # all, full size: updates benchmarks/results.json and docs/benchmarks.md
    python -m benchmarks --only simulator,explainer
    python -m benchmarks --quick                 # tiny sizes: each runs and prints complete JSON (CI)

Each benchmark runs in its own process (``python -m benchmarks.NAME``), alone: ratios measured
side by side with other work on the machine are distorted. A run's JSON line is complete when it
names the benchmark and carries every ratio the registry below expects, each a finite number, and
a ``checks`` object. A full run merges its results into ``benchmarks/results.json`` (one entry per
benchmark, with the date and machine it was measured on, so a partial run keeps the others'
published numbers and says when they are from) and regenerates the table between its markers in
``docs/benchmarks.md`` (the Benchmarks page of the docs site; README points there).
A quick run writes nowhere unless ``--out`` is given: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import QUICK_ENV

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
TABLE_PAGE = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


@dataclass(frozen=True)
class Benchmark:
    name: str
    what: str
    """What ours is compared with, one line (the table's "compares" column)."""
    ratios: tuple[str, ...]
    """The ratios its JSON must carry (> 1: ours is better)."""
    work: tuple[str, ...] = ()
    """Keys of ``checks`` that hold the work each side did (shown in the table)."""
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()


REGISTRY = (
    Benchmark(
        "activations", "SAE activations: stop after the layer vs the paper's full pass with every hook",
        ("speedup",), ("work",),
    ),
    Benchmark(
        "holistic", "leave-one-token-out values: shared prefix cache, stop at the layer vs a full pass per position",
        ("speedup_same_rows", "speedup_paper_use"), ("work",),
    ),
    Benchmark(
        "simulator", "simulation of one rule: ours vs the paper's cache + batch 2 loop, and vs no cache",
        ("speedup_vs_paper", "speedup_cached"), ("forward_tokens",),
    ),
    Benchmark(
        "explainer", "tree search vs the paper's sequential loop (own simulator, no memo)",
        ("speedup_tree",), ("work",),
    ),
    Benchmark(
        "explain_cost", "explain + score with speculative decoding, prefix reuse, memo (+bf16) vs none",
        ("explain_speedup", "exact_speedup"), ("old_tokens", "new_tokens"),
        quick_args=("--features", "1", "--per-split", "2"),
    ),
    Benchmark(
        "retrieval", "similar rows: exact search vs brute force and vs an ANN index",
        ("query_speedup_vs_brute_force", "deepening_speedup_vs_brute_force", "query_speedup_vs_ann",
         "build_speedup_without_ann_index", "recall_at_30_vs_ann", "positions_at_150_vs_ann"),
        ("search_rows_scored", "brute_force_rows_sorted", "ann_rerank_candidates_rescored"),
        quick_args=("--rows", "3000", "--queries", "6"),
    ),  # fmt: skip
    Benchmark(
        "precision", "the embedded LLM in bfloat16 vs float32: discrimination per CPU second",
        ("bf16_discrimination_per_cpu_s",), (),
        quick_args=("--rows", "300", "--top", "2", "--random", "1"),
    ),
    Benchmark(
        "simulator_choice", "embedded simulator SmolLM2-135M vs Gemma-3-270M: discrimination per CPU second",
        ("smollm2_per_cpu_s",), (), quick_args=("--rows", "300", "--top", "2", "--random", "1"),
    ),
    Benchmark(
        "scorers", "simulation vs embedding scorer: seconds per explanation",
        ("cost_ratio",), ("work",), quick_args=("--features", "1", "--per-split", "2"),
    ),
    Benchmark(
        "end_to_end", "README command (1) from an empty home, then a rerun that must recompute nothing",
        ("rerun_speedup",), ("stages_rerun",),
        quick_args=("--preset", "embedded-tiny", "--conditions", "one_shot"),
    ),
    Benchmark(
        "api_faults", "explanations through a fault proxy, SIGKILL, rerun: nothing lost or paid twice",
        ("cache_savings",), ("requests_paid_twice", "features_lost"),
        quick_args=("--layers", "L03", "--features", "0", "--kill-after", "2", "--per-request", "1,1"),
    ),
    Benchmark(
        "paper_scale", "gemma-2-9b stand-in: a process per partition vs featureinterp run; paper tree tokens",
        ("load_savings", "wall_speedup", "simulator_token_savings", "rss_growth_in_memory_over_streamed"),
        ("tree_simulator_tokens_paper_loop", "tree_simulator_tokens_ours"),
        quick_args=("--layers", "L00", "--features", "0", "--rss-layers", "1"),
    ),
)
BY_NAME = {b.name: b for b in REGISTRY}


def machine() -> dict[str, object]:
    """Where the numbers were measured: CPU model, cores this process may use, torch threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "threads": int(os.environ.get("BENCH_THREADS", "2"))}


def complete(bench: Benchmark, line: str) -> tuple[dict | None, str]:
    """The benchmark's JSON (or None) and what is wrong with it ("" when complete)."""
    try:
        result = json.loads(line)
    except json.JSONDecodeError:
        return None, f"last line is not JSON: {line[:200]!r}"
    if not isinstance(result, dict) or result.get("benchmark") != bench.name:
        return None, f"last line does not name benchmark {bench.name!r}"
    ratios, checks = result.get("ratios"), result.get("checks")
    if not isinstance(ratios, dict) or not isinstance(checks, dict):
        return None, "ratios and checks must both be objects"
    missing = [r for r in bench.ratios if r not in ratios]
    bad = [k for k, v in ratios.items() if not isinstance(v, int | float) or not math.isfinite(v)]
    if missing or bad:
        return None, f"ratios missing {missing or 'none'}, not finite numbers {bad or 'none'}"
    return result, ""


def run(bench: Benchmark, quick: bool, log_dir: Path) -> dict:
    """One benchmark in its own process; its output kept in ``log_dir``."""
    cmd = [sys.executable, "-m", f"benchmarks.{bench.name}", *(bench.quick_args if quick else bench.args)]
    env = {k: v for k, v in os.environ.items() if k != QUICK_ENV} | ({QUICK_ENV: "1"} if quick else {})
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (log_dir / f"{bench.name}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return {"name": bench.name, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    result, problem = complete(bench, lines[-1])
    if result is None:
        return {"name": bench.name, "error": problem}
    return {"name": bench.name, "wall_s": round(wall, 1), **result}


def table(results: dict[str, dict]) -> str:
    """The generated table: one row per benchmark, in registry order."""
    rows = ["| benchmark | compares | ratios (> 1: ours better) | work both sides did | measured |", "|---|---|---|---|---|"]
    for bench in REGISTRY:
        r = results.get(bench.name)
        if r is None:
            rows.append(f"| `{bench.name}` | {bench.what} | not measured yet | | |")
            continue
        ratios = ", ".join(f"`{k}` {v}" for k, v in r["ratios"].items()) or "(quality only, see checks)"
        work = "; ".join(f"{k}: {json.dumps(r['checks'][k])}" for k in bench.work if k in r["checks"])
        m = r["machine"]
        when = f"{r['date']}, {m['cpu']}, {m['cores']} cores, {r['wall_s']:.0f} s"
        rows.append(f"| `{bench.name}` | {bench.what} | {ratios} | {work.replace('|', '/')} | {when} |")
    return "\n".join(rows)


def publish(results: dict[str, dict]) -> None:
    """Write results.json and regenerate the table between its markers in ``TABLE_PAGE`` (atomically)."""
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(RESULTS)
    text = TABLE_PAGE.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{TABLE_PAGE.name} has no {BEGIN} ... {END} markers: add them where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = (
        f"\n_Generated by `python -m benchmarks` from `benchmarks/results.json`; each row says when and where "
        f"it was measured (alone on the machine)._\n\n{table(results)}\n"
    )
    tmp_page = TABLE_PAGE.with_suffix(".md.tmp")
    tmp_page.write_text(head + BEGIN + body + END + tail)
    tmp_page.replace(TABLE_PAGE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated names (default: all): {', '.join(BY_NAME)}")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check each runs and prints complete JSON")
    parser.add_argument("--out", type=Path, help="folder for logs and the run's JSON (default: a temporary one)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BY_NAME)
    unknown = [n for n in names + [s for s in args.skip.split(",") if s] if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    names = [n for n in names if n not in args.skip.split(",")]
    import tempfile

    out = args.out or Path(tempfile.mkdtemp(prefix="benchmarks-"))
    out.mkdir(parents=True, exist_ok=True)
    today, where = dt.date.today().isoformat(), machine()
    ran: dict[str, dict] = {}
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        result = run(BY_NAME[name], args.quick, out)
        ran[name] = result | ({} if "error" in result else {"date": today, "machine": where, "quick": args.quick})
        print(f"{name}: {result.get('error') or result['ratios']} ({result.get('wall_s', '-')} s)", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(ran, indent=1) + "\n")
    failed = [n for n, r in ran.items() if "error" in r]
    if not args.quick:
        published = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        published |= {n: r for n, r in ran.items() if "error" not in r}
        publish(published)
    summary = {n: r.get("error") or r["ratios"] for n, r in ran.items()}
    print(json.dumps({"benchmarks": summary, "failed": failed, "logs": str(out)}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
