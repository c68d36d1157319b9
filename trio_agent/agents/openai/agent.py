"""The ``openai`` agent: a reply streamed from any OpenAI-compatible chat model.

Settings: :class:`OpenAIConfig` plus ``OPENAI_API_KEY`` (never logged). docs/agents.md
explains how an INTERRUPT stops the upstream and why history holds what was heard.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx
import trio
from loguru import logger
from pydantic import SecretStr

from trio_agent._version import __version__
from trio_agent.agents.api import AgentError, AgentRequest, RequestOutcome, ResponseStream
from trio_agent.agents.openai.history import ChatHistory
from trio_agent.agents.openai.upstream import CompletionStream, Deadlines, origin
from trio_agent.protocol.messages import DoneStatus, ErrorCode
from trio_agent.settings import setting, settings_from

#: Where requests go when only ``OPENAI_API_KEY`` is set, as with the official SDK.
OPENAI_DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

#: How long closing the HTTP client may take when the server stops.
CLIENT_CLOSE_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True)
class OpenAIConfig:
    """The ``openai`` agent's settings: one field = one ``--flag`` and one variable.

    The API key is not among them: it is read from ``OPENAI_API_KEY`` only, since a
    command-line flag would show it to anyone who can list processes.
    """

    openai_base_url: str | None = setting(
        None,
        "OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (vLLM); "
        f"with only OPENAI_API_KEY set, {OPENAI_DEFAULT_BASE_URL}",
        env="OPENAI_BASE_URL",
    )
    openai_model: str | None = setting(
        None, "model name sent upstream; a request's options.model overrides it"
    )
    openai_system_prompt: str | None = setting(
        None, "system message that opens every conversation of the openai agent"
    )
    openai_connect_timeout_s: float = setting(
        10.0, "deadline for getting a connection to the upstream (pool wait, TCP, TLS)"
    )
    openai_first_token_timeout_s: float = setting(
        60.0, "deadline from sending the request to the first streamed event"
    )
    openai_token_gap_timeout_s: float = setting(
        30.0, "longest silence allowed between two streamed events"
    )
    openai_max_connections: int = setting(
        32, "connections the server opens to the upstream at most (shared by all sessions)"
    )

    def __post_init__(self) -> None:
        _ = self.deadlines  # Deadlines refuses a timeout that is not positive
        if self.openai_max_connections < 1:
            raise ValueError("openai_max_connections must be at least 1")
        if self.openai_base_url:
            url = httpx.URL(self.openai_base_url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(
                    f"openai_base_url must be an http:// or https:// URL, "
                    f"not {self.openai_base_url!r}"
                )

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines(
            self.openai_connect_timeout_s,
            self.openai_first_token_timeout_s,
            self.openai_token_gap_timeout_s,
        )


@dataclass(frozen=True)
class ChatOptions:
    """The per-request ``options`` the agent understands; others are ignored."""

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    new_conversation: bool = False

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> ChatOptions:
        """Check ``options``; a bad one fails the request with a message naming it."""
        model = options.get("model")
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 256):
            raise _bad_option("model", "a non-empty string")
        temperature = options.get("temperature")
        if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
            raise _bad_option("temperature", "a number from 0 to 2")
        max_tokens = options.get("max_tokens")
        if max_tokens is not None and not (
            isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1
        ):
            raise _bad_option("max_tokens", "a positive integer")
        new_conversation = options.get("new_conversation", False)
        if not isinstance(new_conversation, bool):
            raise _bad_option("new_conversation", "true or false")
        return cls(model, temperature, max_tokens, new_conversation)

    def request_fields(self, default_model: str | None) -> dict[str, Any]:
        """The body fields these options set; no ``model`` when none is known (the
        upstream then decides: llama.cpp's server serves its one model)."""
        fields: dict[str, Any] = {}
        if model := self.model or default_model:
            fields["model"] = model
        if self.temperature is not None:
            fields["temperature"] = self.temperature
        if self.max_tokens is not None:
            fields["max_tokens"] = self.max_tokens
        return fields


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bad_option(name: str, expected: str) -> AgentError:
    return AgentError(str(ErrorCode.INVALID_MESSAGE), f"options.{name} must be {expected}")


class OpenAIAgent:
    """Streams a reply from an OpenAI-compatible chat completions API.

    Use it as an agent of an :class:`~trio_agent.AgentServer`, which opens and closes
    it; on its own, ``async with OpenAIAgent(config, api_key=...) as agent: ...``.

    :param config: where the upstream is and how long it may take.
    :param api_key: sent as ``Authorization: Bearer ...``; ``None`` sends none (local
        servers need none).
    """

    def __init__(self, config: OpenAIConfig | None = None, *, api_key: str | None = None) -> None:
        self.config = config or OpenAIConfig()
        self._api_key = SecretStr(api_key) if api_key else None
        self.base_url = self.config.openai_base_url or (
            OPENAI_DEFAULT_BASE_URL if api_key else None
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def description(self) -> str:
        model = self.config.openai_model or "the upstream's default model"
        where = origin(httpx.URL(self.base_url)) if self.base_url else "no upstream"
        return f"Streams from an OpenAI-compatible chat API ({where}, {model})"

    @property
    def unavailable_reason(self) -> str | None:
        """Why the agent cannot serve, or ``None``: it needs an upstream to talk to."""
        if self.base_url is None:
            return (
                "no upstream configured: set OPENAI_BASE_URL (or --openai-base-url), "
                f"or OPENAI_API_KEY to use {OPENAI_DEFAULT_BASE_URL}"
            )
        return None

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            return text.replace(self._api_key.get_secret_value(), "[redacted]")
        return text

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        """Open the shared HTTP client (nothing to open without an upstream)."""
        if self.base_url is not None and self._client is None:
            headers = {"User-Agent": f"trio-agent/{__version__}"}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            connections = self.config.openai_max_connections
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                # Deadlines are our own cancel scopes (see chat_stream): no httpx timeouts.
                timeout=httpx.Timeout(None),
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
                follow_redirects=False,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client and its pooled connections: bounded and shielded, since
        the server may be tearing down under a cancellation."""
        client, self._client = self._client, None
        if client is not None:
            with trio.move_on_after(CLIENT_CLOSE_TIMEOUT_S, shield=True):
                await client.aclose()

    # ------------------------------------------------------------------ one request

    def conversation(self, session_state: MutableMapping[object, Any]) -> ChatHistory:
        """This agent's conversation in a session (created on first use)."""
        conversation = session_state.get(self)
        if not isinstance(conversation, ChatHistory):
            conversation = session_state[self] = ChatHistory(self.config.openai_system_prompt)
        return conversation

    def export_session_state(self, session_state: MutableMapping[object, Any]) -> object:
        """The conversation, for a node of a cluster that takes the session over."""
        conversation = session_state.get(self)
        return conversation.to_json() if isinstance(conversation, ChatHistory) else None

    def restore_session_state(
        self, session_state: MutableMapping[object, Any], data: object
    ) -> None:
        """Continue the conversation another node had (:meth:`export_session_state`)."""
        session_state[self] = ChatHistory.from_json(data, self.config.openai_system_prompt)

    async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None:
        """Stream the model's reply to ``request.input``, continuing the session's dialogue.

        Cancellation (INTERRUPT, timeout, disconnect) closes the upstream response
        before this returns; the DONE waits for that, and reports it.
        """
        if self._client is None:
            raise AgentError(
                str(ErrorCode.UPSTREAM_UNAVAILABLE),
                self.unavailable_reason or "the openai agent is not open (use it in `async with`)",
            )
        options = ChatOptions.parse(request.options)
        if options.new_conversation:
            # A new object: requests still running in the old conversation record
            # their turns there, and it is dropped with them.
            request.session_state[self] = ChatHistory(self.config.openai_system_prompt)
        conversation = self.conversation(request.session_state)
        body = {
            **options.request_fields(self.config.openai_model),
            "messages": conversation.messages_for(request.input),
            "stream": True,
        }
        user_input = request.input

        def record(outcome: RequestOutcome) -> None:
            conversation.record(user_input, heard_reply(outcome), outcome.status)

        stream.on_done(record)
        stream.defer_done()
        call = CompletionStream(self._client, self.config.deadlines, redact=self._redact)
        logger.debug("upstream request", model=body.get("model"), messages=len(body["messages"]))
        try:
            await call.run(body, stream.send)
        except AgentError as exc:
            logger.info("upstream failed", code=exc.code, detail=exc.message, **exc.details)
            raise
        finally:
            if call.finish_reason is not None:
                stream.add_done_fields(finish_reason=call.finish_reason)
            if call.upstream_cancelled:
                close_ms = round(call.close_ms, 3) if call.close_ms is not None else None
                stream.add_done_fields(upstream_cancelled=True, upstream_close_ms=close_ms)
                logger.info("upstream stream closed early", close_ms=close_ms)


def openai_agent_from(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> OpenAIAgent:
    """The ``openai`` agent configured from flags and the environment (as the CLI does).

    Raises ``ValueError`` for a setting that is not valid.
    """
    environ = os.environ if environ is None else environ
    config = settings_from(OpenAIConfig, args, environ)
    return OpenAIAgent(config, api_key=environ.get("OPENAI_API_KEY") or None)


def heard_reply(outcome: RequestOutcome) -> str:
    """The assistant's turn as the user took it in: the delivered text, or, for a
    spoken reply that was interrupted, only the words whose audio was heard
    (``DONE.heard_text``): captions ahead of the sound were never said."""
    if outcome.heard_text is not None and outcome.status is DoneStatus.INTERRUPTED:
        return outcome.heard_text
    return outcome.text
