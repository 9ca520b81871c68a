import numpy as np
import pytest

from retina_np.nn import BatchNorm2d, Conv2d, Parameter, ReLU, Sequential


def small_net(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(
        Conv2d(3, 4, 3, padding=1, rng=rng), BatchNorm2d(4), ReLU(), Conv2d(4, 2, 1, rng=rng)
    )


def test_state_dict_names_follow_torch():
    names = list(small_net().state_dict())
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
        "1.running_mean",
        "1.running_var",
    ]


def test_load_state_dict_round_trip_and_copies():
    a, b = small_net(0), small_net(1)
    b.load_state_dict(a.state_dict())
    for (na, va), (nb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and np.array_equal(va, vb)
    state = a.state_dict()
    state["0.weight"][...] = 7.0  # editing the returned dict must not edit the model
    assert not np.all(a.state_dict()["0.weight"] == 7.0)
    # ... and training the loaded model must not edit the dict it was loaded from
    loaded = small_net(2).state_dict()
    kept = {k: v.copy() for k, v in loaded.items()}
    b.load_state_dict(loaded)
    b.train()
    b(np.random.default_rng(0).normal(3.0, 1.0, (2, 3, 5, 5)).astype(np.float32))
    for p in b.parameters():
        p.data[...] += 1.0  # as an optimizer step does, in place
    for key, value in kept.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_load_state_dict_reports_every_problem_at_once():
    net = small_net()
    state = net.state_dict()
    state["0.weight"] = np.zeros((5, 3, 3, 3), np.float32)
    del state["3.bias"]
    state["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as err:
        net.load_state_dict(state)
    text = str(err.value)
    assert "0.weight" in text and "(5, 3, 3, 3)" in text and "(4, 3, 3, 3)" in text
    assert "3.bias: missing" in text
    assert "extra.weight: not a parameter" in text
    result = small_net().load_state_dict(
        {k: v for k, v in small_net().state_dict().items() if k != "3.bias"}, strict=False
    )
    assert result["missing"] == ["3.bias"]


def test_torch_batch_counters_load_and_other_mismatches_are_still_reported():
    # torch.nn.BatchNorm2d writes "num_batches_tracked"; ours keeps no such counter.
    a, b = small_net(0), small_net(1)
    state = {**a.state_dict(), "1.num_batches_tracked": np.array(17, np.int64)}
    result = b.load_state_dict(state)
    assert result == {"missing": [], "unexpected": [], "ignored": ["1.num_batches_tracked"]}
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)
    # ... but only under a batch norm, and every other mismatch is still reported at once.
    state["0.num_batches_tracked"] = np.array(3, np.int64)  # module 0 is a convolution
    state["3.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as err:
        b.load_state_dict(state)
    text = str(err.value)
    assert "(2 problem(s))" in text and "0.num_batches_tracked: not a parameter" in text
    assert "3.bias: checkpoint has shape (5,)" in text and "1.num_batches_tracked" not in text


def test_backward_accumulates_parameter_gradients(rng):
    net = small_net()
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    dy = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    net(x)
    net.backward(dy)
    once = {n: p.grad.copy() for n, p in net.named_parameters()}
    net(x)
    net.backward(dy)
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-5, atol=1e-6)
    net.zero_grad()
    assert all(not p.grad.any() for p in net.parameters())


def test_eval_mode_keeps_no_caches_and_backward_needs_forward(rng):
    net = small_net().eval()
    net(rng.normal(size=(1, 3, 4, 4)).astype(np.float32))
    assert all(not m._caches for m in net.modules())
    with pytest.raises(RuntimeError, match="without a matching forward"):
        net.backward(np.zeros((1, 2, 4, 4), np.float32))


def test_shared_module_backward_in_reverse_call_order(rng):
    """A module called twice is back-propagated twice, last call first (the caches stack)."""
    conv = Conv2d(2, 2, 3, padding=1, rng=rng, dtype=np.float64)
    conv.weight.data = conv.weight.data.astype(np.float64)
    conv.bias.data = conv.bias.data.astype(np.float64)
    conv.zero_grad()
    x1, x2 = rng.normal(size=(2, 1, 2, 4, 4))
    g1, g2 = rng.normal(size=(2, 1, 2, 4, 4))
    conv(x1)
    conv(x2)
    dx2 = conv.backward(g2)
    dx1 = conv.backward(g1)
    ref = Conv2d(2, 2, 3, padding=1, rng=rng)
    ref.weight.data, ref.bias.data = conv.weight.data, conv.bias.data
    ref.zero_grad()
    ref(x1)
    np.testing.assert_allclose(dx1, ref.backward(g1), rtol=1e-12)
    ref(x2)
    np.testing.assert_allclose(dx2, ref.backward(g2), rtol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, ref.weight.grad, rtol=1e-12)


def test_the_tree_sees_children_and_parameters_changed_after_a_walk():
    """Children and parameters are found once per module and kept until one is set."""
    seq = Sequential(Conv2d(1, 2, 3), ReLU())
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    conv = seq[0]
    conv.bias = None  # a parameter removed
    conv.extra = Parameter(np.zeros(1))  # one added
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.extra"]
    setattr(seq, "1", BatchNorm2d(2))  # a child replaced, in its place
    assert [n for n, _ in seq.named_parameters()][2:] == ["1.weight", "1.bias"]
    del conv.extra
    conv.training = False  # other attributes leave the tree as it is
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "1.weight", "1.bias"]
    assert [type(m).__name__ for m in seq.modules()] == ["Sequential", "Conv2d", "BatchNorm2d"]


def test_the_kept_tree_follows_changes_anywhere_below_and_copies_walk_their_own():
    """The root keeps its walk (modules, named parameters) until any module's children or
    parameters change, however deep; a copied or unpickled tree walks its own modules."""
    import copy
    import pickle

    inner = Sequential(Conv2d(1, 2, 3), ReLU())
    net = Sequential(inner, BatchNorm2d(2))
    assert [n for n, _ in net.named_parameters()] == ["0.0.weight", "0.0.bias", "1.weight",
                                                       "1.bias"]
    inner[0].bias = None  # two levels down
    setattr(inner, "1", Conv2d(2, 2, 1, bias=False))
    assert [n for n, _ in net.named_parameters()] == ["0.0.weight", "0.1.weight", "1.weight",
                                                       "1.bias"]
    assert net.parameters()[1] is inner[1].weight
    assert [type(m).__name__ for m in net.modules()] == ["Sequential", "Sequential", "Conv2d",
                                                         "Conv2d", "BatchNorm2d"]
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        ours = set(map(id, net.modules())) | set(map(id, net.parameters()))
        assert not ours & (set(map(id, twin.modules())) | set(map(id, twin.parameters())))
        assert twin.parameters()[1] is twin[0][1].weight
        twin[0][1].weight = Parameter(np.zeros((2, 2, 1, 1)))  # the copy changes, not net
        assert twin.parameters()[1] is twin[0][1].weight
        assert net.parameters()[1] is inner[1].weight
