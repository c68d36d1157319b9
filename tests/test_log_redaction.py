"""Secrets stay out of the log whatever query parameter carries them: refused
handshakes are logged with their whole query string hidden, except known-safe keys,
and any value equal to a configured secret is hidden wherever it appears."""

from __future__ import annotations

import pytest
from handshakes import raw_handshake

from trio_agent.server.redaction import REDACTED, redact_target

TOKEN = "s3cret-T0ken"


def logged_text(records) -> str:
    return "\n".join(f"{r['message']} {r['extra']!r}" for r in records)


@pytest.mark.parametrize(
    "query",
    [
        f"TOKEN={TOKEN}",
        f"Token={TOKEN}",
        f"access-token={TOKEN}",
        f"api_key={TOKEN}",
        f"x=1&password={TOKEN}",
        f"agent=lorem&{TOKEN}",
    ],
)
async def test_a_refused_handshake_logs_no_token_under_any_query_name(
    start_server, log_records, query
):
    server = await start_server(token=TOKEN)
    response = await raw_handshake(server.port, f"/ws?{query}")
    assert response.status == 401
    refused = [r for r in log_records if r["message"] == "handshake refused"]
    assert refused, "the refusal is logged"
    assert TOKEN not in logged_text(log_records)


async def test_without_a_token_the_query_of_a_refused_handshake_is_hidden(
    start_server, log_records
):
    """No token configured, so no value to compare with: the whole query is hidden."""
    server = await start_server()
    response = await raw_handshake(
        server.port, "/ws?api_key=sk-live-123&agent=lorem", [("Origin", "http://evil.example")]
    )
    assert response.status == 403
    text = logged_text(log_records)
    assert "sk-live-123" not in text
    assert "agent=lorem" in text  # a known-safe key stays readable


async def test_a_token_also_given_in_another_place_is_hidden_in_the_accepted_log_line(
    start_server, log_records
):
    server = await start_server(token=TOKEN)
    response = await raw_handshake(
        server.port, f"/ws?Token={TOKEN}", [("Authorization", f"Bearer {TOKEN}")]
    )
    assert response.status == 101
    assert any(r["message"] == "handshake accepted" for r in log_records)
    assert TOKEN not in logged_text(log_records)


def test_redact_target_hides_every_value_but_safe_keys_and_every_secret():
    assert redact_target("/ws") == "/ws"
    assert redact_target("/ws?agent=lorem") == "/ws?agent=lorem"
    assert redact_target("/ws?TOKEN=abc&agent=lorem") == f"/ws?TOKEN={REDACTED}&agent=lorem"
    assert redact_target("/ws?bare&k=v") == f"/ws?{REDACTED}&k={REDACTED}"
    assert redact_target(f"/ws/{TOKEN}?agent={TOKEN}", secrets=[TOKEN]) == (
        f"/ws/{REDACTED}?agent={REDACTED}"
    )
    # Percent-encoded, the secret is still found.
    assert TOKEN not in redact_target("/ws/s3cret%2DT0ken", secrets=[TOKEN]).replace("%2D", "-")
    assert redact_target("/ws#frag") == f"/ws#{REDACTED}"
