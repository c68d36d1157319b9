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
        ("RSS MB over the mix", result["rss_mb_over_time"]),
        (
            "RSS MB: mix start / peak / end",
            f"{result['baseline']['rss_mb']} / {result['peak']['rss_mb']} / {result['end']['rss_mb']}",
        ),
        (
            "quiet phase (first): RSS MB start / peak / end",
            f"{result['quiet_phase']['rss_mb_start']} / {result['quiet_phase']['rss_mb_peak']} / "
            f"{result['quiet_phase']['rss_mb_end']}",
        ),
        (
            "quiet phase: then live tasks / open fds",
            f"{result['quiet_phase']['tasks_after']} / {result['quiet_phase']['fds_after']}",
        ),
        ("leaked tasks", result["leaked_tasks"]),
        ("leaked fds", result["leaked_fds"]),
        ("RSS growth over the mix (MB)", result["rss_growth_mb"]),
        (
            "server log: bytes / INFO+ per session mean / max",
            f"{result['log_bytes']} / {result['log_bytes_per_session_mean']} / "
            f"{result['log_bytes_per_session_max']}",
        ),
        ("secrets in server logs", result["secrets_in_logs"]),
        ("refused interrupts", result["refused_interrupts"]),
        ("STREAM frames after an INTERRUPT", result["stream_frames_after_an_interrupt"]),
        ("guarantees violated", result["guarantees_violated"]),
        ("server exit code", result["server_exit_code"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {fmt(value)}" for name, value in rows]
    lines += ["", "what the server answered to each attack:"]
    for name, answers in result["attack_answers"].items():
        lines.append(f"  {name}")
        lines += [f"      {count:>6} x {what}" for what, count in answers.items()]
        lines += [
            f"      {key.split(': ', 1)[1]}: {count}"
            for key, count in result["attack_counts"].items()
            if key.startswith(f"{name}: ")
        ]
    lines += ["", "bounds:"]
    for name, bound in result["bounds"].items():
        verdict = "held  " if bound["held"] else "BROKEN"
        lines.append(f"  {verdict} {name}: {bound['figure']}")
        lines.append(f"         bound: {bound['bound']}")
    lines += ["", f"verdict  {'OK' if result['ok'] else 'FAILED'}"]
    return "\n".join(lines)
