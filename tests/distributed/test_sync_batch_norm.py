"""Synchronised batch norm at the op level, without MPI: two threads play two ranks, their
``allreduce`` a barrier that sums what both hand in. Each thread normalises its half of the
batch; together they must give the whole batch's forward and backward."""

import threading

import numpy as np
import pytest

from retina_np import ops


class ThreadRanks:
    """``allreduce`` for ``n`` threads: each call returns the sum of the n arrays handed in."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n)
        self.parts = [None] * n

    def allreduce_for(self, rank):
        def allreduce(a):
            self.parts[rank] = a.copy()
            self.barrier.wait()
            total = np.sum(self.parts, axis=0)
            self.barrier.wait()  # everyone has read the parts before the next call
            return total
        return allreduce


def halves_in_threads(fn, x, dy):
    """fn(x_half, dy_half, allreduce) in two threads -> the two results."""
    ranks, results = ThreadRanks(2), [None, None]

    def run(r):
        n = x.shape[0] // 2
        part = slice(r * n, (r + 1) * n)
        results[r] = fn(x[part], dy[part], ranks.allreduce_for(r))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("relu", [False, True])
def test_two_halves_compute_the_whole_batch(rng, dtype, rtol, relu):
    N, C, H, W = 4, 3, 5, 6
    x = (rng.normal(size=(N, C, H, W)) * 2 + 1).astype(dtype)
    dy = rng.normal(size=(N, C, H, W)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, C).astype(dtype), rng.normal(size=C).astype(dtype)

    def step(x, dy, allreduce):
        running = [np.zeros(C, dtype), np.ones(C, dtype)]
        y, cache = ops.batchnorm2d_forward(x, gamma, beta, *running, training=True,
                                           relu=relu, allreduce=allreduce)
        return (y, *ops.batchnorm2d_backward(dy, cache), *running)

    whole = step(x, dy, None)
    halves = halves_in_threads(step, x, dy)
    y, dx = (np.concatenate([h[i] for h in halves]) for i in (0, 1))
    np.testing.assert_allclose(y, whole[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, whole[1], rtol=rtol, atol=rtol)
    # dgamma and dbeta stay each half's own: the gradient average adds them up
    for i in (2, 3):
        np.testing.assert_allclose(halves[0][i] + halves[1][i], whole[i], rtol=rtol, atol=rtol)
    for i in (4, 5):  # the running statistics: the whole batch's, on both
        for h in halves:
            np.testing.assert_allclose(h[i], whole[i], rtol=rtol)


def test_eval_mode_shares_nothing(rng):
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)

    def refuse(a):
        raise AssertionError("eval mode must not allreduce")

    c = np.ones(3, np.float32)
    y, cache = ops.batchnorm2d_forward(x, c, c * 0, c * 0, c, training=False, allreduce=refuse)
    ops.batchnorm2d_backward(x, cache)
