"""Collectives: the few cross-process operations the engine needs, from whoever runs the processes.

:class:`~rangewatch.Watch` never talks to ``torch.distributed`` or a Lightning strategy itself; it is
given a :class:`Collectives` object:

- :class:`SingleProcess` (the default): rank 0 of 1; every operation is the identity.
- :class:`LightningCollectives`: a Lightning ``Trainer``'s strategy (``strategy.all_gather`` /
  ``strategy.reduce``), which is what the :class:`~rangewatch.RangeWatch` callback passes.
- :class:`TorchDistributed`: ``torch.distributed`` directly (a hand-written DDP loop, HF Accelerate,
  ``torchrun``); tensors travel on the backend's device (the current CUDA device for NCCL, the CPU for gloo).

Every operation is a collective: every rank must call it, in the same order. The engine only calls
them at check steps, which every rank reaches together.

Example::

    >>> import torch
    >>> from rangewatch.engine.collectives import SingleProcess
    >>> c = SingleProcess()
    >>> c.rank, c.world_size
    (0, 1)
    >>> [t.tolist() for t in c.all_gather_varlen(torch.tensor([1.0, 2.0]))]
    [[1.0, 2.0]]
    >>> c.all_gather_bytes(b"tap")
    [b'tap']
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Collectives", "SingleProcess", "LightningCollectives", "TorchDistributed", "default_collectives"]


class Collectives:
    """What the engine needs from the processes it runs in. Subclasses give ``rank``,
    ``world_size``, ``device`` and the two primitives :meth:`all_gather` (equal shapes) and
    :meth:`all_reduce_sum`; the variable-length gathers are built on them."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        """Where collective tensors must live (NCCL cannot gather CPU tensors)."""
        return torch.device("cpu")

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (same shape on every rank), in rank order."""
        return [t]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``t``."""
        return t

    def all_gather_varlen(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's 1-D ``t`` (lengths may differ; empty allowed): gather the lengths, pad,
        gather, trim. The parts come back on :attr:`device`."""
        device = self.device
        t = t.reshape(-1).to(device)
        if self.world_size <= 1:
            return [t]
        sizes = torch.cat([s.reshape(-1) for s in self.all_gather(torch.tensor([t.numel()], device=device))]).tolist()
        padded = torch.cat([t, t.new_zeros(max(sizes) - t.numel())])
        return [g.reshape(-1)[:n] for g, n in zip(self.all_gather(padded), sizes)]

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's ``payload``, in rank order."""
        t = torch.tensor(list(payload), dtype=torch.uint8)
        return [bytes(p.cpu().tolist()) for p in self.all_gather_varlen(t)]


class SingleProcess(Collectives):
    """One process: rank 0 of 1."""

    def __repr__(self) -> str:
        return "SingleProcess()"


class LightningCollectives(Collectives):
    """A Lightning ``Trainer``'s strategy: its ``all_gather`` and ``reduce``; rank and world size are
    read from the trainer on each use (they are set when the strategy is)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def rank(self) -> int:
        return int(getattr(self.trainer, "global_rank", 0) or 0)

    @property
    def world_size(self) -> int:
        return int(getattr(self.trainer, "world_size", 1) or 1)

    @property
    def device(self) -> torch.device:
        return self.trainer.strategy.root_device

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = self.trainer.strategy.all_gather(t)
        return list(out.unbind(0)) if self.world_size > 1 else [out]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum")


class TorchDistributed(Collectives):
    """``torch.distributed`` (initialised by the caller: ``torchrun``, HF Accelerate, ``init_process_group``)
    over ``group`` (default: the world). Tensors travel on ``device``: by default the current CUDA
    device for NCCL, else the CPU."""

    def __init__(self, group: Any = None, device: torch.device | str | None = None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchDistributed needs torch.distributed to be initialised (init_process_group)")
        self.group = group
        if device is None:
            nccl = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self._device = torch.device(device)

    @property
    def rank(self) -> int:
        import torch.distributed as dist

        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size(self.group)

    @property
    def device(self) -> torch.device:
        return self._device

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed as dist

        t = t.to(self._device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t, group=self.group)
        return out

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        t = t.to(self._device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def __repr__(self) -> str:
        return f"TorchDistributed(rank={self.rank}, world_size={self.world_size}, device={str(self._device)!r})"


def default_collectives() -> Collectives:
    """:class:`TorchDistributed` when ``torch.distributed`` is initialised with more than one
    process, else :class:`SingleProcess`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return SingleProcess()
