"""Cold and warm start: the first training step of the shapes preset in a new process, with an
empty Numba cache (cold: every kernel compiles) and then with that cache filled (warm).

    python benchmarks/bench_cold_start.py                      # this checkout, 2 runs
    python benchmarks/bench_cold_start.py --other /tmp/base    # alternating with another one
    python benchmarks/bench_cold_start.py --top 15             # what the compile time goes to

Each run is a new process with ``NUMBA_CACHE_DIR`` set to a new folder; with ``--other`` the
other checkout's runs set ``PYTHONPATH`` to it (a worktree of an earlier commit, say), and the
two alternate. ``--top`` lists the functions whose compilation took longest in the cold runs
of this checkout (Numba's compile events; nested compilations count in their caller too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
events = []
if {top}:
    from numba.core import event
    class Listener(event.Listener):
        def on_start(self, ev):
            ev.data["t"] = time.perf_counter()
        def on_end(self, ev):
            d = ev.data["dispatcher"]
            events.append((d.py_func.__module__ + "." + d.py_func.__qualname__,
                           time.perf_counter() - ev.data["t"]))
    event.register("numba:compile", Listener())
from retina_np.data import DataLoader, ShapesDataset
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.optim import AdamW
from retina_np.train import train_step
t_import = time.perf_counter() - t0
model = RetinaNet(RetinaNetConfig.shapes())
loader = DataLoader(ShapesDataset(16, seed=0), 8, shuffle=True, flip=True, seed=0)
images, targets = loader.batch(0, 0)[:2]
optimizer = AdamW(model.named_parameters(), 0.004)
t1 = time.perf_counter()
train_step(model, optimizer, images, targets, 0.004, 10.0)
t_step = time.perf_counter() - t1
print(json.dumps({{"import": t_import, "first_step": t_step,
                   "total": time.perf_counter() - t0, "compile": events}}))
"""


def _run(pythonpath: str | None, cache: str, top: bool) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", CHILD.format(top=bool(top))], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", help="another checkout's root (it holds retina_np/)")
    parser.add_argument("--runs", type=int, default=2, help="cold + warm runs of each")
    parser.add_argument("--top", type=int, default=0, help="list the N slowest compilations")
    args = parser.parse_args()
    if args.other and not (Path(args.other) / "retina_np").is_dir():
        parser.error(f"{args.other} has no retina_np/ folder")
    sides = [("other", args.other), ("this", None)] if args.other else [("this", None)]
    results = {name: {"cold": [], "warm": []} for name, _ in sides}
    compile_times: dict[str, float] = {}
    for i in range(args.runs):
        for name, path in sides:
            with tempfile.TemporaryDirectory() as cache:
                cold = _run(path, cache, args.top and name == "this")
                warm = _run(path, cache, False)
            for qualname, seconds in cold.pop("compile"):
                compile_times[qualname] = compile_times.get(qualname, 0.0) + seconds / args.runs
            warm.pop("compile")
            results[name]["cold"].append(cold)
            results[name]["warm"].append(warm)
            print(f"run {i + 1} {name:5s}: cold first step {cold['first_step']:5.1f} s "
                  f"(import {cold['import']:.1f} s), warm start {warm['total']:.1f} s "
                  f"(import {warm['import']:.1f} s, first step {warm['first_step']:.2f} s)",
                  flush=True)
    for name, _ in sides:
        cold = [r["first_step"] for r in results[name]["cold"]]
        warm = [r["total"] for r in results[name]["warm"]]
        print(f"{name:5s}: cold first step median {np.median(cold):.1f} s "
              f"(range {min(cold):.1f}-{max(cold):.1f}), warm start median {np.median(warm):.1f} s")
    if args.top:
        print(f"\nthe {args.top} slowest compilations (this checkout, mean of the cold runs):")
        for qualname, seconds in sorted(compile_times.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {seconds:6.2f} s  {qualname}")
        print(f"  {sum(compile_times.values()):6.2f} s  all compilations (nested ones counted "
              "in their callers too)")


if __name__ == "__main__":
    main()
