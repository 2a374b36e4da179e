"""Regenerate the README screenshots: the TensorBoard view of `rangewatch demo` and the HTML report.

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


def main() -> None:
    from rangewatch.cli.demo import run_case
    from rangewatch.sinks.report import build_report

    logdir = Path(tempfile.mkdtemp()) / "logs"
    for case in ("dark-preview", "vae-range", "sdxl-latent", "clean"):
        run_case(case, logdir, progress=False)
    report = build_report(logdir)
    chromium_shot(report.as_uri(), HERE / "report.png", "1400,1800")
    print(f"report: {report.stat().st_size / 1024:.0f} KiB, {page_height(report)} px tall at 1400 px; tags: {tag_counts(logdir)}")

    port = 6123
    tb = subprocess.Popen(
        [sys.executable, "-m", "rangewatch.cli.main", "tensorboard", "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(1)
        base = f"http://127.0.0.1:{port}/?darkMode=false"
        chromium_shot(f"{base}#custom_scalars", HERE / "tensorboard_custom_scalars.png", "1400,1100")
        chromium_shot(f"{base}#text", HERE / "tensorboard_findings.png", "1400,1000")
        chromium_shot(f"{base}#images", HERE / "tensorboard_images.png", "1400,1100")
        chromium_shot(f"{base}#timeseries", HERE / "tensorboard_scalars.png")
    finally:
        tb.terminate()
        tb.wait(timeout=30)
    print("wrote", *(p.name for p in sorted(HERE.glob("*.png"))))


if __name__ == "__main__":
    main()
