"""The layering of docs/architecture.md, read from the source with ast (nothing is imported or executed).

Data flows one way: data → trainer → bundle → serving → proto → clients. The rules:
- contract/ is a leaf: it imports no other package of the project;
- serving/ imports neither trainer/, evaluation/ nor clients/; trainer/ imports neither serving/, clients/ nor
  evaluation/; clients/ imports neither trainer/ nor evaluation/, and serving/ only from clients/cli.py (the
  local `coop-complete --bundle` mode);
- no module imports an underscore name (or module) of another package, nor another package's `cli` module;
- no cycle between modules (function-level imports count: a cycle is a cycle even when it happens to load).
The checker is tested on a small synthetic tree too, so that a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

PACKAGES = ("contract", "trainer", "serving", "clients", "evaluation")
FORBIDDEN = {
    "contract": {"trainer", "serving", "clients", "evaluation", "coopnets"},
    "serving": {"trainer", "evaluation", "clients"},
    "trainer": {"serving", "clients", "evaluation"},
    "clients": {"trainer", "evaluation"},
}
CLIENT_MODULES_ALLOWED_SERVING = {"clients.cli"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages under `root`."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement in the file, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in known]
            out += [(f"{base}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                out.append((base, rest, node.lineno))
    return out


def violations(root: Path) -> list[str]:
    known = modules(root)
    problems, graph = [], {name: set() for name in known}
    for name, path in known.items():
        top = name.split(".")[0]
        for target, names, line in imports(path, name, known):
            where = f"{path.relative_to(root)}:{line}"
            ttop = target.split(".")[0]
            if ttop in FORBIDDEN.get(top, set()):
                problems.append(f"{where}: {top} imports {target}")
            if top == "clients" and ttop == "serving" and name not in CLIENT_MODULES_ALLOWED_SERVING:
                problems.append(f"{where}: {name} imports {target} (only clients.cli's --bundle mode may)")
            if ttop in PACKAGES and ttop != top:
                private = [p for p in target.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
                private += [n for n in names if n.startswith("_")]
                if private:
                    problems.append(f"{where}: {name} imports private {target}: {', '.join(private)}")
                if target.split(".")[-1] == "cli":
                    problems.append(f"{where}: {name} imports the entry-point module {target}")
            if target in known and target != name:
                graph[name].add(target)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_project_keeps_its_layers():
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def test_the_checker_sees_each_kind_of_violation(tmp_path):
    files = {
        "contract/__init__.py": "",
        "contract/a.py": "import numpy\n",
        "contract/bad.py": "def f():\n    from serving import engine\n",  # leaf importing serving
        "serving/__init__.py": "",
        "serving/engine.py": "from contract import a\nfrom trainer.data import load\n",  # back edge
        "trainer/__init__.py": "",
        "trainer/data.py": "from trainer import nets\nload = 1\n",
        "trainer/nets.py": "from trainer.data import load\n",  # cycle data <-> nets
        "trainer/cli.py": "",
        "clients/__init__.py": "",
        "clients/client.py": "from serving.engine import x\n",  # only clients.cli may
        "evaluation/__init__.py": "",
        "evaluation/data.py": "from trainer.data import _fit\nfrom trainer.cli import main\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = "\n".join(violations(tmp_path))
    for expected in (
        "contract/bad.py:2: contract imports serving",
        "serving/engine.py:2: serving imports trainer.data",
        "clients/client.py:1: clients.client imports serving.engine",
        "imports private trainer.data: _fit",
        "imports the entry-point module trainer.cli",
        "import cycle: trainer.data -> trainer.nets -> trainer.data",
    ):
        assert expected in found, found
    assert "contract/a.py" not in found
