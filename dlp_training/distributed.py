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

from dlp_ros.errors import ConfigError

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


DEVICES = ('auto', 'cpu', 'cuda')


def setup(device: str = 'auto') -> Context:
    """Join the process group when started by torchrun; pick the device (``auto``: CUDA when
    torch sees a GPU, else the CPU; ``cuda`` without a usable GPU is an error) and log it.

    Raises:
        ConfigError: an unknown ``device``, or ``cuda`` where torch sees no GPU.
    """
    if device not in DEVICES:
        raise ConfigError(f'--device must be one of {", ".join(DEVICES)}, got {device!r}')
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    if device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(
            '--device cuda: torch sees no CUDA GPU (torch ' + torch.__version__ + ', built for '
            f'CUDA {torch.version.cuda or "none: a CPU-only wheel"}); install a CUDA build of '
            'torch (docs/your-data.md) or use --device cpu'
        )
    if device != 'cpu' and torch.cuda.is_available():
        local = int(os.environ.get('LOCAL_RANK', '0'))
        torch.cuda.set_device(local)
        chosen = torch.device('cuda', local)
        name = torch.cuda.get_device_name(local)
    else:
        chosen = torch.device('cpu')
        name = 'the CPU; train.threads sets the threads'
    if rank == 0:
        logger.info('training on %s (%s; --device %s)', chosen, name, device)
    if world > 1 and not tdist.is_initialized():
        backend = 'nccl' if chosen.type == 'cuda' else 'gloo'
        tdist.init_process_group(backend=backend)
        logger.info('rank %d/%d joined (%s, %s)', rank, world, backend, chosen)
    return Context(rank, world, chosen)


def set_threads(threads: int, ctx: Context) -> None:
    """Apply a run's ``train.threads`` (0: torch's default) and log the count on a CPU run."""
    if threads:
        torch.set_num_threads(threads)
    if ctx.device.type == 'cpu' and ctx.rank == 0:
        logger.info('%d torch threads (train.threads: %d, 0 = torch default)',
                    torch.get_num_threads(), threads)  # fmt: skip


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
def process_group(device: str = 'auto') -> Iterator[Context]:
    """:func:`setup` (on ``device``) on entry; on an exception :func:`teardown` without a
    barrier (then the exception goes on), otherwise a normal teardown if the body did not
    already do it."""
    ctx = setup(device)
    try:
        yield ctx
    except BaseException:
        teardown(ctx, barrier=False)
        raise
    teardown(ctx)
