"""Multi-process training with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything is a no-op on one process.
Backend: nccl when each process has a GPU, gloo otherwise (CPU, and the tests).

A training command runs inside :func:`process_group`: on success the ranks meet at a barrier
before leaving the group; on an error each rank leaves at once, so that a rank that stops never
waits for (nor is waited for by) the others. Whatever makes one rank stop must make every rank
stop at the same point (see :func:`ranks_where`), or the others block in DDP's next collective.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> Context:
    """Join the process group when started by torchrun; pick the device."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    if torch.cuda.is_available():
        local = int(os.environ.get('LOCAL_RANK', '0'))
        torch.cuda.set_device(local)
        device = torch.device('cuda', local)
    else:
        device = torch.device('cpu')
    if world > 1 and not tdist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        tdist.init_process_group(backend=backend)
        logger.info('rank %d/%d joined (%s, %s)', rank, world, backend, device)
    return Context(rank, world, device)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed (gradients all-reduced)."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters: equal on every rank when the processes are in sync."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def report_sync(model: nn.Module, ctx: Context, out: Path) -> None:
    """Write ``sync/rank_R.json`` with the parameter digest (distributed runs only)."""
    if not ctx.distributed:
        return
    path = out / 'sync' / f'rank_{ctx.rank}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'rank': ctx.rank, 'digest': parameter_digest(model)}))


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the world size of the joined process group; (0, 1) if none."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def ranks_where(flag: bool, device: torch.device) -> list[int]:
    """The ranks on which ``flag`` is true, the same list on every rank.

    Distributed, this is one all-reduce of a ``world_size`` vector that every rank must call at
    the same point; on one process it is ``[0]`` or ``[]`` without any collective. ``device`` is
    where the collective's tensor lives (a CUDA device under nccl).
    """
    rank, world = rank_and_size()
    if world == 1:
        return [0] if flag else []
    votes = torch.zeros(world, dtype=torch.int32, device=device)
    votes[rank] = int(flag)
    tdist.all_reduce(votes, op=tdist.ReduceOp.SUM)
    return [int(r) for r in votes.nonzero().flatten().tolist()]


def teardown(ctx: Context, *, barrier: bool = True) -> None:
    """Leave the process group (if joined): after a barrier, or at once with ``barrier=False``
    (the error path, where some rank may never reach the barrier)."""
    if ctx.distributed and tdist.is_initialized():
        if barrier:
            tdist.barrier()
        tdist.destroy_process_group()


@contextmanager
def process_group() -> Iterator[Context]:
    """:func:`setup` on entry; on an exception :func:`teardown` without a barrier (then the
    exception goes on), otherwise a normal teardown if the body did not already do it."""
    ctx = setup()
    try:
        yield ctx
    except BaseException:
        teardown(ctx, barrier=False)
        raise
    teardown(ctx)
