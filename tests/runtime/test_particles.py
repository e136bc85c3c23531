"""ParticleFrame: pixel views, message-shaped fields, stacking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlp_ros.particles import FIELDS, ParticleFrame, stack


def _frame() -> ParticleFrame:
    k = 3
    return ParticleFrame(
        mu=np.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 0.5]]),
        logvar=np.full((k, 2), 2 * math.log(0.1)),  # std 0.1 normalised = 0.05 of the side
        scale=np.array([[0.0, 0.0], [0.0, 0.0], [math.log(0.25 / 0.75), 0.0]]),
        depth=np.arange(k, dtype=np.float32)[:, None],
        transparency=np.array([[1.0], [0.2], [0.9]]),
        features=np.arange(2 * k, dtype=np.float32).reshape(k, 2),
        bg_features=np.ones(4),
    )


def test_pixel_views() -> None:
    f = _frame()
    assert f.mu.dtype == np.float32 and not f.reseeded.any() and f.n_particles == 3
    np.testing.assert_allclose(f.pixels(640, 480), [[0, 0], [320, 240], [640, 360]])
    np.testing.assert_allclose(f.pixel_std(640, 480), [[32, 24]] * 3, rtol=1e-5)
    side = f.scale_px(640, 480)  # sigmoid(0) = 0.5 of each side; the third is 0.25 x 0.5
    np.testing.assert_allclose(side, [0.5 * math.sqrt(640 * 480)] * 2 + [
        math.sqrt(0.25 * 640 * 0.5 * 480)], rtol=1e-5)  # fmt: skip


def test_message_fields() -> None:
    m = _frame().message_fields(640, 480)
    assert (m['image_width'], m['image_height']) == (640, 480)
    assert [p['id'] for p in m['particles']] == [0, 1, 2]
    p = m['particles'][1]
    assert set(p) == {'id', 'u', 'v', 'u_std', 'v_std', 'scale', 'depth', 'transparency', 'on',
                      'features'}  # fmt: skip
    assert (p['u'], p['v'], p['transparency']) == (320.0, 240.0, pytest.approx(0.2))
    transparency = [q['transparency'] for q in m['particles']]
    assert [q['on'] for q in m['particles']] == [t > 0.5 for t in transparency]
    assert [type(q['on']) for q in m['particles']] == [bool] * 3
    lower = _frame().message_fields(640, 480, on_threshold=0.1)['particles']
    assert [q['on'] for q in lower] == [t > 0.1 for t in transparency]
    assert all(type(p[k]) is float for k in ('u', 'v', 'u_std', 'v_std', 'scale', 'depth'))
    assert p['features'].dtype == np.float32 and p['features'].tolist() == [2.0, 3.0]
    assert m['background_features'].dtype == np.float32 and m['background_features'].shape == (4,)


def test_stack_and_back() -> None:
    frames = [_frame(), _frame()]
    frames[1].reseeded[:] = True
    s = stack(frames)
    assert (
        set(s) == set(FIELDS) and s['mu'].shape == (2, 3, 2) and s['bg_features'].shape == (2, 4)
    )
    s = stack(frames, reseeded=True)
    assert s['reseeded'].tolist() == [[False] * 3, [True] * 3]
    again = ParticleFrame.from_arrays(s, 1)
    assert again.reseeded.all() and np.array_equal(again.features, frames[1].features)
    with pytest.raises(ValueError, match='at least one'):
        stack([])


def test_shapes_are_checked() -> None:
    arrays = _frame().arrays()
    arrays['depth'] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r'ParticleFrame.depth must be \(3, 1\)'):
        ParticleFrame(**arrays)
