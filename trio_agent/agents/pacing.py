"""Sleeps that share timers: many paced tasks, one Trio timer per millisecond.

:func:`sleep_until` cancels exactly like :func:`trio.sleep_until`, but ends up to
:data:`GRID_S` late. docs/performance.md explains why and how the sleeps are shared.
"""

from __future__ import annotations

import math
from typing import Final

import trio

#: The grid deadlines are rounded up to, in seconds.
GRID_S: Final = 0.001

#: A deadline this close above a grid point (in grid steps: a nanosecond) counts
#: as on it: ``0.02 / 0.001`` is ``20.000000000000004`` in floating point, and
#: 20 ms must not become 21.
_ON_GRID: Final = 1e-6


class _GridPoint:
    """The tasks sleeping until one grid point: a leader in ``trio.sleep_until``
    and its followers in ``lot``."""

    __slots__ = ("lot", "reached")

    def __init__(self) -> None:
        self.lot = trio.lowlevel.ParkingLot()
        #: The leader's sleep ended normally: the grid point's time has come.
        self.reached = False


class SharedTimers:
    """Sleeps rounded up to a grid, one Trio sleep per grid point.

    Use the module's :func:`sleep_until` and :func:`sleep`, which keep one
    instance per Trio run; a separate instance only shares among its own callers.
    """

    __slots__ = ("_points", "grid_s")

    def __init__(self, grid_s: float = GRID_S) -> None:
        if not grid_s > 0:
            raise ValueError("the grid must be positive")
        self.grid_s = grid_s
        self._points: dict[int, _GridPoint] = {}

    def grid_time(self, deadline: float) -> float:
        """When a sleep until ``deadline`` ends: ``deadline`` rounded up to the grid."""
        return self._index(deadline) * self.grid_s

    def _index(self, deadline: float) -> int:
        return math.ceil(deadline / self.grid_s - _ON_GRID)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` rounded up to the grid (see the module docstring).

        A checkpoint, like :func:`trio.sleep_until`; cancellation raises at once.
        """
        if math.isinf(deadline):
            await trio.sleep_until(deadline)  # no grid point at infinity
            return
        index = self._index(deadline)
        point = self._points.get(index)
        if point is None:
            point = self._points[index] = _GridPoint()
        else:
            await point.lot.park()
            if point.reached:
                return
            # The leader was cancelled and handed the grid point to this task.
        await self._lead(index, point)

    async def _lead(self, index: int, point: _GridPoint) -> None:
        try:
            await trio.sleep_until(index * self.grid_s)
            point.reached = True
        finally:
            if point.reached or not point.lot:
                # Done with: every follower returns.
                del self._points[index]
                point.lot.unpark_all()
            else:
                # Cancelled with followers: the first of them leads now. (Woken,
                # it leads even if it is cancelled before it runs: its sleep
                # then raises at once and it hands over in turn.)
                point.lot.unpark()

    @property
    def sleeping(self) -> int:
        """Tasks sleeping here now (leaders and followers)."""
        return sum(1 + len(point.lot) for point in self._points.values())


_RUN_TIMERS: trio.lowlevel.RunVar[SharedTimers] = trio.lowlevel.RunVar("trio_agent.agents.pacing")


def shared_timers() -> SharedTimers:
    """The :class:`SharedTimers` of the current Trio run (created on first use)."""
    try:
        return _RUN_TIMERS.get()
    except LookupError:
        timers = SharedTimers()
        _RUN_TIMERS.set(timers)
        return timers


async def sleep_until(deadline: float) -> None:
    """:func:`trio.sleep_until`, rounded up to the millisecond and sharing its timer
    with every task of this run that sleeps until the same millisecond."""
    await shared_timers().sleep_until(deadline)


async def sleep(seconds: float) -> None:
    """:func:`trio.sleep` on the shared grid: until ``trio.current_time() + seconds``
    rounded up to the millisecond."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    await sleep_until(trio.current_time() + seconds)
