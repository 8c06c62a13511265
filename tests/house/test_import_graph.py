"""The house rules the layout promises (issue 26), checked on the tree itself.

The import graph of ``openradio/`` is read with ``ast`` (every import statement: module level,
function level, ``TYPE_CHECKING`` blocks, relative ones), so a circle closed by a lazy import
counts as much as one at the top of a module. A string constant that is the full dotted name of an
openradio module (``"openradio.commands.knn"``, or ``"openradio.ray:run_ray"``) counts as an import
of it too: that is how ``importlib`` loads the CLI's commands and the package's lazy attributes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "openradio"
MAX_ROOT_MODULES = 6  # besides __init__, __main__ and cli
MAX_LINES = 600
MAX_DEMO_LINES = 350
MAX_README_LINES = 250


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_files(pkg: Path = PKG) -> dict[str, Path]:
    return {module_name(p, pkg.parent): p for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int, list[str]]]:
    """(imported openradio module, line, names imported from it) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "openradio":
                    out.append((alias.name, node.lineno, []))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module or ""
            if target.split(".")[0] != "openradio":
                continue
            names = [a.name for a in node.names]
            # `from openradio.pkg import sub` imports the submodule when there is one
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            rest = [n for n in names if f"{target}.{n}" not in known]
            out.extend((s, node.lineno, []) for s in subs)
            if rest or not subs:
                out.append((target, node.lineno, rest))
    return out


def string_imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(openradio module, line) for every string constant in ``path`` that names one in full, as
    ``importlib.import_module`` takes it (``"openradio.commands.knn"``) or as an entry point
    (``"openradio.ray:run_ray"``), where such names are handed on: inside a dict, list, tuple or
    set, or as a call's argument. A name assigned alone is a label (``FORMAT_NAME =
    "openradio.extract"``, written into a layout), and the bare package name is left out for the same
    reason (the package runs first on every import anyway)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    handed_on = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            handed_on.update(id(c) for c in ast.iter_child_nodes(node))
        elif isinstance(node, ast.Call):
            handed_on.update(id(a) for a in [*node.args, *(k.value for k in node.keywords)])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) in handed_on:
            name = node.value.split(":", 1)[0] if node.value.count(":") == 1 else node.value
            if name in known and "." in name and name != module:
                out.append((name, node.lineno))
    return out


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    files = package_files(pkg)
    known = set(files)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        graph[module].update(t for t, _ in string_imports_of(module, path, known))
        for target, _, _ in imports_of(module, path, known):
            # importing a.b.c runs a/__init__ and a/b/__init__ first; only the named module counts
            # as an edge (package __init__ files are checked as modules of their own)
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module and target in known:
                graph[module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one circle
    through its modules (shortest path back found by breadth-first search)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    circles = []
    for comp in comps:
        members = set(comp)
        start = comp[0]
        prev = {start: None}
        queue = [start]
        found = None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & members):
                if w == start:
                    found = v
                    break
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev[v]
        circles.append(path + [start])
    return circles


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    """The finder itself: a circle closed by an import inside a function is reported, named."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "openradio" / "x.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from openradio.y import g\n    from . import z\n")
    found = {t for t, _, _ in imports_of("openradio.x", src, {"openradio.y", "openradio.z", "openradio"})}
    assert found == {"openradio.y", "openradio.z"}


def test_a_circle_through_a_string_import_is_found(tmp_path):
    """A module that loads another by name (``importlib.import_module("openradio.b")``, a dict of
    module names like the CLI's COMMANDS, an entry point ``"openradio.c:f"``) imports it: a circle
    closed that way fails ``test_no_import_cycles`` as much as one of import statements."""
    pkg = tmp_path / "openradio"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""openradio.a is named in prose only."""\nNAME = "openradio"\nFORMAT_NAME = "openradio.a"\n'
    )
    (pkg / "a.py").write_text('import importlib\nCOMMANDS = {"b": "openradio.b"}\n')
    (pkg / "b.py").write_text("def run():\n    from openradio.a import COMMANDS\n")
    (pkg / "c.py").write_text('ENGINES = {"x": "openradio.d:run"}\n')
    (pkg / "d.py").write_text('def run():\n    return __import__("importlib").import_module("openradio.c")\n')
    graph = import_graph(pkg)
    assert graph["openradio"] == set()  # prose, labels and the bare package name are no imports
    assert graph["openradio.a"] == {"openradio.b"} and graph["openradio.c"] == {"openradio.d"}
    assert find_cycles(graph) == [
        ["openradio.a", "openradio.b", "openradio.a"],
        ["openradio.c", "openradio.d", "openradio.c"],
    ]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles in openradio/ (function-level imports count):\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_no_private_name_imported_across_modules():
    files = package_files()
    known = set(files)
    bad = []
    for module, path in files.items():
        for target, line, names in imports_of(module, path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {target}")
    assert not bad, "private helpers imported across modules (make them public or move them down):\n" + "\n".join(bad)


def test_root_modules():
    skip = {"__init__.py", "__main__.py", "cli.py"}
    root = sorted(p.stem for p in PKG.glob("*.py") if p.name not in skip)
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules directly in openradio/: {root}"


def test_no_file_over_the_line_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"


def test_demo_is_short():
    demo = PKG / "demo"
    files = list(demo.rglob("*.py")) if demo.is_dir() else [PKG / "demo.py"]
    total = sum(len(p.read_text().splitlines()) for p in files)
    assert total <= MAX_DEMO_LINES, (
        f"the demo is {total} lines (at most {MAX_DEMO_LINES}): move the rest to the library"
    )


def test_readme_is_a_front_page():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md is {n} lines (at most {MAX_README_LINES}): move the long parts to docs/"


def architecture_entries(text: str) -> list[str]:
    """The paths a tree drawing names: the first fenced block whose first line is ``openradio/``;
    entries indented by two spaces are inside the package, unindented ones at the repository root."""
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        lines = block.splitlines()
        if not lines or lines[0].split()[0] != "openradio/":
            continue
        out = []
        for line in lines[1:]:
            if not line.strip():
                continue
            name = line.split()[0]
            if line.startswith("  ") and not line.startswith("   "):
                out.append(f"openradio/{name}".rstrip("/"))
            elif not line.startswith(" "):
                out.append(name.rstrip("/"))
        return out
    return []


MAPS = {"README.md": ROOT / "README.md", "docs/architecture.md": ROOT / "docs" / "architecture.md"}


def architecture_text(page: str) -> str:
    text = MAPS[page].read_text()
    if page == "README.md":  # the README's map is its Architecture section's
        m = re.search(r"^## Architecture\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        text = m.group(1) if m else ""
    return text


@pytest.mark.parametrize("page", sorted(MAPS))
def test_the_architecture_map_names_only_what_exists(page):
    named = architecture_entries(architecture_text(page))
    assert len(named) >= 10, f"{page} draws no map of openradio/ (a block starting 'openradio/')"
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, f"{page}'s architecture map names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", sorted(MAPS))
def test_every_room_is_on_the_architecture_map(page):
    named = set(architecture_entries(architecture_text(page)))
    rooms = sorted(f"openradio/{p.parent.name}" for p in PKG.glob("*/__init__.py"))
    rooms += sorted(f"openradio/{p.name}" for p in PKG.glob("*.py") if p.name != "__main__.py")
    absent = [r for r in rooms if r not in named]
    assert not absent, f"rooms missing from the architecture map in {page} (one line each): {absent}"


def test_the_readme_links_the_architecture_map():
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()


def test_architecture_entries():
    text = "intro\n```\nopenradio/\n  cli.py    the CLI\n  model/    the network\n    detail\nhubconf.py  hub\n```\n"
    assert architecture_entries(text) == ["openradio/cli.py", "openradio/model", "hubconf.py"]
    assert architecture_entries("```\nsomething/\n  x.py\n```\n") == []


FRONT = {"cli", "commands", "demo", "train", "__main__"}
WORKLOADS = {"eval", "viz", "dense", "extract", "ray"}


def room(module: str) -> str:
    """The room a module lives in; any package's ``__main__`` (``python -m openradio.X``) is a front end."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else "openradio"


PUBLIC_FACE = "openradio"  # openradio/__init__.py: re-exports the public API of every room (lazily)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """The imports that go up the layers; the package's ``__init__`` is its public face, not a
    library module, and may name any room (its lazy attributes are strings of ``_LAZY``)."""
    up = []
    for module, targets in graph.items():
        here = room(module)
        if here in FRONT or module == PUBLIC_FACE:
            continue
        for target in targets:
            there = room(target)
            if there in FRONT or (here not in WORKLOADS and there in WORKLOADS):
                up.append(f"{module} -> {target}")
    return sorted(up)


def test_the_layering_check():
    graph = {
        "openradio": {"openradio.dense.segment", "openradio.model.radio"},
        "openradio.dense.segment": {"openradio.model.radio"},
        "openradio.model.radio": {"openradio.dense.segment", "openradio.cli"},
        "openradio.cli": {"openradio.commands.knn"},
    }
    assert upward_imports(graph) == [
        "openradio.model.radio -> openradio.cli",
        "openradio.model.radio -> openradio.dense.segment",
    ]


def test_imports_go_from_front_ends_to_workloads_to_the_library():
    """The layering docs/architecture.md states: no import goes up."""
    up = upward_imports(import_graph())
    assert not up, "imports that go up (front ends -> workloads -> library):\n" + "\n".join(up)
