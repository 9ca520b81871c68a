import numpy as np
import pytest

from retina_np.nn import BatchNorm2d, Conv2d, Sequential
from retina_np.optim import SGD, LRSchedule, clip_grad_norm, grad_norm


def test_sgd_matches_written_out_rule_and_skips_decay_on_1d(rng):
    net = Sequential(Conv2d(2, 3, 3, rng=rng), BatchNorm2d(3))
    opt = SGD(net.named_parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    params = dict(net.named_parameters())
    w0 = {n: p.data.copy() for n, p in params.items()}
    v = {n: np.zeros_like(p.data) for n, p in params.items()}
    for _ in range(3):
        grads = {n: rng.normal(size=p.shape).astype(np.float32) for n, p in params.items()}
        for n, p in params.items():
            p.grad[...] = grads[n]
            wd = 0.01 if p.data.ndim > 1 else 0.0
            v[n] = 0.9 * v[n] + grads[n] + wd * w0[n]
            w0[n] = w0[n] - 0.1 * v[n]
        opt.step()
        for n, p in params.items():
            np.testing.assert_allclose(p.data, w0[n], rtol=1e-5, atol=1e-6)


def test_schedule_warmup_and_steps():
    s = LRSchedule(base_lr=0.1, warmup_steps=10, warmup_factor=0.1, milestones=(20, 30))
    assert s(0) == pytest.approx(0.01)
    assert s(5) == pytest.approx(0.1 * (0.1 * 0.5 + 0.5))
    assert s(10) == pytest.approx(0.1)
    assert s(25) == pytest.approx(0.01)
    assert s(30) == pytest.approx(0.001)


def test_clip_grad_norm(rng):
    net = Sequential(Conv2d(2, 3, 3, rng=rng))
    for p in net.parameters():
        p.grad[...] = rng.normal(size=p.shape) * 10
    before = grad_norm(net.parameters())
    returned = clip_grad_norm(net.parameters(), 1.0)
    assert returned == pytest.approx(before)
    assert grad_norm(net.parameters()) == pytest.approx(1.0, rel=1e-4)
    assert clip_grad_norm(net.parameters(), 5.0) == pytest.approx(1.0, rel=1e-4)


def test_optimizer_state_round_trip_and_mismatch(rng):
    net = Sequential(Conv2d(2, 3, 3, rng=rng))
    opt = SGD(net.named_parameters(), lr=0.1)
    for p in net.parameters():
        p.grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    opt2 = SGD(net.named_parameters(), lr=0.1)
    opt2.load_state_dict(state)
    for k in state:
        np.testing.assert_array_equal(opt2.state_dict()[k], state[k])
    with pytest.raises(ValueError, match="0.weight"):
        opt2.load_state_dict({"0.weight": np.zeros((1,), np.float32)})
