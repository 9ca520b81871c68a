"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) (kernels/cpu/winograd.py; ``out``, the block side, 2
or 4): each transform equals its matrix form on explicit windows, each adjoint passes the
dot-product test, the convolution and its backward equal the reference kernels level by
level. The finite-difference checks (float64) of the Joint op pair, which runs these
underneath, are in test_joint_levels.py."""

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from retina_np import kernels
from retina_np.kernels import cpu, threads
from retina_np.kernels import reference as ref
from retina_np.kernels.cpu import winograd as wg
from retina_np.kernels.cpu import winograd_f2 as f2
from retina_np.kernels.cpu import winograd_f4 as f4
from retina_np.kernels.cpu.plan import IM2COL_SAME, WINOGRAD, ConvPlan
from retina_np.kernels.levels import Joint
from retina_np.kernels.workspace import ConvWorkspace


@pytest.fixture(autouse=True)
def _winograd_at_any_size():
    """The cpu kernels take Winograd's way for these small cases too."""
    with kernels.options(winograd_min_tiles=1):
        yield


# out -> the matrices (B^T, G, A^T) and the kernels (input transform, its adjoint, output
# transform, its adjoint)
SCHEMES = {
    2: ((f2.BT, f2.G, f2.AT),
        (f2.input_transform, f2.input_transform_adjoint, f2.output_transform,
         f2.output_transform_adjoint)),
    4: ((f4.BT4, f4.G4, f4.AT4),
        (f4.input_transform4, f4.input_transform4_adjoint, f4.output_transform4,
         f4.output_transform4_adjoint)),
}
outs = pytest.mark.parametrize("out", [2, 4])


levels = st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=4)
# a few images, and eight or more: the kernels move eight images at a time, fewer one by one
images = st.integers(1, 3) | st.integers(8, 10)


def _joint(rng, n, c, hws, dtype=np.float64):
    T = n * sum(h * w for h, w in hws)
    return Joint(rng.standard_normal((c, T)).astype(dtype), n, tuple(hws))


def _windows(xj, out):
    """Every tile's (out + 2) x (out + 2) input window, (P, C, out + 2, out + 2), in the
    kernels' tile order (level, tile row, tile column, image), built from explicitly padded
    levels."""
    windows = []
    for x in cpu.split_levels(xj):  # (n, C, H, W)
        n, C, H, W = x.shape
        th, tw = -(-H // out), -(-W // out)
        padded = np.zeros((n, C, out * th + 2, out * tw + 2))
        padded[:, :, 1:H + 1, 1:W + 1] = x
        for a in range(th):
            for b in range(tw):
                for m in range(n):
                    windows.append(padded[m, :, out * a:out * a + out + 2,
                                          out * b:out * b + out + 2])
    return np.array(windows)


@outs
def test_the_matrices_give_a_3x3_correlation(out):
    """A^T [(G g G^T) * (B^T d B)] A is the out x out 'valid' correlation of the window d
    (out + 2 on a side) with the 3x3 filter g."""
    BT, G, AT = SCHEMES[out][0]
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((out + 2, out + 2)), rng.standard_normal((3, 3))
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(out)]
                       for i in range(out)])
    y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


@outs
@given(n=images, c=st.integers(1, 3), hws=levels)
@example(n=9, c=2, hws=[(6, 5), (3, 4), (1, 1)])
@settings(max_examples=25, deadline=None)
def test_input_transform_is_bt_d_b_of_every_window(out, n, c, hws):
    (BT, _, _), (transform, _, _, _) = SCHEMES[out]
    terms = (out + 2) ** 2
    rng = np.random.default_rng(1)
    xj = _joint(rng, n, c, hws)
    table, P = f2.tiles(n, xj.hws, out)
    V = np.empty((terms, c, P))
    transform(xj.data.ravel(), *f2.strides(xj.data, n, xj.hws), n, table, V, 0, c)
    expected = np.einsum("ki,pcij,lj->klcp", BT, _windows(xj, out), BT).reshape(terms, c, P)
    np.testing.assert_allclose(V, expected, rtol=1e-12, atol=1e-12)


@outs
@given(n=images, f=st.integers(1, 3), hws=levels)
@example(n=9, f=2, hws=[(6, 5), (3, 4), (1, 1)])
@settings(max_examples=25, deadline=None)
def test_output_transform_is_at_m_a_of_every_tile(out, n, f, hws):
    """Each tile's A^T M A lands on its out x out block of pixels (blocks past the edge
    cropped), plus the bias."""
    (_, _, AT), (_, _, transform, _) = SCHEMES[out]
    side = out + 2
    rng = np.random.default_rng(2)
    table, P = f2.tiles(n, tuple(hws), out)
    M, b = rng.standard_normal((side * side, f, P)), rng.standard_normal(f)
    T = n * sum(h * w for h, w in hws)
    y = np.empty((f, T))
    transform(M, n, table, b, y.reshape(-1), *f2.strides(y, n, tuple(hws)), 0, f)
    blocks = np.einsum("ui,fpij,vj->pfuv", AT,
                       M.reshape(side, side, f, P).transpose(2, 3, 0, 1), AT)  # (P, F, out, out)
    p = 0
    for level, (h, w) in enumerate(hws):
        th, tw = -(-h // out), -(-w // out)
        full = np.zeros((n, f, out * th, out * tw))
        for a in range(th):
            for bb in range(tw):
                for m in range(n):
                    full[m, :, out * a:out * a + out, out * bb:out * bb + out] = blocks[p]
                    p += 1
        got = cpu.split_levels(Joint(y, n, tuple(hws)))[level]
        np.testing.assert_allclose(got, full[:, :, :h, :w] + b.reshape(1, f, 1, 1),
                                   rtol=1e-12, atol=1e-12)


@outs
@given(n=images, c=st.integers(1, 3), hws=levels, seed=st.integers(0, 99))
@example(n=9, c=2, hws=[(6, 5), (3, 4), (1, 1)], seed=0)
@settings(max_examples=25, deadline=None)
def test_adjoints_pass_the_dot_product_test(out, n, c, hws, seed):
    """<T x, v> == <x, T* v> for the input, output and filter transforms."""
    (_, G, _), (transform, adjoint, out_transform, out_adjoint) = SCHEMES[out]
    terms = (out + 2) ** 2
    rng = np.random.default_rng(seed)
    xj = _joint(rng, n, c, hws)
    table, P = f2.tiles(n, xj.hws, out)
    V, dV = np.empty((terms, c, P)), rng.standard_normal((terms, c, P))
    transform(xj.data.ravel(), *f2.strides(xj.data, n, xj.hws), n, table, V, 0, c)
    dx = np.empty_like(xj.data)
    adjoint(dV, n, table, dx.reshape(-1), *f2.strides(dx, n, xj.hws), 0, c)
    assert np.isclose(np.sum(V * dV), np.sum(xj.data * dx), rtol=1e-12, atol=1e-12)

    M, dy = rng.standard_normal((terms, c, P)), rng.standard_normal(xj.data.shape)
    y = np.empty_like(xj.data)
    out_transform(M, n, table, np.zeros(c), y.reshape(-1), *f2.strides(y, n, xj.hws), 0, c)
    dM = np.empty((terms, c, P))
    out_adjoint(dy.ravel(), *f2.strides(dy, n, xj.hws), n, table, dM, 0, c)
    assert np.isclose(np.sum(y * dy), np.sum(M * dM), rtol=1e-12, atol=1e-12)

    w, dU = rng.standard_normal((2, c, 3, 3)), rng.standard_normal((terms, 2, c))
    np.testing.assert_allclose(wg.filters(w, out), np.einsum("ai,fcij,bj->abfc", G, w, G)
                               .reshape(terms, 2, c), rtol=1e-12, atol=1e-12)
    assert np.isclose(np.sum(wg.filters(w, out) * dU), np.sum(w * wg.filters_adjoint(dU)),
                      rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@given(n=st.integers(1, 3), c=st.integers(1, 4), f=st.integers(1, 4), hws=levels,
       bias=st.booleans())
@outs
@settings(max_examples=20, deadline=None)
def test_convolution_equals_the_reference_level_by_level(out, dtype, tol, n, c, f, hws, bias):
    """Forward, input gradient, weight gradient and bias gradient of the Joint convolution
    (Winograd) against reference.py on each level (the gradients summed over the levels)."""
    rng = np.random.default_rng(3)
    xj = _joint(rng, n, c, hws, dtype)
    w = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    dyj = _joint(rng, n, f, hws, dtype)
    workspace = ConvWorkspace()
    with kernels.options(winograd_block=out):
        yj = cpu.conv2d_forward_joint(xj, w, b, workspace)
        assert workspace.plan == ConvPlan(WINOGRAD, out, True)
        assert workspace.transformed.shape == ((out + 2) ** 2, c, f2.tiles(n, xj.hws, out)[1])
        dxj, dw, db = cpu.conv2d_backward_joint(dyj, xj, w, bias, True, workspace)
    xs, dys = cpu.split_levels(xj), cpu.split_levels(dyj)
    x64 = [x.astype(np.float64) for x in xs]
    w64 = w.astype(np.float64)
    b64 = b.astype(np.float64) if bias else None

    def close(got, want):
        assert got.dtype == dtype
        scale = max(float(np.abs(want).max()), 1.0)
        assert float(np.abs(got.astype(np.float64) - want).max()) <= tol * scale

    for y, dx, x, dy in zip(cpu.split_levels(yj), cpu.split_levels(dxj), x64, dys):
        close(y, ref.conv2d_forward(x, w64, b64, 1, 1))
        close(dx, ref.conv2d_backward_input(dy.astype(np.float64), w64, x.shape[2],
                                            x.shape[3], 1, 1))
    close(dw, sum(ref.conv2d_backward_weight(dy.astype(np.float64), x, 3, 3, 1, 1)
                  for dy, x in zip(dys, x64)))
    if bias:
        close(db, sum(ref.bias_backward(dy.astype(np.float64)) for dy in dys))
    else:
        assert db is None


@outs
def test_weight_gradient_later_and_without_the_kept_input(out):
    """need_weight_grad=False, then the weight gradient alone (the queue's call), with and
    without the forward's transformed input: the same numbers as all at once."""
    rng = np.random.default_rng(4)
    xj = _joint(rng, 2, 3, [(5, 4), (2, 3), (1, 1)])
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    dyj = _joint(rng, 2, 4, [(5, 4), (2, 3), (1, 1)])
    with kernels.options(winograd_block=out):
        workspace = ConvWorkspace()
        cpu.conv2d_forward_joint(xj, w, b, workspace)
        dx, dw, db = cpu.conv2d_backward_joint(dyj, xj, w, True, True, workspace)
        dx_first, none_w, none_b = cpu.conv2d_backward_joint(dyj, xj, w, True, True, workspace,
                                                             need_weight_grad=False)
        assert none_w is None and none_b is None
        np.testing.assert_array_equal(dx_first.data, dx.data)
        for kept in (workspace, None):
            no_dx, dw_later, db_later = cpu.conv2d_backward_joint(dyj, xj, w, True, False, kept)
            assert no_dx is None
            np.testing.assert_allclose(dw_later, dw, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(db_later, db)


@outs
def test_direct_path_gives_the_same_numbers(out):
    """options(winograd=False) runs the 3x3 Joint convolution as im2col + GEMM: equal
    results."""
    rng = np.random.default_rng(5)
    xj = _joint(rng, 2, 5, [(6, 6), (3, 3), (1, 1)])
    w, b = rng.standard_normal((3, 5, 3, 3)), rng.standard_normal(3)
    dyj = _joint(rng, 2, 3, [(6, 6), (3, 3), (1, 1)])
    results = []
    for flag in (True, False):
        with kernels.options(winograd=flag, winograd_block=out):
            workspace = ConvWorkspace()
            y = cpu.conv2d_forward_joint(xj, w, b, workspace)
            assert workspace.plan.algorithm == (WINOGRAD if flag else IM2COL_SAME)
            if flag:  # what the weight gradient reuses: V (terms, C, P), or the unfolded input
                assert workspace.transformed.ndim == 3 and workspace.columns == []
            else:
                assert workspace.transformed is None and workspace.columns[0].ndim == 2
            results.append((y.data, *cpu.conv2d_backward_joint(dyj, xj, w, True, True,
                                                               workspace)))
    (y1, dx1, dw1, db1), (y2, dx2, dw2, db2) = results
    for a, c in ((y1, y2), (dx1.data, dx2.data), (dw1, dw2), (db1, db2)):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def _images_case(rng, n, c, f, h, w_, dtype):
    """x (n, c, h, w_), w (f, c, 3, 3), b (f,), dy (n, f, h, w_), random, in dtype."""
    return (rng.standard_normal((n, c, h, w_)).astype(dtype),
            rng.standard_normal((f, c, 3, 3)).astype(dtype), rng.standard_normal(f).astype(dtype),
            rng.standard_normal((n, f, h, w_)).astype(dtype))


def _assert_equal_the_reference(got, x, w, b, dy, tol):
    """(y, dx, dw) of images x (N, C, H, W) against reference.py's, in float64, to tol of the
    largest value (at least 1); each in x's dtype."""
    h, w_ = x.shape[2:]
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    wants = (ref.conv2d_forward(x64, w64, b.astype(np.float64), 1, 1),
             ref.conv2d_backward_input(dy64, w64, h, w_, 1, 1),
             ref.conv2d_backward_weight(dy64, x64, 3, 3, 1, 1))
    for array, want in zip(got, wants):
        assert array.dtype == x.dtype and array.shape == want.shape
        scale = max(float(np.abs(want).max()), 1.0)
        assert float(np.abs(array.astype(np.float64) - want).max()) <= tol * scale


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@given(n=images, c=st.integers(1, 4), f=st.integers(1, 4), h=st.integers(1, 9),
       w_=st.integers(1, 9), keep=st.booleans())
@outs
@settings(max_examples=20, deadline=None)
def test_image_convolution_equals_the_reference(out, dtype, tol, n, c, f, h, w_, keep):
    """The same kernels on (N, C, H, W) images (one level; chapter 14 times them on one):
    forward, input and weight gradients equal the reference's, with or without the kept V."""
    x, w, b, dy = _images_case(np.random.default_rng(6), n, c, f, h, w_, dtype)
    hws = ((h, w_),)
    y, V = wg.conv3x3_forward(x, n, hws, w, b, out, keep=True)
    assert V.shape == ((out + 2) ** 2, c, n * -(-h // out) * -(-w_ // out))
    assert wg.conv3x3_forward(x, n, hws, w, b, out)[1] is None  # nothing kept unless asked
    dx = wg.conv3x3_backward_input(dy, w, n, hws, out)
    dw = wg.conv3x3_backward_weight(dy, x, n, hws, out, V=V if keep else None)
    _assert_equal_the_reference((y, dx, dw), x, w, b, dy, tol)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@given(n=st.integers(1, 3), c=st.integers(1, 4), f=st.integers(1, 4), h=st.integers(1, 9),
       w_=st.integers(1, 9), keep=st.booleans())
@outs
@settings(max_examples=20, deadline=None)
def test_image_convolutions_on_one_thread_take_winograd(out, dtype, tol, n, c, f, h, w_, keep):
    """cpu.conv2d_forward, conv2d_backward_input and conv2d_backward_weight of (N, C, H, W)
    images: a small "same" 3x3 convolution runs on one thread (threads.budget) and then by
    Winograd (the forward's plan says so, and it keeps V); the results equal the reference's."""
    x, w, b, dy = _images_case(np.random.default_rng(9), n, c, f, h, w_, dtype)
    workspace = ConvWorkspace()
    with kernels.options(winograd_block=out):
        y = cpu.conv2d_forward(x, w, b, 1, 1, workspace)
        assert workspace.plan == ConvPlan(WINOGRAD, out, True)
        assert workspace.transformed.shape[0] == (out + 2) ** 2
        dx = cpu.conv2d_backward_input(dy, w, h, w_, 1, 1)
        dw = cpu.conv2d_backward_weight(dy, x, 3, 3, 1, 1, workspace if keep else None)
    _assert_equal_the_reference((y, dx, dw), x, w, b, dy, tol)


def test_the_kernels_record_the_plan_their_thread_budget_gives():
    """Which convolutions take Winograd is ``plan.choose_conv``'s decision
    (tests/kernels/test_plan.py); here the kernels follow it: a large enough Joint takes
    Winograd (its plan kept in the workspace), and so does a large enough convolution of
    (N, C, H, W) images on any budget: small (threads.budget), on every core, on one Numba
    thread, or inside a task."""
    default = kernels.Options().winograd_min_tiles  # (the fixture lowered it)
    rng = np.random.default_rng(7)

    def algorithm(conv, x, w):
        workspace = ConvWorkspace()
        conv(x, w, None, workspace)
        return workspace.plan.algorithm

    def images(x, w, b, workspace):
        return cpu.conv2d_forward(x, w, b, 1, 1, workspace)

    x, w = rng.standard_normal((8, 2, 32, 32)), rng.standard_normal((3, 2, 3, 3))  # 2048 tiles
    with kernels.options(winograd_min_tiles=default):
        xj = _joint(rng, 8, 2, [(16, 16), (8, 8), (1, 1)], np.float32)
        assert algorithm(cpu.conv2d_forward_joint, xj, w.astype(np.float32)) == WINOGRAD
        assert algorithm(images, x, w) == WINOGRAD  # small: on one thread
        with kernels.options(serial_max_elements=0):  # every kernel on every core
            assert algorithm(images, x, w) == WINOGRAD
            cores = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                assert algorithm(images, x, w) == WINOGRAD
            finally:
                numba.set_num_threads(cores)
            counted = threads.side_by_side(*[lambda: algorithm(images, x, w)] * 2)
            assert counted == [WINOGRAD, WINOGRAD]
        small = np.ascontiguousarray(x[:1, :, :16, :16])
        assert algorithm(images, small, w) == IM2COL_SAME  # 64 tiles: too few


@outs
def test_queued_weight_gradient_reuses_the_output_gradient(out):
    """The input-gradient call without the weight gradient leaves (dy, dM) in the workspace,
    beside the forward's V; the later weight-gradient call with the same dy uses that dM
    instead of transforming dy again, and lets it go; another dy is transformed anew."""
    rng = np.random.default_rng(8)
    xj = _joint(rng, 2, 3, [(4, 4), (2, 2)])
    w = rng.standard_normal((2, 3, 3, 3))
    dyj = _joint(rng, 2, 2, [(4, 4), (2, 2)])
    other = _joint(rng, 2, 2, [(4, 4), (2, 2)])
    with kernels.options(winograd_block=out):
        workspace = ConvWorkspace()
        cpu.conv2d_forward_joint(xj, w, None, workspace)
        _, dw_now, _ = cpu.conv2d_backward_joint(dyj, xj, w, False, True, workspace)
        _, dw_other, _ = cpu.conv2d_backward_joint(other, xj, w, False, True, workspace)
        assert workspace.output_gradient is None

        def queued(dy):
            cpu.conv2d_backward_joint(dyj, xj, w, False, True, workspace, need_weight_grad=False)
            kept_dy, dM = workspace.output_gradient
            assert kept_dy is dyj.data
            np.testing.assert_array_equal(dM, wg.output_gradients(dyj.data, 2, xj.hws, out))
            dM *= 2  # marked: a weight gradient from this dM is twice the true one
            _, dw_later, _ = cpu.conv2d_backward_joint(dy, xj, w, False, False, workspace)
            assert workspace.output_gradient is None
            return dw_later

        np.testing.assert_array_equal(queued(dyj), 2 * dw_now)  # made from the kept dM
        np.testing.assert_array_equal(queued(other), dw_other)  # another dy: transformed anew


@outs
def test_images_backward_reuses_the_forwards_filters_and_one_output_gradient(out):
    """A convolution of images (the backbone's): the forward keeps its transformed filters U
    beside V; the input gradient takes that U and leaves (dy, dM) in the workspace; the
    weight gradient of the same dy takes that dM (at once or queued) and lets it go, and
    another dy is transformed anew. Marked arrays show which were used."""
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 3, 3, 3))
    dy, other = rng.standard_normal((2, 2, 8, 8)), rng.standard_normal((2, 2, 8, 8))
    with kernels.options(winograd_block=out):
        workspace = ConvWorkspace()
        cpu.conv2d_forward(x, w, None, 1, 1, workspace)
        assert workspace.plan.algorithm == WINOGRAD
        np.testing.assert_array_equal(workspace.transformed_filters, wg.filters(w, out))
        dx_true = cpu.conv2d_backward_input(dy, w, 8, 8, 1, 1)
        dw_true = cpu.conv2d_backward_weight(dy, x, 3, 3, 1, 1)
        dw_other = cpu.conv2d_backward_weight(other, x, 3, 3, 1, 1)
        workspace.transformed_filters *= 2  # marked: an input gradient from it is doubled
        np.testing.assert_allclose(cpu.conv2d_backward_input(dy, w, 8, 8, 1, 1, workspace),
                                   2 * dx_true, rtol=1e-12)
        kept_dy, dM = workspace.output_gradient
        assert kept_dy is dy
        np.testing.assert_array_equal(dM, wg.output_gradients(dy, 2, ((8, 8),), out))
        dM *= 2  # marked: a weight gradient from this dM is twice the true one
        np.testing.assert_allclose(cpu.conv2d_backward_weight(dy, x, 3, 3, 1, 1, workspace),
                                   2 * dw_true, rtol=1e-12)
        assert workspace.output_gradient is None
        cpu.conv2d_backward_input(dy, w, 8, 8, 1, 1, workspace)
        np.testing.assert_allclose(cpu.conv2d_backward_weight(other, x, 3, 3, 1, 1, workspace),
                                   dw_other, rtol=1e-12)  # another dy: transformed anew
        assert workspace.output_gradient is None


@outs
@pytest.mark.parametrize("threads", [2, 3])
def test_transforms_split_over_threads_give_the_same_bits(out, threads):
    """The transforms' channels split between threads (``threads.over_channels``): every
    result bit-identical to one thread's, forward and both gradients."""
    rng = np.random.default_rng(5)
    n, C, F, hws = 3, 5, 4, ((9, 7),)
    x = rng.standard_normal((n, C) + hws[0]).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    dy = rng.standard_normal((n, F) + hws[0]).astype(np.float32)
    one = (wg.conv3x3_forward(x, n, hws, w, b, out, keep=True, threads=1),
           wg.conv3x3_backward_input(dy, w, n, hws, out, threads=1),
           wg.conv3x3_backward_weight(dy, x, n, hws, out, threads=1))
    many = (wg.conv3x3_forward(x, n, hws, w, b, out, keep=True, threads=threads),
            wg.conv3x3_backward_input(dy, w, n, hws, out, threads=threads),
            wg.conv3x3_backward_weight(dy, x, n, hws, out, threads=threads))
    for a, c in zip((one[0][0], one[0][1], one[1], one[2]),
                    (many[0][0], many[0][1], many[1], many[2])):
        np.testing.assert_array_equal(a, c)
