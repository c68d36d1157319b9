"""Running a session's requests: one task each, the agent inside the request's scope.

A request's task enters the request's :class:`trio.CancelScope` (its deadline is
the request's timeout; an INTERRUPT cancels it), runs the agent there, and then
settles how the request ended and queues its DONE, unless an INTERRUPT or
shutdown already did. Where this sits in the cancel-scope tree:
``docs/architecture.md``; what each way of ending means: ``docs/cancellation.md``
and ``docs/protocol.md`` (exactly one DONE per request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import trio
from loguru import logger

from trio_agent.agents import Agent, AgentError, AgentRequest, AgentTimeout, ResponseStream
from trio_agent.observability.events import SessionEvents
from trio_agent.observability.trace import request_task_label
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import DoneStatus, ErrorCode, ErrorInfo
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestPhase, RequestRecord, RequestRegistry
from trio_agent.server.request_stream import RequestStream
from trio_agent.speech.stage import Speaker, SpokenResponseStream
from trio_agent.speech.timeline import SpeechOptions

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig
    from trio_agent.speech.synthesizers import Synthesizer

#: An agent as it may really be: returning anything.
_AnyAgent = Callable[[AgentRequest, ResponseStream], Awaitable[object]]


class RequestRunner:
    """The request tasks of one session: starts them, and knows which still run.

    :param session_id: the session's id.
    :param config: the server's settings.
    :param registry: the session's requests (the first terminal decision wins).
    :param lanes: where DONEs and the agents' frames queue.
    :param msg_ids: the session's message ids.
    :param events: what the session tells.
    :param push_control: queues a frame on the priority lane (a deferred DONE).
    :param synthesizer: what speaks a request with a voice, if speech is on.
    """

    def __init__(
        self,
        *,
        session_id: str,
        config: ServerConfig,
        registry: RequestRegistry,
        lanes: OutboundLanes,
        msg_ids: MessageIds,
        events: SessionEvents,
        push_control: Callable[[Outbound], bool],
        synthesizer: Synthesizer | None,
    ) -> None:
        self._session_id = session_id
        self._config = config
        self._registry = registry
        self._lanes = lanes
        self._msg_ids = msg_ids
        self._events = events
        self._push_control = push_control
        self._synthesizer = synthesizer
        #: Set once the session stops sending: request tasks ending after that
        #: queue no DONE (there is nobody to read it).
        self._dones_stopped = False
        self._running = 0
        self._all_ended = trio.Event()
        self._all_ended.set()
        #: Interrupted requests whose DONE waits for their agent (``defer_done``).
        self._deferred_dones: set[RequestRecord] = set()

    @property
    def running(self) -> int:
        """How many request tasks have not ended yet."""
        return self._running

    def start(
        self,
        nursery: trio.Nursery,
        record: RequestRecord,
        agent: Agent,
        request: AgentRequest,
        timeout_s: float,
        speech: SpeechOptions | None,
    ) -> None:
        """Start ``record``'s task in ``nursery`` (the session's). Synchronous: the
        task first runs at a later checkpoint, and an INTERRUPT handled before
        then keeps its agent from ever starting."""
        if not self._running:
            self._all_ended = trio.Event()
        self._running += 1
        nursery.start_soon(
            self._run,
            record,
            agent,
            request,
            timeout_s,
            speech,
            name=request_task_label(record.request_id),
        )

    def start_relay(
        self,
        nursery: trio.Nursery,
        record: RequestRecord,
        relay: Callable[[RequestRecord], Awaitable[None]],
    ) -> None:
        """Cluster: start the task of a request that runs on another node, in ``nursery``
        (the session's), like any request task: inside the request's scope, so an
        INTERRUPT read here cuts it the same way. ``relay`` queues the frames the
        other node writes, and ends the request when its DONE comes."""
        if not self._running:
            self._all_ended = trio.Event()
        self._running += 1
        nursery.start_soon(self._relay, record, relay, name=request_task_label(record.request_id))

    async def _relay(
        self, record: RequestRecord, relay: Callable[[RequestRecord], Awaitable[None]]
    ) -> None:
        try:
            with logger.contextualize(request_id=record.request_id), record.scope:
                await relay(record)
        except Exception as exc:
            self._events.agent_raised(exc)
            error = ErrorInfo(code=ErrorCode.AGENT_ERROR, message=_describe(exc))
            if self._registry.end(record, DoneStatus.FAILED, reason="relay failed", error=error):
                self._lanes.push_stream_terminal(Outbound(FrameKind.DONE, record=record))
        finally:
            self._running -= 1
            if not self._running:
                self._all_ended.set()

    def defer_done(self, record: RequestRecord) -> None:
        """Queue the interrupted ``record``'s DONE when its agent returns, not now."""
        self._deferred_dones.add(record)

    def take_deferred_dones(self) -> list[RequestRecord]:
        """The requests whose DONE is still deferred; they are no longer deferred."""
        records = list(self._deferred_dones)
        self._deferred_dones.clear()
        return records

    def stop_queueing_dones(self) -> None:
        """The session stops sending: request tasks that end from now on queue no DONE."""
        self._dones_stopped = True

    async def wait_all_ended(self) -> None:
        """Return once no request task is left. Not shielded: the caller bounds it."""
        await self._all_ended.wait()

    async def _run(
        self,
        record: RequestRecord,
        agent: Agent,
        request: AgentRequest,
        timeout_s: float,
        speech: SpeechOptions | None = None,
    ) -> None:
        events = self._events
        with logger.contextualize(request_id=record.request_id):
            error: ErrorInfo | None = None
            timeout_reason: str | None = None
            try:
                with record.scope:
                    events.request_started(record, timeout_s)
                    try:
                        # A scope cancelled before it was entered (an INTERRUPT that
                        # arrived before this task first ran) raises here, so the
                        # agent never starts.
                        await trio.lowlevel.checkpoint_if_cancelled()
                        # The protocol says None, but an agent in the wild may return
                        # its text instead of sending it: look at what comes back.
                        stream: RequestStream | SpokenResponseStream
                        stream = RequestStream(
                            record,
                            session_id=self._session_id,
                            lanes=self._lanes,
                            msg_ids=self._msg_ids,
                            events=events,
                        )
                        if speech is not None:
                            stream = self._spoken(stream, speech)
                        returned = await cast("_AnyAgent", agent)(request, stream)
                        if returned is not None:
                            raise TypeError(
                                f"the agent returned a {type(returned).__name__}; an agent "
                                "streams its reply with stream.send() and returns None"
                            )
                        if isinstance(stream, SpokenResponseStream):
                            await stream.finish()
                    except trio.Cancelled as cancelled:
                        # Who cut us and why, straight from Trio: "explicit" with the
                        # INTERRUPT's msg id, "deadline" for a timeout, "nursery" when
                        # the session is closing.
                        events.cancel_delivered(record, cancelled)
                        raise
            except AgentTimeout as exc:
                timeout_reason = _text(exc.reason, 500)
            except AgentError as exc:
                error = ErrorInfo(
                    code=_text(exc.code, 64), message=_text(exc.message, 500), **exc.details
                )
            except Exception as exc:
                # An agent's failure ends its request, never the session.
                events.agent_raised(exc)
                error = ErrorInfo(code=ErrorCode.AGENT_ERROR, message=_describe(exc))
            finally:
                self._settle(record, error, timeout_s, timeout_reason)
                events.scope_closed(record, error)
                self._running -= 1
                if not self._running:
                    self._all_ended.set()

    def _spoken(self, stream: RequestStream, speech: SpeechOptions) -> SpokenResponseStream:
        """The speech stage around a request's stream (:mod:`trio_agent.speech.stage`)."""
        record = stream.record
        assert self._synthesizer is not None
        assert record.speech is not None
        speaker = Speaker(
            stream,
            self._synthesizer,
            speech,
            record.speech,
            chunk_ms=self._config.audio_chunk_ms,
            lead_ms=self._config.audio_lead_ms,
        )
        return SpokenResponseStream(stream, speaker)

    def _settle(
        self,
        record: RequestRecord,
        error: ErrorInfo | None,
        timeout_s: float,
        timeout_reason: str | None = None,
    ) -> None:
        """Decide how a request ended once its task is done, and queue its DONE.

        If an INTERRUPT or shutdown already decided (the usual case when the scope
        was cancelled), ``registry.end`` returns False and nothing more is sent,
        except the DONE an interrupt deferred until now.
        """
        if self._dones_stopped:
            if record.phase is RequestPhase.RUNNING:
                self._events.request_abandoned()
            return
        if error is not None:
            status, reason = DoneStatus.FAILED, error.message
        elif timeout_reason is not None:
            status, reason = DoneStatus.TIMEOUT, timeout_reason
        elif record.scope.cancel_called:
            # Nobody cancels a RUNNING request's scope without ending it first
            # except its own deadline.
            status, reason = DoneStatus.TIMEOUT, f"timeout_s={timeout_s:g} elapsed"
        else:
            status, reason = DoneStatus.COMPLETED, None
        if self._registry.end(record, status, reason=reason, error=error):
            # Behind the request's own STREAM frames, never ahead of them.
            # Told first: the push may write the DONE at once (``Writer._write_directly``).
            self._events.done_queued(record)
            self._lanes.push_stream_terminal(Outbound(FrameKind.DONE, record=record))
        elif record in self._deferred_dones:
            self._deferred_dones.remove(record)
            self._push_control(Outbound(FrameKind.DONE, record=record))


def _text(value: object, limit: int) -> str:
    """``str(value)`` cut to ``limit`` characters, for what an agent hands us: even a
    value whose ``__str__`` raises, or a text with lone surrogates (which JSON cannot
    carry), gives a text that can be sent, never an exception."""
    try:
        text = str(value)[:limit]
    except Exception:
        text = f"({type(value).__name__} that cannot be shown)"[:limit]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an agent's exception, at most 500 characters."""
    return f"{type(exc).__name__}: {_text(exc, 500)}"[:500]
