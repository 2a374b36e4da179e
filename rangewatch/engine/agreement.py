"""The engine's distributed agreement protocol: every rank takes part in the same reductions, in the same order.

:class:`RankAgreement` is the part of :class:`rangewatch.Watch` that keeps the ranks of a multi-process run in step,
through the operations of :mod:`rangewatch.engine.collectives` (a Lightning strategy, ``torch.distributed``, or one
process): the sync function of each tap's statistics, the exchange of taps before each check (a tap one rank
lacks is added empty, a tap switched off on one rank is switched off on all), the gather of every rank's value
sample (so every rank reaches the same verdict) and the sync of latent taps before rank zero logs them.
Stopping together under ``policy="raise"`` is the findings log's (:mod:`rangewatch.findings.log`).
"""

from __future__ import annotations

from typing import Any

import torch

from .tapset import _Tap
from ..stats.range_stats import RangeStats, RangeSummary

__all__ = ["RankAgreement"]


class RankAgreement:
    """The engine's cross-rank agreement (a mixin of :class:`~rangewatch.engine.watch.Watch`), over the collectives it
    was given (:mod:`rangewatch.engine.collectives`): the statistics' sync function, agreeing on the taps before each
    check, gathering every rank's value sample, and syncing latent taps before rank zero logs them."""

    def _sync_fn(self) -> Any:
        coll = self.collectives
        sync_fn = None
        if coll.world_size > 1:

            def sync_fn(t: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
                # RangeStats gathers one flat packed tensor; a rank that saw no data sends an empty one
                return coll.all_gather_varlen(t)

        return sync_fn

    def _agree_on_taps(self) -> None:
        """Under DDP every rank must take part in the same reductions, in the same order. Ranks
        exchange their taps (name, channel dim, and why rangewatch switched one off), add the
        ones they lack as empty taps (a module called on one rank only, a batch key one rank
        never saw) and switch off everywhere a tap switched off on any rank."""
        # one line per tap: name, channel dim, and "" (on), the error text, or "-" (off: not an image)
        lines = [f"{n}\t{t.channel_dim}\t{(t.error or '-').replace(chr(10), ' ') if t.disabled else ''}"
                 for n, t in sorted(self._taps.items())]
        payload = torch.tensor(list("\n".join(lines).encode()), dtype=torch.uint8)
        for rank, part in enumerate(self.collectives.all_gather_varlen(payload)):
            for line in bytes(part.cpu().tolist()).decode(errors="replace").splitlines():
                name, cd, why = line.split("\t", 2)
                tap = self._taps.get(name)
                if tap is None:
                    tap = self._placeholder_tap(name, None if cd == "None" else int(cd))
                if why and not tap.disabled:
                    tap.disabled = True
                    if why != "-":  # an internal error on another rank: said here too (rank zero warns)
                        self._internal(name, RuntimeError(f"on rank {rank}: {why}"), tap)

    def _placeholder_tap(self, name: str, channel_dim: int | None) -> _Tap:
        """An empty tap for one that another rank has: it takes part in the reductions with no data."""
        probe = torch.empty(0, device=self.collectives.device)
        tap = self._new_tap(name, probe, channel_dim)
        tap.stats.to(probe.device)
        return tap

    def _sync_latents(self, summaries: list[tuple[str, RangeSummary]]) -> list[RangeStats]:
        """Under DDP, reduce the latent taps' states on every rank before rank zero logs their
        histograms (``log_latents`` reads them again): a sync of rank zero's own there would wait
        forever for the other ranks. Returns the synced stats, to ``unsync()`` after the logging."""
        out = []
        for name, _ in summaries:
            tap = self._taps[name]
            if tap.latent is None:
                continue
            try:
                tap.stats.sync(dist_sync_fn=tap.stats.dist_sync_fn)
                if tap.stats.synced:
                    out.append(tap.stats)
            except Exception as e:  # noqa: BLE001
                self._internal(name, e, tap)
        return out

    def _gather_sample(self, tap: _Tap, channels: int) -> None:
        """Every rank's sampled values, so that every rank reaches the same verdict (a verdict that
        differs between ranks would make one rank raise alone). Every rank takes part, fed or not."""
        vs = tap.stats.value_sample
        flat, c = vs.pending_flat()
        if flat is None or c != channels:
            flat = torch.zeros(0, dtype=torch.float64)
        parts = self.collectives.all_gather_varlen(flat)
        vs.replace_pending(torch.cat([p.to(torch.float64).cpu() for p in parts]), channels)
