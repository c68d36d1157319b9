"""One streaming chat completion from an OpenAI-compatible server, on Trio.

:class:`CompletionStream` owns the call's phase deadlines, turns every upstream
failure into an :class:`~trio_agent.agents.AgentError`, and closes the response
however the call ends. docs/agents.md explains each of the three.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, cast

import httpx
import trio
from httpx_sse import EventSource, SSEError
from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError

from trio_agent.agents.api import AgentError, AgentTimeout
from trio_agent.protocol.messages import ErrorCode

#: How long closing a response may take before we stop waiting for it. Closing is a
#: socket close, so this bound is for a peer we cannot even say goodbye to.
CLOSE_TIMEOUT_S: Final = 1.0

#: How much of an error response's body is read for its message.
ERROR_BODY_LIMIT: Final = 16_384

#: How long an upstream message may be in ``DONE.error.message``.
MESSAGE_LIMIT: Final = 500


class Phase(Enum):
    """Where a call is, and so which deadline guards it."""

    CONNECT = "connect"
    FIRST_TOKEN = "first_token"
    TOKEN_GAP = "token_gap"
    #: After ``[DONE]``: reading the end of the body so the connection can be reused.
    DRAIN = "drain"


@dataclass(frozen=True)
class Deadlines:
    """How long each phase may last, in seconds."""

    connect_s: float
    first_token_s: float
    token_gap_s: float

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_token_s", "token_gap_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    def of(self, phase: Phase) -> float:
        if phase is Phase.CONNECT:
            return self.connect_s
        if phase is Phase.FIRST_TOKEN:
            return self.first_token_s
        return self.token_gap_s


# --------------------------------------------------------------------------- chunks (pure)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Delta(_Model):
    content: str | None = None


class _Choice(_Model):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(_Model):
    choices: list[_Choice] | None = None
    error: Any = None


@dataclass(frozen=True)
class Chunk:
    """What one event of the stream carries for us."""

    content: str
    finish_reason: str | None = None


def upstream_message(error: Any) -> str | None:
    """The human message in an upstream's error object, in any of the common shapes:
    ``{"error": {"message": ...}}`` (OpenAI, vLLM, llama.cpp), ``{"error": "..."}``
    (Ollama), ``{"message": ...}``, ``{"detail": ...}`` (FastAPI)."""
    if isinstance(error, str):
        return error or None
    if isinstance(error, Mapping):
        for key in ("error", "message", "detail"):
            found = upstream_message(error.get(key))
            if found:
                return found
    return None


class ChunkError(Exception):
    """An event that carries no chunk. ``code`` tells an error the upstream reports
    (``UPSTREAM_ERROR``) from data we cannot read (``UPSTREAM_PROTOCOL``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_chunk(data: str, event: str = "message") -> Chunk:
    """Parse the data of one event into the content delta of choice 0.

    Raises :class:`ChunkError`: ``UPSTREAM_ERROR`` for an error event
    (``{"error": ...}`` or ``event: error``), ``UPSTREAM_PROTOCOL`` for data that is
    not a chat completion chunk. A chunk without choices (a usage report) carries
    no content.
    """
    try:
        chunk = _Chunk.model_validate_json(data)
    except ValidationError as exc:
        detail = exc.errors(include_url=False)[0]["msg"]
        raise ChunkError(
            ErrorCode.UPSTREAM_PROTOCOL,
            f"the upstream sent an event that is not a chunk ({detail})",
        ) from None
    if chunk.error is not None or event == "error":
        message = upstream_message(chunk.error) or "an error event"
        raise ChunkError(ErrorCode.UPSTREAM_ERROR, f"the upstream failed mid-stream: {message}")
    if chunk.choices is None:
        raise ChunkError(
            ErrorCode.UPSTREAM_PROTOCOL, "the upstream sent an event without 'choices'"
        )
    for choice in chunk.choices:
        if choice.index == 0:
            content = choice.delta.content if choice.delta is not None else None
            return Chunk(content or "", choice.finish_reason)
    return Chunk("")


# --------------------------------------------------------------------------- one call


class CompletionStream:
    """One streaming call: ``await CompletionStream(client, deadlines).run(body, send)``.

    After :meth:`run` has returned or raised, :attr:`finish_reason`,
    :attr:`upstream_cancelled` and :attr:`close_ms` tell how it went.

    :param client: the shared client; its ``base_url`` ends where
        ``chat/completions`` begins (``https://api.openai.com/v1``).
    :param redact: applied to every message that may quote the upstream, so a
        secret it echoes (an API key in a 401) never reaches a client or a log.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        deadlines: Deadlines,
        *,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._client = client
        self._deadlines = deadlines
        self._redact = redact
        self._guard = trio.CancelScope()
        self.phase = Phase.CONNECT
        #: The request went out: from here on, closing early stops a generation.
        self.request_sent = False
        #: The upstream has said all it will say (``[DONE]``, an error status).
        self.finished = False
        self.finish_reason: str | None = None
        #: The response was closed while the upstream was still generating.
        self.upstream_cancelled = False
        #: How long closing the response took, in milliseconds.
        self.close_ms: float | None = None
        self._close_started: float | None = None

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._guard.deadline = trio.current_time() + self._deadlines.of(phase)

    def _failure(self, code: ErrorCode, message: str, status: int | None = None) -> AgentError:
        message = self._redact(message)[:MESSAGE_LIMIT]
        if status is None:
            return AgentError(code, message)
        return AgentError(code, message, upstream_status=status)

    async def run(self, body: Mapping[str, Any], send: Callable[[str], Awaitable[None]]) -> None:
        """Stream the completion of ``body``, awaiting ``send(delta)`` for each content delta.

        Returns when the upstream has finished. Raises ``AgentTimeout`` when a phase
        deadline expires, ``AgentError`` (``UPSTREAM_*``) when the upstream fails,
        and lets ``trio.Cancelled`` through; in every case the response is closed
        first. Cancellation: the call is a checkpoint throughout, and its cleanup is
        shielded and bounded by :data:`CLOSE_TIMEOUT_S`.
        """
        request = self._client.build_request(
            "POST",
            "chat/completions",
            json=body,
            headers={"Accept": "text/event-stream"},
            extensions={"trace": self._trace},
        )
        response: httpx.Response | None = None
        self._enter(Phase.CONNECT)
        try:
            with self._guard:
                try:
                    response = await self._client.send(request, stream=True)
                    await self._check_status(response)
                    await self._forward(response, send)
                except SSEError as exc:  # a TransportError to httpx-sse; not to us
                    raise self._failure(
                        ErrorCode.UPSTREAM_PROTOCOL, f"the upstream did not stream: {exc}"
                    ) from None
                except httpx.TransportError as exc:
                    raise self._failure(
                        ErrorCode.UPSTREAM_UNAVAILABLE,
                        f"{type(exc).__name__} talking to the upstream at "
                        f"{origin(request.url)}: {exc or 'no detail'}",
                    ) from None
                except httpx.HTTPError as exc:
                    raise self._failure(
                        ErrorCode.UPSTREAM_PROTOCOL, f"{type(exc).__name__}: {exc}"
                    ) from None
        finally:
            if response is not None:
                await self._close(response)
        if self._guard.cancelled_caught and self.phase is not Phase.DRAIN:
            seconds = self._deadlines.of(self.phase)
            raise AgentTimeout(f"upstream {self.phase.value} timeout: {seconds:g} s elapsed")

    async def _check_status(self, response: httpx.Response) -> None:
        """Raise ``UPSTREAM_ERROR`` with the upstream's own message unless it says 2xx."""
        if response.is_success:
            return
        self.finished = True  # it has answered: there is no generation to stop
        body = bytearray()
        # aiter_bytes() is an async generator (typed as an iterator): close it
        # ourselves when we stop early rather than leave that to the GC.
        async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes())) as chunks:
            async for data in chunks:
                body += data
                if len(body) >= ERROR_BODY_LIMIT:
                    break
        text = body[:ERROR_BODY_LIMIT].decode("utf-8", errors="replace")
        try:
            error = json.loads(text)
        except ValueError:
            error = None
        message = upstream_message(error) or text.strip() or response.reason_phrase
        raise self._failure(
            ErrorCode.UPSTREAM_ERROR,
            f"the upstream answered HTTP {response.status_code}: {message}",
            response.status_code,
        )

    async def _forward(
        self, response: httpx.Response, send: Callable[[str], Awaitable[None]]
    ) -> None:
        """Read events until the body ends; send each content delta on."""
        async with aclosing(EventSource(response).aiter_sse()) as events:
            async for event in events:
                if self.finished:
                    continue  # after [DONE]: drain, so the connection can be reused
                if event.data == "[DONE]":
                    self.finished = True
                    self._enter(Phase.DRAIN)
                    continue
                self._enter(Phase.TOKEN_GAP)
                try:
                    chunk = parse_chunk(event.data, event.event)
                except ChunkError as exc:
                    status = response.status_code if exc.code is ErrorCode.UPSTREAM_ERROR else None
                    raise self._failure(exc.code, exc.message, status) from None
                if chunk.finish_reason is not None:
                    self.finish_reason = chunk.finish_reason
                if chunk.content:
                    self._guard.deadline = math.inf  # a slow client is not a silent upstream
                    await send(chunk.content)
                    self._enter(Phase.TOKEN_GAP)
        if not self.finished:
            if self.finish_reason is None:
                raise self._failure(
                    ErrorCode.UPSTREAM_PROTOCOL, "the upstream ended the stream before [DONE]"
                )
            # Older servers (llama.cpp's among them) end with a finish_reason and no [DONE].
            self.finished = True

    async def _close(self, response: httpx.Response) -> None:
        """Close the response: a no-op if httpcore already did, else now, shielded.

        Bounded by :data:`CLOSE_TIMEOUT_S`. The close itself is a socket close, so
        the bound only matters for a TLS peer that does not take our close_notify.
        """
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as bound:
            await response.aclose()
        if bound.cancelled_caught:
            logger.warning("closing the upstream response timed out", timeout_s=CLOSE_TIMEOUT_S)

    async def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's ``trace`` extension: when the request goes out, and the close.

        Called inside httpcore, some of it in shielded blocks: it must never await.
        """
        if event.endswith(".send_request_headers.started"):
            self.request_sent = True
            self._enter(Phase.FIRST_TOKEN)
        elif event.endswith(".response_closed.started"):
            self._close_started = trio.current_time()
            self.upstream_cancelled = self.request_sent and not self.finished
        elif (
            event.endswith((".response_closed.complete", ".response_closed.failed"))
            and self._close_started is not None
        ):
            self.close_ms = (trio.current_time() - self._close_started) * 1000


def origin(url: httpx.URL) -> str:
    """``scheme://host:port`` of ``url``: never its user info, path or query."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"
