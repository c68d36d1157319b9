"""The ``trio-agent`` command: ``trio-agent serve`` (and more subcommands as they come)."""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from trio_agent._version import __version__
from trio_agent.agents import builtin_agents
from trio_agent.agents.openai.agent import OpenAIConfig, openai_agent_from
from trio_agent.cli.chat import add_chat_arguments, chat_main
from trio_agent.cli.chat_help import CHAT_DESCRIPTION, CHAT_EPILOG
from trio_agent.cli.cluster import add_cluster_arguments, cluster_main
from trio_agent.cli.demo import add_arguments as add_demo_arguments
from trio_agent.cli.demo import run_from_args as run_demo
from trio_agent.observability.logs import configure_logging
from trio_agent.protocol.asyncapi import asyncapi_json
from trio_agent.protocol.constants import DEFAULT_PATH
from trio_agent.server.config import ServerConfig, add_config_arguments, config_from
from trio_agent.server.startup import StartupError
from trio_agent.server.transport import REUSE_PORT_VARIABLE
from trio_agent.settings import add_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-agent", description="Interruptible streaming agents over WebSocket."
    )
    parser.add_argument("--version", action="version", version=f"trio-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Every flag can also be set as an environment variable, "
        "named after it (--max-sessions: TRIO_AGENT_MAX_SESSIONS), except the openai agent's "
        "upstream, OPENAI_BASE_URL, as in OpenAI's own tools; a flag beats its variable. "
        "Each flag's help names its variable.",
    )
    add_config_arguments(serve)
    openai = serve.add_argument_group(
        "the openai agent",
        "Its upstream is --openai-base-url or OPENAI_BASE_URL. Its key is OPENAI_API_KEY, "
        "read from the environment only (a flag would show it to anyone who can list "
        "processes).",
    )
    add_arguments(openai, OpenAIConfig)
    chat = commands.add_parser(
        "chat",
        help="chat with a server from the terminal",
        description=CHAT_DESCRIPTION,
        epilog=CHAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_chat_arguments(chat)
    demo = commands.add_parser(
        "demo",
        help="watch an interrupt travel: in-process server, traced, narrated and drawn",
        description="Run a scripted session against an in-process server with tracing on, "
        "print the story of each INTERRUPT and draw it (see docs/cancellation.md).",
    )
    add_demo_arguments(demo)
    cluster = commands.add_parser(
        "cluster",
        help="run redis-server, nodes and HAProxy on loopback (other flags go to every node)",
        description="Start a cluster on loopback for a demo: redis-server, nodes (serve "
        "--redis-url ...) and HAProxy in front; Ctrl-C stops them all (docs/cluster.md).",
    )
    add_cluster_arguments(cluster)
    schema = commands.add_parser(
        "schema",
        help="print the protocol's AsyncAPI 3.0 document (docs/asyncapi.json)",
        description="Print the AsyncAPI 3.0 document of the protocol, generated from its "
        "models: what GET /asyncapi.json serves. Regenerate the committed copy with "
        "`trio-agent schema > docs/asyncapi.json`.",
    )
    schema.add_argument(
        "--path", default=DEFAULT_PATH, help="the WebSocket path (the server's --path; default /ws)"
    )
    commands.add_parser(
        "bench",
        help="run scripts/bench_interrupt.py (flags are passed through; try --help)",
        add_help=False,
    )
    # Each command's own parser, to report a flag it does not know with its own usage.
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _bench(rest)
    if args.command == "cluster":
        return cluster_main(args, rest)
    if rest:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve":
        return _serve(args, parser, argv)
    if args.command == "chat":
        configure_logging("WARNING")
        return chat_main(args)
    if args.command == "demo":
        configure_logging("WARNING")
        return run_demo(args)
    if args.command == "schema":
        sys.stdout.write(asyncapi_json(args.path))
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


def _serve_workers(parser: argparse.ArgumentParser, argv: list[str], config: ServerConfig) -> int:
    """``serve --workers N``: the workers get the same flags (``argv`` without the
    ``serve`` in front), each its own ``--node-id`` (trio_agent/cli/workers.py)."""
    from trio_agent.cli.workers import run_workers

    flags = argv[argv.index("serve") + 1 :] if "serve" in argv else argv
    try:
        return run_workers(flags, config)
    except ValueError as exc:
        parser.error(str(exc))
        return 2  # pragma: no cover


def _serve(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> int:
    """Run the server until a signal stops it (exit 0).

    A setting it cannot start with (a bad value, a port in use, a certificate that
    cannot be read) is one line on stderr and exit status 2, not a traceback: the
    operator has something to change, not a bug to report.
    """
    try:
        config = config_from(args)
        agents = {**builtin_agents(), "openai": openai_agent_from(args)}
    except ValueError as exc:
        print(f"invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    if config.workers > 1:
        return _serve_workers(parser, list(sys.argv[1:] if argv is None else argv), config)
    reuse_port = os.environ.get(REUSE_PORT_VARIABLE) == "1"
    if config.clustered:
        from trio_agent.cluster.serve import serve_node as run
    else:
        from trio_agent.server.serving import serve as run
    try:
        trio.run(functools.partial(run, config, agents, reuse_port=reuse_port))
    except Exception as exc:
        failure = _startup_failure(exc)
        if failure is None:
            raise
        print(failure, file=sys.stderr)
        return 2
    return 0


def _startup_failure(exc: BaseException) -> StartupError | None:
    """The :class:`StartupError` that stopped the server, out of however many
    exception groups the nurseries it crossed wrapped it in; ``None`` for anything
    else (which is a bug, and keeps its traceback)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, StartupError) else None


#: Runs the benchmark's main() with the name the user typed, for its usage and errors.
_RUN_AS_TRIO_AGENT_BENCH = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import bench_interrupt; "
    "sys.exit(bench_interrupt.main(sys.argv[1:], prog='trio-agent bench'))"
)


def _bench(argv: list[str]) -> int:
    """The benchmark lives in the source tree (scripts/), not in the installed package."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_interrupt.py"
    if not script.is_file():
        print(
            "trio-agent bench: scripts/bench_interrupt.py is not here; run it from a source "
            "checkout installed with pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    return subprocess.call(
        [sys.executable, "-c", _RUN_AS_TRIO_AGENT_BENCH, str(script.parent), *argv]
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
