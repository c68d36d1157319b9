"""What a text log line shows: the client's address as an address, and no empty fields.

The text sink is the one ``trio-agent serve`` installs (:func:`configure_logging`),
read back from stderr.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from loguru import logger

from trio_agent.observability.logs import configure_logging
from trio_agent.testing.wire import connect


@contextmanager
def text_log() -> Iterator[None]:
    """The server's text sink on stderr while the block runs (installed in the test's
    own phase: the sink keeps the stderr it finds)."""
    configure_logging("DEBUG", "text")
    try:
        yield
    finally:
        logger.remove()


def _line(lines: list[str], message: str) -> str:
    (line,) = [line for line in lines if f" {message} " in line or line.endswith(message)]
    return line


async def test_a_tcp_client_is_logged_by_its_address(start_server, capsys):
    server = await start_server()
    with text_log():
        async with connect(server, "socket") as c:
            await c.request("r1", options={"words": 2, "words_per_s": 0})
            await c.until_done("r1")
            assert isinstance(c.stream, trio.SocketStream)
            host, port = c.stream.socket.getsockname()[:2]
        await server.wait_idle()
    lines = capsys.readouterr().err.splitlines()
    for message in ("session opened", "handshake accepted"):
        remote = re.search(r" remote=(\S+)", _line(lines, message))
        assert remote is not None, message
        assert remote.group(1) == f"{host}:{port}", message


async def test_a_field_that_is_none_is_left_out_of_the_line(start_server, capsys):
    server = await start_server()
    with text_log():
        async with connect(server) as c:
            await c.request("r1", options={"words": 2, "words_per_s": 0})
            await c.until_done("r1")
        await server.wait_idle()
    lines = capsys.readouterr().err.splitlines()
    # A completed request has no reason: the line says what it has, and only that.
    ended = _line(lines, "request ended")
    assert " status=completed" in ended
    assert " frames=" in ended
    assert "reason=" not in ended
    assert not [line for line in lines if "=None" in line]
    # A field that is there is shown.
    assert " reason=" in _line(lines, "session closed")


def test_json_lines_keep_a_field_that_is_none_as_null(capsys):
    configure_logging("INFO", "json")
    try:
        logger.info("request ended", status="completed", reason=None)
    finally:
        logger.remove()
    assert '"reason": null' in capsys.readouterr().err
