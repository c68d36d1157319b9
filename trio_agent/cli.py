"""The ``trio-agent`` command: ``trio-agent serve`` (and more subcommands as they come)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__
from .config import add_config_arguments, config_from
from .logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-agent", description="Interruptible streaming agents over WebSocket."
    )
    parser.add_argument("--version", action="version", version=f"trio-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Every flag can also be set as TRIO_AGENT_<NAME>.",
    )
    add_config_arguments(serve)
    commands.add_parser(
        "bench",
        help="run scripts/bench_interrupt.py (flags are passed through; try --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve":
        try:
            config = config_from(args)
        except ValueError as exc:
            parser.error(str(exc))
        configure_logging(config.log_level, config.log_format)
        from .server import serve

        trio.run(serve, config)
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


def _bench(argv: list[str]) -> int:
    """The benchmark lives in the source tree (scripts/), not in the installed package."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_interrupt.py"
    if not script.is_file():
        print(
            "trio-agent bench: scripts/bench_interrupt.py is not here; run it from a source "
            "checkout installed with pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
