"""The implicit-GEMM convolutions (kernels/cuda/conv.py) against kernels.cpu."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev

from retina_np.kernels import cpu, options
from retina_np.kernels import cuda as kcuda
from retina_np.kernels.cuda import config
from retina_np.kernels.cuda import conv as cuda_conv

# (kernel, stride, padding) on a 7x6 input: odd sizes, stride 2 leaving a ragged last window,
# padding 0 / 1 / 2, a 1x1 and a 5x5 kernel.
GEOMETRIES = [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (5, 2, 2), (2, 1, 0)]

# GEMM tiles (TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N): square, and lopsided so that rows
# and columns get different numbers of ragged tiles.
TILES = {"8x8x4/2x2": (8, 8, 4, 2, 2), "4x8x2/1x4": (4, 8, 2, 1, 4)}
TILE_FIELDS = ("cuda_gemm_tile_m", "cuda_gemm_tile_n", "cuda_gemm_tile_k", "cuda_gemm_thread_m",
               "cuda_gemm_thread_n")


def _conv_case(rng, dtype, k, stride, padding, N=2, C=3, F=5, H=7, W=6):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, k, k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    dy = rng.standard_normal((N, F, Ho, Wo)).astype(dtype)
    return x, w, b, dy


def _check_all_three(x, w, b, dy, stride, padding):
    """The device's forward and both gradients against the CPU's -> the weight gradient."""
    dtype = x.dtype
    H, W = x.shape[2:]
    kh, kw = w.shape[2:]
    y = kcuda.conv2d_forward(to_dev(x), to_dev(w), None if b is None else to_dev(b), stride,
                             padding)
    assert y.shape == dy.shape and y.dtype == dtype
    assert_close(host(y), cpu.conv2d_forward(x, w, b, stride, padding), dtype, scale=10)
    dx = kcuda.conv2d_backward_input(to_dev(dy), to_dev(w), H, W, stride, padding)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close(host(dx), cpu.conv2d_backward_input(dy, w, H, W, stride, padding), dtype, 10)
    dw = kcuda.conv2d_backward_weight(to_dev(dy), to_dev(x), kh, kw, stride, padding)
    assert dw.shape == w.shape and dw.dtype == dtype
    dw = host(dw)
    assert_close(dw, cpu.conv2d_backward_weight(dy, x, kh, kw, stride, padding), dtype, 10)
    return dw


@pytest.mark.parametrize("k,stride,padding", GEOMETRIES)
def test_conv_matches_cpu(small_launches, rng, k, stride, padding):
    x, w, b, dy = _conv_case(rng, np.float32, k, stride, padding)
    _check_all_three(x, w, b, dy, stride, padding)


@pytest.mark.parametrize("tiles", list(TILES.values()), ids=list(TILES))
def test_conv_other_tiles_and_no_bias(small_launches, rng, tiles):
    x, w, _, dy = _conv_case(rng, np.float32, 3, 2, 1, N=1, C=4, F=3, H=5, W=7)
    with options(**dict(zip(TILE_FIELDS, tiles))):
        _check_all_three(x, w, None, dy, 2, 1)


def test_conv_split_k(small_launches, rng):
    """K cut into several chunks (grid z), the partial products summed by a second kernel."""
    x, w, b, dy = _conv_case(rng, np.float32, 3, 1, 1)
    L = 7 * 6
    with options(cuda_split_k_min=8, cuda_split_k_target_blocks=64):
        for M, N, K in [(5, 2 * L, 3 * 9), (3, 2 * 7 * 6, 5 * 9), (5, 3 * 9, 2 * L)]:
            splits, _ = cuda_conv._split_k(M, N, K, *config.gemm_config()[:3])
            assert splits > 1
        _check_all_three(x, w, b, dy, 1, 1)


def test_conv_float64(small_launches, rng):
    x, w, b, dy = _conv_case(rng, np.float64, 3, 2, 1, N=1, C=2, F=3, H=5, W=4)
    _check_all_three(x, w, b, dy, 2, 1)


def test_bad_tile_settings_are_refused(small_launches, rng):
    x, w, b, _ = _conv_case(rng, np.float32, 1, 1, 0, N=1, C=1, F=1, H=2, W=2)
    not_a_multiple = options(cuda_gemm_tile_n=6, cuda_gemm_thread_n=4)  # of THREAD_N
    with not_a_multiple, pytest.raises(ValueError, match="GEMM"):
        kcuda.conv2d_forward(to_dev(x), to_dev(w), to_dev(b), 1, 0)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_levels_match_cpu(small_launches, rng, bias):
    """The heads' convolution of several levels: level by level on the device, one joint
    GEMM on the CPU; the same outputs and gradients (weight and bias summed over levels)."""
    sizes = [(5, 4), (3, 2), (1, 1)]
    xs = [rng.standard_normal((2, 3, h, w)).astype(np.float32) for h, w in sizes]
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32) if bias else None
    want_ys = cpu.conv2d_forward_levels(xs, w, b, 1, 1)
    ys = kcuda.conv2d_forward_levels([to_dev(x) for x in xs], to_dev(w),
                                     None if b is None else to_dev(b), 1, 1, [])
    dys = [rng.standard_normal(y.shape).astype(np.float32) for y in want_ys]
    for y, want in zip(ys, want_ys, strict=True):
        assert_close(host(y), want, scale=10)
    want_dxs, want_dw, want_db = cpu.conv2d_backward_levels(dys, xs, w, 1, 1, bias, True)
    dxs, dw, db = kcuda.conv2d_backward_levels([to_dev(d) for d in dys],
                                               [to_dev(x) for x in xs], to_dev(w), 1, 1,
                                               bias, True)
    for dx, want in zip(dxs, want_dxs, strict=True):
        assert_close(host(dx), want, scale=10)
    assert_close(host(dw), want_dw, scale=10)
    if bias:
        assert_close(host(db), want_db, scale=10)
    else:
        assert db is None


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (7, 2, 3), (1, 2, 0)])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients(small_launches, rng, k,
                                                                      stride, padding):
    """No images: empty outputs and input gradients, and weight gradients of zeros (no block
    adds anything to them), as on the CPU."""
    x, w, b, dy = _conv_case(rng, np.float32, k, stride, padding, N=0)
    assert not _check_all_three(x, w, b, dy, stride, padding).any()
