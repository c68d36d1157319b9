"""The commands in README.md and docs/*.md work after the README's setup, and the
blocks marked runnable run (docs/testing.md, "The commands in these pages").

Every command is written as ``.venv/bin/python ...`` or a ``scripts/`` wrapper: a
bare ``python``, ``pip`` or ``trio-agent`` is another interpreter, or none, on a
fresh clone. A fenced ``sh`` or ``console`` block whose info string also says
``runnable`` is run: a page's blocks in order, in a scratch folder of its own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Info strings of the blocks that hold commands.
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
#: Programs that a fresh clone does not have on PATH, or has from somewhere else.
NOT_FROM_THE_SETUP = {"python", "python3", "pip", "pip3", "pytest", "trio-agent", "ruff", "mypy"}
#: What a page's scratch folder links to in the checkout. Not pyproject.toml: with it
#: a scripts/ wrapper could decide to reinstall the .venv.
LINKED = (".venv", "scripts", "trio_agent", "docs", "tests")
#: The most one runnable block may take (the demo takes seconds on an idle machine).
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    info: list[str]
    body: str

    @property
    def runnable(self) -> bool:
        return self.info[:1] != [] and self.info[0] in SHELL_BLOCKS and "runnable" in self.info[1:]

    def commands(self) -> list[str]:
        """The commands: a console block's ``$`` lines, an sh block's lines that are not
        comments or continuations (each command's first line only)."""
        lines = self.body.splitlines()
        if self.info[0] == "console":
            return [line[2:] for line in lines if line.startswith("$ ")]
        commands, continued = [], False
        for line in lines:
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not continued:
                commands.append(stripped)
            continued = stripped.endswith("\\")
        return commands

    def script(self) -> str:
        return "\n".join(self.commands()) if self.info[0] == "console" else self.body


def fenced_blocks(page: Path) -> list[Block]:
    """The page's fenced code blocks. A fence closes only on as many backticks as
    opened it, so a block shown inside a longer fence is not a block of the page."""
    blocks: list[Block] = []
    fence, info, start, body = "", [], 0, []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if not fence:
            opened = re.match(r"^(`{3,})(.*)$", line)
            if opened:
                fence, info, start, body = opened.group(1), opened.group(2).split(), number, []
        elif re.match(rf"^{fence}`*\s*$", line):
            blocks.append(Block(page, start, info, "\n".join(body) + "\n"))
            fence = ""
        else:
            body.append(line)
    return blocks


def _program(command: str) -> str:
    """The program a command line runs, past any ``NAME=value`` assignments."""
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    return words[0] if words else ""


def _inline_commands(page: Path) -> list[str]:
    """Inline code and indented code lines that read as commands to type."""
    text = page.read_text()
    spans = re.findall(r"`([^`\n]+)`", text)
    indented = [line.strip() for line in text.splitlines() if line.startswith("    ")]
    return spans + indented


def _where(block: Block) -> str:
    return f"{block.page.relative_to(REPO)}:{block.line}"


def test_every_command_runs_from_the_readme_setup():
    wrong = []
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.info[:1] and block.info[0] in SHELL_BLOCKS:
                for command in block.commands():
                    if _program(command) in NOT_FROM_THE_SETUP:
                        wrong.append(f"{_where(block)}: {command}")
        for command in _inline_commands(page):
            # `python x.py`, `pip install ...`, or a script run as if it were executable.
            if re.match(r"^(\$ )?(python3?|pip3?|pytest) ", command) or re.match(
                r"^scripts/\w+\.py \S", command
            ):
                wrong.append(f"{page.relative_to(REPO)}: {command}")
    assert wrong == []


def test_a_block_in_a_longer_fence_is_an_example_not_a_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "````markdown\n```console runnable\n$ false\n```\n````\n\n"
        "```sh runnable\n# a comment\nA=1 scripts/serve --help\n```\n"
    )
    blocks = fenced_blocks(page)
    assert [(b.line, b.info, b.runnable) for b in blocks] == [
        (1, ["markdown"], False),
        (7, ["sh", "runnable"], True),
    ]
    assert blocks[1].commands() == ["A=1 scripts/serve --help"]
    assert _program(blocks[1].commands()[0]) == "scripts/serve"


RUNNABLE = {page: [b for b in fenced_blocks(page) if b.runnable] for page in PAGES}
RUNNABLE = {page: blocks for page, blocks in RUNNABLE.items() if blocks}


def test_the_teaching_page_has_runnable_commands():
    assert [b.commands()[0] for b in RUNNABLE[REPO / "docs" / "cancellation.md"]] == [
        ".venv/bin/python -m trio_agent demo      # the README's .venv has matplotlib, "
        "for the pictures",
        ".venv/bin/python scripts/plot_timeline.py trio-agent-demo.jsonl --list",
    ]


@pytest.mark.parametrize("page", list(RUNNABLE), ids=[p.name for p in RUNNABLE])
def test_the_runnable_blocks_of_a_page_run(page, tmp_path):
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_AGENT_")}
    for block in RUNNABLE[page]:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.script()],
            cwd=tmp_path,
            env={**environ, "MPLBACKEND": "Agg"},
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, (
            f"{_where(block)} exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
