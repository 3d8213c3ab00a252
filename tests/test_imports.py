"""The layering of docs/architecture.md, read from the source with ast (nothing is imported or executed).

Every layer is a subpackage of the one import name, `coopnets` (contract/ is coopnets.contract, and so on);
the rules below name the layers by their folder. Data flows one way: data → trainer → bundle → serving →
proto → clients. The rules:
- contract/ is a leaf: it imports no other package of the project (not even the generated coopnets.v1);
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

from support import ROOT, tracked_text_files

PACKAGES = ("contract", "trainer", "serving", "clients", "evaluation")
FORBIDDEN = {
    "contract": {"trainer", "serving", "clients", "evaluation", "v1", "oip"},
    "serving": {"trainer", "evaluation", "clients"},
    "trainer": {"serving", "clients", "evaluation"},
    "clients": {"trainer", "evaluation"},
}
CLIENT_MODULES_ALLOWED_SERVING = {"coopnets.clients.cli"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name (as installed: coopnets.<layer>...) -> file, for every .py file of the layers'
    folders under `root`."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = ("coopnets", *path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> str:
    """The layer a dotted module belongs to: `coopnets.serving.engine` -> serving, `coopnets.v1` -> v1;
    a third-party module -> its own top name (never a layer)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "coopnets" and len(parts) > 1 else f"<{parts[0]}>"


def short(module: str) -> str:
    return module.removeprefix("coopnets.")


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
        top = layer(name)
        for target, names, line in imports(path, name, known):
            where = f"{path.relative_to(root)}:{line}"
            ttop = layer(target)
            if target.split(".")[0] in PACKAGES:
                problems.append(
                    f"{where}: {short(name)} imports {target} by its folder name, not coopnets.{target}"
                )
            if ttop in FORBIDDEN.get(top, set()):
                problems.append(f"{where}: {top} imports {short(target)}")
            if top == "clients" and ttop == "serving" and name not in CLIENT_MODULES_ALLOWED_SERVING:
                problems.append(
                    f"{where}: {short(name)} imports {short(target)} (only clients.cli's --bundle mode may)"
                )
            if ttop in PACKAGES and ttop != top:
                private = [p for p in target.split(".")[2:] if p.startswith("_") and not p.startswith("__")]
                private += [n for n in names if n.startswith("_")]
                if private:
                    problems.append(
                        f"{where}: {short(name)} imports private {short(target)}: {', '.join(private)}"
                    )
                if target.split(".")[-1] == "cli":
                    problems.append(f"{where}: {short(name)} imports the entry-point module {short(target)}")
            if target in known and target != name:
                graph[name].add(target)
    problems += [f"import cycle: {' -> '.join(map(short, c))}" for c in cycles(graph)]
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
        "contract/bad.py": "def f():\n    from coopnets.serving import engine\n",  # leaf importing serving
        "contract/proto.py": "from coopnets.v1 import coopnets_pb2\n",  # leaf importing the generated code
        "contract/old.py": "from trainer import nets\n",  # the folder name, not the installed one
        "serving/__init__.py": "",
        # a back edge
        "serving/engine.py": "from coopnets.contract import a\nfrom coopnets.trainer.data import load\n",
        "trainer/__init__.py": "",
        "trainer/data.py": "from coopnets.trainer import nets\nload = 1\n",
        "trainer/nets.py": "from coopnets.trainer.data import load\n",  # cycle data <-> nets
        "trainer/cli.py": "",
        "clients/__init__.py": "",
        "clients/client.py": "from coopnets.serving.engine import x\n",  # only clients.cli may
        "evaluation/__init__.py": "",
        "evaluation/data.py": "from coopnets.trainer.data import _fit\nimport coopnets.trainer.cli\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = "\n".join(violations(tmp_path))
    for expected in (
        "contract/bad.py:2: contract imports serving",
        "contract/proto.py:1: contract imports v1",
        "contract/old.py:1: contract.old imports trainer by its folder name",
        "serving/engine.py:2: serving imports trainer.data",
        "clients/client.py:1: clients.client imports serving.engine",
        "imports private trainer.data: _fit",
        "imports the entry-point module trainer.cli",
        "import cycle: trainer.data -> trainer.nets -> trainer.data",
    ):
        assert expected in found, found
    assert "contract/a.py" not in found


def test_nothing_edits_sys_path_and_nothing_points_outside_the_repository():
    """One import name means no module reaches the others by putting a folder on sys.path; and the repository
    stands alone: no tracked file names the development machine's shared folder."""
    edit = "sys.path." + "insert"  # split so that this file does not match itself
    shared = "../" + "shared"
    problems = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(ROOT)
        if path.suffix == ".py" and (edit in text or "sys.path." + "append" in text):
            problems.append(f"{rel}: edits sys.path")
        if shared in text:
            problems.append(f"{rel}: points to {shared}")
    assert not problems, "\n".join(problems)
