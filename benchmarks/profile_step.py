"""Where one training step of the shapes preset spends its time, kernel by kernel (CPU,
float32, batch 8, SGD), from Python's profiler.

    python benchmarks/profile_step.py              # 20 profiled steps, the 25 costliest entries
    python benchmarks/profile_step.py --steps 40 --top 40

``bench_model.py`` gives the step's stages on the clock and its layers; this gives the
kernels inside them. Numba's dispatchers report each kernel call to the profiler under the
kernel's Python name, so a Numba kernel's own time is the ``self`` column of its entry;
NumPy's products (``matmul``) and copies appear as built-ins, and the Python around them
(``ops``, layers, the schedule) as Python functions. The profiler sees the calling thread only,
so the step runs with its independent parts one after another
(``kernels.options(side_by_side=False)``): the times are the work, summed as one thread would
do it, not the wall clock of the scheduled step, and each call costs about a microsecond more
than without the profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `import retina_np` does, before numpy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from retina_np import kernels
    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.optim import SGD
    from retina_np.train import train_step

    model = RetinaNet(RetinaNetConfig.shapes(), seed=0)
    loader = DataLoader(ShapesDataset(8 * 4), 8)
    optimizer = SGD(model.named_parameters(), lr=0.01)
    batches = [loader.batch(0, i)[:2] for i in range(4)]
    profiler = cProfile.Profile()
    with kernels.options(side_by_side=False):
        for i in range(2):  # compile or load the kernels
            train_step(model, optimizer, *batches[i], 0.01)
        profiler.enable()
        for i in range(args.steps):
            train_step(model, optimizer, *batches[i % 4], 0.01)
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, _, self, cumulative, _)
    total = sum(entry[2] for entry in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:args.top]
    print(f"{args.steps} steps, serial schedule; all profiled time {1e3 * total / args.steps:.1f}"
          " ms a step")
    print(f"{'self ms/step':>12} {'share':>6} {'calls/step':>10}  function")
    for (path, _line, name), (calls, _, own, _, _) in rows:
        where = name if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{name}"
        print(f"{1e3 * own / args.steps:12.2f} {own / total:6.1%} {calls / args.steps:10.0f}  "
              f"{where}")


if __name__ == "__main__":
    main()
