"""Data-parallel training with torchrun: one process per device, DistributedDataParallel.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; `setup` joins the group
with NCCL on CUDA and Gloo on the CPU. Every rank holds the whole (small) dataset on its device and
draws the same epoch order; a global batch of B examples is split as idx[rank::world], so the
union of the ranks' batches is exactly the single-process batch and DDP's gradient average equals
the single-process gradient (DistributedSampler semantics: the order is padded to a multiple of the
world size by repeating its first examples). Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import VaekitError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of t over ranks (t itself when not distributed)."""
        if self.active:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def gather_objects(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets besides WORLD_SIZE


def _env_int(name: str, default: str | None, low: int, high: int) -> int:
    """An environment variable that must hold a whole number in low..high: one line if it does not."""
    text = os.environ.get(name, default)
    if text is None:
        raise VaekitError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but {name} is not: run under torchrun "
                          "(which sets both), or unset WORLD_SIZE to train in one process")
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise VaekitError(f"the environment variable {name}={text[:40]!r} must be a whole number in {low}..{high}"
                          f"{' (unset it outside torchrun)' if name == 'WORLD_SIZE' else ''}")
    return value


def launched_by_torchrun() -> bool:
    return _env_int("WORLD_SIZE", "1", 1, 65536) > 1


def setup(device: torch.device, timeout_s: float) -> Group:
    """Join the torchrun process group if there is one; returns this process's place in it."""
    if not launched_by_torchrun():
        return Group(device=device)
    world = _env_int("WORLD_SIZE", "1", 1, 65536)
    rank, local_rank = _env_int("RANK", None, 0, world - 1), _env_int("LOCAL_RANK", "0", 0, world - 1)
    for name in TORCHRUN_VARIABLES[2:]:
        if not os.environ.get(name):
            raise VaekitError(f"WORLD_SIZE={world} is set but {name} is not: run under torchrun (which sets both), "
                              "or unset WORLD_SIZE to train in one process")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Group(rank=rank, world=world, device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def padded_order(order: torch.Tensor, world: int) -> torch.Tensor:
    """Repeat the first examples so that every rank gets the same number (DistributedSampler)."""
    extra = (-len(order)) % world
    return torch.cat([order, order[:extra]]) if extra else order


def check_batch_size(batch_size: int, group: Group) -> None:
    if batch_size % group.world:
        raise VaekitError(
            f"--batch-size {batch_size} is the global batch and must be divisible by the {group.world} processes"
        )


def is_collective_failure(error: BaseException) -> bool:
    """Whether an exception came from a collective whose peer died or timed out, not from the model.

    NCCL and the c10d store raise torch.distributed.DistError subclasses; Gloo raises a plain
    RuntimeError whose message starts with its transport's source path (".../gloo/transport/...")
    or names a Gloo timeout. Anything else (an out-of-memory, a shape bug) keeps its own message."""
    if isinstance(error, dist.DistError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("/gloo/" in message or "Gloo" in message or "ProcessGroupGloo" in message)


def collective_failed(error: BaseException) -> VaekitError:
    """A clear message for a collective that failed because another rank died or timed out."""
    return VaekitError(
        f"another training process stopped or timed out ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
        "the last checkpoint is intact: resume with `vaekit train --resume RUN`"
    )
