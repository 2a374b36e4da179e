"""The engine's distributed agreement protocol: every rank takes part in the same reductions, in the same order.

:class:`RankAgreement` is a collaborator of :class:`rangewatch.Watch` that keeps the ranks of a multi-process run in
step, through the operations of :mod:`rangewatch.engine.collectives` (a Lightning strategy, ``torch.distributed``, or
one process): the sync function of each tap's statistics (:func:`stats_sync_fn`), the exchange of taps before each check (a tap one rank
lacks is added empty, a tap switched off on one rank is switched off on all), the gather of every rank's value
sample (so every rank reaches the same verdict) and the sync of latent taps before rank zero logs them.
Stopping together under ``policy="raise"`` is the findings log's (:mod:`rangewatch.findings.log`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..findings.finding import Finding
from ..stats.range_stats import RangeStats, RangeSummary
from .collectives import Collectives
from .reporter import FindingsReporter
from .surroundings import Surroundings

if TYPE_CHECKING:
    from .tapset import _Tap

__all__ = ["RankAgreement", "stats_sync_fn"]


def stats_sync_fn(coll: Collectives) -> Any:
    """The sync function a tap's statistics reduce with across ranks (None in one process)."""
    if coll.world_size <= 1:
        return None

    def sync_fn(t: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        # RangeStats gathers one flat packed tensor; a rank that saw no data sends an empty one
        return coll.all_gather_varlen(t)

    return sync_fn


def _ranks_differ(name: str, by_rank: dict[int, int], step: int | None) -> Finding:
    """A ``mismatch`` finding: the ranks feed ``name`` tensors of different channel counts."""
    seen = ", ".join(f"{c} on rank {r}" for r, c in sorted(by_rank.items()))
    return Finding(
        kind="mismatch", where=name, observed=f"channels differ between ranks ({seen})",
        expected="the same channel count on every rank",
        evidence=(f"{name} carries tensors with a different number of channels on different ranks ({seen}): the ranks see "
                  "different data (a dataset that mixes grayscale and RGB images, or a batch key that holds other tensors "
                  "on some ranks), so its statistics cannot be reduced across ranks; the tap is switched off on every rank"),
        fix=(f"give {name} tensors of one channel count on every rank (convert grayscale images to RGB in the dataset, "
             "e.g. PIL's .convert('RGB')), or skip the key with skip_keys"),
        severity="warning", step=step,
    )


class RankAgreement:
    """The engine's cross-rank agreement, over the collectives of its surroundings: :meth:`agree_on_taps` before each
    check, :meth:`gather_sample` (every rank's value sample), :meth:`sync_latents` before rank zero logs them. It keeps
    no state: the taps are given to each call."""

    def __init__(self, surroundings: Surroundings, reporter: FindingsReporter) -> None:
        self._env, self._reporter = surroundings, reporter

    def agree_on_taps(self, taps: dict[str, _Tap], placeholder: Callable[[str, int | None], _Tap], early: list[Finding]) -> bool:
        """Under DDP every rank must take part in the same reductions, in the same order. Ranks
        exchange their taps (name, channel dim, channel count, and why rangewatch switched one off),
        add the ones they lack as empty taps (a module called on one rank only, a batch key one rank
        never saw) and switch off everywhere a tap switched off on any rank. A tap whose channel count
        differs between ranks (the ranks see different data) is a ``mismatch`` finding, and switched
        off on every rank (its statistics cannot be reduced).

        Returns whether the ranks agree. The exchange is lossless for any tap name (JSON, non-ASCII and
        lone surrogates escaped: names made from file names or prompts hold newlines, tabs and
        ``os.fsdecode`` surrogates), and any failure in it, on any rank, is a decision every rank takes
        together: all report it (once) and skip this check, so no rank runs a collective the others do not.

        ``taps``: the engine's taps by name (a tap another rank has is added by ``placeholder(name, channel_dim)``);
        the ``mismatch`` findings go to ``early`` (reported at this check)."""
        coll = self._env.collectives
        failure: str | None = None
        try:
            entries = [[n, t.channel_dim, int(t.stats.channels) if t.stats is not None else 0,
                        (t.error or "-") if t.disabled else ""] for n, t in sorted(taps.items())]
            payload = b"\x00" + json.dumps(entries, ensure_ascii=True).encode("ascii")
        except Exception as e:  # noqa: BLE001  (said by every rank below, from the flag)
            failure = f"{type(e).__name__}: {e}"
            payload = b"\x01" + failure.encode("utf-8", "backslashreplace")
        parts = coll.all_gather_bytes(payload)  # the one exchange: every rank reaches it
        try:
            remote = [(r, p[1:].decode("utf-8", "replace")) for r, p in enumerate(parts) if not p or p[:1] != b"\x00"]
            if remote:  # the same bytes on every rank: every rank takes this branch
                r, why = remote[0]
                raise RuntimeError(f"rank {r} could not list its taps ({why or 'nothing sent'})")
            tables = [json.loads(p[1:].decode("ascii")) for p in parts]
            self._apply_agreement(tables, taps, placeholder, early)
        except Exception as e:  # noqa: BLE001
            failure = f"{type(e).__name__}: {e}"
        # a failure on one rank only (applying the tables) must be every rank's decision
        failed = coll.all_reduce_sum(torch.tensor([1.0 if failure else 0.0], device=coll.device))
        if float(failed.reshape(-1)[0]) > 0:  # every rank: the same words, from the first rank that failed
            texts = coll.all_gather_bytes((failure or "").encode("utf-8", "backslashreplace"))
            r, why = next((r, t.decode("utf-8", "replace")) for r, t in enumerate(texts) if t)
            self._reporter.internal("ddp", RuntimeError(f"on rank {r}: {why}"), None,
                           consequence="every rank skips this check; training goes on")
            return False
        return True

    def _apply_agreement(self, tables: list[list[list[Any]]], taps: dict[str, _Tap],
                         placeholder: Callable[[str, int | None], _Tap], early: list[Finding]) -> None:
        channels: dict[str, dict[int, int]] = {}
        for rank, table in enumerate(tables):
            for name, cd, c, why in table:
                name, why = str(name), str(why)
                tap = taps.get(name)
                if tap is None:
                    tap = placeholder(name, None if cd is None else int(cd))
                if int(c) > 0:
                    channels.setdefault(name, {})[rank] = int(c)
                if why and not tap.disabled:
                    tap.disabled = True
                    if why != "-":  # an internal error on another rank: said here too (rank zero warns)
                        self._reporter.internal(name, RuntimeError(f"on rank {rank}: {why}"), tap)
        for name, by_rank in sorted(channels.items()):
            tap = taps[name]
            if len(set(by_rank.values())) > 1 and not tap.disabled:
                tap.disabled = True
                tap.error = "its channel count differs between ranks"
                early.append(_ranks_differ(name, by_rank, self._env.step()))

    def sync_latents(self, taps: dict[str, _Tap], summaries: list[tuple[str, RangeSummary]]) -> list[RangeStats]:
        """Under DDP, reduce the latent taps' states on every rank before rank zero logs their
        histograms (``log_latents`` reads them again): a sync of rank zero's own there would wait
        forever for the other ranks. Returns the synced stats, to ``unsync()`` after the logging."""
        out = []
        for name, _ in summaries:
            tap = taps[name]
            if tap.latent is None:
                continue
            try:
                tap.stats.sync(dist_sync_fn=tap.stats.dist_sync_fn)
                if tap.stats.synced:
                    out.append(tap.stats)
            except Exception as e:  # noqa: BLE001
                self._reporter.internal(name, e, tap)
        return out

    def gather_sample(self, tap: _Tap, channels: int) -> None:
        """Every rank's sampled values, so that every rank reaches the same verdict (a verdict that
        differs between ranks would make one rank raise alone). Every rank takes part, fed or not."""
        vs = tap.stats.value_sample
        failed: BaseException | None = None
        try:
            flat, c = vs.pending_flat()
            if flat is None or c != channels:
                flat = torch.zeros(0, dtype=torch.float64)
        except Exception as e:  # noqa: BLE001  (this rank still takes part, with nothing: no rank waits alone)
            failed, flat = e, torch.zeros(0, dtype=torch.float64)
        parts = self._env.collectives.all_gather_varlen(flat)
        if failed is not None:  # this tap is switched off here (the caller reports it), everywhere at the next agreement
            raise failed
        vs.replace_pending(torch.cat([p.to(torch.float64).cpu() for p in parts]), channels)
