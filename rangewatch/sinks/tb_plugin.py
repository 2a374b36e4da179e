"""The RANGEWATCH dashboard inside TensorBoard: what ``rangewatch report`` shows, live.

A TensorBoard plugin (:class:`RangewatchPlugin`, a ``tensorboard.plugins.base_plugin.TBPlugin`` with a frontend
it serves itself, loaded in TensorBoard's plugin iframe as an ES module). It is registered through the
``tensorboard_plugins`` entry point in ``pyproject.toml``, so a plain ``tensorboard --logdir ...`` shows the tab;
``rangewatch tensorboard`` lists it first, so TensorBoard opens on it.

It shows what the HTML report (:mod:`rangewatch.sinks.report`) shows, from the same reading of the event files
(``report.event_dirs`` / ``report.read_runs`` / ``report.page_body``, TensorBoard's ``EventAccumulator``): the
summary first (runs with findings first, one line per finding with its fix), then per run the findings with
evidence and fix, the labelled preview pairs and per-tap range charts with the expected range. The page is
rebuilt when an event file under the log directory changes (the frontend asks every 15 s; open sections stay open).

Routes (under ``/data/plugin/rangewatch/``): ``index.js`` (the frontend), ``page`` (the dashboard's HTML),
``runs`` (JSON: per run its findings, runs with findings first), ``version`` (JSON: a fingerprint of the event files).

The tensorboard pattern followed: tensorboard/examples/plugins/example_basic (``example_basic/plugin.py``:
``get_plugin_apps``, ``frontend_metadata(es_module_path="/index.js")``, an ES module exporting ``render()``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

__all__ = ["RangewatchPlugin", "PLUGIN_NAME"]

PLUGIN_NAME = "rangewatch"

_JS = r"""
// rangewatch's TensorBoard dashboard: the report's page, fetched from this plugin and refreshed when the logs change.
const here = (p) => new URL(p, import.meta.url).toString();

async function load(state) {
  const v = await fetch(here("version")).then((r) => r.json());
  if (state.version === v.version) return;
  const html = await fetch(here("page")).then((r) => r.text());
  const y = window.scrollY;
  const wasOpen = state.version ? [...document.querySelectorAll("details")].map((d) => d.open) : null;
  state.root.innerHTML = html;
  if (wasOpen) {
    const now = [...document.querySelectorAll("details")];
    if (now.length === wasOpen.length) now.forEach((d, i) => { d.open = wasOpen[i]; });
    window.scrollTo(0, y);
  }
  state.version = v.version;
}

export async function render() {
  const root = document.createElement("div");
  root.id = "rangewatch-root";
  root.textContent = "rangewatch: reading the event files ...";
  document.body.appendChild(root);
  const state = { root, version: null };
  await load(state);
  setInterval(() => load(state).catch(() => {}), 15000);
}
"""

_EXTRA_CSS = "body{margin:0;background:#fff}#rangewatch-root main{padding-top:4px}"


def _fingerprint(dirs: list[Path]) -> str:
    """Changes when an event file is added, grows or is rewritten."""
    h = hashlib.sha1()
    for d in dirs:
        try:
            for f in sorted(os.listdir(d)):
                if "tfevents" in f:
                    st = os.stat(d / f)
                    h.update(f"{d / f}:{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            continue
    return h.hexdigest()[:16]


class RangewatchPlugin(base_plugin.TBPlugin):
    """TensorBoard's RANGEWATCH tab (see the module docstring)."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._logdir = Path(os.path.expanduser(context.logdir or "")).resolve() if context.logdir else None
        self._lock = threading.Lock()
        self._cache: tuple[str, str, list[dict[str, Any]]] | None = None  # (fingerprint, page, runs)

    # ------------------------------------------------------------------ TensorBoard's interface
    def get_plugin_apps(self) -> dict[str, Any]:
        return {"/index.js": self._serve_js, "/page": self._serve_page, "/runs": self._serve_runs, "/version": self._serve_version}

    def is_active(self) -> bool:
        return bool(self._dirs())

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="RANGEWATCH", disable_reload=True)

    # ------------------------------------------------------------------ data
    def _dirs(self) -> list[Path]:
        if self._logdir is None or not self._logdir.exists():
            return []
        from .report import REPORT_DIRNAME, event_dirs

        return event_dirs(self._logdir, self._logdir / REPORT_DIRNAME)

    def _build(self) -> tuple[str, str, list[dict[str, Any]]]:
        """(fingerprint, page HTML, runs) of the log directory now, rebuilt only when an event file changed."""
        dirs = self._dirs()
        fp = _fingerprint(dirs)
        with self._lock:
            if self._cache is not None and self._cache[0] == fp:
                return self._cache
            from .report import CSS, _e

            runs: list[dict[str, Any]] = []
            if not dirs:
                page = f'<main><h1>rangewatch</h1><p class="muted">No event files under <code>{_e(self._logdir)}</code> yet.</p></main>'
            else:
                try:
                    page, runs = self._page(dirs)
                except Exception as e:  # an unreadable event file must not take TensorBoard down: say it, try again later
                    page = (f'<main><h1>rangewatch</h1><p class="bad">could not read the event files under <code>{_e(self._logdir)}</code>: '
                            f"{_e(type(e).__name__)}: {_e(e)}</p></main>")
                    fp = ""  # not cached: the next request reads again
            page = f"<style>{CSS}{_EXTRA_CSS}</style>{page}"
            self._cache = (fp, page, runs)
            return self._cache

    def _page(self, dirs: list[Path]) -> tuple[str, list[dict[str, Any]]]:
        """The dashboard's HTML and the runs' findings, from the report's reading of the event files."""
        from .report import _e, _run_findings, _row_kind, page_body, read_runs

        with_data, without = read_runs(dirs, self._logdir)
        runs = []
        for r in with_data:
            header, rows = _run_findings(r)
            findings = [dict(zip(header, row)) for row in rows if _row_kind(header, row) not in ("note", "internal")]
            runs.append({"run": r.name, "findings": findings, "taps": sorted(r.taps), "previews": sorted(r.previews)})
        head = (f'<h1>rangewatch</h1><p class="muted small">log directory <code>{_e(self._logdir)}</code> · '
                f'{len(with_data)} run{"s" if len(with_data) != 1 else ""} with rangewatch data · '
                'updated when the event files change · the same page as <code>rangewatch report</code></p>')
        body = page_body(with_data, without) if with_data else (
            '<p class="muted">No rangewatch data in these event files yet: it appears at the first check step '
            "of a run with RangeWatch and a TensorBoardLogger.</p>")
        return f"<main>{head}{body}</main>", runs

    # ------------------------------------------------------------------ routes
    @wrappers.Request.application
    def _serve_js(self, request: Any) -> Any:
        return http_util.Respond(request, _JS, "text/javascript")

    @wrappers.Request.application
    def _serve_page(self, request: Any) -> Any:
        return http_util.Respond(request, self._build()[1], "text/html")

    @wrappers.Request.application
    def _serve_runs(self, request: Any) -> Any:
        return http_util.Respond(request, json.dumps(self._build()[2]), "application/json")

    @wrappers.Request.application
    def _serve_version(self, request: Any) -> Any:
        return http_util.Respond(request, json.dumps({"version": _fingerprint(self._dirs())}), "application/json")
