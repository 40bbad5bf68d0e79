"""The layout's rules, read from the imports (`ast`), so that a move that breaks them fails.

The folders are the architecture (README, "Where things are"): `proto` and `counters`
at the bottom, `shm` (shared-memory layouts) above them, `config` beside it, then the
drivers (`io`) and the data plane (`pipeline`, `slowpath`, `observe`, `workers`), then
the control process (`control`) and the command line (`cli`) on top. An arrow may only
point down. Every import counts: at module level, inside a function, or in a `try`;
only `if TYPE_CHECKING:` blocks (annotations, never run) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"

DATA_PLANE = ("engine.pipeline", "engine.slowpath", "engine.observe", "engine.workers")
ABOVE_DATA_PLANE = ("engine.control", "engine.cli")

# (importer prefix, imported prefixes it must not reach, why)
FORBIDDEN = [
    ("engine.proto", ("engine",), "wire constants depend on nothing"),
    ("engine.counters", ("engine",), "counter names depend on nothing"),
    ("engine.config", ("engine.io", "engine.pipeline", "engine.slowpath", "engine.observe",
                       "engine.workers", "engine.control", "engine.cli"),
     "the config schema sits under everything that reads it"),
    ("engine.io", DATA_PLANE + ABOVE_DATA_PLANE,
     "drivers only move packets: no stage, no control plane"),
    ("engine.pipeline", ("engine.slowpath", "engine.observe", "engine.workers", "engine.io")
     + ABOVE_DATA_PLANE, "fast-path stages are pure functions over arrays"),
    ("engine.slowpath", ("engine.observe", "engine.workers", "engine.io") + ABOVE_DATA_PLANE,
     "slow-path protocol code is pure per-packet functions and classes"),
    ("engine.observe", ("engine.workers",) + ABOVE_DATA_PLANE,
     "the taps run inside the data plane"),
    ("engine.workers", ABOVE_DATA_PLANE, "the data plane never reaches up to control or cli"),
    ("engine.control", ("engine.cli",), "the control process serves the cli, not the reverse"),
]
SHM_MAY_IMPORT = ("engine.shm", "engine.proto", "engine.counters")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every engine import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, "", node.lineno) for a in node.names
                         if a.name.split(".")[0] == "engine")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package
                own = module_name(path)
                package = own if path.name == "__init__.py" else own.rpartition(".")[0]
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "engine":
                found.extend((base, a.name, node.lineno) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def engine_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def resolve(target: str, name: str, modules: dict[str, Path]) -> str:
    """`from engine.io import afpacket` imports the module engine.io.afpacket."""
    if name and f"{target}.{name}" in modules:
        return f"{target}.{name}"
    return target


def graph() -> dict[str, set[str]]:
    modules = engine_modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, name, _ in imports_of(path):
            dest = resolve(target, name, modules)
            if dest in modules and dest != mod:
                edges[mod].add(dest)
    return edges


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_engine_has_the_documented_folders() -> None:
    for folder in ("cli", "control", "io", "observe", "pipeline", "shm", "slowpath", "workers"):
        assert (ENGINE / folder / "__init__.py").is_file(), folder
    for module in ("proto.py", "counters.py", "config.py"):
        assert (ENGINE / module).is_file(), module
    loose = sorted(p.name for p in ENGINE.glob("*.py")
                   if p.name not in ("__init__.py", "proto.py", "counters.py", "config.py"))
    assert not loose, f"modules loose at the top of engine/: {loose}"


@pytest.mark.parametrize("importer,forbidden,why", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_no_arrow_points_up(importer: str, forbidden: tuple[str, ...], why: str) -> None:
    bad = []
    for mod, path in engine_modules().items():
        if not under(mod, importer):
            continue
        for target, name, line in imports_of(path):
            if any(under(target, f) for f in forbidden) and not under(target, importer):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}"
                           + (f".{name}" if name else ""))
    assert not bad, f"{importer}: {why}:\n" + "\n".join(bad)


def test_shm_holds_layouts_only() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}"
           for mod, path in engine_modules().items() if under(mod, "engine.shm")
           for target, _, line in imports_of(path)
           if not any(under(target, ok) for ok in SHM_MAY_IMPORT)]
    assert not bad, "engine/shm imports only shm, proto and counters:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dest in sorted(edges[mod]):
            if state.get(dest) == 1:
                cycles.append(path[path.index(dest):] + [dest])
            elif dest not in state:
                walk(dest)
        path.pop()
        state[mod] = 2

    for mod in sorted(edges):
        if mod not in state:
            walk(mod)
    # a package's __init__ that re-exports its own submodule is not a cycle of modules
    cycles = [c for c in cycles if not all(under(m, c[0]) or under(c[0], m) for m in c)]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}.{name}"
           for mod, path in engine_modules().items()
           for target, name, line in imports_of(path)
           if name.startswith("_") and not name.startswith("__")]
    assert not bad, "import a public name instead:\n" + "\n".join(bad)


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """The reader finds lazy imports and leaves TYPE_CHECKING ones out."""
    f = tmp_path / "probe.py"
    f.write_text("from typing import TYPE_CHECKING\n"
                 "if TYPE_CHECKING:\n    from engine.cli import main\n"
                 "def later():\n    from engine.control import stats\n"
                 "    import engine.shm.ring\n")
    got = {(t, n) for t, n, _ in imports_of(f)}
    assert got == {("engine.control", "stats"), ("engine.shm.ring", "")}
