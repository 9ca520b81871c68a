"""RetinaNetConfig.head_norm_groups: GroupNorm between each head conv and its ReLU, laid out
as torchvision's RetinaNet v2 head (names, bias-free convs, outputs), and a float64 gradient
check of the whole model with it."""

import numpy as np
import pytest

from retina_np.gradcheck import gradcheck
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.models.heads import RetinaNetHead


def _tiny(groups):
    config = RetinaNetConfig.tiny(2)
    config.head_norm_groups = groups
    return config


def test_default_is_the_paper_head():
    assert RetinaNetConfig().head_norm_groups == 0
    assert RetinaNetConfig.resnet50_fpn().head_norm_groups == 0  # torchvision's v1
    state = RetinaNet(_tiny(0)).state_dict()
    assert "head.classification_head.conv.0.0.bias" in state
    assert not any(k.startswith("head.classification_head.conv.0.1") for k in state)


def test_parameter_names_follow_torchvision_v2():
    config = _tiny(4)  # fpn_channels 8: 4 groups of 2 channels
    state = RetinaNet(config).state_dict()
    for sub, final in (("classification_head", "cls_logits"), ("regression_head", "bbox_reg")):
        for i in range(config.head_convs):
            prefix = f"head.{sub}.conv.{i}"
            assert state[f"{prefix}.0.weight"].shape == (8, 8, 3, 3)
            assert f"{prefix}.0.bias" not in state  # the norm's shift replaces the conv's bias
            np.testing.assert_array_equal(state[f"{prefix}.1.weight"], np.ones(8, np.float32))
            np.testing.assert_array_equal(state[f"{prefix}.1.bias"], np.zeros(8, np.float32))
            assert f"{prefix}.2.weight" not in state  # ReLU
        assert f"head.{sub}.{final}.bias" in state
    assert RetinaNetConfig.from_json(config.to_json()).head_norm_groups == 4


def test_groups_must_divide_the_head_channels():
    with pytest.raises(ValueError, match="8 channels cannot be split into 3 groups"):
        RetinaNet(_tiny(3))


def test_whole_model_gradient_check_float64(rng, make_targets):
    """As tests/models/test_retinanet.py's check, with GroupNorm in both subnets: every
    parameter tensor, a few random entries each, against central differences of the loss."""
    config = _tiny(4)
    config.anchor_sizes = (4, 8, 16, 32, 64)  # foreground anchors on every level (see there)
    config.head_init_std = 0.1
    model = RetinaNet(config, seed=3).astype(np.float64).train()
    model.head.classification_head.cls_logits.bias.data[...] = -1.0
    # away from GroupNorm's initial weight 1 / bias 0, so a swapped dgamma/dbeta would show
    for name, p in model.named_parameters():
        if name.startswith("head.") and ".conv." in name and name.split(".")[-2] == "1":
            p.data[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.normal(0, 0.3, p.shape)
    x = rng.normal(size=(2, 3, 64, 64))
    targets = make_targets(rng, 2, (64, 64), 2)
    for t in targets:
        t["boxes"] = np.concatenate([t["boxes"], [[2, 3, 62, 60]]]).astype(np.float32)
        t["labels"] = np.append(t["labels"], 1)

    def loss_fn():
        cls, box = model(x)
        losses, d_cls, d_box = model.loss(cls, box, targets, (64, 64))
        return losses["total"], d_cls, d_box

    model.zero_grad()
    _, d_cls, d_box = loss_fn()
    model.backward(d_cls, d_box)
    params = dict(model.named_parameters())
    analytic = {name: p.grad.copy() for name, p in params.items()}
    assert "head.regression_head.conv.1.1.weight" in analytic

    def f(_inputs):
        value = loss_fn()[0]
        model.clear_caches()
        return value

    report = gradcheck(
        f, {n: p.data for n, p in params.items()}, analytic, eps=1e-5, num_samples=4, seed=0
    )
    assert report.worst <= 1e-5, str(report)


def test_head_equals_torchvision_v2_head(rng):
    """Same weights, same pyramid levels: torchvision's v2 head (GroupNorm(32) after each conv)
    gives the same outputs and the same parameter gradients."""
    torch = pytest.importorskip("torch")
    tv_retinanet = pytest.importorskip("torchvision.models.detection.retinanet")
    from functools import partial

    torch.manual_seed(0)
    C, A, K = 64, 9, 3
    theirs = tv_retinanet.RetinaNetHead(C, A, K, norm_layer=partial(torch.nn.GroupNorm, 32))
    theirs = theirs.double()
    with torch.no_grad():  # GroupNorm's affine parameters away from 1 and 0
        for name, p in theirs.named_parameters():
            if p.ndim == 1 and ".conv." in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.3)
    ours = RetinaNetHead(C, A, K, num_convs=4, norm_groups=32).astype(np.float64)
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}  # float64
    mine = ours.state_dict()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state)

    levels = [rng.standard_normal((2, C, s, s)) for s in (6, 3, 1)]
    cls, box = ours(levels)
    levels_t = [torch.tensor(x) for x in levels]
    out = theirs(levels_t)
    np.testing.assert_allclose(cls, out["cls_logits"].detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(box, out["bbox_regression"].detach().numpy(), rtol=1e-9,
                               atol=1e-12)

    g_cls, g_box = rng.standard_normal(cls.shape), rng.standard_normal(box.shape)
    ours.zero_grad()
    ours.backward(g_cls, g_box)
    (out["cls_logits"] * torch.tensor(g_cls)).sum().add(
        (out["bbox_regression"] * torch.tensor(g_box)).sum()).backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        want = grads[name].grad.numpy()
        np.testing.assert_allclose(p.grad, want, rtol=1e-8, atol=1e-10 * np.abs(want).max(),
                                   err_msg=name)
