"""Per-channel reductions (kernels/cuda/reduce.py): several blocks per channel, then a second
pass; the kernels built on them (bias gradient, batch-norm statistics and backward, the
gradient norm) compared with kernels.cpu."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev

from retina_np.kernels import cpu, options, reference
from retina_np.kernels import cuda as kcuda
from retina_np.kernels.cuda import reduce as cuda_reduce


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (3, 2, 1, 1), (1, 3, 2, 5)])
def test_bias_backward(small_launches, rng, shape):
    dy = rng.standard_normal(shape).astype(np.float32)
    db = kcuda.bias_backward(to_dev(dy))
    assert db.shape == (shape[1],) and db.dtype == np.float32
    assert_close(host(db), cpu.bias_backward(dy), scale=10)


def test_several_chunks_per_channel(small_launches):
    """The tiny launch settings really do split each channel over several blocks."""
    assert cuda_reduce._chunks(C=5, M=2 * 7 * 6) > 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_stats(small_launches, rng, dtype):
    x = (3 + 2 * rng.standard_normal((2, 3, 7, 6))).astype(dtype)  # a mean far from 0
    mean, var = kcuda.batchnorm2d_stats(to_dev(x))
    mean_cpu, var_cpu = cpu.batchnorm2d_stats(x)
    assert mean.dtype == dtype and var.dtype == dtype
    assert_close(host(mean), mean_cpu, dtype, scale=10)
    assert_close(host(var), var_cpu, dtype, scale=10)


@pytest.mark.parametrize("relu", [False, True])  # the forward with the ReLU after the norm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_forward_and_backward(small_launches, rng, dtype, relu):
    x = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    mean, var = cpu.batchnorm2d_stats(x)
    invstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    y = cpu.batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=relu)
    assert (0 < (y > 0).mean() < 1) if relu else (y < 0).any()
    assert_close(host(kcuda.batchnorm2d_forward(*(to_dev(a) for a in (x, mean, invstd, gamma,
                                                                      beta)), relu)), y, dtype, 10)
    got = kcuda.batchnorm2d_backward(*(to_dev(a) for a in (dy, x, mean, invstd, gamma)))
    want = cpu.batchnorm2d_backward(dy, x, mean, invstd, gamma)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape
        assert_close(host(g), w, dtype, scale=10)


def test_reduce_threads_must_be_a_power_of_two(small_launches, rng):
    with options(cuda_reduce_threads=6), pytest.raises(ValueError, match="power of two"):
        kcuda.bias_backward(to_dev(np.ones((1, 2, 3, 3), np.float32)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares(small_launches, rng, dtype):
    """Several arrays (one empty), each over several blocks, one sum (the gradient norm)."""
    arrays = [rng.standard_normal(shape).astype(dtype) for shape in
              [(5, 3, 3, 3), (7,), (0, 4), (2, 9)]]
    got = kcuda.sum_squares([to_dev(a) for a in arrays])
    want = cpu.sum_squares(arrays)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(reference.sum_squares(arrays), rel=1e-12)
    assert kcuda.sum_squares([]) == 0.0
