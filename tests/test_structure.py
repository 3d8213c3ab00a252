"""Functions short enough to read at once: no function or method in a tracked .py file runs over MAX_LINES
lines (from its `def` to its last line, ast's end_lineno - lineno + 1; decorators and the blank lines after
it not counted). Tests count too. Generated code (the protoc stubs, *_pb2*.py) is left out, as ruff leaves it.
The checker is tried on a small synthetic file too, so that a broken checker cannot pass silently."""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT, tracked_text_files

MAX_LINES = 60


def long_functions(path: Path, max_lines: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method in the file longer than `max_lines`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > max_lines:
                    out.append((name, lines))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def offenders(paths: list[Path], root: Path) -> list[str]:
    rows = []
    for path in paths:
        if path.suffix != ".py" or "_pb2" in path.name:
            continue
        rel = path.relative_to(root).as_posix()
        rows += [(lines, f"{rel}::{name}") for name, lines in long_functions(path)]
    return [f"{lines:4d}  {where}" for lines, where in sorted(rows, reverse=True)]


def test_no_function_is_longer_than_sixty_lines():
    found = offenders(tracked_text_files(), ROOT)
    assert not found, f"functions over {MAX_LINES} lines (split them by job):\n" + "\n".join(found)


def test_the_checker_finds_long_functions_and_methods(tmp_path):
    def block(indent: str) -> str:  # MAX_LINES statements
        return "".join(f"{indent}x{i} = {i}\n" for i in range(MAX_LINES))

    (tmp_path / "m.py").write_text(
        "def short():\n    return 1\n\n\nclass C:\n    def long(self):\n"
        + block(" " * 8)
        + "\n        def inner():\n"
        + block(" " * 12)
    )
    (tmp_path / "m_pb2.py").write_text("def generated():\n" + block(" " * 4))
    assert [row.split() for row in offenders(sorted(tmp_path.iterdir()), tmp_path)] == [
        [str(2 * MAX_LINES + 3), "m.py::C.long"],
        [str(MAX_LINES + 1), "m.py::C.long.inner"],
    ]
