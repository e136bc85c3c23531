"""What ``evaluate-dlp`` encodes with: a ``train-dlp`` run in PyTorch or an exported bundle.

Both give the posterior means of frames (T, S, S, 3) uint8 RGB as numpy arrays:

* :meth:`~DlpSource.encode`: each frame on its own (``Dlp.encode``; in a bundle the tracking
  encoder's *detections*, the particles anchored at the frame's top-K proposals, which are
  ``Dlp.encode``'s), with the per-frame PSNR and SSIM of the decoded frame when asked;
* :meth:`~DlpSource.track`: the tracked encoding of a sequence (slot k stays on one object;
  :func:`dlp_training.models.tracking.track_sequence`, or :class:`dlp_ros.runtime.Tracker`, which
  runs the same loop on the bundle's graphs), with the re-seed flags that start new identities.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dlp_ros.image_codec import to_model_input
from dlp_training import metrics
from dlp_training.models.dlp import Dlp
from dlp_training.models.tracking import track_sequence

Arrays = dict[str, np.ndarray]


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...


class DlpSource(Protocol):
    """A DLP to evaluate (module docstring)."""

    image_size: int  # S
    n_particles: int  # K
    description: dict[str, Any]  # what is evaluated: the run and checkpoint, or the bundle

    def encode(self, frames: np.ndarray, batch: int, bar: Progress,
               keep: dict[int, Any] | None = None) -> Arrays:  # fmt: skip
        """(T, S, S, 3) uint8 -> mu, logvar (T, K, 2), presence (T, K) and, when ``keep`` is
        given, psnr, ssim (T,), with the (S, S, 3) uint8 reconstructions of the frames ``keep``
        names stored into it."""
        ...

    def track(self, frames: np.ndarray, batch: int) -> Arrays:
        """(T, S, S, 3) uint8 -> tracked mu, logvar, scale (T, K, 2), presence (T, K),
        reseeded (T, K) bool."""
        ...


def _quality(rec: torch.Tensor, x: torch.Tensor, keep: dict[int, Any], start: int,
             out: dict[str, list[np.ndarray]]) -> None:  # fmt: skip
    """PSNR and SSIM of reconstructions (B, 3, S, S) in [0, 1] against x; kept frames stored."""
    out['psnr'].append(metrics.psnr(rec, x).numpy())
    out['ssim'].append(metrics.ssim(rec, x).numpy())
    for t in keep.keys() & range(start, start + len(x)):
        keep[t] = rec[t - start].permute(1, 2, 0).mul(255).round().byte().numpy()


class TorchDlpSource:
    """A ``train-dlp`` run's model in PyTorch (CPU, eval mode)."""

    def __init__(self, model: Dlp, description: dict[str, Any]) -> None:
        self.model = model.eval()
        self.image_size = model.config.S
        self.n_particles = model.config.K
        self.description = description

    def encode(self, frames: np.ndarray, batch: int, bar: Progress,
               keep: dict[int, Any] | None = None) -> Arrays:  # fmt: skip
        out: dict[str, list[np.ndarray]] = defaultdict(list)
        with torch.inference_mode():
            for start in range(0, len(frames), batch):
                x = torch.from_numpy(to_model_input(np.asarray(frames[start : start + batch])))
                p = self.model.encode(x, deterministic=True)
                out['mu'].append(p.mu.numpy())
                out['logvar'].append(p.logvar.numpy())
                out['presence'].append(p.transparency[..., 0].numpy())
                if keep is not None:
                    _quality(self.model.decode(p).clamp(0, 1), x, keep, start, out)
                bar.update(len(x))
        return {k: np.concatenate(v) for k, v in out.items()}

    def track(self, frames: np.ndarray, batch: int) -> Arrays:
        x = torch.from_numpy(to_model_input(np.asarray(frames)))  # (T, 3, S, S)
        with torch.inference_mode():
            track = track_sequence(self.model, x, batch)
        p = track.particles
        return {
            'mu': p.mu.numpy(),
            'logvar': p.logvar.numpy(),
            'scale': p.scale.numpy(),
            'presence': p.transparency[..., 0].numpy(),
            'reseeded': track.reseeded.numpy(),
        }


class BundleDlpSource:
    """An exported bundle's encoder, background encoder and decoder through
    :class:`dlp_ros.runtime.DlpRuntime` (onnxruntime)."""

    def __init__(self, bundle: Path, providers: str = 'cpu', threads: int = 0) -> None:
        from dlp_ros.runtime import DlpRuntime

        self.rt = DlpRuntime.load(bundle, providers=providers, threads=threads)
        card = self.rt.card
        self.image_size = int(card.image.size)
        self.n_particles = int(card.particles.K)
        dlp = (card.training or {}).get('dlp') or {}
        self.description = {'bundle': str(Path(bundle).resolve()), 'provider': self.rt.provider,
                            'run': dlp.get('run'), 'checkpoint': dlp.get('checkpoint'),
                            'step': int(dlp.get('step') or 0)}  # fmt: skip

    def encode(self, frames: np.ndarray, batch: int, bar: Progress,
               keep: dict[int, Any] | None = None) -> Arrays:  # fmt: skip
        from dlp_ros.particles import ParticleFrame

        out: dict[str, list[np.ndarray]] = defaultdict(list)
        k = self.n_particles
        for start in range(0, len(frames), batch):
            x = np.ascontiguousarray(to_model_input(np.asarray(frames[start : start + batch])))
            anchors = np.zeros((len(x), k, 2), np.float32)  # the tracked half is not used
            both = self.rt.encode_pair(x, anchors)  # (B, 2K, ...): [K:] are the detections
            det = {n: np.ascontiguousarray(v[:, k:]) for n, v in both.items()}
            out['mu'].append(det['mu'])
            out['logvar'].append(det['logvar'])
            out['presence'].append(det['transparency'][..., 0])
            if keep is not None:
                bg = self.rt.background(x, det['mu'], det['transparency'])  # (B, Fb)
                parts = [
                    ParticleFrame(**{n: v[i] for n, v in det.items()}, bg_features=bg[i])
                    for i in range(len(x))
                ]
                rec = torch.from_numpy(np.clip(self.rt.decode(parts), 0.0, 1.0))
                _quality(rec, torch.from_numpy(x), keep, start, out)
            bar.update(len(x))
        return {n: np.concatenate(v) for n, v in out.items()}

    def track(self, frames: np.ndarray, batch: int) -> Arrays:
        tracker = self.rt.tracker()
        seen = [tracker.update(self.rt.preprocess(np.asarray(f))) for f in frames]
        return {'mu': np.stack([f.mu for f in seen]), 'logvar': np.stack([f.logvar for f in seen]),
                'scale': np.stack([f.scale for f in seen]),
                'presence': np.stack([f.transparency[:, 0] for f in seen]),
                'reseeded': np.stack([f.reseeded for f in seen])}  # fmt: skip
