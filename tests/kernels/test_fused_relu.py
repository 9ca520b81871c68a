"""The norms with the ReLU after them (``relu=True``: in the CPU forward kernels; the ReLU's
backward inside batch norm's backward kernel, run by the ops before group norm's): the ops give
exactly the bits of the norm
and the ReLU one after the other, the reference kernels agree with them, and the fused ops
pass finite-difference checks (float64) away from the ReLU's kink."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retina_np import ops
from retina_np.gradcheck import gradcheck_op
from retina_np.kernels import cpu
from retina_np.kernels import reference as ref

DTYPES = [np.float64, np.float32]
EPS = 1e-5
TOL = {np.float64: 1e-10, np.float32: 1e-4}  # fast vs reference, relative to max |ref|

shapes = st.tuples(st.integers(1, 3), st.sampled_from([2, 4, 6]), st.integers(1, 5),
                   st.integers(1, 5))


def _inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)  # about half the outputs below 0
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


def _close(fast, slow, dtype):
    scale = max(float(np.abs(slow).max(initial=0.0)), 1e-300)
    assert float(np.abs(fast.astype(np.float64) - slow).max(initial=0.0)) <= TOL[dtype] * scale


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_batchnorm_relu_is_the_norm_then_the_relu(dtype, training, shape, seed):
    assume(not training or shape[0] * shape[2] * shape[3] >= 2)  # batch statistics need two
    x, gamma, beta, dy = _inputs(shape, dtype, seed)
    C = shape[1]
    running = (np.zeros(C, dtype), np.ones(C, dtype))

    def forward(relu):  # each from the same running statistics
        return ops.batchnorm2d_forward(x, gamma, beta, running[0].copy(), running[1].copy(),
                                       training, relu=relu)

    (y, cache), (z, cache_apart) = forward(True), forward(False)
    assert np.array_equal(y, cpu.relu_forward(z))
    fused = ops.batchnorm2d_backward(dy, cache)
    apart = ops.batchnorm2d_backward(cpu.relu_backward(dy, y), cache_apart)
    for a, b in zip(fused, apart):
        assert np.array_equal(a, b)
    mean, invstd = cache.mean, cache.invstd
    _close(y, ref.batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=True), dtype)
    if training and shape[0] * shape[2] * shape[3] > 2:  # see test_cpu_vs_reference
        for a, b in zip(fused, ref.batchnorm2d_backward(ref.relu_backward(dy, y), x, mean,
                                                        invstd, gamma)):
            _close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, groups=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1))
def test_groupnorm_relu_is_the_norm_then_the_relu(dtype, shape, groups, seed):
    x, gamma, beta, dy = _inputs(shape, dtype, seed)
    y, cache = ops.groupnorm_forward(x, gamma, beta, groups, EPS, relu=True)
    z, cache_apart = ops.groupnorm_forward(x, gamma, beta, groups, EPS)
    assert np.array_equal(y, cpu.relu_forward(z)) and np.array_equal(cache.mean,
                                                                        cache_apart.mean)
    fused = ops.groupnorm_backward(dy, cache)
    apart = ops.groupnorm_backward(cpu.relu_backward(dy, y), cache_apart)
    for a, b in zip(fused, apart):
        assert np.array_equal(a, b)
    _close(y, ref.groupnorm_forward(x, gamma, beta, groups, EPS, relu=True)[0], dtype)
    if shape[1] // groups * shape[2] * shape[3] > 2:
        for a, b in zip(fused, ref.groupnorm_backward(ref.relu_backward(dy, y), x, cache.mean,
                                                      cache.invstd, gamma, groups)):
            _close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_relu_on_a_joint_is_the_norm_then_the_relu(dtype):
    rng = np.random.default_rng(0)
    levels = [(rng.standard_normal((2, 8, s, s)) + 0.5).astype(dtype) for s in (6, 3, 1)]
    gamma, beta = (rng.standard_normal(8).astype(dtype) for _ in range(2))
    xj = cpu.join_levels(levels)
    dyj = xj.like(rng.standard_normal(xj.data.shape).astype(dtype))
    yj, cache = ops.groupnorm_joint_forward(xj, gamma, beta, 4, EPS, relu=True)
    zj, cache_apart = ops.groupnorm_joint_forward(xj, gamma, beta, 4, EPS)
    assert np.array_equal(yj.data, cpu.relu_forward(zj.data))
    assert 0.2 < (yj.data > 0).mean() < 0.8  # both sides of the kink
    fused = ops.groupnorm_joint_backward(dyj, cache)
    apart = ops.groupnorm_joint_backward(dyj.like(cpu.relu_backward(dyj.data, yj.data)),
                                         cache_apart)
    assert np.array_equal(fused[0].data, apart[0].data)
    assert np.array_equal(fused[1], apart[1]) and np.array_equal(fused[2], apart[2])


def _away_from_the_kink(z):
    """The finite differences move each norm output by ~1e-5: keep them 1e-3 from 0."""
    assume(np.abs(z).min() > 1e-3)


@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(2, 4),
       training=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_batchnorm_relu_gradients(n, c, h, w, training, seed):
    assume(n * h * w >= 4)
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, c, h, w)) * rng.uniform(0.5, 2) + rng.normal(0, 2),
              "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2, c)

    def forward(x, gamma, beta, relu=True):
        return ops.batchnorm2d_forward(x, gamma, beta, running_mean.copy(), running_var.copy(),
                                       training, relu=relu)

    _away_from_the_kink(forward(**inputs, relu=False)[0])
    report = gradcheck_op(forward, ops.batchnorm2d_backward, inputs, eps=1e-5, seed=seed)
    assert report.worst <= 1e-6, str(report)


@given(n=st.integers(1, 2), c=st.sampled_from([2, 4]), h=st.integers(1, 4), w=st.integers(2, 4),
       groups=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1))
def test_groupnorm_relu_gradients(n, c, h, w, groups, seed):
    assume(c // groups * h * w >= 4)
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, c, h, w)) * 2 + 1,
              "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}

    def forward(x, gamma, beta, relu=True):
        return ops.groupnorm_forward(x, gamma, beta, groups, relu=relu)

    _away_from_the_kink(forward(**inputs, relu=False)[0])
    report = gradcheck_op(forward, ops.groupnorm_backward, inputs, eps=1e-5, seed=seed)
    assert report.worst <= 1e-6, str(report)
