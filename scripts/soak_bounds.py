"""The soak's bounds: the figures of the attacks, and the verdict on each bound.

:func:`attack_figures` gathers what each attack saw (the server's answers, the
bounds it saw broken), the server's log bytes per session and the canary's times;
:func:`bounds` says, for each bound the hardening promises, the figure measured
and whether it held. A bound that broke is shown, never raised: the soak runs to
its end against a server without the defences too, and its report is the
"before" figure.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from interrupt_bench.stats import summarize
from soak_canary import BUDGET_S, Canary
from soak_client import Tally
from soak_http_attacks import PER_ADDRESS_LIMIT
from soak_server import ServerProcess

#: The server's RSS growth over idle allowed with one pack of non-reading echo
#: clients at work (the hardening's target: 8 such connections, under 64 MB in all).
RSS_BOUND_MB = 64.0
#: Log bytes one session may cause at INFO and above, whatever it sends.
LOG_BOUND_BYTES = 256 * 1024


#: The attacks whose bound is a row of its own.
MEASURED_BY = {
    "echoes": "RSS under non-reading echo clients (quiet phase)",
    "log_floods": "server log bytes per session (INFO and above)",
    "heartbeat_interrupts": "INTERRUPT after a HEARTBEAT burst",
}


def attack_figures(tally: Tally, server: ServerProcess, canary: Canary) -> dict[str, Any]:
    """The figures of the attacks, of the log and of the canary, for the result."""
    answers: dict[str, dict[str, int]] = defaultdict(dict)
    breaches: dict[str, dict[str, int]] = defaultdict(dict)
    for key, count in sorted(tally.counts.items()):
        kind, _, rest = key.partition(" ")
        if kind in ("attack", "breach") and ": " in rest:
            name, what = rest.split(": ", 1)
            (answers if kind == "attack" else breaches)[name][what] = count
    by_session = dict(server.log_bytes_by_session)
    outside = by_session.pop("", 0)
    per_session = sorted(by_session.values())
    attack_logs = {
        name: max((by_session.get(sid, 0) for sid in sids), default=0)
        for name, sids in tally.attack_sessions.items()
    }
    done_ms, ack_ms = summarize(canary.done_ms), summarize(canary.ack_ms)
    counts = tally.counts
    return {
        "attack_answers": dict(answers),
        "attack_breaches": dict(breaches),
        "attack_counts": {
            key: value
            for key, value in sorted(counts.items())
            if ": " in key and key.split(": ")[0] in answers and not key.startswith("attack ")
        },
        "refused_interrupts": counts["interrupts refused"],
        "stream_frames_after_an_interrupt": counts["STREAM frames after an INTERRUPT"],
        "log_bytes": server.log_bytes,
        "log_bytes_outside_sessions": outside,
        "log_sessions": len(per_session),
        "log_bytes_per_session_mean": round(sum(per_session) / max(1, len(per_session))),
        "log_bytes_per_session_p99": per_session[int(0.99 * (len(per_session) - 1))]
        if per_session
        else 0,
        "log_bytes_per_session_max": per_session[-1] if per_session else 0,
        "log_bytes_per_attack_session_max": attack_logs,
        "secret_leak_samples": server.secret_leak_samples,
        "canary": {
            "rounds": len(canary.done_ms),
            "done_ms_p50": done_ms["p50"],
            "done_ms_p99": done_ms["p99"],
            "done_ms_max": done_ms["max"],
            "ack_ms_p50": ack_ms["p50"],
            "ack_ms_p99": ack_ms["p99"],
            "ack_ms_max": ack_ms["max"],
            "misses": canary.misses,
            "miss_samples": canary.failures,
        },
    }


def bounds(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each bound: ``{"figure": what was measured, "bound": what is promised, "held": bool}``."""
    out: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[str, int]] = result["attack_answers"]
    breaches: dict[str, dict[str, int]] = result["attack_breaches"]

    quiet = result["quiet_phase"]
    out["RSS under non-reading echo clients (quiet phase)"] = {
        "figure": f"{quiet['rss_mb_start']} -> peak {quiet['rss_mb_peak']} -> "
        f"{quiet['rss_mb_end']} MB: {quiet['rss_growth_mb']:+.1f} MB with "
        f"{quiet['echo_connections']} at once, {quiet['rss_growth_mb_per_connection']:.2f} MB "
        "per attacking connection",
        "bound": f"<= {RSS_BOUND_MB:g} MB in all",
        "held": quiet["rss_growth_mb"] <= RSS_BOUND_MB,
    }
    worst = result["log_bytes_per_session_max"]
    floods = result["log_bytes_per_attack_session_max"].get("log_floods", 0)
    out["server log bytes per session (INFO and above)"] = {
        "figure": f"mean {result['log_bytes_per_session_mean']} B, "
        f"p99 {result['log_bytes_per_session_p99']} B, max {worst} B "
        f"(a log_floods session: up to {floods} B)",
        "bound": f"<= {LOG_BOUND_BYTES // 1024} KiB each",
        "held": worst <= LOG_BOUND_BYTES,
    }
    canary = result["canary"]
    out["canary"] = {
        "figure": f"{canary['rounds']} rounds, REQUEST -> DONE p50/p99 "
        f"{_ms(canary['done_ms_p50'])}/{_ms(canary['done_ms_p99'])} ms, INTERRUPT -> ACK "
        f"p50/p99 {_ms(canary['ack_ms_p50'])}/{_ms(canary['ack_ms_p99'])} ms, "
        f"{canary['misses']} misses",
        "bound": f"every round within {BUDGET_S:g} s, every session let in",
        "held": canary["misses"] == 0 and canary["rounds"] > 0,
    }
    out["INTERRUPT after a HEARTBEAT burst"] = {
        "figure": f"{result['refused_interrupts']} refused, "
        f"{result['stream_frames_after_an_interrupt']} STREAM frames after one",
        "bound": "never refused, nothing streams after it",
        "held": result["refused_interrupts"] == 0
        and result["stream_frames_after_an_interrupt"] == 0,
    }
    held_by_one = result["attack_counts"].get(
        "address_hoards: most sessions held by one address", 0
    )
    for name in sorted(set(answers) | set(breaches)):
        broken = breaches.get(name, {})
        figure = ", ".join(f"{what}: {n}" for what, n in answers.get(name, {}).items())
        if name == "address_hoards":
            figure += f"; most held by one address: {held_by_one} (limit {PER_ADDRESS_LIMIT})"
        out[f"attack {name}"] = {
            "figure": figure or "-",
            "bound": "; ".join(f"BROKEN {n}x: {what}" for what, n in broken.items()) or "held",
            "held": not broken,
        }
    if "token_names" in answers:
        out["attack token_names"]["held"] = result["secrets_in_logs"] == 0
        if result["secrets_in_logs"]:
            out["attack token_names"]["bound"] = (
                f"BROKEN: the token in {result['secrets_in_logs']} log lines "
                f"({', '.join(result['secret_leak_samples'])})"
            )
    for attack, bound in MEASURED_BY.items():
        if f"attack {attack}" in out and bound in out:
            out[f"attack {attack}"]["bound"] = f"measured by '{bound}'"
            out[f"attack {attack}"]["held"] = out[bound]["held"]
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
