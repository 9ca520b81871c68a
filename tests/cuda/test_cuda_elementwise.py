"""Elementwise CUDA kernels and the in-place utilities (kernels/cuda_elementwise.py)."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_np.kernels import cpu
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
