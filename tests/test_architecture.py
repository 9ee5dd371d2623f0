"""The package's shape (issue 14), read from the source with ``ast``, never by importing it:

* layers: sparse < redistribution < training < experiments, bench < cli; ``data``, ``errors`` and ``runtime``
  stand apart (any layer may import them, they import none of the layers). No module imports a higher layer,
  function-local imports included;
* library modules never import a command-line module (any module with ``cli`` in its name);
* no import cycle between top-level subpackages, nor between modules;
* no module over 450 lines;
* ``import redr.sparse`` and ``import redr.data`` load no part of the training stack (checked in a fresh process).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "redr"
MAX_LINES = 450

#: Top-level subpackages and modules by layer: an import may only go to the same layer or a lower one.
LAYERS = {"sparse": 0, "redistribution": 1, "training": 2, "inference": 2, "experiments": 3, "bench": 3, "cli": 4,
          "cli_types": 4, "__main__": 4}
#: Importable from every layer; they import none of the layers (only each other, torch and the standard library).
APART = {"data", "errors", "runtime"}

#: Modules other helpers are splitting right now (issue 14). The lead empties this list at merge: from then on
#: every module must fit in MAX_LINES.
EXPECTED_OVER_MAX_LINES: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every redr module ``name`` imports, at module level or inside functions (``from a import b`` counts as
    ``a.b`` when that is a module, else as ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return {m for m in found if m.split(".")[0] == "redr" and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def is_cli(module: str) -> bool:
    """A command-line module: ``cli`` in its name, or ``python -m redr``'s ``__main__``."""
    return any("cli" in part or part == "__main__" for part in module.split(".")[1:])


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""  # "" = the package face redr/__init__.py


def layer(module: str):
    """The layer number, "apart", or None for the package face (whose names are looked up lazily)."""
    if is_cli(module):
        return LAYERS["cli"]
    if top(module) in APART:
        return "apart"
    return LAYERS.get(top(module)) if top(module) else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "redr.training.trainer" in graph["redr.training.api"]
    assert "redr.data.synthetic" in graph["redr.training.config"]  # imported inside dataset_shape()
    assert "redr.training.checkpoint" in graph["redr.training.rundir"]  # from redr.training import checkpoint


def test_no_module_imports_a_higher_layer():
    wrong = []
    for source, targets in import_graph().items():
        here = layer(source)
        for target in sorted(targets):
            there = layer(target)
            if here is None or there is None:
                continue
            if here == "apart" and there != "apart":
                wrong.append(f"{source} (apart from the layers) imports {target}")
            elif here != "apart" and there != "apart" and there > here:
                wrong.append(f"{source} (layer {here}) imports {target} (layer {there})")
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_library_modules_never_import_a_cli_module():
    wrong = [f"{source} imports {target}" for source, targets in import_graph().items() if not is_cli(source)
             for target in sorted(targets) if is_cli(target)]
    assert not wrong, "library -> CLI imports:\n" + "\n".join(wrong)


def test_no_import_cycle_between_subpackages():
    groups: dict[str, set[str]] = {}
    for source, targets in import_graph().items():
        groups.setdefault(top(source), set()).update(top(t) for t in targets if top(t) != top(source))
    groups.pop("", None)  # the package face refers to everything, lazily
    assert cycles(groups) == []


def test_no_import_cycle_between_modules():
    graph = import_graph()
    graph.pop("redr", None)
    for targets in graph.values():
        targets.discard("redr")
        # a package's __init__ is imported with any of its modules: edges to it are not cycles of their own
    found = cycles({m: {t for t in ts if not (m.startswith(t + "."))} for m, ts in graph.items()})
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_is_over_450_lines():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in EXPECTED_OVER_MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_the_expected_exceptions_are_still_needed():
    """An entry of EXPECTED_OVER_MAX_LINES that is gone or short enough must leave the list."""
    stale = [name for name in sorted(EXPECTED_OVER_MAX_LINES)
             if not (SRC / name).exists() or len((SRC / name).read_text().splitlines()) <= MAX_LINES]
    assert not stale, f"remove from EXPECTED_OVER_MAX_LINES: {stale}"


@pytest.mark.parametrize("package", ["redr.sparse", "redr.data"])
def test_a_lower_part_imports_without_the_training_stack(package):
    code = (f"import sys, {package}; loaded = sorted(m for m in sys.modules if m.startswith(('redr.training', "
            f"'redr.redistribution', 'redr.experiments', 'redr.bench', 'redr.cli'))); "
            f"assert 'redr.training' not in sys.modules and not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_face_is_lazy_and_complete():
    code = ("import sys, redr; assert not [m for m in sys.modules if m.startswith('redr.')], sorted(sys.modules); "
            "from importlib import metadata; assert redr.__version__ == metadata.version('redr'); "
            "import importlib; "
            "[getattr(redr, n) for n in redr.__all__]; "
            "assert redr.train is importlib.import_module('redr.training.api').train; "
            "assert redr.Trainer is importlib.import_module('redr.training.trainer').Trainer; "
            "assert redr.sparse.SparseLinear is redr.SparseLinear")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
