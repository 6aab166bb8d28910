"""HiDiff under nnU-Net's DistributedDataParallel (``nnUNetv2_train ... -num_gpus N``).

nnU-Net wraps its one network in one ``DistributedDataParallel`` (after ``SyncBatchNorm`` conversion) and splits
the global batch over the ranks. HiDiff trains two networks with two optimizers in alternating steps, so each
network gets its own wrapper (``wrap_networks``):

* the segmentor's training forward goes through ``SegmentorPass`` (encoder + decoder, returning the logits and
  the skips the refiner reads) inside its wrapper; its gradients are averaged when the segmentor step (or a
  warm-up step) runs backward;
* the refiner's training forward goes through its wrapper in the refiner step (and in the joint step); in the
  segmentor step the refiner is frozen (eval mode, ``requires_grad_(False)``) and runs unwrapped, since no
  gradient of its own has to be averaged;
* every skip decision (non-finite loss or gradient) is taken by all ranks together (``all_ranks``), so no rank
  waits in an all-reduce the others skipped;
* BatchNorm is synchronised (``SyncBatchNorm``) on CUDA as nnU-Net does; torch's SyncBatchNorm has no CPU kernel,
  so CPU runs (``gloo``, used by the tests) keep per-rank batch statistics;
* the diffusion random numbers differ per rank (seed offset by the rank) and are reproducible;
* checkpoints, fold records and validation summaries are written by rank 0 (the trainer checks local_rank).

nnU-Net itself assumes CUDA under DDP (it sets ``cuda:<rank>``); ``use_cpu_when_no_cuda`` keeps a CPU process
group (gloo) on the CPU, which is how the DDP path is tested on machines without GPUs.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

RANK_SEED_OFFSET = 100_003


def is_ddp() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_seed(base: int, rank: int) -> int:
    """The diffusion generator's seed on ``rank`` (rank 0 keeps the single-process seed)."""
    return base + RANK_SEED_OFFSET * rank


def barrier() -> None:
    if is_ddp():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_ddp():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on every rank (a collective call: every rank must make it)."""
    if not is_ddp():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() != "gloo" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def gathered(values) -> np.ndarray:
    """The per-iteration values of every rank, concatenated (as nnU-Net gathers its training losses)."""
    values = np.asarray(values, dtype=float).ravel()
    if not is_ddp():
        return values
    parts: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return np.concatenate([np.asarray(p, dtype=float).ravel() for p in parts])


def use_cpu_when_no_cuda(trainer) -> None:
    """After nnU-Net's __init__: keep a DDP run without CUDA on the CPU (nnU-Net would pick cuda:<rank>)."""
    if trainer.is_ddp and trainer.device.type == "cuda" and not torch.cuda.is_available():
        trainer.device = torch.device("cpu")
        trainer.grad_scaler = None
        print(f"Rank {trainer.local_rank}: no CUDA, running the distributed training on the CPU")


class SegmentorPass(nn.Module):
    """The segmentor's forward that HiDiff trains through: (logits, skips). Holds the segmentor, adds no weights."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor):
        skips = self.segmentor.encoder(x)
        return self.segmentor.decoder(skips), list(skips)


def _wrap(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)  # converts the children in place (keys unchanged)
        return DDP(module, device_ids=[device.index])
    return DDP(module)


def wrap_networks(trainer):
    """(segmentor wrapper, refiner wrapper) for the trainer's HiDiffNetwork; each broadcasts rank 0's weights
    on construction, so call it before anything (EMA, warm start) copies or loads weights."""
    hidiff = trainer.hidiff
    return _wrap(SegmentorPass(hidiff.segmentor), trainer.device), _wrap(hidiff.refiner, trainer.device)
