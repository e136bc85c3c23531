"""Benchmark the runtime: onnxruntime against the same model in PyTorch eager, in one run.

Per image size (64 and 128), batch 1, the same thread count for both back ends, p50 and p99 of:

* ``encode``: ``Tracker.update`` of one preprocessed frame (tracking encoder, slot assignment,
  background encoder);
* ``step``: one dynamics step;
* ``decode``: ``render`` of one frame (decoder + conversion to uint8);
* ``predict10``: a 10-step particle prediction (``predict``);
* ``predict10_frames``: a 10-step prediction with its frames (``render(predict(...))``).

The PyTorch side is :class:`EagerRuntime`, a :class:`~dlp_ros.runtime.DlpRuntime` whose four
graph calls run the torch export views under ``torch.inference_mode``; everything else (the
tracker's numpy slot assignment, the prediction loop, the uint8 conversion) is the same code.

Bundles: ``--bundle DIR`` (repeatable) uses an exported bundle and the torch models of the runs
its card names. Sizes without a bundle get random weights in the architecture of
``dlp_training/configs/dlp_tabletop64.yaml`` / ``dlp_tabletop128.yaml`` with the dynamics of
``dynamics_tabletop64.yaml`` (2 actions), exported to a temporary directory (said in the output).

``--tune`` also measures onnxruntime session-option variants (encode and predict10_frames).

Prints human-readable lines, then one JSON object on the last line.

    python benchmarks/runtime.py [--bundle DIR] [--repeats 200] [--threads 1] [--tune]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlp_ros.model_card import ModelCard  # noqa: E402
from dlp_ros.particles import FIELDS, ParticleFrame  # noqa: E402
from dlp_ros.providers import SessionConfig  # noqa: E402
from dlp_ros.runtime import DlpRuntime  # noqa: E402
from dlp_training.dlp_config import load_dlp  # noqa: E402
from dlp_training.dynamics_config import load_dynamics  # noqa: E402
from dlp_training.export import export_random_bundle  # noqa: E402
from dlp_training.models.dlp import Dlp, DlpConfig, DlpDecoder  # noqa: E402
from dlp_training.models.dynamics import DynamicsConfig, DynamicsStep, ParticleDynamics  # noqa: E402
from dlp_training.models.tracking import DlpBackgroundEncoder, DlpTrackingEncoder  # noqa: E402

HORIZON = 10
OPS = ('encode', 'step', 'decode', 'predict10', 'predict10_frames')


class EagerRuntime(DlpRuntime):
    """DlpRuntime with the graphs replaced by the torch modules they were exported from."""

    def __init__(self, card: ModelCard, dlp: Dlp, dynamics: ParticleDynamics) -> None:
        super().__init__(card, {}, 'torch-eager')
        self.encoder = DlpTrackingEncoder(dlp).eval()
        self.bg = DlpBackgroundEncoder(dlp).eval()
        self.dyn = DynamicsStep(dynamics).eval()
        self.decoder = DlpDecoder(dlp).eval()

    @torch.inference_mode()
    def encode_pair(self, x: np.ndarray, anchors: np.ndarray) -> dict[str, np.ndarray]:
        out = self.encoder(torch.from_numpy(x), torch.from_numpy(anchors))
        return {n: v.numpy() for n, v in zip(FIELDS[:-1], out, strict=True)}

    @torch.inference_mode()
    def background(self, x: np.ndarray, mu: np.ndarray, transparency: np.ndarray) -> np.ndarray:
        t = torch.from_numpy
        return self.bg(t(x), t(mu), t(transparency)).numpy()

    @torch.inference_mode()
    def step(self, window: dict[str, np.ndarray], actions: np.ndarray | None) -> list[np.ndarray]:
        args = [torch.from_numpy(window[n]) for n in FIELDS]
        if self.card.dynamics.action_dim:
            args.append(torch.from_numpy(actions))
        return [v.numpy() for v in self.dyn(*args)]

    @torch.inference_mode()
    def decode(self, frames: list[ParticleFrame]) -> np.ndarray:
        names = ('mu', 'scale', 'depth', 'transparency', 'features', 'bg_features')
        feeds = [torch.from_numpy(np.stack([getattr(f, n) for f in frames])) for n in names]
        return self.decoder(*feeds).numpy()


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 5) -> dict:
    """p50 / p99 / mean (ms) of each of ``fns``, called in turn (round robin, rotating the
    order), so that the load of a shared machine falls on all of them alike."""
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ms: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            ms[n].append((time.perf_counter() - t0) * 1e3)
    return {n: {'p50': float(np.percentile(v, 50)), 'p99': float(np.percentile(v, 99)),
                'mean': float(np.mean(v))} for n, v in ms.items()}  # fmt: skip


def frames_for(size: int, n: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Camera frames (480 x 640) with a few moving discs, to track through."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    start, vel = rng.uniform(100, 380, (4, 2)), rng.uniform(-8, 8, (4, 2))
    out = []
    for t in range(n):
        img = np.full((480, 640, 3), 30, np.uint8)
        for c, col in zip(start + t * vel, rng.uniform(90, 255, (4, 3)), strict=True):
            img[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 < 40**2] = col.astype(np.uint8)
        out.append(img)
    return out


def operations(rt: DlpRuntime) -> dict[str, Callable[[], Any]]:
    """The five operations on one runtime, as argument-free callables."""
    frames = frames_for(rt.card.image.size)
    xs = [rt.preprocess(f) for f in frames]
    tracker = rt.tracker()
    for x in xs[:4]:
        tracker.update(x)
    state = {'i': 0}

    def encode() -> None:
        state['i'] = (state['i'] + 1) % len(xs)
        tracker.update(xs[state['i']])

    history = tracker.history
    h, a = rt.card.dynamics.history, rt.card.dynamics.action_dim
    actions = np.zeros((h + HORIZON - 1, a), np.float32) if a else None
    window = {n: np.stack([getattr(f, n) for f in history])[None] for n in FIELDS}
    step_actions = None if actions is None else actions[None, :h]
    last = history[-1]
    return {
        'encode': encode,
        'step': lambda: rt.step(window, step_actions),
        'decode': lambda: rt.render([last]),
        'predict10': lambda: rt.predict(history, HORIZON, actions),
        'predict10_frames': lambda: rt.render(rt.predict(history, HORIZON, actions)),
    }


def measure(runtimes: dict[str, DlpRuntime], repeats: int, ops: tuple[str, ...] = OPS) -> dict:
    """{runtime label: {op: timings}}, each op timed on all runtimes interleaved."""
    built = {label: operations(rt) for label, rt in runtimes.items()}
    out: dict[str, dict[str, Any]] = {label: {} for label in runtimes}
    for op in ops:
        for label, t in interleaved({lb: b[op] for lb, b in built.items()}, repeats).items():
            out[label][op] = t
    return out


def torch_models(card: ModelCard) -> tuple[Dlp, ParticleDynamics]:
    """The models of the runs a bundle's card names (same architecture as the graphs)."""
    t = card.training
    try:
        dlp_ckpt = Path(t['dlp']['checkpoint'])
        dyn_ckpt = Path(t['dynamics']['checkpoint'])
    except (KeyError, TypeError) as exc:
        raise SystemExit(f'{card.directory}: the card names no training runs') from exc
    dlp = load_dlp(dlp_ckpt.parents[1], dlp_ckpt.stem)[0]
    dyn = load_dynamics(dyn_ckpt.parents[1], dyn_ckpt.stem)[0]
    return dlp, dyn


def random_bundle(size: int, out: Path) -> tuple[ModelCard, Dlp, ParticleDynamics]:
    name = {64: 'dlp_tabletop64', 128: 'dlp_tabletop128'}[size]
    model = yaml.safe_load((ROOT / f'dlp_training/configs/{name}.yaml').read_text())['model']
    dlp_cfg = DlpConfig.from_dict({**model, 'S': size})  # S: the dataset's in train-dlp
    dyn = yaml.safe_load((ROOT / 'dlp_training/configs/dynamics_tabletop64.yaml').read_text())[
        'model'
    ]
    dyn_cfg = DynamicsConfig.from_dlp(dlp_cfg, **dyn)  # K, F, Fb from the DLP
    return export_random_bundle(dlp_cfg, dyn_cfg, out)


def tune(bundle: Path, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """p50 of encode / predict10 / predict10_frames for session-option variants (ORT only).

    Each variant runs in a block of its own with freshly created sessions (a parallel executor's
    spinning thread pool would slow whatever runs beside it), in two passes (forward and reverse
    order) whose samples are pooled, so slow drifts of the machine's load even out.
    """
    base = SessionConfig(threads=threads)
    variants = {
        'default (all opt, sequential, mem pattern)': base,
        'optimization basic': replace(base, optimization='basic'),
        'optimization extended': replace(base, optimization='extended'),
        'optimization disabled': replace(base, optimization='disable'),
        'no memory pattern': replace(base, memory_pattern=False),
        'parallel executor, 2 inter-op threads': replace(base, sequential=False, inter_threads=2),
        f'{threads + 1} intra-op threads': replace(base, threads=threads + 1),
        f'{threads + 1} intra-op threads, no spinning': replace(
            base, threads=threads + 1, spinning=False
        ),
    }
    ops = ('encode', 'predict10', 'predict10_frames')
    samples: dict[str, dict[str, list[float]]] = {n: {op: [] for op in ops} for n in variants}
    order = list(variants)
    for names in (order, order[::-1]):
        for name in names:
            cfg = variants[name]
            rt = DlpRuntime.load(bundle, providers='cpu', threads=cfg.threads, session_config=cfg)
            for op, fn in operations(rt).items():
                if op in ops:
                    for _ in range(3):
                        fn()
                    for _ in range(max(1, repeats // 2)):
                        t0 = time.perf_counter()
                        fn()
                        samples[name][op].append((time.perf_counter() - t0) * 1e3)
            del rt
    out = {n: {op: float(np.median(v)) for op, v in d.items()} for n, d in samples.items()}
    for name, v in out.items():
        print(f'  tune {name:<45} ' + '  '.join(f'{op} {t:7.2f} ms' for op, t in v.items()))
    rt = DlpRuntime.load(bundle, providers='cpu', threads=threads)
    out['io binding (encoder graph alone)'] = io_binding(rt, repeats)
    return out


def io_binding(rt: DlpRuntime, repeats: int) -> dict[str, float]:
    """The encoder graph alone: plain run() vs run_with_iobinding() with preallocated outputs."""
    import onnxruntime as ort  # noqa: PLC0415

    s, k, size = rt.sessions['encoder.onnx'], rt.card.particles.K, rt.card.image.size
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    anchors = np.zeros((1, k, 2), np.float32)
    binding = s.io_binding()
    binding.bind_cpu_input('image', x)
    binding.bind_cpu_input('anchors', anchors)
    for o in rt.card.files['encoder.onnx'].outputs:
        shape = [1 if isinstance(d, str) else d for d in o.shape]
        buf = ort.OrtValue.ortvalue_from_numpy(np.empty(shape, np.float32))
        binding.bind_ortvalue_output(o.name, buf)
    t = interleaved({'run': lambda: s.run(None, {'image': x, 'anchors': anchors}),
                     'iobinding': lambda: s.run_with_iobinding(binding)}, repeats)  # fmt: skip
    out = {name: v['p50'] for name, v in t.items()}
    print(f'  tune encoder graph alone: run() {out["run"]:.3f} ms, run_with_iobinding() '
          f'{out["iobinding"]:.3f} ms')  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bundle', type=Path, action='append', default=[],
                        help='exported bundle (repeatable; one per image size)')  # fmt: skip
    parser.add_argument('--repeats', type=int, default=200, help='timed calls per operation')
    parser.add_argument('--threads', type=int, default=1,
                        help='onnxruntime intra-op threads = torch threads')  # fmt: skip
    parser.add_argument('--tune', action='store_true', help='also compare session options')
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix='dlp_runtime_bench_'))
    try:
        return run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> int:
    result: dict[str, Any] = {'threads': args.threads, 'repeats': args.repeats, 'sizes': {},
                              'cpu_count': os.cpu_count(), 'torch': torch.__version__}  # fmt: skip
    import onnxruntime as ort  # noqa: PLC0415

    result['onnxruntime'] = ort.__version__
    sources: dict[int, tuple[Path, str, Dlp, ParticleDynamics]] = {}
    for bundle in args.bundle:
        rt = DlpRuntime.load(bundle, providers='cpu', threads=args.threads)
        dlp, dyn = torch_models(rt.card)
        sources[rt.card.image.size] = (bundle, f'bundle {bundle}', dlp, dyn)
    for size in (64, 128):
        if size not in sources:
            card, dlp, dyn = random_bundle(size, tmp / f'random{size}')
            what = (f'random weights, dlp_tabletop{size}.yaml + dynamics_tabletop64.yaml '
                    f'architecture, exported to {card.directory} (removed at exit)')  # fmt: skip
            sources[size] = (card.directory, what, dlp, dyn)
    for size in (64, 128):
        bundle, what, dlp, dyn = sources[size]
        ort_rt = DlpRuntime.load(bundle, providers='cpu', threads=args.threads)
        eager = EagerRuntime(ort_rt.card, dlp, dyn)
        c = ort_rt.card
        print(f'{size}x{size}: {what} (K={c.particles.K}, H={c.dynamics.history}, '
              f'A={c.dynamics.action_dim}), {args.threads} thread(s), '
              f'{args.repeats} repeats')  # fmt: skip
        runs = measure({'onnxruntime': ort_rt, 'eager': eager}, args.repeats)
        entry: dict[str, Any] = {'source': what, **runs, 'speedup_p50': {}}
        for op in OPS:
            o, e = runs['onnxruntime'][op], runs['eager'][op]
            entry['speedup_p50'][op] = e['p50'] / o['p50']
            print(f'  {op:<17} ort p50 {o["p50"]:7.2f} p99 {o["p99"]:7.2f} ms | eager p50 '
                  f'{e["p50"]:7.2f} p99 {e["p99"]:7.2f} ms | '
                  f'x{e["p50"] / o["p50"]:.2f}')  # fmt: skip
        enc_pred = runs['onnxruntime']['encode']['p50'] + runs['onnxruntime']['predict10']['p50']
        entry['ort_encode_plus_predict10_p50'] = enc_pred
        print(f'  encode + 10-step particle prediction (ort p50): {enc_pred:.2f} ms')
        if args.tune:
            entry['tune'] = tune(bundle, args.threads, max(50, args.repeats // 2))
        result['sizes'][str(size)] = entry
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
