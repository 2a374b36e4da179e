"""Corrected previews: the first images of a flagged call site, drawn as the call showed them next
to the same data mapped with the convention it really follows (:class:`Preview`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks.latents import video_frames
from ..expect.conventions import Convention
from ..findings.finding import Finding
from ..sinks.tags import preview_name
from ..stats.range_stats import RangeStats, RangeSummary
from .calls import Call
from .patching import PATCHER, original_make_grid
from .records import VisRecord
from .text import fmt_pct

__all__ = ["Preview"]


class Preview:
    """The first images of a flagged call site, kept (on their device) to draw "what the call
    produced" next to "the same data shown with the convention it really follows".

    ``images`` are ``(C, H, W)`` tensors; ``build()`` makes the side-by-side grid (one row per
    image: left broken, right corrected) with torchvision's original ``make_grid`` (padding 2,
    white padding) as a ``(3, H, W)`` uint8 tensor.
    """

    PADDING = 2
    PAD_VALUE = 255

    def __init__(self, record: VisRecord, call: Call, slug: str, max_images: int, hist_bins: int):
        self.record = record
        self.call = call.name
        self.where = record.where
        self.site = ""  # "file.py:line" of the call
        self.slug = slug
        self.mode = call.mode
        self.assumed = call.assumed
        self.assumption = call.assumption
        self.assumption_slug = call.slug
        self.quant = call.quant
        self.scale_each = call.scale_each
        self.max_images = max_images
        inf = record.inference
        self.convention: Convention | None = inf.convention if inf is not None else None
        self.convention_name = inf.name if inf is not None and inf.convention is not None else "minmax"
        s = record.summary
        self.data_min = float(s.range_min.min()) if s is not None else 0.0
        self.data_max = float(s.range_max.max()) if s is not None else 1.0
        self.images: list[torch.Tensor] = []
        self.frames: list[int] = []  # a video call: the frames of its first clip that were kept
        self.clip_length = 0
        self.stretch: list[tuple[float, float]] = []  # per image: what a min/max stretch used
        self.findings: list[Finding] = list(record.findings)
        self.hist: RangeStats | None = None
        self.hist_bins = hist_bins

    @property
    def full(self) -> bool:
        return len(self.images) >= self.max_images

    # ---------------------------------------------------------------- collecting
    def _add(self, call: Call, summary: RangeSummary | None) -> None:
        """Keep the first images of ``call`` (device-side clones) and add the call's values to the
        histogram (device-side)."""
        if self.full:
            return
        grid_lo = float(summary.min.min()) if summary is not None else 0.0
        grid_hi = float(summary.max.max()) if summary is not None else 1.0
        for t in call.items:
            cd = call.channel_dim
            if t.dim() == 5 and cd is not None:
                # a video ((N, T, C, H, W) for add_video): the first clip's first / middle / last frames
                v = torch.movedim(t, cd, 2)
                if self.images or v.shape[0] == 0:
                    continue
                self.clip_length = int(v.shape[1])
                self.frames = video_frames(self.clip_length, max(1, min(3, self.max_images)))
                imgs = v[0, self.frames]
            else:
                imgs = torch.movedim(t, cd, 1) if cd not in (None, 1) else t
            for img in imgs:
                if self.full:
                    break
                if self.images and img.shape != self.images[0].shape:
                    continue
                img = img.detach().clone()
                self.images.append(img)
                self.stretch.append((grid_lo, grid_hi))
        if self.hist_bins and summary is not None:
            self._add_hist(call, summary)

    def _add_hist(self, call: Call, summary: RangeSummary) -> None:
        if self.hist is None:
            lo, hi = self.data_min, self.data_max
            if not (math.isfinite(lo) and math.isfinite(hi)):
                return
            if self.assumed is not None:
                lo, hi = min(lo, self.assumed[0]), max(hi, self.assumed[1])
            pad = max(hi - lo, 1e-6) * 0.01
            bounds = None if self.assumed is None else ((self.assumed[0],), (self.assumed[1],))
            self.hist = RangeStats(channel_dim=call.channel_dim, bounds=bounds, hist_bins=self.hist_bins,
                                   hist_range=(lo - pad, hi + pad), sync_on_compute=False)  # local: see _measure
        try:
            for t in call.items:
                self.hist.update(t, detail=True)
        except ValueError:  # another channel count than the first call's
            pass

    # ---------------------------------------------------------------- drawing
    @staticmethod
    def _quantize(u: torch.Tensor, quant: str) -> torch.Tensor:
        u = torch.nan_to_num(u.float(), nan=0.0)
        if quant == "trunc":
            v = (u * 255).clamp(0, 255).floor()
        elif quant == "half_up":
            v = (u * 255 + 0.5).clamp(0, 255).floor()
        else:
            v = (u * 255).round().clamp(0, 255)
        return v.to(torch.uint8)

    @staticmethod
    def _rgb(img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        if c == 3:
            return img
        if c == 4:
            return img[:3]
        return img[:1].expand(3, -1, -1)

    def broken(self, i: int) -> torch.Tensor:
        """Image ``i`` as the call showed it: ``(C, H, W)`` uint8."""
        x = self.images[i].detach().float().cpu()
        if self.mode == "clamp" and self.assumed is not None:
            lo, hi = self.assumed
            u = (x.clamp(lo, hi) - lo) / max(hi - lo, 1e-5)
        elif self.mode == "stretch":
            lo, hi = (float(x.min()), float(x.max())) if self.scale_each else self.stretch[i]
            u = (x.clamp(lo, hi) - lo) / max(hi - lo, 1e-5)
        else:
            u = x / 255 if self.images[i].dtype == torch.uint8 else x
        return self._quantize(u, self.quant)

    def corrected(self, i: int) -> torch.Tensor:
        """Image ``i`` mapped to display with the inferred convention: ``(C, H, W)`` uint8."""
        x = self.images[i].detach().cpu()
        if self.convention is not None:
            u = self.convention.to_display(x, channel_dim=0)
        else:
            lo, hi = self.data_min, self.data_max
            u = ((x.float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
        return self._quantize(u, "round")

    def build(self) -> torch.Tensor:
        """``(3, H, W)`` uint8 grid: one row per image, broken left, corrected right."""
        if not self.images:
            raise ValueError("this preview holds no images")
        panels = []
        for i in range(len(self.images)):
            panels += [self._rgb(self.broken(i)), self._rgb(self.corrected(i))]
        with PATCHER.suppressed():
            return original_make_grid()(torch.stack(panels), nrow=2, padding=self.PADDING, pad_value=self.PAD_VALUE)

    #: panels narrower than this are enlarged (nearest neighbour, integer factor) so the labels fit
    LABEL_MIN_WIDTH = 280
    LABEL_LINES = 3

    def labels(self) -> tuple[str, str]:
        """The two panel captions: what the call did, and the mapping the right panel uses."""
        left = f"as logged: {self.call} {self.assumption}"
        if self.frames:
            left += f" (frames {', '.join(str(f) for f in self.frames)} of {self.clip_length}, clip 0)"
        conv = self.convention
        if conv is not None and conv.kind == "pixel":
            lo, hi = conv.bounds(3)
            same = len(set(lo)) == 1 and len(set(hi)) == 1
            rng = f"min_max=({lo[0]:g}, {hi[0]:g})" if same else conv.label
            right = f"corrected: {rng}" if self.call == "tensor2img" and same else f"corrected: read as {self.convention_name} ({conv.label})"
        else:
            right = f"corrected: min..max of the data ({self.data_min:.3g}, {self.data_max:.3g})"
        return left, right

    @staticmethod
    def label_scale(width: int) -> int:
        """The enlargement factor :meth:`build_labelled` uses for panels ``width`` pixels wide."""
        return max(1, min(8, -(-Preview.LABEL_MIN_WIDTH // max(1, width))))

    @classmethod
    def label_font_size(cls, width: int) -> int:
        """Font size of the labels over panels ``width`` pixels wide (before enlargement): a twelfth of
        the enlarged panel, so the text stays legible when TensorBoard shrinks the image to its card."""
        return max(13, width * cls.label_scale(width) // 12)

    @classmethod
    def label_height(cls, width: int) -> int:
        """Height of the label strip over panels ``width`` pixels wide."""
        return cls.LABEL_LINES * (cls.label_font_size(width) + 5) + 6

    def build_labelled(self) -> torch.Tensor:
        """:meth:`build` enlarged by :meth:`label_scale` (nearest neighbour) under a white strip of
        :meth:`label_height` pixels naming each column ("as logged: tensor2img the default
        min_max=(0, 1)" | "corrected: min_max=(-1, 1)"); :meth:`unlabel` gives :meth:`build` back."""
        import numpy as np
        from PIL import Image, ImageDraw, ImageFont

        grid = self.build()
        width = int(self.images[0].shape[-1])
        k = self.label_scale(width)
        big = grid.repeat_interleave(k, 1).repeat_interleave(k, 2)
        h, w = big.shape[1:]
        size = self.label_font_size(width)
        strip = Image.new("RGB", (w, self.label_height(width)), "white")
        draw = ImageDraw.Draw(strip)
        font = ImageFont.load_default(size=size)
        col = w // 2
        for i, (text, colour) in enumerate(zip(self.labels(), ((170, 30, 30), (20, 110, 40)))):
            lines = [""]
            for wd in text.split(" "):  # wrap to the column width
                cand = (lines[-1] + " " + wd).strip()
                if draw.textlength(cand, font=font) <= col - 12 or not lines[-1]:
                    lines[-1] = cand
                else:
                    lines.append(wd)
            if len(lines) > self.LABEL_LINES:
                lines = lines[: self.LABEL_LINES - 1] + [" ".join(lines[self.LABEL_LINES - 1:])]
            for j, line in enumerate(lines):
                draw.text((i * col + 6, 4 + (size + 5) * j), line, fill=colour, font=font)
        top = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
        return torch.cat([top, big], 1)

    @classmethod
    def unlabel(cls, image: Any, panel_width: int) -> Any:
        """The plain :meth:`build` grid inside a :meth:`build_labelled` image (an ``(H, W, 3)`` array
        as decoded from the PNG, or a ``(3, H, W)`` tensor) whose panels are ``panel_width`` wide."""
        k, top = cls.label_scale(panel_width), cls.label_height(panel_width)
        if isinstance(image, torch.Tensor):
            return image[:, top::k, ::k]
        return image[top::k, ::k]

    @property
    def image_tag(self) -> str:
        return preview_name(self.slug, self.assumption_slug, self.convention_name)

    def text(self) -> str:
        rec = self.record
        lines = [
            f"**{rec.message or rec.where}**",
            "",
            f"- call: `{self.call}` at {self.where}",
            f"- range the call assumes: {self.assumption}",
            f"- clamped: {fmt_pct(rec.below_fraction)} below, {fmt_pct(rec.above_fraction)} above; NaN {fmt_pct(rec.nan_fraction)}",
            f"- data: {rec.inference}" if rec.inference is not None else "- data: not measured",
            *([f"- frames shown (one per row): {', '.join(str(f) for f in self.frames)} of the first clip's {self.clip_length}"]
              if self.frames else []),
            f"- preview: left as the call shows it, right as `{self.convention_name}` "
            f"({self.convention.label if self.convention else 'min/max of the data'})",
        ]
        for f in self.findings:
            lines.append(f"- finding: {f}")
        return "\n".join(lines)

