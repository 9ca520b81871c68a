"""Elementwise CUDA kernels (kernels/cuda/elementwise.py), batch norm's apply and statistics
update (cuda/norm.py), the heads' layout (cuda/layout.py) and the in-place utilities
(cuda/optim.py)."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_np.kernels import cpu, reference
from retina_np.kernels import cuda as kcuda


def test_relu_forward_backward(small_launches, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0  # the derivative at 0 is taken as 0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = kcuda.relu_forward(to_dev(x))
    np.testing.assert_array_equal(host(y), cpu.relu_forward(x))
    dx = kcuda.relu_backward(to_dev(dy), y)
    np.testing.assert_array_equal(host(dx), cpu.relu_backward(dy, cpu.relu_forward(x)))


def test_add_and_empty_arrays(small_launches, rng):
    a, b = rng.standard_normal((2, 5, 3, 3)), rng.standard_normal((2, 5, 3, 3))
    np.testing.assert_array_equal(host(kcuda.add_forward(to_dev(a), to_dev(b))), a + b)
    empty = np.zeros((0, 3, 2, 2), np.float32)
    assert kcuda.relu_forward(to_dev(empty)).shape == empty.shape


def test_batchnorm_apply(small_launches, rng):
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    mean, gamma, beta = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    invstd = rng.uniform(0.5, 2, 3).astype(np.float32)
    y = kcuda.batchnorm2d_forward(*(to_dev(a) for a in (x, mean, invstd, gamma, beta)))
    assert_close(host(y), cpu.batchnorm2d_forward(x, mean, invstd, gamma, beta))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_update_and_eval_stats(small_launches, rng, dtype):
    """One thread per channel, 11 channels over several blocks and a grid-stride loop; float64
    arithmetic as the CPU twin (a real GPU may fuse a multiply-add: one rounding apart)."""
    C, count, momentum, eps = 11, 37, 0.1, 1e-5
    mean, running_mean = (rng.standard_normal(C).astype(dtype) for _ in range(2))
    var, running_var = (rng.uniform(0.1, 3, C).astype(dtype) for _ in range(2))
    d_rm, d_rv = to_dev(running_mean), to_dev(running_var)
    invstd = kcuda.batchnorm2d_update_stats(to_dev(mean), to_dev(var), count, d_rm, d_rv,
                                            momentum, eps)
    want = cpu.batchnorm2d_update_stats(mean, var, count, running_mean, running_var,
                                        momentum, eps)
    rtol = 2 * np.finfo(dtype).eps
    for got, expected in ((invstd, want), (d_rm, running_mean), (d_rv, running_var)):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(host(got), expected, rtol=rtol)
    eval_mean, eval_invstd = kcuda.batchnorm2d_eval_stats(d_rm, d_rv, eps)
    want_invstd = cpu.batchnorm2d_eval_stats(running_mean, running_var, eps)[1]
    np.testing.assert_array_equal(host(eval_mean), host(d_rm))
    np.testing.assert_allclose(host(eval_invstd), want_invstd, rtol=rtol)


@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (1, 1, 0)])
def test_maxpool(small_launches, rng, k, stride, padding):
    # small integers: many ties, so "the first maximum" is tested too
    x = rng.integers(-3, 3, size=(2, 3, 7, 6)).astype(np.float32)
    y, argmax = kcuda.maxpool2d_forward(to_dev(x), k, stride, padding)
    y_cpu, argmax_cpu = cpu.maxpool2d_forward(x, k, stride, padding)
    np.testing.assert_array_equal(host(y), y_cpu)
    np.testing.assert_array_equal(host(argmax), argmax_cpu)
    assert argmax.dtype == np.int64
    dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
    expected = cpu.maxpool2d_backward(dy, argmax_cpu, 7, 6)
    scatter = kcuda.maxpool2d_backward(to_dev(dy), argmax, 7, 6)  # the contract: atomics
    assert_close(host(scatter), expected)
    gather = kcuda.maxpool2d_backward(to_dev(dy), argmax, 7, 6, window=(k, stride, padding))
    assert_close(host(gather), expected)


@pytest.mark.parametrize("H,W,Ho,Wo", [(3, 4, 6, 8), (3, 2, 7, 5), (5, 4, 5, 4), (7, 6, 3, 4)])
def test_upsample_nearest(small_launches, rng, H, W, Ho, Wo):
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    y = kcuda.upsample_nearest_forward(to_dev(x), Ho, Wo)
    np.testing.assert_array_equal(host(y), cpu.upsample_nearest_forward(x, Ho, Wo))
    dy = rng.standard_normal((2, 3, Ho, Wo)).astype(np.float32)
    dx = kcuda.upsample_nearest_backward(to_dev(dy), H, W)
    assert_close(host(dx), cpu.upsample_nearest_backward(dy, H, W))


@settings(max_examples=8)
@given(H=st.integers(1, 5), W=st.integers(1, 5), Ho=st.integers(1, 9), Wo=st.integers(1, 9))
def test_upsample_backward_gather_covers_every_output_once(H, W, Ho, Wo):
    """Summing ones: each source pixel counts exactly the outputs that copied it."""
    dy = np.ones((1, 1, Ho, Wo))
    dx = host(kcuda.upsample_nearest_backward(to_dev(dy), H, W))
    np.testing.assert_array_equal(dx, cpu.upsample_nearest_backward(dy, H, W))
    assert dx.sum() == Ho * Wo


def test_utilities(small_launches, rng):
    a = rng.standard_normal((3, 5, 2)).astype(np.float32)
    b = rng.standard_normal((3, 5, 2)).astype(np.float32)
    d = to_dev(a)
    z = kcuda.zeros_like(d)
    assert z.shape == a.shape and z.dtype == a.dtype and not host(z).any()
    np.testing.assert_array_equal(host(kcuda.fill_(kcuda.zeros_like(d), 2.5)), np.full_like(a, 2.5))
    kcuda.scale_(d, 0.3)
    np.testing.assert_array_equal(host(d), a * np.float32(0.3))
    kcuda.add_inplace_(d, to_dev(b))
    np.testing.assert_array_equal(host(d), a * np.float32(0.3) + b)
    assert host(kcuda.cast(to_dev(a), np.float64)).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_is_torchs_rule(small_launches, rng, dtype):
    p, g, v = (rng.standard_normal((4, 3, 3)).astype(dtype) for _ in range(3))
    lr, momentum, wd = 0.1, 0.9, 1e-2
    pd, gd, vd = to_dev(p), to_dev(g), to_dev(v)
    for _ in range(2):  # two steps: the momentum buffer carries over
        kcuda.sgd_update_(pd, gd, vd, lr, momentum, wd)
        v = momentum * v + (g + wd * p)
        p = p - lr * v
    assert_close(host(vd), v, dtype, scale=10)
    assert_close(host(pd), p, dtype, scale=10)


# level sizes (H, W) of a head output, non-square so that a swapped H and W would show
HEAD_LEVELS = [(3, 5), (2, 1), (1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("per_anchor", [2, 4])
def test_levels_to_rows_and_back(small_launches, rng, dtype, per_anchor):
    """The heads' layout: the same rows as the CPU and the reference, and back (several
    blocks and grid-stride loops: each level has more elements than the 24 launched threads)."""
    A = 3
    levels = [rng.standard_normal((2, A * per_anchor, h, w)).astype(dtype)
              for h, w in HEAD_LEVELS]
    rows = kcuda.levels_to_rows([to_dev(x) for x in levels], per_anchor)
    want = cpu.levels_to_rows(levels, per_anchor)
    assert rows.shape == (2, A * sum(h * w for h, w in HEAD_LEVELS), per_anchor)
    assert rows.dtype == dtype
    np.testing.assert_array_equal(host(rows), want)
    np.testing.assert_array_equal(want, reference.levels_to_rows(levels, per_anchor))

    d_rows = rng.standard_normal(want.shape).astype(dtype)
    got = kcuda.rows_to_levels(to_dev(d_rows), HEAD_LEVELS, per_anchor)
    want = cpu.rows_to_levels(d_rows, HEAD_LEVELS, per_anchor)
    for g, w, r in zip(got, want, reference.rows_to_levels(d_rows, HEAD_LEVELS, per_anchor)):
        np.testing.assert_array_equal(host(g), w)
        np.testing.assert_array_equal(w, r)
    for g, x in zip(kcuda.rows_to_levels(rows, HEAD_LEVELS, per_anchor), levels):
        np.testing.assert_array_equal(host(g), x)  # the exact inverse


def test_empty_like(small_launches):
    d = kcuda.empty_like(to_dev(np.ones((2, 3), np.float64)))
    assert d.shape == (2, 3) and d.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_update_equals_cpu(small_launches, rng, dtype):
    from retina_np.kernels import cpu

    p, g = (rng.standard_normal((5, 3, 3)).astype(dtype) for _ in range(2))
    m, v = np.zeros_like(p), np.zeros_like(p)
    pd, gd, md, vd = to_dev(p), to_dev(g), to_dev(m), to_dev(v)
    for step in (1, 2, 3):  # the moments and the bias correction carry over
        cpu.adamw_update_(p, g, m, v, 0.01, 0.9, 0.999, 1e-8, 0.05, step)
        kcuda.adamw_update_(pd, gd, md, vd, 0.01, 0.9, 0.999, 1e-8, 0.05, step)
    assert_close(host(md), m, dtype, scale=10)
    assert_close(host(vd), v, dtype, scale=10)
    assert_close(host(pd), p, dtype, scale=10)
