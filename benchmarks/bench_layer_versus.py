"""One convolution layer, forward and both gradients, in alternating processes: this checkout,
optionally another one (a worktree of an earlier commit), and PyTorch's ``conv2d``.

    python benchmarks/bench_layer_versus.py                          # ResNet-50's last 3x3
    python benchmarks/bench_layer_versus.py --other /tmp/base --rounds 6
    python benchmarks/bench_layer_versus.py --shape 1,256,256,32,32  # N,C,F,H,W of a 3x3

Each side runs in a fresh process per round and times the layer as ``bench_kernels.py`` does
(``time_ours``: the forward with a fresh workspace, the input gradient, the weight gradient
from what the forward kept, best of 15 rounds; torch: forward and backward, best of 15); the
sides take turns, round after round, so that the machine's slow and fast spells hit them
alike. torch comes from ``--torch-python`` (default: this interpreter), with this checkout on
its path for the shared helpers. Prints each round and, per side, the median, and the ratios
against PyTorch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

OURS = """
import json, sys
sys.path.insert(0, {repo!r})
from benchmarks.bench_kernels import time_ours  # this checkout's helpers (they import the
sys.path.insert(0, {checkout!r})  # package when called): the checkout's package, first
import retina_np
assert retina_np.__file__.startswith({checkout!r}), retina_np.__file__
t, _ = time_ours(tuple(json.loads(sys.argv[1])), 15, 1.0, 0)
print(t["fwd"] + t["in"] + t["w"])
"""

TORCH = """
import json, sys
sys.path.insert(0, {repo!r})
from benchmarks.bench_kernels import time_torch
print(time_torch(json.loads(sys.argv[1]), 15, 1.0))
"""


def _seconds(python: str, code: str, shape: list) -> float:
    out = subprocess.run([python, "-c", code, json.dumps(shape)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,512,512,16,16",
                        help="N,C,F,H,W of a 3x3, stride-1, padding-1 convolution")
    parser.add_argument("--other", help="another checkout's root (it holds retina_np/)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--torch-python", default=sys.executable)
    args = parser.parse_args(argv)
    N, C, F, H, W = (int(v) for v in args.shape.split(","))
    shape = [f"{N},{C}>{F},{H}x{W}", N, C, F, H, W, 3, 1, 1]
    sides = {"this": (sys.executable, OURS.format(checkout=str(REPO), repo=str(REPO)))}
    if args.other:
        if not (Path(args.other) / "retina_np").is_dir():
            parser.error(f"{args.other} has no retina_np/ folder")
        sides["other"] = (sys.executable, OURS.format(checkout=args.other, repo=str(REPO)))
    sides["torch"] = (args.torch_python, TORCH.format(repo=str(REPO)))
    times = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, (python, code) in sides.items():
            try:
                times[name].append(_seconds(python, code, shape))
            except subprocess.CalledProcessError as error:
                if name != "torch":
                    raise
                print(f"torch not measured: {error.stderr.strip().splitlines()[-1]}")
                del times["torch"], sides["torch"]
                break
        print(f"round {r + 1}: " + ", ".join(f"{k} {1e3 * v[-1]:.2f} ms"
                                              for k, v in times.items()), flush=True)
    print(f"\n{shape[0]}, 3x3, forward and both gradients; medians of {args.rounds} rounds:")
    for name, ts in times.items():
        line = f"  {name:5s} {1e3 * np.median(ts):6.2f} ms"
        if "torch" in times and name != "torch":
            ratios = np.array(times["torch"]) / np.array(ts)
            line += (f"   torch / {name} round by round: {ratios.min():.2f}-{ratios.max():.2f}"
                     f" (median {np.median(ratios):.2f})")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
