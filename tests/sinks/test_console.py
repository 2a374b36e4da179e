"""rangewatch's console lines: short, code never cut, warnings pointing at the user's code, each line said once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import rangewatch
from rangewatch import Finding
from rangewatch.sinks.console import WIDTH, finding_text, wrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fixes as rangewatch writes them (the fp16 one from the fp16-black demo, the VAE one from vae-range)
FP16_FIX = ("run in bfloat16 instead of float16 (Trainer(precision='bf16-mixed'), torch_dtype=torch.bfloat16), which has the "
            "range of fp32; or keep decoder.mid in fp32: `model.get_submodule('decoder.mid').float()`, for an SDXL VAE "
            "use the fixed VAE madebyollin/sdxl-vae-fp16-fix")
VAE_FIX = "apply x * 2 - 1 (Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])) at the end of the dataset transform that produces batch.image"
CODE = ["`model.get_submodule('decoder.mid').float()`", "(Trainer(precision='bf16-mixed'), torch_dtype=torch.bfloat16),",
        "x * 2 - 1", "(Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))"]


@pytest.mark.parametrize("width", [40, 60, 100, WIDTH])
def test_wrap_keeps_every_code_unit_on_one_line(width):
    for text in (FP16_FIX, VAE_FIX):
        lines = wrap(text, width=width).splitlines()
        # nothing lost or added: the lines joined with single spaces give the text back
        assert " ".join(ln.strip() for ln in lines) == text
        for code in CODE:
            if code.strip(",") in text:
                assert any(code.strip(",") in ln for ln in lines), (code, lines)
        # a line is over the width only when it is one code unit that cannot be cut
        for ln in lines:
            assert len(ln) <= width or " " not in ln.strip() or ln.strip() in text and any(c.strip(",") in ln for c in CODE), ln


def test_wrap_breaks_prose_like_textwrap():
    prose = "the data span under 2% of its range in every channel and nothing sits on a bound " * 4
    assert wrap(prose.strip(), width=60, indent="") == textwrap.fill(prose.strip(), 60, break_on_hyphens=False)


def test_finding_text_is_short_and_points_to_the_evidence():
    f = Finding("nonfinite", "decoder.mid", "NaN/Inf output of Conv2d from finite inputs", "finite activations",
                "input max |x| 0.5322, all finite; " + "x" * 900, FP16_FIX, severity="error", step=0)
    text = finding_text(f)
    assert text.startswith("rangewatch: [nonfinite] decoder.mid at step 0: saw NaN/Inf output")
    assert max(len(ln) for ln in text.splitlines()) <= 160
    assert "x" * 200 not in text  # the long evidence is not on the console ...
    assert "rangewatch report" in text and "RANGEWATCH" in text  # ... it is one pointer away
    assert "`model.get_submodule('decoder.mid').float()`" in text


def _loop(policy="warn"):
    m = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))
    with rangewatch.watch(m, expect={"batch.image": "symmetric"}, log_every_n_steps=10, policy=policy) as w:
        for _ in range(2):
            x = torch.rand(2, 3, 16, 16)  # [0, 1] where [-1, 1] is expected
            w.batch({"image": x})
            m(x).mean().backward()
            w.step()  # the warning must name this line's file, not rangewatch's
    return w


def test_finding_warning_points_at_the_users_code():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loop()
    ours = [w for w in caught if str(w.message).startswith("rangewatch: [mismatch] batch.image")]
    assert len(ours) == 1
    assert ours[0].filename == __file__
    assert ours[0].category is UserWarning
    assert max(len(ln) for ln in str(ours[0].message).splitlines()) <= 160


SCRIPT = """
import logging, warnings
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
import torch, rangewatch
from torch import nn
m = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))
with rangewatch.watch(m, expect={"batch.image": "symmetric"}, log_every_n_steps=10, policy="log") as w:
    for _ in range(2):
        x = torch.rand(2, 3, 16, 16)
        w.batch({"image": x})
        m(x).mean().backward()
        w.step()
"""


@pytest.mark.slow
@pytest.mark.parametrize("configured", [True, False])
def test_each_console_line_said_once_with_or_without_logging_configured(configured):
    script = SCRIPT if configured else SCRIPT.replace("logging.basicConfig(", "dict(")
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    for line in ("rangewatch: watching 1 tap", "rangewatch expectations:", "rangewatch: 1 tap checked over 2 training batches"):
        assert out.count(line) == 1, (line, out)
    if configured:  # through the program's own logging configuration
        assert "INFO rangewatch: rangewatch: watching 1 tap" in out
