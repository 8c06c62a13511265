"""Issue 26 item 7: library imports at the top of modules; a function-level import (optional
dependency, the CLI's lazy loading, a cycle) says why, in a ``#`` comment on its line or the line
directly above. The CLI's command modules share one reason, stated in ``openradio/commands/__init__.py``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "openradio"
COMMANDS_INIT = PKG / "commands" / "__init__.py"
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# linter pragmas are no reason: what is left of a comment without them must say something
PRAGMA = re.compile(
    r"noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^\]]*\])?|pragma:[^#]*|fmt:\s*\w+"
)


def lazy_by_rule(path: Path, pkg: Path = PKG) -> bool:
    """The CLI and its command modules: their one reason is in commands/__init__.py's docstring."""
    rel = path.relative_to(pkg).as_posix()
    return rel == "cli.py" or (rel.startswith("commands/") and rel.count("/") == 1)


def function_level_imports(tree: ast.AST) -> list[ast.stmt]:
    """Import/ImportFrom nodes whose nearest enclosing scope is a function or class body (a module
    level ``if TYPE_CHECKING:`` or ``try:`` block is module level)."""
    out: list[ast.stmt] = []

    def walk(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if inside and isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            walk(child, inside or isinstance(child, SCOPES))

    walk(tree, False)
    return out


def reason_comments(source: str) -> dict[int, tuple[str, bool]]:
    """line -> (comment text without '#' and pragmas, whether the comment is the whole line)."""
    out = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = PRAGMA.sub("", tok.string.lstrip("#")).strip(" :;,-")
            row = tok.start[0]
            out[row] = (text, lines[row - 1].lstrip().startswith("#"))
    return out


def unexplained_imports(path: Path, pkg: Path = PKG) -> list[str]:
    """``path:line: import ...`` for every function-level import with no reason comment."""
    source = path.read_text()
    comments = reason_comments(source)
    lines = source.splitlines()
    bad = []
    for node in function_level_imports(ast.parse(source, filename=str(path))):
        own = any(comments.get(n, ("", False))[0] for n in range(node.lineno, node.end_lineno + 1))
        text, whole_line = comments.get(node.lineno - 1, ("", False))
        if not (own or (text and whole_line)):
            bad.append(f"{path.relative_to(pkg.parent).as_posix()}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def violations(pkg: Path = PKG) -> list[str]:
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        if "__pycache__" not in path.parts and not lazy_by_rule(path, pkg):
            bad.extend(unexplained_imports(path, pkg))
    return bad


def test_the_reason_check(tmp_path):
    pkg = tmp_path / "openradio"
    (pkg / "commands").mkdir(parents=True)
    (pkg / "m.py").write_text(
        "import os\n"
        "def f():\n"
        "    import json\n"  # no reason
        "    import av  # optional: pip install openradio[video]\n"
        "    # lazy: openradio.x imports this module (a cycle at import time)\n"
        "    from openradio import x\n"
        "    x = 1  # a comment about x\n"
        "    import re\n"  # the comment above is code's, not this import's
        "    import csv  # noqa: F401\n"  # a pragma is no reason
        "    from openradio.y import (  # lazy: keeps import openradio fast\n"
        "        a,\n"
        "        b,\n"
        "    )\n"
        "class C:\n"
        "    import math\n"  # a class body is a scope too
        "    s = '# not a comment'\n"
        "    import abc\n"  # a '#' inside a string is no comment
    )
    (pkg / "cli.py").write_text("def main():\n    import torch\n")
    (pkg / "commands" / "knn.py").write_text("def run(args):\n    import torch\n")
    assert violations(pkg) == [
        "openradio/m.py:3: import json",
        "openradio/m.py:8: import re",
        "openradio/m.py:9: import csv  # noqa: F401",
        "openradio/m.py:15: import math",
        "openradio/m.py:17: import abc",
    ]


def test_the_commands_package_says_why_its_modules_import_inside_run():
    doc = ast.get_docstring(ast.parse(COMMANDS_INIT.read_text())) or ""
    assert "run()" in doc and "openradio --help" in doc, (
        "openradio/commands/__init__.py's docstring must say why command modules import inside run()"
    )


def test_every_function_level_import_says_why():
    bad = violations()
    assert not bad, (
        f"{len(bad)} function-level imports without a reason (move them to the top of the module, or say why "
        "in a '#' comment on the line or the line above: optional extra, lazy for speed, a cycle):\n" + "\n".join(bad)
    )
