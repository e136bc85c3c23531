"""``python -m dlp_training manipulate``: move and remove particles of an encoded image, decode."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dlp_ros.errors import ConfigError
from dlp_ros.offline.manipulate import (
    MIN_PANEL_SIDE,
    Move,
    edit_particles,
    manipulate,
    parse_move,
    side_by_side,
)
from dlp_ros.runtime import DlpRuntime
from dlp_training.__main__ import main as train_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bundle (dlp_training/configs/*_tiny.yaml sizes, S = 64, no actions)."""
    torch = pytest.importorskip('torch')
    from dlp_training.export import export_random_bundle
    from dlp_training.models.dlp import DlpConfig
    from dlp_training.models.dynamics import DynamicsConfig

    torch.set_num_threads(1)
    dlp = yaml.safe_load((ROOT / 'dlp_training/configs/dlp_tiny.yaml').read_text())['model']
    dyn = yaml.safe_load((ROOT / 'dlp_training/configs/dynamics_tiny.yaml').read_text())['model']
    path = tmp_path_factory.mktemp('manipulate') / 'bundle'
    dlp_cfg = DlpConfig.from_dict(dlp)
    export_random_bundle(dlp_cfg, DynamicsConfig.from_dlp(dlp_cfg, **dyn), path, seed=3)
    return path


@pytest.fixture(scope='module')
def runtime(bundle: Path) -> DlpRuntime:
    return DlpRuntime.load(bundle, providers='cpu', threads=1)


def discs(height: int = 48, width: int = 80) -> np.ndarray:
    """(H, W, 3) uint8: two coloured discs on a dark background (not square: tests the axes)."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    rgb = np.full((height, width, 3), 25, np.uint8)
    rgb[(xx - 20) ** 2 + (yy - 15) ** 2 <= 64] = (230, 40, 40)
    rgb[(xx - 55) ** 2 + (yy - 30) ** 2 <= 49] = (40, 220, 60)
    return rgb


@pytest.mark.parametrize(
    ('text', 'move'),
    [
        ('2:10,-5', Move(2, 10.0, -5.0)),
        (' 0 : +1.5 , 3 ', Move(0, 1.5, 3.0)),
        ('7:0,0', Move(7, 0, 0)),
    ],
)
def test_parse_move(text: str, move: Move) -> None:
    assert parse_move(text) == move


@pytest.mark.parametrize('text', ['2:10', '2;10,5', 'a:1,2', '-1:1,2', '2:1,2,3', ''])
def test_parse_move_refuses_bad_text_naming_the_format(text: str) -> None:
    with pytest.raises(ConfigError, match=r'expected ID:DX,DY'):
        parse_move(text)


def test_edit_moves_in_input_pixels_and_removes(runtime: DlpRuntime) -> None:
    """A move of (dx, dy) px shifts the particle's pixel position by exactly that, in the
    input's own width and height; a removed particle has transparency 0; the rest is unchanged,
    and the original frame is not modified."""
    rgb = discs()
    height, width = rgb.shape[:2]
    frame = runtime.tracker().update(runtime.preprocess(rgb))
    before = frame.pixels(width, height).copy()
    edited = edit_particles(frame, [Move(1, 8.0, -4.0)], [2], width, height)
    after = edited.pixels(width, height)
    np.testing.assert_allclose(after[1] - before[1], [8.0, -4.0], atol=1e-3)
    assert edited.transparency[2, 0] == 0.0
    others = [k for k in range(frame.n_particles) if k not in (1, 2)]
    np.testing.assert_array_equal(after[others], before[others])
    np.testing.assert_array_equal(edited.features, frame.features)
    np.testing.assert_array_equal(frame.pixels(width, height), before)  # untouched


@pytest.mark.parametrize(
    ('moves', 'removes', 'message'),
    [
        ([Move(4, 1, 1)], [], r'\[4\] out of range: the model has K = 4 particles \(ids 0..3\)'),
        ([], [9], r'\[9\] out of range'),
        ([Move(1, 1, 1), Move(1, 2, 2)], [], r'\[1\] moved more than once'),
        ([Move(1, 1, 1)], [1], r'\[1\] both moved and removed'),
    ],
)
def test_edit_refuses_bad_ids(
    runtime: DlpRuntime, moves: list, removes: list, message: str
) -> None:
    frame = runtime.tracker().update(runtime.preprocess(discs()))
    with pytest.raises(ConfigError, match=message):
        edit_particles(frame, moves, removes, 80, 48)


def test_no_edit_renders_the_reconstruction_and_a_removal_changes_it(runtime: DlpRuntime) -> None:
    rgb = discs()
    same = manipulate(runtime, rgb, [], [])
    np.testing.assert_array_equal(same.edited, same.reconstruction)
    on = int(np.argmax(same.particles.transparency[:, 0]))
    removed = manipulate(runtime, rgb, [], [on])
    assert removed.edited.shape == (64, 64, 3)
    assert np.any(removed.edited != removed.reconstruction)


def test_side_by_side_layout(runtime: DlpRuntime) -> None:
    """Three titled panels of the input's aspect ratio, enlarged to >= MIN_PANEL_SIDE; the first
    one is the original (nearest-neighbour enlarged)."""
    rgb = discs()
    moves = [Move(0, 5, 5)]
    picture = side_by_side(manipulate(runtime, rgb, moves, [1]), moves, [1])
    zoom = -(-MIN_PANEL_SIDE // 48)  # ceil: the shorter side (48) reaches MIN_PANEL_SIDE
    title = picture.shape[0] - 48 * zoom
    assert title > 0
    assert picture.shape == (title + 48 * zoom, 3 * 80 * zoom + 4, 3)
    first = picture[title:, : 80 * zoom]
    np.testing.assert_array_equal(first[::zoom, ::zoom], rgb)


def test_cli_writes_the_png_and_reports_bad_input(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / 'in.png'
    cv2.imwrite(str(image), cv2.cvtColor(discs(), cv2.COLOR_RGB2BGR))
    out = tmp_path / 'sub' / 'edit.png'
    args = ['manipulate', '--bundle', str(bundle), '--image', str(image), '--out', str(out)]
    assert train_main([*args, '--move', '0:6,-3', '--move', '1:-4,2', '--remove', '2']) == 0
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] == 3 * 80 * 6 + 4
    assert '2 moved, 1 removed' in capsys.readouterr().out

    assert train_main([*args, '--move', '0:6']) == 2
    assert 'expected ID:DX,DY' in capsys.readouterr().err
    assert train_main([*args, '--remove', '17']) == 2
    assert 'particle id(s) [17] out of range' in capsys.readouterr().err
    bad = [*args[:3], '--image', str(tmp_path / 'missing.png'), '--out', str(out)]
    assert train_main(bad) == 2
    assert 'missing.png: no such file' in capsys.readouterr().err
    (tmp_path / 'text.png').write_text('not an image')
    assert train_main([*args[:3], '--image', str(tmp_path / 'text.png'), '--out', str(out)]) == 2
    assert 'cannot be decoded as an image' in capsys.readouterr().err
