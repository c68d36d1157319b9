"""The layout is the architecture: these tests keep the arrows between layers pointing one way.

They read every module's imports with :mod:`ast` (imports under ``TYPE_CHECKING`` and
inside functions count: mypy and a later call follow them too) and fail naming the
offending import. ``docs/architecture.md`` draws the layers and explains each rule.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trio_agent"

#: Most lines a module of the package may have.
MAX_LINES = 600

#: Modules every layer may import: they import nothing of ours.
FOUNDATION = {"trio_agent.settings", "trio_agent._version"}

#: Which layers each layer may import (besides itself and FOUNDATION). A layer is
#: the subpackage right below ``trio_agent`` (``server.web`` is a layer of its own).
#: ``cli``, ``testing`` and the package's own ``__init__`` may import anything.
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": set(),
    "observability": {"protocol"},
    "client": {"protocol", "observability"},
    "agents": {"protocol", "observability"},
    "speech": {"protocol", "observability", "agents"},
    "server.web": {"protocol", "observability", "server"},
    "server": {"protocol", "observability", "agents", "speech", "server.web"},
    # Cluster mode sits on the server: the server never imports it (the CLI wires it in).
    "cluster": {"protocol", "observability", "agents", "speech", "server", "server.web"},
    "foundation": set(),
}
TOP_LAYERS = {"cli", "testing", "package"}

#: Libraries that do I/O or schedule tasks: the pure core never imports them.
IO_LIBRARIES = {
    "trio",
    "trio_websocket",
    "wsproto",
    "h11",
    "loguru",
    "httpx",
    "httpx_sse",
    "anyio",
    "asyncio",
    "socket",
    "ssl",
    "subprocess",
    "selectors",
    "prometheus_client",
    "matplotlib",
}

#: Pure code outside ``protocol``: decisions and state machines with no I/O. They may
#: name a Trio type in an annotation (under ``TYPE_CHECKING``), nothing more.
PURE_MODULES = {
    "trio_agent.server.registry",
    "trio_agent.server.replay",
    "trio_agent.server.resume_book",
    "trio_agent.server.admission",
    "trio_agent.server.origins",
    "trio_agent.server.ratelimit",
    "trio_agent.server.web.routing",
    "trio_agent.client.state",
    "trio_agent.speech.timeline",
    "trio_agent.agents.openai.history",
    "trio_agent.observability.timeline",
    "trio_agent.observability.facts",
    "trio_agent.settings",
    "trio_agent.cluster.store",
    "trio_agent.cluster.store_codec",
    "trio_agent.cluster.stream_replay",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (or package)
    path: Path
    line: int
    type_only: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in ``path``, resolved to a module of ours or a top-level library."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, type_only)
            else:
                visit_stmt(child, type_only)

    def visit_stmt(stmt: ast.AST, type_only: bool) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                found.append(Import(name, alias.name, path, stmt.lineno, type_only))
        elif isinstance(stmt, ast.ImportFrom):
            base = stmt.module or ""
            if stmt.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (stmt.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in stmt.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in known else base
                found.append(Import(name, target, path, stmt.lineno, type_only))
        else:
            visit(stmt, type_only)

    visit(tree, False)
    return found


def layer_of(module: str) -> str:
    if module == "trio_agent":
        return "package"
    if module in FOUNDATION:
        return "foundation"
    parts = module.split(".")
    if parts[1] == "__main__":
        return "cli"
    if parts[1:3] == ["server", "web"]:
        return "server.web"
    return parts[1]


def all_imports() -> list[Import]:
    found = modules()
    known = set(found)
    return [imp for name, path in found.items() for imp in imports_of(name, path, known)]


def ours(imp: Import) -> bool:
    return imp.target == "trio_agent" or imp.target.startswith("trio_agent.")


def layer_violations(imports: list[Import]) -> list[str]:
    """Each import that crosses the layers the wrong way, as one readable line."""
    problems = []
    for imp in imports:
        source_layer = layer_of(imp.source)
        if source_layer in TOP_LAYERS:
            continue
        if imp.target == "trio_agent":
            problems.append(
                f"{imp.where()}: {imp.source} imports the package trio_agent itself; "
                "import the subpackage that defines the name (the package __init__ imports "
                "everything, so this is a cycle)"
            )
            continue
        if not ours(imp):
            continue
        target_layer = layer_of(imp.target)
        if target_layer in ("foundation", source_layer):
            continue
        if target_layer not in MAY_IMPORT[source_layer]:
            allowed = sorted(MAY_IMPORT[source_layer]) or ["nothing of ours"]
            problems.append(
                f"{imp.where()}: {imp.source} imports {imp.target}: the {source_layer} layer "
                f"may import only {', '.join(allowed)} (and the foundation modules)"
            )
    return problems


def purity_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        library = imp.target.split(".")[0]
        if library not in IO_LIBRARIES:
            continue
        if layer_of(imp.source) == "protocol":
            problems.append(
                f"{imp.where()}: {imp.source} imports {imp.target}: protocol is pure "
                "(no I/O library, not even for a type)"
            )
        elif imp.source in PURE_MODULES and not imp.type_only:
            problems.append(
                f"{imp.where()}: {imp.source} imports {imp.target}: this module is pure; "
                "a type from it may be imported under TYPE_CHECKING only"
            )
    return problems


def cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles between modules of ours (Tarjan's strongly connected components)."""
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in imports:
        if ours(imp) and imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


_PACKAGES = {module_name(p) for p in PACKAGE.rglob("__init__.py")}


# ----------------------------------------------------------------------------- tests


def test_layers_import_only_downwards():
    problems = layer_violations(all_imports())
    assert not problems, "imports that point the wrong way:\n" + "\n".join(problems)


def test_the_pure_core_imports_no_io_library():
    problems = purity_violations(all_imports())
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules():
    found = cycles(all_imports())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_is_over_600_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize(
    "package", sorted(p for p in _PACKAGES if p.count(".") == 1 or p == "trio_agent")
)
def test_each_subpackage_names_its_public_api(package):
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported, f"{package}/__init__.py has no __all__: its public names are not listed"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ lists names it does not define: {missing}"


# ------------------------------------------------------- the checks themselves can fail


def _fake(source: str, target: str, *, type_only: bool = False) -> Import:
    return Import(source, target, PACKAGE / "x.py", 1, type_only)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("trio_agent.client.connection", "trio_agent.server.config"),
        ("trio_agent.agents.api", "trio_agent.server.session"),
        ("trio_agent.server.web.routes", "trio_agent.agents.builtin"),
        ("trio_agent.protocol.messages", "trio_agent.observability.trace"),
        ("trio_agent.observability.trace", "trio_agent.server.lanes"),
        ("trio_agent.server.agent_server", "trio_agent.cli.main"),
        ("trio_agent.speech.stage", "trio_agent.server.lanes"),
        ("trio_agent.agents.openai.agent", "trio_agent"),
    ],
)
def test_a_wrong_import_is_named(source, target):
    problems = layer_violations([_fake(source, target)])
    assert len(problems) == 1
    assert source in problems[0]
    assert target in problems[0]


def test_an_io_library_in_the_pure_core_is_named():
    assert purity_violations([_fake("trio_agent.protocol.messages", "trio", type_only=True)])
    assert purity_violations([_fake("trio_agent.server.registry", "trio")])
    assert not purity_violations([_fake("trio_agent.server.registry", "trio", type_only=True)])
    assert not purity_violations([_fake("trio_agent.server.session", "trio")])


def test_a_cycle_is_found():
    imports = [
        _fake("trio_agent.server.config", "trio_agent.server.admission"),
        _fake("trio_agent.server.admission", "trio_agent.server.config", type_only=True),
    ]
    assert cycles(imports) == [["trio_agent.server.admission", "trio_agent.server.config"]]


def test_imports_are_read_from_every_kind_of_statement(tmp_path):
    path = PACKAGE / "server" / "session.py"
    found = imports_of("trio_agent.server.session", path, set(modules()))
    assert any(imp.target == "trio_agent.server.lanes" for imp in found)
    assert any(imp.type_only for imp in found) or "TYPE_CHECKING" not in path.read_text()
