"""nn.GroupNorm: torch's parameters and names, the cache stack over pyramid levels, and a
float64 gradient check of the layer inside a small network."""

import numpy as np
import pytest

from retina_np import ops
from retina_np.gradcheck import gradcheck
from retina_np.nn import Conv2d, GroupNorm, ReLU, Sequential


def test_parameters_and_state_dict_names_follow_torch():
    gn = GroupNorm(4, 8)
    assert list(gn.state_dict()) == ["weight", "bias"]  # no buffers: no running statistics
    np.testing.assert_array_equal(gn.weight.data, np.ones(8, np.float32))
    np.testing.assert_array_equal(gn.bias.data, np.zeros(8, np.float32))
    net = Sequential(Conv2d(3, 8, 3, padding=1, bias=False), GroupNorm(4, 8), ReLU())
    assert list(net.state_dict()) == ["0.weight", "1.weight", "1.bias"]
    assert repr(gn) == "GroupNorm(4, 8, eps=1e-05)"


@pytest.mark.parametrize("groups, channels", [(3, 8), (0, 4), (16, 8)])
def test_channels_must_split_into_groups(groups, channels):
    with pytest.raises(ValueError, match=f"{channels} channels cannot be split into {groups}"):
        GroupNorm(groups, channels)


def test_train_and_eval_agree(rng):
    gn = GroupNorm(2, 4)
    gn.weight.data = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    y_train = gn.train()(x)
    y_eval = gn.eval()(x)
    np.testing.assert_array_equal(y_train, y_eval)
    assert not gn._caches


def test_one_layer_on_several_levels(rng):
    """Called on three pyramid levels, back-propagated last level first: each input gradient
    is its own level's, and the parameter gradients are their sum."""
    gn = GroupNorm(2, 4, dtype=np.float64)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    gn.weight.data, gn.bias.data = gamma.copy(), beta.copy()
    gn.zero_grad()
    xs = [rng.standard_normal((2, 4, s, s)) for s in (6, 3, 1)]
    dys = [rng.standard_normal(x.shape) for x in xs]
    ys = [gn(x) for x in xs]
    dxs = [gn.backward(dy) for dy in reversed(dys)][::-1]
    dgamma, dbeta = np.zeros(4), np.zeros(4)
    for x, y, dy, dx in zip(xs, ys, dys, dxs):
        y_ref, cache = ops.groupnorm_forward(x, gamma, beta, 2)
        dx_ref, dg, db = ops.groupnorm_backward(dy, cache)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
        dgamma, dbeta = dgamma + dg, dbeta + db
    np.testing.assert_allclose(gn.weight.grad, dgamma, rtol=1e-12)
    np.testing.assert_allclose(gn.bias.grad, dbeta, rtol=1e-12)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        gn.backward(dys[0])


def test_gradient_check_conv_groupnorm_relu(rng):
    """conv (no bias) -> GroupNorm -> ReLU, the v2 head block, in float64 on two levels."""
    net = Sequential(Conv2d(3, 6, 3, padding=1, bias=False, rng=rng), GroupNorm(3, 6), ReLU())
    net.astype(np.float64)
    net[1].weight.data[...] = rng.uniform(0.5, 1.5, 6)
    net[1].bias.data[...] = rng.normal(0, 0.5, 6)
    xs = [rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 2, 2))]
    gs = [rng.standard_normal((2, 6, 5, 4)), rng.standard_normal((2, 6, 2, 2))]

    def loss():
        return sum(float(np.sum(net(x) * g)) for x, g in zip(xs, gs))

    loss()
    for g in reversed(gs):
        net.backward(g)
    params = dict(net.named_parameters())
    analytic = {name: p.grad.copy() for name, p in params.items()}
    # ReLU inputs this close to 0 would let the finite difference cross the kink
    for x in xs:
        pre = net[1](net[0](x))
        assert np.abs(pre).min() > 1e-4
    net.clear_caches()

    def f(_inputs):
        value = loss()
        net.clear_caches()
        return value

    report = gradcheck(f, {n: p.data for n, p in params.items()}, analytic, eps=3e-5)
    assert report.worst <= 1e-6, str(report)
