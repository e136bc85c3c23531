"""Training throughput of DLP for each ready config: images/s of forward + backward + Adam step.

    python benchmarks/train_dlp.py [--configs dlp_training/configs/dlp_balls64.yaml ...] \\
        [--steps 30]

Random images of the config's size and batch; the first steps are warm-up and not timed; the median
step time gives images/s. Prints one line per config and a JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dlp_training.config import load_config
from dlp_training.dlp_config import DlpRunConfig
from dlp_training.models.dlp import Dlp

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ['dlp_balls64', 'dlp_tabletop64', 'dlp_tabletop128']


# S of each config (train-dlp takes it from the dataset; these configs are trained at it).
SIZES = {'dlp_balls64': 64, 'dlp_tabletop64': 64, 'dlp_tabletop128': 128, 'dlp_tiny': 64}


def measure(path: Path, steps: int, warmup: bool) -> dict:
    config = load_config(DlpRunConfig, path, [f'model.S={SIZES.get(path.stem, 64)}'])
    torch.manual_seed(0)
    model = Dlp(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    size, batch = config.model.S, config.train.batch_size
    images = torch.rand(batch, 3, size, size)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        loss, _ = model(images, warmup=warmup)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        'config': path.stem,
        'image_size': size,
        'batch': batch,
        'warmup_phase': warmup,
        'parameters': sum(p.numel() for p in model.parameters()),
        'median_step_ms': round(1000 * median, 1),
        'images_per_s': round(batch / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configs = [ROOT / 'dlp_training' / 'configs' / f'{n}.yaml' for n in DEFAULT]
    parser.add_argument('--configs', nargs='+', type=Path, default=configs)
    parser.add_argument('--steps', type=int, default=30, help='timed steps per config')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for path in args.configs:
        for warmup in (False, True):
            r = measure(path, args.steps, warmup)
            results.append(r)
            phase = 'warm-up' if warmup else 'main'
            print(f"{r['config']:>16} ({phase:7}): {r['images_per_s']:7.1f} images/s "
                  f"(batch {r['batch']}, {r['median_step_ms']} ms/step)")  # fmt: skip
    print(json.dumps({'benchmark': 'train-dlp', 'threads': args.threads, 'results': results}))


if __name__ == '__main__':
    main()
