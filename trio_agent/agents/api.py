"""What an agent is: the contract between the server and the code that replies.

An agent is any async callable ``agent(request, stream)`` that streams its reply
with ``await stream.send(delta)`` and lets :class:`trio.Cancelled` propagate.
docs/agents.md explains the contract; docs/cancellation.md how cancellation reaches it.
"""

from __future__ import annotations

import json
import math
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    MutableMapping,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from trio_agent.protocol.messages import AgentEntry, DoneStatus, ErrorCode


@dataclass(frozen=True)
class AgentRequest:
    """One REQUEST as an agent sees it.

    ``session_state`` is a dict that lives exactly as long as the session (the
    connection): agents keep per-session state in it, such as a conversation,
    under a key of their own (the agent object itself is a good one).
    """

    request_id: str
    input: str
    options: Mapping[str, Any] = field(default_factory=dict)
    session_id: str = ""
    session_state: MutableMapping[object, Any] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(frozen=True)
class RequestOutcome:
    """How a request ended, as its DONE told the client (see :meth:`ResponseStream.on_done`)."""

    request_id: str
    status: DoneStatus
    #: ``DONE.frames``: the STREAM frames that reached the socket.
    frames: int
    #: The deltas of exactly those frames, in order.
    delivered: tuple[str, ...]
    #: A spoken reply's ``DONE.heard_text``: the words the client heard (``None``:
    #: the reply was not spoken).
    heard_text: str | None = None

    @property
    def text(self) -> str:
        """What the client received, as one string."""
        return "".join(self.delivered)


class ResponseStream(Protocol):
    """Where an agent sends its reply, and what it may ask of the request's DONE."""

    @property
    def request_id(self) -> str: ...

    async def send(self, delta: str) -> None:
        """Queue one delta as a STREAM frame.

        Waits while the connection's stream lane is full (backpressure). Always a
        cancellation point, so an interrupt of this request raises
        :class:`trio.Cancelled` here. Also a schedule point when the calling task has
        not passed one since its previous send, so a loop of sends lets the other
        tasks run once per delta; a send after a real wait (the upstream's next
        token, a pacing timer) and a request's first send queue without yielding
        again. Raises :class:`trio.ClosedResourceError` if the request has already
        ended (a cancelled agent that keeps sending from a shielded block).
        """
        ...

    def add_done_fields(self, **fields: Any) -> None:
        """Add fields of the agent's own to this request's DONE payload.

        Values must be JSON (checked here: ``TypeError``/``ValueError`` otherwise);
        names of the protocol's DONE fields are refused (``ValueError``). A DONE
        carries the fields added before it is written: the DONE of a completed,
        failed or timed-out request is written after the agent returns, but an
        interrupted request's DONE goes out at once unless :meth:`defer_done` was
        called. Fields added after the DONE was written are dropped.
        """
        ...

    def defer_done(self) -> None:
        """Let this request's DONE wait, if it is interrupted, until the agent returns.

        For agents whose cleanup reports something in the DONE (how closing an
        upstream went). The client then gets the DONE after that cleanup, so keep
        it bounded (``trio.move_on_after(t, shield=True)``); the INTERRUPT_ACK is
        never delayed. A shutdown DONE is never deferred. No effect once the
        request has ended.
        """
        ...

    def on_done(self, callback: Callable[[RequestOutcome], None]) -> None:
        """Call ``callback(outcome)`` when this request's DONE is sent.

        ``outcome.delivered`` holds exactly the deltas the client received: the
        ones of the ``DONE.frames`` STREAM frames written before the DONE, never one
        that was queued and dropped. Call it before the first :meth:`send`.

        The writer task calls it as it takes the DONE to write it, when that count
        is final: so callbacks run in the order requests end, and a client that has
        received the DONE can count on the callback having run. Keep it short and
        synchronous; an exception it raises is logged and dropped. It is not called
        when the connection goes away before the DONE is sent.
        """
        ...


@runtime_checkable
class Agent(Protocol):
    """An async callable that streams a reply into a :class:`ResponseStream`."""

    async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None: ...


def json_fields(
    fields: Mapping[str, Any], *, reserved: Collection[str], where: str
) -> dict[str, Any]:
    """Check fields an agent adds to a frame: JSON values, no reserved name.

    Raises ``ValueError`` or ``TypeError`` naming the field, so a mistake shows up in
    the agent that made it rather than as a frame the writer cannot encode.
    """
    for name, value in fields.items():
        if name in reserved:
            raise ValueError(f"{name!r} is a protocol field of {where}; an agent cannot set it")
        try:
            # Encoded too: a lone surrogate passes json.dumps as an escape but can
            # never be sent (UnicodeEncodeError is a ValueError).
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where} field {name!r} is not JSON: {exc}") from None
    return dict(fields)


class AgentError(Exception):
    """Raise from an agent to end its request with ``DONE{status: failed, error}``.

    ``code``, ``message`` and any ``details`` (JSON values, added to the error
    object, e.g. ``upstream_status=502``) go to the client as they are, so keep
    them free of secrets. Any other exception ends the request the same way with
    the code ``AGENT_ERROR`` and only the exception's type and message.
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = json_fields(details, reserved=(), where="DONE.error")


class AgentTimeout(Exception):
    """Raise from an agent when a deadline of its own expired (an upstream that went
    silent): the request ends with ``DONE{status: timeout, reason}``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def agent_entry(agent: Agent) -> AgentEntry:
    """How the SESSION frame lists ``agent``: its description, and whether it can serve.

    An agent is unavailable when it has a true ``unavailable_reason`` attribute (an
    agent with no upstream configured, say); a REQUEST for it gets ``UNKNOWN_AGENT``
    with that reason.
    """
    reason = getattr(agent, "unavailable_reason", None)
    return AgentEntry(
        description=describe(agent),
        available=not reason,
        unavailable_reason=str(reason) if reason else None,
    )


@asynccontextmanager
async def open_agents(agents: Iterable[Agent]) -> AsyncIterator[None]:
    """Enter every agent that is an async context manager; exit them in reverse order.

    This is the lifetime of an agent's resources: the server holds it open while it
    serves, so an agent opens one HTTP client (say) for all sessions and closes it
    once the last session is gone. An agent's ``__aexit__`` may run in a cancelled
    context (the server is being torn down): it should bound and shield its cleanup.
    """
    async with AsyncExitStack() as stack:
        for agent in agents:
            if isinstance(agent, AbstractAsyncContextManager):
                await stack.enter_async_context(agent)
        yield


def describe(agent: Agent) -> str:
    """A one-line description: the agent's ``description`` attribute or docstring."""
    text = getattr(agent, "description", None) or (agent.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def option_number(
    options: Mapping[str, Any], name: str, default: float, *, minimum: float, maximum: float
) -> float:
    value = options.get(name, default)
    # ``math.isnan`` would raise OverflowError for an int too big for a float: the
    # server refuses those when it reads the frame, but an agent may be called
    # without a server (check_agent, tests), so only a float is asked.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise AgentError(str(ErrorCode.INVALID_MESSAGE), f"options.{name} must be a number")
    if not minimum <= value <= maximum:
        raise AgentError(
            str(ErrorCode.INVALID_MESSAGE),
            f"options.{name} must be between {minimum} and {maximum}",
        )
    return float(value)
