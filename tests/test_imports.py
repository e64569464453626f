"""The static import graph of s4d/, flows/ and serving/ (read with ast, nothing imported): no circle, and
the library never imports the applications built on it. Every import counts, also one inside a function:
a lazy import hides a circle from the interpreter, not from the design."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("s4d", "flows", "serving")

# Lowest first: a module imports only from its own layer or those below. A name stands for the module
# and everything under it; the longest matching name decides.
LAYERS = [("s4d", "s4d.io", "s4d.locks"), ("s4d.config", "s4d.stage"), ("s4d.models", "s4d.precision"), ("s4d.data",),
          ("s4d.train",), ("s4d.gate", "s4d.registry", "s4d.bento", "s4d.package", "s4d.pipeline"), ("s4d.experiments",),
          ("s4d.cli",), ("flows", "serving")]
# Upward imports known today, each with the change that removes it. Equality is asserted below, so the
# test fails (and this list must shrink) once the change lands.
KNOWN_UPWARD: set[str] = set()


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that the file `path` (module `name`) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(dotted: str) -> None:
        # The longest project module that `dotted` names or lies in (`s4d.config.load_params` -> s4d.config).
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        # Importing a.b.c also runs a/__init__ and a/b/__init__, unless they are the importer's own
        # packages (those are already initialised by the time its code runs).
        while dotted and dotted != name and not name.startswith(dotted + "."):
            found.add(dotted)
            dotted = dotted.rpartition(".")[0]

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from s4d import registry` imports the module s4d.registry
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# ------------------------------------------------------------------------------------ the reader itself
def test_the_reader_finds_every_kind_of_import_and_the_circles(tmp_path):
    """Checked on a hand-written package whose graph is known (not on the project, whose graph it judges)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "a.py").write_text("import pkg.b\nfrom os import path\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.sub.c import thing  # lazy\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\nfrom ..b import f\nthing = 1\n")
    (pkg / "d.py").write_text("from pkg import sub\n")
    modules = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {n: imported_modules(p, n, modules) for n, p in modules.items()}
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.c"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c", "pkg.sub"},
                     "pkg.sub.c": {"pkg.a", "pkg.b"}, "pkg.d": {"pkg.sub"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


# ---------------------------------------------------------------------------------------- the project
def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert {"s4d.registry", "s4d.gate", "s4d.package", "s4d.bento", "s4d.io", "flows.retrain",
            "serving.service"} <= set(graph)
    assert "s4d.io" in graph["s4d.registry"] and "s4d.registry" in graph["s4d.package"]  # the reader reads
    assert cycles(graph) == []


def test_the_library_never_imports_the_applications():
    upward = sorted(f"{name} -> {dep}" for name, deps in import_graph().items() if name.split(".")[0] == "s4d"
                    for dep in deps if dep.split(".")[0] in ("serving", "flows"))
    assert upward == []


def layer(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def test_imports_point_down_the_layers():
    upward = {f"{name} -> {dep}" for name, deps in import_graph().items() for dep in deps if layer(dep) > layer(name)}
    assert upward == KNOWN_UPWARD


@pytest.mark.slow
def test_every_module_imports_in_any_order():
    """All modules imported in one interpreter in name order, and in another in reverse order: with no
    circle the order cannot matter, and this shows it does not (`__main__` modules run, so they are left out)."""
    names = [n for n in sorted(import_graph()) if not n.endswith(".__main__")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for order in (names, names[::-1]):
        code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('ok')"
        out = subprocess.run([sys.executable, "-c", code, *order], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# ------------------------------------------------------------------------ thread settings, in one place
def first_import_of(path: Path, names: tuple[str, ...]) -> str | None:
    """The first of `names` (top-level packages) that a file imports at module level."""
    for node in ast.parse(path.read_text()).body:
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for mod in mods:
            top = mod.split(".")[0]
            if top in names:
                return top
    return None


def test_openmp_wait_policy_is_set_in_one_place_and_before_torch_loads():
    """libgomp reads OMP_WAIT_POLICY once, when torch loads: s4d/__init__.py sets it, and the entry points
    that could load torch before any s4d module import s4d first."""
    setters = sorted(p.relative_to(ROOT).as_posix() for folder in ("s4d", "serving", "flows", "benchmarks", "scripts")
                     for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".sh")
                     and "OMP_WAIT_POLICY" in p.read_text())
    assert setters == ["s4d/__init__.py"]
    assert "OMP_WAIT_POLICY" not in (ROOT / "Makefile").read_text()
    for entry in ("serving/service.py", "benchmarks/__init__.py", "tests/conftest.py"):
        assert first_import_of(ROOT / entry, ("s4d", "torch", "serving", "benchmarks")) == "s4d", entry
    code = "import os, s4d; print(os.environ['OMP_WAIT_POLICY'])"
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for env, expected in ((clean, "PASSIVE"), ({**clean, "OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")):  # the user's wins
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == expected, out.stderr
