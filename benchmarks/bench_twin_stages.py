"""The PyTorch twin's training step by stage, and its backbone's forward layer by layer: where
PyTorch spends the time that ``bench_model.py`` gives for retina_np's step (its stages) and
``profile_step.py`` (its kernels).

    PYTHONPATH=. python benchmarks/bench_twin_stages.py            # 20 timed steps
    PYTHONPATH=. python benchmarks/bench_twin_stages.py --steps 40

The twin (``torch_twin.TorchRetinaNet``) of the shapes preset, with our initial weights, on
our first batch, SGD, ``torch.set_num_threads`` as many threads as Numba's; torch's OpenMP
keeps its own wait policy. Each stage is timed on the clock around the twin's own modules
(``twin.backbone``, ``twin.head``; then the loss, the backward and the update together), and
the backbone's forward again module by module (stem convolution, its batch norm and ReLU,
max pooling, the four stages, the FPN), medians over the timed steps after 5 untimed ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `import retina_np` does, before numpy
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    import numba
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torch_twin as tt

    from retina_np.data import DataLoader, ShapesDataset
    from retina_np.models import RetinaNet, RetinaNetConfig

    torch.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    config = RetinaNetConfig.shapes()
    model = RetinaNet(config, seed=0)
    twin = tt.TorchRetinaNet(config)
    tt.load_numpy_state(twin, model.state_dict())
    images, targets = DataLoader(ShapesDataset(8), 8).batch(0, 0)[:2]
    anchor_class, target_deltas = (torch.from_numpy(a) for a in
                                   tt.match_batch(model, targets, images.shape[-2:]))
    x = torch.from_numpy(images)
    optimizer = tt.sgd(twin)
    stages, layers = {}, {}

    def timed(record, name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        record.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def loss_backward_update(outs):
        tt.retina_loss(*outs, anchor_class, target_deltas, config).backward()
        optimizer.step()

    def step():
        optimizer.zero_grad(set_to_none=True)
        feats = timed(stages, "backbone + FPN forward", twin.backbone, x)
        outs = timed(stages, "heads forward", twin.head, feats)
        timed(stages, "loss, backward and update", loss_backward_update, outs)
        with torch.no_grad():  # the backbone's forward again, module by module
            body = twin.backbone.body
            y = timed(layers, "stem convolution", body.conv1, x)
            y = timed(layers, "its batch norm and ReLU", lambda a: F.relu(body.bn1(a)), y)
            y = timed(layers, "max pooling", F.max_pool2d, y, 3, 2, 1)
            c = [timed(layers, "layer1", body.layer1, y)]
            for name in ("layer2", "layer3", "layer4"):
                c.append(timed(layers, name, getattr(body, name), c[-1]))
            timed(layers, "FPN", twin.backbone.fpn, tuple(c[1:]))

    twin.train()
    for _ in range(5 + args.steps):
        step()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.steps} steps, ms")
    for title, record in (("the twin's training step by stage", stages),
                          ("its backbone's forward by module (under no_grad)", layers)):
        print(f"\n{title}:")
        for name, times in record.items():
            print(f"  {name:28s} {1e3 * np.median(times[5:]):7.2f}")
        print(f"  {'all':28s} {sum(1e3 * np.median(t[5:]) for t in record.values()):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
