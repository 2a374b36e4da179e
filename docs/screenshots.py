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


def main() -> None:
    from rangewatch.demo import run_case
    from rangewatch.report import build_report

    logdir = Path(tempfile.mkdtemp()) / "logs"
    for case in ("dark-preview", "vae-range"):
        run_case(case, logdir, progress=False)
    report = build_report(logdir)
    chromium_shot(report.as_uri(), HERE / "report.png", "1400,1800")

    port = 6123
    tb = subprocess.Popen(
        [sys.executable, "-m", "rangewatch.cli", "tensorboard", str(logdir), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(1)
        chromium_shot(f"http://127.0.0.1:{port}/?darkMode=false#images", HERE / "tensorboard_images.png")
        chromium_shot(f"http://127.0.0.1:{port}/#timeseries", HERE / "tensorboard_scalars.png")
    finally:
        tb.terminate()
    print("wrote", *(p.name for p in HERE.glob("*.png")))


if __name__ == "__main__":
    main()
