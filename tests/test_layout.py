"""TensorBoard's custom-scalars layout: the findings chart unsmoothed and naming findings at no tap."""

from __future__ import annotations

from rangewatch.sinks.loggers import detail_tag, scalars_layout, tag


def test_findings_at_no_tap_are_named_and_counts_are_a_margin_chart():
    where = "validation preview `tensor2img` (validation_step, demo.py:100)"
    layout = scalars_layout({"batch.gt": (3, False), "batch.lq": (3, True)}, kinds=("clipping",), elsewhere=(where,))
    titles = [c.title for c in layout.category]
    assert titles == ["rangewatch findings", "rangewatch tap batch.lq (finding)", "rangewatch tap batch.gt"]
    (chart,) = layout.category[0].chart
    assert where in chart.title
    assert chart.WhichOneof("content") == "margin"
    assert [(s.value, s.lower, s.upper) for s in chart.margin.series] == [
        ("rangewatch/findings/total",) * 3, ("rangewatch/findings/clipping",) * 3]
    # each tap: the per-channel detail group and the expected band; the compact group's out_of_range
    margin = layout.category[1].chart[0].margin
    assert margin.series[0].value == detail_tag("batch.lq", "mean", 0) and margin.series[-1].upper == detail_tag("batch.lq", "expected_max")
    import re

    pattern = re.compile(layout.category[1].chart[1].multiline.tag[0])
    assert pattern.search(tag("batch.lq", "out_of_range")) and pattern.search(detail_tag("batch.lq", "nonfinite"))
    assert not pattern.search(tag("batch.lq", "min"))


def test_without_findings_the_count_chart_matches_every_count():
    layout = scalars_layout({"batch.gt": (3, False)})
    (chart,) = layout.category[0].chart
    assert chart.WhichOneof("content") == "multiline" and chart.multiline.tag[0] == r"^rangewatch/findings/"
