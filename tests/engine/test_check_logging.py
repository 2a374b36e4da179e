"""A check's writes as a collaborator (rangewatch/engine/check_logging.py), without Lightning or an engine: into a
real SummaryWriter, read back from the event file."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.utils.tensorboard import SummaryWriter

from rangewatch.engine.check_logging import CheckLogging
from rangewatch.findings.finding import mismatch_finding
from rangewatch.findings.log import FindingsLog
from rangewatch.sinks.loggers import LoggerSink
from rangewatch.stats.range_stats import RangeStats


def _summary(x):
    st = RangeStats(channel_dim=1, sync_on_compute=False, hist_bins=8)
    st.update(x, detail=True)
    return st.compute()


def _events(logdir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(path)).Load():
            out += [(ev.step, v.tag) for v in ev.summary.value]
    return out


def test_overview_counts_histograms_of_flagged_taps_and_the_layout_once_per_change(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    sink = LoggerSink([writer])  # as Watch.connect sets a SummaryWriter up
    assert sink.has_tensorboard and sink.active
    log = FindingsLog("log")
    taps = {"batch.a": SimpleNamespace(latent=None), "batch.b": SimpleNamespace(latent=None)}
    summaries = [("batch.a", _summary(torch.rand(2, 3, 8, 8))), ("batch.b", _summary(torch.rand(2, 3, 8, 8)))]
    logging = CheckLogging()
    found = [mismatch_finding(where="batch.a", observed="unit", expected="symmetric", evidence="e", fix="f", step=0)]
    logging.write(sink, log, taps, summaries, found, 0, "flagged")
    log.add(found[0])
    logging.write(sink, log, taps, summaries, [], 1, "flagged")  # nothing changed: no new layout
    logging.write(sink, log, {**taps, "batch.c": SimpleNamespace(latent=None)},
                  [*summaries, ("batch.c", _summary(torch.rand(2, 1, 8, 8)))], [], 2, "flagged")  # a new tap: a new layout
    writer.close()
    events = _events(tmp_path)
    layouts = [s for s, t in events if t == "custom_scalars__config__"]
    assert layouts == [0, 2]
    hist = {t for _, t in events if "/hist/" in t}
    assert hist and all(t.startswith("rangewatch/batch.a/") for t in hist)  # "flagged": only the tap with a finding
    assert (0, "rangewatch/findings/mismatch") in events and (1, "rangewatch/findings/total") in events
