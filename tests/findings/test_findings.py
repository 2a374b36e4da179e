"""The finding builders and the de-duplication rule (rangewatch.findings.finding)."""

from rangewatch.findings.finding import (Finding, clipping_finding, first_seen, internal_finding, mismatch_finding,
                                        nonfinite_finding, note_finding)


def test_builders_fix_kind_and_severity():
    f = nonfinite_finding("vae.decoder", observed="NaN/Inf", evidence="2 NaN", fix="bf16", step=3, source="s")
    assert f == Finding("nonfinite", "vae.decoder", "NaN/Inf", "finite values", "2 NaN", "bf16", "error", 3, "s")
    assert nonfinite_finding("x", observed="o", evidence="e", fix="f", expected="finite latents").expected == "finite latents"
    e = internal_finding("tap", KeyError("k"), evidence="switched off", step=1)
    assert (e.kind, e.severity, e.observed, e.expected, e.fix) == ("internal", "info", "KeyError: 'k'", "", "report this to rangewatch")
    n = note_finding("w", "skipped", evidence="why")
    assert (n.kind, n.severity, n.fix, n.expected) == ("note", "info", "", "")
    m = mismatch_finding("vae.encoder:input", observed="unit", expected="symmetric", evidence="min 0", fix="x * 2 - 1", step=0)
    assert m == Finding("mismatch", "vae.encoder:input", "unit", "symmetric", "min 0", "x * 2 - 1", "warning", 0, "")
    c = clipping_finding("save_image", observed="symmetric", expected="unit", evidence="40% to black", fix="(x + 1) / 2",
                         severity="info", source="torchvision")
    assert (c.kind, c.severity, c.step, c.source, c.key) == ("clipping", "info", None, "torchvision",
                                                            ("clipping", "save_image", "symmetric", "unit"))


def test_first_seen_reports_each_key_once_across_calls():
    a = nonfinite_finding("a", observed="o", evidence="e1", fix="f", step=1)
    a_later = nonfinite_finding("a", observed="o", evidence="other evidence", fix="f", step=9)  # same key
    b = note_finding("b", "o", evidence="e")
    seen: set = set()
    assert first_seen([a, b, a_later], seen) == [a, b]
    assert first_seen([a_later, b], seen) == []
    assert seen == {a.key, b.key}
