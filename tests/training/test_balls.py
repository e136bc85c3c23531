"""The Balls-Interaction scene: the physics of DESIGN §3, ground truth that matches the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_training.data.balls import COLOURS, BallsScene


def _run(seed: int, frames: int, size: int = 64) -> list:
    scene = BallsScene(size=size)
    scene.reset(np.random.default_rng(seed))
    return [scene.step() for _ in range(frames)]


def test_setting_matches_balls_interaction() -> None:
    frames = _run(0, 100)
    assert len(frames[0].objects) == 3
    assert all(o.radius == 8.0 for o in frames[0].objects)
    assert frames[0].rgb.shape == (64, 64, 3) and frames[0].rgb.dtype == np.uint8
    xy = np.array([[(o.x, o.y) for o in f.objects] for f in frames])  # (T, 3, 2)
    # first frame non-overlapping, balls always inside the canvas
    d0 = np.linalg.norm(xy[0, :, None] - xy[0, None], axis=-1)[np.triu_indices(3, 1)]
    assert (d0 > 16).all()
    assert (xy >= 8 - 1e-6).all() and (xy <= 56 + 1e-6).all()


def test_speed_is_conserved_by_elastic_collisions() -> None:
    scene = BallsScene()
    scene.reset(np.random.default_rng(3))
    for _ in range(200):
        scene.step()
        speeds = np.linalg.norm(scene._vel, axis=1)  # (N,)
        # equal-mass elastic collisions conserve kinetic energy (sum of squared speeds)
        assert np.isclose((speeds**2).sum(), 3 * 3.0**2, rtol=1e-9)


def test_collisions_happen_and_balls_do_not_pass_through() -> None:
    frames = _run(1, 300)
    xy = np.array([[(o.x, o.y) for o in f.objects] for f in frames])
    dist = np.linalg.norm(xy[:, :, None] - xy[:, None], axis=-1)  # (T, 3, 3)
    pair = dist[:, np.triu_indices(3, 1)[0], np.triu_indices(3, 1)[1]]  # (T, 3)
    assert pair.min() > 14.0, 'balls overlap deeply: collisions are missed'
    assert (pair < 17.0).any(), 'no collision in 300 frames'


@pytest.mark.parametrize('size', [64, 128])
def test_ground_truth_is_the_centre_of_the_drawn_ball(size: int) -> None:
    for frame in _run(2, 40, size)[::7]:
        for obj in frame.objects:
            others = [o for o in frame.objects if o is not obj]
            if any(np.hypot(o.x - obj.x, o.y - obj.y) < 2 * obj.radius + 2 for o in others):
                continue  # overlapping balls: the mask centroid is biased
            colour = np.array(COLOURS[obj.name.split('_')[1]])
            ys, xs = np.mgrid[0:size, 0:size] + 0.5
            window = np.hypot(xs - obj.x, ys - obj.y) < obj.radius + 1.5  # only this ball
            weight = window * (frame.rgb.astype(float) @ colour) / float(colour @ colour)  # (S, S)
            cx, cy = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
            assert abs(cx - obj.x) < 0.25 and abs(cy - obj.y) < 0.25, (obj, cx, cy)
            area = weight.sum()
            assert abs(area - np.pi * obj.radius**2) / (np.pi * obj.radius**2) < 0.05


def test_deterministic_per_seed() -> None:
    a, b, c = _run(5, 20), _run(5, 20), _run(6, 20)
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a, c, strict=True))
