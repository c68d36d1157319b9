"""Shared timers: rounding, sharing, and cancellation of leaders and followers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_agent.agents import pacing
from trio_agent.agents.pacing import SharedTimers


def test_deadlines_round_up_to_the_millisecond_and_never_down():
    timers = SharedTimers()
    assert timers.grid_time(0.02) == pytest.approx(0.02, abs=1e-12)  # 20.000000000000004 ms
    assert timers.grid_time(0.0201) == pytest.approx(0.021, abs=1e-12)
    assert timers.grid_time(1.0) == pytest.approx(1.0, abs=1e-12)
    # Less than a nanosecond above a grid point is floating point noise: on the point.
    assert timers.grid_time(1.0 + 1e-10) == pytest.approx(1.0, abs=1e-12)
    assert timers.grid_time(1.0 + 1e-7) == pytest.approx(1.001, abs=1e-12)


async def test_sleepers_due_in_the_same_millisecond_share_one_trio_sleep(
    autojump_clock, monkeypatch
):
    timers = SharedTimers()
    leaders: list[int] = []
    lead = SharedTimers._lead

    async def counting_lead(self: SharedTimers, index: int, point: object) -> None:
        leaders.append(index)
        await lead(self, index, point)

    monkeypatch.setattr(SharedTimers, "_lead", counting_lead)
    woke: dict[float, float] = {}

    async def sleeper(deadline: float) -> None:
        await timers.sleep_until(deadline)
        woke[deadline] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for deadline in (0.0101, 0.0102, 0.0109, 0.011, 0.0205):
            nursery.start_soon(sleeper, deadline)
        await trio.testing.wait_all_tasks_blocked()
        assert timers.sleeping == 5
    # Four deadlines in (10, 11] ms share one sleep; 20.5 ms has its own.
    assert sorted(leaders) == [11, 21]
    for deadline, at in woke.items():
        assert deadline <= at + 1e-12
        assert at == pytest.approx(timers.grid_time(deadline), abs=1e-12)
    assert timers.sleeping == 0


async def test_a_cancelled_leader_hands_over_and_the_followers_still_wake_on_time(autojump_clock):
    timers = SharedTimers()
    woke: list[float] = []

    async def follower() -> None:
        await timers.sleep_until(0.05)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as leader_scope:
            nursery.start_soon(follower)  # starts after us: we lead
            nursery.start_soon(follower)

            async def cut_the_leader() -> None:
                await trio.sleep(0.01)
                leader_scope.cancel()

            nursery.start_soon(cut_the_leader)
            await timers.sleep_until(0.05)
            pytest.fail("the leader was not cancelled")  # pragma: no cover
        assert trio.current_time() == pytest.approx(0.01)
        assert woke == []
    assert woke == [pytest.approx(0.05), pytest.approx(0.05)]
    assert timers.sleeping == 0


async def test_an_heir_cancelled_before_it_runs_hands_over_in_turn(autojump_clock):
    timers = SharedTimers()
    woke: list[str] = []
    scopes = {name: trio.CancelScope() for name in ("a", "b", "c", "d")}

    async def sleeper(name: str) -> None:
        with scopes[name]:
            await timers.sleep_until(0.05)
            woke.append(name)
        if name == "a":
            # "a" led and handed over to "b", which has not run yet: cut it now.
            scopes["b"].cancel()

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(sleeper, name)
            await trio.testing.wait_all_tasks_blocked()  # "a" leads, "b" then "c" follow
        scopes["a"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 0
        assert timers.sleeping == 1  # "c" leads now
        # A sleeper arriving now follows the new leader rather than leading too.
        nursery.start_soon(sleeper, "d")
        await trio.testing.wait_all_tasks_blocked()
        assert timers.sleeping == 2
    assert sorted(woke) == ["c", "d"]
    assert trio.current_time() == pytest.approx(0.05)
    assert timers.sleeping == 0


async def test_a_sleep_until_infinity_sleeps_until_cancelled(autojump_clock):
    with trio.move_on_after(10) as scope:
        await pacing.sleep(float("inf"))
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(10)


async def test_a_cancelled_follower_raises_at_once_and_the_others_sleep_on(autojump_clock):
    timers = SharedTimers()
    woke: list[str] = []

    async def sleeper(name: str) -> None:
        await timers.sleep_until(0.05)
        woke.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "leader")
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01) as follower_scope:
            await timers.sleep_until(0.05)
        assert follower_scope.cancelled_caught
        assert trio.current_time() == pytest.approx(0.01)
    assert woke == ["leader"]
    assert trio.current_time() == pytest.approx(0.05)


async def test_a_deadline_in_the_past_is_a_checkpoint_and_returns():
    with trio.CancelScope() as scope:
        scope.cancel()
        await pacing.sleep_until(trio.current_time() - 1)
        pytest.fail("not a checkpoint")  # pragma: no cover
    await pacing.sleep_until(trio.current_time() - 1)


async def test_each_run_has_its_own_timers_and_sleep_measures_from_now(autojump_clock):
    timers = pacing.shared_timers()
    assert pacing.shared_timers() is timers
    start = trio.current_time()
    await pacing.sleep(0.25)
    assert trio.current_time() == pytest.approx(timers.grid_time(start + 0.25), abs=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        await pacing.sleep(-1)


def test_runs_do_not_share_timers():
    seen: list[SharedTimers] = []

    async def main() -> None:
        seen.append(pacing.shared_timers())

    trio.run(main)
    trio.run(main)
    assert seen[0] is not seen[1]
