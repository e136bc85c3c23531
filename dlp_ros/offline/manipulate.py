"""``manipulate``: edit a frame through its particles (torch-free, with the runtime).

```
python -m dlp_training manipulate --bundle DIR --image IN.png --move 2:10,-5 [--move ...]
    [--remove 3 ...] --out OUT.png
```

The image is encoded into particles (the first frame of a tracker: every slot takes a detection),
particle ``ID`` is moved by ``DX, DY`` pixels of the input image (x right, y down) or removed
(transparency 0), and both the unedited and the edited particles are decoded. ``--out`` gets one
PNG, side by side: the original | the reconstruction with the particle ids | the edited frame
(moves drawn as arrows, removed particles crossed out), all at the input's aspect ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dlp_ros.bundle_paths import bundle_path
from dlp_ros.errors import ConfigError, DlpError, ImageError
from dlp_ros.input_view import DEFAULT_RESIZE, InputView
from dlp_ros.offline.perception_outputs import DrawnParticles, draw_particles, enlarge, label
from dlp_ros.overlay import colour
from dlp_ros.particles import ParticleFrame
from dlp_ros.pipeline import PerceptionPipeline
from dlp_ros.runtime import DlpRuntime
from dlp_ros.tracking import ON_THRESHOLD

logger = logging.getLogger(__name__)
MOVE_RE = re.compile(r'^\s*(\d+)\s*:\s*([-+]?\d+(?:\.\d*)?)\s*,\s*([-+]?\d+(?:\.\d*)?)\s*$')
MIN_PANEL_SIDE = 256  # px: panels are enlarged (integer zoom) to at least this


@dataclass(frozen=True)
class Move:
    """Particle ``pid`` moved by (dx, dy) pixels of the input image."""

    pid: int
    dx: float
    dy: float


def parse_move(text: str) -> Move:
    """``'ID:DX,DY'`` -> Move.

    Raises:
        ConfigError: not of that form.
    """
    match = MOVE_RE.match(text)
    if not match:
        raise ConfigError(f'--move {text!r}: expected ID:DX,DY in pixels of the input image, '
                          'e.g. 2:10,-5 (particle 2, 10 px right and 5 px up)')  # fmt: skip
    return Move(int(match[1]), float(match[2]), float(match[3]))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--bundle', type=bundle_path, required=True,
        help='model bundle: a directory (python -m dlp_training export) or the name of a '
             'shipped one (tabletop64, balls64)')  # fmt: skip
    add('--image', type=Path, required=True, help='input image (PNG or JPEG, any size)')
    add(
        '--move',
        action='append',
        default=[],
        metavar='ID:DX,DY',
        help='move particle ID by DX,DY pixels of the input image (repeatable)',
    )
    add(
        '--remove',
        type=int,
        nargs='+',
        action='extend',
        default=[],
        metavar='ID',
        help='remove particles (transparency 0)',
    )
    add('--out', type=Path, required=True, help='output PNG: original | reconstruction | edited')
    add('--providers', default='cpu', choices=['auto', 'cpu', 'cuda', 'tensorrt'],
        help='onnxruntime provider (default cpu)')  # fmt: skip


@dataclass
class Manipulation:
    """The frames of one edit: (H, W, 3) input, (S, S, 3) decoded frames, and the particles."""

    original: np.ndarray  # (H, W, 3) uint8 RGB
    reconstruction: np.ndarray  # (S, S, 3) uint8 RGB
    edited: np.ndarray  # (S, S, 3) uint8 RGB
    particles: ParticleFrame
    edited_particles: ParticleFrame
    resize: str = DEFAULT_RESIZE  # how the model saw ``original`` (the card's image.resize)


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB.

    Raises:
        ImageError: missing or not decodable.
    """
    if not path.is_file():
        raise ImageError(f'--image {path}: no such file')
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f'--image {path}: cannot be decoded as an image (PNG or JPEG expected)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def edit_particles(
    frame: ParticleFrame,
    moves: list[Move],
    removes: list[int],
    width: int,
    height: int,
    resize: str = DEFAULT_RESIZE,
) -> ParticleFrame:
    """A copy of ``frame`` with the moves (pixels of a width x height image the model saw
    through ``resize``) and removals.

    Raises:
        ConfigError: an id outside 0..K-1, an id moved twice, or both moved and removed.
    """
    k = frame.n_particles
    ids = [m.pid for m in moves] + list(removes)
    bad = sorted({i for i in ids if not 0 <= i < k})
    if bad:
        raise ConfigError(f'particle id(s) {bad} out of range: the model has K = {k} particles '
                          f'(ids 0..{k - 1})')  # fmt: skip
    moved = [m.pid for m in moves]
    twice = sorted({i for i in moved if moved.count(i) > 1})
    if twice:
        raise ConfigError(f'particle(s) {twice} moved more than once: give one --move per id')
    both = sorted(set(moved) & set(removes))
    if both:
        raise ConfigError(f'particle(s) {both} both moved and removed')
    mu, transparency = frame.mu.copy(), frame.transparency.copy()  # (K, 2), (K, 1)
    span = InputView(width, height, resize).span()  # input pixels per model image side
    for m in moves:
        if transparency[m.pid, 0] <= ON_THRESHOLD:
            logger.warning('particle %d is off (transparency %.2f): moving it shows little',
                           m.pid, transparency[m.pid, 0])  # fmt: skip
        mu[m.pid] += np.array([2.0 * m.dx / span[0], 2.0 * m.dy / span[1]], np.float32)
        if np.any(np.abs(mu[m.pid]) > 1.0):
            logger.warning('particle %d moved outside the image', m.pid)
    transparency[list(removes), 0] = 0.0
    return dataclasses.replace(frame, mu=mu, transparency=transparency)


def manipulate(
    rt: DlpRuntime, rgb: np.ndarray, moves: list[Move], removes: list[int]
) -> Manipulation:
    """Encode ``rgb``, apply the edit, decode both particle sets."""
    height, width = rgb.shape[:2]
    frame = PerceptionPipeline(rt).step(rgb, stamp=0).frame
    resize = rt.card.image.resize
    edited = edit_particles(frame, moves, removes, width, height, resize)
    recon, edited_img = rt.render([frame, edited])  # (S, S, 3) each
    return Manipulation(rgb, recon, edited_img, frame, edited, resize)


def side_by_side(result: Manipulation, moves: list[Move], removes: list[int]) -> np.ndarray:
    """original | reconstruction with ids | edited with the moves, each titled.

    Returns:
        (H', 3 W' + 4, 3) uint8 RGB, panels enlarged to a shorter side >= MIN_PANEL_SIDE.
    """
    height, width = result.original.shape[:2]
    view = InputView(width, height, result.resize)

    def at_input_size(img: np.ndarray) -> np.ndarray:  # (S, S, 3) -> (H, W, 3), undo the resize
        return view.model_image_to_input(img)

    original, zoom = enlarge(result.original, MIN_PANEL_SIDE)
    parts = DrawnParticles.of_fields(result.particles.message_fields(width, height, view.mode))
    recon = draw_particles(at_input_size(result.reconstruction), parts, MIN_PANEL_SIDE)
    edited, _ = enlarge(at_input_size(result.edited), MIN_PANEL_SIDE)
    uv = result.particles.pixels(width, height, view.mode) * zoom  # (K, 2)
    for m in moves:
        start = (round(float(uv[m.pid, 0])), round(float(uv[m.pid, 1])))
        end = (round(start[0] + m.dx * zoom), round(start[1] + m.dy * zoom))
        cv2.arrowedLine(edited, start, end, colour(m.pid), 1, cv2.LINE_AA, tipLength=0.2)
    for pid in removes:
        x, y = round(float(uv[pid, 0])), round(float(uv[pid, 1]))
        for dx, dy in ((5, 5), (5, -5)):
            cv2.line(edited, (x - dx, y - dy), (x + dx, y + dy), colour(pid), 2, cv2.LINE_AA)
    what = ', '.join([f'{m.pid}:{m.dx:+g},{m.dy:+g}' for m in moves] + [f'-{i}' for i in removes])
    panels = [label(original, 'original'), label(recon, 'reconstruction (ids)'),
              label(edited, f'edited {what}' if what else 'edited (no change)')]  # fmt: skip
    gap = np.full((panels[0].shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def run(args: argparse.Namespace) -> int:
    moves = [parse_move(text) for text in args.move]
    if args.out.suffix.lower() != '.png':
        raise ConfigError(f'--out {args.out}: expected a .png file name')
    rgb = read_image(args.image)
    rt = DlpRuntime.load(args.bundle, providers=args.providers)
    result = manipulate(rt, rgb, moves, list(args.remove))
    picture = side_by_side(result, moves, list(args.remove))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise DlpError(f'--out {args.out}: could not be written')
    on = int((result.particles.transparency[:, 0] > ON_THRESHOLD).sum())
    print(f'manipulate: {args.out} (original | reconstruction | edited); K = '  # noqa: T201
          f'{result.particles.n_particles} particles, {on} on; {len(moves)} moved, '
          f'{len(args.remove)} removed')  # fmt: skip
    return 0
