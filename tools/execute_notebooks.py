"""Run every chapter notebook once, as a test, and keep the executed copies for the site.

    python tools/execute_notebooks.py                 # every notebooks/*.ipynb
    python tools/execute_notebooks.py notebooks/05_anchors.ipynb

Each notebook runs top to bottom in a fresh kernel, in its own folder (as Jupyter runs it),
and is written with its outputs to ``build/notebooks/`` (git ignores ``build/``). The stored
notebooks in ``notebooks/`` stay without outputs. The exit status is 1 if any cell raised;
the failing cell and its traceback are printed.

``mkdocs build`` renders these executed copies where they exist and match the stored
notebook cell for cell (``tools/mkdocs_hooks.py``); otherwise it renders the stored notebook,
without outputs, so that ``mkdocs serve`` works without running anything.

The notebooks run one after another, not side by side: chapter 14 measures speeds, and
another notebook on the other core would disturb its numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "notebooks"  # where the site looks for executed copies
CELL_TIMEOUT_S = 900  # one cell of a chapter; the longest (chapter 9's training) takes ~2 min


def execute(path: Path, out_dir: Path) -> bool:
    """Run one notebook and write it, with outputs, into out_dir; True if no cell raised."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    ok = True
    try:
        client.execute()
    except CellExecutionError as err:
        ok = False
        print(f"FAILED {path.name}:\n{err}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    if ok:
        nbformat.write(nb, target)
    else:  # no stale copy of a notebook that no longer runs
        target.unlink(missing_ok=True)
    print(f"{'ok    ' if ok else 'FAILED'} {path.name}  {time.perf_counter() - start:6.1f} s",
          flush=True)
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    start = time.perf_counter()
    failed = [p.name for p in paths if not execute(p.resolve(), args.out)]
    print(f"{len(paths) - len(failed)} of {len(paths)} notebooks ran in "
          f"{time.perf_counter() - start:.0f} s; executed copies in {args.out}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
