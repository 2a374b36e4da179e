"""RangeWatch with Lightning's WandbLogger (offline) and MLFlowLogger (a local file store): the same
scalars as TensorBoard, the labelled preview pairs as images, histograms where the logger has them
(W&B), the findings as a table. The files the loggers wrote are read back."""

from __future__ import annotations

import io
import json
import time
import os
from pathlib import Path

import numpy as np
import pytest
import torchvision.utils as tvu
from torch.utils.data import DataLoader, TensorDataset

from helpers import fit as quiet
from helpers.models import ConvNet
from helpers.photos import photo_batch
from rangewatch import RangeWatch
from rangewatch.sinks.loggers import FINDING_COLUMNS, detail_tag, mlflow_key, tag

pytestmark = pytest.mark.slow


class Net(ConvNet):
    """Validation writes its outputs with torchvision's save_image as if they were in [0, 1]; they are in [-1, 1]."""

    def validation_step(self, batch, batch_idx):
        tvu.save_image(batch[0] * 2 - 1, io.BytesIO(), format="png")


X = photo_batch(8, 16).float() / 255  # [0, 1] photos, declared [-1, 1]: a mismatch


def fit(logger) -> RangeWatch:
    w = RangeWatch(expect={"batch[0]": "symmetric"}, policy="log")
    loader = DataLoader(TensorDataset(X), batch_size=4)
    quiet.fit(Net(), loader, loader, callbacks=[w], logger=logger, max_steps=2, limit_val_batches=1, log_every_n_steps=1)
    return w


def finished_wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The run's records once W&B has written its ``exit`` record: ``wandb.finish()`` can return
    while the service still writes the file (seen as a file cut at a 32 KiB block, history rows missing,
    a record half written)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            recs = wandb_records(next(run_dir.glob("run-*.wandb")))
        except Exception:  # noqa: BLE001  (a record still being written)
            if time.monotonic() > deadline:
                raise
            recs = []
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or (recs and time.monotonic() > deadline):
            return recs
        time.sleep(0.2)


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file (LevelDB log format after a 7-byte ``:W&B`` header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            out.append(buf + chunk)
        else:
            break
    return [pb.Record.FromString(c) for c in out]


def expected_preview(w: RangeWatch) -> np.ndarray:
    """What the TensorBoard preview of the same call would be (the labelled pair)."""
    from rangewatch import watch_visualization

    with watch_visualization(warn=False) as v:
        tvu.save_image(X[:4] * 2 - 1, io.BytesIO(), format="png")
    (p,) = v.pop_previews()
    return p.build_labelled().permute(1, 2, 0).numpy()


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    lg = WandbLogger(save_dir=str(tmp_path), offline=True, project="rangewatch-test")
    w = fit(lg)
    wandb.finish()
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    history: dict[str, list] = {}
    for r in finished_wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            row = {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in r.history.item}
            for k, v in row.items():
                history.setdefault(k, []).append((row.get("trainer/global_step"), v))
    # the same scalars, against numpy: the first batch
    first = X[:4].double().numpy()
    assert history[detail_tag("batch[0]", "min", 0)][0] == (0, pytest.approx(first[:, 0].min(), abs=1e-6))
    assert history[detail_tag("batch[0]", "mean", 2)][0][1] == pytest.approx(first[:, 2].mean(), abs=1e-5)
    assert history[detail_tag("batch[0]", "expected_min")][0][1] == -1
    mismatches = sum(f.kind == "mismatch" for f in w.findings)
    assert mismatches == 2  # batch[0] and val/batch[0]
    assert history["rangewatch/findings/mismatch"][-1][1] == mismatches
    # histograms of the flagged tap, every value counted
    h = history[tag("batch[0]", "hist", 1) + "/values"][0][1]
    assert sum(h) == first[:, 1].size and history[tag("batch[0]", "hist", 1) + "/_type"][0][1] == "histogram"
    # the findings table: every finding, in the columns rangewatch documents
    tables = sorted((run_dir / "files" / "media" / "table" / "rangewatch").glob("findings_*.table.json"), key=lambda p: int(p.name.split("_")[1]))
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == FINDING_COLUMNS
    assert [(row[1], row[2]) for row in table["data"]] == [(f.kind, f.where) for f in w.findings]
    assert {"mismatch", "clipping"} <= {row[1] for row in table["data"]}
    # the preview pair: the same labelled image TensorBoard gets
    (png,) = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert "broken_unit_0_1-vs-corrected_symmetric" in png.name
    np.testing.assert_array_equal(decode(png.read_bytes()), expected_preview(w))


def test_mlflow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    from lightning.pytorch.loggers import MLFlowLogger

    lg = MLFlowLogger(experiment_name="rangewatch-test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    w = fit(lg)
    run = tmp_path / "mlruns" / lg.experiment_id / lg.run_id
    # the same scalars (keys made MLflow-safe): "<timestamp> <value> <step>" per line
    def metric(name: str) -> list[tuple[int, float]]:
        lines = (run / "metrics" / mlflow_key(name)).read_text().split("\n")
        return [(int(s), float(v)) for _, v, s in (ln.split() for ln in lines if ln.strip())]

    first = X[:4].double().numpy()
    assert mlflow_key(detail_tag("batch[0]", "min", 0)) == "rangewatch_channels/batch_0_/min/c0"
    assert metric(detail_tag("batch[0]", "min", 0))[0] == (0, pytest.approx(first[:, 0].min(), abs=1e-6))
    assert metric(detail_tag("batch[0]", "max", 1))[0][1] == pytest.approx(first[:, 1].max(), abs=1e-6)
    assert metric("rangewatch/findings/mismatch")[-1][1] == sum(f.kind == "mismatch" for f in w.findings) == 2
    # the findings as a table artifact (columns + data) and as markdown
    table = json.loads((run / "artifacts" / "rangewatch" / "findings.json").read_text())
    assert table["columns"] == FINDING_COLUMNS
    assert [(row[1], row[2]) for row in table["data"]] == [(f.kind, f.where) for f in w.findings]
    md = (run / "artifacts" / "rangewatch" / "findings.md").read_text()
    assert "#### mismatch: `batch[0]`" in md
    # the preview pair as a stepped image
    pngs = [p for p in (run / "artifacts" / "images").glob("*.png") if "broken_unit_0_1-vs-corrected_symmetric" in p.name]
    assert len(pngs) == 1 and "+step+2+" in pngs[0].name
    np.testing.assert_array_equal(decode(pngs[0].read_bytes()), expected_preview(w))
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
