"""A 3x3 convolution's forward + backward through ``retina_np.nn.Conv2d`` (N=8, C=F=128, 32x32)
in a fresh process, with and without ``import torch`` before ``import retina_np``.

    python benchmarks/bench_torch_first.py               # needs torch in this environment
    python benchmarks/bench_torch_first.py --rounds 4

torch's OpenMP runtime starts with busy-waiting idle threads; sharing them, Numba's OpenMP
pool made every kernel about 9x slower on 2 cores. ``retina_np/runtime.py`` sees an OpenMP
runtime that started first and takes Numba's workqueue threading layer instead. The third
case forces the old behaviour (Numba's OpenMP layer beside torch's runtime) to show what the
fix avoids. Each case runs in its own process, the cases alternating, ``rounds`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, time
{first}
import numpy as np
import retina_np
from retina_np.nn import Conv2d
import numba
conv = Conv2d(128, 128, 3, padding=1, rng=np.random.default_rng(0))
x = np.random.default_rng(1).standard_normal((8, 128, 32, 32)).astype(np.float32)
def step():
    y = conv(x)
    conv.backward(np.ones_like(y))
for _ in range(3):
    step()
times = []
for _ in range(15):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
flops = 3 * 2 * 8 * 128 * 128 * 9 * 32 * 32  # forward, input and weight gradients
print(json.dumps({{"gflops": flops / min(times) / 1e9,
                   "median_gflops": flops / sorted(times)[7] / 1e9,
                   "layer": numba.threading_layer()}}))
"""

CASES = {
    "retina_np alone": ("", {}),
    "torch imported first": ("import torch", {}),
    "torch first, Numba's OpenMP layer forced": ("import torch", {"NUMBA_THREADING_LAYER": "omp"}),
}


def _run(first: str, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD.format(first=first)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {name: [] for name in CASES}
    for i in range(args.rounds):
        for name, (first, env) in CASES.items():
            r = _run(first, env)
            results[name].append(r["gflops"])
            print(f"round {i + 1} {name:42s} {r['gflops']:6.1f} GFLOP/s (best of 15; median "
                  f"{r['median_gflops']:6.1f}), Numba's {r['layer']} layer", flush=True)
    for name, values in results.items():
        print(f"{name:42s} median of rounds {np.median(values):6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
