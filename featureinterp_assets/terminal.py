"""What `featureinterp run` shows while it works: one line per stage, the whole log in a file.

A run of the embedded default emits ~1,000 Dagster DEBUG events and a hundred database-migration
lines around ~20 that matter. By default the terminal shows one live line per stage (a progress
bar: partitions done / total, failures, rate, elapsed, ETA), warnings and failures in full, and
nothing else; every log line and every Dagster event of the invocation go to a log file whose path
is printed at the start and on failure. ``--verbose`` streams everything as before.

When stdout is not a terminal (CI logs, ``| tee``) no bar is redrawn: each stage prints one line
when it ends, and each failure its own line as it happens.

Partition progress comes from the runs themselves: ``dg.materialize`` executes in this process,
and ``batch.each_partition`` calls :func:`partition_finished` after each (step, partition), which
advances the current stage's bar.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import dagster as dg

_listener: Callable[[str, bool], None] | None = None
_lock = threading.Lock()


def partition_finished(key: str, ok: bool) -> None:
    """Called by a run's step after each partition it computed (``ok``: it succeeded)."""
    with _lock:
        listener = _listener
    if listener is not None:
        listener(key, ok)


@dataclass
class _Stage:
    name: str
    total: float | None
    unit: str
    start: float
    done: float = 0.0
    failed: int = 0
    task: int | None = None  # rich task id (interactive mode)


_DAGSTER_API_NOTES = ("BetaWarning", "PreviewWarning", "SupersessionWarning", "ExperimentalWarning")


def _not_ours_to_fix(record: logging.LogRecord) -> bool:
    """Console filter: drop Dagster's API-status warnings about this project's own code."""
    return not (record.name == "py.warnings" and any(w in record.getMessage() for w in _DAGSTER_API_NOTES))


def _quiet_libraries() -> None:
    """No per-model "Loading weights" bars from transformers, no tqdm bars, no Rust INFO/WARN lines from LanceDB
    ("No existing dataset ... will be created"): the stage lines say what runs."""
    import os

    # third-party tqdm bars (transformers' one-time GGUF conversion of SmolLM2) redraw one line per
    # tick into a log that is not a terminal; tqdm reads its defaults from TQDM_* variables
    os.environ.setdefault("TQDM_DISABLE", "1")
    # lancedb's own Rust logger reads LANCEDB_LOG (its wheel's env_logger); pylance's reads LANCE_LOG
    os.environ.setdefault("LANCEDB_LOG", "error")
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()


class Terminal:
    """The run's output: stage lines (live bars on a terminal), messages, and the log file.

    ``verbose``: stream every log line and Dagster event (DEBUG) to the console, as before
    issue 31; ``stream``: where stage lines go (stdout)."""

    def __init__(self, log_path: Path, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.log_path = log_path
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.interactive = not verbose and self.stream.isatty()
        self._progress: Any = None  # rich.progress.Progress while stages run on a terminal
        self._stage: _Stage | None = None
        self._steps = 1  # steps of the current run: each calls partition_finished per partition
        self._base = (0.0, 0)  # the stage's (done, failed) when the current run started
        self._file: logging.FileHandler | None = None
        self._handlers: list[logging.Handler] = []

    # ------------------------------------------------------------------ logging

    @property
    def dagster_level(self) -> str:
        """The console log level of Dagster's runs (their events all go to the instance and the file)."""
        # quiet: nothing live from Dagster's console logger (a failure would print its stack trace
        # twice); the run's own warnings are echoed one line each after it (append_run_log) and each
        # failure as one line with its reason, the traces being in the log file
        return "DEBUG" if self.verbose else "CRITICAL"

    def run_config(self) -> dict:
        """``run_config`` of every ``dg.materialize`` of the invocation: Dagster's console logger
        at this terminal's level."""
        return {"loggers": {"console": {"config": {"log_level": self.dagster_level}}}}

    def start_logging(self) -> None:
        """Root logging: everything (INFO and up) to the log file; the console gets warnings only
        (everything when verbose). Database migrations, model loads and our own INFO lines stay in
        the file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.FileHandler(self.log_path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.INFO if self.verbose else logging.WARNING)
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        if not self.verbose:
            # Python warnings through logging: all in the file; on the console all but Dagster's
            # notes that an API *we* call is in beta (nothing a user can act on)
            logging.captureWarnings(True)
            console.addFilter(_not_ours_to_fix)
            _quiet_libraries()
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        self._handlers = [self._file, console]
        for handler in self._handlers:
            root.addHandler(handler)
        self.say(f"log: {self.log_path}")

    def stop_logging(self) -> None:
        """Take this terminal's handlers off the root logger (a second `main()` in one process,
        as in the tests, starts its own)."""
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        self._handlers = []
        logging.captureWarnings(False)

    def append_run_log(self, instance: dg.DagsterInstance, run_id: str) -> None:
        """Every event of run ``run_id`` (as stored in the instance) into the log file, in order;
        quiet, the warnings our assets logged are also said on the console, one line each."""
        warnings = []
        with self.log_path.open("a", encoding="utf-8") as out:
            out.write(f"---- run {run_id}\n")
            for entry in instance.all_logs(run_id):
                when = dt.datetime.fromtimestamp(entry.timestamp).strftime("%Y-%m-%d %H:%M:%S")
                event = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
                level = logging.getLevelName(entry.level)
                out.write(f"{when} {level} {entry.step_key or '-'} {event} {entry.user_message}\n")
                if entry.dagster_event is None and entry.level == logging.WARNING:
                    warnings.append(f"warning ({entry.step_key or 'run'}): {entry.user_message}")
        if not self.verbose:
            for line in warnings:
                self.say(line)

    def note(self, text: str) -> None:
        """A detail line (which run materializes what, how long it took): the log file always,
        the console when verbose (the lines `featureinterp run` printed before issue 31)."""
        if self._file is not None:
            record = logging.LogRecord("featureinterp.run", logging.INFO, __file__, 0, text, None, None)
            self._file.handle(record)
        if self.verbose:
            print(text, file=self.stream, flush=True)

    # ------------------------------------------------------------------ lines and stages

    def say(self, text: str) -> None:
        """One line above the bars (or plain)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, total: float | None, unit: str = "partitions") -> Iterator[None]:
        """One stage of the run: its line shows ``done / total`` ``unit``; ``total`` None: not
        known up front (the bar pulses). Plain mode prints the line when the stage ends."""
        stage = _Stage(name, total, unit, time.perf_counter())
        self._stage = stage
        if self.interactive:
            progress = self._live()
            stage.task = progress.add_task(name, total=total, failed="", unit=unit)
        try:
            yield
        finally:
            self._stage = None
            if self.interactive and stage.task is not None:
                self._progress.update(stage.task, completed=stage.done, total=stage.total or stage.done)
            elif not self.verbose:
                self.say(self.stage_line(stage))

    def run_started(self, steps: int) -> None:
        """A run of ``steps`` steps starts in the current stage: each step reports each partition."""
        self._steps = max(1, steps)
        stage = self._stage
        self._base = (stage.done, stage.failed) if stage else (0.0, 0)

    def advance(self, partitions: float, failed: int = 0) -> None:
        """Move the current stage on by ``partitions`` (fractions: one step of several done)."""
        stage = self._stage
        if stage is None:
            return
        stage.done += partitions
        stage.failed += failed
        if self.interactive and stage.task is not None:
            self._progress.update(
                stage.task, completed=stage.done, failed=f"{stage.failed} failed" if stage.failed else ""
            )

    def run_finished(self, partitions: float, failed: int = 0) -> None:
        """After a run of ``partitions`` (``failed`` of them failed): the stage's counts are exact
        (the per-step fractions and per-step failure reports replaced)."""
        stage = self._stage
        if stage is not None:
            done, bad = self._base
            self.advance(done + partitions - stage.done, bad + failed - stage.failed)

    @staticmethod
    def stage_line(stage: _Stage) -> str:
        seconds = time.perf_counter() - stage.start
        total = f"/{stage.total:g}" if stage.total is not None else ""
        rate = f", {stage.done / seconds:.2f} {stage.unit}/s" if seconds > 0 and stage.done else ""
        failed = f", {stage.failed} failed" if stage.failed else ""
        return f"{stage.name}: {stage.done:g}{total} {stage.unit}{failed} in {seconds:.1f} s{rate}"

    def _live(self):  # noqa: ANN202 - rich.progress.Progress, imported lazily
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TextColumn("[red]{task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
        return self._progress

    def close_bars(self) -> None:
        """Stop redrawing: the stage lines stay as they are and what follows (the results table)
        prints below them."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def session(self) -> Iterator[Terminal]:
        """The invocation: partition reports reach this terminal; bars stop at the end."""
        global _listener

        def listen(key: str, ok: bool) -> None:
            self.advance(1.0 / self._steps, 0 if ok else 1)

        with _lock:
            _listener = listen
        try:
            yield self
        finally:
            with _lock:
                _listener = None
            self.close_bars()
            self.stop_logging()


__all__ = ["Terminal", "partition_finished"]
