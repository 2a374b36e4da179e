"""Latent caches on disk: read a sample of the files, judge them against the VAE's latent convention.

Many trainers encode every image once and train from the cached latents, so a VAE input bug is baked in
before training starts. The formats read here:

* kohya-ss/sd-scripts: an ``.npz`` next to each image with a ``latents`` array ``(C, H, W)`` (float32, or
  float16 with ``cache_dtype``), ``original_size`` and ``crop_ltrb`` (``library/train_util.py``
  ``save_latents_to_disk``; the strategy-based trainers add a resolution suffix, ``latents_32x64``,
  ``library/strategy_base.py``). The latents are stored *raw*: the scaling factor is applied when training.
* diffusers-based trainers: a ``.pt`` holding the latent tensor (``torch.save(latents, path)``) or a dict
  with a ``latents`` entry, and ``.safetensors`` files whose latent keys name it (``latents``,
  ``latents_<F>x<H>x<W>_<dtype>`` of the video trainers); raw or already scaled, depending on the trainer,
  so the storage is read from the data: the std of all values is ``1 / scaling_factor`` (or the VAE's
  ``latents_std``) when raw and about 1 when scaled.

:func:`check_cache` returns a :class:`CacheReport`: files with NaN/Inf named, the storage (raw / scaled /
neither), the latent checks of :class:`~rangewatch.checks.latents.LatentMonitor` in the model's space,
files far from the others (outliers), latent-to-RGB previews of a few files and, with a local diffusers VAE
folder holding weights, the decoded pixels' convention (a cache encoded from [0, 1] images decodes to
[0, 1]: the washed-out signature of diffusion-pipe #545 / mlcommons/training #721).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..expect.conventions import Convention
from ..expect.vae_latents import latents_to_model, latents_to_raw
from ..findings.finding import Finding, nonfinite_finding

__all__ = ["CACHE_SUFFIXES", "CacheReport", "check_cache", "find_cache_files", "read_latents", "resolve_vae"]

CACHE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")
_SRC = "rangewatch check-cache"
#: the storage is named when the observed global std is within this log-distance of it ...
_STORAGE_BAND = math.log(1.5)


# ---------------------------------------------------------------------------- reading
def find_cache_files(root: str | os.PathLike) -> list[Path]:
    """Every cache file under ``root`` (recursively), sorted by path."""
    r = Path(root)
    if r.is_file():
        return [r] if r.suffix.lower() in CACHE_SUFFIXES else []
    return sorted(p for p in r.rglob("*") if p.is_file() and p.suffix.lower() in CACHE_SUFFIXES)


def sample_files(files: list[Path], n: int) -> list[Path]:
    """``n`` files evenly spread over the sorted list (deterministic: no random numbers are drawn)."""
    if n <= 0 or len(files) <= n:
        return list(files)
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def _latent_keys(keys: list[str]) -> list[str]:
    named = [k for k in keys if "latent" in k.lower() and "flip" not in k.lower()]
    return named


def read_latents(path: str | os.PathLike) -> list[tuple[str, torch.Tensor]]:
    """``[(key, tensor)]`` of the latent arrays in one cache file, as float32 CPU tensors."""
    p = Path(path)
    suf = p.suffix.lower()
    out: list[tuple[str, torch.Tensor]] = []
    if suf == ".npz":
        import numpy as np

        with np.load(p, allow_pickle=False) as npz:
            keys = _latent_keys(list(npz.files))
            for k in keys:
                out.append((k, torch.from_numpy(np.asarray(npz[k], dtype=np.float32))))
    elif suf == ".safetensors":
        from safetensors.torch import load_file

        d = load_file(str(p))
        keys = _latent_keys(list(d)) or [k for k, v in d.items() if v.is_floating_point() and v.dim() >= 3]
        out = [(k, d[k].float()) for k in keys]
    elif suf in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, torch.Tensor):
            out = [("tensor", obj.float())]
        elif isinstance(obj, dict):
            keys = _latent_keys([k for k in obj if isinstance(k, str)]) or [
                k for k, v in obj.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 3]
            out = [(k, obj[k].float()) for k in keys if isinstance(obj[k], torch.Tensor)]
    return [(k, t) for k, t in out if t.dim() >= 3 and t.numel()]


def resolve_vae(vae: str | None) -> tuple[Convention | None, str | None]:
    """``(convention, local model folder or None)`` for ``--vae``: a catalogue name (``sdxl_latent``, ``sdxl``),
    a diffusers ``config.json``, or a local diffusers model folder (``vae/`` inside a pipeline folder too)."""
    from ..expect.vae_latents import latent_convention_of, named_latent_convention

    if vae is None:
        return None, None
    if os.path.exists(vae):
        conv = latent_convention_of(vae)
        if conv is None:
            raise ValueError(f"--vae {vae}: its config declares no latent scaling (scaling_factor / latents_mean)")
        folder = vae if os.path.isdir(vae) else None
        if folder is not None and os.path.isdir(os.path.join(folder, "vae")) and not os.path.isfile(os.path.join(folder, "config.json")):
            folder = os.path.join(folder, "vae")
        return conv, folder
    return named_latent_convention(vae), None


def _batched(t: torch.Tensor, conv: Convention | None) -> tuple[torch.Tensor, int]:
    """``(tensor with a batch dim, channel dim)``: a cache file holds one sample ``(C, H, W)`` / ``(C, T, H, W)``
    or a batch ``(N, C, H, W)`` / ``(N, C, T, H, W)``; under a convention whose pipelines keep ``(N, T, C, H, W)``
    (CogVideoX, ``layout == "NTCHW"``) one clip ``(T, C, H, W)`` or a batch ``(N, T, C, H, W)``."""
    c = conv.channels if conv is not None else None
    if c:
        if conv is not None and conv.layout == "NTCHW":  # before the channels-first reading, which would take T for N
            if t.dim() == 5 and t.shape[2] == c:
                return t, 2
            if t.dim() == 4 and t.shape[1] == c and t.shape[0] != c:
                return t[None], 2
        if t.shape[0] == c:
            return t[None], 1
        if t.dim() >= 4 and t.shape[1] == c:
            return t, 1
    return t[None], 1


# ---------------------------------------------------------------------------- report
@dataclass
class CacheReport:
    root: str
    files_total: int
    files: list[str] = field(default_factory=list)  # the sampled files read
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    nonfinite: list[tuple[str, int, int]] = field(default_factory=list)  # (file, NaN, Inf)
    outliers: list[tuple[str, str]] = field(default_factory=list)
    convention: Convention | None = None
    storage: str = "unknown"  # "raw", "scaled", "neither", "unknown"
    global_std: float = float("nan")
    channel_mean: list[float] = field(default_factory=list)
    channel_std: list[float] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    previews: list[tuple[str, bytes]] = field(default_factory=list)  # (file, PNG)
    decoded: list[tuple[str, str]] = field(default_factory=list)  # (file, inferred pixel convention)

    @property
    def ok(self) -> bool:
        return not any(f.severity in ("warning", "error") for f in self.findings)

    def format(self) -> str:
        conv = self.convention
        lines = [f"rangewatch check-cache {self.root}: {len(self.files)} of {self.files_total} files read"
                 + (f", {len(self.unreadable)} unreadable" if self.unreadable else "")]
        if conv is not None:
            lines.append(f"  VAE latent convention: {conv.name} ({conv.label}; {conv.source})")
        lines.append(f"  stored: {self.storage}; std of all values {self.global_std:.4g}")
        if self.channel_mean:
            lines.append("  per-channel mean " + ", ".join(f"{v:.3g}" for v in self.channel_mean))
            lines.append("  per-channel std  " + ", ".join(f"{v:.3g}" for v in self.channel_std))
        for f, n, i in self.nonfinite:
            lines.append(f"  NaN/Inf: {f} ({n} NaN, {i} Inf)")
        for f, why in self.outliers:
            lines.append(f"  outlier: {f}: {why}")
        for f, why in self.unreadable:
            lines.append(f"  unreadable: {f}: {why}")
        for f, c in self.decoded:
            lines.append(f"  decoded {f}: pixels look like {c}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.findings:
            lines.append("findings:")
            lines += [f"  {f.severity}: {f}" for f in self.findings]
        lines.append("result: " + ("OK" if self.ok else "PROBLEM"))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "files_total": self.files_total, "files": self.files, "unreadable": self.unreadable,
            "nonfinite": self.nonfinite, "outliers": self.outliers, "storage": self.storage, "global_std": self.global_std,
            "convention": None if self.convention is None else self.convention.name, "channel_mean": self.channel_mean,
            "channel_std": self.channel_std, "findings": [f.to_dict() for f in self.findings], "notes": self.notes,
            "decoded": self.decoded, "ok": self.ok,
        }


def _raw_to_model(z: torch.Tensor, conv: Convention, cd: int) -> torch.Tensor:
    return latents_to_model(z, conv.scale, conv.shift, conv.latents_mean, conv.latents_std, cd)


def _model_to_raw(z: torch.Tensor, conv: Convention, cd: int) -> torch.Tensor:
    return latents_to_raw(z, conv.scale, conv.shift, conv.latents_mean, conv.latents_std, cd)


def _png(img: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes (nearest-neighbour enlarged to at least 128 px wide)."""
    from PIL import Image

    k = max(1, min(8, -(-128 // max(1, int(img.shape[-1])))))
    if k > 1:
        img = img.repeat_interleave(k, -1).repeat_interleave(k, -2)
    a = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _preview(z: torch.Tensor, conv: Convention | None, cd: int) -> torch.Tensor:
    """(3, H, W) preview of the first sample (first frame of a video): the convention's latent-to-RGB factors,
    else the first three channels, each stretched over its own 1st..99th percentiles."""
    from .latents import latent_preview

    zz = torch.movedim(z[:1], cd, 1)
    if zz.dim() == 5:
        zz = zz[:, :, 0]
    if conv is not None and conv.latent_rgb is not None and zz.shape[1] == len(conv.latent_rgb):
        return latent_preview(zz, conv)[0]
    x = zz[0, :3] if zz.shape[1] >= 3 else zz[0, :1].expand(3, -1, -1)
    flat = x.reshape(x.shape[0], -1)
    lo, hi = flat.quantile(0.01, dim=1), flat.quantile(0.99, dim=1)
    return ((x - lo[:, None, None]) / (hi - lo).clamp(min=1e-6)[:, None, None]).nan_to_num(0.0).clamp(0, 1)


def check_cache(root: str | os.PathLike, vae: str | None = None, *, sample: int = 64, previews: int = 4,
                decode: int = 2, progress: bool = True, stored: str = "auto") -> CacheReport:
    """Check a latent cache (see the module docstring). ``vae``: a catalogue name, a diffusers ``config.json``
    or a local diffusers VAE folder (with weights, ``decode`` files are decoded and their pixels judged).
    ``stored``: ``"auto"`` (read from the data), ``"raw"`` or ``"scaled"``."""
    from tqdm.auto import tqdm

    from .latents import LatentMonitor, _global_expected, _global_std, expected_stds

    conv, folder = resolve_vae(vae)
    files = find_cache_files(root)
    rep = CacheReport(str(root), len(files), convention=conv)
    if not files:
        raise FileNotFoundError(f"no latent cache files ({', '.join(CACHE_SUFFIXES)}) under {root}")
    chosen = sample_files(files, sample)
    tensors: list[tuple[str, torch.Tensor, int]] = []
    bar = tqdm(chosen, desc="rangewatch check-cache", unit="file", disable=not progress, leave=False)
    for p in bar:
        rel = os.path.relpath(p, root) if Path(root).is_dir() else p.name
        try:
            found = read_latents(p)
        except Exception as e:  # noqa: BLE001  (one bad file is named, the rest is read)
            rep.unreadable.append((rel, f"{type(e).__name__}: {str(e)[:160]}"))
            continue
        if not found:
            rep.unreadable.append((rel, "no latent array in it"))
            continue
        rep.files.append(rel)
        for key, t in found:
            z, cd = _batched(t, conv)
            nan, inf = int(torch.isnan(z).sum()), int(torch.isinf(z).sum())
            name = rel if len(found) == 1 else f"{rel}[{key}]"
            if nan or inf:
                rep.nonfinite.append((name, nan, inf))
                continue
            tensors.append((name, z, cd))
    bar.close()
    if rep.nonfinite:
        total = len(rep.nonfinite)
        rep.findings.append(nonfinite_finding(
            f"latent cache {root}", observed=f"NaN/Inf in {total} cached latent file(s)",
            expected="finite latents",
            evidence="; ".join(f"{f}: {n} NaN, {i} Inf" for f, n, i in rep.nonfinite[:10])
            + (f"; and {total - 10} more" if total > 10 else "") + " (decoding them gives black images; an fp16 VAE "
            "encode that overflowed is the usual cause, e.g. kohya sd-scripts #2322)",
            fix="delete these files and re-encode them with the VAE in fp32 (or bf16); e.g. sd-scripts --no_half_vae",
            source=_SRC,
        ))
    if not tensors:
        return rep
    c = tensors[0][1].shape[tensors[0][2]]
    same = [(n, z, cd) for n, z, cd in tensors if z.shape[cd] == c]
    if len(same) < len(tensors):
        rep.notes.append(f"{len(tensors) - len(same)} file(s) with another channel count than {c} were left out")
    if conv is not None and conv.channels is not None and conv.channels != c:
        rep.findings.append(Finding(
            kind="mismatch", where=f"latent cache {root}", observed=f"{c}-channel latents",
            expected=f"{conv.name} ({conv.channels} channels)",
            evidence=f"the cached latents have {c} channels (shape {tuple(same[0][1].shape)}) while {conv.label} has {conv.channels}",
            fix="check with the VAE that wrote the cache (--vae), or re-encode the cache with the VAE you train with",
            severity="error", source=_SRC,
        ))
        return rep
    # ---- raw or scaled: the std of all values against both storages of this VAE's convention
    from ..stats.range_stats import RangeStats

    raw_stats = RangeStats(channel_dim=1, sync_on_compute=False)
    for _, z, cd in same:
        raw_stats.update(torch.movedim(z, cd, 1), detail=True)
    summ = raw_stats.compute()
    rep.global_std = _global_std(summ)
    rep.channel_mean = [float(v) for v in summ.mean]
    rep.channel_std = [float(v) for v in summ.std]
    if conv is None:
        rep.storage = "unknown"
        rep.notes.append("no --vae given: the scale cannot be judged (give the VAE's config.json, its folder, or a "
                         "convention name such as sdxl_latent); NaN/Inf and outliers are checked")
        monitor_conv = None
    else:
        model_sd, raw_sd = expected_stds(conv, c)  # the std of all values, raw and scaled (checks/latents.py)
        want = {"raw": _global_expected(raw_sd, conv, "missing"), "scaled": _global_expected(model_sd, conv, "right")}
        d = {k: abs(math.log(rep.global_std) - math.log(v)) if rep.global_std > 0 else float("inf") for k, v in want.items()}
        if stored in ("raw", "scaled"):
            rep.storage = stored
        else:
            best = min(d, key=d.get)
            other = "scaled" if best == "raw" else "raw"
            rep.storage = best if d[best] < _STORAGE_BAND and d[best] < 0.5 * d[other] else "neither"
        if rep.storage == "neither":
            rep.findings.append(Finding(
                kind="latent_scale", where=f"latent cache {root}",
                observed=f"cached latents with std {rep.global_std:.4g}: neither raw nor scaled {conv.name} latents",
                expected=f"raw VAE latents (std about {want['raw']:.4g}) or latents scaled for the model (std about {want['scaled']:.4g})",
                evidence=f"std of all values of {len(same)} sampled file(s) {rep.global_std:.4g} (a scaling factor is defined on "
                f"it: 1 / z.flatten().std()); log-distance to raw {d['raw']:.2f}, to scaled {d['scaled']:.2f}; per-channel "
                f"means {', '.join(f'{v:.3g}' for v in rep.channel_mean[:16])}",
                fix="check which VAE wrote this cache (another VAE's latents, or latents scaled by another factor) and "
                "re-encode it with the VAE you train with, storing raw latents as the trainer expects",
                severity="warning", source=_SRC,
            ))
            monitor_conv = None
        else:
            monitor_conv = conv
            rep.notes.append(f"stored {rep.storage}: std of all values {rep.global_std:.4g} (raw {conv.name} latents have "
                             f"about {want['raw']:.4g}, scaled ones about {want['scaled']:.4g})")
    # ---- model-space checks and outliers
    if monitor_conv is not None:
        mon = LatentMonitor(monitor_conv, channel_dim=1, sync_on_compute=False, preview_samples=0)
        for _, z, cd in same:
            zm = torch.movedim(z, cd, 1)
            mon.update(_raw_to_model(zm, monitor_conv, 1) if rep.storage == "raw" else zm)
        for f in mon.check(where=f"latent cache {root} (model space)"):
            if f.kind == "nonfinite":
                continue
            rep.findings.append(f)
    stds = torch.tensor([float(z.double().std()) for _, z, _ in same], dtype=torch.float64)
    if len(same) >= 5:
        med = float(stds.median())
        for (n, z, _), s in zip(same, stds.tolist()):
            if med > 0 and abs(math.log(max(s, 1e-12) / med)) > math.log(3):
                rep.outliers.append((n, f"std {s:.4g}, {s / med:.2g} times the median file's {med:.4g}"))
        if rep.outliers:
            rep.findings.append(Finding(
                kind="latent_outliers", where=f"latent cache {root}", observed=f"{len(rep.outliers)} cached file(s) far from the others",
                expected="files with similar spreads (one VAE, one storage)",
                evidence="; ".join(f"{n}: {why}" for n, why in rep.outliers[:10]),
                fix="re-encode these files (a different VAE, scaling or an fp16 overflow wrote them)",
                severity="warning", source=_SRC,
            ))
    # ---- previews
    for n, z, cd in same[: max(0, previews)]:
        try:
            zz = _raw_to_model(torch.movedim(z, cd, 1), monitor_conv, 1) if (monitor_conv is not None and rep.storage == "raw") else torch.movedim(z, cd, 1)
            rep.previews.append((n, _png(_preview(zz, monitor_conv or conv, 1))))
        except Exception as e:  # noqa: BLE001
            rep.notes.append(f"no preview of {n} ({type(e).__name__}: {e})")
    # ---- decode with the VAE's weights
    if folder is not None and decode > 0 and conv is not None:
        _decode(rep, folder, conv, same[:decode], rep.storage)
    return rep


def _has_weights(folder: str) -> bool:
    return any(f.startswith("diffusion_pytorch_model") and f.endswith((".safetensors", ".bin")) for f in os.listdir(folder))


def _decode(rep: CacheReport, folder: str, conv: Convention, items: list, storage: str) -> None:
    """Decode a few files with the VAE's weights and judge the decoded pixels: a cache encoded from [0, 1]
    images decodes to [0, 1] (washed out) instead of the [-1, 1] the VAE's decoder gives."""
    if not _has_weights(folder):
        rep.notes.append(f"{folder} holds no weights (diffusion_pytorch_model.*): nothing decoded")
        return
    import diffusers

    from ..expect.vae_latents import vae_config
    from ..stats.range_stats import RangeStats
    from .inference import infer_convention

    _, cls, _ = vae_config(folder)
    model_cls = getattr(diffusers, cls or "AutoencoderKL")
    vae = model_cls.from_pretrained(folder).eval()
    stats = RangeStats(channel_dim=1, sync_on_compute=False)
    flat: list[torch.Tensor] = []
    for n, z, cd in items:
        zz = torch.movedim(z, cd, 1)
        raw = zz if storage == "raw" else _model_to_raw(zz, conv, 1)
        with torch.no_grad():
            x = vae.decode(raw.to(next(vae.parameters()).dtype)).sample.float()
        if x.dim() == 5:
            x = x.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1], x.shape[3], x.shape[4])
        stats.update(x, detail=True)
        flat.append(x.flatten())
        inf1 = infer_convention(x)
        rep.decoded.append((n, inf1.name if inf1.confident else f"{inf1.name} (not confident)"))
    inf = infer_convention(stats)
    summ = stats.compute()
    lo, hi = float(summ.finite_min.min()), float(summ.finite_max.max())
    v = torch.cat(flat)
    dark = float((v < -0.3).double().mean())  # [-1, 1] photos: every pixel darker than 35% grey lands here
    q01, q99 = (float(q) for q in torch.quantile(v[:: max(1, v.numel() // 200000)], torch.tensor([0.01, 0.99])))
    # decoders give back the range they were fed, with some over/undershoot: [0, 1] images decode to about
    # [0, 1], with hardly anything below -0.3; [-1, 1] photos put their shadows there
    washed = dark < 0.01 and q99 > 0.6 and q01 > -0.3
    if (inf.confident and inf.name == "unit") or washed:
        how = (inf.evidence[:400] if inf.confident and inf.name == "unit" else
               f"{dark:.2%} of decoded values below -0.3 (1st..99th percentile {q01:.3g} .. {q99:.3g}): the lower half of "
               "[-1, 1] is empty, as for [0, 1] images (or a set of only very bright images: look at a few)")
        rep.findings.append(Finding(
            kind="mismatch", where=f"latent cache {rep.root} (decoded with {folder})", observed="unit",
            expected="symmetric",
            evidence=f"{len(items)} decoded file(s) span {lo:.3g} .. {hi:.3g}: the decoder returns the range it was fed when "
            "encoding, and these images were [0, 1] (washed out once shown as [-1, 1]); " + how,
            fix="re-encode the cache with the images mapped to [-1, 1] before vae.encode (x * 2 - 1, or / 127.5 - 1 from uint8)",
            severity="error" if inf.confident and inf.name == "unit" else "warning", source=_SRC,
        ))
    else:
        rep.notes.append(f"decoded pixels span {lo:.3g} .. {hi:.3g} ({inf.name}{'' if inf.confident else ', not confident'}; "
                         f"{dark:.1%} below -0.3)")


def write_html(rep: CacheReport, path: str | os.PathLike) -> str:
    """One self-contained HTML page: the summary, the findings and the latent-to-RGB previews."""
    import base64
    import html

    rows = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode(png).decode()}' alt='{html.escape(n)}'>"
        f"<figcaption>{html.escape(n)}</figcaption></figure>" for n, png in rep.previews)
    finds = "".join(f"<li><b>{html.escape(f.severity)}</b> {html.escape(str(f))}</li>" for f in rep.findings) or "<li>none</li>"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>rangewatch check-cache</title>"
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:.5em}"
        "img{image-rendering:pixelated}pre{background:#f4f4f4;padding:1em}</style></head><body>"
        f"<h1>Latent cache {html.escape(rep.root)}</h1><pre>{html.escape(rep.format())}</pre>"
        f"<h2>Findings</h2><ul>{finds}</ul><h2>Latent previews (no decode)</h2>{rows or '<p>none</p>'}</body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")
    return str(path)


def main_check_cache(args: Any, out: Callable[[str], None] = print) -> int:
    """The ``rangewatch check-cache`` subcommand: exit 0 when nothing is wrong, 1 on a problem, 2 when the check
    could not run (no cache files, an unknown ``--vae``)."""
    import json
    import sys

    try:
        rep = check_cache(args.dir, args.vae, sample=args.sample, previews=args.previews, decode=args.decode,
                          progress=not args.no_progress, stored=args.stored)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        print(f"rangewatch check-cache: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    html_path = args.html or os.path.join(os.getcwd(), "rangewatch_cache.html")
    try:
        write_html(rep, html_path)
    except OSError as e:
        rep.notes.append(f"HTML page not written ({e})")
        html_path = None
    if args.json:
        out(json.dumps({**rep.to_dict(), "html": html_path}, indent=2))
    else:
        out(rep.format() + (f"\npreviews: {html_path}" if html_path else ""))
    return 0 if rep.ok else 1
