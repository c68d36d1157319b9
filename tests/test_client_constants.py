"""agent-client.js agrees with the Python side on every constant of the wire.

The browser client is one JavaScript module with no build step, so it cannot import
``trio_agent.protocol.constants``: it spells the constants again. This test reads
them out of the file and holds each one to its Python definition, so that a change
on either side fails here, naming the constant, instead of in a browser.
"""

from __future__ import annotations

import inspect
import json
import re
from importlib.resources import files

import pytest

from trio_agent.client import InterruptHandle, open_agent_client
from trio_agent.protocol import (
    DEFAULT_INTERRUPT_REASON,
    MAX_REASON_CHARS,
    PCM_S16LE,
    SUBPROTOCOL,
    TOKEN_QUERY_PARAMETER,
    TOKEN_SUBPROTOCOL_PREFIX,
)
from trio_agent.server import ServerConfig

JS = (files("trio_agent.server.web") / "static" / "agent-client.js").read_text()

#: Each exported constant of agent-client.js, and the Python constant it must equal.
WIRE_CONSTANTS = {
    "PROTOCOL_NAME": ("trio_agent.protocol.SUBPROTOCOL", SUBPROTOCOL),
    "TOKEN_PREFIX": ("trio_agent.protocol.TOKEN_SUBPROTOCOL_PREFIX", TOKEN_SUBPROTOCOL_PREFIX),
    "DEFAULT_REASON": ("trio_agent.protocol.DEFAULT_INTERRUPT_REASON", DEFAULT_INTERRUPT_REASON),
    "PCM_S16LE": ("trio_agent.protocol.PCM_S16LE", PCM_S16LE),
    "MAX_REASON_CHARS": ("trio_agent.protocol.MAX_REASON_CHARS", MAX_REASON_CHARS),
}


def exported_constants() -> dict[str, object]:
    """``export const NAME = <JSON literal>;`` lines of agent-client.js, parsed."""
    found = re.findall(r"^export const ([A-Z][A-Z0-9_]*) = (.+?);$", JS, flags=re.M)
    assert found, "agent-client.js exports no constants: has the constants block moved?"
    return {name: json.loads(literal) for name, literal in found}


def option_default(option: str) -> int:
    """The default of a constructor option, from ``options.<option> ?? <number>``."""
    match = re.search(rf"options\.{option} \?\? (\d+)", JS)
    assert match, f"agent-client.js no longer defaults options.{option} to a number"
    return int(match.group(1))


@pytest.mark.parametrize("js_name", sorted(WIRE_CONSTANTS))
def test_a_wire_constant_of_the_browser_client_equals_its_python_definition(js_name):
    python_name, python_value = WIRE_CONSTANTS[js_name]
    constants = exported_constants()
    assert js_name in constants, f"agent-client.js no longer exports {js_name}"
    assert constants[js_name] == python_value, (
        f"agent-client.js {js_name} is {constants[js_name]!r}, "
        f"but {python_name} is {python_value!r}: change both, or neither"
    )


def test_every_exported_constant_of_the_browser_client_is_checked():
    unchecked = sorted(set(exported_constants()) - set(WIRE_CONSTANTS))
    assert not unchecked, (
        f"agent-client.js exports {unchecked}: name the Python constant each must equal "
        "in WIRE_CONSTANTS"
    )


def test_the_browser_client_offers_the_token_as_a_subprotocol_never_in_the_url():
    # The server also reads ?token= (TOKEN_QUERY_PARAMETER) for clients that can do
    # nothing else; a URL ends up in logs and history, so the browser client never uses it.
    assert "PROTOCOL_NAME, TOKEN_PREFIX + this._token" in JS
    for spelling in (f"?{TOKEN_QUERY_PARAMETER}=", f"&{TOKEN_QUERY_PARAMETER}="):
        assert spelling not in JS, f"agent-client.js puts the token in the URL ({spelling})"


def test_the_browser_and_python_clients_share_their_timing_defaults():
    heartbeat_s = inspect.signature(open_agent_client).parameters["heartbeat_s"].default
    ack_timeout_s = inspect.signature(InterruptHandle.acknowledged).parameters["timeout"].default
    assert option_default("heartbeatMs") == heartbeat_s * 1000, (
        f"agent-client.js heartbeatMs defaults to {option_default('heartbeatMs')}, "
        f"open_agent_client's heartbeat_s to {heartbeat_s}"
    )
    assert option_default("ackTimeoutMs") == ack_timeout_s * 1000, (
        f"agent-client.js ackTimeoutMs defaults to {option_default('ackTimeoutMs')}, "
        f"InterruptHandle.acknowledged's timeout to {ack_timeout_s}"
    )


def test_the_browser_clients_heartbeat_keeps_a_quiet_session_from_the_idle_timeout():
    idle_timeout_ms = ServerConfig().idle_timeout_s * 1000
    assert option_default("heartbeatMs") < idle_timeout_ms, (
        f"agent-client.js heartbeatMs ({option_default('heartbeatMs')}) must be shorter than "
        f"the server's idle_timeout_s ({idle_timeout_ms / 1000:g} s)"
    )
