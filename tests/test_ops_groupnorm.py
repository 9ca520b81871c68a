"""ops.groupnorm_forward / groupnorm_backward: gradients against central finite differences
(float64), the forward written out with numpy, and the op's input checks."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retina_np import ops
from retina_np.gradcheck import gradcheck_op

TOL = 1e-6  # worst relative error allowed (see retina_np.gradcheck for its definition)
# Smooth but not linear: the step balances truncation (step^2 * third derivative, which grows
# as invstd^3) against rounding (ulp of the loss / step). Over 400 drawn cases the worst error
# was 6e-7 at 1e-4, 4.7e-7 at 1e-5 and 1.4e-7 at 3e-5.
EPS_NORM = 3e-5

seeds = st.integers(0, 2**31 - 1)


def numpy_groupnorm(x, gamma, beta, groups, eps):
    """torch.nn.functional.group_norm written with numpy (float64)."""
    N, C, H, W = x.shape
    xg = x.reshape(N, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = xg.var(axis=2, keepdims=True)  # biased
    xhat = ((xg - mean) / np.sqrt(var + eps)).reshape(N, C, H, W)
    return xhat * gamma[:, None, None] + beta[:, None, None]


@given(n=st.integers(1, 3), cg=st.integers(1, 3), g=st.integers(1, 3), h=st.integers(1, 4),
       w=st.integers(1, 4), scale=st.floats(0.3, 3.0), shift=st.floats(-3.0, 3.0), seed=seeds)
def test_groupnorm_gradients(n, cg, g, h, w, scale, shift, seed):
    # Two values per group normalise to -1 and +1 whatever x is: dx ~ 0, all rounding (as BN).
    assume(cg * h * w >= 3)
    rng = np.random.default_rng(seed)
    c = cg * g
    inputs = {"x": rng.standard_normal((n, c, h, w)) * scale + shift,
              "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}

    def forward(x, gamma, beta):
        return ops.groupnorm_forward(x, gamma, beta, g, eps=1e-5)

    report = gradcheck_op(forward, ops.groupnorm_backward, inputs, eps=EPS_NORM, seed=seed)
    assert report.worst <= TOL, str(report)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 4), 3), ((1, 8, 5, 2), 1), ((3, 4, 1, 1), 2),
                                           ((2, 4, 2, 3), 4)])
def test_groupnorm_forward_written_out(shape, groups, dtype, rng):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1])
    beta = beta.astype(dtype)
    y, cache = ops.groupnorm_forward(x, gamma, beta, groups, eps=1e-3)
    expect = numpy_groupnorm(x.astype(np.float64), gamma.astype(np.float64),
                             beta.astype(np.float64), groups, 1e-3)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, expect, rtol=tol, atol=tol * np.abs(expect).max())
    assert y.dtype == cache.mean.dtype == cache.invstd.dtype == dtype
    assert cache.mean.shape == cache.invstd.shape == (shape[0], groups)
    dx, dgamma, dbeta = ops.groupnorm_backward(np.ones_like(y), cache)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == dtype
    assert dx.shape == shape and dgamma.shape == dbeta.shape == (shape[1],)


def test_groupnorm_is_per_image(rng):
    """No batch statistics: an image's output does not depend on the rest of the batch."""
    x = rng.standard_normal((3, 4, 3, 3))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    y, _ = ops.groupnorm_forward(x, gamma, beta, 2)
    y1, _ = ops.groupnorm_forward(x[1:2], gamma, beta, 2)
    np.testing.assert_array_equal(y[1:2], y1)


def test_non_contiguous_inputs(rng):
    big = rng.standard_normal((2, 8, 9, 8))
    x = big[:, ::2, 1::2, :]  # (2, 4, 4, 8), not contiguous
    v = rng.uniform(0.5, 1.5, 8)[::2]
    assert not x.flags.c_contiguous and not v.flags.c_contiguous
    y, cache = ops.groupnorm_forward(x, v, v, 2)
    y_ref, cache_ref = ops.groupnorm_forward(np.ascontiguousarray(x), v.copy(), v.copy(), 2)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal((2, 4, 4, 16))[..., ::2]
    for got, want in zip(ops.groupnorm_backward(dy, cache),
                         ops.groupnorm_backward(np.ascontiguousarray(dy), cache_ref)):
        np.testing.assert_array_equal(got, want)


f32 = np.float32


def _gn(x, C=4, groups=2, dtype=np.float32, name="head.conv.0.1"):
    v = np.ones(C, dtype)
    return ops.groupnorm_forward(x, v, v.copy(), groups, name=name)


@pytest.mark.parametrize("call, match", [
    (lambda: _gn(np.ones((2, 6, 3, 3), f32), C=6, groups=4),
     r"head\.conv\.0\.1: 6 channels \(x \(2, 6, 3, 3\)\) cannot be split into 4 groups"),
    (lambda: _gn(np.ones((2, 4, 3), f32)), r"head\.conv\.0\.1: x must be 4-D.*\(2, 4, 3\)"),
    (lambda: _gn(np.ones((2, 6, 3, 3), f32)),
     r"head\.conv\.0\.1: weight must have shape \(6,\) for x \(2, 6, 3, 3\), got \(4,\)"),
    (lambda: ops.groupnorm_forward(np.ones((1, 4, 2, 2), f32), np.ones(4, f32),
                                   np.ones(3, f32), 2, name="gn"), r"gn: bias must have shape"),
    (lambda: _gn(np.ones((2, 4, 3, 3), np.int32)), r"x must be float32 or float64"),
    (lambda: _gn(np.ones((2, 4, 3, 3))), r"head\.conv\.0\.1: dtypes differ"),
    (lambda: _gn(np.ones((2, 4, 3, 3), f32), groups=0), r"groups must be an integer >= 1"),
    (lambda: _gn(np.ones((2, 4, 3, 3), f32), groups=2.0), r"groups must be an integer >= 1"),
    (lambda: _gn(np.ones((2, 4, 0, 3), f32)), r"x \(2, 4, 0, 3\) has no values"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_backward_checks_dy(rng):
    y, cache = _gn(rng.standard_normal((1, 4, 3, 3)).astype(f32), name="gn1")
    with pytest.raises(ValueError, match=r"gn1: dy has shape \(1, 4, 3, 2\)"):
        ops.groupnorm_backward(np.ones((1, 4, 3, 2), f32), cache)
    with pytest.raises(ValueError, match=r"gn1: dy has shape.*float64"):
        ops.groupnorm_backward(y.astype(np.float64), cache)


def lanes_sum(rows, lanes=32):
    """The group norm kernels' float64 sum of rows (Cg, HW) (kernels/cpu/norm.py): value i of
    each row into lane i % lanes, the rows one after another, then the lanes as four
    interleaved partial sums. Element by element, in that order."""
    acc = np.zeros(lanes)
    for row in rows:
        for i, v in enumerate(row):
            acc[i % lanes] += v
    s = [0.0, 0.0, 0.0, 0.0]
    for k in range(lanes):
        s[k % 4] += acc[k]
    return (s[0] + s[1]) + (s[2] + s[3])


@given(st.sampled_from([(1, 1), (1, 2), (1, 3), (2, 2), (3, 3), (3, 4), (4, 4), (5, 6),
                        (6, 6), (8, 8), (13, 11)]),
       st.sampled_from([1, 2, 4]), st.sampled_from([np.float32, np.float64]), seeds)
def test_groupnorm_sums_in_the_lanes_order_on_any_level_size(hw, cg, dtype, seed):
    """The statistics and the parameters' gradients are the lanes' sums bit for bit, on small
    maps (a group's values fit the lanes: summed without them) and large ones alike."""
    rng = np.random.default_rng(seed)
    N, groups = 2, 3
    C = groups * cg
    x = (rng.standard_normal((N, C, *hw)) * 3 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    y, cache = ops.groupnorm_forward(x, gamma, beta, groups, 1e-5)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dgamma, dbeta = ops.groupnorm_backward(dy, cache)
    x64, dy64, M = x.astype(np.float64), dy.astype(np.float64), cg * hw[0] * hw[1]
    sum_dy = np.zeros((N, C))
    sum_dy_xhat = np.zeros((N, C))
    for n in range(N):
        for g in range(groups):
            rows = x64[n, g * cg:(g + 1) * cg].reshape(cg, -1)
            mu = lanes_sum(rows) / M
            istd = 1.0 / np.sqrt(lanes_sum((rows - mu) ** 2) / M + 1e-5)
            k = np.array([dtype(istd * gamma[c]) for c in range(g * cg, (g + 1) * cg)])
            expect = (x[n, g * cg:(g + 1) * cg] - dtype(mu)) * k[:, None, None] \
                + beta[g * cg:(g + 1) * cg, None, None]
            np.testing.assert_array_equal(y[n, g * cg:(g + 1) * cg], expect.astype(dtype))
            # the backward reads the statistics the forward kept, in x's dtype
            mu, istd = np.float64(dtype(mu)), np.float64(dtype(istd))
            for j in range(cg):
                c = g * cg + j
                d = dy64[n, c].reshape(1, -1)
                sum_dy[n, c] = lanes_sum(d)
                sum_dy_xhat[n, c] = lanes_sum(d * (x64[n, c].reshape(1, -1) - mu)) * istd
    np.testing.assert_array_equal(dbeta, sum_dy.sum(axis=0, dtype=np.float64).astype(dtype))
    np.testing.assert_array_equal(dgamma, sum_dy_xhat.sum(axis=0).astype(dtype))
