"""DlpRuntime and Tracker: provider selection, tracking parity with training, prediction
(actions, history padding), rendering, the overlay, and no torch at run time."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dlp_ros import providers
from dlp_ros.errors import ConfigError, ImageError
from dlp_ros.overlay import draw_overlay
from dlp_ros.particles import FIELDS, ParticleFrame, stack
from dlp_ros.runtime import DlpRuntime
from dlp_training.models.tracking import track_sequence

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def rt64(bundles: dict[int, Any]) -> DlpRuntime:
    return DlpRuntime.load(bundles[64].path, providers='cpu', threads=1)


def _track(rt: DlpRuntime, frames: np.ndarray) -> list[ParticleFrame]:
    tracker = rt.tracker()
    return [tracker.update(rt.preprocess(f)) for f in frames]


# ----------------------------------------------------------------------------- providers


def test_auto_falls_back_to_cpu_with_one_log_line(
    bundles: dict[int, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime-gpu lists CUDA even without a GPU: 'auto' must not believe it."""
    listed = [providers.TENSORRT, providers.CUDA, providers.CPU]
    monkeypatch.setattr(providers.ort, 'get_available_providers', lambda: listed)
    monkeypatch.setattr(providers, 'gpu_device_present', lambda: False)
    with caplog.at_level(logging.DEBUG, logger='dlp_ros'):
        rt = DlpRuntime.load(bundles[64].path, providers='auto', threads=1)
    assert rt.provider == 'CPUExecutionProvider'
    assert all(s.get_providers() == ['CPUExecutionProvider'] for s in rt.sessions.values())
    lines = [r for r in caplog.records if r.name.startswith('dlp_ros')]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert 'CPUExecutionProvider' in lines[0].getMessage()
    assert 'no NVIDIA GPU device' in lines[0].getMessage()


def test_probe_failure_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, 'gpu_device_present', lambda: True)
    monkeypatch.setattr(providers, 'probe', lambda name: f'{name} broke')
    monkeypatch.setattr(
        providers.ort, 'get_available_providers', lambda: [providers.CUDA, providers.CPU]
    )
    args, chosen, why = providers.select_providers('auto')
    assert (args, chosen) == ([providers.CPU], providers.CPU)
    assert 'TensorrtExecutionProvider broke' in why and 'CUDAExecutionProvider broke' in why
    with pytest.raises(ConfigError, match="providers='cuda' cannot be used: CUDA"):
        providers.select_providers('cuda')


def test_plain_onnxruntime_and_bad_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers.ort, 'get_available_providers', lambda: [providers.CPU])
    _, chosen, why = providers.select_providers('auto')
    assert chosen == providers.CPU and 'install onnxruntime-gpu' in why
    with pytest.raises(ConfigError, match='tensorrt'):
        providers.select_providers('tensorrt')
    with pytest.raises(ConfigError, match="one of \\['auto', 'cpu', 'cuda', 'tensorrt'\\]"):
        providers.select_providers('gpu')


def test_probe_of_an_unlisted_provider_says_so() -> None:
    assert 'not in this onnxruntime build' in providers.probe('NoSuchExecutionProvider')


def test_probe_runs_in_a_child_process_and_leaves_our_stderr_alone(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert providers.probe('CPUExecutionProvider') is None  # the probe graph ran, in a child
    assert capfd.readouterr() == ('', '')


def test_a_probe_process_that_fails_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers.sys, 'executable', '/bin/false')
    assert 'the probe process failed' in providers.probe('CPUExecutionProvider')


# ----------------------------------------------------------------------------- tracking


def test_tracker_equals_track_sequence(
    rt64: DlpRuntime, bundles: dict[int, Any], blob_frames: Callable
) -> None:
    torch.set_num_threads(1)
    frames = blob_frames(64, t_len=10, seed=4)
    got = stack(_track(rt64, frames), reseeded=True)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    want = track_sequence(bundles[64].dlp, x, batch=3)
    assert np.array_equal(got['reseeded'], want.reseeded.numpy())
    assert got['reseeded'][0].all()
    for name in FIELDS:
        np.testing.assert_allclose(got[name], getattr(want.particles, name).numpy(), atol=1e-4,
                                   err_msg=name)  # fmt: skip


def test_tracker_history_and_reset(rt64: DlpRuntime, blob_frames: Callable) -> None:
    frames = blob_frames(64, t_len=5, seed=6)
    tracker = rt64.tracker()
    seen = [tracker.update(rt64.preprocess(f)) for f in frames]
    h = rt64.card.dynamics.history
    assert len(tracker.history) == h and tracker.history[-1] is seen[-1]
    assert tracker.history == seen[-h:]  # oldest first
    tracker.reset()
    assert tracker.history == []
    again = tracker.update(rt64.preprocess(frames[0]))
    assert again.reseeded.all()  # a new episode starts new identities
    np.testing.assert_array_equal(again.mu, seen[0].mu)
    with pytest.raises(ImageError, match=r'\(1, 3, 64, 64\)'):
        tracker.update(np.zeros((1, 3, 32, 32), np.float32))


def test_preprocess_accepts_any_size_and_refuses_bad_arrays(rt64: DlpRuntime) -> None:
    x = rt64.preprocess(np.full((480, 640, 3), 255, np.uint8))
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.all(x == 1.0)
    for bad in (np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32), [[1, 2, 3]]):
        with pytest.raises(ImageError):
            rt64.preprocess(bad)


# ----------------------------------------------------------------------------- prediction


def test_predict_with_and_without_actions(
    bundles: dict[int, Any], blob_frames: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    rt64 = DlpRuntime.load(bundles[64].path, providers='cpu', threads=1)  # not warned yet
    history = _track(rt64, blob_frames(64, t_len=3, seed=7))
    h, a = rt64.card.dynamics.history, rt64.card.dynamics.action_dim
    assert a == 2
    with caplog.at_level(logging.WARNING, logger='dlp_ros'):
        zero = rt64.predict(history, 4)
        rt64.predict(history, 4)
    assert sum('zero actions' in r.getMessage() for r in caplog.records) == 1  # logged once
    explicit_zero = rt64.predict(history, 4, np.zeros((h + 3, a), np.float32))
    pushed = rt64.predict(history, 4, np.ones((h + 3, a), np.float32))
    assert len(zero) == 4 and all(not f.reseeded.any() for f in zero)
    np.testing.assert_array_equal(stack(zero)['mu'], stack(explicit_zero)['mu'])
    assert np.abs(stack(pushed)['mu'] - stack(zero)['mu']).max() > 1e-4  # actions matter
    with pytest.raises(ConfigError, match=r'\(H \+ horizon - 1, A\) = \(4, 2\)'):
        rt64.predict(history, 3, np.zeros((3, a), np.float32))
    with pytest.raises(ValueError, match='horizon'):
        rt64.predict(history, 0)
    with pytest.raises(ValueError, match='at least one'):
        rt64.predict([], 3)


def test_predict_refuses_actions_for_a_model_without(
    bundles: dict[int, Any], blob_frames: Callable
) -> None:
    rt = DlpRuntime.load(bundles[128].path, providers='cpu', threads=1)
    history = _track(rt, blob_frames(128, t_len=2))
    assert len(rt.predict(history, 2)) == 2
    with pytest.raises(ConfigError, match='action_dim = 0'):
        rt.predict(history, 2, np.zeros((3, 1), np.float32))


def test_predict_batch_equals_separate_single_rollouts(
    rt64: DlpRuntime, blob_frames: Callable
) -> None:
    """One batched rollout of B candidates == B single rollouts with their commands; the
    history's commands (past_actions) are shared; B = 1 of the batch is predict itself."""
    history = _track(rt64, blob_frames(64, t_len=3, seed=9))
    h, a, n, b = rt64.card.dynamics.history, rt64.card.dynamics.action_dim, 5, 6
    rng = np.random.default_rng(3)
    past = rng.uniform(-1, 1, (h - 1, a)).astype(np.float32)
    future = rng.uniform(-1, 1, (b, n, a)).astype(np.float32)
    batch = rt64.predict_batch(history, n, future, past)
    assert set(batch) == set(FIELDS)
    k, f = rt64.card.particles.K, rt64.card.particles.F
    assert batch['mu'].shape == (b, n, k, 2) and batch['features'].shape == (b, n, k, f)
    assert batch['bg_features'].shape == (b, n, rt64.card.particles.Fb)
    for i in range(b):
        single = stack(rt64.predict(history, n, np.concatenate([past, future[i]])))
        for name in FIELDS:
            np.testing.assert_allclose(batch[name][i], single[name], rtol=1e-5, atol=1e-5,
                                       err_msg=f'candidate {i} {name}')  # fmt: skip
    assert np.abs(batch['mu'][0] - batch['mu'][1]).max() > 1e-4, 'candidates do not differ'
    one = rt64.predict_batch(history, n, future[:1], past)
    want = stack(rt64.predict(history, n, np.concatenate([past, future[0]])))
    for name in FIELDS:
        np.testing.assert_array_equal(one[name][0], want[name])
    zeros = rt64.predict_batch(history, n, np.zeros((2, n, a), np.float32))  # past: zeros
    np.testing.assert_array_equal(zeros['mu'][0], stack(rt64.predict(history, n))['mu'])
    with pytest.raises(ConfigError, match=r'\(B, horizon, A\) = \(B, 5, 2\)'):
        rt64.predict_batch(history, n, future[0], past)
    with pytest.raises(ConfigError, match=r'past_actions must be \(H - 1, A\)'):
        rt64.predict_batch(history, n, future, np.zeros((h, a), np.float32))
    with pytest.raises(ConfigError, match='B >= 1'):
        rt64.predict_batch(history, n, np.zeros((0, n, a), np.float32))


def test_predict_batch_of_a_model_without_actions(
    bundles: dict[int, Any], blob_frames: Callable
) -> None:
    rt = DlpRuntime.load(bundles[128].path, providers='cpu', threads=1)
    history = _track(rt, blob_frames(128, t_len=2))
    batch = rt.predict_batch(history, 3, np.zeros((4, 3, 0), np.float32))
    assert batch['mu'].shape == (4, 3, rt.card.particles.K, 2)
    single = stack(rt.predict(history, 3))
    for i in range(4):
        np.testing.assert_allclose(batch['mu'][i], single['mu'], rtol=1e-5, atol=1e-5)
    assert rt.predict_batch(history, 3)['mu'].shape[0] == 1
    with pytest.raises(ConfigError, match='action_dim = 0'):
        rt.predict_batch(history, 3, np.zeros((4, 3, 1), np.float32))


def test_short_history_is_padded_with_its_first_frame(
    rt64: DlpRuntime, blob_frames: Callable
) -> None:
    frames = _track(rt64, blob_frames(64, t_len=2, seed=8))
    h = rt64.card.dynamics.history
    assert h == 2
    one = rt64.predict(frames[:1], 3, np.zeros((h + 2, 2), np.float32))
    padded = rt64.predict([frames[0]] * h, 3, np.zeros((h + 2, 2), np.float32))
    longer = rt64.predict([frames[1], *frames], 3, np.zeros((h + 2, 2), np.float32))
    last_two = rt64.predict(frames, 3, np.zeros((h + 2, 2), np.float32))
    for name in FIELDS:
        np.testing.assert_array_equal(stack(one)[name], stack(padded)[name])
        np.testing.assert_array_equal(stack(longer)[name], stack(last_two)[name])


def test_render_and_recon_mse(rt64: DlpRuntime, blob_frames: Callable) -> None:
    frames = blob_frames(64, t_len=2, seed=9)
    seen = _track(rt64, frames)
    images = rt64.render(seen)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert rt64.render([seen[0]])[0].tolist() == images[0].tolist()
    x = rt64.preprocess(frames[0])
    mse = rt64.recon_mse(x, seen[0])
    assert mse == pytest.approx(np.mean((images[0] / 255.0 - frames[0] / 255.0) ** 2), abs=2e-3)


# ----------------------------------------------------------------------------- overlay


def test_overlay_draws_at_the_input_resolution(rt64: DlpRuntime, blob_frames: Callable) -> None:
    small = blob_frames(64, t_len=1, seed=10)[0]
    big = np.ascontiguousarray(np.repeat(np.repeat(small, 5, 0), 10, 1))  # (320, 640, 3)
    frame = _track(rt64, big[None])[0]
    frame.transparency[:] = 1.0  # all on: something must be drawn
    before = big.copy()
    out = draw_overlay(big, frame)
    assert out.shape == big.shape and out.dtype == np.uint8
    assert np.array_equal(big, before)  # the input is not drawn on
    assert (out != big).any()
    u, v = frame.pixels(640, 320)[0].round().astype(int)
    if 0 <= u < 640 and 0 <= v < 320:
        assert (out[v, u] != big[v, u]).any()  # a dot at particle 0
    frame.suppressed[:] = True
    assert np.array_equal(draw_overlay(big, frame), big)  # nor those published as off (NMS)
    frame.suppressed[:] = False
    frame.transparency[:] = 0.0
    assert np.array_equal(draw_overlay(big, frame), big)  # off particles are not drawn
    with pytest.raises(ImageError):
        draw_overlay(big[..., 0], frame)


# ----------------------------------------------------------------------------- no torch


def test_runtime_runs_without_importing_torch(bundles: dict[int, Any]) -> None:
    """A fresh interpreter loads a bundle, tracks, predicts and draws with no torch/training."""
    code = f"""
import json, sys
import numpy as np
from dlp_ros.runtime import DlpRuntime
from dlp_ros.overlay import draw_overlay
rt = DlpRuntime.load({str(bundles[64].path)!r}, providers='auto', threads=1)
tracker = rt.tracker()
for i in range(3):
    frame = tracker.update(rt.preprocess(np.full((48, 80, 3), 40 * i, np.uint8)))
rt.render(rt.predict(tracker.history, 2))
draw_overlay(np.zeros((48, 80, 3), np.uint8), frame)
print(json.dumps(sorted(m for m in sys.modules
                        if m.split('.')[0] in ('torch', 'dlp_training', 'torch_geometric'))))
"""
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
