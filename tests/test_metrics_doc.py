"""docs/web.md's metrics table says what ``/metrics`` exports: every metric, its
labels, and the values of the ``kind`` label, no more and no less."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import ErrorCode
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig

WEB_MD = Path(__file__).resolve().parent.parent / "docs" / "web.md"


def documented() -> dict[str, list[str]]:
    """``metric name -> its labels cell``, from the table under ``## Metrics``."""
    section = WEB_MD.read_text(encoding="utf-8").split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    return {
        re.fullmatch(r"\s*`([a-z_]+)`\s*", cells[0]).group(1): cells  # type: ignore[union-attr]
        for cells in rows
    }


def exported() -> dict[str, set[tuple[str, ...]]]:
    """What a server's ``/metrics`` body holds: each ``trio_agent_`` sample name with
    the label sets seen, after each labelled metric has counted once."""
    server = AgentServer(ServerConfig(port=0), {})
    metrics = server.metrics
    for kind in FrameKind:
        metrics.frames_written(kind, 1, 1)
    metrics.error_sent(ErrorCode.INVALID_JSON)
    metrics.http_response(200)
    metrics.handshake_refused(403)
    metrics.requests.labels(agent="lorem", status="completed").inc()
    metrics.interrupt_acknowledged(0.0001)
    body, _ = metrics.render()
    samples: dict[str, set[tuple[str, ...]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if not family.name.startswith("trio_agent_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = tuple(sorted(k for k in sample.labels if k != "le"))
            samples.setdefault(name, set()).add(labels)
    return samples


def test_the_table_lists_every_exported_metric_and_no_other():
    assert sorted(documented()) == sorted(exported())


def test_the_table_names_each_metrics_labels():
    table = documented()
    for name, label_sets in exported().items():
        (labels,) = label_sets
        names = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", table[name][2]))
        assert sorted(names) == list(labels), name


def test_the_documented_frame_kinds_are_the_exported_ones():
    cell = documented()["trio_agent_frames_sent_total"][2]
    listed = re.fullmatch(r"\s*`kind` \(((?:`\w+`(?:, )?)+)\)\s*", cell)
    assert listed is not None, cell
    kinds = re.findall(r"`(\w+)`", listed.group(1))
    body, _ = AgentServer(ServerConfig(port=0), {}).metrics.render()
    sent = set(re.findall(r'^trio_agent_frames_sent_total\{kind="(\w+)"\}', body.decode(), re.M))
    assert sorted(kinds) == sorted(sent) == sorted(kind.value for kind in FrameKind)
