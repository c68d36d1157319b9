"""What observability reads of the server: the facts, as structural types.

The trace and the metrics describe requests and frames that the server owns
(``RequestRecord``, ``Outbound``). They read a few attributes of each, and only
read them, so they name those attributes here as :class:`~typing.Protocol` types
instead of importing the server: the arrow points from the server to this layer,
never back. mypy checks that the server's classes fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio

    from trio_agent.protocol.constants import FrameKind
    from trio_agent.protocol.messages import DoneStatus


class RequestFacts(Protocol):
    """A request as the server keeps it (``trio_agent.server.registry.RequestRecord``)."""

    @property
    def request_id(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def scope(self) -> trio.CancelScope: ...
    @property
    def status(self) -> DoneStatus | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def cancelled_by(self) -> str | None: ...
    @property
    def interrupted(self) -> bool: ...
    @property
    def frames_queued(self) -> int: ...
    @property
    def frames_written(self) -> int: ...


class FrameFacts(Protocol):
    """A frame on its way to the socket (``trio_agent.server.lanes.Outbound``)."""

    @property
    def kind(self) -> FrameKind: ...
    @property
    def data(self) -> str | bytes | None: ...
    @property
    def record(self) -> RequestFacts | None: ...
    @property
    def read_at(self) -> float | None: ...
