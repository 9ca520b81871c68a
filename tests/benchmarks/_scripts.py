"""Running a script of benchmarks/ from its tests, as a user would: a fresh interpreter with
this checkout on its path."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(name: str, *args: str, timeout: int = 300) -> str:
    """The standard output of ``python benchmarks/<name>.py *args``; fails on a non-zero exit
    status."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=True).stdout
