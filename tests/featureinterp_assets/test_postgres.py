"""Dagster on a real PostgreSQL server, configured by deploy/dagster.postgres.yaml unchanged.

A session fixture starts PostgreSQL from the Debian binaries (scripts/install installs them) on
127.0.0.1 and a free port, as the `postgres` OS user when the tests run as root (PostgreSQL
refuses root), and stops it at teardown. Each run worker below is a separate OS process with its
own DagsterInstance, as in production: what they share is only the database.
"""

import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from featureinterp.presets import get_preset
from featureinterp.storage import ArrayBundle, load_arrays
from featureinterp_assets.constants import POOL_GPU, STORAGE_IO
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.partitions import layer_partitions, register_layers
from tests.helpers import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = REPO / "deploy" / "dagster.postgres.yaml"
SHARDS = dg.StaticPartitionsDefinition(["s0", "s1", "s2"])
WORKER_TIMEOUT_S = 300


# --- a small partitioned asset that does real work -------------------------------------------


class Signals(dg.Config):
    """Choreography between run workers in different processes (all off by default)."""

    folder: str = ""
    announce: str = ""
    """File created in `folder` when the step starts."""
    wait_for: list[str] = []
    """Files in `folder` that must exist before the step goes on."""
    hold_until_queued: str = ""
    """Pool in which a step of another run must be waiting before this step finishes."""


def _signal(context: dg.AssetExecutionContext, config: Signals) -> None:
    folder = Path(config.folder)
    if config.announce:
        (folder / config.announce).touch()
    deadline = time.monotonic() + WORKER_TIMEOUT_S / 2
    while not all((folder / name).exists() for name in config.wait_for):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited in vain for {config.wait_for}")
        time.sleep(0.05)
    while config.hold_until_queued:
        info = context.instance.event_log_storage.get_concurrency_info(config.hold_until_queued)
        if any(s.run_id != context.run_id and s.assigned_timestamp is None for s in info.pending_steps):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no other run queued on pool {config.hold_until_queued}")
        time.sleep(0.05)


def shard_spectrum(key: str) -> np.ndarray:
    """Singular values of a seeded 512 x 128 Gaussian matrix: deterministic per partition key."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    x = np.random.default_rng(seed).standard_normal((512, 128))
    return np.linalg.svd(x, compute_uv=False).astype(np.float32)


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key=STORAGE_IO,
    check_specs=[dg.AssetCheckSpec("spectrum_sorted", asset="shard_stats")],
)
def shard_stats(context: dg.AssetExecutionContext, config: Signals):
    """Per shard: the spectrum, stored by the project's IO manager, with its top value as metadata."""
    _signal(context, config)
    out = {}
    for key in context.partition_keys:
        s = shard_spectrum(key)
        out[key] = ArrayBundle({"spectrum": s}, {"shard": key})
        context.add_asset_metadata({"top": float(s[0]), "pid": os.getpid()}, partition_key=key)
    yield dg.Output(out)
    ok = all(bool(np.all(np.diff(b["spectrum"]) <= 0)) for b in out.values())
    yield dg.AssetCheckResult(check_name="spectrum_sorted", passed=ok)


@dg.asset(partitions_def=SHARDS, io_manager_key=STORAGE_IO)
def gpu_gate(context: dg.AssetExecutionContext, config: Signals) -> dict:
    """Outside any pool: lets a run reach its `gpu` step only when the test says so."""
    _signal(context, config)
    return {"shard": context.partition_key}


@dg.asset(partitions_def=SHARDS, io_manager_key=STORAGE_IO, pool=POOL_GPU)
def gpu_shard(context: dg.AssetExecutionContext, config: Signals, gpu_gate: dict) -> ArrayBundle:
    """A step in the `gpu` pool, like the subject-model steps."""
    _signal(context, config)
    (gate,) = gpu_gate.values()  # partitioned inputs arrive as {partition key: value}
    return ArrayBundle({"spectrum": shard_spectrum(gate["shard"])}, {"shard": context.partition_key})


ASSETS = [shard_stats, gpu_gate, gpu_shard]


def _materialize(instance, selection, storage: str, run_config=None, **kwargs):
    return dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources={STORAGE_IO: StorageIOManager(base_dir=storage)},
        run_config=run_config,
        raise_on_error=False,
        **kwargs,
    )


def _worker() -> None:
    """A run worker in its own process: `python -c ... _worker()` with a JSON job in argv[1]."""
    job = json.loads(sys.argv[1])
    with dg.DagsterInstance.get() as instance:  # $DAGSTER_HOME: the deploy config
        result = _materialize(
            instance, job["selection"], job["storage"], job["run_config"], partition_key=job["partition"]
        )
    print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)


def _run_workers(home: Path, storage: Path, selection: list[str], signals: dict[str, dict]) -> list[str]:
    """Start one worker process per partition (`signals`: partition -> op -> Signals) at once;
    returns their run ids in the same order."""
    procs = []
    for partition, ops in signals.items():
        job = {
            "selection": selection,
            "storage": str(storage),
            "partition": partition,
            "run_config": {"ops": {op: {"config": cfg} for op, cfg in ops.items()}},
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from tests.featureinterp_assets.test_postgres import _worker; _worker()",
                    json.dumps(job),
                ],
                cwd=REPO,
                env={**os.environ, "DAGSTER_HOME": str(home)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    run_ids = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report["success"], f"run {report['run_id']} failed:\n{err[-3000:]}"
        run_ids.append(report["run_id"])
    return run_ids


# --- the PostgreSQL server ---------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    """Debian's server binaries: PostgreSQL 15 when present, else the newest installed."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()),
        key=lambda p: int(p.parts[-3]),
    )
    preferred = [p for p in found if p.parts[-3] == "15"]
    return (preferred or found)[-1].parent if found else None


def _install_postgres() -> str:
    """Try what scripts/install does (Debian package `postgresql`); returns why it did not work."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get, so the Debian package `postgresql` cannot be installed here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=900)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "apt-get install postgresql timed out"
    return "" if r.returncode == 0 else f"apt-get install postgresql failed: {r.stderr.strip()[-500:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PgServer:
    port: int
    superuser: str
    password: str
    host: str = "127.0.0.1"

    def connect(self, db: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.superuser, password=self.password, dbname=db
        )
        conn.autocommit = True
        return conn


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        why = _install_postgres()
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip(f"PostgreSQL server binaries absent (/usr/lib/postgresql/*/bin) and {why}")
    as_postgres: list[str] = []
    uid = gid = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` OS user to run the server as")
        uid, gid = entry.pw_uid, entry.pw_gid
        as_postgres = (
            ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else ["sudo", "-u", "postgres"]
        )
    # /tmp itself, not pytest's tmp dirs: those are private to the test user (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="featureinterp-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    sock.mkdir()
    if uid is not None:
        for path in (root, sock, root / "pwfile"):
            os.chown(path, uid, gid)

    def pg(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            detail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{r.stdout}{r.stderr}\n{detail}")
        return r

    pg(
        str(bindir / "initdb"),
        "-D", str(data), "-U", "postgres", f"--pwfile={root / 'pwfile'}",
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    port = _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # a throw-away test server
    )
    try:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        yield PgServer(port=port, superuser="postgres", password=password)
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_env(pg_server, tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh database and role, DAGSTER_HOME holding deploy/dagster.postgres.yaml verbatim, and the
    DAGSTER_PG_* variables it reads (set for this module, inherited by the worker processes)."""
    suffix = secrets.token_hex(4)
    db, user, password = f"dagster_{suffix}", f"dagster_{suffix}", secrets.token_urlsafe(16)
    conn = pg_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {user} LOGIN PASSWORD %s", (password,))
            cur.execute(f"CREATE DATABASE {db} OWNER {user}")
    finally:
        conn.close()
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(DEPLOY_CONFIG, home / "dagster.yaml")
    env = {
        "DAGSTER_PG_HOST": pg_server.host,
        "DAGSTER_PG_PORT": str(pg_server.port),
        "DAGSTER_PG_USER": user,
        "DAGSTER_PG_PASSWORD": password,
        "DAGSTER_PG_DB": db,
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield home, env


@pytest.fixture(scope="module")
def instance(pg_env) -> Iterator[dg.DagsterInstance]:
    home, _ = pg_env
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


# --- tests ---------------------------------------------------------------------------------------


def test_deploy_config_gives_postgres_storages_queue_and_pools(instance, pg_env):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.pool_granularity.value == "op"
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config.max_concurrent_runs == 8
    # secrets only through the environment: every connection setting is an `env:` reference
    settings = yaml.safe_load(DEPLOY_CONFIG.read_text())["storage"]["postgres"]["postgres_db"]
    connection = {k: v for k, v in settings.items() if k != "scheme"}
    assert set(connection) == {"hostname", "port", "username", "password", "db_name"}
    assert all(set(v) == {"env"} for v in connection.values())
    # our real dynamic layer partitions live in the same database
    preset = get_preset("embedded-tiny")
    assert register_layers(instance, preset) == list(preset.layer_keys)
    assert instance.get_dynamic_partitions(layer_partitions(preset).name) == list(preset.layer_keys)


def test_partitioned_backfill_run_lands_in_postgres(instance, tmp_path):
    storage = tmp_path / "storage"
    tags = {PARTITION_RANGE_START_TAG: "s0", PARTITION_RANGE_END_TAG: "s2"}
    result = _materialize(instance, ["shard_stats"], str(storage), tags=tags)
    assert result.success
    key = dg.AssetKey("shard_stats")
    assert instance.get_materialized_partitions(key) == {"s0", "s1", "s2"}
    for shard in ("s0", "s1", "s2"):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[shard]), limit=1
        ).records
        assert record.run_id == result.run_id
        stored, meta = load_arrays(storage / "shard_stats" / shard)
        assert meta == {"shard": shard}
        np.testing.assert_array_equal(stored["spectrum"], shard_spectrum(shard))
        top = record.asset_materialization.metadata["top"].value
        assert top == pytest.approx(float(stored["spectrum"][0]))
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"spectrum_sorted": True}
    run = instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags[PARTITION_RANGE_END_TAG] == "s2"


def test_two_run_workers_write_concurrently(instance, pg_env, tmp_path):
    home, _ = pg_env
    storage = tmp_path / "storage"
    meet = {"folder": str(tmp_path)}  # each run waits for the other: both are in progress at once
    signals = {
        "s0": {"shard_stats": {**meet, "announce": "s0", "wait_for": ["s1"]}},
        "s1": {"shard_stats": {**meet, "announce": "s1", "wait_for": ["s0"]}},
    }
    run_ids = _run_workers(home, storage, ["shard_stats"], signals)
    # both materializations are in the shared event log, each from its own process and run
    key = dg.AssetKey("shard_stats")
    pids = set()
    for shard, run_id in zip(("s0", "s1"), run_ids, strict=True):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[shard]), limit=10
        ).records
        assert run_id in {r.run_id for r in records}
        mine = next(r for r in records if r.run_id == run_id)
        pids.add(mine.asset_materialization.metadata["pid"].value)
        np.testing.assert_array_equal(
            load_arrays(storage / "shard_stats" / shard)[0]["spectrum"], shard_spectrum(shard)
        )
    assert len(pids) == 2 and os.getpid() not in pids
    # the run storage holds both runs, succeeded, and they were in progress at the same time
    runs = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
    assert {r.dagster_run.run_id for r in runs} == set(run_ids)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert {r.dagster_run.tags["dagster/partition"] for r in runs} == {"s0", "s1"}
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs)


def _step_window(instance: dg.DagsterInstance, run_id: str, step_key: str) -> tuple[float, float]:
    events = instance.all_logs(run_id)
    start = next(
        e.timestamp
        for e in events
        if e.step_key == step_key and e.dagster_event_type == dg.DagsterEventType.STEP_START
    )
    end = next(
        e.timestamp
        for e in events
        if e.step_key == step_key and e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS
    )
    return start, end


def test_gpu_pool_lets_one_step_at_a_time_across_runs(instance, pg_env, tmp_path):
    """A `gpu` limit set with the documented command holds across run workers, claimed in Postgres.

    Set explicitly, as deploy/dagster.postgres.yaml says: with only `default_limit`, two runs that
    first use a pool together race to create its row and one fails (dagster-io/dagster#33552).
    Run B asks for the slot while run A visibly holds it: Dagster 1.13's Postgres slot claim is
    not atomic, so two claims within the same milliseconds could both succeed.
    """
    home, _ = pg_env
    dagster_cli = Path(sys.executable).with_name("dagster")
    subprocess.run(
        [str(dagster_cli), "instance", "concurrency", "set", POOL_GPU, "1"],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    folder = {"folder": str(tmp_path)}
    signals = {
        # run A takes the slot and keeps it until run B's gpu step is queued behind it
        "s0": {
            "gpu_gate": folder,
            "gpu_shard": {**folder, "announce": "holding", "hold_until_queued": POOL_GPU},
        },
        # run B goes for the slot only once A holds it
        "s1": {"gpu_gate": {**folder, "wait_for": ["holding"]}, "gpu_shard": folder},
    }
    run_a, run_b = _run_workers(home, tmp_path / "storage", ["gpu_gate", "gpu_shard"], signals)
    a_start, a_end = _step_window(instance, run_a, "gpu_shard")
    b_start, b_end = _step_window(instance, run_b, "gpu_shard")
    assert a_end <= b_start  # B's step ran only after A's had released the slot
    blocked = [
        e.timestamp
        for e in instance.all_logs(run_b)
        if e.step_key == "gpu_shard" and "blocked by limit for pool gpu" in (e.message or "")
    ]
    assert blocked and a_start < blocked[0] < a_end
    info = instance.event_log_storage.get_concurrency_info(POOL_GPU)
    assert info.slot_count == 1 and not info.claimed_slots
