"""The package's shape: stage subpackages, no import cycles, imports at the top, doctests that run."""
import ast
import doctest
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "exgrpo_utils"
# Third-party packages a module may import inside a function: heavy to import, or needed only on some
# paths (GPU, HTTP teachers, plots, notebooks). Everything else is imported at the top.
LAZY_OK = {"torch", "transformers", "trl", "peft", "datasets", "vllm", "math_verify", "matplotlib", "seaborn",
           "papermill", "nbclient", "httpx", "pandas"}
# Package modules that import a heavy third-party package at their top, and so are themselves imported
# inside the functions that need them (the trainer class must subclass TRL's at module level).
LAZY_MODULES = {"exgrpo_utils.train.exgrpo_trainer", "exgrpo_utils.train.lm_head"}
STAGES = {"infra", "data", "models", "teach", "train", "evaluate", "experiments", "report"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _target(module: str, node: ast.ImportFrom, is_pkg: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    if not base.startswith("exgrpo_utils"):
        return []
    if node.module is None:  # from . import a, b: each may be a module
        return [f"{base}.{a.name}" for a in node.names]
    return [base]


def _graph():
    names = {name for name, _, _ in _modules()}
    graph = {}
    for name, path, tree in _modules():
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for t in _target(name, node, path.name == "__init__.py"):
                    while t not in names and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t in names and t != name:
                        edges.add(t)
        graph[name] = edges
    return graph


def test_stages_are_folders():
    assert {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == STAGES
    top = {p.stem for p in PKG.glob("*.py")}
    assert top == {"__init__", "config", "runner", "train_cli", "setup_check", "gpu_check"}, top


def test_no_import_cycles():
    graph = _graph()
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_imports_sit_at_the_top_unless_heavy():
    problems = []
    for name, path, tree in _modules():
        lazy = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                top = (node.module or "" if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
                if isinstance(node, ast.ImportFrom) and any(t in LAZY_MODULES for t in _target(name, node, path.name == "__init__.py")):
                    lazy.add(_target(name, node, path.name == "__init__.py")[0])
                    continue
                if getattr(node, "level", 0) or top == "exgrpo_utils" or top not in LAZY_OK:
                    problems.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: import {top} inside a function")
                lazy.add(top)
        source = path.read_text()
        if lazy and "imported inside" not in source and "imported lazily" not in source:
            problems.append(f"{path.relative_to(PKG.parent)}: lazy imports of {sorted(lazy)} without a comment saying why")
    assert not problems, "\n".join(problems)


def test_the_data_and_scoring_layers_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import exgrpo_utils.data.answers, exgrpo_utils.data.datasets, exgrpo_utils.train.rewards, "
            "exgrpo_utils.config; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


DOCTEST_MODULES = sorted(name for name, path, _ in _modules() if ">>>" in path.read_text())


def test_there_are_doctests():
    assert {"exgrpo_utils.data.answers", "exgrpo_utils.train.rewards", "exgrpo_utils.teach.inversion"} <= set(DOCTEST_MODULES)


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctests failed"


@pytest.mark.parametrize("script", sorted((PKG.parent / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmark_scripts_import_and_show_their_help(script):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# Rooms a newcomer can live in: about 400 lines a module, 60 a function, no class defined inside a
# function. An exception names its reason here.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def test_modules_and_functions_stay_small():
    problems = []
    for name, path, tree in _modules():
        where = str(path.relative_to(PKG.parent))
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES and where not in LONG_MODULES:
            problems.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{where}:{node.name}" not in LONG_FUNCTIONS:
                problems.append(f"{where}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION_LINES})")
            problems += [f"{where}:{inner.lineno}: class {inner.name} defined inside {node.name}"
                         for inner in ast.walk(node) if isinstance(inner, ast.ClassDef)]
    assert not problems, "\n".join(problems)
