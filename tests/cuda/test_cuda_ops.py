"""Dispatch (retina_np.backend) and the op pairs (retina_np.ops) on device arrays: the same
calls as on numpy arrays, the same results."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev

from retina_np import backend, ops
from retina_np.kernels import cpu
from retina_np.kernels import cuda as kcuda


def test_device_arrays_dispatch_to_cuda_kernels():
    d = to_dev(np.zeros((2, 3), np.float32))
    assert backend.is_device_array(d)
    assert backend.kernels_for(d) is kcuda
    assert backend.kernels_for(d, None, d) is kcuda
    assert backend.kernels_for(np.zeros(3)) is cpu
    with pytest.raises(ValueError, match="mixed"):
        backend.kernels_for(d, np.zeros(3))
    assert backend.device_of(d) == "cuda"
    np.testing.assert_array_equal(backend.to_numpy(d), np.zeros((2, 3), np.float32))


def _both(a):
    """(host array, device copy)."""
    return a, to_dev(a)


def test_conv2d_ops(small_launches, rng):
    x, xd = _both(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    w, wd = _both(rng.standard_normal((5, 3, 3, 3)).astype(np.float32))
    b, bd = _both(rng.standard_normal(5).astype(np.float32))
    y, cache = ops.conv2d_forward(x, w, b, stride=2, padding=1)
    yd, cache_d = ops.conv2d_forward(xd, wd, bd, stride=2, padding=1)
    assert backend.is_device_array(yd)
    assert_close(host(yd), y, scale=10)
    dy, dyd = _both(rng.standard_normal(y.shape).astype(np.float32))
    for got, want in zip(ops.conv2d_backward(dyd, cache_d), ops.conv2d_backward(dy, cache)):
        assert_close(host(got), want, scale=10)


@pytest.mark.parametrize("relu", [False, True])  # with the ReLU after the norm
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_ops(small_launches, rng, training, relu):
    x, xd = _both((1 + rng.standard_normal((2, 3, 4, 5))).astype(np.float32))
    gamma, gd = _both(rng.uniform(0.5, 1.5, 3).astype(np.float32))
    beta, bd = _both(rng.standard_normal(3).astype(np.float32))
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    rmd, rvd = to_dev(rm), to_dev(rv)
    y, cache = ops.batchnorm2d_forward(x, gamma, beta, rm, rv, training, relu=relu)
    yd, cache_d = ops.batchnorm2d_forward(xd, gd, bd, rmd, rvd, training, relu=relu)
    assert (0 < (y > 0).mean() < 1) if relu else (y < 0).any()
    assert_close(host(yd), y, scale=10)
    assert_close(host(rmd), rm)  # running statistics updated in place on the device
    assert_close(host(rvd), rv)
    dy, dyd = _both(rng.standard_normal(x.shape).astype(np.float32))
    got, want = ops.batchnorm2d_backward(dyd, cache_d), ops.batchnorm2d_backward(dy, cache)
    for g, w in zip(got, want):
        assert_close(host(g), w, scale=10)


def test_relu_maxpool_upsample_add_ops(small_launches, rng):
    x, xd = _both(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    y, c = ops.relu_forward(x)
    yd, cd = ops.relu_forward(xd)
    np.testing.assert_array_equal(host(yd), y)
    np.testing.assert_array_equal(host(ops.relu_backward(to_dev(x), cd)), ops.relu_backward(x, c))

    y, c = ops.maxpool2d_forward(x, 3, 2, 1)
    yd, cd = ops.maxpool2d_forward(xd, 3, 2, 1)
    np.testing.assert_array_equal(host(yd), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(host(ops.maxpool2d_backward(to_dev(dy), cd)), ops.maxpool2d_backward(dy, c))

    y, c = ops.upsample_nearest_forward(x, (9, 13))
    yd, cd = ops.upsample_nearest_forward(xd, (9, 13))
    np.testing.assert_array_equal(host(yd), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(host(ops.upsample_nearest_backward(to_dev(dy), cd)),
                 ops.upsample_nearest_backward(dy, c))

    y, c = ops.add_forward(x, x)
    yd, cd = ops.add_forward(xd, xd)
    np.testing.assert_array_equal(host(yd), y)
    da, db = ops.add_backward(yd, cd)
    assert da is yd and db is yd


def test_launches_go_to_the_current_target_and_back(small_launches):
    """``launch.target`` (what ptx_check.py compiles through) sees every allocation and launch
    of the block, and numba.cuda gets them again afterwards, also after an error."""
    from retina_np.kernels.cuda import launch

    allocated, launched = [], []
    recording = launch.Target(
        empty=lambda shape, dtype: allocated.append(shape) or launch.NUMBA.empty(shape, dtype),
        to_device=launch.NUMBA.to_device,
        launch=lambda kernel, grid, block, *args: launched.append(kernel),
    )
    x = to_dev(np.array([-1.0, 2.0, -3.0, 4.0], np.float32))
    with launch.target(recording):
        kcuda.relu_forward(x)
    assert allocated == [(4,)] and len(launched) == 1
    with pytest.raises(KeyError), launch.target(recording):
        raise KeyError("inside the block")
    np.testing.assert_array_equal(host(kcuda.relu_forward(x)), [0.0, 2.0, 0.0, 4.0])
    assert len(launched) == 1
