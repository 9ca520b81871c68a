"""The fast CPU group-norm kernels equal their plain-loop reference kernels.

Closeness as in test_cpu_vs_reference.py: max|fast - ref| <= tol * max|ref| over the whole
array, 1e-10 in float64 and 1e-4 in float32 (the reference sums in float64).
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retina_np import kernels
from retina_np.kernels import cpu
from retina_np.kernels import reference as ref

TOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]
EPS = 1e-5


def assert_close(fast, slow, dtype):
    assert fast.dtype == np.dtype(dtype), (fast.dtype, dtype)
    assert fast.shape == slow.shape
    scale = max(float(np.abs(slow).max(initial=0.0)), np.finfo(np.float64).tiny)
    err = float(np.abs(fast.astype(np.float64) - slow.astype(np.float64)).max(initial=0.0))
    assert err <= TOL[dtype] * scale, f"max abs error {err:.3e}, max |ref| {scale:.3e}"


def check(shape, groups, dtype, seed=0, offset=3.0, spread=2.0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * spread + offset).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, mean, invstd = cpu.groupnorm_forward(x, gamma, beta, groups, EPS)
    y_ref, mean_ref, invstd_ref = ref.groupnorm_forward(x, gamma, beta, groups, EPS)
    assert mean.shape == invstd.shape == (shape[0], groups)
    for fast, slow in ((y, y_ref), (mean, mean_ref), (invstd, invstd_ref)):
        assert_close(fast, slow, dtype)
    # both backwards from the same (rounded) statistics
    for fast, slow in zip(cpu.groupnorm_backward(dy, x, mean, invstd, gamma, groups),
                          ref.groupnorm_backward(dy, x, mean, invstd, gamma, groups)):
        assert_close(fast, slow, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", [
    ((2, 6, 3, 4), 3),  # 2 channels per group
    ((1, 4, 5, 5), 1),  # one group: layer norm over (C, H, W)
    ((2, 4, 3, 2), 4),  # one channel per group: instance norm
    ((3, 8, 1, 1), 2),  # 1x1 maps (P7 of a small image): statistics over channels only
    ((1, 6, 2, 7), 2),
])
def test_groupnorm(shape, groups, dtype):
    check(shape, groups, dtype)


@given(n=st.integers(1, 3), cg=st.integers(1, 3), g=st.integers(1, 4), h=st.integers(1, 4),
       w=st.integers(1, 4), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_groupnorm_drawn(n, cg, g, h, w, dtype, seed):
    # Two values per group normalise to -1 and +1 whatever x is, so dx is ~1e-4 of its terms
    # (only eps keeps it from 0) and rounding dominates the difference of two correct formulas
    # (as for batch norm); float32 rounding of the statistics needs a few more values.
    m = cg * h * w
    assume(m != 2 and (dtype == np.float64 or m >= 4))
    check((n, cg * g, h, w), g, dtype, seed=seed)


def test_one_value_per_group():
    """var = 0: y = beta, and x has no influence on y, so dx = 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 1, 1))
    beta = rng.standard_normal(3)
    y, mean, invstd = cpu.groupnorm_forward(x, np.ones(3), beta, 3, EPS)
    np.testing.assert_array_equal(y, np.broadcast_to(beta[None, :, None, None], y.shape))
    dx, _, dbeta = cpu.groupnorm_backward(np.ones_like(x), x, mean, invstd, np.ones(3), 3)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dbeta, 2.0)



@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_and_serial_paths_agree_bit_for_bit(dtype):
    """Small inputs run the rows serially, large ones in a prange over the rows: the same
    rows in the same order, so the same bits (and both equal the reference)."""
    shape, groups = (3, 8, 5, 4), 4
    rng = np.random.default_rng(5)
    x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    gamma, beta = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    results = []
    for limit in (x.size + 1, 0):  # serial, then parallel
        with kernels.options(groupnorm_parallel_min_elements=limit):
            y, mean, invstd = cpu.groupnorm_forward(x, gamma, beta, groups, EPS)
            results.append((y, mean, invstd) + cpu.groupnorm_backward(dy, x, mean, invstd,
                                                                      gamma, groups))
            check(shape, groups, dtype, seed=5)
    for serial, parallel in zip(*results):
        np.testing.assert_array_equal(serial, parallel)
