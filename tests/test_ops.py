"""Every op's backward against central finite differences (float64), plus the ops' contracts:
batch-norm statistics, bad-input errors and non-contiguous inputs.

Inputs are drawn away from the places where a derivative does not exist: ReLU inputs keep
|x| >= 0.1 and max-pool windows hold distinct values 0.1 apart, both far beyond the step.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retina_np import ops
from retina_np.gradcheck import gradcheck_op

TOL = 1e-6  # worst relative error allowed (see retina_np.gradcheck for its definition)
# The ops below are linear in each input entry (or locally linear, away from kinks), so the
# central difference has no truncation error and a larger step only shrinks rounding.
EPS_LINEAR = 1e-3
EPS_BATCHNORM = 1e-5  # smooth but not linear: step^2 * (third derivative) must stay tiny

seeds = st.integers(0, 2**31 - 1)


def check(report):
    assert report.worst <= TOL, str(report)


# ----------------------------------------------------------------------------- conv2d
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 7),
       w=st.integers(1, 7), k=st.sampled_from([1, 2, 3, 5, 7]), stride=st.integers(1, 3),
       padding=st.integers(0, 3), bias=st.booleans(), seed=seeds)
def test_conv2d_gradients(n, c, f, h, w, k, stride, padding, bias, seed):
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, c, h, w)), "w": rng.standard_normal((f, c, k, k))}
    if bias:
        inputs["b"] = rng.standard_normal(f)

    def forward(x, w, b=None):
        return ops.conv2d_forward(x, w, b, stride, padding)

    def backward(dy, cache):
        dx, dw, db = ops.conv2d_backward(dy, cache)
        return {"x": dx, "w": dw, "b": db}

    check(gradcheck_op(forward, backward, inputs, eps=EPS_LINEAR, seed=seed))


def test_conv2d_without_input_grad(rng):
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    y, cache = ops.conv2d_forward(x, w, None, 1, 1)
    dx, dw, db = ops.conv2d_backward(np.ones_like(y), cache, need_input_grad=False)
    assert dx is None and db is None and dw.shape == w.shape


# ----------------------------------------------------------------------------- batchnorm2d
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(2, 4),
       training=st.booleans(), seed=seeds)
def test_batchnorm2d_gradients(n, c, h, w, training, seed):
    assume(n * h * w >= 4)  # two values per channel normalise to +-1: dx ~ 0, all rounding
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, c, h, w)) * rng.uniform(0.5, 2) + rng.normal(0, 2),
              "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2, c)

    def forward(x, gamma, beta):
        return ops.batchnorm2d_forward(x, gamma, beta, running_mean.copy(), running_var.copy(),
                                       training)

    # eval mode normalises with the running statistics: y is linear in each input there
    eps = EPS_BATCHNORM if training else EPS_LINEAR
    check(gradcheck_op(forward, ops.batchnorm2d_backward, inputs, eps=eps, seed=seed))


def test_batchnorm2d_training_and_running_stats(rng):
    """y and the running statistics after several steps, written out as torch defines them."""
    C, momentum, eps = 3, 0.2, 1e-3
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    running_mean, running_var = np.zeros(C), np.ones(C)
    expect_mean, expect_var = np.zeros(C), np.ones(C)
    for step in range(4):
        x = rng.standard_normal((2, C, 3, 4)) * (step + 1) + step
        y, _ = ops.batchnorm2d_forward(x, gamma, beta, running_mean, running_var, True,
                                       momentum=momentum, eps=eps)
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))  # biased: normalises the batch
        expect = ((x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps)
                  * gamma[:, None, None] + beta[:, None, None])
        np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)
        expect_mean = (1 - momentum) * expect_mean + momentum * mean
        expect_var = (1 - momentum) * expect_var + momentum * x.var(axis=(0, 2, 3), ddof=1)
        np.testing.assert_allclose(running_mean, expect_mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(running_var, expect_var, rtol=1e-12, atol=1e-14)


def test_batchnorm2d_eval_uses_running_stats(rng):
    C = 4
    x = rng.standard_normal((2, C, 3, 3))
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    running_mean, running_var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    before = running_mean.copy(), running_var.copy()
    y, _ = ops.batchnorm2d_forward(x, gamma, beta, running_mean, running_var, False, eps=1e-5)
    expect = ((x - running_mean[:, None, None]) / np.sqrt(running_var[:, None, None] + 1e-5)
              * gamma[:, None, None] + beta[:, None, None])
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(running_mean, before[0])  # eval leaves them alone
    np.testing.assert_array_equal(running_var, before[1])


def test_batchnorm2d_float32_running_stats_stay_float32(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, _ = ops.batchnorm2d_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), rm, rv,
                                   True)
    assert y.dtype == rm.dtype == rv.dtype == np.float32
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- relu, add
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=seeds)
def test_relu_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)  # |x| >= 0.1: no kink
    check(gradcheck_op(ops.relu_forward, ops.relu_backward, {"x": x}, eps=EPS_LINEAR, seed=seed))


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=seeds)
def test_add_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    inputs = {"a": rng.standard_normal(shape), "b": rng.standard_normal(shape)}
    check(gradcheck_op(ops.add_forward, ops.add_backward, inputs, eps=EPS_LINEAR, seed=seed))


# ----------------------------------------------------------------------------- maxpool2d
@given(n=st.integers(1, 2), c=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7),
       k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2), seed=seeds)
def test_maxpool2d_gradients(n, c, h, w, k, stride, padding, seed):
    assume(padding <= k // 2 and h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 0.1  # distinct, 0.1 apart: no ties

    def forward(x):
        return ops.maxpool2d_forward(x, k, stride, padding)

    check(gradcheck_op(forward, ops.maxpool2d_backward, {"x": x}, eps=EPS_LINEAR, seed=seed))


def test_maxpool2d_padding_is_minus_infinity():
    """An all-negative input: a zero padding would win every border window, -inf never does."""
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y, _ = ops.maxpool2d_forward(x, 3, 2, 1)
    np.testing.assert_array_equal(y[0, 0], [[-1.0, -2.0], [-5.0, -6.0]])


# ----------------------------------------------------------------------------- upsample
@given(n=st.integers(1, 2), c=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5),
       ho=st.integers(1, 9), wo=st.integers(1, 9), seed=seeds)
def test_upsample_nearest_gradients(n, c, h, w, ho, wo, seed):
    rng = np.random.default_rng(seed)

    def forward(x):
        return ops.upsample_nearest_forward(x, (ho, wo))

    check(gradcheck_op(forward, ops.upsample_nearest_backward,
                       {"x": rng.standard_normal((n, c, h, w))}, eps=EPS_LINEAR, seed=seed))


def test_upsample_nearest_doubles():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    y, _ = ops.upsample_nearest_forward(x, (4, 6))
    np.testing.assert_array_equal(y[0, 0], np.repeat(np.repeat(x[0, 0], 2, 0), 2, 1))


# ----------------------------------------------------------------------------- bad input
def _bn(x, C=3, dtype=np.float32, name="bn1"):
    v = np.ones(C, dtype)
    return ops.batchnorm2d_forward(x, v, v.copy(), v.copy(), v.copy(), True, name=name)


f32 = np.float32


@pytest.mark.parametrize("call, match", [
    (lambda: ops.conv2d_forward(np.ones((3, 5, 5), f32), np.ones((2, 3, 3, 3), f32), None,
                                name="layer1.0.conv1"),
     r"layer1\.0\.conv1: x must be 4-D.*\(3, 5, 5\)"),
    (lambda: ops.conv2d_forward(np.ones((1, 3, 5, 5), f32), np.ones((2, 3, 3), f32), None,
                                name="c"), r"c: weight must be 4-D"),
    (lambda: ops.conv2d_forward(np.ones((1, 4, 5, 5), f32), np.ones((2, 3, 3, 3), f32), None,
                                name="fpn.inner"), r"fpn\.inner: input has 4 channels.*"
                                                   r"\(1, 4, 5, 5\).*expects 3.*\(2, 3, 3, 3\)"),
    (lambda: ops.conv2d_forward(np.ones((1, 3, 5, 5), np.int64), np.ones((2, 3, 3, 3), f32),
                                None, name="c"), r"c: x must be float32 or float64, got int64"),
    (lambda: ops.conv2d_forward(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3), f32), None,
                                name="c"), r"c: dtypes differ \(x float64, weight float32\)"),
    (lambda: ops.conv2d_forward(np.ones((1, 3, 2, 2), f32), np.ones((2, 3, 7, 7), f32), None,
                                padding=2, name="stem"), r"stem: kernel 7x7 is larger than the "
                                                         r"padded input 6x6"),
    (lambda: ops.conv2d_forward(np.ones((1, 3, 5, 5), f32), np.ones((2, 3, 3, 3), f32),
                                np.ones(3, f32), name="c"), r"c: bias must have shape \(2,\)"),
    (lambda: ops.conv2d_forward(np.ones((1, 3, 5, 5), f32), np.ones((2, 3, 3, 3), f32), None,
                                stride=0, name="c"), r"c: stride must be an integer >= 1"),
    (lambda: _bn(np.ones((2, 3, 4), f32)), r"bn1: x must be 4-D"),
    (lambda: _bn(np.ones((2, 4, 3, 3), f32)), r"bn1: weight must have shape \(4,\)"),
    (lambda: _bn(np.ones((2, 3, 3, 3), np.int32)), r"bn1: x must be float32 or float64"),
    (lambda: _bn(np.ones((2, 3, 3, 3))), r"bn1: dtypes differ"),
    (lambda: _bn(np.ones((1, 3, 1, 1), f32)), r"bn1: training needs more than one value"),
    (lambda: ops.maxpool2d_forward(np.ones((1, 1, 5, 5), f32), 3, 2, 2, name="pool"),
     r"pool: padding 2 is more than half the kernel size 3"),
    (lambda: ops.maxpool2d_forward(np.ones((1, 1, 1, 1), f32), 3, 1, 0, name="pool"),
     r"pool: kernel 3x3 is larger than the padded input 1x1"),
    (lambda: ops.maxpool2d_forward(np.ones((5, 5), f32), name="pool"), r"pool: x must be 4-D"),
    (lambda: ops.upsample_nearest_forward(np.ones((1, 1, 2, 2), np.int8), (4, 4)),
     r"x must be float32 or float64"),
    (lambda: ops.upsample_nearest_forward(np.ones((1, 1, 2, 2), f32), (0, 4)),
     r"output height must be an integer >= 1"),
    (lambda: ops.add_forward(np.ones((1, 2), f32), np.ones((2, 1), f32), name="res"),
     r"res: shapes differ, \(1, 2\) and \(2, 1\)"),
    (lambda: ops.add_forward(np.ones(2, f32), np.ones(2), name="res"), r"res: dtypes differ"),
    (lambda: ops.relu_forward(np.ones(3, np.int64)), r"float32 or float64"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_backward_checks_dy(rng):
    y, cache = ops.conv2d_forward(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), None,
                                  name="head.conv")
    with pytest.raises(ValueError, match=r"head\.conv: dy has shape \(1, 2, 5, 5\)"):
        ops.conv2d_backward(np.ones((1, 2, 5, 5)), cache)
    with pytest.raises(ValueError, match=r"dy has shape.*float32"):
        ops.conv2d_backward(y.astype(np.float32), cache)


# ----------------------------------------------------------------------------- layouts
def test_non_contiguous_inputs(rng):
    """Strided and transposed views give the results of their contiguous copies."""
    big = rng.standard_normal((2, 6, 9, 8))
    x = big[:, ::2, 1::2, :]  # (2, 3, 4, 8), not contiguous
    w = rng.standard_normal((3, 3, 4, 2)).transpose(0, 1, 3, 2)  # (3, 3, 2, 4) Fortran-ish
    b = rng.standard_normal(6)[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous and not b.flags.c_contiguous
    xc, wc, bc = (np.ascontiguousarray(a) for a in (x, w, b))

    y, cache = ops.conv2d_forward(x, w, b, 1, 1)
    y_ref, cache_ref = ops.conv2d_forward(xc, wc, bc, 1, 1)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape * np.array([1, 1, 1, 2]))[..., ::2]
    for got, want in zip(ops.conv2d_backward(dy, cache),
                         ops.conv2d_backward(np.ascontiguousarray(dy), cache_ref)):
        np.testing.assert_array_equal(got, want)

    v = rng.uniform(0.5, 1.5, 6)[::2]
    y, cache = ops.batchnorm2d_forward(x, v, v, np.zeros(3), np.ones(3), True)
    y_ref, cache_ref = ops.batchnorm2d_forward(xc, v.copy(), v.copy(), np.zeros(3), np.ones(3),
                                               True)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal((2, 3, 4, 16))[..., ::2]
    for got, want in zip(ops.batchnorm2d_backward(dy, cache),
                         ops.batchnorm2d_backward(np.ascontiguousarray(dy), cache_ref)):
        np.testing.assert_array_equal(got, want)

    for forward in (ops.relu_forward, lambda a: ops.maxpool2d_forward(a, 3, 2, 1),
                    lambda a: ops.upsample_nearest_forward(a, (7, 9))):
        np.testing.assert_array_equal(forward(x)[0], forward(xc)[0])
    np.testing.assert_array_equal(ops.add_forward(x, x.transpose(0, 1, 2, 3))[0], 2 * xc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_keep_the_input_dtype(dtype, rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    y, cache = ops.conv2d_forward(x, w, np.zeros(4, dtype), 2, 1)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in ops.conv2d_backward(y, cache))
    y, cache = ops.maxpool2d_forward(x)
    assert y.dtype == ops.maxpool2d_backward(y, cache).dtype == dtype
    y, cache = ops.upsample_nearest_forward(x, (12, 12))
    assert y.dtype == ops.upsample_nearest_backward(y, cache).dtype == dtype
