"""The ``trio-agent`` command and its subcommands (serve, chat, demo, bench).

The top layer: it may import any other. The modules are internal.
"""

from trio_agent.cli.main import (
    build_parser,
    main,
)

__all__ = [
    "build_parser",
    "main",
]
