"""The soak's report: its result as a table, one figure a line."""

from __future__ import annotations

from typing import Any


def report(result: dict[str, Any]) -> str:
    """The result of :func:`soak.soak` as a table: a name and a value a line, the
    verdict last."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, dict):
            return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        return "-" if value is None else str(value)

    rows = [
        ("duration", f"{result['duration_s']:g} s, {result['clients']} clients"),
        (
            "CPU: server / soak clients, load avg",
            f"{result['server_cpu_percent']}% / {result['soak_cpu_percent']}% of one core, "
            f"load {result['load_average'][0]} -> {result['load_average'][1]} "
            f"on {result['cpu_cores']} cores",
        ),
        ("sessions opened", result["sessions_opened"]),
        ("frames sent / received", f"{result['frames_sent']} / {result['frames_received']}"),
        ("requests", result["requests"]),
        ("DONE by status", result["done_statuses"]),
        ("interrupts", result["interrupts"]),
        (
            "INTERRUPT -> ACK p50 / p99 / max (ms)",
            f"{fmt(result['ack_ms_p50'])} / {fmt(result['ack_ms_p99'])} / {fmt(result['ack_ms_max'])}",
        ),
        (
            "  in the server: read -> written p50 / p99 (ms)",
            f"{fmt(result['server_ack_ms_p50'])} / {fmt(result['server_ack_ms_p99'])}",
        ),
        ("heartbeat RTT p99 (ms)", result["heartbeat_ms_p99"]),
        ("bad frames tried", result["bad_frames_tried"]),
        ("flood frames (over the rate limit)", result["flood_frames"]),
        ("disconnects", result["disconnects"]),
        ("handshakes refused", result["refusals"]),
        ("surprises", result["surprises"]),
        ("server warnings", result["server_warnings"]),
        (
            "live tasks: idle / peak / end",
            f"{result['baseline']['tasks']} / {result['peak']['tasks']} / {result['end']['tasks']}",
        ),
        (
            "open fds: idle / peak / end",
            f"{result['baseline']['fds']} / {result['peak']['fds']} / {result['end']['fds']}",
        ),
        ("RSS MB over the run", result["rss_mb_over_time"]),
        (
            "RSS MB: idle / peak / end",
            f"{result['baseline']['rss_mb']} / {result['peak']['rss_mb']} / {result['end']['rss_mb']}",
        ),
        ("leaked tasks", result["leaked_tasks"]),
        ("leaked fds", result["leaked_fds"]),
        ("RSS growth (MB)", result["rss_growth_mb"]),
        ("secrets in server logs", result["secrets_in_logs"]),
        ("guarantees violated", result["guarantees_violated"]),
        ("server exit code", result["server_exit_code"]),
        ("verdict", "OK" if result["ok"] else "FAILED"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {fmt(value)}" for name, value in rows)
