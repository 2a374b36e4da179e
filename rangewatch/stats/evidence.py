"""A small sample of each channel's values, taken on check steps only (:class:`ValueSample`).

Convention inference needs more than the extremes: the share of values outside each candidate's
bounds, whether values pile up exactly on a bound with nothing beyond it (clipped shadows and
highlights), and whether they sit on the 8-bit grid ``k / 255`` once mapped back to [0, 1]. A
fixed pseudo-random subset of each channel (a few thousand values per update) answers all three on
the host, whatever logger is attached and without touching the every-step path: ``update`` is one
gather of ``per_update`` elements per channel on the tensor's own device (no host sync), and
``take`` brings the pending samples to the host (called at check steps, next to
:meth:`RangeStats.compute`). Samples are kept across checks (up to ``keep`` values per channel, the
oldest dropped first), so evidence accumulates over the check window.

Example:
    >>> import torch
    >>> s = ValueSample(per_update=256)
    >>> s.update(torch.rand(2, 3, 32, 32))
    >>> s.take().shape, s.images
    ((3, 256), 2)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ValueSample"]

_SEED = 20261201


class ValueSample:
    """Per-channel value sample: ``update(x)`` on check steps, ``take()`` at the check."""

    def __init__(self, per_update: int = 8192, keep: int = 65536, channel_dim: int | None = 1) -> None:
        self.per_update = int(per_update)
        self.keep = int(keep)
        self.channel_dim = channel_dim
        self._pending: list[torch.Tensor] = []  # (C, k) on the tensor's device
        self._host: np.ndarray | None = None  # (C, n) float64
        self._index: dict[tuple, torch.Tensor] = {}
        self.images = 0  # images (leading-dimension entries of 4-D+ tensors; one per 3-D/2-D tensor) sampled
        self.dtypes: set[str] = set()

    def _indices(self, c: int, n: int, device: torch.device) -> torch.Tensor:
        """``(C, per_update)`` flat indices into a ``(C, n)`` view (one ``torch.take``)."""
        key = (c, n, str(device))
        idx = self._index.get(key)
        if idx is None:
            rng = np.random.default_rng(_SEED + n)  # with replacement: O(per_update), not O(n)
            one = torch.from_numpy(np.sort(rng.integers(0, n, self.per_update)))
            if len(self._index) > 64:
                self._index.clear()
            idx = self._index[key] = (torch.arange(c)[:, None] * n + one[None]).to(device)
        return idx

    def _gather(self, xc: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``torch.take(xc, idx)`` without copying ``xc``: ``take`` makes a non-contiguous input
        contiguous first (a copy of the whole tensor), so logical indices are mapped to storage
        offsets (cached per layout) and gathered from a flat view of ``xc``'s memory."""
        if xc.is_contiguous():
            return torch.take(xc, idx)
        key = ("strided", tuple(xc.shape), xc.stride(), str(idx.device), idx.data_ptr())
        offs = self._index.get(key)
        if offs is None:
            rem, offs = idx, torch.zeros_like(idx)
            for size, stride in zip(reversed(xc.shape), reversed(xc.stride())):
                offs = offs + (rem % size) * stride
                rem = rem // size
            if len(self._index) > 64:
                self._index.clear()
            self._index[key] = offs
        span = 1 + sum((size - 1) * stride for size, stride in zip(xc.shape, xc.stride()))
        return torch.take(xc.as_strided((span,), (1,)), offs)

    def update(self, x: torch.Tensor, channel_dim: int | None = None) -> None:
        """Queue a sample of ``x`` (device-side gather; no host transfer)."""
        cd = self.channel_dim if channel_dim is None else channel_dim
        if x.numel() == 0 or x.is_complex():
            return
        x = x.detach()
        if cd is None or x.dim() == 0:
            xc = x.reshape(1, -1)
        else:
            xc = x.movedim(cd, 0)
        c = xc.shape[0]
        rest = tuple(xc.shape[1:])
        n = int(np.prod(rest)) if rest else 1
        if n <= self.per_update:
            s = xc.reshape(c, n)
        else:
            s = self._gather(xc, self._indices(c, n, x.device))
        if not s.is_floating_point():
            s = s.to(torch.float64)
        elif s.dtype in (torch.float16, torch.bfloat16):
            s = s.float()
        self._pending.append(s.clone())
        if len(self._pending) > 1 and sum(p.shape[1] for p in self._pending) > self.keep:
            # many detail updates between reads: keep the newest `keep` values, on the device (no sync)
            c0 = self._pending[-1].shape[0]
            same = [p for p in self._pending if p.shape[0] == c0]
            self._pending = [torch.cat([p.to(same[-1].dtype) for p in same], dim=1)[:, -self.keep :]]
        self.dtypes.add(str(x.dtype).replace("torch.", ""))
        self.images += int(x.shape[0]) if x.dim() >= 4 and cd not in (0, None) else 1

    def take(self) -> np.ndarray | None:
        """All kept values, ``(C, n)`` float64 on the host (the pending ones are brought over now)."""
        if self._pending:
            try:
                new = np.concatenate([p.cpu().numpy().astype(np.float64) for p in self._pending], axis=1)
            except ValueError:  # channel counts differ between updates: keep the latest only
                new = self._pending[-1].cpu().numpy().astype(np.float64)
                self._host = None
            self._pending.clear()
            if self._host is not None and self._host.shape[0] == new.shape[0]:
                new = np.concatenate([self._host, new], axis=1)
            self._host = new[:, -self.keep :]
        return self._host

    def pending_flat(self) -> tuple[torch.Tensor | None, int]:
        """The pending samples as one flat tensor and their channel count (for a cross-rank gather)."""
        if not self._pending:
            return None, 0
        c = self._pending[0].shape[0]
        parts = [p.to(torch.float64) for p in self._pending if p.shape[0] == c]
        return torch.cat(parts, dim=1).reshape(-1), c

    def replace_pending(self, flat: torch.Tensor, channels: int) -> None:
        """Replace the pending samples with ``flat`` (every rank's, gathered)."""
        self._pending = [flat.reshape(channels, -1)] if flat.numel() and channels else []

    def clear(self) -> None:
        self._pending.clear()
        self._host = None
        self.images = 0
