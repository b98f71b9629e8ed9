"""The layering rules of the architecture, checked on the source (no imports executed).

* The pure protocol modules of `mccp`, `sip` and `rtp` import no I/O, clock, randomness or
  logging module: time and randomness are passed in, events are returned instead of logged.
* Only the Trio edges listed in EDGE_MODULES may do I/O, and pure modules never import them.
* Imports point one way: `bridge` uses `mccp`, `sip`, `rtp`; those three never import `bridge`
  nor each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PROTOCOL_PACKAGES = ("mccp", "sip", "rtp")
# The thin Trio edges: the only modules below `bridge` allowed to own sockets, tasks and clocks.
EDGE_MODULES = {
    "mccp.server",
    "sip.transport",
    "sip.ua",
    "sip.calls",
    "sip.resolver",
    "rtp.browser_port",
    "rtp.media",
    "rtp.plane",
    "rtp.ports",
}
FORBIDDEN_IN_PURE = {
    "trio",
    "trio_websocket",
    "asyncio",
    "socket",
    "select",
    "selectors",
    "threading",
    "subprocess",
    "time",
    "random",
    "logging",
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in ("bridge", *PROTOCOL_PACKAGES):
        for path in sorted((SRC / pkg).rglob("*.py")):
            rel = path.relative_to(SRC).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join(parts), path))
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


def test_there_are_modules_to_check() -> None:
    assert len(MODULES) >= 4


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_layering(module: str, path: Path) -> None:
    top = module.split(".")[0]
    imported = _imports(path, module)
    roots = {name.split(".")[0] for name in imported}
    if top in PROTOCOL_PACKAGES:
        assert "bridge" not in roots, f"{module} imports bridge: imports point bridge -> protocols only"
        others = roots & (set(PROTOCOL_PACKAGES) - {top})
        assert not others, f"{module} imports sibling protocol package(s) {sorted(others)}"
        if module not in EDGE_MODULES:
            bad = roots & FORBIDDEN_IN_PURE
            assert not bad, f"pure module {module} imports {sorted(bad)}"
            edges = {name for name in imported if name in EDGE_MODULES}
            assert not edges, f"pure module {module} imports Trio edge(s) {sorted(edges)}"
