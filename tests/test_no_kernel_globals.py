"""Nothing outside the kernels writes a kernel module's globals: tests, benchmarks and
notebooks switch algorithms and limits with ``kernels.options(...)`` instead (issue: hidden
state that decided which algorithm ran)."""

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _sources():
    for folder in ("tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path, path.read_text()
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        # IPython's magics and shell escapes are not Python
        yield path, "\n".join(line for line in code.splitlines()
                              if not line.lstrip().startswith(("%", "!")))


def _kernel_module_names(tree) -> set[str]:
    """Local names bound to retina_np.kernels modules (``from retina_np.kernels import cpu``,
    ``import retina_np.kernels.cpu as c``, ...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retina_np.kernels"):
            names.update(a.asname or a.name for a in node.names if a.name[:1].islower())
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("retina_np.kernels") and a.asname:
                    names.add(a.asname)
    return names


def _writes(tree, modules) -> list[str]:
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                        and sub.value.id in modules):
                    found.append(f"line {node.lineno}: {sub.value.id}.{sub.attr} = ...")
        if isinstance(node, ast.Call) and node.args:
            fn = node.func
            is_setattr = (isinstance(fn, ast.Name) and fn.id == "setattr") or (
                isinstance(fn, ast.Attribute) and fn.attr in ("setattr", "delattr"))
            first = node.args[0]
            if is_setattr and ((isinstance(first, ast.Name) and first.id in modules) or (
                    isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and first.value.startswith("retina_np.kernels"))):
                found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


SOURCES = list(_sources())


@pytest.mark.parametrize("path,source", SOURCES, ids=[str(p.relative_to(REPO)) for p, _ in SOURCES])
def test_no_writes_to_kernel_modules(path, source):
    tree = ast.parse(source)
    assert _writes(tree, _kernel_module_names(tree)) == []


def test_the_check_finds_each_kind_of_write():
    source = ("from retina_np.kernels import cpu, threads\n"
              "cpu.WINOGRAD = False\n"
              "monkeypatch.setattr(threads, 'ENABLED', False)\n"
              "setattr(cpu, 'X', 1)\n"
              "mp.setattr('retina_np.kernels.cpu.Y', 2)\n")
    tree = ast.parse(source)
    assert len(_writes(tree, _kernel_module_names(tree))) == 4
