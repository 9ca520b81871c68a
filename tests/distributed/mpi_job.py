"""The jobs that tests/distributed/test_mpi.py starts with ``mpiexec -n 2`` (and once in a
lone process, as the reference). Not a test file itself: pytest collects only test_*.py.

    python mpi_job.py grads OUT                  # each rank's gradient, and their average
    python mpi_job.py train OUT STEPS BATCH [--dtype float64] [--crash-at STEP] [--resume]
                                            [--checkpoint-every N]
"""

import argparse
import sys
import time

import numpy as np

from retina_np import distributed
from retina_np.data import DataLoader, ShapesDataset
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.train import TrainConfig, train


def dataset():
    return ShapesDataset(16, image_size=64, seed=3, min_size=12, max_size=32)


def model(dtype="float32"):
    """The tiny preset: batch norm in training mode in the backbone."""
    m = RetinaNet(RetinaNetConfig.tiny(3), seed=0)
    return m.astype(np.dtype(dtype)) if dtype != "float32" else m


def grads(out):
    """Each rank's gradient of its share of one batch of 4, then the allreduced average."""
    comm = distributed.world()
    net = model().train()
    distributed.sync_batch_norm(net, comm)
    c = net.config
    loader = DataLoader(dataset(), 4, seed=0, size_divisible=c.size_divisible,
                        image_mean=c.image_mean, image_std=c.image_std)
    images, targets, _, _ = loader.batch(0, 0, rank=comm.rank, ranks=comm.size)
    net.zero_grad()
    cls, box = net(images)
    _, d_cls, d_box = net.loss(cls, box, targets, images.shape[-2:])
    net.backward(d_cls, d_box)
    names = [n for n, _ in net.named_parameters()]
    np.savez(f"{out}/grads_rank{comm.rank}.npz",
             **{n: p.grad.copy() for n, p in net.named_parameters()})
    distributed.average_gradients(net.parameters(), comm)
    np.savez(f"{out}/average_rank{comm.rank}.npz",
             **{n: p.grad for n, p in zip(names, net.parameters())})


def run_train(out, steps, batch, dtype, crash_at, resume, checkpoint_every=2):
    """train() as the command line runs it; --crash-at raises in the last rank after that
    step (after the checkpoint of the step before)."""
    comm = distributed.world()

    def on_step(record):
        if record["step"] == crash_at and comm.rank == comm.size - 1:
            raise RuntimeError(f"a failure planted at step {crash_at}, at {time.time()}")

    cfg = TrainConfig(steps=steps, batch_size=batch, lr=0.01, warmup_steps=2,
                      checkpoint_every=checkpoint_every, flip=True, seed=0)
    train(model(dtype), dataset(), out, cfg, resume=resume, progress=False, on_step=on_step)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=["grads", "train"])
    parser.add_argument("out")
    parser.add_argument("steps", type=int, nargs="?", default=4)
    parser.add_argument("batch", type=int, nargs="?", default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--crash-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=2)
    args = parser.parse_args()
    if args.job == "grads":
        grads(args.out)
    else:
        run_train(args.out, args.steps, args.batch, args.dtype, args.crash_at, args.resume,
                  args.checkpoint_every)
    sys.exit(0)
