"""The heads' layers on a Joint of pyramid levels (one channel-major matrix, kernels/cpu/)
equal the same layers level by level, and their gradients equal central differences."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from retina_np import kernels, ops
from retina_np.gradcheck import gradcheck_op
from retina_np.kernels import cpu
from retina_np.kernels import reference as ref
from retina_np.kernels.levels import Joint
from retina_np.kernels.workspace import ConvWorkspace

TOL = {np.float64: 1e-10, np.float32: 1e-4}  # as test_groupnorm_kernels.py
GRAD_TOL = 1e-6  # worst relative error, as tests/test_ops_groupnorm.py
EPS = 1e-5

seeds = st.integers(0, 2**31 - 1)
level_sizes = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4)


def assert_close(fast, slow, dtype):
    assert fast.shape == slow.shape and fast.dtype == np.dtype(dtype)
    scale = max(float(np.abs(slow).max(initial=0.0)), np.finfo(np.float64).tiny)
    err = float(np.abs(fast.astype(np.float64) - slow.astype(np.float64)).max(initial=0.0))
    assert err <= TOL[dtype] * scale, f"max abs error {err:.3e}, max |ref| {scale:.3e}"


def draw_levels(rng, n, c, hws, dtype, scale=2.0, shift=3.0):
    return [(rng.standard_normal((n, c, h, w)) * scale + shift).astype(dtype) for h, w in hws]


@settings(deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), hws=level_sizes, seed=seeds)
def test_join_split_and_rows_round_trips(n, c, hws, seed):
    rng = np.random.default_rng(seed)
    xs = draw_levels(rng, n, c, hws, np.float32)
    joint = cpu.join_levels(xs)
    assert joint.data.shape == (c, n * sum(h * w for h, w in hws)) and joint.hws == tuple(hws)
    for level, x in zip(cpu.split_levels(joint), xs):
        np.testing.assert_array_equal(level, x)
    # head outputs: channel a*P + p; the Joint gives the rows of the list, bit for bit
    per_anchor = 1 if c == 1 else (2 if c % 2 == 0 else c)
    rows = cpu.levels_to_rows(xs, per_anchor)
    np.testing.assert_array_equal(cpu.levels_to_rows(joint, per_anchor), rows)
    back = cpu.rows_to_levels(rows, cpu.levels_layout(joint), per_anchor)
    assert isinstance(back, Joint)
    np.testing.assert_array_equal(back.data, joint.data)
    for level, x in zip(cpu.rows_to_levels(rows, cpu.levels_layout(xs), per_anchor), xs):
        np.testing.assert_array_equal(level, x)


@settings(deadline=None)
@given(n=st.integers(1, 3), cg=st.integers(1, 3), g=st.integers(1, 3), hws=level_sizes,
       dtype=st.sampled_from([np.float32, np.float64]), seed=seeds)
def test_groupnorm_joint_equals_groupnorm_level_by_level(n, cg, g, hws, dtype, seed):
    rng = np.random.default_rng(seed)
    c = cg * g
    xs = draw_levels(rng, n, c, hws, dtype)
    dys = draw_levels(rng, n, c, hws, dtype, 1.0, 0.0)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    yj, mean, invstd = cpu.groupnorm_forward_joint(cpu.join_levels(xs), gamma, beta, g, EPS)
    dxj, dgamma, dbeta = cpu.groupnorm_backward_joint(cpu.join_levels(dys), cpu.join_levels(xs),
                                                      mean, invstd, gamma, g)
    assert mean.shape == invstd.shape == (len(hws) * n, g)
    dgamma_sum = np.zeros(c)
    dbeta_sum = np.zeros(c)
    for level, (x, dy, y, dx) in enumerate(zip(xs, dys, cpu.split_levels(yj),
                                               cpu.split_levels(dxj))):
        y_ref, mean_ref, invstd_ref = ref.groupnorm_forward(x, gamma, beta, g, EPS)
        assert_close(y, y_ref, dtype)
        assert_close(mean[level * n:(level + 1) * n], mean_ref, dtype)
        assert_close(invstd[level * n:(level + 1) * n], invstd_ref, dtype)
        # the backward from the Joint's (rounded) statistics, as test_groupnorm_kernels does
        dx_ref, dgamma_ref, dbeta_ref = ref.groupnorm_backward(
            dy, x, mean[level * n:(level + 1) * n], invstd[level * n:(level + 1) * n], gamma, g)
        if cg * np.prod(x.shape[2:]) >= 3:  # one or two values per group: dx is rounding only
            assert_close(dx, dx_ref, dtype)
        dgamma_sum += dgamma_ref
        dbeta_sum += dbeta_ref
    assert_close(dgamma, dgamma_sum.astype(dtype), dtype)
    assert_close(dbeta, dbeta_sum.astype(dtype), dtype)


@settings(deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 4), f=st.integers(1, 4), k=st.sampled_from([1, 3, 5]),
       hws=level_sizes, bias=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=seeds)
def test_conv_joint_equals_reference_level_by_level(n, c, f, k, hws, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    xs = draw_levels(rng, n, c, hws, dtype, 1.0, 0.0)
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    workspace = ConvWorkspace()
    yj = cpu.conv2d_forward_joint(cpu.join_levels(xs), w, b, workspace)
    dys = [rng.standard_normal(y.shape).astype(dtype) for y in cpu.split_levels(yj)]
    for kept in (workspace, None):  # with what the forward kept, and unfolding again
        dxj, dw, db = cpu.conv2d_backward_joint(cpu.join_levels(dys), cpu.join_levels(xs), w,
                                                bias, True, kept)
        dw_sum, db_sum = np.zeros(w.shape), np.zeros(f)
        for x, y, dy, dx in zip(xs, cpu.split_levels(yj), dys, cpu.split_levels(dxj)):
            assert_close(y, ref.conv2d_forward(x, w, b, 1, k // 2), dtype)
            assert_close(dx, ref.conv2d_backward_input(dy, w, *x.shape[2:], 1, k // 2), dtype)
            dw_sum += ref.conv2d_backward_weight(dy, x, k, k, 1, k // 2)
            db_sum += ref.bias_backward(dy)
        assert_close(dw, dw_sum.astype(dtype), dtype)
        if bias:
            assert_close(db, db_sum.astype(dtype), dtype)
        else:
            assert db is None


@given(n=st.integers(1, 2), cg=st.integers(1, 3), g=st.integers(1, 2), hws=level_sizes,
       scale=st.floats(0.3, 3.0), shift=st.floats(-3.0, 3.0), seed=seeds)
def test_groupnorm_joint_gradients(n, cg, g, hws, scale, shift, seed):
    # a level whose groups hold two values normalises them to -1 and +1: dx ~ 0, all rounding
    assume(min(cg * h * w for h, w in hws) >= 3)
    rng = np.random.default_rng(seed)
    c = cg * g
    T = n * sum(h * w for h, w in hws)
    inputs = {"x": rng.standard_normal((c, T)) * scale + shift,
              "gamma": rng.standard_normal(c), "beta": rng.standard_normal(c)}

    def forward(x, gamma, beta):
        y, cache = ops.groupnorm_joint_forward(Joint(x, n, tuple(hws)), gamma, beta, g, EPS)
        return y.data, cache

    def backward(dy, cache):
        dx, dgamma, dbeta = ops.groupnorm_joint_backward(Joint(dy, n, tuple(hws)), cache)
        return dx.data, dgamma, dbeta

    report = gradcheck_op(forward, backward, inputs, eps=3e-5, seed=seed)
    assert report.worst <= GRAD_TOL, str(report)


@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), hws=level_sizes,
       seed=seeds, keep=st.booleans(), winograd=st.sampled_from([0, 2, 4]))
def test_conv_joint_gradients(n, c, f, hws, seed, keep, winograd):
    """im2col + GEMM (winograd 0), or Winograd's F(2x2, 3x3) or F(4x4, 3x3) (options'
    winograd_block 2 or 4, winograd_min_tiles lowered to these small sizes); the weight
    gradient from the forward's kept matrix or from the input again."""
    rng = np.random.default_rng(seed)
    T = n * sum(h * w for h, w in hws)
    inputs = {"x": rng.standard_normal((c, T)), "w": rng.standard_normal((f, c, 3, 3)),
              "b": rng.standard_normal(f)}

    def forward(x, w, b):
        y, cache = ops.conv2d_joint_forward(Joint(x, n, tuple(hws)), w, b, 1, 1,
                                            keep_workspace=keep)
        return y.data, cache

    def backward(dy, cache):
        dx, dw, db = ops.conv2d_joint_backward(Joint(dy, n, tuple(hws)), cache)
        return dx.data, dw, db

    way = dict(winograd_min_tiles=1, winograd_block=winograd) if winograd else dict(winograd=False)
    with kernels.options(**way):
        # y is linear in each input: a larger step adds no truncation error, less rounding
        report = gradcheck_op(forward, backward, inputs, eps=1e-4, seed=seed)
    assert report.worst <= GRAD_TOL, str(report)


def test_joint_ops_check_their_inputs():
    xj = cpu.join_levels([np.ones((2, 4, 3, 3), np.float32), np.ones((2, 4, 1, 1), np.float32)])
    w = np.ones((5, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="stride-1 convolutions with padding"):
        ops.conv2d_joint_forward(xj, w, None, stride=2, padding=1)
    with pytest.raises(ValueError, match="stride-1 convolutions with padding"):
        ops.conv2d_joint_forward(xj, w, None, stride=1, padding=0)
    with pytest.raises(ValueError, match="the levels have 4 channels"):
        ops.conv2d_joint_forward(xj, np.ones((5, 3, 3, 3), np.float32), None)
    with pytest.raises(ValueError, match="cannot be split into 3 groups"):
        ops.groupnorm_joint_forward(xj, np.ones(4, np.float32), np.zeros(4, np.float32), 3)
    y, cache = ops.conv2d_joint_forward(xj, w, None)
    with pytest.raises(ValueError, match="dy has shape"):
        ops.conv2d_joint_backward(xj, cache)  # 4 channels, the output has 5


def test_large_levels_stay_a_list():
    """Above options.keep_max_elements of unfolded matrix the heads run level by level."""
    big = [np.zeros((1, 256, 64, 64), np.float32), np.zeros((1, 256, 32, 32), np.float32)]
    assert cpu.join_levels(big, 3) is big
    small = [x[:, :8, :8, :8] for x in big]
    assert isinstance(cpu.join_levels([np.ascontiguousarray(x) for x in small], 3), Joint)
