"""The RANGEWATCH dashboard in TensorBoard (rangewatch/sinks/tb_plugin.py): served by a real TensorBoard on real
demo logs, read back through its data routes."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from helpers.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@contextlib.contextmanager
def _tensorboard(logdir: Path, deadline_s: float = 120.0):
    """`rangewatch tensorboard` in a subprocess on 127.0.0.1 and a free port; yields its base URL; always terminated."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(logdir.parent / f"tb-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "rangewatch.cli.main", "tensorboard", "--logdir", str(logdir),
                             "--port", str(port), "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"tensorboard exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                _get(base + "/data/plugins_listing", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > end:
                    log.seek(0)
                    pytest.fail(f"tensorboard did not answer within {deadline_s:.0f} s:\n{log.read()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def _demo(case: str, logdir: Path):
    from rangewatch.cli.demo import run_demo

    (r,) = run_demo(case, logdir, progress=False, echo=lambda s: None)
    return r


@pytest.mark.slow
def test_tensorboard_opens_on_the_dashboard_and_serves_the_findings_live(tmp_path):
    logdir = tmp_path / "logs"
    clean = _demo("clean", logdir)
    assert not [f for f in clean.findings if f.kind != "note"]
    with _tensorboard(logdir) as base:
        listing = json.loads(_get(base + "/data/plugins_listing"))
        # `rangewatch tensorboard` lists the dashboard first: TensorBoard opens on the first active one
        assert next(iter(listing)) == "rangewatch"
        assert listing["rangewatch"]["enabled"] and listing["rangewatch"]["tab_name"] == "RANGEWATCH"
        assert listing["rangewatch"]["loading_mechanism"]["module_path"] == "/data/plugin/rangewatch/index.js"
        assert b"export async function render" in _get(base + "/data/plugin/rangewatch/index.js")
        runs = json.loads(_get(base + "/data/plugin/rangewatch/runs"))
        assert [(r["run"], r["findings"]) for r in runs] == [("clean/version_0", [])]
        v0 = json.loads(_get(base + "/data/plugin/rangewatch/version"))["version"]

        # a second run appears while TensorBoard is up: the dashboard follows, the run with a finding first
        dark = _demo("dark-preview", logdir)
        expected = [f for f in dark.findings if f.kind != "note"]
        assert expected
        end = time.monotonic() + 60
        while json.loads(_get(base + "/data/plugin/rangewatch/version"))["version"] == v0:
            assert time.monotonic() < end, "the version never changed after new event files were written"
            time.sleep(0.5)
        runs = json.loads(_get(base + "/data/plugin/rangewatch/runs"))
        assert [r["run"] for r in runs] == ["dark-preview/version_0", "clean/version_0"]  # findings first, not by name
        got = runs[0]["findings"]
        assert [(g["kind"], g["where"], g["fix"], g["evidence"]) for g in got] == [(f.kind, f.where, f.fix, f.evidence) for f in expected]
        assert runs[0]["previews"], runs[0]

        page = _get(base + "/data/plugin/rangewatch/page").decode()
        # the summary first: the finding with its fix, before any run section
        first_fix = page.index("fix: ")
        assert first_fix < page.index('<section class="run"')
        assert "tensor2img" in page[first_fix:first_fix + 400]
        # the labelled preview pair, inline (the dashboard writes no files), and range charts with the expected range
        assert page.count('src="data:image/png;base64,') >= 1
        assert "<svg" in page and "expected" in page
        assert page.index("dark-preview/version_0") < page.index("clean/version_0")
    assert not list(logdir.rglob("rangewatch_report"))  # nothing written into the user's log directory


def test_plugin_routes_in_process_on_a_writer_log(tmp_path):
    """The plugin object as TensorBoard builds it (a TBContext), its routes through werkzeug's test client."""
    from tensorboard.plugins import base_plugin
    from torch.utils.tensorboard import SummaryWriter
    from werkzeug.test import Client

    from rangewatch import Watch
    from rangewatch.sinks.tb_plugin import RangewatchPlugin

    empty = RangewatchPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    assert not empty.is_active()
    writer = SummaryWriter(str(tmp_path / "run_a"))
    watch = Watch(expect={"batch.image": "symmetric"}, policy="log", derive_expectations=False, watch_visualization=False,
                  loggers=[writer])
    for step in range(2):
        watch.begin_step(step)
        watch.batch({"image": torch.rand(4, 3, 16, 16)})
        watch.end_step()
    watch.close()
    writer.close()
    findings = [f for f in watch.findings if f.kind != "note"]
    assert findings and findings[0].kind == "mismatch"

    plugin = RangewatchPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    assert plugin.is_active()
    meta = plugin.frontend_metadata()
    assert meta.es_module_path == "/index.js" and meta.tab_name == "RANGEWATCH"
    apps = plugin.get_plugin_apps()
    runs = json.loads(Client(apps["/runs"]).get("/").get_data())
    assert [r["run"] for r in runs] == ["run_a"]
    assert [(g["kind"], g["where"], g["fix"]) for g in runs[0]["findings"]] == [(f.kind, f.where, f.fix) for f in findings]
    assert "batch.image" in runs[0]["taps"]
    resp = Client(apps["/page"]).get("/")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "x * 2 - 1" in resp.get_data(as_text=True)


def test_entry_point_of_the_installed_distribution_names_the_plugin():
    eps = importlib.metadata.entry_points(group="tensorboard_plugins")
    mine = [ep for ep in eps if ep.name == "rangewatch"]
    if not mine:
        pytest.skip("the installed rangewatch distribution has no tensorboard_plugins entry point yet "
                    "(an editable install made before pyproject.toml declared it: reinstall with pip install -e .)")
    from rangewatch.sinks.tb_plugin import RangewatchPlugin

    assert mine[0].load() is RangewatchPlugin
    from tensorboard import default

    assert RangewatchPlugin in default.get_plugins()  # what a plain `tensorboard` loads


def test_a_truncated_event_file_does_not_break_the_dashboard(tmp_path):
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    from rangewatch.sinks.tb_plugin import RangewatchPlugin

    run = tmp_path / "run"
    run.mkdir()
    (run / "events.out.tfevents.1.host").write_bytes(b"\x00" * 7)  # a truncated event file
    plugin = RangewatchPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    resp = Client(plugin.get_plugin_apps()["/page"]).get("/")
    assert resp.status_code == 200
    assert "rangewatch" in resp.get_data(as_text=True)
    assert json.loads(Client(plugin.get_plugin_apps()["/runs"]).get("/").get_data()) == []
