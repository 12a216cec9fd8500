"""The package's structure: every module imports on its own, and no two modules import each
other, directly or around a loop, at the top or inside a function."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "cifar"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """The cifar modules a file imports anywhere in it (a function's imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cifar.record import names` may import a module or a name of the package.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        # A package's own __init__ re-exporting its modules is not a cycle with them.
        graph[name] = {m for m in imported_modules(path) if not name.startswith(m + ".")}
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
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
            visit(node)
    return found


def test_no_module_of_the_package_imports_itself_around_a_loop():
    graph = import_graph()
    assert len(graph) == len(MODULES) > 20
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# One interpreter loads the third-party libraries, then forks a child per module, which imports
# that module alone: the cifar package is fresh in each child (the parent never imports it), and
# torch's two seconds of import are paid once instead of once per module.
FORK_PER_MODULE = """
import importlib, os, sys, traceback
for library in ("torch", "torchvision", "accelerate", "torchmetrics", "safetensors", "yaml",
                "numpy", "PIL", "tqdm", "matplotlib", "matplotlib.pyplot"):
    try:
        importlib.import_module(library)
    except Exception:
        pass
assert not [m for m in sys.modules if m == "cifar" or m.startswith("cifar.")]
failures = 0
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print(name + ": " + traceback.format_exc().strip().splitlines()[-1], flush=True)
            os._exit(1)
        os._exit(0)
    failures += os.waitpid(pid, 0)[1] != 0
sys.exit(1 if failures else 0)
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = [m for m in MODULES if not m.endswith(".__main__")]  # those run the program
    result = subprocess.run(
        [sys.executable, "-c", FORK_PER_MODULE, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def test_the_import_check_sees_a_module_that_does_not_import_alone(tmp_path):
    broken = tmp_path / "needs_a_cycle.py"
    broken.write_text("import needs_a_cycle_partner\n")
    (tmp_path / "needs_a_cycle_partner.py").write_text("from needs_a_cycle import missing\n")
    result = subprocess.run(
        [sys.executable, "-c", FORK_PER_MODULE, "needs_a_cycle", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("needs_a_cycle: ImportError"), result.stdout
