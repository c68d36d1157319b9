"""The throwaway redis-server of the tests: it answers, it dies when told, it comes back,
and it leaves no process behind."""

from __future__ import annotations

import os
import socket

import pytest

from trio_agent.testing.processes import (
    RedisServerError,
    free_port,
    redis_executable,
    redis_server,
)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        redis_executable() is None,
        reason="redis tests skipped: neither redis-server nor valkey-server is installed "
        "(Debian: apt-get install redis-server)",
    ),
]


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(64)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_server_answers_and_is_gone_after_the_block() -> None:
    with redis_server() as redis:
        pid = redis.pid
        assert ping(redis.port) == b"+PONG\r\n"
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert not process_exists(pid)


def test_the_server_is_stopped_when_the_block_raises() -> None:
    with pytest.raises(KeyError), redis_server() as redis:  # noqa: PT012
        pid = redis.pid
        raise KeyError("boom")
    assert not process_exists(pid)


def test_kill_then_restart_on_the_same_port() -> None:
    with redis_server() as redis:
        first = redis.pid
        redis.kill()
        assert redis.pid == 0
        assert not process_exists(first)
        with pytest.raises(ConnectionRefusedError):
            ping(redis.port)
        redis.restart()
        assert redis.pid not in (0, first)
        assert ping(redis.port) == b"+PONG\r\n"
        redis.stop()
        assert redis.pid == 0


def test_a_server_that_cannot_start_says_why() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RedisServerError, match=f"port {port}") as failure:  # noqa: SIM117
            with redis_server(port=port):
                pass  # pragma: no cover
    assert "exited" in str(failure.value)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
