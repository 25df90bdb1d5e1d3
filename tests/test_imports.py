"""Import structure of the package: every module imports in a fresh interpreter; the module import graph
(read with ``ast``, function-level imports included) is acyclic; modules import only their own package and
the layers below (``LAYERS``); and nothing under ``data/device/`` imports the view recipes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "mvssl_lightning.data"
ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "mvssl_lightning" / "data"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(DATA_DIR.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its body (``from A import b`` -> ``A.b``
    when that is a module, else ``A``)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) - {name} for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a list of modules (first == last), or ``[]``."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_graph_reader_sees_views_device_and_a_cycle():
    graph = _graph()
    assert {f"{PACKAGE}.views", f"{PACKAGE}.views.infomin", f"{PACKAGE}.device.recipe"} <= set(graph)
    assert f"{PACKAGE}.views.base" in graph[f"{PACKAGE}.views.infomin"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


def test_data_import_graph_is_acyclic():
    cycle = _find_cycle(_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_device_never_imports_the_view_recipes():
    graph = _graph()
    offenders = {
        module: sorted(m for m in targets if m == PACKAGE or m.startswith(f"{PACKAGE}.views"))
        for module, targets in graph.items()
        if module.startswith(f"{PACKAGE}.device")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


# ----------------------------------------------------------------------------- the whole package: layers

#: the package's layers, lowest first: a module may import its own package and the layers below it, never
#: one above (function-level imports included)
LAYERS: list[set[str]] = [
    {"losses", "models"},
    {"core"},
    {"data"},
    {"methods", "callbacks"},
    {"evaluation"},
    {"resume", "report", "export"},
    {"cli", "__init__"},
    {"__main__"},
]


def _package_graph() -> dict[str, set[str]]:
    root = ROOT / "mvssl_lightning"
    modules = {_module_name(p): p for p in sorted(root.rglob("*.py"))}
    known = set(modules)
    return {name: _imports(name, path, known) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_package_module_has_a_layer():
    for module in _package_graph():
        _layer(module)  # raises StopIteration for a top-level name no layer lists


def test_the_whole_package_imports_only_downward_and_without_cycles():
    graph = _package_graph()
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if _layer(b) > _layer(a) or (_layer(b) == _layer(a) and a.split(".")[:2] != b.split(".")[:2])
    )
    assert not upward, "imports that go up (or sideways between packages of one layer):\n" + "\n".join(upward)
    cycle = _find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_layer_check_sees_an_upward_import_inside_a_function(tmp_path):
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from mvssl_lightning.evaluation.modules import LinearEval\n")
    known = set(_package_graph())
    found = _imports("mvssl_lightning.callbacks.probe", fake, known)
    assert "mvssl_lightning.evaluation.modules" in found
    assert _layer("mvssl_lightning.evaluation.modules") > _layer("mvssl_lightning.callbacks.probe")


def test_every_package_module_imports_in_a_fresh_interpreter():
    # each module first: the library's modules are dropped from sys.modules before the next one
    # (torch and lightly stay cached, so this stays cheap)
    names = sorted(n for n in _package_graph() if not n.endswith("__main__"))
    assert set(_modules()) <= set(names)  # the data package's modules among them
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'mvssl_lightning']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
