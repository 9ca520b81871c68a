import numpy as np
import pytest

from retina_np.nn import BatchNorm2d, Conv2d, Sequential
from retina_np.optim import SGD, AdamW, LRSchedule, clip_grad_norm, grad_norm


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


def _adamw_written_out(p, grads, lr, b1, b2, eps, wd):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (wd * p + (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return p


def test_adamw_matches_written_out_rule_and_skips_decay_on_1d(rng):
    net = Sequential(Conv2d(2, 3, 3, rng=rng), BatchNorm2d(3)).astype(np.float64)
    opt = AdamW(net.named_parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    params = dict(net.named_parameters())
    start = {n: p.data.copy() for n, p in params.items()}
    grads = {n: [rng.normal(size=p.shape) for _ in range(3)] for n, p in params.items()}
    for t in range(3):
        for n, p in params.items():
            p.grad[...] = grads[n][t]
        opt.step()
    for n, p in params.items():
        wd = 0.1 if p.data.ndim > 1 else 0.0
        expected = _adamw_written_out(start[n], grads[n], 0.01, 0.8, 0.99, 1e-6, wd)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)


def test_adamw_matches_torch(rng):
    torch = pytest.importorskip("torch")
    w = rng.normal(size=(4, 3, 3, 3))
    grads = [rng.normal(size=w.shape) for _ in range(4)]
    net = Sequential(Conv2d(3, 4, 3, bias=False, rng=rng)).astype(np.float64)
    (p,) = net.parameters()
    p.data[...] = w
    opt = AdamW(net.named_parameters(), lr=0.02, weight_decay=0.05)
    tw = torch.tensor(w, requires_grad=True)
    topt = torch.optim.AdamW([tw], lr=0.02, weight_decay=0.05)
    for g in grads:
        p.grad[...] = g
        opt.step()
        tw.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p.data, tw.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_adamw_state_round_trip_continues_identically(rng):
    def make():
        net = Sequential(Conv2d(2, 3, 3, rng=np.random.default_rng(1)))
        return net, AdamW(net.named_parameters(), lr=0.01)

    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in make()[0].parameters()]
             for _ in range(4)]

    def run(net, opt, steps):
        for gs in steps:
            for p, g in zip(net.parameters(), gs):
                p.grad[...] = g
            opt.step()

    straight, opt1 = make()
    run(straight, opt1, grads)
    resumed, opt2 = make()
    run(resumed, opt2, grads[:2])
    state = opt2.state_dict()
    weights = resumed.state_dict()
    resumed, opt2 = make()
    resumed.load_state_dict(weights)
    opt2.load_state_dict(state)
    run(resumed, opt2, grads[2:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(ValueError, match="steps: missing"):
        make()[1].load_state_dict({})


def test_cosine_schedule():
    s = LRSchedule(base_lr=0.1, warmup_steps=0, cosine_steps=100)
    assert s(0) == pytest.approx(0.1)
    assert s(50) == pytest.approx(0.05)
    assert s(100) == pytest.approx(0.0)
    assert s(150) == pytest.approx(0.0)
    assert s(25) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi / 4)))


def test_cosine_schedule_follows_progress_when_given():
    s = LRSchedule(base_lr=0.1, warmup_steps=0, cosine_steps=100)
    assert s(10, progress=0.5) == pytest.approx(0.05)
    assert s(10, progress=1.5) == pytest.approx(0.0)
    assert s(10, progress=None) == pytest.approx(s(10))
