"""Flat parameters (retina_np/nn/flat.py): the optimizers' one-call steps, gradient norm and
zeroing give the numbers of the parameter-by-parameter loops, bit for bit, and nothing that
replaces a parameter's array is lost."""

import numpy as np
import pytest

from retina_np import kernels, optim
from retina_np.kernels import cpu
from retina_np.nn import BatchNorm2d, Conv2d, ReLU, Sequential
from retina_np.optim import SGD, AdamW, clip_grad_norm, grad_norm


def _net(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    net = Sequential(Conv2d(3, 8, 3, padding=1, rng=rng), BatchNorm2d(8), ReLU(),
                     Conv2d(8, 5, 1, rng=rng))
    return net.astype(dtype)


def _one_by_one(monkeypatch):
    """Optimizers made and stepped inside see parameters that cannot be flat: the loops."""
    monkeypatch.setattr(optim, "can_flatten", lambda params: False)


def _steps(net, opt, grads, clip):
    """Add each gradient (in place, as the layers do), clip, step; -> the norms."""
    norms = []
    for step_grads in grads:
        net.zero_grad()
        for p, g in zip(net.parameters(), step_grads):
            p.grad += g
        norms.append(clip_grad_norm(net.parameters(), clip))
        opt.step(lr=0.01)
    return norms


@pytest.mark.parametrize("make", [
    lambda net: SGD(net.named_parameters(), lr=0.01, momentum=0.9, weight_decay=0.01),
    lambda net: AdamW(net.named_parameters(), lr=0.01, weight_decay=0.05),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_flat_step_gives_the_bits_of_the_loop_over_parameters(make, dtype, monkeypatch):
    rng = np.random.default_rng(0)
    flat_net, loop_net = _net(dtype=dtype), _net(dtype=dtype)
    grads = [[rng.normal(size=p.shape).astype(dtype) * 3 for p in flat_net.parameters()]
             for _ in range(4)]
    flat_opt = make(flat_net)
    assert flat_opt.flat is not None and len(flat_opt.flat.runs) == 2  # decayed, and not
    flat_norms = _steps(flat_net, flat_opt, grads, clip=4.0)
    assert flat_opt.flat.intact()  # zeroing, adding and stepping kept the views
    for p in flat_net.parameters():
        assert p.data.base is flat_opt.flat.data and p.grad.base is flat_opt.flat.grad

    with monkeypatch.context() as m:
        _one_by_one(m)
        loop_opt = make(loop_net)
        assert loop_opt.flat is None
        loop_norms = _steps(loop_net, loop_opt, grads, clip=4.0)
    assert flat_norms == loop_norms  # the same float64 sums in the same order
    assert max(flat_norms) > 4.0  # some were clipped
    for (name, a), b in zip(flat_net.named_parameters(), loop_net.parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    for key, value in flat_opt.state_dict().items():
        np.testing.assert_array_equal(value, loop_opt.state_dict()[key], err_msg=key)


def test_zeroing_gives_fresh_arrays_and_a_part_of_the_model_zeroes_only_its_own():
    net = _net()
    opt = AdamW(net.named_parameters())
    for p in net.parameters():
        p.grad += 1.0
    kept = [p.grad for p in net.parameters()]
    net.zero_grad()
    assert opt.flat.intact()
    assert all(not p.grad.any() for p in net.parameters())
    assert all((g == 1.0).all() for g in kept)  # what someone kept is left alone
    for p in net.parameters():
        p.grad += 2.0
    net[0].zero_grad()  # the first conv only: the others keep their gradients
    assert not net[0].weight.grad.any() and (net[3].weight.grad == 2.0).all()
    assert not opt.flat.intact()
    opt.step()  # made flat again, the gradients as they were
    assert opt.flat.intact()
    assert not net[0].weight.grad.any() and (net[3].weight.grad == 2.0).all()


def test_replaced_arrays_and_a_loaded_state_are_taken_in(monkeypatch):
    """load_state_dict puts new arrays in place of the views; the next step makes the flat
    arrays again, with the loaded values and the loaded optimizer state: the numbers of a run
    that was never flat."""
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in _net().parameters()]
             for _ in range(3)]

    def run(flat):
        with monkeypatch.context() as m:
            if not flat:
                _one_by_one(m)
            net = _net()
            opt = AdamW(net.named_parameters(), lr=0.01)
            _steps(net, opt, grads[:2], clip=0.0)
            saved, saved_opt = net.state_dict(), opt.state_dict()
            net2 = _net(seed=5)
            opt2 = AdamW(net2.named_parameters(), lr=0.01)
            net2.load_state_dict(saved)
            opt2.load_state_dict(saved_opt)
            if flat:
                assert not opt2.flat.intact()
            _steps(net2, opt2, grads[2:], clip=0.0)
            if flat:
                assert opt2.flat.intact()
            return net2

    for a, b in zip(run(True).parameters(), run(False).parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_the_runs_follow_a_changed_weight_decay():
    net = _net()
    opt = SGD(net.named_parameters(), lr=0.1, weight_decay=0.01)
    assert len(opt.flat.runs) == 2
    opt.decay_norm_and_bias = True  # every parameter decays now: one run
    for p in net.parameters():
        p.grad += 1.0
    before = {n: p.data.copy() for n, p in net.named_parameters()}
    opt.step()
    assert len(opt.flat.runs) == 1
    for name, p in net.named_parameters():  # momentum 0 at the first step: v = g + wd * p
        want = before[name] - np.float32(0.1) * (np.float32(1.0) + before[name] * np.float32(0.01))
        np.testing.assert_allclose(p.data, want, rtol=1e-6, err_msg=name)


def test_the_norm_of_flat_gradients_is_the_norm_of_the_arrays():
    net = _net(dtype=np.float64)
    opt = SGD(net.named_parameters())
    rng = np.random.default_rng(2)
    for p in net.parameters():
        p.grad += rng.normal(size=p.shape)
    grads = [p.grad.copy() for p in net.parameters()]
    runs = opt.flat.bounds_of(net.parameters())  # in the model's order, not the flat one's
    assert cpu.sum_squares_runs(opt.flat.grad, runs) == cpu.sum_squares(grads)
    assert grad_norm(net.parameters()) == np.sqrt(cpu.sum_squares(grads))
    want = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert grad_norm(net.parameters()) == pytest.approx(want, rel=1e-12)


def test_a_large_update_shared_among_the_threads_is_the_one_thread_update():
    rng = np.random.default_rng(3)
    n = 10_001
    p, g, m, v = (rng.normal(size=n).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    args = (0.01, 0.9, 0.999, 1e-8, 0.05, 7)
    one = [a.copy() for a in (p, g, m, v)]
    with kernels.options(serial_max_elements=1 << 30):
        cpu.adamw_update_(*one, *args)
    shared = [a.copy() for a in (p, g, m, v)]
    with kernels.options(serial_max_elements=64):
        cpu.adamw_update_(*shared, *args)
    for a, b in zip(one, shared):
        np.testing.assert_array_equal(a, b)
    buf_one, buf_shared = m.copy(), m.copy()
    p_one, p_shared = p.copy(), p.copy()
    with kernels.options(serial_max_elements=1 << 30):
        cpu.sgd_update_(p_one, g, buf_one, 0.1, 0.9, 0.01)
    with kernels.options(serial_max_elements=64):
        cpu.sgd_update_(p_shared, g, buf_shared, 0.1, 0.9, 0.01)
    np.testing.assert_array_equal(p_one, p_shared)
    np.testing.assert_array_equal(buf_one, buf_shared)
