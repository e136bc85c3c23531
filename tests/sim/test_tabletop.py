"""TabletopScene: frames, ground truth against the segmentation render, determinism, pushing."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from dlp_ros.sim.scene import ObjectState, SceneFrame

mujoco = pytest.importorskip('mujoco')

from dlp_ros.sim.tabletop import TABLE_RGB, TabletopScene  # noqa: E402

log = logging.getLogger(__name__)

MARGIN_PX = 2.0  # extra clearance between projected discs before an object counts as unoccluded


@pytest.fixture
def scene64() -> Iterator[TabletopScene]:
    scene = TabletopScene(size=64)
    yield scene
    scene.close()


def episode(scene: TabletopScene, seed: int, n: int) -> list[SceneFrame]:
    scene.reset(np.random.default_rng(seed))
    return [scene.step() for _ in range(n)]


def unoccluded(objects: list[ObjectState], size: int) -> list[ObjectState]:
    """Objects whose projected disc is inside the image and clear of every other disc."""
    out = []
    for a in objects:
        r = a.radius + MARGIN_PX
        if not (r <= a.x <= size - r and r <= a.y <= size - r):
            continue
        if all(
            np.hypot(a.x - b.x, a.y - b.y) > r + b.radius + MARGIN_PX
            for b in objects
            if b.id != a.id
        ):
            out.append(a)
    return out


@pytest.mark.parametrize('size', [64, 128])
def test_projection_matches_segmentation(size: int) -> None:
    scene = TabletopScene(size=size)
    errors = []
    try:
        for seed in (1, 2, 3):
            scene.reset(np.random.default_rng(seed))
            for t in range(30):
                frame = scene.step()
                if t % 3:
                    continue
                masks = scene.segmentation_centroids()
                assert set(masks) == {o.id for o in frame.objects}
                for obj in unoccluded(frame.objects, size):
                    mx, my, count = masks[obj.id]
                    # A clear object shows at least a third of its apparent disc.
                    assert count >= np.pi * obj.radius**2 / 3, (obj, count)
                    errors.append(np.hypot(mx - obj.x, my - obj.y))
    finally:
        scene.close()
    errors_px = np.array(errors)  # (M,)
    log.info(
        'size %d: %d checks, max error %.3f px, mean %.3f px',
        size,
        len(errors_px),
        errors_px.max(),
        errors_px.mean(),
    )
    assert len(errors_px) >= 40  # the comparison must not pass vacuously
    assert errors_px.max() < 1.0, f'max projection-vs-mask error {errors_px.max():.3f} px'
    # A constant offset (e.g. a half-pixel convention slip) must not hide below the tolerance.
    assert errors_px.mean() < 0.35, f'mean projection-vs-mask error {errors_px.mean():.3f} px'


def test_frames_and_ground_truth(scene64: TabletopScene) -> None:
    for seed in range(4):
        frames = episode(scene64, seed, 3)
        for frame in frames:
            assert frame.rgb.shape == (64, 64, 3)
            assert frame.rgb.dtype == np.uint8
            assert frame.action is not None
            assert frame.action.shape == (2,)
            assert frame.action.dtype == np.float32
            assert 4 <= len(frame.objects) <= 6  # pusher + 3..5 objects
            assert [o.id for o in frame.objects] == list(range(len(frame.objects)))
            assert frame.objects[0].name == 'pusher'
            assert all(o.visible for o in frame.objects)
            assert all(2.0 < o.radius < 10.0 for o in frame.objects)
        names = [o.name for o in frames[0].objects[1:]]
        assert all(n.split('_')[0] in ('box', 'sphere', 'cylinder') for n in names)
        assert all(n.endswith(f'_{i}') for i, n in enumerate(names, start=1))
    assert scene64.name == 'tabletop'
    assert scene64.action_names == ('vx', 'vy')


def test_colours_differ_from_table(scene64: TabletopScene) -> None:
    frame = episode(scene64, 5, 1)[0]
    ids = scene64.segmentation()  # (S, S)
    rgb = frame.rgb.astype(np.float64)  # (S, S, 3)
    table = np.array(TABLE_RGB) * 255
    background = rgb[ids == -1].mean(axis=0)  # (3,)
    assert np.abs(background - table).max() < 80  # lit table, roughly its own colour
    for obj in frame.objects:
        pixels = rgb[ids == obj.id]  # (P, 3)
        assert len(pixels) > 10
        distance = np.linalg.norm(np.median(pixels, axis=0) - background)
        assert distance > 60, (obj.name, distance)


def test_deterministic() -> None:
    a, b = TabletopScene(size=64), TabletopScene(size=64)
    try:
        fa, fb = episode(a, 7, 20), episode(b, 7, 20)
        fc = episode(a, 8, 20)
        fd = episode(a, 7, 20)  # the same episode again, after another one
    finally:
        a.close()
        b.close()
    for x, y in [*zip(fa, fb, strict=True), *zip(fa, fd, strict=True)]:
        np.testing.assert_array_equal(x.rgb, y.rgb)
        np.testing.assert_array_equal(x.action, y.action)
        assert x.objects == y.objects
    assert any(not np.array_equal(x.rgb, z.rgb) for x, z in zip(fa, fc, strict=True))


def test_pusher_moves_objects(scene64: TabletopScene) -> None:
    for seed in range(3):
        frames = episode(scene64, seed, 50)
        xy = np.array([[(o.x, o.y) for o in f.objects] for f in frames])  # (T, N, 2)
        moved = np.hypot(*(xy[-1] - xy[0]).T)  # (N,) px
        assert moved[0] > 5.0, 'the pusher did not move'
        assert moved[1:].max() > 3.0, f'seed {seed}: no object was pushed ({moved})'
        # Objects stay on the table: inside the image in every frame.
        assert np.all((xy > 0) & (xy < 64))
        speeds = np.array([np.hypot(*f.action) for f in frames])  # (T,)
        assert speeds.max() <= 0.3 + 1e-6


def test_command_noise_explores_within_the_limits() -> None:
    """command_noise: commands jitter around the script, within the speed limit and the
    workspace, reproducibly; 0 is the script alone."""
    plain, noisy = TabletopScene(size=64), TabletopScene(size=64, command_noise=0.15)
    again = TabletopScene(size=64, command_noise=0.15)
    try:
        fp, fn, fa = episode(plain, 3, 40), episode(noisy, 3, 40), episode(again, 3, 40)
    finally:
        for scene in (plain, noisy, again):
            scene.close()
    a_plain = np.array([f.action for f in fp])  # (T, 2)
    a_noisy = np.array([f.action for f in fn])
    assert np.array_equal(a_noisy, np.array([f.action for f in fa]))  # seeded
    jerk = [float(np.abs(np.diff(a, axis=0)).mean()) for a in (a_plain, a_noisy)]  # m/s
    assert jerk[1] > 2 * jerk[0], jerk  # jittered from frame to frame, not smooth
    assert np.hypot(*a_noisy.T).max() <= 0.3 + 1e-6
    pusher = np.array([(f.objects[0].x, f.objects[0].y) for f in fn])  # (T, 2) px
    assert np.all((pusher > 0) & (pusher < 64))
    with pytest.raises(ValueError, match='command_noise'):
        TabletopScene(command_noise=-0.1)
