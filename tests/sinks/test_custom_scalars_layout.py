"""TensorBoard's custom-scalars layout: the findings total unsmoothed, the flagged charts first across runs (as the
custom-scalars plugin merges the runs' layouts), findings at no tap."""

from __future__ import annotations

import json
import re

from helpers.photos import photo_batch
from rangewatch.sinks.loggers import (FINDINGS_CATEGORY, FLAGGED_CATEGORY, OTHER_CATEGORY, detail_tag, scalars_layout,
                                      tag)


def test_findings_at_no_tap_are_named_and_counts_are_a_margin_chart():
    where = "validation preview `tensor2img` (validation_step, demo.py:100)"
    layout = scalars_layout({"batch.gt": (3, False), "batch.lq": (3, True), "val/batch.lq": (3, True)}, elsewhere=(where,))
    assert [(c.title, c.closed) for c in layout.category] == [(FINDINGS_CATEGORY, False), (FLAGGED_CATEGORY, False),
                                                               (OTHER_CATEGORY, True)]  # healthy taps start closed
    total, per_kind = layout.category[0].chart
    assert total.WhichOneof("content") == "margin"  # drawn unsmoothed: a count of 1 shows as 1
    assert [(s.value, s.lower, s.upper) for s in total.margin.series] == [("rangewatch/findings/total",) * 3]
    assert per_kind.multiline.tag[0] == r"^rangewatch/findings/"
    # the findings category is the same whatever the run found: TensorBoard merges it across runs
    other = scalars_layout({"batch.x": (1, False)})
    assert other.category[0] == layout.category[0]
    # flagged: the finding at no tap, then the flagged taps (train before validation), two charts each
    flagged = [c.title for c in layout.category[1].chart]
    assert flagged[0].startswith(f"finding at {where}") and len(flagged) == 1 + 2 + 2
    assert [t.split(":")[0] for t in flagged[1:]] == ["batch.lq"] * 2 + ["val/batch.lq"] * 2
    assert [c.title.split(":")[0] for c in layout.category[2].chart] == ["batch.gt"] * 2
    # each tap: the per-channel detail group and the expected band; the compact group's out_of_range
    margin = layout.category[1].chart[1].margin
    assert margin.series[0].value == detail_tag("batch.lq", "mean", 0) and margin.series[-1].upper == detail_tag("batch.lq", "expected_max")
    pattern = re.compile(layout.category[1].chart[2].multiline.tag[0])
    assert pattern.search(tag("batch.lq", "out_of_range")) and pattern.search(detail_tag("batch.lq", "nonfinite"))
    assert not pattern.search(tag("batch.lq", "min"))
    # with no finding the three categories are still written (TensorBoard merges later runs into the first run's)
    assert [c.title for c in other.category] == [FINDINGS_CATEGORY, FLAGGED_CATEGORY, OTHER_CATEGORY]
    assert len(other.category[1].chart) == 0


def _served_layout(logdir) -> dict:
    """The layout TensorBoard's custom-scalars plugin serves for every run under ``logdir`` (its ``/layout`` route)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.custom_scalar import custom_scalars_plugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    plugin = custom_scalars_plugin.CustomScalarsPlugin(base_plugin.TBContext(data_provider=provider, logdir=str(logdir),
                                                                             multiplexer=mux))
    served = plugin.layout_impl(context.RequestContext(), "")
    return json.loads(served) if isinstance(served, str) else served


def test_several_runs_flagged_charts_come_first(tmp_path):
    """Three runs in one log directory, written by the plain-loop front end: the first (in TensorBoard's sorted run
    order) has no finding, the second flags ``batch.lq``, the third ``batch.gt``. The served layout opens on both
    flagged taps, before any healthy one."""
    import rangewatch
    from torch.utils.tensorboard import SummaryWriter

    unit = photo_batch(8, 16).float() / 255
    symmetric = unit * 2 - 1
    runs = {"a_clean": (symmetric, symmetric), "b_lq_unit": (unit, symmetric), "c_gt_unit": (symmetric, unit)}
    flagged_in = {}
    for run, (lq, gt) in runs.items():
        writer = SummaryWriter(str(tmp_path / run))
        with rangewatch.watch(expect={"batch.lq": "symmetric", "batch.gt": "symmetric"}, logger=writer, policy="log",
                              check_first_n=2, log_every_n_steps=2) as watch:
            for i in (0, 4, 0, 4):
                watch.batch({"lq": lq[i:i + 4], "gt": gt[i:i + 4]})
                watch.step()
        writer.close()
        flagged_in[run] = {f.where for f in watch.findings if f.kind == "mismatch"}
    assert flagged_in == {"a_clean": set(), "b_lq_unit": {"batch.lq"}, "c_gt_unit": {"batch.gt"}}

    served = _served_layout(tmp_path)
    titles = [c["title"] for c in served["category"]]
    assert titles == [FINDINGS_CATEGORY, FLAGGED_CATEGORY, OTHER_CATEGORY]
    flagged = served["category"][1]
    assert not flagged.get("closed") and served["category"][2].get("closed")
    charts = [c["title"].split(":")[0] for c in flagged["chart"]]
    # every run's flagged taps, the second run's then the third's (the first run flagged none)
    assert charts == ["batch.lq"] * 2 + ["batch.gt"] * 2
    # every tag a flagged chart names was logged by the runs (the charts draw data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = set()
    for run in runs:
        acc = EventAccumulator(str(tmp_path / run), size_guidance={"scalars": 0})
        acc.Reload()
        logged |= set(acc.Tags()["scalars"])
    for chart in flagged["chart"]:
        for s in chart.get("margin", {}).get("series", []):
            assert {s["value"], s["lower"], s["upper"]} <= logged
