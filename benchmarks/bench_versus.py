"""The shapes preset's training step of this checkout against another one (a worktree of an
earlier commit, say), in alternating processes.

    git worktree add /tmp/base <commit>
    python benchmarks/bench_versus.py /tmp/base             # 8 runs of each
    python benchmarks/bench_versus.py /tmp/base --runs 4

Each run is ``bench_model.py --only train`` (20 timed steps, the GEMM sampled between them) in
a fresh process, with ``PYTHONPATH`` set to the other checkout for its runs, so both use this
checkout's benchmark script; the two alternate, so that both see the machine's slow and fast
spells alike (a pair of separate runs a minute apart can differ by 30% on the 2-core
development machine). Prints each run's step and fraction of the GEMM, the medians, and the
share of the pairs in which this checkout's step was the faster one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _run(pythonpath: str | None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, str(HERE / "bench_model.py"), "--only", "train"],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", help="the other checkout's root (it holds retina_np/)")
    parser.add_argument("--runs", type=int, default=8, help="runs of each")
    args = parser.parse_args()
    if not (Path(args.other) / "retina_np").is_dir():
        parser.error(f"{args.other} has no retina_np/ folder")
    results = {"other": [], "this": []}
    for i in range(args.runs):
        for name, path in (("other", args.other), ("this", None)):
            r = _run(path)
            results[name].append(r)
            print(f"run {i + 1} {name:5s}: step {1e3 * r['seconds_per_step']:6.1f} ms, "
                  f"{100 * r['fraction_of_gemm']:4.1f}% of the GEMM", flush=True)
    steps = {k: np.array([r["seconds_per_step"] for r in v]) for k, v in results.items()}
    for name in ("other", "this"):
        fractions = [r["fraction_of_gemm"] for r in results[name]]
        print(f"{name:5s}: median step {1e3 * np.median(steps[name]):6.1f} ms, median "
              f"{100 * np.median(fractions):4.1f}% of the GEMM (range "
              f"{100 * min(fractions):.0f}-{100 * max(fractions):.0f}%)")
    print(f"this checkout's step faster in {int(np.sum(steps['this'] < steps['other']))} of "
          f"{args.runs} pairs")


if __name__ == "__main__":
    main()
