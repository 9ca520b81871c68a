"""Every fast CPU kernel equals its plain-loop reference kernel.

Closeness is measured over the whole array, max|fast - ref| <= tol * max|ref|: float64 must
agree to 1e-10, float32 to 1e-4 (the reference sums in float64). Copies and maxima (ReLU,
pooling, upsampling) must agree exactly.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_np import kernels
from retina_np.kernels import cpu
from retina_np.kernels import reference as ref
from retina_np.kernels.cpu import im2col
from retina_np.kernels.cpu.plan import is_same
from retina_np.kernels.workspace import ConvWorkspace

TOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]


def assert_close(fast, slow, dtype):
    assert fast.dtype == np.dtype(dtype), (fast.dtype, dtype)
    assert fast.shape == slow.shape
    scale = max(float(np.abs(slow).max(initial=0.0)), np.finfo(np.float64).tiny)
    err = float(np.abs(fast.astype(np.float64) - slow.astype(np.float64)).max(initial=0.0))
    assert err <= TOL[dtype] * scale, f"max abs error {err:.3e}, max |ref| {scale:.3e}"


# (N, C, F, H, W, k, stride, padding)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0),  # batch 1, 1x1 spatial, 1x1 kernel
    (1, 2, 2, 1, 1, 3, 1, 1),  # 1x1 spatial under a padded 3x3 kernel
    (2, 3, 4, 7, 9, 3, 1, 1),  # odd, non-square
    (3, 2, 2, 4, 4, 3, 1, 0),  # no padding
    (2, 3, 2, 6, 5, 3, 2, 2),  # padding larger than half the kernel, stride 2
    (2, 2, 3, 3, 3, 1, 1, 2),  # 1x1 kernel with padding 2
    (1, 4, 5, 5, 6, 1, 2, 0),  # 1x1 stride 2 (ResNet downsampling shortcut)
    (2, 3, 4, 6, 4, 1, 1, 0),  # 1x1 stride 1: the plain-GEMM path
    (1, 3, 2, 9, 7, 7, 2, 3),  # 7x7 stride 2 (ResNet stem)
    (1, 2, 3, 2, 3, 7, 1, 3),  # 7x7 on an input smaller than the kernel
    (2, 2, 2, 5, 5, 3, 2, 0),  # stride 2, no padding, odd size
]


def conv_all(kernels, x, w, b, stride, padding):
    y = kernels.conv2d_forward(x, w, b, stride, padding)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    H, W = x.shape[2:]
    kh, kw = w.shape[2:]
    return (y, kernels.conv2d_backward_input(dy, w, H, W, stride, padding),
            kernels.conv2d_backward_weight(dy, x, kh, kw, stride, padding),
            kernels.bias_backward(dy))


def check_conv(case, dtype, with_bias=True):
    N, C, F, H, W, k, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, k, k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if with_bias else None
    for fast, slow in zip(conv_all(cpu, x, w, b, s, p), conv_all(ref, x, w, b, s, p)):
        assert_close(fast, slow, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, dtype):
    check_conv(case, dtype)


@pytest.mark.parametrize("case", [(3, 2, 3, 5, 4, 3, 1, 1), (2, 3, 2, 6, 6, 1, 1, 0),
                                  (3, 2, 2, 7, 5, 3, 2, 1)])
def test_conv2d_tiled(case):
    """Tiny tiles: the im2col matrix is built a few output rows or images at a time."""
    for limit in (1, 40, 200, 500, 800):
        with kernels.options(cols_max_elements=limit):
            check_conv(case, np.float64, with_bias=False)


@pytest.mark.parametrize("case", [(3, 2, 3, 5, 4, 3, 1, 1), (2, 3, 4, 6, 4, 1, 1, 0),
                                  (1, 3, 2, 9, 7, 7, 2, 3)])
@pytest.mark.parametrize("transposed_max", [0, 1 << 18])
def test_conv2d_weight_gradient_both_orientations(case, transposed_max):
    """The weight gradient as dy @ cols.T (large gradients) or as the transposed product
    cols @ dy.T copied back (small ones): both equal the reference, with and without tiles."""
    with kernels.options(wgrad_transposed_max=transposed_max):
        check_conv(case, np.float64)
        with kernels.options(cols_max_elements=40):
            check_conv(case, np.float64, with_bias=False)


@pytest.mark.parametrize("case", [(3, 2, 3, 5, 4, 3, 1, 1), (3, 2, 2, 7, 5, 3, 2, 1),
                                  (2, 3, 2, 9, 7, 7, 2, 3)])
@pytest.mark.parametrize("tile_limit", [40, 200, 1 << 20])
def test_conv2d_weight_gradient_from_the_forwards_columns(case, tile_limit):
    """The forward's kept unfolding (every tile its own matrix) gives the weight gradient that
    unfolding x again gives, bit for bit; above options.keep_max_elements (a strided one's
    above keep_columns_max_elements) no columns are kept, and the kept phases give it too."""
    N, C, F, H, W, k, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, k, k))
    with kernels.options(cols_max_elements=tile_limit):
        workspace = ConvWorkspace()
        y = cpu.conv2d_forward(x, w, None, s, p, workspace)
        assert np.array_equal(y, cpu.conv2d_forward(x, w, None, s, p))
        assert workspace.plan.keep and workspace.transformed is None
        assert len(workspace.columns) == len(im2col.output_tiles(N, y.shape[2], C * k * k,
                                                                 y.shape[3]))
        dy = rng.standard_normal(y.shape)
        again = cpu.conv2d_backward_weight(dy, x, k, k, s, p)
        assert np.array_equal(cpu.conv2d_backward_weight(dy, x, k, k, s, p, workspace), again)
        assert_close(again, ref.conv2d_backward_weight(dy, x, k, k, s, p), np.float64)

        same = is_same(k, k, s, p)  # (keep_columns_max_elements bounds the strided ones)
        for limit in ("keep_max_elements",) + (() if same else ("keep_columns_max_elements",)):
            with kernels.options(**{limit: C * k * k * y[:, 0].size - 1}):
                too_big = ConvWorkspace()
                cpu.conv2d_forward(x, w, None, s, p, too_big)
                assert not too_big.plan.keep and too_big.columns == []
                # a strided or padded input keeps its phases instead, unfolded again from them
                assert (too_big.phases is None) == same
                assert np.array_equal(
                    cpu.conv2d_backward_weight(dy, x, k, k, s, p, too_big), again)


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       p=st.integers(0, 3), s=st.integers(1, 3))
def test_phases_are_the_padded_input_cut_by_stride(n, c, h, w, p, s):
    """Phase (a, b) holds the zero-padded input's pixels (hs*s + a, ws*s + b), zeros past it."""
    x = np.random.default_rng(0).standard_normal((n, c, h, w))
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ph = im2col.phases(x, p, s)
    Hs, Ws = -(-(h + 2 * p) // s), -(-(w + 2 * p) // s)
    assert ph.shape == (n, s, s, c, Hs, Ws)
    for a in range(s):
        for b in range(s):
            want = np.zeros((n, c, Hs, Ws))
            part = xp[:, :, a::s, b::s]
            want[:, :, :part.shape[2], :part.shape[3]] = part
            np.testing.assert_array_equal(ph[:, a, b], want)


@given(n=st.integers(0, 9), ho=st.integers(1, 40), K=st.integers(1, 600),
       wo=st.integers(1, 40), max_elements=st.integers(1, 5000), max_columns=st.integers(1, 300))
def test_output_tiles_cover_the_output_within_both_bounds(n, ho, K, wo, max_elements,
                                                          max_columns):
    """Every (image, output row) in exactly one tile (no tiles for no images), whole images or
    bands of rows of one; a tile unfolds to at most one image (or one row, for bands) more
    than the smaller of cols_max_elements and K x cols_max_columns."""
    opts = kernels.Options(cols_max_elements=max_elements, cols_max_columns=max_columns)
    tiles = im2col.output_tiles(n, ho, K, wo, opts)
    covered = [(m, oh) for n0, n1, oh0, oh1 in tiles for m in range(n0, n1)
               for oh in range(oh0, oh1)]
    assert sorted(covered) == [(m, oh) for m in range(n) for oh in range(ho)]
    limit = min(max_elements, K * max_columns)
    for n0, n1, oh0, oh1 in tiles:
        whole = (oh0, oh1) == (0, ho)
        assert n1 - n0 == 1 or whole
        unit = K * wo * (ho if whole else 1)
        assert K * (n1 - n0) * (oh1 - oh0) * wo < limit + unit
    stem = im2col.output_tiles(8, 64, 3 * 7 * 7, 64)  # the defaults: 2048 columns
    assert stem == [(m, m + 1, oh0, oh0 + 32) for m in range(8) for oh0 in (0, 32)]


@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 6),
       w=st.integers(1, 6), k=st.sampled_from([1, 2, 3, 5]), s=st.integers(1, 3),
       p=st.integers(0, 3), dtype=st.sampled_from(DTYPES), with_bias=st.booleans())
def test_conv2d_drawn(n, c, f, h, w, k, s, p, dtype, with_bias):
    if h + 2 * p < k or w + 2 * p < k:
        return
    check_conv((n, c, f, h, w, k, s, p), dtype, with_bias)


@given(n=st.integers(1, 3), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.sampled_from([3, 5, 7]),
       tile_limit=st.sampled_from([30, 300, 1 << 20]), dtype=st.sampled_from(DTYPES))
def test_same_convolution_drawn(n, c, f, h, w, k, tile_limit, dtype):
    """Stride 1 and padding k // 2 take the unpadded "same" path (im2col.im2col_same): maps
    smaller than the kernel, several images per tile, and bands of rows of one image."""
    assert is_same(k, k, 1, k // 2)
    with kernels.options(cols_max_elements=tile_limit):
        check_conv((n, c, f, h, w, k, 1, k // 2), dtype, with_bias=False)


def test_same_unfolding_is_the_padded_unfolding():
    """Row by row, the same matrix as padding x and running the general im2col."""
    rng = np.random.default_rng(5)
    for n, c, h, w, k in [(2, 3, 5, 4, 3), (3, 2, 1, 1, 3), (1, 2, 3, 2, 5), (2, 1, 6, 7, 7)]:
        x = rng.standard_normal((n, c, h, w))
        p = k // 2
        want = np.empty((c * k * k, n * h * w))
        im2col.im2col(im2col.phases(x, p, 1), k, k, 1, 0, h, w, want)
        got = np.full_like(want, np.nan)  # every entry must be written
        im2col.im2col_same(im2col.channel_major(x), k,
                           *im2col.same_tables(((n, h, w, 0, h, 0, 0),), k), got)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 4, 5), (3, 2, 1, 1), (1, 4, 3, 3),
                                   (2, 2, 17, 19)])  # rows longer than norm.LANES, and a rest
def test_batchnorm2d(shape, dtype):
    if shape == (1, 1, 1, 2) and dtype == np.float32:
        # Two values per channel normalise to -1 and +1 whatever x is, so dx is ~1e-4 of its
        # terms (only eps keeps it from 0): float32 rounding of mean and invstd then dominates
        # the difference between two correct formulas. float64 checks this case.
        pytest.skip("ill-conditioned in float32")
    rng = np.random.default_rng(0)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    mean, var = cpu.batchnorm2d_stats(x)
    for fast, slow in zip((mean, var), ref.batchnorm2d_stats(x)):
        assert_close(fast, slow, dtype)
    invstd = (1 / np.sqrt(var.astype(np.float64) + 1e-5)).astype(dtype)
    assert_close(cpu.batchnorm2d_forward(x, mean, invstd, gamma, beta),
                 ref.batchnorm2d_forward(x, mean, invstd, gamma, beta), dtype)
    for fast, slow in zip(cpu.batchnorm2d_backward(dy, x, mean, invstd, gamma),
                          ref.batchnorm2d_backward(dy, x, mean, invstd, gamma)):
        assert_close(fast, slow, dtype)
    # after a forward with the ReLU: dy counts where y > 0, the same bits as masking it first
    y = cpu.batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=True)
    fused = cpu.batchnorm2d_backward(dy, x, mean, invstd, gamma, y)
    for a, b, slow in zip(fused,
                          cpu.batchnorm2d_backward(cpu.relu_backward(dy, y), x, mean, invstd,
                                                   gamma),
                          ref.batchnorm2d_backward(dy, x, mean, invstd, gamma, y)):
        np.testing.assert_array_equal(a, b)
        assert_close(a, slow, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [2, 7, 4096])
def test_batchnorm2d_update_and_eval_stats(count, dtype):
    rng = np.random.default_rng(0)
    C, momentum, eps = 5, 0.1, 1e-5
    mean, running_mean = (rng.standard_normal(C).astype(dtype) for _ in range(2))
    var, running_var = (rng.uniform(0.1, 3, C).astype(dtype) for _ in range(2))
    got_rm, got_rv = running_mean.copy(), running_var.copy()
    want_rm, want_rv = running_mean.copy(), running_var.copy()
    invstd = cpu.batchnorm2d_update_stats(mean, var, count, got_rm, got_rv, momentum, eps)
    want = ref.batchnorm2d_update_stats(mean, var, count, want_rm, want_rv, momentum, eps)
    for fast, slow in ((invstd, want), (got_rm, want_rm), (got_rv, want_rv)):
        assert_close(fast, slow, dtype)
    # exactly numpy's float64 arithmetic, rounded once (what ops did on the host before)
    m64, v64 = mean.astype(np.float64), var.astype(np.float64)
    np.testing.assert_array_equal(invstd, (1.0 / np.sqrt(v64 + eps)).astype(dtype))
    np.testing.assert_array_equal(
        got_rm, ((1 - momentum) * running_mean.astype(np.float64) + momentum * m64).astype(dtype))
    np.testing.assert_array_equal(
        got_rv, ((1 - momentum) * running_var.astype(np.float64)
                 + momentum * (v64 * (count / (count - 1)))).astype(dtype))

    eval_mean, eval_invstd = cpu.batchnorm2d_eval_stats(got_rm, got_rv, eps)
    want_mean, want_invstd = ref.batchnorm2d_eval_stats(got_rm, got_rv, eps)
    np.testing.assert_array_equal(eval_mean, want_mean)
    assert eval_mean.dtype == np.dtype(dtype) and not np.shares_memory(eval_mean, got_rm)
    assert_close(eval_invstd, want_invstd, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (2, 3, 4, 5), (1, 1, 1, 1), (7, 3)])
def test_elementwise(shape, dtype):
    rng = np.random.default_rng(0)
    a, b, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    a.flat[0] = 0.0  # the kink: relu(0) = 0 and its gradient is taken as 0
    y = cpu.relu_forward(a)
    np.testing.assert_array_equal(y, ref.relu_forward(a))
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), ref.relu_backward(dy, y))
    assert_close(cpu.add_forward(a, b), ref.add_forward(a, b), dtype)
    assert y.dtype == dtype and cpu.relu_backward(dy, y).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [  # (N, C, H, W, k, stride, padding)
    (2, 3, 7, 6, 3, 2, 1), (1, 1, 1, 1, 1, 1, 0), (1, 2, 5, 5, 2, 2, 1), (2, 1, 4, 5, 3, 1, 1),
    (1, 2, 9, 8, 3, 3, 0),
])
def test_maxpool2d(case, dtype):
    N, C, H, W, k, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    x[..., 0, :2] = 0.5  # a tie: the first maximum wins in both
    y, argmax = cpu.maxpool2d_forward(x, k, s, p)
    y_ref, argmax_ref = ref.maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert y.dtype == dtype and argmax.dtype == np.int64
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(cpu.maxpool2d_backward(dy, argmax, H, W),
                 ref.maxpool2d_backward(dy, argmax, H, W), dtype)


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 5), s=st.integers(1, 3), data=st.data(), dtype=st.sampled_from(DTYPES))
def test_maxpool2d_drawn(n, c, h, w, k, s, data, dtype):
    """Any window, stride and padding (<= k // 2), with many ties (values of a few levels)
    and some -inf pixels: the fast kernel's taps over phases pick the reference's pixels."""
    p = data.draw(st.integers(0, k // 2))
    if h + 2 * p < k or w + 2 * p < k:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)
    x[rng.random(x.shape) < 0.1] = -np.inf
    y, argmax = cpu.maxpool2d_forward(x, k, s, p)
    y_ref, argmax_ref = ref.maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(cpu.maxpool2d_backward(dy, argmax, h, w),
                 ref.maxpool2d_backward(dy, argmax, h, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw_in, hw_out", [((2, 3), (4, 6)), ((5, 4), (9, 7)), ((3, 3), (3, 3)),
                                           ((6, 5), (4, 2)), ((1, 1), (3, 2)), ((4, 4), (1, 1))])
def test_upsample_nearest(hw_in, hw_out, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *hw_in)).astype(dtype)
    y = cpu.upsample_nearest_forward(x, *hw_out)
    np.testing.assert_array_equal(y, ref.upsample_nearest_forward(x, *hw_out))
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(cpu.upsample_nearest_backward(dy, *hw_in),
                 ref.upsample_nearest_backward(dy, *hw_in), dtype)


@pytest.mark.parametrize("case", [(4, 5, 6, 7, 1, 1, 0), (4, 5, 6, 7, 1, 2, 0),
                                  (3, 4, 9, 9, 3, 2, 1), (3, 4, 9, 9, 3, 1, 1),
                                  (3, 4, 20, 20, 3, 1, 1), (3, 16, 32, 32, 7, 2, 3)])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients(case):
    """No images (a batch cut to nothing, say): a pointwise and a strided 1x1, a strided
    im2col, "same" 3x3s (no blocks for Winograd: im2col) and the stem's 7x7 give an empty
    output and input gradient and a zero weight gradient, as the reference loops do."""
    C, F, H, W, k, s, p = case
    x = np.zeros((0, C, H, W))
    w = np.random.default_rng(0).standard_normal((F, C, k, k))
    workspace = ConvWorkspace()
    y = cpu.conv2d_forward(x, w, None, s, p, workspace)
    assert y.shape == ref.conv2d_forward(x, w, None, s, p).shape
    dy = np.zeros(y.shape)
    assert cpu.conv2d_backward_input(dy, w, H, W, s, p, workspace).shape == x.shape
    for made in (workspace, None):
        dw = cpu.conv2d_backward_weight(dy, x, k, k, s, p, made)
        assert dw.shape == w.shape and not dw.any()


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("n, h, w, oh0, oh1", [(1, 4, 3, 0, 1), (1, 4, 3, 3, 4), (1, 1, 1, 0, 1),
                                               (2, 1, 2, 0, 1), (0, 3, 3, 0, 3)])
def test_a_same_unfolding_writes_its_rows_only(k, n, h, w, oh0, oh1):
    """Where a tap's whole row is padding (a band of one output row at the top or bottom of an
    image, 1-row images, a 1x1 level, no images), the unfolding zeroes that row and nothing
    past it: every column of the matrix but the piece's keeps what it held (here NaN), and the
    piece's are the padded unfolding's."""
    c, L = 2, n * (oh1 - oh0) * w
    x = np.random.default_rng(0).standard_normal((n, c, h, w))
    geometry, keep = im2col.same_tables(((n, h, w, oh0, oh1, 0, 0),), k)
    cols = np.full((c * k * k, L + 8), np.nan)  # 8 columns past the piece's
    im2col.im2col_same(im2col.channel_major(x), k, geometry, keep, cols[:, :L])
    assert np.isnan(cols[:, L:]).all()
    want = np.empty((c * k * k, L))
    im2col.im2col(im2col.phases(x, k // 2, 1), k, k, 1, oh0, oh1, w, want)
    np.testing.assert_array_equal(cols[:, :L], want)
