"""A non-finite loss stops training (dlp_training.runs.optimisation_step): on one process, and
under DDP with two real gloo processes where only rank 1 sees it, which must stop both ranks
without a hang (no rank may be left waiting in the gradient all-reduce)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dlp_ros.errors import DlpError
from dlp_training.runs import optimisation_step

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 60  # both ranks exit well within this; more means a rank hung

# One rank of a 2-process DDP job (env:// rendezvous as torchrun sets it up): a tiny DDP-wrapped
# model and a real optimizer go through optimisation_step, inside the process group of the
# training commands, with the CLI's error handling (DlpError -> one stderr line, exit 2). The loss
# of rank BAD_RANK is made NaN at step BAD_STEP; rank_R.json records the parameter digests.
WORKER = '''
"""Usage: worker.py OUT BAD_STEP BAD_RANK."""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from dlp_training import distributed as dist
from dlp_ros.offline.cli import main_of
from dlp_training.runs import optimisation_step


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('out', type=Path)
    parser.add_argument('bad_step', type=int)
    parser.add_argument('bad_rank', type=int)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    with dist.process_group() as ctx:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        ddp = dist.wrap(model, ctx)
        record = {'rank': ctx.rank, 'initial': dist.parameter_digest(model)}
        for step in range(args.bad_step + 3):
            record.update(step=step, before=dist.parameter_digest(model))
            loss = ddp(torch.full((4, 3), 0.1 * (ctx.rank + step + 1))).pow(2).mean()
            if (step, ctx.rank) == (args.bad_step, args.bad_rank):
                loss = loss * float('nan')
            metrics = {'loss': float(loss.detach())}
            try:
                optimisation_step(model, optimizer, loss, metrics, step, 1.0, args.out / 'last.pt')
            finally:
                record['after'] = dist.parameter_digest(model)
                (args.out / f'rank_{ctx.rank}.json').write_text(json.dumps(record))
        dist.teardown(ctx)
    return 0


if __name__ == '__main__':
    sys.exit(main_of('nan-worker', sys.modules[__name__]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def _tiny() -> tuple[nn.Module, torch.optim.Optimizer, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, optimizer, {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_loss_raises_naming_step_and_checkpoint(tmp_path: Path, bad: float) -> None:
    model, optimizer, before = _tiny()
    last = tmp_path / 'checkpoints' / 'last.pt'
    last.parent.mkdir()
    last.write_bytes(b'')
    loss = model(torch.ones(2, 3)).pow(2).mean() * bad
    with pytest.raises(DlpError, match='non-finite loss') as err:
        optimisation_step(model, optimizer, loss, {'loss': float(loss.detach())}, 7, 1.0, last)
    message = str(err.value)
    assert 'at step 7' in message and f'The last good checkpoint is {last}' in message
    assert _unchanged(model, before) and all(p.grad is None for p in model.parameters())
    assert not optimizer.state, 'the optimizer must not have stepped'

    missing = tmp_path / 'none' / 'last.pt'
    loss = model(torch.ones(2, 3)).pow(2).mean() * bad
    with pytest.raises(DlpError, match='no last good checkpoint yet') as err:
        optimisation_step(model, optimizer, loss, {}, 0, 0.0, missing)
    assert str(missing) in str(err.value)


def test_finite_loss_updates_on_one_process(tmp_path: Path) -> None:
    model, optimizer, before = _tiny()
    loss = model(torch.ones(2, 3)).pow(2).mean()
    optimisation_step(model, optimizer, loss, {}, 0, 1.0, tmp_path / 'last.pt')
    assert not _unchanged(model, before)


def test_non_finite_loss_on_one_ddp_rank_stops_every_rank(tmp_path: Path) -> None:
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    last = tmp_path / 'last.pt'
    last.write_bytes(b'')  # stands for the last good checkpoint
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, 'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': '2',
               'LOCAL_WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': port,
               'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join(
                   [str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])}  # fmt: skip
        cmd = [sys.executable, str(script), str(tmp_path), '2', '1']
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    deadline = time.monotonic() + HANG_S
    errs: list[str] = []
    try:
        for proc in procs:
            errs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[1])
    except subprocess.TimeoutExpired:
        pytest.fail(f'a DDP rank hung after a non-finite loss on rank 1 (> {HANG_S} s)')
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for rank, (proc, err) in enumerate(zip(procs, errs, strict=True)):
        assert proc.returncode == 2, f'rank {rank} exited {proc.returncode}: {err[-3000:]}'
        assert 'non-finite loss at step 2 on rank(s) 1 of 2' in err, err[-3000:]
        assert f'The last good checkpoint is {last}' in err, err[-3000:]
    records = [json.loads((tmp_path / f'rank_{r}.json').read_text()) for r in (0, 1)]
    assert [r['step'] for r in records] == [2, 2]
    assert all(r['after'] == r['before'] for r in records), 'parameters changed at the bad step'
    assert all(r['before'] != r['initial'] for r in records), 'the good steps did not update'
    assert records[0]['before'] == records[1]['before'], 'ranks out of sync before the bad step'
