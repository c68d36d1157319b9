"""docs/security.md lists every limit, its default and what a client sees."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from trio_agent.server.config import ServerConfig

DOC = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
TABLE = DOC.split("## Every limit", 1)[1].split("\n## ", 1)[0]

#: Settings that are not limits: where to listen, how to log, which agent.
NOT_LIMITS = {
    "host",
    "port",
    "default_agent",
    "web",
    "trace",
    "lanes",
    "log_level",
    "log_format",
    "certfile",
    "keyfile",
    "stats_interval_s",
    "write_batch_frames",  # a throughput knob; docs/protocol.md and docs/performance.md
    "speech",  # which synthesiser; docs/voice.md
    "audio_chunk_ms",  # the size of an AUDIO frame; docs/voice.md
    "audio_lead_ms",  # how far a paced reply runs ahead; docs/voice.md
    # cluster mode's settings, not limits on a client; docs/cluster.md and docs/protocol.md
    "redis_url",
    "node_id",
    "node_lease_s",
    "drain_s",
    "workers",
}
LIMITS = [f for f in fields(ServerConfig) if f.name not in NOT_LIMITS]


@pytest.mark.parametrize("setting", LIMITS, ids=lambda f: f.name)
def test_every_limit_is_in_the_table_with_its_default(setting):
    flag = "`--" + setting.name.replace("_", "-") + "`"
    rows = [row for row in TABLE.splitlines() if flag in row]
    assert rows, f"{flag} is not in the table of limits"
    default = setting.default
    if isinstance(default, int | float) and not isinstance(default, bool):
        numbers = re.findall(r"\d+(?:\.\d+)?", rows[0].split("|")[2])
        assert any(float(n) == float(default) for n in numbers), (flag, rows[0])


@pytest.mark.parametrize("answer", ["404", "403", "401", "400", "503", "1008", "1009", "1001"])
def test_every_refusal_and_close_code_is_explained(answer):
    assert answer in TABLE
