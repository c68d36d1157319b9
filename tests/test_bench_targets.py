"""The benchmark's targets table: which FastAPI variant counts, which way a ratio
goes, and when a target is met (arithmetic on a made-up run; nothing measured)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from interrupt_bench.targets import TARGETS, Target, evaluate, targets_markdown  # noqa: E402


def _run(workload: str, figures: dict[str, dict]) -> dict:
    return {"scenarios": {workload: {"results": figures}}}


def test_a_latency_ratio_is_baseline_over_trio_agent_against_the_best_fastapi_variant():
    target = Target("barge-in", "ACK p50", "ack_ms.p50")
    row = target.evaluate(
        _run(
            "barge-in",
            {
                "trio-agent": {"ack_ms": {"p50": 2.0}},
                "fastapi": {"ack_ms": {"p50": 1.0}},
                "fastapi-websockets": {"ack_ms": {"p50": 4.0}},
                "asyncio": {"ack_ms": {"p50": 3.0}},
            },
        )
    )
    # The fastest variant counts: 1.0 ms, so trio-agent is half as good.
    assert (row["fastapi_server"], row["fastapi"], row["fastapi_ratio"]) == ("fastapi", 1.0, 0.5)
    assert row["asyncio_ratio"] == 1.5
    assert row["met"] is False


def test_a_rate_ratio_is_trio_agent_over_baseline_and_the_highest_variant_counts():
    target = Target("throughput", "frames/s", "one.frames_per_s", lower_is_better=False)
    row = target.evaluate(
        _run(
            "throughput",
            {
                "trio-agent": {"one": {"frames_per_s": 300.0}},
                "fastapi": {"one": {"frames_per_s": 100.0}},
                "fastapi-websockets": {"one": {"frames_per_s": 200.0}},
                "asyncio": {"one": {"frames_per_s": 150.0}},
            },
        )
    )
    assert (row["fastapi_server"], row["fastapi_ratio"], row["asyncio_ratio"]) == (
        "fastapi-websockets",
        1.5,
        2.0,
    )
    assert row["met"] is True


def test_a_target_of_twenty_times_needs_twenty_against_every_peer():
    target = Target("slow-reader", "ACK p50", "ack_ms.p50", wanted=20.0)
    figures = {
        "trio-agent": {"ack_ms": {"p50": 1.0}},
        "fastapi": {"ack_ms": {"p50": 25.0}},
        "fastapi-websockets": {"ack_ms": {"p50": 30.0}},
        "asyncio": {"ack_ms": {"p50": 19.0}},
    }
    assert target.evaluate(_run("slow-reader", figures))["met"] is False
    figures["asyncio"]["ack_ms"]["p50"] = 21.0
    assert target.evaluate(_run("slow-reader", figures))["met"] is True


def test_the_lowat_row_compares_with_the_lowat_peer_only():
    (target,) = [t for t in TARGETS if "NOTSENT" in t.figure and t.path == "ack_ms.p50"]
    row = target.evaluate(
        _run(
            "slow-reader",
            {
                "trio-agent": {"ack_ms": {"p50": 3.0}},
                "fastapi": {"ack_ms": {"p50": 1.0}},
                "fastapi-lowat": {"ack_ms": {"p50": 4.0}},
                "asyncio": {"ack_ms": {"p50": 1.0}},
            },
        )
    )
    assert (row["fastapi_server"], row["asyncio"], row["met"]) == ("fastapi-lowat", None, True)


def test_heartbeat_target_allows_one_and_a_half_times_the_better_peer():
    (target,) = [t for t in TARGETS if t.workload == "idle"]

    def met(mine: float) -> bool | None:
        figures = {
            "trio-agent": {"rtt_ms": {"p50": mine}},
            "fastapi": {"rtt_ms": {"p50": 0.2}},
            "fastapi-websockets": {"rtt_ms": {"p50": 0.3}},
            "asyncio": {"rtt_ms": {"p50": 0.25}},
        }
        return target.evaluate(_run("idle", figures))["met"]

    assert met(0.29) is True
    assert met(0.31) is False


def test_missing_figures_give_no_verdict_and_missing_workloads_no_row():
    rows = evaluate(_run("barge-in", {"trio-agent": {"ack_ms": {"p50": 1.0}}}))
    assert {r["workload"] for r in rows} == {"barge-in"}
    assert rows[0]["met"] is None
    assert "| barge-in: INTERRUPT -> ACK p50 ms | 1.00 | - |" in targets_markdown(rows)


def test_no_verdict_when_a_compared_server_made_errors():
    target = Target("scale", "ACK p99", "ack_ms.p99")
    figures = {
        "trio-agent": {"ack_ms": {"p99": 1.0}, "errors": 900},
        "fastapi": {"ack_ms": {"p99": 5.0}, "errors": 0},
        "asyncio": {"ack_ms": {"p99": 5.0}, "errors": 0},
    }
    row = target.evaluate(_run("scale", figures))
    assert (row["met"], row["errors_in"]) == (None, ["trio-agent"])
    assert "errors: trio-agent" in targets_markdown([row])
