"""One convolution of several pyramid levels (kernels/cpu/conv_joint.py's list versions, which
run level by level as the CUDA kernels do, kernels/levels.py) equals the single-input kernels
applied level by level, gradients summed over the levels."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_np import kernels, ops
from retina_np.kernels import cpu


def _levels_case(rng, n, c, f, sizes, k, dtype=np.float64, bias=True):
    xs = [rng.standard_normal((n, c, h, w)).astype(dtype) for h, w in sizes]
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    return xs, w, b


def _per_level(xs, w, b, s, p, dys):
    """The reference: the single-input kernels on each level, gradients summed."""
    kh, kw = w.shape[2:]
    ys = [cpu.conv2d_forward(x, w, b, s, p) for x in xs]
    dxs = [cpu.conv2d_backward_input(dy, w, x.shape[2], x.shape[3], s, p)
           for dy, x in zip(dys, xs)]
    dw = sum(cpu.conv2d_backward_weight(dy, x, kh, kw, s, p) for dy, x in zip(dys, xs))
    db = sum(cpu.bias_backward(dy) for dy in dys) if b is not None else None
    return ys, dxs, dw, db


def _check(xs, w, b, s, p, rng, tol):
    ys = cpu.conv2d_forward_levels(xs, w, b, s, p)
    dys = [rng.standard_normal(y.shape).astype(y.dtype) for y in ys]
    want_ys, want_dxs, want_dw, want_db = _per_level(xs, w, b, s, p, dys)
    for y, want in zip(ys, want_ys, strict=True):
        assert y.shape == want.shape and y.dtype == want.dtype
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    dxs, dw, db = cpu.conv2d_backward_levels(dys, xs, w, s, p, b is not None, True)
    for dx, want in zip(dxs, want_dxs, strict=True):
        assert dx.shape == want.shape
        np.testing.assert_allclose(dx, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, want_dw, rtol=tol, atol=tol)
    if b is None:
        assert db is None
    else:
        np.testing.assert_allclose(db, want_db, rtol=tol, atol=tol)
    no_dx, dw_only, _ = cpu.conv2d_backward_levels(dys, xs, w, s, p, False, False)
    assert no_dx is None
    np.testing.assert_allclose(dw_only, want_dw, rtol=tol, atol=tol)


@given(n=st.integers(1, 3), c=st.integers(1, 4), f=st.integers(1, 4),
       sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=5),
       k=st.sampled_from([1, 3, 5]), s=st.integers(1, 2), p=st.integers(0, 2),
       bias=st.booleans())
def test_levels_equal_level_by_level(n, c, f, sizes, k, s, p, bias):
    sizes = [(h, w) for h, w in sizes if h + 2 * p >= k and w + 2 * p >= k]
    if not sizes:
        return
    rng = np.random.default_rng(0)
    xs, w, b = _levels_case(rng, n, c, f, sizes, k, bias=bias)
    _check(xs, w, b, s, p, rng, tol=1e-10)


@given(n=st.integers(1, 3), c=st.integers(1, 4), f=st.integers(1, 4),
       sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=5),
       k=st.sampled_from([3, 5]), bias=st.booleans())
def test_same_levels_equal_level_by_level(n, c, f, sizes, k, bias):
    """Stride 1, padding k // 2: each level by the unpadded "same" unfolding
    (im2col.im2col_same)."""
    rng = np.random.default_rng(0)
    xs, w, b = _levels_case(rng, n, c, f, sizes, k, bias=bias)
    _check(xs, w, b, 1, k // 2, rng, tol=1e-10)


def test_pyramid_shapes_float32():
    """The heads' case: five levels from 16x16 down to 1x1."""
    rng = np.random.default_rng(1)
    xs, w, b = _levels_case(rng, 4, 16, 8, [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], 3,
                            np.float32)
    _check(xs, w, b, 1, 1, rng, tol=2e-4)


def test_large_weight_gradient_orientation():
    """Gradients above options.wgrad_transposed_max are computed as dy @ cols.T directly."""
    rng = np.random.default_rng(4)
    xs, w, b = _levels_case(rng, 2, 3, 4, [(5, 4), (2, 3)], 3)
    with kernels.options(wgrad_transposed_max=0):
        _check(xs, w, b, 1, 1, rng, tol=1e-10)


def test_ops_check_every_level():
    rng = np.random.default_rng(3)
    xs, w, b = _levels_case(rng, 2, 3, 4, [(5, 5), (3, 3)], 3)
    ys, cache = ops.conv2d_levels_forward(xs, w, b, 1, 1, name="head")
    assert [y.shape for y in ys] == [(2, 4, 5, 5), (2, 4, 3, 3)]
    with pytest.raises(ValueError, match="head: every level needs the same batch size"):
        ops.conv2d_levels_forward([xs[0], xs[1][:1]], w, b, 1, 1, name="head")
    with pytest.raises(ValueError, match="head: input has 2 channels"):
        ops.conv2d_levels_forward([xs[0], xs[1][:, :2]], w, b, 1, 1, name="head")
    with pytest.raises(ValueError, match="head: no inputs"):
        ops.conv2d_levels_forward([], w, b, name="head")
    with pytest.raises(ValueError, match="head: 1 gradients for 2 levels"):
        ops.conv2d_levels_backward([ys[0]], cache)
    with pytest.raises(ValueError, match="head: dy has shape"):
        ops.conv2d_levels_backward([ys[0], ys[0]], cache)
