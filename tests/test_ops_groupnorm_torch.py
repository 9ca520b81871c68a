"""ops.groupnorm_* and nn.GroupNorm against PyTorch (CPU), when torch is installed."""

import numpy as np
import pytest

from retina_np import nn, ops

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
@pytest.mark.parametrize("shape, groups, eps", [
    ((2, 6, 5, 4), 3, 1e-5), ((4, 64, 3, 3), 32, 1e-5), ((1, 8, 7, 9), 1, 1e-3),
    ((3, 12, 1, 1), 4, 1e-5), ((2, 12, 2, 5), 6, 0.1),
])
def test_groupnorm(shape, groups, eps, dtype):
    rng = np.random.default_rng(0)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    y, cache = ops.groupnorm_forward(x, gamma, beta, groups, eps)
    xt, gt, bt = leaf(x), leaf(gamma), leaf(beta)
    yt = F.group_norm(xt, groups, gt, bt, eps)
    assert_close(y, yt, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    for ours, theirs in zip(ops.groupnorm_backward(dy, cache), (xt.grad, gt.grad, bt.grad)):
        assert_close(ours, theirs, dtype)


def test_layer_state_dict_and_output_equal_torch():
    torch.manual_seed(0)
    theirs = torch.nn.GroupNorm(4, 8, eps=1e-4)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    ours = nn.GroupNorm(4, 8, eps=1e-4)
    assert list(ours.state_dict()) == list(state) == ["weight", "bias"]
    ours.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 5)).astype(np.float32)
    assert_close(ours(x), theirs(torch.from_numpy(x)), np.float32)
