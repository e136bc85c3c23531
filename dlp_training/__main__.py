"""``python -m dlp_training <command>`` (installed as ``dlp-train``): dlp_ros's offline tools."""

from __future__ import annotations

import argparse
import importlib
import sys

from dlp_ros.offline.cli import execute

# command -> (module with configure_parser(parser) and run(args) -> int, one-line help).
# Modules are imported only for the command that runs, so --help stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    'record-synthetic': (
        'dlp_training.data.record',
        'record synthetic episodes (balls | tabletop) as rosbag2 with ground truth',
    ),
    'import-video': (
        'dlp_training.data.video',
        'a video file (mp4, avi, ...) as a rosbag2 camera recording, for build-dataset',
    ),
    'build-dataset': (
        'dlp_training.data.build',
        'decode, split, resample and cache rosbag2 camera episodes as a dataset',
    ),
    'train-dlp': (
        'dlp_training.train_dlp',
        'train Deep Latent Particles on a dataset (resumable, torchrun/DDP capable)',
    ),
    'preview-dataset': (
        'dlp_training.data.preview',
        'draw a dataset (frames per episode, ground truth circled) into one PNG',
    ),
    'evaluate-dlp': (
        'dlp_training.evaluate_dlp',
        'measure a trained DLP on a split: PSNR/SSIM, localisation, MAFL probe -> report',
    ),
    'encode-dataset': (
        'dlp_training.encode_dataset',
        "cache a frozen DLP encoder's tracked particles per episode (latents for dynamics)",
    ),
    'train-dynamics': (
        'dlp_training.train_dynamics',
        'train the particle dynamics on a latents cache (rollout curriculum, resumable, DDP)',
    ),
    'manipulate': (
        'dlp_ros.offline.manipulate',
        'encode an image, move/remove particles, decode: original | reconstruction | edited PNG',
    ),
    'replay': (
        'dlp_ros.offline.replay',
        "the node's pipeline on a bag, offline (dlp-replay): output bag, video, strip, summary",
    ),
    'export': (
        'dlp_training.export',
        'export a DLP run + a dynamics run as an ONNX model bundle for the runtime',
    ),
    'evaluate-prediction': (
        'dlp_training.evaluate_prediction',
        'condition on C frames, predict N: PSNR/SSIM/positions per step vs baselines -> report',
    ),
    'evaluate-planning': (
        'dlp_ros.sim.evaluate',
        'closed-loop pushing over ROS 2: simulator + perception node + planner per mode -> report',
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The dlp-train parser; ``command``'s module (imported only for the command that runs)
    adds its own arguments to its subcommand parser."""
    parser = argparse.ArgumentParser(
        prog='dlp-train', description='dlp_ros offline tools: data, training, evaluation, export.'
    )
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    subs: dict[str, argparse.ArgumentParser] = {}
    for name, (module, help_text) in COMMANDS.items():
        subs[name] = sub.add_parser(name, help=help_text, description=help_text)
        subs[name].set_defaults(_module=module)
    if command is not None:
        importlib.import_module(COMMANDS[command][0]).configure_parser(subs[command])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if a in COMMANDS), None))
    args = parser.parse_args(argv)
    return execute(f'dlp-train {args.command}', importlib.import_module(args._module), args)


if __name__ == '__main__':
    sys.exit(main())
