"""featureinterp.progress: Progress logs done/total, percent, rate and ETA, at most once per
``every_s`` and always on the final update."""

import logging
import re

from featureinterp.progress import Progress


def test_logs_the_final_line_and_throttles_the_rest():
    lines: list[str] = []
    progress = Progress("embedding", 10, unit="rows", log=lines.append, every_s=3600)
    progress.update(4)
    progress.update(3)
    assert lines == [], "no line before every_s has passed"
    progress.update(3)
    assert len(lines) == 1
    assert lines[0].startswith("embedding: 10/10 rows (100%), ")
    assert re.search(r"rows/s, elapsed \d+s, ETA 0s$", lines[0])


def test_every_update_logs_when_every_s_is_zero_and_counts_are_grouped():
    lines: list[str] = []
    progress = Progress("training", 4000, unit="steps", log=lines.append, every_s=0)
    progress.update(1000)
    progress.update(1000)
    assert [line.split(", ")[0] for line in lines] == [
        "training: 1,000/4,000 steps (25%)",
        "training: 2,000/4,000 steps (50%)",
    ]


def test_line_before_any_progress_and_empty_total(caplog):
    assert "(0%)" in Progress("x", 5, log=lambda s: None).line() and "ETA inf" in Progress("x", 5).line()
    with caplog.at_level(logging.INFO, logger="featureinterp"):
        Progress("nothing", 0).update(0)  # default log: the featureinterp logger
    assert "nothing: 0/0 rows (100%)" in caplog.text
