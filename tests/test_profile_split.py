"""``scripts/profile_split.py`` sorts each py-spy sample by its innermost frame."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from profile_split import OTHER, category, split

SITE = "/work/.venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("leaf", "expected"),
    [
        ("GuardedStream._send_now (trio_agent/server/transport.py:128)", "socket writes (kernel)"),
        (f"EpollIOManager.get_events ({SITE}/trio/_core/_io_epoll.py:243)", "epoll (kernel)"),
        (f"_SocketType._nonblocking_helper ({SITE}/trio/_socket.py:1050)", "socket reads (kernel)"),
        (f"unrolled_run ({SITE}/trio/_core/_run.py:2866)", "Trio's scheduler"),
        (f"Value.unwrap ({SITE}/outcome/_impl.py:30)", "Trio's scheduler"),
        ("__init__ (<attrs generated methods outcome._impl.Value>:13)", "Trio's scheduler"),
        (f"FrameDecoder.parse_header ({SITE}/wsproto/frame_protocol.py:80)", "WebSocket parsing"),
        (f"Logger._log ({SITE}/loguru/_logger.py:2003)", "logging"),
        (f"BaseModel.model_validate ({SITE}/pydantic/main.py:792)", "pydantic"),
        (f"MutexValue.inc ({SITE}/prometheus_client/values.py:28)", "metrics"),
        ("RequestStream._send (trio_agent/server/request_stream.py:185)", "trio-agent"),
        ("_GeneratorContextManager.__exit__ (/usr/lib/python3.11/contextlib.py:144)", OTHER),
    ],
)
def test_a_sample_goes_to_the_category_of_its_innermost_frame(leaf, expected):
    assert category(leaf) == expected


def test_the_raw_format_is_summed_per_category():
    raw = "\n".join(
        [
            f"main (x.py:1);unrolled_run ({SITE}/trio/_core/_run.py:2866) 7",
            "main (x.py:1);RequestStream._send (trio_agent/server/request_stream.py:185) 3",
            f"main (x.py:1);unrolled_run ({SITE}/trio/_core/_run.py:2931) 2",
            "",
        ]
    )
    counts, total = split(raw)
    assert total == 12
    assert counts == {"Trio's scheduler": 9, "trio-agent": 3}
