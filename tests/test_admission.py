"""The handshake admission policy and the redaction of secrets, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.server.admission import (
    SUBPROTOCOL,
    Accept,
    AdmissionPolicy,
    HandshakeFacts,
    Refuse,
    admit,
    parse_allowed_origins,
    presented_tokens,
)
from trio_agent.server.config import ServerConfig, parse_config
from trio_agent.server.redaction import REDACTED, redact_headers, redact_subprotocols, redact_target

TOKEN = "s3cret-T0ken"
#: The Host allow-list has tests of its own (test_host_allowlist.py); these check the rest.
ANY_HOST = frozenset({"*"})
OPEN = AdmissionPolicy(path="/ws", allowed_hosts=ANY_HOST)
LOCKED = AdmissionPolicy(path="/ws", allowed_hosts=ANY_HOST, token=TOKEN)


def facts(
    target: str = "/ws",
    host: str = "example.com:8765",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    subprotocols: tuple[str, ...] = (),
) -> HandshakeFacts:
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    return HandshakeFacts(
        target=target,
        host=host,
        headers=[(k.lower().encode(), v.encode()) for k, v in pairs],
        subprotocols=subprotocols,
    )


def decide(f: HandshakeFacts, policy: AdmissionPolicy = OPEN, **state) -> Accept | Refuse:
    return admit(
        f, policy, draining=state.get("draining", False), sessions=state.get("sessions", 0)
    )


def status(f: HandshakeFacts, policy: AdmissionPolicy = OPEN, **state) -> int:
    decision = decide(f, policy, **state)
    return decision.status if isinstance(decision, Refuse) else 101


# --------------------------------------------------------------------------- path, state


def test_other_paths_are_404_and_the_query_does_not_matter():
    assert status(facts("/elsewhere")) == 404
    assert status(facts("/ws/")) == 404
    assert status(facts("/ws?x=1")) == 101


def test_draining_and_full_are_503():
    assert status(facts(), draining=True) == 503
    full = AdmissionPolicy(path="/ws", allowed_hosts=ANY_HOST, max_sessions=2)
    assert status(facts(), full, sessions=1) == 101
    refused = decide(facts(), full, sessions=2)
    assert isinstance(refused, Refuse)
    assert refused.status == 503
    assert b"full" in refused.body


# --------------------------------------------------------------------------- token


@pytest.mark.parametrize(
    "how",
    [
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"headers": {"Authorization": f"bearer   {TOKEN} "}},
        {"target": f"/ws?token={TOKEN}"},
        {"target": f"/ws?a=1&token={TOKEN}&b=2"},
        {"subprotocols": (SUBPROTOCOL, f"trio-agent.token.{TOKEN}")},
        {"subprotocols": (f"trio-agent.token.{TOKEN}", SUBPROTOCOL)},
    ],
)
def test_the_token_is_accepted_in_each_of_its_three_places(how):
    decision = decide(facts(**how), LOCKED)
    assert isinstance(decision, Accept)
    # The token subprotocol is never selected (it would echo the secret).
    assert decision.subprotocol in (None, SUBPROTOCOL)


@pytest.mark.parametrize(
    "how",
    [
        {},
        {"headers": {"Authorization": "Bearer wrong"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
        {"target": "/ws?token="},
        {"target": f"/ws?token={TOKEN[:-1]}"},
        {"target": f"/ws?tokens={TOKEN}"},
        {"subprotocols": (SUBPROTOCOL, "trio-agent.token.nope")},
        # Two credentials, one wrong: refused, whichever is right.
        {"headers": {"Authorization": f"Bearer {TOKEN}"}, "target": "/ws?token=nope"},
        {"headers": [("Authorization", "Bearer nope"), ("Authorization", f"Bearer {TOKEN}")]},
    ],
)
def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(how):
    decision = decide(facts(**how), LOCKED)
    assert isinstance(decision, Refuse)
    assert decision.status == 401
    assert (b"WWW-Authenticate", b'Bearer realm="trio-agent"') in decision.headers
    assert TOKEN.encode() not in decision.body


def test_without_a_configured_token_tokens_are_ignored():
    assert status(facts(target="/ws?token=anything")) == 101
    decision = decide(facts(subprotocols=(SUBPROTOCOL, "trio-agent.token.x")))
    assert decision == Accept(SUBPROTOCOL)


def test_a_token_subprotocol_without_the_protocol_is_400():
    """A browser fails a handshake whose answer selects none of its offers, so the
    token may only ride along with trio-agent.v1, which is what gets selected."""
    decision = decide(facts(subprotocols=(f"trio-agent.token.{TOKEN}",)), LOCKED)
    assert isinstance(decision, Refuse)
    assert decision.status == 400
    assert SUBPROTOCOL.encode() in decision.body


def test_subprotocol_choice():
    assert decide(facts()) == Accept(None)
    assert decide(facts(subprotocols=("chat", SUBPROTOCOL))) == Accept(SUBPROTOCOL)
    assert decide(facts(subprotocols=("chat",))) == Accept(None)


def test_presented_tokens_decodes_the_query():
    assert presented_tokens(facts(target="/ws?token=a%2Bb&x=1")) == ["a+b"]


# --------------------------------------------------------------------------- origin


@pytest.mark.parametrize(
    ("origin", "host", "expected"),
    [
        ("http://example.com:8765", "example.com:8765", 101),
        ("HTTP://EXAMPLE.com:8765", "example.com:8765", 101),
        ("https://example.com", "example.com", 101),
        ("https://example.com:443", "example.com", 101),
        ("http://example.com", "example.com:80", 101),
        ("http://[::1]:8765", "[::1]:8765", 101),
        ("http://evil.example", "example.com:8765", 403),
        ("http://example.com:9999", "example.com:8765", 403),
        ("http://example.com.evil.example:8765", "example.com:8765", 403),
        ("https://example.com", "example.com:80", 403),
        ("null", "example.com:8765", 403),
        ("not a url", "example.com:8765", 403),
        ("http://example.com:8765/path", "example.com:8765", 403),
    ],
)
def test_without_a_list_a_browser_origin_must_match_the_host(origin, host, expected):
    assert status(facts(host=host, headers={"Origin": origin})) == expected


def test_no_origin_header_is_a_non_browser_client_and_allowed():
    assert status(facts(host="anything")) == 101


def test_an_explicit_list_is_exhaustive():
    policy = AdmissionPolicy(
        path="/ws",
        allowed_hosts=ANY_HOST,
        allowed_origins=parse_allowed_origins("https://app.example, http://localhost:3000"),
    )
    assert status(facts(headers={"Origin": "https://app.example"}), policy) == 101
    assert status(facts(headers={"Origin": "https://app.example:443"}), policy) == 101
    assert status(facts(headers={"Origin": "http://localhost:3000"}), policy) == 101
    # Same-origin is not implied once a list is given.
    assert (
        status(facts(host="example.com", headers={"Origin": "http://example.com"}), policy) == 403
    )
    assert status(facts(headers={"Origin": "http://app.example"}), policy) == 403


def test_star_allows_any_origin_but_only_when_set():
    star = AdmissionPolicy(
        path="/ws", allowed_hosts=ANY_HOST, allowed_origins=parse_allowed_origins("*")
    )
    assert status(facts(headers={"Origin": "http://evil.example"}), star) == 101
    assert status(facts(headers={"Origin": "null"}), star) == 101


def test_two_origin_headers_are_refused():
    headers = [("Origin", "http://example.com:8765"), ("Origin", "http://example.com:8765")]
    assert status(facts(headers=headers)) == 403


def test_origin_is_checked_before_the_token():
    """A foreign page learns nothing about the token: 403 whatever it sends."""
    f = facts(headers={"Origin": "http://evil.example", "Authorization": "Bearer wrong"})
    assert status(f, LOCKED) == 403
    f = facts(headers={"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"})
    assert status(f, LOCKED) == 403


def test_refusal_order_path_origin_token_then_state():
    bad_everything = facts(
        "/nope", headers={"Origin": "http://evil.example"}, subprotocols=("trio-agent.token.x",)
    )
    assert status(bad_everything, LOCKED, draining=True, sessions=10**6) == 404
    no_token = facts(subprotocols=("trio-agent.token.x",))
    assert status(no_token, LOCKED, draining=True) == 401
    assert status(facts(target=f"/ws?token={TOKEN}"), LOCKED, draining=True) == 503


@pytest.mark.parametrize("bad", ["example.com", "http://", "ftp://example.com", "http://a/b", "*x"])
def test_allow_origin_entries_must_be_origins(bad):
    with pytest.raises(ValueError, match="not an origin"):
        parse_allowed_origins(bad)


def test_configuration_of_the_policy():
    config = parse_config(
        ["--allow-origin", "https://a.example,*", "--max-sessions", "3"],
        {"TRIO_AGENT_TOKEN": TOKEN},
    )
    policy = AdmissionPolicy.from_config(config)
    assert policy.token == TOKEN
    assert policy.allowed_origins == {"https://a.example", "*"}
    assert policy.max_sessions == 3
    assert TOKEN not in repr(config)
    assert AdmissionPolicy.from_config(ServerConfig()).token is None


@pytest.mark.parametrize("token", ["has space", "comma,separated", "new\nline", "é"])
def test_a_token_that_cannot_travel_everywhere_is_refused_at_startup(token):
    with pytest.raises(ValueError, match="token"):
        ServerConfig(token=token)


# --------------------------------------------------------------------------- properties


header_names = st.sampled_from(["authorization", "origin", "cookie", "x-other", "host"])
latin1 = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


@given(
    target=st.text(max_size=60),
    host=latin1,
    headers=st.lists(st.tuples(header_names, latin1), max_size=4),
    subprotocols=st.lists(st.text(max_size=30), max_size=3),
    allowed=st.sampled_from(["", "*", "https://a.example", "null,http://h:1"]),
    token=st.sampled_from([None, TOKEN]),
    draining=st.booleans(),
    sessions=st.integers(0, 5),
)
def test_any_handshake_gets_a_decision_and_no_refusal_shows_the_token(
    target, host, headers, subprotocols, allowed, token, draining, sessions
):
    policy = AdmissionPolicy(
        path="/ws",
        token=token,
        allowed_origins=parse_allowed_origins(allowed),
        max_sessions=3,
    )
    f = HandshakeFacts(
        target=target,
        host=host,
        headers=[(k.encode(), v.encode("latin-1")) for k, v in headers],
        subprotocols=subprotocols,
    )
    decision = admit(f, policy, draining=draining, sessions=sessions)
    if isinstance(decision, Accept):
        assert decision.subprotocol in (None, SUBPROTOCOL)
        assert not draining
        assert sessions < 3
    else:
        assert decision.status in (400, 401, 403, 404, 503)
        assert TOKEN not in decision.reason


# --------------------------------------------------------------------------- redaction


def test_redact_target_hides_every_value_but_safe_ones():
    assert redact_target("/ws") == "/ws"
    assert redact_target(f"/ws?token={TOKEN}") == f"/ws?token={REDACTED}"
    assert (
        redact_target(f"/ws?a=1&token={TOKEN}&b=2")
        == f"/ws?a={REDACTED}&token={REDACTED}&b={REDACTED}"
    )
    assert redact_target(f"/ws?to%6Ben={TOKEN}") == f"/ws?to%6Ben={REDACTED}"
    assert (
        redact_target(f"/ws?access_token={TOKEN}#frag") == f"/ws?access_token={REDACTED}#{REDACTED}"
    )
    assert redact_target("/ws?agent=echo") == "/ws?agent=echo"


def test_redact_subprotocols_and_headers():
    assert redact_subprotocols([SUBPROTOCOL, f"trio-agent.token.{TOKEN}"]) == [
        SUBPROTOCOL,
        f"trio-agent.token.{REDACTED}",
    ]
    shown = redact_headers(
        [
            (b"Authorization", f"Bearer {TOKEN}".encode()),
            (b"cookie", b"session=abc"),
            (b"sec-websocket-protocol", f"{SUBPROTOCOL}, trio-agent.token.{TOKEN}".encode()),
            (b"user-agent", b"test"),
        ]
    )
    assert TOKEN not in repr(shown)
    assert "abc" not in repr(shown)
    assert ("user-agent", "test") in shown
    assert ("sec-websocket-protocol", f"{SUBPROTOCOL}, trio-agent.token.{REDACTED}") in shown


@given(st.text(max_size=80))
def test_redact_target_never_shows_a_token_parameter_value(prefix):
    target = f"/ws?{prefix}&token={TOKEN}"
    assert TOKEN not in redact_target(target) or TOKEN in prefix
