"""The host-staged path of data-parallel training (retina_np/distributed.py) on device arrays:
the gradient average and synchronised batch norm copy their (C,) and flat buffers through host
memory and back. A pretend job of 2 ranks whose other rank holds the same values: its
allreduce doubles, so the average and the whole batch's statistics are this rank's own."""

import numpy as np
from cuda_helpers import assert_close, host, to_dev

from retina_np import backend, distributed, ops
from retina_np.nn import Parameter


class TwinRanks(distributed.Communicator):
    """Rank 0 of 2, the other rank a copy of this one."""

    def __init__(self):
        super().__init__()
        self.size = 2
        self.calls = 0

    def allreduce_sum(self, a):
        self.calls += 1
        assert isinstance(a, np.ndarray)  # host-staged: MPI gets host memory
        return a * 2


def test_gradient_average_on_device(small_launches, rng):
    grads = [rng.normal(size=s).astype(np.float32) for s in ((3, 2, 3, 3), (3,))]
    params = [Parameter(to_dev(np.zeros_like(g))) for g in grads]
    for p, g in zip(params, grads):
        p.grad = to_dev(g * 3)
    comm = TwinRanks()
    distributed.average_gradients(params, comm)
    assert comm.calls == 1
    for p, g in zip(params, grads):
        assert_close(host(p.grad), g * 3)


def test_synchronised_batch_norm_on_device(small_launches, rng):
    x = (rng.normal(size=(2, 3, 4, 4)) * 2 + 1).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(np.float32), rng.normal(size=3).astype(np.float32)

    def run(allreduce, on_device):
        put = to_dev if on_device else (lambda a: a.copy())
        running = [put(np.zeros(3, np.float32)), put(np.ones(3, np.float32))]
        y, cache = ops.batchnorm2d_forward(put(x), put(gamma), put(beta), *running,
                                           training=True, allreduce=allreduce)
        return [backend.to_numpy(a)
                for a in (y, *ops.batchnorm2d_backward(put(dy), cache), *running)]

    comm = TwinRanks()
    synced, alone = run(comm.allreduce_sum, True), run(None, False)
    assert comm.calls == 2  # the statistics, and the backward's two sums
    for a, b in zip(synced[:4], alone[:4]):  # y, dx, dgamma, dbeta
        assert_close(a, b)
    # the running variance's unbiased correction counts the whole batch: 2 x 32 values
    m = x.shape[0] * x.shape[2] * x.shape[3]
    var = x.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1)
    assert_close(synced[5], 0.9 + 0.1 * var * (2 * m) / (2 * m - 1))
