"""Regenerate the README screenshots: the RANGEWATCH dashboard in TensorBoard (one run, and the six runs of
`rangewatch demo --case all`), TensorBoard's own tabs, the HTML report and the console of `rangewatch demo`.

Needs Chromium (Debian package `chromium`) on PATH; run from the repository root:
    python docs/screenshots.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def chromium_shot(url: str, out: Path, size: str = "1400,1000") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=15000",
             f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=120,
        )


def page_height(html_file: Path) -> int:
    """The rendered height in CSS pixels of an HTML file at 1400 px width (headless Chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    probe = html_file.with_name("_height_probe.html")
    probe.write_text(html_file.read_text(encoding="utf-8").replace(
        "</body>", "<script>document.body.setAttribute('data-h', document.documentElement.scrollHeight)</script></body>"),
        encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--window-size=1400,1000", "--dump-dom", probe.as_uri()],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    import re

    m = re.search(r'data-h="(\d+)"', dom)
    return int(m.group(1)) if m else -1


def tag_counts(logdir: Path) -> dict[str, int]:
    """Tags under ``logdir`` over all runs, as TensorBoard's Time Series shows them (one card per
    distinct tag of each kind; images count once per tag)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={"scalars": 1, "histograms": 1, "images": 1, "tensors": 1})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    kinds: dict[str, set[str]] = {"scalars": set(), "histograms": set(), "images": set(), "text": set(), "layout": set()}
    for run, tags in mux.Runs().items():
        kinds["scalars"].update(tags.get("scalars", []))
        kinds["histograms"].update(tags.get("histograms", []))
        kinds["images"].update(tags.get("images", []))
        for t in tags.get("tensors", []):
            plugin = mux.SummaryMetadata(run, t).plugin_data.plugin_name
            if plugin == "custom_scalars":
                kinds["layout"].add(t)
            elif plugin == "text":
                kinds["text"].add(t)
            elif plugin == "scalars":
                kinds["scalars"].add(t)
            elif plugin == "histograms":
                kinds["histograms"].add(t)
    out = {k: len(v) for k, v in kinds.items()}
    out["time_series_cards"] = out["scalars"] + out["histograms"] + out["images"] + out["text"]
    return out


def console_shot(out: Path, workdir: Path) -> None:
    """What `rangewatch demo` prints (stdout and stderr, as a terminal shows them), rendered as a terminal page."""
    import html
    import os

    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "rangewatch.cli.main", "demo", "--no-progress", "--logdir", "rangewatch_logs"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env, cwd=workdir)
    text = r.stdout.strip("\n") + "\n"  # one stream, in the order a terminal shows it
    width = max(len(ln) for ln in text.splitlines())
    page = workdir / "console.html"
    page.write_text("<!DOCTYPE html><html><body style='margin:0;background:#1e1e1e'><pre style='color:#ddd;font:13px/1.35 "
                    f"DejaVu Sans Mono,monospace;padding:12px;margin:0'>$ rangewatch demo\n{html.escape(text)}</pre></body></html>",
                    encoding="utf-8")
    lines = text.count("\n") + 3
    chromium_shot(page.as_uri(), out, f"{max(900, int(width * 7.9) + 40)},{int(lines * 17.6) + 30}")
    print(f"console: {len(text.splitlines())} lines, the longest {width} characters")


def tensorboard_shots(logdir: Path, port: int, shots: list[tuple[str, str, str]]) -> None:
    """Start `rangewatch tensorboard` on ``logdir`` and take ``(fragment, file name, window size)`` shots."""
    tb = subprocess.Popen(
        [sys.executable, "-m", "rangewatch.cli.main", "tensorboard", "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=1)
                break
            except OSError:
                time.sleep(1)
        base = f"http://127.0.0.1:{port}/?darkMode=false"
        for fragment, name, size in shots:
            chromium_shot(f"{base}{fragment}", HERE / name, size)
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def main() -> None:
    from rangewatch.cli.demo import CASES, run_case
    from rangewatch.sinks.report import build_report

    work = Path(tempfile.mkdtemp())
    one, six = work / "one", work / "six"
    run_case("dark-preview", one, progress=False)
    for case in CASES:  # the six cases of `rangewatch demo --case all`
        run_case(case, six, progress=False)
    report = build_report(six)
    chromium_shot(report.as_uri(), HERE / "report.png", "1400,1800")
    print(f"report: {report.stat().st_size / 1024:.0f} KiB, {page_height(report)} px tall at 1400 px; tags: {tag_counts(six)}")

    tensorboard_shots(one, 6123, [("", "tensorboard_dashboard_one_run.png", "1400,1100")])  # opens on RANGEWATCH
    tensorboard_shots(six, 6124, [
        ("", "tensorboard_dashboard_six_runs.png", "1400,1300"),
        ("#custom_scalars", "tensorboard_custom_scalars.png", "1400,1100"),
        ("#text", "tensorboard_findings.png", "1400,1000"),
        ("#images", "tensorboard_images.png", "1400,1100"),
        ("#timeseries", "tensorboard_scalars.png", "1400,1000"),
    ])
    console_shot(HERE / "console.png", work)
    print("wrote", *(p.name for p in sorted(HERE.glob("*.png"))))


if __name__ == "__main__":
    main()
