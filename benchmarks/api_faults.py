"""API faults: explanations through a fault-injecting proxy in front of a real server, a SIGKILL
mid-run, a rerun, and a second cold run on the warm cache.

The explainer is ``transformers serve`` (Hugging Face's OpenAI-compatible server) serving the
embedded SmolLM2-135M-Instruct; between it and the project's ``OpenAIChatBackend`` sits
``benchmarks._servers.FaultProxy``, which breaks the first 3-7 attempts (seeded per request body)
of every request in turn with 429 (with and without ``Retry-After``), 500, 502, 503, a stall past
the client's timeout, a reset connection, a truncated body, a non-JSON body, empty ``choices`` and a
well-formed reply holding no rule list. ``featureinterp run`` explains embedded-tiny partitions
(one-shot and tree) with that route as explainer, is SIGKILLed once the server has answered
``--kill-after`` requests, and is run again to completion.

A request the server answered at the moment of the kill is paid twice whatever the client does (it
never stored the answer); it is counted apart (``paid_twice_in_flight_at_kill``).

Checks: ``faults_injected`` (goal >= 100), ``features_lost`` (explanations missing after the
rerun; goal 0), ``dummy_explanations`` (explanations without a parsed reply behind them; goal 0),
``requests_paid_twice`` (request bodies the server answered twice although its first answer was
usable: the disk cache must answer them after the kill; goal 0), ``unusable_reasked``
(unparseable answers asked for again: the explainer forgets them only when the feature fails, so
this stays 0 when none does), ``key_leaks`` (files and logs holding the API key; goal 0). Ratio ``cache_savings`` = requests the server answered for the
first, interrupted run and its rerun / requests it answered for a fresh Dagster instance over the
same cache (the rerun of a whole study after its asset history is lost).

    python -m benchmarks.api_faults [--features 0,1] [--layers L03,L06] [--kill-after 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import report
from benchmarks._servers import FaultProxy, transformers_serve
from featureinterp.config import ApiSpec, feature_key, models_dir
from featureinterp.explanations.rules import ParseError, parse_child_reply, parse_structured
from featureinterp.presets import get_preset
from featureinterp.presets.files import dump_preset

BIN = Path(sys.executable).parent
KEY_ENV = "FEATUREINTERP_BENCH_EXPLAINER_KEY"
KEY = "sk-bench-SECRET-7f3a"
CONDITIONS = ("one_shot", "tree")


KILLED_AT: list[float] = []


def _featureinterp(args: list[str], env: dict, log: Path, kill: callable | None = None) -> int:
    """Run ``featureinterp run ARGS`` (own process group); ``kill()`` true: SIGKILL the group
    (its ``time.monotonic()`` appended to ``KILLED_AT``)."""
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [str(BIN / "featureinterp"), "run", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while proc.poll() is None:
            if kill is not None and kill():
                os.killpg(proc.pid, signal.SIGKILL)
                KILLED_AT.append(time.monotonic())
                proc.wait()
                return -9
            time.sleep(0.2)
    return proc.returncode


def _usable(text: str) -> bool:
    for parse in (lambda t: parse_structured(t), lambda t: parse_child_reply(t, True, None)):
        try:
            parse(text)
            return True
        except ParseError:
            pass
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="0,1")
    parser.add_argument("--layers", default="L03,L06")
    parser.add_argument("--kill-after", type=int, default=10, help="server answers before the SIGKILL")
    parser.add_argument("--per-request", default="3,7", help="faults per request body: lo,hi")
    parser.add_argument("--timeout", type=float, default=25.0, help="client timeout (s); stalls 1 s longer")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=160,
        help="reply budget of roots (children: +40): a real answer must come well within --timeout; "
        "transformers serve keeps generating for a client that gave up, so a too-short timeout "
        "turns into a retry storm on a CPU server",
    )
    args = parser.parse_args()
    features = [int(f) for f in args.features.split(",")]
    layers = args.layers.split(",")
    lo, hi = (int(x) for x in args.per_request.split(","))

    work = Path(tempfile.mkdtemp(prefix="api-faults-"))
    home, log = work / "home", work / "run.log"
    base = get_preset("embedded-tiny")
    model_dir = models_dir() / "SmolLM2-135M-Instruct"
    if not model_dir.exists():
        from featureinterp.activations.models import load_subject_model

        load_subject_model(base.model, models_dir(), device="cpu")
    env = {
        **os.environ,
        "FEATUREINTERP_HOME": str(home),
        "FEATUREINTERP_MODELS": str(models_dir()),
        "DAGSTER_HOME": str(work / "dagster"),
        "HF_HUB_OFFLINE": "1",
        KEY_ENV: KEY,
    }
    (work / "dagster").mkdir(parents=True)
    select = ["--layers", ",".join(layers), "--features", args.features, "--conditions", ",".join(CONDITIONS)]

    with transformers_serve(model_dir, work / "serve.log") as url:
        with FaultProxy(url, per_request=(lo, hi), seed=0, stall_s=args.timeout + 1) as proxy:
            api = ApiSpec(
                model=str(model_dir),
                base_url=proxy.url,
                api_key_env=KEY_ENV,
                timeout_s=args.timeout,
                max_attempts=12,
                backoff_initial_s=0.05,
                backoff_max_s=0.5,
                max_concurrent=1,  # a 2-core CPU server: concurrent requests only slow each other
            )
            preset = base.replace(
                name="tiny-api-faults",
                features=tuple(features),
                explain=dataclasses.replace(
                    base.explain,
                    explainer=api,
                    conditions=CONDITIONS,
                    # the explainer's faults are measured: the LLM scorers (detection, fuzzing)
                    # would ask the same route for labels a 135M model cannot give as JSON
                    secondary_conditions=(),
                    max_tokens=args.max_tokens,
                    child_max_tokens=args.max_tokens + 40,
                ),
            )
            path = work / "tiny-api-faults.toml"
            path.write_text(dump_preset(preset, "toml"))
            env["FEATUREINTERP_PRESET"] = str(path)

            start = time.perf_counter()
            if _featureinterp(["--no-explain", *select], env, log) != 0:
                sys.exit(f"upstream stages failed; see {log}")
            upstream_s = time.perf_counter() - start

            start = time.perf_counter()
            killed = _featureinterp(select, env, log, kill=lambda: proxy.forwarded >= args.kill_after) == -9
            forwarded_at_kill = proxy.forwarded
            rerun_code = _featureinterp(select, env, log)
            cold_s = time.perf_counter() - start
            cold_requests = proxy.forwarded
            paid = dict(proxy.paid)
            first_answers = dict(proxy.first_answer)
            first_at = dict(proxy.first_answer_at)

            # the whole study again on a fresh Dagster instance over the same home (and cache)
            env["DAGSTER_HOME"] = str(work / "dagster-again")
            (work / "dagster-again").mkdir()
            start = time.perf_counter()
            again_code = _featureinterp(select, env, log)
            again_s = time.perf_counter() - start
            again_requests = proxy.forwarded - cold_requests
            injected = dict(proxy.injected)

    # a run that failed is not a measurement of recovery: its explanations may be missing or old
    if rerun_code != 0 or again_code != 0:
        sys.exit(f"featureinterp run failed (rerun exit {rerun_code}, fresh instance exit {again_code}); see {log}")
    storage = home / "storage" / preset.name
    lost = dummies = 0
    for condition in CONDITIONS:
        for layer in layers:
            for f in features:
                value_path = storage / "explanations" / condition / feature_key(f) / layer / "value.json"
                if not value_path.exists():
                    lost += 1
                    continue
                value = json.loads(value_path.read_text())
                rules = value["explanation"]["rules"]
                if not rules or not any(c["parsed_ok"] for c in value["completions"]):
                    dummies += 1
    # a request the server answered within 2 s of the kill (or after it) was in flight: the killed
    # process never received or never stored it, so no cache can save its second payment
    kill_at = KILLED_AT[0] if KILLED_AT else float("inf")
    repaid = [d for d, n in paid.items() if n > 1]
    in_flight = [d for d in repaid if first_at.get(d, 0.0) > kill_at - 2.0]
    twice = sum(1 for d in repaid if d not in in_flight and _usable(first_answers.get(d, "")))
    reasked = sum(1 for d in repaid if d not in in_flight) - twice
    leaks = [str(p) for p in work.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    report(
        "api_faults",
        ratios={"cache_savings": round(cold_requests / max(1, again_requests), 2)},
        checks={
            "faults_injected": sum(injected.values()),
            "faults_by_kind": injected,
            "features_lost": lost,
            "dummy_explanations": dummies,
            "requests_paid_twice": twice,
            "unusable_reasked": reasked,
            "paid_twice_in_flight_at_kill": len(in_flight),
            "key_leaks": len(leaks),
            "killed_mid_run": killed,
            "server_requests_before_kill": forwarded_at_kill,
            "server_requests_cold_and_rerun": cold_requests,
            "server_requests_fresh_instance": again_requests,
            "rerun_exit": rerun_code,
            "fresh_instance_exit": again_code,
            "upstream_s": round(upstream_s, 1),
            "cold_and_rerun_s": round(cold_s, 1),
            "fresh_instance_s": round(again_s, 1),
        },
    )


if __name__ == "__main__":
    main()
