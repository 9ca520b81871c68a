"""Cold and warm start: the first training step of the shapes preset in a new process, with an
empty Numba cache (cold: every kernel compiles) and then with that cache filled (warm); and
the same first step in PyTorch.

    python benchmarks/bench_cold_start.py                      # this checkout, 2 runs
    python benchmarks/bench_cold_start.py --other /tmp/base    # alternating with another one
    python benchmarks/bench_cold_start.py --top 15             # what the compile time goes to
    python benchmarks/bench_cold_start.py --torch-python /path/to/python  # torch lives there

Each run is a new process with ``NUMBA_CACHE_DIR`` set to a new folder and ``PYTHONPATH`` set
to the checkout it measures: this one, or with ``--other`` another one (a worktree of an
earlier commit, say), the two alternating. ``--top`` lists the functions whose compilation
took longest in the cold runs of this checkout (Numba's compile events; nested compilations
count in their caller too).

The PyTorch side (``--torch-python``, by default this python if it imports torch; ``--no-torch``
skips it): in each round, two new processes that import torch and ``torch_twin.py``, build
``TorchRetinaNet(RetinaNetConfig.shapes())`` with our initial weights and run its first
training step (AdamW, lr 0.004, gradients clipped at norm 10, as ours) on our first batch.
torch has no compile cache: its second run is "warm" only for the operating system's file
cache. The twin's process loads no Numba: ``config.py`` is read as a lone file (it imports only
the standard library), and the batch, our initial weights and the anchor matches come from a
file that a process of this python wrote before (retina_np's matcher, as bench_model.py's
comparison does; our step matches inside its loss, and compiles the matcher when cold).
torch's OpenMP keeps its own wait policy (idle workers spin) unless the environment sets
``OMP_WAIT_POLICY``; ours sleeps (``import retina_np`` sets PASSIVE). On a machine that other
processes share, the spinning makes torch's step swing widely; PASSIVE steadies it.

Times are measured alike on both sides: ``import`` (numpy and retina_np's modules, or numpy,
torch and the twin) and ``first step`` inside the process, ``total`` from the script's first
line to the end of the first step (imports, building the model, the batch, the step), and
``from spawn`` from just before the parent starts the process to the end of the first step
(adding the interpreter's own start-up, which ``interpreter`` gives).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # this checkout

# time.monotonic() is CLOCK_MONOTONIC on Linux, one clock for all processes: "started" and
# "ended" compare with the parent's time before it started the process.
CHILD = r"""
import json, sys, time
started = time.monotonic()
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
losses = train_step(model, optimizer, images, targets, 0.004, 10.0)
t_step = time.perf_counter() - t1
print(json.dumps({{"import": t_import, "first_step": t_step,
                   "total": time.perf_counter() - t0, "started": started,
                   "ended": time.monotonic(), "compile": events,
                   "loss": losses["total"] if isinstance(losses, dict) else losses}}))
"""

# Our first batch, initial weights and the anchor matches of that batch, for the torch side
# (run once, by the torch python, which needs retina_np's dependencies for it).
PREPARE = r"""
import sys
import numpy as np
sys.path.insert(0, {bench!r})
import torch_twin as tt
from retina_np.data import DataLoader, ShapesDataset
from retina_np.models import RetinaNet, RetinaNetConfig
model = RetinaNet(RetinaNetConfig.shapes())
loader = DataLoader(ShapesDataset(16, seed=0), 8, shuffle=True, flip=True, seed=0)
images, targets = loader.batch(0, 0)[:2]
anchor_class, target_deltas = tt.match_batch(model, targets, images.shape[-2:])
np.savez({folder!r} + "/state.npz", **model.state_dict())
np.savez({folder!r} + "/batch.npz", images=images, anchor_class=anchor_class,
         target_deltas=target_deltas)
"""

TORCH_CHILD = r"""
import json, sys, time
started = time.monotonic()
t0 = time.perf_counter()
import numpy as np
import torch
t_torch = time.perf_counter() - t0
import importlib.util
spec = importlib.util.spec_from_file_location("retina_np_config", {config!r})
config_module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = config_module  # dataclasses looks the module up
spec.loader.exec_module(config_module)
sys.path.insert(0, {bench!r})
import torch_twin as tt
t_import = time.perf_counter() - t0
torch.set_num_threads({threads})  # as many as our Numba kernels use
config = config_module.RetinaNetConfig.shapes()
twin = tt.TorchRetinaNet(config)
tt.load_numpy_state(twin, dict(np.load({folder!r} + "/state.npz")))
batch = np.load({folder!r} + "/batch.npz")
images, anchor_class, target_deltas = (torch.from_numpy(batch[k]) for k in
                                       ("images", "anchor_class", "target_deltas"))
optimizer = tt.adamw(twin, 0.004)
t1 = time.perf_counter()
loss = tt.train_step(twin, optimizer, images, anchor_class, target_deltas, config, clip=10.0)
t_step = time.perf_counter() - t1
print(json.dumps({{"import": t_import, "import_torch": t_torch, "first_step": t_step,
                   "total": time.perf_counter() - t0, "started": started,
                   "ended": time.monotonic(), "loss": loss, "version": torch.__version__,
                   "numba_loaded": "numba" in sys.modules}}))
"""


def _run(pythonpath: str, cache: str, top: bool) -> dict:
    return _spawn(sys.executable, CHILD.format(top=bool(top)), pythonpath, cache)


def _spawn(python: str, code: str, pythonpath: str, folder: str) -> dict:
    """``python -c code`` in a new process, in ``folder`` (``python -c`` puts the working
    directory before ``PYTHONPATH`` on sys.path: a checkout's root would shadow the other
    one), with ``folder`` as its Numba cache; its JSON result with the times from spawn."""
    env = dict(os.environ, NUMBA_CACHE_DIR=folder, PYTHONPATH=pythonpath)
    spawned = time.monotonic()
    out = subprocess.run([python, "-c", code], env=env, cwd=folder, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["interpreter"] = result["started"] - spawned
    result["from_spawn"] = result["ended"] - spawned
    return result


def _torch_python(args) -> str | None:
    """The python that runs the torch side, or None (with the reason printed)."""
    if args.no_torch:
        return None
    python = args.torch_python or sys.executable
    found = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    if not found:
        print(f"PyTorch side skipped: {python} cannot import torch (--torch-python PATH)")
        return None
    return python


def _print_summary(results: dict, sides: list, torch_runs: dict) -> None:
    rows = []
    for name, _ in sides:
        rows.append((f"{name}, cold (empty Numba cache)", results[name]["cold"]))
        rows.append((f"{name}, warm (cache filled)", results[name]["warm"]))
    if torch_runs["first"]:
        rows.append(("torch, first run of the round", torch_runs["first"]))
        rows.append(("torch, second run (OS file cache warm)", torch_runs["second"]))
    print("\nmedians over the runs, seconds (import: numpy + retina_np, or numpy + torch + the "
          "twin; setup: the model, its weights, the batch, the optimizer; total: the script's "
          "first line to the end of the first step; from spawn: adds the interpreter's start-up)")
    print(f"{'':40s} {'interpreter':>11} {'import':>7} {'setup':>6} {'first step':>10} "
          f"{'total':>7} {'from spawn':>10} {'loss':>8}")
    for label, runs in rows:
        for r in runs:
            r["setup"] = r["total"] - r["import"] - r["first_step"]
        med = {k: np.median([r[k] for r in runs]) for k in
               ("interpreter", "import", "setup", "first_step", "total", "from_spawn", "loss")}
        print(f"{label:40s} {med['interpreter']:11.2f} {med['import']:7.2f} {med['setup']:6.2f} "
              f"{med['first_step']:10.2f} {med['total']:7.2f} {med['from_spawn']:10.2f} "
              f"{med['loss']:8.4f}")
    if torch_runs["first"]:
        runs = torch_runs["first"] + torch_runs["second"]
        print(f"torch {runs[0]['version']}: import torch alone median "
              f"{np.median([r['import_torch'] for r in runs]):.2f} s; its setup includes "
              "torch.optim's first optimizer, which imports torch._dynamo (~1 s); its step does "
              "not match anchors (done beforehand, as in bench_model.py), ours matches inside "
              "the step; the same loss on both sides: the same weights and batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", help="another checkout's root (it holds retina_np/)")
    parser.add_argument("--runs", type=int, default=2, help="cold + warm runs of each")
    parser.add_argument("--top", type=int, default=0, help="list the N slowest compilations")
    parser.add_argument("--torch-python", help="a python with torch (default: this one)")
    parser.add_argument("--no-torch", action="store_true", help="no PyTorch side")
    args = parser.parse_args()
    if args.other and not (Path(args.other) / "retina_np").is_dir():
        parser.error(f"{args.other} has no retina_np/ folder")
    this = [("this", str(ROOT))]
    sides = [("other", str(Path(args.other).resolve()))] + this if args.other else this
    results = {name: {"cold": [], "warm": []} for name, _ in sides}
    compile_times: dict[str, float] = {}
    torch_python = _torch_python(args)
    torch_runs = {"first": [], "second": []}
    prepared = tempfile.TemporaryDirectory()
    if torch_python:
        import numba  # the thread count our kernels use (importing starts no threads)

        threads = numba.config.NUMBA_NUM_THREADS
        subprocess.run([torch_python, "-c", PREPARE.format(bench=str(HERE),
                                                           folder=prepared.name)],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=prepared.name,
                       check=True)
        torch_code = TORCH_CHILD.format(config=str(ROOT / "retina_np" / "models" / "config.py"),
                                        bench=str(HERE), folder=prepared.name, threads=threads)
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
        if torch_python:
            with tempfile.TemporaryDirectory() as folder:
                first = _spawn(torch_python, torch_code, str(ROOT), folder)
                second = _spawn(torch_python, torch_code, str(ROOT), folder)
            torch_runs["first"].append(first)
            torch_runs["second"].append(second)
            print(f"run {i + 1} torch: first step {first['first_step']:5.2f} s (import "
                  f"{first['import']:.1f} s), start {first['total']:.1f} s; again: first step "
                  f"{second['first_step']:.2f} s (import {second['import']:.1f} s), start "
                  f"{second['total']:.1f} s"
                  + (" (Numba was loaded in torch's process)" if first["numba_loaded"] else ""),
                  flush=True)
    prepared.cleanup()
    for name, _ in sides:
        cold = [r["first_step"] for r in results[name]["cold"]]
        warm = [r["total"] for r in results[name]["warm"]]
        print(f"{name:5s}: cold first step median {np.median(cold):.1f} s "
              f"(range {min(cold):.1f}-{max(cold):.1f}), warm start median {np.median(warm):.1f} s")
    _print_summary(results, sides, torch_runs)
    if args.top:
        print(f"\nthe {args.top} slowest compilations (this checkout, mean of the cold runs):")
        for qualname, seconds in sorted(compile_times.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {seconds:6.2f} s  {qualname}")
        print(f"  {sum(compile_times.values()):6.2f} s  all compilations (nested ones counted "
              "in their callers too)")


if __name__ == "__main__":
    main()
