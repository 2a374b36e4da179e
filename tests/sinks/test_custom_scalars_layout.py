"""TensorBoard's custom-scalars layout: the findings total unsmoothed, one findings category across runs, findings at no tap."""

from __future__ import annotations

from rangewatch.sinks.loggers import detail_tag, scalars_layout, tag


def test_findings_at_no_tap_are_named_and_counts_are_a_margin_chart():
    where = "validation preview `tensor2img` (validation_step, demo.py:100)"
    layout = scalars_layout({"batch.gt": (3, False), "batch.lq": (3, True)}, elsewhere=(where,))
    titles = [c.title for c in layout.category]
    assert titles == ["rangewatch findings", f"rangewatch finding at {where}", "rangewatch tap batch.lq (finding)", "rangewatch tap batch.gt"]
    total, per_kind = layout.category[0].chart
    assert total.WhichOneof("content") == "margin"  # drawn unsmoothed: a count of 1 shows as 1
    assert [(s.value, s.lower, s.upper) for s in total.margin.series] == [("rangewatch/findings/total",) * 3]
    assert per_kind.multiline.tag[0] == r"^rangewatch/findings/"
    # the findings category is the same whatever the run found: TensorBoard merges it across runs
    other = scalars_layout({"batch.x": (1, False)})
    assert other.category[0] == layout.category[0]
    layout.category.pop(1)
    # each tap: the per-channel detail group and the expected band; the compact group's out_of_range
    margin = layout.category[1].chart[0].margin
    assert margin.series[0].value == detail_tag("batch.lq", "mean", 0) and margin.series[-1].upper == detail_tag("batch.lq", "expected_max")
    import re

    pattern = re.compile(layout.category[1].chart[1].multiline.tag[0])
    assert pattern.search(tag("batch.lq", "out_of_range")) and pattern.search(detail_tag("batch.lq", "nonfinite"))
    assert not pattern.search(tag("batch.lq", "min"))
