"""RangeWatch pickles and deep-copies before and after a fit, as Lightning's own callbacks do (issue 23,
item 2): ``strategy="ddp_spawn"`` pickles the Trainer with its callbacks into the processes it starts,
LightningCLI, Ray Tune and Optuna copy callbacks. A ``ddp_spawn`` fit on two CPU processes finishes with
the findings on the main process.

The file is also the training script: ``python tests/engine/test_run_killers_spawn.py OUT_DIR`` fits under
``ddp_spawn`` and writes ``OUT_DIR/main.json`` from the main process.
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

if __name__ == "__main__":  # run as the training script: tests/ on the path (for helpers), as under pytest
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import fit as quiet  # noqa: E402
from helpers.models import ConvAutoEncoder  # noqa: E402  (module level: ddp_spawn pickles the model too)

TIMEOUT_S = 240


def _model_and_data():
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # [0, 1] where [-1, 1] is expected
    return ConvAutoEncoder(nested=False), DataLoader(TensorDataset(x), batch_size=4)  # encoder / decoder


def _keys(findings) -> list[tuple]:
    return [(f.kind, f.where, f.observed, f.expected) for f in findings]


def _fit(watch, **kw) -> None:
    model, data = _model_and_data()
    quiet.fit(model, data, callbacks=[watch], max_steps=3, **kw)


def test_pickle_and_deepcopy_before_and_after_a_fit_keep_options_and_findings():
    from rangewatch import RangeWatch

    watch = RangeWatch(expect={"encoder": "symmetric"}, policy="log", trace_modules="all", check_first_n=2,
                       skip_keys=["mask*"])
    for clone in (pickle.loads(pickle.dumps(watch)), copy.deepcopy(watch)):  # before: as ddp_spawn / LightningCLI do
        assert (clone.expect, clone.policy, clone.trace_modules, clone.check_first_n, clone.skip_keys) == (
            {"encoder": "symmetric"}, "log", "all", 2, ("mask*",))
    _fit(watch)
    found = _keys(watch.findings)
    assert ("mismatch", "encoder:input", "unit", "symmetric") in found
    for clone in (pickle.loads(pickle.dumps(watch)), copy.deepcopy(watch)):  # after a fit: hooks, locks, writers dropped
        assert _keys(clone.findings) == found
        assert clone.engine.train_batches == watch.engine.train_batches == 3
        assert not clone.engine.attached and clone.engine.tracer is None
    again = copy.deepcopy(watch)
    _fit(again)  # a copy fits again (hooks placed anew); what was reported is not repeated
    assert _keys(again.findings) == found


def _main(out: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from rangewatch import RangeWatch

    torch.set_num_threads(1)
    watch = RangeWatch(expect={"encoder": "symmetric"}, policy="log")
    _fit(watch, strategy="ddp_spawn", devices=2)
    rec = {"findings": [f.to_dict() for f in watch.findings], "summary": watch.summary_line()}
    Path(out, "main.json").write_text(json.dumps(rec))


@pytest.mark.slow
def test_ddp_spawn_fit_finishes_with_the_findings_on_the_main_process(tmp_path):
    from helpers.procs import run_script  # (here: this file also runs as the script, without tests/ on its path)

    rc, stderr = run_script(__file__, [str(tmp_path)], tmp_path, TIMEOUT_S, "the ddp_spawn fit")
    assert rc == 0, stderr[-5000:]
    rec = json.loads((tmp_path / "main.json").read_text())
    keys = [(f["kind"], f["where"], f["observed"], f["expected"]) for f in rec["findings"]]
    assert ("mismatch", "encoder:input", "unit", "symmetric") in keys, rec
    assert not [k for k in keys if k[0] == "internal"], rec
    assert "over 3 training batches" in rec["summary"], rec["summary"]


if __name__ == "__main__":
    _main(sys.argv[1])
