"""The book's notebooks, read (not run): they use the package instead of re-defining it.

Each notebook must import from ``retina_np``, never define (``def name``, ``class name`` or
``name = lambda``) something the package already defines under the same public name, draw at
least one figure, end with a "Summary" and an "Exercises" section, and be stored without
outputs. Running them is ``python tools/execute_notebooks.py`` (the last step of the test
command), which keeps the executed copies for the site.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retina_np"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Calls that draw: matplotlib's and retina_np.viz's.
PLOT_CALLS = {
    "plot", "imshow", "matshow", "hist", "bar", "barh", "scatter", "step", "fill_between",
    "loglog", "semilogx", "semilogy", "subplots", "figure",
    "draw_anchors", "draw_detections", "detection_grid", "plot_loss_curves", "plot_pr_curves",
}


@cache
def package_names() -> dict[str, str]:
    """Public module-level names defined anywhere in retina_np -> the module defining one."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in found:
                if not name.startswith("_"):
                    names.setdefault(name, module)
    return names


def _python(source: str) -> str:
    """A code cell as plain Python: IPython magics and shell escapes become comments."""
    return "\n".join(
        "# " + line if re.match(r"\s*[%!]", line) else line for line in source.splitlines()
    )


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_trees(nb: dict):
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            yield i, ast.parse(_python(_source(cell)), filename=f"cell {i}")


def _definitions(tree: ast.AST):
    """(name, line, kind) of every function or class the code defines, lambdas included."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, "def"
        elif isinstance(node, ast.ClassDef):
            yield node.name, node.lineno, "class"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Lambda):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    yield t.id, node.lineno, "lambda"


def _called_names(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                yield f.id
            elif isinstance(f, ast.Attribute):
                yield f.attr


def _markdown_heading(cell: dict) -> str:
    first = _source(cell).strip().splitlines()[0] if _source(cell).strip() else ""
    return first.lstrip("#").strip().lower() if first.startswith("#") else ""


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_package_names_are_found():
    names = package_names()
    for name in ("conv2d_forward", "match_anchors", "sigmoid_focal_loss", "RetinaNet", "train",
                 "average_precision", "draw_anchors", "gradcheck_op"):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_redefines_nothing_from_the_package(path):
    names = package_names()
    clashes = [
        f"cell {i}, line {line}: {kind} {name!r} is already {names[name]}.{name}"
        for i, tree in _code_trees(_load(path))
        for name, line, kind in _definitions(tree)
        if name in names
    ]
    assert not clashes, (
        f"{path.name} re-defines what the package has (import it and show it with "
        "inspect.getsource instead):\n  " + "\n  ".join(clashes)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_the_package(path):
    imported = set()
    for _, tree in _code_trees(_load(path)):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    assert "retina_np" in imported, f"{path.name} does not import retina_np"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_draws_a_figure(path):
    called = {name for _, tree in _code_trees(_load(path)) for name in _called_names(tree)}
    assert called & PLOT_CALLS, f"{path.name} has no plotting call ({sorted(PLOT_CALLS)})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_a_title_and_ends_with_summary_and_exercises(path):
    cells = _load(path)["cells"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# "), (
        f"{path.name}: the first cell must be a markdown title '# ...'"
    )
    assert len(cells) >= 3
    summary, exercises = cells[-2], cells[-1]
    assert summary["cell_type"] == "markdown" and _markdown_heading(summary) == "summary", (
        f"{path.name}: the second-to-last cell must be a markdown '## Summary'"
    )
    assert exercises["cell_type"] == "markdown" and _markdown_heading(exercises) == "exercises", (
        f"{path.name}: the last cell must be a markdown '## Exercises'"
    )
    assert re.search(r"^\s*1\.", _source(exercises), re.MULTILINE), (
        f"{path.name}: the exercises should be a numbered list"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    dirty = [
        i for i, cell in enumerate(_load(path)["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs; clear them before committing "
        "(jupyter nbconvert --clear-output --inplace)"
    )


def test_the_check_catches_a_redefinition():
    tree = ast.parse(_python("%matplotlib inline\ndef match_anchors(iou):\n    pass\n"
                             "box_iou = lambda a, b: 0\n"))
    found = {name for name, _, _ in _definitions(tree)}
    assert {"match_anchors", "box_iou"} <= found & set(package_names())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_chapter_of_the_documentation(path):
    for page in (ROOT / "mkdocs.yml", ROOT / "docs" / "chapters.md"):
        assert f"notebooks/{path.name}" in page.read_text(encoding="utf-8"), (
            f"{path.name} is not listed in {page.relative_to(ROOT)}"
        )
