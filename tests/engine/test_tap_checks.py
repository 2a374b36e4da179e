"""The engine's check step as a collaborator (rangewatch/engine/checker.py), without Lightning or an engine: a tap's
window judged against its expectation, NaN/Inf, its scalars (checked against numpy), a loader prediction withdrawn
when a module's input rules it out, and the check loop's skipping of taps that are off or not fed."""

from __future__ import annotations

import numpy as np
import torch

from helpers.photos import photo_batch
from rangewatch.engine.checker import TapChecks
from rangewatch.engine.expectations import ExpectationSources
from rangewatch.engine.reporter import FindingsReporter
from rangewatch.engine.surroundings import Surroundings
from rangewatch.engine.tapset import _Tap
from rangewatch.expect.conventions import get_convention
from rangewatch.findings.finding import mismatch_finding
from rangewatch.sinks.loggers import detail_tag, tag
from rangewatch.stats.range_stats import RangeStats


def _checks(expect, said=None):
    env = Surroundings(lambda level, text: (said if said is not None else []).append(text))
    rep = FindingsReporter("log", env)
    src = ExpectationSources(expect, rep, env)
    return TapChecks(src, rep, env), rep


def _tap(name, x, bounds=None):
    tap = _Tap(name, 1, RangeStats(channel_dim=1, bounds=bounds, sync_on_compute=False), bounds=bounds)
    tap.stats.update(x, detail=True)
    tap.fed = True
    return tap


def test_unit_images_where_symmetric_is_expected_are_a_mismatch_and_nan_is_named_by_channel():
    checks, _ = _checks({"batch.image": "symmetric"})
    x = photo_batch(8, 32).float() / 255  # [0, 1] photos
    x[0, 1, 0, 0] = float("nan")
    tap = _tap("batch.image", x, get_convention("symmetric"))
    found = checks.judge(tap, tap.stats.compute(), step=4, check_first_n=3)
    assert [(f.kind, f.observed, f.expected) for f in found] == [("mismatch", "unit", "symmetric"), ("nonfinite", "NaN/Inf", "finite values")]
    assert found[1].evidence.startswith("1 non-finite values (NaN 1, Inf 0) in channel(s) 1 since the last check")
    assert tap.steps_checked == 1 and tap.inferred.name == "unit"


def test_the_scalars_are_the_windows_min_max_and_out_of_range_share():
    checks, _ = _checks({"batch.image": "symmetric"})
    x = photo_batch(4, 32).float() / 100 - 1  # [-1, 1.55]: some values above the symmetric range
    tap = _tap("batch.image", x, get_convention("symmetric"))
    m = checks.metrics(tap, tap.stats.compute(), per_channel=False)
    ref = x.numpy()
    assert m[tag("batch.image", "min")] == float(ref.min()) and m[tag("batch.image", "max")] == float(ref.max())
    assert np.isclose(m[tag("batch.image", "out_of_range")], float(((ref < -1) | (ref > 1)).mean()))
    assert (m[detail_tag("batch.image", "expected_min")], m[detail_tag("batch.image", "expected_max")]) == (-1.0, 1.0)
    for c in range(3):
        assert np.isclose(m[detail_tag("batch.image", "mean", c)], ref[:, c].mean(), atol=1e-6)
    assert detail_tag("batch.image", "std", 0) not in m
    assert detail_tag("batch.image", "std", 0) in checks.metrics(tap, tap.stats.compute(), per_channel=True)


def test_a_module_input_that_rules_out_the_loader_prediction_withdraws_it_once():
    said = []
    checks, rep = _checks({"vae.encoder:input": "symmetric"}, said)
    where = "train dataloader -> vae.encoder:input"
    rep.log.add(mismatch_finding(where=where, observed="unit", expected="symmetric", evidence="e", fix="f", severity="info"))
    x = photo_batch(8, 32).float() / 127.5 - 1  # what reaches the encoder: the model converted the loader's [0, 1]
    for _ in range(2):
        tap = _tap("vae.encoder:input", x, get_convention("symmetric"))
        assert checks.judge(tap, tap.stats.compute(), step=2, check_first_n=3) == []
    assert checks.withdrawn == {where}
    assert [(f.kind, f.where, f.observed) for f in rep.log.findings if f.kind == "note"] == [("note", where, "withdrawn")]
    assert len([t for t in said if "is withdrawn" in t]) == 1


def test_the_check_loop_skips_taps_that_are_off_or_not_fed_and_switches_off_one_that_fails():
    checks, rep = _checks({})
    good = _tap("batch.a", torch.rand(2, 3, 8, 8))
    idle = _Tap("batch.idle", 1, RangeStats(channel_dim=1, sync_on_compute=False))
    off = _tap("batch.off", torch.rand(2, 3, 8, 8))
    off.disabled = True
    broken = _tap("batch.broken", torch.rand(2, 3, 8, 8))
    broken.stats.value_sample = None  # a corrupted accumulator: judging it fails
    val = _tap("val/batch.a", torch.rand(2, 3, 8, 8))
    taps = {t.name: t for t in (good, idle, off, broken, val)}
    found, metrics, summaries = checks.check_taps(taps, lambda n: not n.startswith("val/"), step=1, check_first_n=3,
                                                  per_channel=False)
    assert [n for n, _ in summaries] == ["batch.a"] and tag("batch.a", "max") in metrics
    assert broken.disabled and [(f.kind, f.where) for f in rep.log.findings] == [("internal", "batch.broken")]
    assert good.steps_checked == 1 and val.steps_checked == 0 and idle.steps_checked == 0
