"""Running one command module (``configure_parser(parser)`` + ``run(args) -> int``) as a program:
logging, and the exit codes every dlp_ros tool shares (2 = bad input, 130 = interrupted)."""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from dlp_ros.errors import DlpError


def execute(prog: str, module: ModuleType, args: argparse.Namespace) -> int:
    """``module.run(args)`` with logging set up; a DlpError is one line on stderr and exit 2."""
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, 'verbose', False) else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s',
    )
    logging.getLogger('OpenGL').setLevel(logging.WARNING)  # PyOpenGL (MuJoCo) chatter
    try:
        return int(module.run(args) or 0)
    except DlpError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted; no partial output kept', file=sys.stderr)  # noqa: T201
        return 130


def main_of(prog: str, module: ModuleType, argv: list[str] | None = None) -> int:
    """A command module as a program of its own (``dlp-replay``, ``dlp_ros.demo``)."""
    description = (module.__doc__ or '').split('\n\n')[0]
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    module.configure_parser(parser)
    return execute(prog, module, parser.parse_args(sys.argv[1:] if argv is None else argv))
