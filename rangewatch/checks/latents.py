"""Latent monitor for taps declared with a latent convention (SD 1.x, SDXL, SD3, Flux, ...).

:class:`LatentMonitor` accumulates, on the latents' device and without host syncs, per-channel
mean/std, finite min/max, the count beyond ``±boundary`` (the decoder's comfortable range, 4), the
count a soft clamp (threshold 3.5) would change and a histogram, all in the *model's* latent
space ``z_model = (z_vae - shift) * scale``. :meth:`LatentMonitor.check` (one host transfer) turns
them into findings:

* ``latent_scale``: the std should be about 1 (``scale`` for conventions that carry
  ``latents_mean``/``latents_std``, as Playground 2.5: ``(z - mean) * scale / std``). Each channel's
  std is compared in log space with three hypotheses: scaled once (right), not scaled (std ≈ raw
  VAE std, ``1/scale``), scaled twice (``scale``);
* ``latent_shift`` (conventions with a shift: SD3, Flux): ``z_vae * scale`` instead of
  ``(z_vae - shift) * scale`` moves every channel mean by ``+shift*scale``; also "subtracted twice"
  (``-shift*scale``) and "subtracted after scaling" (``z*scale - shift``: ``shift*(scale-1)``). Judged on
  samples (images, clips), not values: the offset must stand out from the between-sample spread of the samples'
  common means (Student's t, 3 sigma); a few images' content moves all channel means together, and then nothing is said;
* ``color_cast`` (``info``, no fix): the channel-mean vector projected through the latent-to-RGB factors
  gives the direction it pushes the image; its chroma part is named with a hue table ("towards yellow").
  One window's mean colour is content (a sunset, a red car), so it is said, never warned about; a cast is
  judged from the drift of the channel means across denoising steps (:mod:`rangewatch.pipeline.checks`);
* ``latent_scale`` is decided on the std of all values pooled over channels (the statistic a scaling factor
  is defined on, ``1 / z.flatten().std()``), not on per-channel stds: shifted channel means are content;
* ``latent_outliers``: the share of values a soft clamp (3.5 / 4) would change, and values far
  beyond ±4 ("values reach 31.2 while the decoder's comfortable range is about ±4").

:func:`latent_preview` is the cheap RGB preview (linear factors, no VAE decode);
:func:`rangewatch.sinks.latents.log_latents` writes it and the per-channel histograms to a TensorBoard
``SummaryWriter`` (checks never write: see docs/ARCHITECTURE.md, import rules).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch

from ..expect.conventions import Convention, get_convention
from ..findings.finding import Finding, Severity, nonfinite_finding
from ..stats.range_stats import RangeStats, RangeSummary

__all__ = [
    "LatentMonitor",
    "LatentCheck",
    "hue_name",
    "latent_preview",
    "soft_clamp",
    "CHANNEL_NAMES",
]

#: what individual latent channels show, where known (T. A. Vass, "Explaining the SDXL latent space")
CHANNEL_NAMES: dict[str, tuple[str, ...]] = {
    "sdxl_latent": ("luminance", "cyan/red", "lime/purple", "pattern/structure"),
}

#: log-distance of the observed std from "scaled once" within which the scale is accepted (a factor of 1.2;
#: another VAE's factor is 1.4 away: SD 1.x 0.18215 vs SDXL 0.13025)
_SCALE_BAND = math.log(1.2)

# hue (degrees, 0 = red, as HSV) -> name; 30 degree steps
_HUES = (
    (0, "red"),
    (30, "orange"),
    (60, "yellow"),
    (90, "lime"),
    (120, "green"),
    (150, "spring green"),
    (180, "cyan"),
    (210, "azure"),
    (240, "blue"),
    (270, "violet"),
    (300, "magenta"),
    (330, "pink"),
)


def hue_angle(rgb: Sequence[float]) -> float:
    """Hue of an RGB direction in degrees (0 red, 60 yellow, 120 green, 180 cyan, 240 blue, 300 magenta)."""
    r, g, b = (float(v) for v in rgb)
    return math.degrees(math.atan2(math.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


def hue_name(rgb: Sequence[float]) -> str:
    """Name of the hue an RGB direction points to (e.g. ``+R +G -B`` -> ``"yellow"``)."""
    h = hue_angle(rgb)
    return min(_HUES, key=lambda t: min(abs(h - t[0]), 360 - abs(h - t[0])))[1]


def _signs(rgb: Sequence[float]) -> str:
    return " ".join(f"{'+' if v >= 0 else '-'}{c}" for c, v in zip("RGB", rgb))


def _latent_conv(convention: str | Convention) -> Convention:
    conv = get_convention(convention)
    if conv.kind != "latent":
        raise ValueError(f"{conv.name} is a pixel convention; LatentMonitor needs a latent one (e.g. 'sdxl_latent')")
    return conv


# ---------------------------------------------------------------------------- transforms
def soft_clamp(z: torch.Tensor, threshold: float = 3.5, boundary: float = 4.0, channel_dim: int = 1) -> torch.Tensor:
    """Compress values past ``±threshold`` linearly so each (sample, channel)'s max |x| lands on
    ``boundary`` (values already inside ``±boundary`` are unchanged). After Vass's SDXL soft clamp.
    No host sync."""
    if not 0 < threshold < boundary:
        raise ValueError(f"need 0 < threshold < boundary, got {threshold}, {boundary}")
    cd = channel_dim % z.dim()
    keep = {0, cd} if z.dim() > 2 else {cd}
    dims = [d for d in range(z.dim()) if d not in keep]
    a = z.abs()
    m = a.amax(dim=dims, keepdim=True) if dims else a
    factor = ((boundary - threshold) / (m - threshold).clamp(min=1e-12)).clamp(max=1.0)
    squeezed = threshold + (a - threshold) * factor
    return torch.where(a > threshold, torch.sign(z) * squeezed, z)


def video_frames(length: int, k: int = 3) -> list[int]:
    """At most ``k`` frame indices of a clip of ``length`` frames, evenly spaced from the first to the
    last (``k=3``: first, middle, last), without repeats."""
    if length <= 0 or k <= 0:
        return []
    if k == 1 or length == 1:
        return [0]
    return sorted({round(i * (length - 1) / (k - 1)) for i in range(k)})


def latent_preview(z: torch.Tensor, convention: str | Convention, channel_dim: int = 1,
                   frames: int | None = 3) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB preview in [0, 1] from the linear latent-to-RGB factors (no VAE decode).

    Accepts ``(C, H, W)``, ``(N, C, H, W)`` and video latents, ``(N, C, T, H, W)`` (Wan, HunyuanVideo,
    Mochi: ``channel_dim=1``) or ``(N, T, C, H, W)`` (CogVideoX pipelines: ``channel_dim=2``). Of a
    video, ``frames`` evenly spaced frames of each clip become images (3: first, middle, last; ``None``:
    every frame), clip after clip: ``(N * frames, 3, H, W)``. NaN shows as black.
    """
    conv = _latent_conv(convention)
    if conv.latent_rgb is None:
        raise ValueError(f"convention {conv.name!r} has no latent-to-RGB factors (register it with latent_rgb=...)")
    if z.dim() == 3:
        z = torch.movedim(z, channel_dim, 0).unsqueeze(0)
    elif z.dim() in (4, 5):
        z = torch.movedim(z, channel_dim, 1)
    else:
        raise ValueError(f"latent_preview takes (C,H,W), (N,C,H,W) or (N,C,T,H,W) latents, got shape {tuple(z.shape)}")
    if z.dim() == 5:
        if frames is not None:
            z = z[:, :, video_frames(int(z.shape[2]), int(frames))]
        n, c, t, h, w = z.shape
        z = z.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    return conv.to_display(z.detach(), channel_dim=1)


# ---------------------------------------------------------------------------- monitor
class LatentCheck:
    """Host-side numbers behind a check (also handy in tests and reports)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return "LatentCheck(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_")) + ")"


class LatentMonitor:
    """Per-channel latent statistics on the device and the checks on them.

    Args:
        convention: a latent convention (name or object), e.g. ``"sdxl_latent"``.
        channel_dim: the channel dimension of the latents.
        hist_bins, hist_range: histogram of each channel (default 128 bins over ``±2*boundary``:
            bins of 0.125 with edges on ±3.5 and ±4; values outside land in under/overflow). The
            scale check uses a robust std from it (interquartile range / 1.349) when the quartiles
            are well resolved, so a few huge outliers do not read as a missing scale factor.
        soft_threshold: threshold of the soft clamp (3.5); ``latent_outliers`` counts ``|x| > it``.
        outlier_share: ``latent_outliers`` fires when more than this share of values is past
            ``soft_threshold`` (default 0.5%; a unit Gaussian has 0.047%) ...
        extreme_factor: ... or when max |x| exceeds ``extreme_factor * boundary`` (8 sigma).
        cast_threshold: ``color_cast`` fires when the chroma of the channel-mean RGB push exceeds this
            (preview units, which read as [-1, 1]).
        preview_samples: how many samples of the last update are kept (on the device) for previews.
        **stats_kwargs: passed to :class:`~rangewatch.stats.range_stats.RangeStats` (e.g. ``dist_sync_fn``). Under
            DDP the soft-clamp count (``|x| > soft_threshold``) is this rank's own; the rest syncs.
    """

    def __init__(
        self,
        convention: str | Convention,
        channel_dim: int = 1,
        *,
        hist_bins: int = 128,
        hist_range: tuple[float, float] | None = None,
        soft_threshold: float = 3.5,
        outlier_share: float = 5e-3,
        extreme_factor: float = 2.0,
        cast_threshold: float = 0.1,
        unexplained_factor: float = 2.0,
        preview_samples: int = 4,
        **stats_kwargs: Any,
    ) -> None:
        self.conv = _latent_conv(convention)
        self.channel_dim = channel_dim
        b = self.conv.boundary
        self.stats = RangeStats(
            channel_dim=channel_dim,
            bounds=self.conv,
            hist_bins=hist_bins,
            hist_range=hist_range or (-2 * b, 2 * b),
            **stats_kwargs,
        )
        self.soft_threshold = float(soft_threshold)
        self.outlier_share = float(outlier_share)
        self.extreme_factor = float(extreme_factor)
        self.cast_threshold = float(cast_threshold)
        self.unexplained_factor = float(unexplained_factor)
        self.preview_samples = int(preview_samples)
        self._over: torch.Tensor | None = None  # (C,) float64: |x| > soft_threshold
        # the independent units behind the channel means are samples (images, clips), not values: each
        # sample's mean over its channels and positions, summed (sum, sum of squares, float64, on the device),
        # and how many samples (a Python int from the shapes). This rank's own under DDP, like _over.
        self._img: torch.Tensor | None = None
        self._img_n = 0
        self.last: torch.Tensor | None = None

    # ------------------------------------------------------------------ update (per step, no sync)
    def update(self, z: torch.Tensor, preview: bool = True) -> None:
        """Accumulate ``z`` (model-space latents). Device ops only. ``preview=False`` (the engine's ordinary,
        non-check steps) keeps the preview sample already held instead of copying this one: a window's preview is
        then its check step's latents, or its first latents when none came at a check step."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"LatentMonitor.update takes a tensor, got {type(z).__name__}")
        z = z.detach()
        c_expected = self.conv.channels
        if c_expected is not None and z.dim() > 0 and z.shape[self.channel_dim] != c_expected:
            raise ValueError(
                f"{self.conv.name} latents have {c_expected} channels; got shape {tuple(z.shape)} with "
                f"channel_dim={self.channel_dim} (packed Flux/SD3 token latents must be unpacked to (N, C, H, W))"
            )
        if z.numel() == 0:
            return
        self.stats.update(z, detail=True)
        cd = self.channel_dim % z.dim()
        dims = [d for d in range(z.dim()) if d != cd]
        over = (z.abs() > self.soft_threshold).sum(dim=dims, dtype=torch.float64) if dims else (z.abs() > self.soft_threshold).double()
        self._over = over if self._over is None else self._over + over
        # per-sample common mean (mean over channels of the sample's channel means = mean of all its values);
        # the batch dim is 0 unless the channels are there (then the tensor is one sample)
        if cd != 0 and z.dim() >= 2:
            g, k = z.mean(dim=list(range(1, z.dim())), dtype=torch.float32).double(), int(z.shape[0])
        else:
            g, k = z.mean(dtype=torch.float32).double().reshape(1), 1
        img = torch.stack([g.sum(), (g * g).sum()])
        self._img = img if self._img is None else self._img + img
        self._img_n += k
        if not self.preview_samples or (not preview and self.last is not None):
            return
        if z.dim() >= 4 and cd != 0:
            self.last = z[: self.preview_samples].clone()
        elif z.dim() == 3:
            self.last = z.clone()

    def reset(self) -> None:
        self.stats.reset()
        self._over = None
        self._img = None
        self._img_n = 0
        self.last = None

    def state_dict(self) -> dict[str, Any]:
        """The window so far (statistics and soft-clamp counts), on the host, for a checkpoint."""
        state: dict[str, Any] = {f"stats.{k}": v.detach().cpu() for k, v in self.stats.state_dict().items()}
        if self._over is not None:
            state["over"] = self._over.detach().cpu()
        if self._img is not None:
            state["samples"] = torch.cat([torch.tensor([float(self._img_n)], dtype=torch.float64), self._img.detach().cpu()])
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Go on with a window saved by :meth:`state_dict` (moved to ``device``)."""
        self.stats.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("stats.")})
        if device is not None:
            self.stats.to(device)
        over = state.get("over")
        self._over = None if over is None else over.to(device if device is not None else over.device, torch.float64)
        samples = state.get("samples")
        if samples is None:
            self._img, self._img_n = None, 0
        else:
            self._img_n = int(samples[0])
            self._img = samples[1:].to(device if device is not None else samples.device, torch.float64)

    # ------------------------------------------------------------------ check (host)
    def summary(self) -> RangeSummary:
        return self.stats.compute()

    def _expected(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (expected model-space std, raw unscaled VAE std)."""
        return expected_stds(self.conv, c)

    def analyse(self) -> LatentCheck | None:
        """The numbers behind :meth:`check` (one host transfer); ``None`` before any update."""
        summ = self.stats.compute()
        if summ.channels == 0 or float(summ.count.sum()) == 0:
            return None
        over = self._over.double().cpu() if self._over is not None else torch.zeros(summ.channels, dtype=torch.float64)
        c = summ.channels
        std = summ.std
        mean = summ.mean
        robust = _robust_std(summ)
        std_used = torch.where(torch.isfinite(robust), robust, std)
        e, raw = self._expected(c)
        hyps = {"right": e, "missing": raw, "double": e * e / raw}

        def distances(v: torch.Tensor) -> dict[str, float]:
            ok = torch.isfinite(v) & (v > 0)
            if not bool(ok.any()):
                return {k: float("inf") for k in hyps}
            lv = v[ok].log()
            return {k: float((lv - h[ok].log()).abs().mean()) for k, h in hyps.items()}

        # A scaling factor is defined on the std of the whole flattened latent tensor, channel means
        # included: ``1 / z.flatten().std()`` (diffusers' train_text_to_image scripts and the SD / SDXL
        # configs document scaling_factor that way). Per-channel stds are not that statistic: channels
        # whose means sit at +-0.75 have a per-channel std of about 0.7 while the flattened std is 1.03.
        # The scale is decided on the global std (and a robust one, from each channel's interquartile range
        # plus the spread of the channel means, so a few huge outliers do not read as a missing factor).
        g_std = _global_std(summ)
        g_robust = _global_robust_std(summ, robust)
        g_hyps = {k: _global_expected(h, self.conv, k) for k, h in hyps.items()}

        def gdist(v: float) -> dict[str, float]:
            if not (math.isfinite(v) and v > 0):
                return {k: float("inf") for k in g_hyps}
            return {k: abs(math.log(v) - math.log(h)) for k, h in g_hyps.items()}

        dist_std, dist_robust = gdist(g_std), gdist(g_robust)
        dist = dist_robust if math.isfinite(dist_robust["right"]) else dist_std
        # a wrong factor multiplies every value, so the per-channel spreads move with the global one;
        # a verdict needs them too (channel means far out raise the global std alone)
        per_channel = distances(std_used)
        per_channel_plain = distances(std)
        per_channel_robust = distances(robust)
        n = summ.detail_count.clamp(min=1)
        fmin, fmax = summ.finite_min, summ.finite_max
        maxabs_c = torch.maximum(fmin.abs(), fmax.abs()).nan_to_num(nan=0.0)
        return LatentCheck(
            summary=summ,
            channels=c,
            mean=mean,
            std=std,
            robust_std=robust,
            scale_std=std_used,
            expected_std=e,
            raw_std=raw,
            scale_distance=dist,
            channel_scale_distance=per_channel,
            channel_std_distance=per_channel_plain,
            channel_robust_distance=per_channel_robust,
            global_std=g_std,
            global_robust_std=g_robust,
            global_expected={k: float(v) for k, v in g_hyps.items()},
            over_threshold=over,
            over_share=float(over.sum() / n.sum()),
            beyond_share=float((summ.below + summ.above).sum() / n.sum()),
            maxabs=maxabs_c,
            max_abs=float(maxabs_c.max()),
            std_se=(std / summ.count.clamp(min=1).sqrt()).nan_to_num(nan=0.0),
            **self._sample_spread(),
            std_distance=dist_std,
            robust_distance=dist_robust,
        )

    def _sample_spread(self) -> dict[str, Any]:
        """Samples seen (``samples``), the spread of their common means between samples (``sample_sd``, NaN
        below two samples) and the standard error of the window's common channel mean (``common_se``)."""
        n = self._img_n
        if self._img is None or n < 2:
            return {"samples": n, "sample_sd": float("nan"), "common_se": float("nan")}
        s1, s2 = (float(v) for v in self._img.cpu())
        var = max(s2 - s1 * s1 / n, 0.0) / (n - 1)
        sd = math.sqrt(var) if math.isfinite(var) else float("nan")
        return {"samples": n, "sample_sd": sd, "common_se": sd / math.sqrt(n)}

    def check(self, step: int | None = None, where: str = "latents") -> list[Finding]:
        """``latent_scale`` / ``latent_shift`` / ``color_cast`` / ``latent_outliers`` findings (host sync).

        A wrong scale makes the other statistics meaningless, so it is reported alone.
        """
        a = self.analyse()
        if a is None:
            return []
        summ = a.summary
        bad = float(summ.nonfinite.sum())
        if bad or bool(summ.nonfinite_seen.any()):
            from .numerics import fp16_fix

            total = float(summ.detail_count.sum())
            chans = [str(c) for c in range(summ.channels) if float(summ.nonfinite[c]) > 0]
            return [
                nonfinite_finding(
                    where,
                    observed="NaN/Inf in the latents",
                    expected="finite latents",
                    evidence=f"{float(summ.nan.sum()):.0f} NaN and {float(summ.inf.sum()):.0f} Inf of {total:.0f} values "
                    f"(channel(s) {', '.join(chans) or '?'}); decoding them gives a black image, and the other latent "
                    "statistics are meaningless until they are gone",
                    fix="find the module that produced them (rangewatch.checks.numerics.ModuleTracer / RangeWatch(trace_modules=...)); "
                    + fp16_fix(None),
                    step=step,
                    source="rangewatch.checks.latents",
                )
            ]
        scale = self._check_scale(a, step, where)
        if scale is not None:
            return [scale]
        return self.check_beyond_scale(a, step, where)

    def check_beyond_scale(self, a: LatentCheck, step: int | None = None, where: str = "latents") -> list[Finding]:
        """The checks :meth:`check` runs once the scale is right, on the numbers of :meth:`analyse`: ``latent_shift``,
        ``color_cast`` (said to come partly from the shift when there is one) and ``latent_outliers``. For a caller that
        judges the scale itself (a pipeline drops a scale verdict it cannot be sure of, and then wants these)."""
        shift = self._check_shift(a, step, where)
        cast = self._check_cast(a, step, where, shifted=shift is not None)
        return [f for f in (shift, cast, self._check_outliers(a, step, where)) if f is not None]

    def outlying(self, a: LatentCheck) -> bool:
        """Whether the window of :meth:`analyse` has outliers: more than ``outlier_share`` of the values past the soft
        clamp's threshold, or a value beyond ``extreme_factor`` times the decoder's boundary (``latent_outliers``)."""
        return a.over_share > self.outlier_share or a.max_abs > self.extreme_factor * self.conv.boundary

    def _finding(self, kind: str, where: str, step: int | None, *, observed: str, expected: str, evidence: str,
                 fix: str, severity: Severity) -> Finding:
        """A latent finding (``latent_scale``, ``latent_shift``, ``color_cast``, ``latent_outliers``) of this
        monitor's convention (its source is the finding's)."""
        return Finding(kind=kind, where=where, observed=observed, expected=expected, evidence=evidence, fix=fix,
                       severity=severity, step=step, source=self.conv.source)

    # -- scale
    def _estimators(self, a: LatentCheck) -> list[dict[str, float]]:
        """The scale distances of each usable estimator: the global std and robust global spread (what a
        scaling factor is defined on), and the per-channel plain and robust stds (which a wrong factor moves
        alike). A scale is right when any of them says so; a verdict needs all of them."""
        out = [d for d in (getattr(a, k, None) for k in ("std_distance", "robust_distance", "channel_std_distance",
                                                          "channel_robust_distance"))
               if d is not None and math.isfinite(d.get("right", float("inf")))]
        return out or [a.scale_distance]

    def _check_scale(self, a: LatentCheck, step: int | None, where: str) -> Finding | None:
        conv, d = self.conv, a.scale_distance
        ests = self._estimators(a)
        # within the tolerance band of 'scaled once' under either estimator: right (a heavy-tailed
        # distribution has a plain std on target and a smaller interquartile std; a few huge outliers
        # the reverse). Nothing is said then.
        if any(e["right"] < _SCALE_BAND for e in ests):
            return None
        best = min(d, key=d.get)
        if len(ests) > 1 and len({min(e, key=e.get) for e in ests}) > 1:
            best = "right"  # the estimators disagree on the hypothesis: a guess, never an error
        s = conv.scale
        robust_ok = math.isfinite(a.global_robust_std)
        obs_std = a.global_robust_std if robust_ok else a.global_std
        exp_std = a.global_expected["right"]
        robust = f", {a.global_robust_std:.3g} robust (per-channel interquartile ranges / 1.349)" if robust_ok else ""
        ev_common = (
            f"std of all values {a.global_std:.3g}{robust} (a scaling factor is defined on it: 1 / z.flatten().std()); "
            f"per-channel means {_fmt(a.mean)}, stds {_fmt(a.std)}; expected about {exp_std:.3g} "
            f"for {conv.label}; log-distance to 'scaled once' {d['right']:.2f}, 'not scaled' {d['missing']:.2f}, "
            f"'scaled twice' {d['double']:.2f}; max |x| {a.max_abs:.3g}"
        )
        if best != "right" and d[best] < 0.5 * d["right"]:
            if best == "missing":
                if conv.latents_std is not None:
                    how = (
                        f"normalise after encode: (z - latents_mean) * scaling_factor ({s:g}) / latents_std "
                        "(vae.config.latents_mean / latents_std)"
                    )
                elif conv.shift:
                    how = (
                        f"apply (z - vae.config.shift_factor ({conv.shift:g})) * vae.config.scaling_factor ({s:g}) "
                        "after encode"
                    )
                else:
                    how = f"multiply by vae.config.scaling_factor ({s:g}) after encode"
                return self._finding(
                    "latent_scale", where, step,
                    observed="latents not scaled (std matches the raw VAE latent)",
                    expected=f"latents scaled by {s:g} (std about {exp_std:.3g})",
                    evidence=f"std about {obs_std:.3g}, about 1/scale = {1 / s:.3g} times the expected; " + ev_common,
                    fix=how + "; and divide by it exactly once before vae.decode",
                    severity="error",
                )
            return self._finding(
                "latent_scale", where, step,
                observed="latents scaled twice (std about scale times the expected)",
                expected=f"latents scaled once by {s:g} (std about {exp_std:.3g})",
                evidence=f"std about {obs_std:.3g}, about scale = {s:g} times the expected; " + ev_common,
                fix=f"remove the second * scaling_factor ({s:g}): scale once, e.g. either when caching latents or in "
                "training_step, not both",
                severity="error",
            )
        other = self._other_factor(a) if all(e["right"] >= _SCALE_BAND for e in ests) else None
        if other is not None:
            oname, oscale, od = other
            return self._finding(
                "latent_scale", where, step,
                observed=f"latents scaled with another VAE's factor ({oscale:g}, {oname})",
                expected=f"latents scaled by {s:g} (std about {exp_std:.3g})",
                evidence=f"std about {obs_std:.3g} = {oscale:g}/{s:g} times the expected (log-distance {od:.2f}); " + ev_common,
                fix=f"use this VAE's scaling_factor {s:g} ({conv.label}) instead of {oscale:g}; read it from "
                "vae.config.scaling_factor rather than hard-coding it (if the factor is right, these images have "
                "less contrast than the ones the factor was measured on)",
                severity="warning",
            )
        if min(e["right"] for e in ests) > math.log(self.unexplained_factor):
            return self._finding(
                "latent_scale", where, step,
                observed=f"latent std {'above' if obs_std > exp_std else 'below'} the expected, matching neither a missing nor a double scale",
                expected=f"std about {exp_std:.3g} ({conv.label})",
                evidence=ev_common,
                fix=f"check the VAE's scaling_factor (this convention: {s:g}"
                + (f", shift_factor {conv.shift:g}" if conv.shift else "")
                + ") and that the latents come from the VAE this convention describes",
                severity="warning",
            )
        return None

    def _other_factor(self, a: LatentCheck) -> tuple[str, float, float] | None:
        """Another registered latent convention with as many channels whose scaling factor explains the
        std (``z_vae * other_scale`` instead of ``* scale``), clearly better than 'scaled once'."""
        from ..expect.conventions import list_conventions

        d_right = min(e["right"] for e in self._estimators(a))
        if not d_right > math.log(1.25):
            return None
        if self.conv.latents_std is not None:
            return None
        stds = [v for v in (a.global_std, a.global_robust_std) if math.isfinite(v) and v > 0]
        if not stds:
            return None
        best = None
        for name in list_conventions("latent"):
            o = get_convention(name)
            if o.name == self.conv.name or o.channels != a.channels or not o.scale or o.latents_std is not None:
                continue
            if (o.temporal_compression is None) != (self.conv.temporal_compression is None):
                continue  # image latents are compared with image VAEs' factors, video with video
            if self.conv.latents_std is not None or abs(math.log(o.scale / float(self.conv.scale or 1.0))) < 0.1:
                continue
            h = a.global_expected["right"] * (o.scale / float(self.conv.scale or 1.0))
            # every estimator must point at the other factor: the worst of them is what counts
            dist = max(abs(math.log(v) - math.log(h)) for v in stds)
            if best is None or dist < best[2]:
                best = (o.name, float(o.scale), dist)
        # named only when the evidence rules this VAE's factor out: the other factor explains the std within
        # the tolerance band, this one is more than twice as far, and neither "missing" nor "twice" does better
        if (best is not None and best[2] < _SCALE_BAND and best[2] < 0.5 * d_right
                and best[2] < min(min(e["missing"], e["double"]) for e in self._estimators(a))):
            return best
        return None

    # -- shift
    def _check_shift(self, a: LatentCheck, step: int | None, where: str) -> Finding | None:
        conv = self.conv
        if not conv.shift:
            return None
        s, sh = float(conv.scale or 1.0), float(conv.shift)
        m = a.mean.nan_to_num(nan=0.0)
        c = a.channels
        common = float(m.mean())
        resid = float((m - common).pow(2).mean().sqrt())
        se = float(a.std_se.median())
        targets = {
            "right": 0.0,
            "not subtracted": sh * s,
            "subtracted twice": -sh * s,
            "subtracted after scaling": sh * s - sh,
        }
        best = min(targets, key=lambda k: abs(common - targets[k]))
        t = targets[best]
        if best == "right":
            return None
        # The independent units are samples (images, clips), not latent values: the values of one image share
        # its content, which moves all its channel means together (a few photos move the window's common mean
        # by a few hundredths, as much as Flux's shift*scale, 0.042). The common mean is judged against its
        # standard error between samples, with Student's t for the few samples a window has (one-sided 3 sigma,
        # p = 0.00135): the offset must rule out every other hypothesis ("right" included) by that margin.
        # When it cannot (fewer than two samples, or a spread too wide for them), content and a shift bug are
        # not told apart, and nothing is said.
        cse = float(a.common_se)
        if not (math.isfinite(cse) and math.isfinite(common)):
            return None
        k = _t_quantile(_SHIFT_P, min(a.samples - 1, 1000))  # beyond 1000 dof: 3.008, a little above the normal's 3
        if any(abs(common - v) <= k * cse for name, v in targets.items() if name != best):
            return None
        if abs(common - t) > 0.35 * abs(t) + max(3 * se / math.sqrt(c), k * cse) or resid > 0.5 * abs(t) + 3 * se:
            return None
        fixes = {
            "not subtracted": f"subtract the shift before scaling: (z - vae.config.shift_factor ({sh:g})) * scaling_factor ({s:g})",
            "subtracted twice": f"subtract shift_factor ({sh:g}) once: (z - {sh:g}) * {s:g}",
            "subtracted after scaling": f"subtract the shift before scaling, (z - {sh:g}) * {s:g}, not z * {s:g} - {sh:g}",
        }
        return self._finding(
            "latent_shift", where, step,
            observed=f"shift factor {best} (every channel mean offset by {common:+.4f})",
            expected=f"(z - {sh:g}) * {s:g}: channel means about 0",
            evidence=(
                f"mean of the channel means {common:+.4f} (spread across channels {resid:.4f}); shift*scale = "
                f"{sh:g}*{s:g} = {sh * s:.4f}, the offset 'shift {best}' gives is {t:+.4f}; over {a.samples} samples the "
                f"common mean has standard error {cse:.4f} (between-sample spread {a.sample_sd:.4f}), so it is "
                f"{abs(common) / cse:.1f} standard errors from 0 (needed: {k:.1f}); channel means {_fmt(m)}"
            ),
            fix=fixes[best] + " (z_model = (z_vae - shift_factor) * scaling_factor; decode: z / scaling_factor + shift_factor)",
            severity="warning",
        )

    # -- colour
    def _check_cast(self, a: LatentCheck, step: int | None, where: str, shifted: bool) -> Finding | None:
        conv = self.conv
        if conv.latent_rgb is None:
            return None
        f = torch.tensor(conv.latent_rgb, dtype=torch.float64)
        if f.shape[0] != a.channels:
            return None
        m = a.mean.nan_to_num(nan=0.0)
        rgb = m @ f
        lum = float(rgb.mean())
        chroma = rgb - lum
        size = float(chroma.norm())
        if size <= self.cast_threshold:
            return None
        name = hue_name(chroma.tolist())
        unit = chroma / size
        contrib = (m[:, None] * f) @ unit  # each channel's push along the cast
        order = torch.argsort(contrib, descending=True)[:2].tolist()
        cn = CHANNEL_NAMES.get(conv.name)
        parts = [
            f"channel {i}{' (' + cn[i] + ')' if cn else ''} mean {float(m[i]):+.3g}"
            for i in order
            if float(contrib[i]) > 0.1 * size
        ]
        disp = [0.5 * float(v) for v in rgb]
        note = "; partly from the shift finding above" if shifted else ""
        return self._finding(
            "color_cast", where, step,
            observed=f"channel means push the image towards {name}",
            expected="channel means about 0 (no cast)",
            evidence=(
                f"channel means {_fmt(m)} through the latent-to-RGB factors give RGB {_fmt(rgb)} "
                f"({_signs(rgb.tolist())}; about {', '.join(f'{v:+.0%}' for v in disp)} of the display range), "
                f"chroma {size:.3f} towards {name} (hue {hue_angle(chroma.tolist()):.0f} deg), brightness {lum:+.3f}; "
                f"mostly from {', '.join(parts) or 'several channels'}{note}" + CAST_IS_CONTENT
            ),
            fix="",
            severity="info",
        )

    # -- outliers
    def _check_outliers(self, a: LatentCheck, step: int | None, where: str) -> Finding | None:
        if not self.outlying(a):
            return None
        b, t = self.conv.boundary, self.soft_threshold
        worst = torch.argsort(a.maxabs, descending=True)[:3].tolist()
        cn = CHANNEL_NAMES.get(self.conv.name)
        # a smooth heavy tail (fewer values past the boundary than past the soft threshold, as in any
        # continuous tail) is how such latents are distributed, not a fault: said, not warned about.
        # Values piled far out (as many beyond the boundary as past the threshold) are a fault.
        smooth = a.beyond_share < 0.85 * a.over_share
        tail = "; the values thin out smoothly past the threshold: a heavy-tailed distribution rather than a fault" if smooth else ""
        ch = ", ".join(f"channel {i}{' (' + cn[i] + ')' if cn else ''} max |x| {float(a.maxabs[i]):.3g}" for i in worst)
        return self._finding(
            "latent_outliers", where, step,
            observed=f"latent values beyond the decoder's ±{b:g} range",
            expected=f"values within about ±{b:g}",
            evidence=(
                f"{a.over_share:.2%} of values have |x| > {t:g} (a soft clamp at {t:g} / {b:g} would change them), "
                f"{a.beyond_share:.2%} beyond ±{b:g}; values reach {a.max_abs:.1f} while the decoder's comfortable range "
                f"is about ±{b:g}; {ch}{tail}"
            ),
            fix=f"soft-clamp the latents (rangewatch.checks.latents.soft_clamp(z, threshold={t:g}, boundary={b:g})) and centre "
            "the channel means before decoding; if this is the training target, look for the step that blows them up",
            severity="info" if smooth else "warning",
        )


#: the end of every ``color_cast`` finding's evidence; :mod:`rangewatch.pipeline.checks` cuts it off when the
#: denoising steps show a drift (then the cast is judged, not content)
CAST_IS_CONTENT = (". The mean colour of the images in one window is their content (a sunset is orange, a red car red), "
                   "not a cast: nothing to fix on this evidence; a cast shows as a drift of the channel means across "
                   "denoising steps, which watch_pipeline judges")


#: one-sided level at which the latent_shift check's common channel mean must rule out the other hypotheses
#: (the tail of 3 standard deviations of a normal distribution)
_SHIFT_P = 0.5 * math.erfc(3 / math.sqrt(2))


@functools.lru_cache(maxsize=256)
def _t_quantile(p: float, dof: int) -> float:
    """``t`` with ``P(T > t) = p`` for Student's t with ``dof`` degrees of freedom (``p < 0.5``; inf for
    ``dof < 1``): Simpson's rule on the density over ``[0, t]``, bisection on ``t``."""
    if dof < 1:
        return float("inf")
    v = float(dof)
    c = math.exp(math.lgamma((v + 1) / 2) - math.lgamma(v / 2)) / math.sqrt(v * math.pi)

    def tail(t: float, n: int = 2000) -> float:
        h = t / n
        f = [c * (1 + (i * h) ** 2 / v) ** (-(v + 1) / 2) for i in range(n + 1)]
        return 0.5 - h / 3 * (f[0] + f[n] + 4 * sum(f[1:n:2]) + 2 * sum(f[2:n - 1:2]))

    lo, hi = 0.0, 1.0
    while tail(hi) > p and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid) > p else (lo, mid)
    return hi


def expected_stds(conv: Convention, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (expected model-space std, raw unscaled VAE std) of ``c``-channel latents under ``conv``:
    ``(scale, latents_std)`` when the VAE declares ``latents_std`` (``(z - mean) * scale / std``), else
    ``(1, 1 / scale)``. :func:`_global_expected` turns either into the std of all values."""
    s = float(conv.scale or 1.0)
    if conv.latents_std is not None:
        raw = torch.tensor(_expand(conv.latents_std, c), dtype=torch.float64)
        return torch.full((c,), s, dtype=torch.float64), raw
    return torch.ones(c, dtype=torch.float64), torch.full((c,), 1.0 / s, dtype=torch.float64)


def _expand(values: Sequence[float], c: int) -> list[float]:
    v = list(values)
    if len(v) == c:
        return v
    if len(v) == 1:
        return v * c
    raise ValueError(f"convention gives {len(v)} per-channel values for {c} channels")


def _global_std(summ: RangeSummary) -> float:
    """Std of all values of the window pooled over channels (what ``z.flatten().std()`` gives), from the
    per-channel counts, means and stds: within-channel variance plus the spread of the channel means."""
    n = summ.count.double()
    ok = (n > 0) & torch.isfinite(summ.mean) & torch.isfinite(summ.std)
    if not bool(ok.any()):
        return float("nan")
    return _pooled_std(n[ok], summ.mean.double()[ok], summ.std.double()[ok])


def _global_robust_std(summ: RangeSummary, robust: torch.Tensor) -> float:
    """The global std with each channel's own spread taken robustly (interquartile range / 1.349 from its
    histogram) and the spread of the channel means kept: a few huge outliers do not inflate it. NaN where a
    channel's robust spread is not resolved. (Pooling the histograms instead would read channels shifted
    apart as one wide, two-humped distribution.)"""
    n = summ.count.double()
    ok = (n > 0) & torch.isfinite(summ.mean)
    if not bool(ok.any()) or not bool(torch.isfinite(robust[ok]).all()):
        return float("nan")
    return _pooled_std(n[ok], summ.mean.double()[ok], robust.double()[ok])


def _pooled_std(n: torch.Tensor, m: torch.Tensor, spread: torch.Tensor) -> float:
    """The std of channels pooled (counts ``n``, means ``m``, spreads ``spread``, float64): within-channel
    variance plus the spread of the channel means; NaN when it is 0."""
    big = float(n.sum())
    mu = float((n * m).sum()) / big
    var = float((n * (spread * spread + (m - mu) ** 2)).sum()) / big
    return math.sqrt(var) if var > 0 else float("nan")


def _global_expected(per_channel: torch.Tensor, conv: Convention, hypothesis: str) -> float:
    """The flattened std a hypothesis predicts from its per-channel stds; not scaling at all also keeps
    the spread of the VAE's per-channel ``latents_mean`` (Wan, Mochi, ...) in the values."""
    var = float((per_channel.double() ** 2).mean())
    if hypothesis == "missing" and conv.latents_mean is not None:
        lm = torch.tensor(_expand(conv.latents_mean, per_channel.numel()), dtype=torch.float64)
        var += float(((lm - lm.mean()) ** 2).mean())
    return math.sqrt(var)


def _robust_std(summ: RangeSummary, min_bins: float = 6.0) -> torch.Tensor:
    """Per-channel interquartile range / 1.349 from the histogram (NaN where the quartiles fall in the
    under/overflow buckets or span fewer than ``min_bins`` bins, i.e. are not resolved)."""
    c = summ.channels
    out = torch.full((c,), float("nan"), dtype=torch.float64)
    if summ.hist is None or summ.hist_edges is None or summ.hist_underflow is None or summ.hist_overflow is None:
        return out
    counts = torch.cat([summ.hist_underflow[:, None], summ.hist, summ.hist_overflow[:, None]], dim=1)
    total = counts.sum(dim=1)
    cum = counts.cumsum(dim=1)
    for ch in range(c):
        if float(total[ch]) < 64:
            continue
        edges = summ.hist_edges[ch]
        width = float(edges[1] - edges[0])
        qs = []
        for q in (0.25, 0.75):
            target = q * float(total[ch])
            k = int(torch.searchsorted(cum[ch], torch.tensor(target, dtype=torch.float64)))
            if k <= 0 or k >= counts.shape[1] - 1:
                break  # quartile in an under/overflow bucket
            before = float(cum[ch, k - 1])
            inside = float(counts[ch, k])
            frac = (target - before) / inside if inside > 0 else 0.5
            qs.append(float(edges[k - 1]) + frac * width)
        if len(qs) == 2 and qs[1] - qs[0] >= min_bins * width:
            out[ch] = (qs[1] - qs[0]) / 1.3489795
    return out


def _fmt(v: torch.Tensor) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in v.tolist()) + "]"


# ---------------------------------------------------------------------------- TensorBoard
#: latent previews narrower than this (pixels per image) are enlarged by :func:`rangewatch.sinks.latents.log_latents`
PREVIEW_MIN_SIZE = 192


def preview_scale(width: int) -> int:
    """The enlargement :func:`rangewatch.sinks.latents.log_latents` applies to latent previews ``width`` pixels wide."""
    return max(1, min(8, -(-PREVIEW_MIN_SIZE // max(1, width))))
