"""The engine's findings reporting as a collaborator (rangewatch/engine/reporter.py) and the surroundings it reads
(rangewatch/engine/surroundings.py), without Lightning or an engine: each finding once, the policy applied, the
fresh ones written to a real SummaryWriter, internal errors once with only their tap switched off, notes once."""

from __future__ import annotations

import pytest
from torch.utils.tensorboard import SummaryWriter

from rangewatch import RangeMismatchError
from rangewatch.engine.reporter import FindingsReporter
from rangewatch.engine.surroundings import Surroundings
from rangewatch.engine.tapset import _Tap
from rangewatch.findings.finding import mismatch_finding
from rangewatch.sinks.loggers import LoggerSink
from rangewatch.stats.range_stats import RangeStats


def _mismatch(step):
    return mismatch_finding(where="batch.image", observed="unit", expected="symmetric", evidence="values in [0, 1]",
                            fix="x * 2 - 1", step=step)


def _text_steps(logdir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [ev.step for path in sorted(logdir.glob("events.out.tfevents.*")) for ev in EventFileLoader(str(path)).Load()
            for v in ev.summary.value if v.tag.startswith("rangewatch/findings")]


def test_each_finding_is_reported_once_said_once_and_written_to_the_sink(tmp_path):
    said = []
    env = Surroundings(lambda level, text: said.append((level, text)))
    writer = SummaryWriter(str(tmp_path))
    env.sink = LoggerSink([])
    env.sink.writers.append(writer)
    rep = FindingsReporter("warn", env)
    first = rep.report([_mismatch(5)], 5)
    again = rep.report([_mismatch(6)], 6)  # the same finding at a later step: not fresh, nothing written
    writer.close()
    assert [f.where for f in first] == ["batch.image"] and again == []
    assert rep.log.findings == first
    assert [lvl for lvl, _ in said] == ["warn"] and "batch.image" in said[0][1]
    assert _text_steps(tmp_path) == [5]


def test_policy_raise_raises_with_the_finding_logged():
    rep = FindingsReporter("raise", Surroundings(lambda level, text: None))
    with pytest.raises(RangeMismatchError) as e:
        rep.report([_mismatch(3)], 3)
    assert [f.kind for f in e.value.findings] == ["mismatch"] and rep.log.findings == e.value.findings
    rep.log.policy = "log"
    assert rep.report([_mismatch(4)], 4) == []  # reported once, even after a raise


def test_an_internal_error_switches_off_its_tap_only_and_is_said_once():
    said = []
    env = Surroundings(lambda level, text: said.append((level, text)))
    env.clock = lambda: 12
    rep = FindingsReporter("warn", env)
    tap, other = _Tap("batch.a", 1, RangeStats()), _Tap("batch.b", 1, RangeStats())
    rep.internal("batch.a", ValueError("bad shape"), tap)
    rep.internal("batch.a", ValueError("bad shape"), tap)  # the same error again: one finding, one warning
    assert (tap.disabled, tap.error) == (True, "ValueError: bad shape") and not other.disabled
    [f] = rep.log.findings
    assert (f.kind, f.where, f.observed, f.step) == ("internal", "batch.a", "ValueError: bad shape", 12)
    assert f.evidence == "rangewatch failed while watching batch.a and switched this tap off; training goes on"
    assert said == [("warn", "rangewatch: internal error at batch.a while watching batch.a (ValueError: bad shape); "
                             "this tap is switched off")]
    rep.internal("logging", OSError("disk full"), None)  # no tap: the step is skipped, nothing switched off
    assert rep.log.findings[-1].evidence == ("rangewatch failed while writing statistics or findings to the loggers; "
                                             "that step is skipped, training goes on")


def test_notes_are_said_once_per_key_and_the_clock_reads_the_own_counter():
    said = []
    env = Surroundings(lambda level, text: said.append((level, text)))
    rep = FindingsReporter("log", env)
    rep.note_once("k", "rangewatch: one")
    rep.note_once("k", "rangewatch: two")
    rep.note_once("j", "rangewatch: three")
    assert said == [("info", "rangewatch: one"), ("info", "rangewatch: three")]
    assert rep.notes == {"k": "rangewatch: one", "j": "rangewatch: three"}
    assert (env.step(), env.now()) == (0, 0)
    env.own_step = 7
    assert env.now() == 7
    env.clock = lambda: None  # a clock that has no step yet
    assert (env.step(), env.now()) == (None, 0)


def test_findings_at_the_end_of_a_run_are_warnings_said_as_every_finding_is_said():
    """``report_as_warnings`` (a run that ended before its check window closed): never raised, even under
    ``policy="raise"``, each once, and said in the console layout of the findings log (headline, fix, pointer)."""
    from rangewatch.findings.finding import unseen_finding

    said = []
    env = Surroundings(lambda level, text: said.append((level, text)))
    rep = FindingsReporter("raise", env)
    f = unseen_finding("batch.image", declared="expect={'batch.image': 'unit'}", batches=1, evidence="no tensor at batch.image",
                       fix="name the path that holds the images", raising=True, step=0)
    fresh = rep.report_as_warnings(lambda: [f], 0)
    assert [(g.kind, g.severity) for g in fresh] == [("unseen", "warning")] and rep.report_as_warnings(lambda: [f], 1) == []
    [(level, text)] = said
    assert level == "warn"
    assert text.splitlines() == [
        "rangewatch: [unseen] batch.image at step 0: saw never seen in the first 1 training batch; expected declared: "
        "expect={'batch.image': 'unit'}",
        "  evidence: no tensor at batch.image ...",
        "  fix: name the path that holds the images",
        "  full evidence: Finding.evidence, `rangewatch report LOGDIR`, TensorBoard's RANGEWATCH tab",
    ]
