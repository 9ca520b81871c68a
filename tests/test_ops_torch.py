"""The ops against PyTorch (CPU), forward and backward, when torch is installed."""

import numpy as np
import pytest

from retina_np import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch

TOL = {np.float64: 1e-10, np.float32: 1e-4}  # max |ours - torch| / max |torch|


def assert_close(ours, theirs, dtype):
    theirs = theirs.detach().numpy()
    assert ours.dtype == theirs.dtype == np.dtype(dtype)
    assert ours.shape == theirs.shape
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-30)
    err = float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max(initial=0.0))
    assert err <= TOL[dtype] * scale, f"max abs error {err:.3e}, max |torch| {scale:.3e}"


def leaf(a):
    return torch.tensor(a, requires_grad=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", [  # (N, C, F, H, W, k, stride, padding, bias)
    (2, 3, 4, 9, 7, 3, 1, 1, True), (1, 3, 8, 17, 16, 7, 2, 3, False),
    (2, 8, 4, 6, 6, 1, 1, 0, True), (2, 8, 16, 9, 9, 1, 2, 0, False),
    (3, 5, 6, 5, 5, 3, 2, 1, True), (1, 2, 3, 1, 1, 3, 1, 1, True), (2, 4, 4, 4, 5, 3, 1, 3, True),
])
def test_conv2d(case, dtype):
    N, C, Fo, H, W, k, s, p, bias = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fo, C, k, k)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype) if bias else None
    y, cache = ops.conv2d_forward(x, w, b, s, p)
    xt, wt = leaf(x), leaf(w)
    bt = leaf(b) if bias else None
    yt = F.conv2d(xt, wt, bt, stride=s, padding=p)
    assert_close(y, yt, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dw, db = ops.conv2d_backward(dy, cache)
    assert_close(dx, xt.grad, dtype)
    assert_close(dw, wt.grad, dtype)
    if bias:
        assert_close(db, bt.grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d(training, dtype):
    rng = np.random.default_rng(0)
    C, momentum, eps = 5, 0.1, 1e-5
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    for _ in range(3):  # running statistics accumulate over steps
        x = (rng.standard_normal((4, C, 5, 3)) * 2 + 1).astype(dtype)
        y, cache = ops.batchnorm2d_forward(x, gamma, beta, rm, rv, training, momentum, eps)
        xt, gt, bt = leaf(x), leaf(gamma), leaf(beta)
        yt = F.batch_norm(xt, rm_t, rv_t, gt, bt, training=training, momentum=momentum, eps=eps)
        assert_close(y, yt, dtype)
        assert_close(rm, rm_t, dtype)
        assert_close(rv, rv_t, dtype)
        dy = rng.standard_normal(y.shape).astype(dtype)
        yt.backward(torch.tensor(dy))
        for ours, theirs in zip(ops.batchnorm2d_backward(dy, cache), (xt.grad, gt.grad, bt.grad)):
            assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2), (1, 1, 0)])
def test_maxpool2d(case, dtype):
    k, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 11, 8)).astype(dtype)
    y, cache = ops.maxpool2d_forward(x, k, s, p)
    xt = leaf(x)
    yt = F.max_pool2d(xt, k, s, p)
    assert_close(y, yt, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    assert_close(ops.maxpool2d_backward(dy, cache), xt.grad, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hw_in, hw_out", [((4, 5), (8, 10)), ((5, 5), (9, 10)), ((3, 7), (4, 13)),
                                           ((13, 10), (25, 19)), ((6, 4), (3, 2)), ((7, 7), (5, 3)),
                                           ((1, 1), (2, 3)), ((10, 12), (20, 24))])
def test_upsample_nearest(hw_in, hw_out, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *hw_in)).astype(dtype)
    y, cache = ops.upsample_nearest_forward(x, hw_out)
    xt = leaf(x)
    yt = F.interpolate(xt, size=hw_out, mode="nearest")
    assert_close(y, yt, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    assert_close(ops.upsample_nearest_backward(dy, cache), xt.grad, dtype)
