"""The API explainer against a real OpenAI-compatible server nobody in this project wrote.

``transformers serve`` (Hugging Face's server, the ``serving`` extra) serves the embedded
SmolLM2-135M-Instruct on 127.0.0.1; the project's ``OpenAIChatBackend`` talks to it as it would to
OpenRouter or vLLM. What this server does with our parameters is part of what is tested: it ignores
``n`` and ``response_format`` (one free-text choice back, a warning in its log), honours ``seed``,
answers unknown fields (vLLM's ``continue_final_message``) with HTTP 422 and sends no logprobs.
The status codes it cannot produce (429, 5xx, resets) are tested against the in-repo scripted server
(tests/featureinterp/llm/test_api.py) and the fault proxy (benchmarks/api_faults.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import dagster as dg
import pytest

from benchmarks._servers import FaultProxy, transformers_serve
from featureinterp.explanations.rules import explanation_schema
from featureinterp.llm.api import OpenAIChatBackend
from featureinterp.llm.backend import BackendError, GenerationParams, system, user

pytestmark = pytest.mark.slow

KEY = "sk-real-server-SECRET-42"
KEY_ENV = "FEATUREINTERP_TEST_EXPLAINER_KEY"
PROMPT = [
    system("You explain features of a language model. Reply with JSON only."),
    user('Give one rule for a feature that fires on the word "the", as {"rules": [...]}.'),
]


@pytest.fixture(scope="module")
def real_server(embedded_model, model_cache, tmp_path_factory):
    """(base URL, the server's log file) of ``transformers serve`` pinned to SmolLM2-135M-Instruct."""
    log = tmp_path_factory.mktemp("serve") / "transformers-serve.log"
    with transformers_serve(model_cache / "SmolLM2-135M-Instruct", log) as url:
        yield url, log


@pytest.fixture(autouse=True)
def _fresh_capabilities(monkeypatch):
    import featureinterp.llm.api_capabilities as api_capabilities

    monkeypatch.setattr(api_capabilities, "_LEARNED", {})


def _backend(url: str, model_dir: Path, **kwargs) -> OpenAIChatBackend:
    kwargs.setdefault("timeout_s", 120)
    return OpenAIChatBackend(model=str(model_dir), base_url=url, api_key=KEY, sleep=lambda s: None, **kwargs)


def test_chat_n_seed_usage_cache_and_the_key(real_server, model_cache, tmp_path, caplog):
    url, log = real_server
    caplog.set_level(logging.DEBUG)
    model = model_cache / "SmolLM2-135M-Instruct"
    backend = _backend(
        url, model, cache_dir=tmp_path / "cache", price_in_per_mtok=1.0, price_out_per_mtok=2.0
    )
    params = GenerationParams(
        n=2, temperature=0.8, max_tokens=24, seed=11, json_schema=explanation_schema(rule_cap=2)
    )
    first = backend.generate(PROMPT, params)
    # the server answers n=2 with one choice: the backend asks for the second on its own
    assert len(first) == 2 and [c.mode["n"] for c in first] == ["batched", "separate"]
    assert all(c.mode["seed"] == "sent" and c.mode["response_format"] == "json_schema" for c in first)
    assert backend.usage.requests == 2
    ignored = log.read_text()
    assert "Ignoring unsupported fields" in ignored and "'n'" in ignored and "response_format" in ignored
    assert backend.usage.prompt_tokens > 0 and backend.usage.completion_tokens > 0
    assert backend.usage.cost_usd == pytest.approx(
        (backend.usage.prompt_tokens * 1.0 + backend.usage.completion_tokens * 2.0) / 1e6
    )
    # learned for (base URL, model): the next request does not ask for n=2 at once
    again = _backend(url, model).generate(PROMPT, params)
    assert [c.mode["n"] for c in again] == ["separate", "separate"]
    # the seed is honoured: the same request without the cache gives the same samples
    assert [c.text for c in again] == [c.text for c in first]
    # the disk cache answers a rerun without a request
    rerun = _backend(url, model, cache_dir=tmp_path / "cache")
    replay = rerun.generate(PROMPT, params)
    assert all(c.cached for c in replay) and rerun.usage.requests == 0
    assert [c.text for c in replay] == [c.text for c in first]

    # what this server rejects: an unknown field (vLLM's continue_final_message) is HTTP 422, not retried
    with pytest.raises(BackendError, match="HTTP 422.*Unexpected fields") as unknown:
        backend.next_token_logprobs(PROMPT, "{", ['"', "x"])
    # and it sends no logprobs: retried as an unusable answer, then a clear error
    with pytest.raises(BackendError, match="support logprobs") as no_logprobs:
        _backend(url, model, max_attempts=2).next_token_logprobs(PROMPT, "", ["{"])

    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    for text in (logged, cached, log.read_text(), str(unknown.value), str(no_logprobs.value)):
        assert KEY not in text and "SECRET" not in text


def test_fault_proxy_in_front_of_the_real_server(real_server, model_cache):
    """Every fault kind once, then the real answer: the backend's retries get through all of them."""
    from benchmarks._servers import FAULTS

    url, _ = real_server
    transport = [f for f in FAULTS if f != "no_rules"]  # no_rules is a 200 the explainer rejects
    with FaultProxy(url, faults=tuple(transport), schedule=len(transport), stall_s=4.0) as proxy:
        backend = _backend(proxy.url, model_cache / "SmolLM2-135M-Instruct", timeout_s=3.0, max_attempts=20)
        out = backend.generate(PROMPT, GenerationParams(temperature=0.0, max_tokens=8))
    assert out[0].text and sorted(proxy.injected) == sorted(transport)
    assert backend.usage.retries == len(transport) and proxy.forwarded == 1


def test_dagster_explains_and_scores_through_the_real_server(real_server, model_cache, tmp_path, monkeypatch):
    """embedded-tiny partitions materialized by Dagster with a preset file whose explainer is the
    real server: one-shot and tree explanations and their scores, the key from the environment."""
    from featureinterp.config import ApiSpec, feature_key, layer_key
    from featureinterp.presets import get_preset
    from featureinterp.presets.files import dump_preset
    from featureinterp_assets import cli
    from featureinterp_assets.definitions import build_definitions

    url, _ = real_server
    home = tmp_path / "home"
    for name, value in {
        "FEATUREINTERP_HOME": str(home),
        "FEATUREINTERP_MODELS": str(model_cache),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        KEY_ENV: KEY,
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster").mkdir()
    base = get_preset("embedded-tiny")
    api = ApiSpec(
        model=str(model_cache / "SmolLM2-135M-Instruct"), base_url=url, api_key_env=KEY_ENV, timeout_s=120
    )
    preset = base.replace(
        name="tiny-via-server", features=(0,), explain=dataclasses.replace(base.explain, explainer=api)
    )
    path = tmp_path / "tiny-via-server.toml"
    path.write_text(dump_preset(preset, "toml"))
    monkeypatch.setenv("FEATUREINTERP_PRESET", str(path))
    layer, feature = layer_key(preset.layers[0]), feature_key(0)
    cli.run(str(path), False, explain=False, features=[0], layers=[layer])

    loaded = get_preset(str(path))
    defs = build_definitions(loaded)
    keys = [dg.AssetKey(["explanations", c]) for c in ("one_shot", "tree")]
    keys += [dg.AssetKey(["scores", c]) for c in ("one_shot", "tree")]
    partition = str(dg.MultiPartitionKey({"layer": layer, "feature": feature}))
    instance = dg.DagsterInstance.get()
    result = dg.materialize(
        list(defs.assets),
        selection=[k.to_user_string() for k in keys],
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
    )
    assert result.success
    # the UI shows how each explanation's requests were sent (this server ignores n: separate)
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[0] == "explanations":
            modes = event.materialization.metadata["request_modes"].value
            # every answered request was sent with the schema (a request that failed, e.g. a timeout
            # on a loaded machine, is counted as "no reply", not as a mode)
            answered = {m: n for m, n in modes.items() if m != "no reply"}
            assert answered and all("response_format=json_schema" in m for m in answered), modes
    storage = home / "storage" / loaded.name
    for condition in ("one_shot", "tree"):
        value = json.loads(
            (storage / "explanations" / condition / feature / layer / "value.json").read_text()
        )
        completions = value["completions"]
        assert completions and all(c["mode"] is not None for c in completions), condition
        assert any(c["parsed_ok"] for c in completions) and value["explanation"]["rules"]
        assert value["usage"]["requests"] > 0
        score = json.loads((storage / "scores" / condition / feature / layer / "value.json").read_text())
        assert -1.0 <= score["score"] <= 1.0
    stored = "".join(p.read_text() for p in home.rglob("*.json"))
    assert KEY not in stored
    events = "".join(str(e) for e in instance.all_logs(result.run_id))
    assert KEY not in events
