"""Running a script of benchmarks/ from its tests, as a user would (a fresh interpreter with
this checkout on its path), or loading it as a module to call its functions."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark(name: str, *args: str, timeout: int = 300) -> str:
    """The standard output of ``python benchmarks/<name>.py *args``; fails on a non-zero exit
    status."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=True).stdout
