"""`featureinterp run`'s terminal: stage lines, partition progress from the runs, the log file."""

import io
import logging

from featureinterp_assets.terminal import Terminal, partition_finished


def test_plain_output_is_one_line_per_stage_counting_the_partitions_the_steps_report(tmp_path):
    out = io.StringIO()  # not a terminal: no bar redraws
    term = Terminal(tmp_path / "logs" / "run.log", stream=out)
    assert not term.interactive and term.dagster_level == "CRITICAL"  # failures: one line each, by us
    term.start_logging()
    with term.session():
        with term.stage("explanations + scores", 3):
            term.run_started(steps=2)  # a run of two steps over 3 partitions
            for key in ("a", "b", "c"):
                partition_finished(key, ok=True)
            partition_finished("a", ok=True)
            partition_finished("b", ok=False)
            term.run_finished(3, failed=1)
        logging.getLogger("featureinterp.test").info("an INFO line: to the file only")
        term.note("--> materializing x")  # a detail line: file only when quiet
    partition_finished("d", ok=True)  # after the session: nobody listens, nothing breaks
    lines = out.getvalue().splitlines()
    assert lines[0] == f"log: {tmp_path / 'logs' / 'run.log'}"
    assert lines[1].startswith("explanations + scores: 3/3 partitions, 1 failed in "), lines
    assert len(lines) == 2
    text = (tmp_path / "logs" / "run.log").read_text()
    assert "an INFO line: to the file only" in text and "--> materializing x" in text
    assert not any(h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "") == str(tmp_path / "logs" / "run.log"))


def test_a_stage_counts_fractions_of_partitions_while_its_steps_run(tmp_path):
    term = Terminal(tmp_path / "run.log", stream=io.StringIO())
    with term.session(), term.stage("records", 4):
        term.run_started(steps=4)
        partition_finished("a", ok=True)
        partition_finished("b", ok=True)
        assert term._stage is not None and term._stage.done == 0.5  # two of four steps of one partition
        term.run_finished(4)
        assert term._stage.done == 4


def test_verbose_streams_the_detail_lines_and_dagster_debug(tmp_path):
    out = io.StringIO()
    term = Terminal(tmp_path / "run.log", verbose=True, stream=out)
    assert term.run_config() == {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
    with term.session():
        term.note("--> materializing x")
        with term.stage("records", 1):
            term.run_finished(1)
    assert out.getvalue().splitlines() == ["--> materializing x"]  # no stage line: the run lines say it


def test_a_quiet_run_says_its_warnings_one_line_each_and_files_every_event(tmp_path):
    """Dagster's console logger is silent when quiet (a failure would print its trace twice); what
    an asset warns about is still said, once, after its run, and every event is in the file."""
    import dagster as dg

    @dg.asset
    def warns(context: dg.AssetExecutionContext) -> int:
        context.log.warning("feature 3 never fires: nothing to explain")
        context.log.info("an info line")
        return 1

    out = io.StringIO()
    term = Terminal(tmp_path / "run.log", stream=out)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([warns], instance=instance, run_config=term.run_config())
        with term.session():
            term.append_run_log(instance, result.run_id)
    assert out.getvalue().splitlines() == ["warning (warns): feature 3 never fires: nothing to explain"]
    text = (tmp_path / "run.log").read_text()
    assert "an info line" in text and "STEP_SUCCESS" in text
