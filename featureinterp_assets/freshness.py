"""What `featureinterp run` must (re)compute: a stored value counts as done only when it is current.

A partition is *done* when all of these hold, and is computed again otherwise:

- Dagster's status of the partition is MATERIALIZED: not missing, and not FAILED (a later run
  that planned it failed: e.g. `run --force` over a corrupt input kept the old value; that old
  value is not the requested one);
- its latest materialization carries the asset's current code version, which includes the
  fingerprint of the preset fields it depends on (featureinterp/provenance.py): an edited preset
  file makes exactly the affected values stale;
- its stored files are intact (``StorageIOManager.problem``: the folder exists, each file has the
  size and checksum written with it).

Summaries (layer tables, figures, exports) are *behind* when they are missing, stale, or older
than any materialization of what they read, so a slice of the grid (one feature, one condition)
always ends with summaries rebuilt from everything stored, never from the slice alone.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import dagster as dg

from featureinterp.config import Preset

CODE_VERSION_TAG = "dagster/code_version"
PID_TAG = "featureinterp/pid"
"""Run tag: the process that executes the run in-process (`featureinterp run`)."""
HOST_TAG = "featureinterp/host"

Problem = Callable[[dg.AssetKey, str | None], str | None]
"""(asset key, partition key) -> None if the stored value is intact, else what is wrong with it."""


def asset_key(name: str) -> dg.AssetKey:
    """``scores/tree`` -> AssetKey(["scores", "tree"])."""
    return dg.AssetKey(name.split("/"))


@dataclass
class Freshness:
    """The current code versions and partitions of a code location, read against an instance."""

    instance: dg.DagsterInstance
    versions: dict[str, str | None]
    """Asset (``scores/tree``) -> its current code version (with the preset's fingerprint)."""
    partitions: dict[str, dg.PartitionsDefinition | None]
    problem: Problem | None = None
    """Checks a stored value's files; None: trust them."""
    notes: list[str] = field(default_factory=list)
    """One line per value found stale or damaged (printed by the command once each)."""
    _versions_said: set[tuple[str, str | None, str | None]] = field(default_factory=set)

    @classmethod
    def of(cls, defs: dg.Definitions, instance: dg.DagsterInstance, problem: Problem | None = None) -> Freshness:
        versions: dict[str, str | None] = {}
        partitions: dict[str, dg.PartitionsDefinition | None] = {}
        for a in defs.assets or ():
            if isinstance(a, dg.AssetsDefinition):
                for key, version in a.code_versions_by_key.items():
                    versions[key.to_user_string()] = version
                    partitions[key.to_user_string()] = a.partitions_def
        return cls(instance, versions, partitions, problem)

    def _note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)
            print(f"    {line}", flush=True)

    def done(self, asset: str, keys: Iterable[str | None]) -> set[str | None]:
        """The partitions of ``keys`` (None: an unpartitioned asset) whose stored value is current."""
        keys = list(keys)
        key = asset_key(asset)
        partitions_def = self.partitions.get(asset)
        if partitions_def is None:
            latest = self.latest(asset, None)
            ok = latest is not None and self._current(asset, None, latest)
            return {None} if ok else set()
        named = [k for k in keys if k is not None]
        status = self.instance.get_status_by_partition(key, named, partitions_def) or {}
        materialized = [k for k in named if status.get(k) == dg.AssetPartitionStatus.MATERIALIZED]
        for k in named:
            if status.get(k) == dg.AssetPartitionStatus.FAILED:
                self._note(f"{asset} {k}: its last run failed; computing it again")
        versions = self._latest_versions(asset, materialized)
        return {k for k in materialized if self._current(asset, k, versions.get(k))}

    def _current(self, asset: str, partition: str | None, stored_version: str | None) -> bool:
        want = self.versions.get(asset)
        where = f"{asset}{' ' + partition if partition else ''}"
        if want is not None and stored_version != want:
            # one line per asset family and version change: an upgrade or an edited preset can
            # make hundreds of partitions stale for one reason (every value is in ``notes``)
            family = asset.split("/")[0] + ("/*" if "/" in asset else "")
            said = (family, stored_version, want)
            line = (
                f"{where}: stored by code/settings version {stored_version}, now {want} (the preset "
                "or the code changed); computing it again"
            )
            if said in self._versions_said:
                self.notes.append(line)
            else:
                self._versions_said.add(said)
                first = f" (first: {partition})" if partition else ""
                self._note(
                    f"{family}: stored by code/settings version {stored_version}, now {want} (the preset "
                    f"or the code changed); computing those values again{first}"
                )
            return False
        if self.problem is not None:
            problem = self.problem(asset_key(asset), partition)
            if problem:
                self._note(f"{where}: {problem}; computing it again")
                return False
        return True

    def latest(self, asset: str, partition: str | None) -> str | None:
        """The code version of the latest materialization (None: never materialized)."""
        record = self._latest_record(asset, partition)
        if record is None or record.asset_materialization is None:
            return None
        return (record.asset_materialization.tags or {}).get(CODE_VERSION_TAG, "")

    def _latest_record(self, asset: str, partition: str | None) -> dg.EventLogRecord | None:
        records_filter = dg.AssetRecordsFilter(
            asset_key=asset_key(asset), asset_partitions=[partition] if partition else None
        )
        records = self.instance.fetch_materializations(records_filter, limit=1).records
        return records[0] if records else None

    def _latest_versions(self, asset: str, partitions: list[str]) -> dict[str, str | None]:
        """Partition -> code version of its latest materialization (one query per asset)."""
        latest: dict[str, str | None] = {}
        if not partitions:
            return latest
        cursor = None
        while True:  # oldest first, in pages: later materializations overwrite earlier ones
            page = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key(asset), asset_partitions=partitions),
                limit=5_000,
                cursor=cursor,
                ascending=True,
            )
            for record in page.records:
                mat = record.asset_materialization
                if mat is not None and mat.partition is not None:
                    latest[mat.partition] = (mat.tags or {}).get(CODE_VERSION_TAG)
            if not page.has_more:
                return latest
            cursor = page.cursor

    def stored(self, inputs: Mapping[str, list[str] | None]) -> bool:
        """True when any of ``inputs`` (asset -> partitions, None: all) was ever materialized."""
        return any(
            self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key(a), asset_partitions=keys), limit=1
            ).records
            for a, keys in inputs.items()
            if a in self.versions
        )

    def behind(self, asset: str, partition: str | None, inputs: dict[str, list[str] | None]) -> bool:
        """True when a summary must be rebuilt: it is not done (missing, failed, stale, damaged)
        or any of its ``inputs`` (asset -> the partitions it reads, None: all) was materialized
        after it."""
        if partition not in self.done(asset, [partition]):
            return True
        own = self._latest_record(asset, partition)
        assert own is not None  # done implies materialized
        for upstream, keys in inputs.items():
            if upstream not in self.versions:
                continue
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key(upstream), asset_partitions=keys), limit=1
            ).records
            if records and records[0].storage_id > own.storage_id:
                return True
        return False


def stored_value_problem(defs: dg.Definitions) -> Problem:
    """The check of a stored value's files (``StorageIOManager.problem``), and for the embeddings
    also of the LanceDB table it names: a stored value can be intact while its table is not."""
    from featureinterp_assets.constants import STORAGE_IO
    from featureinterp_assets.io_managers import StorageIOManager
    from featureinterp_assets.resources import LanceDBResource

    resources = defs.resources or {}
    storage, lancedb = resources[STORAGE_IO], resources["lancedb"]
    assert isinstance(storage, StorageIOManager) and isinstance(lancedb, LanceDBResource)

    def problem(key: dg.AssetKey, partition: str | None) -> str | None:
        found = storage.problem(key, partition)
        if found is None and key == dg.AssetKey("corpus_embeddings"):
            found = lancedb.table_problem(storage.stored(key))
        return found

    return problem


def run_tags() -> dict[str, str]:
    """Tags of a run executed in this process: which process, on which machine (for the sweep)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def sweep_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs a killed `featureinterp run` left STARTED (or STARTING): their process,
    named by the run's tags, no longer exists on this machine. Returns their run ids.

    Dagster's run monitoring does this for runs launched through a run launcher; an in-process
    run (``dg.materialize``) has no worker to monitor, so a SIGKILL leaves it STARTED forever and
    the UI shows its partitions in progress."""
    swept = []
    active = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    for run in instance.get_runs(filters=active):
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if pid is None or host != socket.gethostname() or _alive(int(pid)):
            continue
        instance.report_run_failed(
            run, f"the process that ran it (pid {pid}) is gone: killed before the run finished"
        )
        swept.append(run.run_id)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        return True
    return True


def with_conditions(preset: Preset, extra: Iterable[str]) -> Preset:
    """``preset`` whose conditions also hold ``extra`` (after its own, in the order given)."""
    conditions = tuple(dict.fromkeys((*preset.explain.conditions, *extra)))
    if conditions == preset.explain.conditions:
        return preset
    return preset.replace(explain=dataclasses.replace(preset.explain, conditions=conditions))


def stored_conditions(instance: dg.DagsterInstance) -> list[str]:
    """Conditions with explanations in the instance: a condition a run added with ``--conditions``
    stays in the figures of later runs."""
    from featureinterp.explain.conditions import CONDITIONS

    keys = instance.get_asset_keys(prefix=["explanations"])
    return [k.path[1] for k in keys if len(k.path) == 2 and k.path[1] in CONDITIONS]


def stored_features(instance: dg.DagsterInstance, layer: str) -> set[int]:
    """Features held by the latest `sae_activations` of a layer (its ``feature_indices`` metadata;
    a materialization written before that field counts as holding none, so it is rebuilt)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("sae_activations"), asset_partitions=[layer]), limit=1
    ).records
    if not records:
        return set()
    mat = records[0].asset_materialization
    assert mat is not None  # the filter fetches materialization records only
    indices = mat.metadata.get("feature_indices")  # written as dg.MetadataValue.json
    return {int(f) for f in indices.value or ()} if isinstance(indices, dg.JsonMetadataValue) else set()


__all__ = ["Freshness", "run_tags", "stored_conditions", "stored_features", "stored_value_problem", "sweep_dead_runs", "with_conditions"]
