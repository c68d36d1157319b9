"""The README and docs/*.md name only modules, names and files that exist.

Every ``trio_agent.x.y[.Name]`` a page names (in code blocks, inline code or prose)
must import, or be an attribute of what imports; every ``from trio_agent.x import
A, B`` must find ``A`` and ``B``; every ``trio_agent/...``, ``scripts/...``,
``tests/...`` or ``docs/...`` path must be a file or directory of the repository;
every relative link must lead to a file. A module that moves takes its docs along.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.S | re.M)
DOTTED = re.compile(r"(?<![\w.])trio_agent(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(
    r"^[ \t]*from[ \t]+(trio_agent(?:\.\w+)*)[ \t]+import[ \t]+(?:\(([^)]*)\)|([^\n#]+))", re.M
)
PATH = re.compile(r"(?<![\w./-])(?:trio_agent|scripts|tests|docs)/[\w./-]*")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def resolve(dotted: str) -> object:
    """The module or attribute a dotted name stands for; raises LookupError if none.

    The longest importable prefix is imported, and the rest read as attributes of it.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            found: object = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and not name.startswith(error.name):
                raise  # the module exists but something it imports does not
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                where = found.__name__ if isinstance(found, ModuleType) else repr(found)
                raise LookupError(f"{dotted}: {where} has no attribute {attribute!r}")
            found = getattr(found, attribute)
        return found
    raise LookupError(f"{dotted}: no such module")


def references(text: str) -> tuple[set[str], set[str]]:
    """The dotted names and the repository paths a page mentions, anywhere in it."""
    dotted = set(DOTTED.findall(text))
    for module, grouped, names in FROM_IMPORT.findall(text):
        imported = (n.split()[0] for n in (grouped or names).split(",") if n.strip())
        dotted.update(f"{module}.{name}" for name in imported)
    paths = {p.rstrip(".") for p in PATH.findall(text)}
    return dotted, paths


def test_the_pages_are_found():
    assert ROOT / "docs" / "protocol.md" in PAGES
    assert ROOT / "docs" / "architecture.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_dotted_name_resolves(page: Path):
    dotted, _ = references(page.read_text())
    missing = []
    for name in sorted(dotted):
        try:
            resolve(name)
        except LookupError as error:
            missing.append(str(error))
    assert not missing, f"{page_id(page)} names what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_exists(page: Path):
    _, paths = references(page.read_text())
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path):
    links = [
        link.split("#", 1)[0]
        for link in LINK.findall(FENCED.sub("", page.read_text()))
        if not re.match(r"[a-z]+:", link) and not link.startswith("#")
    ]
    missing = sorted(link for link in links if not (page.parent / link).exists())
    assert not missing, f"{page_id(page)} links to files that do not exist: {missing}"


def test_the_checks_catch_a_stale_name_and_a_stale_path():
    with pytest.raises(LookupError):
        resolve("trio_agent.wire.open_wire")
    with pytest.raises(LookupError):
        resolve("trio_agent.observability.trace.shielded_cleanup")
    resolve("trio_agent.testing.wire.open_wire")
    page = (
        "Run `python -m trio_agent.cli.main`, read trio_agent/session.py.\n\n"
        "```python\nfrom trio_agent.client import (\n    open_agent_client,\n    Nothing,\n)\n```\n"
    )
    dotted, paths = references(page)
    assert dotted == {
        "trio_agent.cli.main",
        "trio_agent.client",
        "trio_agent.client.open_agent_client",
        "trio_agent.client.Nothing",
    }
    assert paths == {"trio_agent/session.py"}
