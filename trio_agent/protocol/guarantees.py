"""A client-side checker of the protocol guarantees, as pure code.

Feed :class:`GuaranteeChecker` every frame sent and received, in order; each broken
guarantee becomes a :class:`Violation` numbered as in docs/protocol.md.

A conversation may span several connections (protocol v1.2 RESUME): call
:meth:`GuaranteeChecker.reconnected` when the client opens a new connection to
resume, and the guarantees are checked across them, as one conversation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trio_agent.protocol.bounds import id_echo

#: How many ended request ids and answered INTERRUPTs a checker remembers by default.
DEFAULT_MEMORY = 1024
#: The number of the v1.2 guarantee "after a reconnect: a SESSION, then the RESUMED
#: answering the RESUME, then frames of the resumed session only".
RESUME_GUARANTEE = 11


@dataclass(frozen=True)
class Violation:
    """One broken guarantee: its number in docs/protocol.md, and what happened."""

    guarantee: int
    message: str

    def __str__(self) -> str:
        return f"guarantee {self.guarantee}: {self.message}"


@dataclass
class _Request:
    request_id: str
    sent_at: int  # position of the REQUEST in the conversation
    refused: bool = False
    frames: int = 0
    audio_frames: int = 0  # AUDIO frames (protocol v1.1), their own seq
    done: Mapping[str, Any] | None = None
    acked_by: str | None = None  # msg_id of the INTERRUPT whose ACK named it
    # msg_id of an INTERRUPT a RESUMED listed as having cut it: its replayed frames may
    # still come (they were written before that ACK), but its DONE is interrupted.
    cut_by_resumed: str | None = None


@dataclass
class _Interrupt:
    msg_id: str
    target: str | None
    sent_at: int


def _remember(memory: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """Insert into an insertion-ordered dict used as a bounded memory (oldest out first)."""
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > limit:
        del memory[next(iter(memory))]


@dataclass
class GuaranteeChecker:
    """Checks a conversation against guarantees 1-7 of protocol v1 (see docs/protocol.md).

    Across resumes (v1.2, after :meth:`reconnected`) the same guarantees hold over
    all connections, plus :data:`RESUME_GUARANTEE`: the new connection's SESSION,
    then the RESUMED answering the RESUME, then frames of the old session id only.

    :param memory: how many ended request ids and answered INTERRUPTs to remember
        (to recognise a frame that comes after the end). Older ones are forgotten, so
        a STREAM for a long-ended request is reported as one this client never sent.
    """

    violations: list[Violation] = field(default_factory=list)
    memory: int = DEFAULT_MEMORY
    _requests: dict[str, _Request] = field(default_factory=dict)
    #: INTERRUPTs waiting for their answer.
    _interrupts: dict[str, _Interrupt] = field(default_factory=dict)
    #: INTERRUPTs already answered, by an ACK or by an ERROR (bounded).
    _answered: dict[str, Literal["ack", "error"]] = field(default_factory=dict)
    #: Ids whose DONE arrived (an id may be reused after its DONE; bounded).
    _ended: dict[str, None] = field(default_factory=dict)
    _clock: int = 0
    #: The id of the session the conversation speaks for (its first SESSION's).
    _session_id: str | None = None
    #: After :meth:`reconnected`: ``"SESSION"``, then ``"RESUMED"``; ``None`` when live.
    _awaiting: Literal["SESSION", "RESUMED"] | None = None
    #: The ``msg_id`` of the last RESUME sent.
    _resume_msg_id: str | None = None
    #: How many times the conversation moved to a new connection.
    resumes: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def _fail(self, guarantee: int, message: str) -> Violation:
        violation = Violation(guarantee, message)
        self.violations.append(violation)
        return violation

    def reconnected(self) -> None:
        """The client opened a new connection to resume the session: a SESSION, then
        a RESUMED answering the RESUME (or an ERROR refusing it) must come first."""
        self._awaiting = "SESSION"
        self._resume_msg_id = None
        self.resumes += 1

    def sent(self, frame: Mapping[str, Any]) -> None:
        """Record a frame the client sent (a dict in wire form)."""
        self._clock += 1
        kind = frame.get("msg_type")
        # Known by the ids the server echoes: an id too long to be valid comes back
        # in its ERROR cut to MAX_ID_CHARS characters.
        if kind == "REQUEST":
            rid = str(id_echo(frame.get("request_id")))
            # A REQUEST reusing a running id is refused (DUPLICATE_REQUEST_ID) and
            # must not replace the running one; a refused one never ran, so its id is free.
            known = self._requests.get(rid)
            if known is None or known.refused:
                self._requests[rid] = _Request(rid, self._clock)
        elif kind == "INTERRUPT":
            msg_id = str(id_echo(frame.get("msg_id")))
            self._interrupts[msg_id] = _Interrupt(msg_id, frame.get("request_id"), self._clock)
        elif kind == "RESUME":
            self._resume_msg_id = str(id_echo(frame.get("msg_id")))

    def received(self, frame: Mapping[str, Any]) -> list[Violation]:
        """Record a frame the client received; return the violations it revealed.

        An AUDIO binary frame is passed as its header (``msg_type: "AUDIO"``): it
        obeys the same guarantees as STREAM, with a ``seq`` of its own.
        """
        self._clock += 1
        before = len(self.violations)
        kind = frame.get("msg_type")
        payload = frame.get("payload") or {}
        rid = frame.get("request_id")
        if not self._connection_frame(str(kind), frame, payload):
            return self.violations[before:]
        if kind == "STREAM":
            self._stream(str(rid), payload)
        elif kind == "AUDIO":
            self._audio(str(rid), frame.get("seq"))
        elif kind == "DONE":
            self._done(str(rid), payload)
        elif kind == "INTERRUPT_ACK":
            self._ack(frame, payload)
        elif kind == "ERROR":
            self._error(frame, payload)
        return self.violations[before:]

    def _connection_frame(
        self, kind: str, frame: Mapping[str, Any], payload: Mapping[str, Any]
    ) -> bool:
        """Check the frames that open a connection (SESSION, RESUMED) and the session
        id of every frame after a resume. Return whether the frame is about requests
        and must be checked further."""
        if kind == "SESSION":
            if self._session_id is None:
                self._session_id = str(frame.get("session_id"))
            elif self._awaiting == "SESSION":
                self._awaiting = "RESUMED"
            return False
        if self._awaiting is not None:
            if kind == "ERROR":  # a refused RESUME (RESUME_UNKNOWN, RESUME_DENIED)
                return True
            if kind != "RESUMED" or self._awaiting == "SESSION":
                self._fail(
                    RESUME_GUARANTEE,
                    f"{kind} on a resuming connection before its {self._awaiting}",
                )
                return kind != "RESUMED"
            self._awaiting = None
            self._resumed(frame, payload)
            return False
        if kind == "RESUMED":
            self._fail(RESUME_GUARANTEE, "a RESUMED the client did not ask for")
            return False
        session_id = frame.get("session_id")
        if self.resumes and session_id is not None and session_id != self._session_id:
            self._fail(
                RESUME_GUARANTEE,
                f"{kind} for session {session_id!r} after resuming {self._session_id!r}",
            )
        return True

    def _resumed(self, frame: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        """RESUMED: it answers the RESUME, speaks for the old session, and its
        ``interrupts`` answer the INTERRUPTs whose ACK the client may have missed."""
        if frame.get("ref") != self._resume_msg_id:
            self._fail(
                RESUME_GUARANTEE,
                f"RESUMED ref={frame.get('ref')!r}, the RESUME was {self._resume_msg_id!r}",
            )
        if frame.get("session_id") != self._session_id:
            self._fail(
                RESUME_GUARANTEE,
                f"RESUMED for session {frame.get('session_id')!r}, not {self._session_id!r}",
            )
        interrupts = payload.get("interrupts") or {}
        for msg_id, named in interrupts.items():
            interrupt = self._interrupts.pop(str(msg_id), None)
            if interrupt is None:
                if str(msg_id) not in self._answered:
                    self._fail(
                        3, f"RESUMED lists INTERRUPT {msg_id!r}, which this client never sent"
                    )
                continue  # its ACK had arrived: the server could not know
            _remember(self._answered, interrupt.msg_id, "ack", self.memory)
            for rid in named or []:
                request = self._requests.get(rid)
                if request is None:
                    continue  # its DONE arrived before the drop
                if request.acked_by not in (None, msg_id) or request.cut_by_resumed is not None:
                    self._fail(6, f"{rid!r} is named by more than one INTERRUPT's answer")
                request.cut_by_resumed = str(msg_id)

    def _error(self, frame: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        interrupt = self._interrupts.pop(str(frame.get("ref")), None)
        if interrupt is not None:
            _remember(self._answered, interrupt.msg_id, "error", self.memory)
        rid = frame.get("request_id")
        # A REQUEST refused with an ERROR was never accepted: it gets no DONE. (A
        # DUPLICATE_REQUEST_ID refuses the new REQUEST, not the running one.)
        if isinstance(rid, str) and payload.get("code") != "DUPLICATE_REQUEST_ID":
            request = self._requests.get(rid)
            if request is not None and request.frames == 0:
                request.refused = True

    def _stream(self, rid: str, payload: Mapping[str, Any]) -> None:
        request = self._reply_frame("STREAM", rid, payload.get("seq"), "frames")
        if request is not None:
            request.frames += 1

    def _audio(self, rid: str, seq: Any) -> None:
        request = self._reply_frame("AUDIO", rid, seq, "audio_frames")
        if request is not None:
            request.audio_frames += 1

    def _reply_frame(
        self, kind: str, rid: str, seq: Any, counter: Literal["frames", "audio_frames"]
    ) -> _Request | None:
        """Check a frame of a request's reply, STREAM or AUDIO (each has its own
        ``seq``, counted in ``counter``): guarantees 1 and 8 (a request this client
        is waiting on), 5 (not after the ACK that named it) and 2 (contiguous seq).
        Return the request to count the frame on, or ``None``."""
        request = self._requests.get(rid)
        if request is None:
            if rid in self._ended:
                self._fail(1, f"{kind} seq={seq} of {rid!r} after its DONE")
            else:
                self._fail(8, f"{kind} for request {rid!r}, which this client never sent")
            return None
        if request.acked_by is not None:
            self._fail(
                5, f"{kind} seq={seq} of {rid!r} after the ACK of {request.acked_by!r} named it"
            )
        expected = getattr(request, counter)
        if seq != expected:
            self._fail(2, f"{kind} of {rid!r} has seq={seq}, expected {expected}")
        return request

    def _done(self, rid: str, payload: Mapping[str, Any]) -> None:
        request = self._requests.get(rid)
        if request is None:
            if rid in self._ended:
                self._fail(1, f"a second DONE for {rid!r}")
            else:
                self._fail(8, f"DONE for request {rid!r}, which this client never sent")
            return
        request.done = payload
        error = payload.get("error")
        gap = isinstance(error, Mapping) and error.get("code") == "RESUME_GAP"
        if gap:
            # The frames lost in the gap were written, so they count: the client got fewer.
            frames = payload.get("frames")
            if not isinstance(frames, int) or frames < request.frames:
                self._fail(
                    2,
                    f"RESUME_GAP DONE of {rid!r} says frames={frames}, "
                    f"the client got {request.frames}",
                )
        elif payload.get("frames") != request.frames:
            self._fail(
                2,
                f"DONE of {rid!r} says frames={payload.get('frames')}, the client got {request.frames}",
            )
        cut = request.acked_by or request.cut_by_resumed
        if cut is not None and payload.get("interrupted") is not True:
            self._fail(5, f"DONE of {rid!r} after an ACK that named it is not interrupted: true")
        # The id may be reused from now on.
        del self._requests[rid]
        _remember(self._ended, rid, None, self.memory)

    def _ack(self, frame: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        ref = frame.get("ref")
        interrupt = self._interrupts.pop(str(ref), None)
        answered = self._answered.get(str(ref))
        if interrupt is None and answered == "ack":
            self._fail(3, f"a second INTERRUPT_ACK for {ref!r}")
            return
        if interrupt is None and answered is None:
            self._fail(3, f"INTERRUPT_ACK for {ref!r}, which this client never sent")
            return
        _remember(self._answered, str(ref), "ack", self.memory)
        if interrupt is None:
            return  # the INTERRUPT was refused with an ERROR, then acknowledged anyway
        named = payload.get("interrupted") or []
        if payload.get("interrupted_count") != len(named):
            self._fail(
                3,
                f"ACK {ref!r}: interrupted_count={payload.get('interrupted_count')} but {len(named)} ids",
            )
        for rid in named:
            request = self._requests.get(rid)
            if request is None:
                self._fail(6, f"ACK {ref!r} names {rid!r}, which has already ended")
                continue
            if request.acked_by is not None:
                self._fail(
                    6, f"{rid!r} is named by the ACKs of both {request.acked_by!r} and {ref!r}"
                )
            if interrupt.target is None and request.sent_at > interrupt.sent_at:
                self._fail(7, f"interrupt-all {ref!r} cut {rid!r}, which was sent after it")
            if interrupt.target is not None and interrupt.target != rid:
                self._fail(
                    3, f"ACK {ref!r} names {rid!r}, but the INTERRUPT targeted {interrupt.target!r}"
                )
            request.acked_by = str(ref)

    def finish(self) -> list[Violation]:
        """Check the end state: every accepted REQUEST has its DONE, every INTERRUPT its ACK."""
        before = len(self.violations)
        for request in self._requests.values():
            if request.done is None and not request.refused:
                self._fail(1, f"request {request.request_id!r} never got a DONE")
        for interrupt in self._interrupts.values():
            self._fail(3, f"INTERRUPT {interrupt.msg_id!r} never got an INTERRUPT_ACK")
        return self.violations[before:]
