"""The engine's preview watch as a collaborator (rangewatch/engine/preview_gate.py), without Lightning or an
engine: which calls it measures, what it holds until taken, and stopping it."""

from __future__ import annotations

from helpers.photos import photo_batch
from rangewatch.engine.preview_gate import PreviewGate


def test_gate_measures_each_site_once_and_everything_when_judging():
    gate = PreviewGate()
    assert gate.gate("train.py:10", "/project/train.py")  # a site's first call
    assert not gate.gate("train.py:10", "/project/train.py")  # its later calls: only when judging
    gate.at(step=3, judge=True)
    assert gate.gate("train.py:10", "/project/train.py")
    gate.at(step=4, judge=False)
    assert not gate.gate("train.py:10", "/project/train.py")
    import rangewatch.sinks.loggers as own

    assert not gate.gate("loggers.py:1", own.__file__)  # rangewatch's own image logging is never measured


def test_a_clamping_save_image_is_held_until_taken(tmp_path):
    import torchvision

    x = photo_batch(2, 32).float() / 127.5 - 1  # [-1, 1] images: save_image clamps everything below 0
    gate = PreviewGate()
    assert gate.idle(log=False) and not gate.active
    gate.start(threshold=0.005, hist_bins=0, context="training preview", step=7)
    try:
        torchvision.utils.save_image(x, tmp_path / "preview.png")  # looked up at the call, as the patch needs
    finally:
        gate.halt()
    assert not gate.active
    found = gate.take()
    assert [(f.kind, f.step) for f in found] == [("clipping", 7)]
    # the share it names is the share of values save_image clamps, measured independently here
    assert f"clamps {float((x < 0).float().mean()):.1%} of values to black" in found[0].evidence
    assert gate.take() == [] and gate.pending == []


def test_flush_reports_the_findings_once_and_stop_halts(tmp_path):
    import torchvision

    from rangewatch.engine.reporter import FindingsReporter
    from rangewatch.engine.surroundings import Surroundings

    said = []
    env = Surroundings(lambda level, text: said.append(text))
    env.clock = lambda: 11
    rep = FindingsReporter("warn", env)
    gate = PreviewGate()
    assert gate.watch(rep, env, threshold=0.005, hist_bins=0, context="training preview")
    torchvision.utils.save_image(photo_batch(2, 32).float() / 127.5 - 1, tmp_path / "a.png")  # clamps [-1, 0) to black
    assert not gate.idle(log=False)
    gate.flush(rep, env, log=False, final=False)  # one process: reported at once, at the call's step
    assert [(f.kind, f.step) for f in rep.log.findings] == [("clipping", 11)] and len(said) == 1
    assert gate.idle(log=False)
    gate.stop(rep, env)
    assert not gate.active and len(rep.log.findings) == 1
