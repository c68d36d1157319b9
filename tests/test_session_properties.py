"""Random conversations keep every guarantee.

Hypothesis draws a server configuration and a sequence of client actions (valid
REQUESTs for well-behaved and failing agents, INTERRUPTs of any target, HEARTBEATs,
garbage of every kind, pauses) and plays it against a live session over memory
streams on a MockClock. A reader task runs the whole time, so every frame the
server sends goes through the GuaranteeChecker as it arrives; at the end the
session must still answer, and every accepted REQUEST and every INTERRUPT must
have had its answer.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing_agents import endless, fails_after_two, refuses
from trio_websocket import ConnectionClosed

from trio_agent import AgentServer, ServerConfig
from trio_agent import agents as builtin
from trio_agent.protocol.messages import ProtocolError, parse_client_message
from trio_agent.testing.wire import WireClient, connect

AGENTS = {
    "lorem": builtin.lorem,
    "echo": builtin.echo,
    "endless": endless(),
    "fails": fails_after_two,
    "refuses": refuses,
}


def is_refused(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        return True
    try:
        parse_client_message(raw)
    except ProtocolError:
        return True
    return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
garbage = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(
        [
            "{",
            "[]",
            "null",
            '{"msg_type": "REQUEST"}',
            '{"msg_type": "INTERRUPT", "msg_id": "\\ud800"}',
            '{"msg_type": "HEARTBEAT", "msg_id": 7}',
            '{"msg_type": "STREAM", "msg_id": "x", "request_id": "r0"}',
            '{"msg_type": "REQUEST", "request_id": "bad id", "payload": {"input": ""}}',
            '{"msg_type": "REQUEST", "request_id": "r", "payload": {"input": "\\udfff"}}',
            '{"msg_type": "REQUEST", "request_id": "r", "payload": {"input": "", "timeout_s": 0}}',
        ]
    ),
    st.fixed_dictionaries(
        {"msg_type": st.sampled_from(["REQUEST", "INTERRUPT", "HEARTBEAT", "DONE"]) | json_values},
        optional={"msg_id": json_values, "request_id": json_values, "payload": json_values},
    ).map(json.dumps),
).filter(is_refused)

actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("request"),
            st.sampled_from([*AGENTS, "nope"]),
            st.integers(0, 20),
            st.sampled_from([0, 100]),
            st.booleans(),  # reuse the id of a request whose DONE arrived
        ),
        st.tuples(st.just("interrupt"), st.integers(-2, 10)),
        st.tuples(st.just("heartbeat")),
        st.tuples(st.just("garbage"), garbage),
        st.tuples(st.just("pause"), st.sampled_from([0.0, 0.001, 0.05, 0.5])),
    ),
    max_size=25,
)

configs = st.fixed_dictionaries(
    {
        "stream_lane_capacity": st.sampled_from([1, 2, 8, 32]),
        "max_concurrent_requests": st.sampled_from([1, 2, 8]),
        "lockstep": st.booleans(),
        "rate": st.sampled_from([(50.0, 100), (20.0, 4)]),
    }
)


class ScriptedSession:
    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.sent_ids: list[str] = []
        self.count = 0

    def fresh_id(self) -> str:
        self.count += 1
        return f"r{self.count}"

    def finished_ids(self) -> list[str]:
        checker = self.client.checker
        return [
            rid for rid in self.sent_ids if rid in checker._ended and rid not in checker._requests
        ]

    async def play(self, action: tuple[Any, ...]) -> None:
        c = self.client
        kind = action[0]
        if kind == "request":
            _, agent, words, words_per_s, reuse = action
            finished = self.finished_ids()
            rid = finished[0] if reuse and finished else self.fresh_id()
            self.sent_ids.append(rid)
            await c.request(
                rid, "some input words", agent=agent, words=words, words_per_s=words_per_s
            )
        elif kind == "interrupt":
            index = action[1]
            if index == -2:
                await c.interrupt()
            elif index == -1 or not self.sent_ids:
                await c.interrupt("ghost")
            else:
                await c.interrupt(self.sent_ids[index % len(self.sent_ids)])
        elif kind == "heartbeat":
            await c.heartbeat()
        elif kind == "garbage":
            await c.send_raw(action[1])
        else:
            await trio.sleep(action[1])


async def read_everything(client: WireClient, answers: dict[str, trio.Event]) -> None:
    try:
        while True:
            frame = await client.recv()  # asserts that the frame broke no guarantee
            if frame.get("ref") in answers:
                answers[frame["ref"]].set()
    except ConnectionClosed:
        pass


async def answered(client: WireClient, answers: dict[str, trio.Event], msg_id: str) -> None:
    """Wait until the reader has received the answer to ``msg_id``."""
    if not any(f.get("ref") == msg_id for f in client.received):
        await answers.setdefault(msg_id, trio.Event()).wait()


async def converse(config: ServerConfig, lockstep: bool, script: list[tuple[Any, ...]]) -> None:
    server = AgentServer(config, AGENTS)
    async with (
        connect(server, "memory", lockstep=lockstep) as client,
        trio.open_nursery() as nursery,
    ):
        answers: dict[str, trio.Event] = {}
        nursery.start_soon(read_everything, client, answers)
        conversation = ScriptedSession(client)
        for action in script:
            await conversation.play(action)
        # Earn the whole burst back, so the wind-down is not rate limited, then
        # cut whatever still runs and let every queued frame arrive.
        await trio.sleep(config.rate_limit_burst / config.rate_limit_per_s + 1)
        await answered(client, answers, await client.interrupt())
        # The session survived all of it and still answers.
        await answered(client, answers, await client.heartbeat())
        await trio.testing.wait_all_tasks_blocked()
        client.assert_guarantees()
        nursery.cancel_scope.cancel()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(config=configs, script=actions)
def test_random_conversations_keep_every_guarantee(config, script):
    rate, burst = config["rate"]
    server_config = replace(
        ServerConfig(),
        port=0,
        idle_timeout_s=0,
        slow_step_warn_s=0,
        stream_lane_capacity=config["stream_lane_capacity"],
        max_concurrent_requests=config["max_concurrent_requests"],
        rate_limit_per_s=rate,
        rate_limit_burst=burst,
        rate_limit_close_after=10**6,  # refused, never closed: every frame gets an answer
    )
    trio.run(
        converse,
        server_config,
        config["lockstep"],
        script,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
