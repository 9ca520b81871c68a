"""The package's layers: kernels at the bottom import nothing above them, and no module imports
itself back through others (function-level imports included: an import inside a function
that dodges a cycle at import time is still a cycle in the design)."""

import ast
from pathlib import Path

import retina_np

ROOT = Path(retina_np.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every retina_np module that ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # "from package import submodule" imports the submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_kernels_import_nothing_from_the_rest_of_the_package():
    outside = {name: sorted(d for d in deps if not d.startswith("retina_np.kernels"))
               for name, deps in GRAPH.items() if name.startswith("retina_np.kernels")}
    assert {k: v for k, v in outside.items() if v} == {}


def test_no_import_cycles():
    graph = GRAPH
    # Tarjan's strongly connected components: a component of two or more modules is a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_check_sees_function_level_imports():
    """The parser must not miss an import inside a function (the way cycles were hidden)."""
    source = "def f():\n    from retina_np.detection import losses\n"
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert imported == {"retina_np.detection"}
    assert "retina_np.detection.losses" in MODULES
