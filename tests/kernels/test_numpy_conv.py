"""The NumPy im2col + GEMM convolution (kernels/numpy_conv.py) equals the loops of
kernels/reference.py and the Numba kernels of kernels/cpu/, forward and backward: the three
steps a learner reads, each checked against the one before."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_np.kernels import cpu, numpy_conv
from retina_np.kernels import reference as ref


@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 2, 3, 5]))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    H = draw(st.integers(max(1, k - 2 * padding), 8))
    W = draw(st.integers(max(1, k - 2 * padding), 8))
    N, C, F = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    return N, C, F, H, W, k, stride, padding, seed


def _arrays(N, C, F, H, W, k, stride, padding, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, k, k))
    b = rng.standard_normal(F)
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    dy = rng.standard_normal((N, F, Ho, Wo))
    return x, w, b, dy


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_numpy_conv_equals_the_loops_and_the_numba_kernels(case):
    N, C, F, H, W, k, stride, padding, _ = case
    x, w, b, dy = _arrays(*case)
    y = numpy_conv.conv2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, stride, padding), rtol=0,
                               atol=1e-12 * max(1.0, np.abs(y).max()))
    np.testing.assert_allclose(cpu.conv2d_forward(x, w, b, stride, padding), y, rtol=0,
                               atol=1e-12 * max(1.0, np.abs(y).max()))
    dx, dw, db = numpy_conv.conv2d_backward(dy, x, w, stride, padding)
    for fast, slow in ((dx, ref.conv2d_backward_input(dy, w, H, W, stride, padding)),
                       (dw, ref.conv2d_backward_weight(dy, x, k, k, stride, padding)),
                       (db, ref.bias_backward(dy)),
                       (cpu.conv2d_backward_input(dy, w, H, W, stride, padding), dx),
                       (cpu.conv2d_backward_weight(dy, x, k, k, stride, padding), dw)):
        assert fast.shape == slow.shape
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12 * max(1.0, np.abs(slow).max()))


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> == <x, col2im(c)>: the backward's fold is the unfold's transpose."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    cols = numpy_conv.im2col(x, 3, 3, 2, 1)
    c = rng.standard_normal(cols.shape)
    lhs = float(np.sum(cols * c))
    rhs = float(np.sum(x * numpy_conv.col2im(c, x.shape, 3, 3, 2, 1)))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
