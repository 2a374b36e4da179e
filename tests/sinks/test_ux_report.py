"""The HTML report for several runs (issue 15): a summary first (runs with findings first, one line
per finding), then per-run sections, collapsed where healthy; read from the compact default tags."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from helpers.ux import EXPECT, fit
from rangewatch import RangeWatch
from rangewatch.sinks.report import build_report

pytestmark = pytest.mark.slow  # real Trainer fits (end to end): CI runs them, `pytest -m "not slow"` does not


class Outline(HTMLParser):
    """Summary items, run sections with their <details> state, tap sections with theirs."""

    def __init__(self, text: str):
        super().__init__()
        self.order: list[tuple[str, dict]] = []
        self._stack: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "li" and "run-summary" in (a.get("class") or ""):
            self.order.append(("summary", a))
        elif tag == "li" and self.order and self.order[-1][0] in ("summary", "finding") and "data-kind" in a:
            self.order.append(("finding", a))
        elif tag == "section" and "run" in (a.get("class") or "").split():
            self.order.append(("run", a))
        elif tag == "section" and "tap" in (a.get("class") or "").split():
            self.order.append(("tap", a))
        elif tag == "details" and self.order and self.order[-1][0] in ("run", "tap") and "open" not in self.order[-1][1]:
            self.order[-1][1]["open"] = "open" in a


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    healthy = RangeWatch(expect={"batch.gt": "symmetric"}, batch_keys=["batch.gt"], policy="log")
    fit(root, healthy, steps=2)  # tb/version_0: no finding
    broken = RangeWatch(expect=EXPECT, policy="log")
    fit(root, broken, steps=2)  # tb/version_1: batch.lq holds [0, 1] where [-1, 1] is declared
    index = build_report(root)
    return healthy, broken, index, Outline(index.read_text(encoding="utf-8"))


def test_summary_first_runs_with_findings_first(two_runs):
    healthy, broken, index, page = two_runs
    assert healthy.findings == [] and [f.kind for f in broken.findings] == ["mismatch"]
    kinds = [k for k, _ in page.order]
    assert kinds.index("summary") < kinds.index("run")  # the summary opens the page
    summary = [a["data-run"] for k, a in page.order if k == "summary"]
    assert summary == ["tb/version_1", "tb/version_0"]  # the run with a finding first, though its path sorts later
    runs = [(a["data-run"], a["open"]) for k, a in page.order if k == "run"]
    assert runs == [("tb/version_1", True), ("tb/version_0", False)]  # the healthy run collapsed
    findings = [a["data-kind"] for k, a in page.order if k == "finding"]
    assert findings == ["mismatch"]  # one line per finding


def test_summary_line_says_what_and_fix(two_runs):
    healthy, broken, index, page = two_runs
    html = index.read_text(encoding="utf-8")
    summary = html[html.index('<section class="summary">'):html.index("</section>")]
    (f,) = broken.findings
    line = re.search(r'<li data-kind="mismatch">(.*?)</li>', summary).group(1)
    assert f"<code>{f.where}</code>" in line and f"step {f.step}" in line and "fix:" in line
    assert "no findings" in summary


def test_healthy_taps_collapsed_flagged_open(two_runs):
    healthy, broken, index, page = two_runs
    taps = {}
    run = None
    for k, a in page.order:
        if k == "run":
            run = a["data-run"]
        elif k == "tap":
            taps[(run, a["data-tap"])] = a["open"]
    assert taps[("tb/version_1", "batch.lq")] is True
    assert taps[("tb/version_1", "batch.gt")] is False and taps[("tb/version_0", "batch.gt")] is False


def test_compact_tags_charted_with_the_expected_range(two_runs):
    healthy, broken, index, page = two_runs
    html = index.read_text(encoding="utf-8")
    # per-channel range charts from the default min/mean/max tags, the expected bounds as a dashed line
    for c in range(3):
        assert f'data-kind="range" data-tap="batch.lq" data-channel="c{c}"' in html
    assert "expected range (dashed)" in html
    # the tap-level out-of-range share / non-finite count (no channel suffix) are charted too
    assert 'data-kind="out_of_range" data-tap="batch.lq"' in html and 'data-kind="nonfinite" data-tap="batch.lq"' in html
    # the findings counts are not repeated as "other" scalars
    assert 'data-tag="rangewatch/findings/total"' not in html


def test_report_figures(two_runs, capsys):
    """Not an assertion on size: prints the page size (the before/after figure for 6 demo runs is in the report)."""
    healthy, broken, index, page = two_runs
    with capsys.disabled():
        print(f"\n[figure] report of 2 small runs: {index.stat().st_size / 1024:.0f} KiB")
