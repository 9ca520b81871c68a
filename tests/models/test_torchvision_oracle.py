"""Same weights, same preprocessed input: the same head outputs and detections as torchvision."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tv_retinanet = pytest.importorskip("torchvision.models.detection.retinanet")

from retina_np.convert import torchvision_state_to_numpy  # noqa: E402
from retina_np.models import RetinaNet, RetinaNetConfig  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tv = tv_retinanet.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    # Random (not identity) frozen-BN statistics, so BN is really exercised.
    with torch.no_grad():
        for name, buf in tv.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for name, p in tv.named_parameters():
            if "bn" in name or "downsample.1" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.1, 0.1)
        # Spread the scores so that many pass the 0.05 threshold and few tie.
        tv.head.classification_head.cls_logits.weight.normal_(0, 0.002)
        tv.head.classification_head.cls_logits.bias.fill_(-3.0)
        tv.head.regression_head.bbox_reg.weight.normal_(0, 0.002)
    tv.detections_per_img = 100  # torchvision's default is 300; DESIGN.md's (and COCO's) 100
    tv.eval()
    ours = RetinaNet(RetinaNetConfig.resnet50_fpn(91)).eval()
    ours.load_state_dict(torchvision_state_to_numpy(tv.state_dict()))
    return tv, ours


def test_state_dict_keys_and_shapes_equal_torchvision(pair):
    tv, ours = pair
    theirs = {
        k: tuple(v.shape)
        for k, v in tv.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs


def test_a_weights_none_state_dict_converts_and_loads_as_it_comes(pair, tmp_path):
    # weights=None builds torch's BatchNorm2d (not FrozenBatchNorm2d): its state_dict carries
    # a num_batches_tracked counter per batch norm, which loading must accept.
    from retina_np.checkpoint import load_model
    from retina_np.cli import main

    tv, _ = pair
    state = tv.state_dict()
    assert sum(k.endswith("num_batches_tracked") for k in state) == 53
    torch.save(state, tmp_path / "tv.pth")
    assert main(["convert-torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "tv.npz")]) == 0
    model, _ = load_model(tmp_path / "tv.npz")
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(loaded[key], value.numpy())


def test_head_outputs_and_detections_equal_torchvision(pair):
    tv, ours = pair
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 192, 160)).astype(np.float32)
    with torch.no_grad():
        feats = list(tv.backbone(torch.from_numpy(x)).values())
        head = tv.head(feats)
    cls, box = ours(x)
    np.testing.assert_allclose(cls, head["cls_logits"].numpy(), rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(box, head["bbox_regression"].numpy(), rtol=1e-3, atol=2e-4)

    from torchvision.models.detection.image_list import ImageList

    image_list = ImageList(torch.from_numpy(x), [(192, 160)])
    with torch.no_grad():
        anchors = tv.anchor_generator(image_list, feats)
    np.testing.assert_allclose(ours.anchors((192, 160)), anchors[0].numpy(), atol=1e-4)
    # Feed both post-processors the same (our) head outputs: the comparison is then exact.
    counts = [f.shape[2] * f.shape[3] * 9 for f in feats]
    split = lambda a: list(torch.from_numpy(a).split(counts, dim=1))  # noqa: E731
    with torch.no_grad():
        det_tv = tv.postprocess_detections(
            {"cls_logits": split(cls), "bbox_regression": split(box)},
            [list(torch.from_numpy(ours.anchors((192, 160))).split(counts))],
            [(192, 160)],
        )[0]
    det = ours.detect(x)[0]
    scores = 1 / (1 + np.exp(-cls))
    assert 0.01 < (scores > 0.05).mean() < 0.5 and np.unique(det["scores"]).size > 90
    n = len(det_tv["scores"])
    assert len(det["scores"]) == n
    np.testing.assert_allclose(det["scores"], det_tv["scores"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(det["labels"], det_tv["labels"].numpy())
    np.testing.assert_allclose(det["boxes"], det_tv["boxes"].numpy(), rtol=1e-4, atol=1e-3)
