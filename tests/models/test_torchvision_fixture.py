"""retina_np against torchvision's stored answers (tests/fixtures/torchvision_retinanet.npz),
with no torch installed: the state_dict layout, anchor pixels, head outputs, detections,
losses and parameter gradients of ResNet-50-FPN RetinaNet, with the same weights (drawn from a
numpy seed) and input. ``tests/fixtures/make_torchvision_fixture.py`` wrote the file; the live
comparisons are in test_torchvision_oracle.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from retina_np.detection import postprocess
from retina_np.models import RetinaNet, RetinaNetConfig

_SCRIPT = Path(__file__).parents[1] / "fixtures" / "make_torchvision_fixture.py"
_spec = importlib.util.spec_from_file_location("make_torchvision_fixture", _SCRIPT)
make_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixture)


@pytest.fixture(scope="module")
def stored():
    return make_fixture.read_fixture()


@pytest.fixture(scope="module")
def torchvision_state(stored):
    meta, _ = stored
    return make_fixture.draw_state(meta["keys"], meta["shapes"], meta["dtypes"], meta["seed"])


@pytest.fixture(scope="module")
def model64(stored, torchvision_state):
    """The model in float64 with torchvision's weights, loaded as its state_dict comes."""
    meta, _ = stored
    model = RetinaNet(RetinaNetConfig.resnet50_fpn(meta["num_classes"])).astype(np.float64)
    model.load_state_dict(torchvision_state)
    return model


def test_the_fixture_is_small_and_its_images_are_the_seeds():
    meta, arrays = make_fixture.read_fixture()
    assert make_fixture.FIXTURE.stat().st_size < 3e6
    np.testing.assert_array_equal(arrays["images"], make_fixture.draw_images(meta["seed"]))


def test_state_dict_layout_and_loading_as_it_comes(stored, torchvision_state):
    meta, _ = stored
    model = RetinaNet(RetinaNetConfig.resnet50_fpn(meta["num_classes"]))
    theirs = {k: tuple(s) for k, s in zip(meta["keys"], meta["shapes"])
              if not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == theirs
    # torch's BatchNorm2d counters (weights=None) are accepted and ignored, nothing else
    result = model.load_state_dict(torchvision_state)
    assert result["missing"] == [] and result["unexpected"] == []
    assert len(result["ignored"]) == 53
    assert all(k.endswith("num_batches_tracked") for k in result["ignored"])
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, torchvision_state[key].astype(np.float32))


def test_anchor_pixels_equal_torchvision(stored, model64):
    _, arrays = stored
    np.testing.assert_array_equal(model64.anchors(arrays["images"].shape[-2:]), arrays["anchors"])


def test_head_outputs_equal_torchvision_in_float64(stored, model64):
    _, arrays = stored
    cls, box = model64.eval()(arrays["images"])
    # float64 throughout: only the order of the sums differs from torch's
    np.testing.assert_allclose(cls, arrays["cls_logits"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(box, arrays["bbox_regression"], rtol=1e-10, atol=1e-12)


def test_head_outputs_equal_torchvision_in_float32(stored, torchvision_state):
    meta, arrays = stored
    model = RetinaNet(RetinaNetConfig.resnet50_fpn(meta["num_classes"])).eval()
    model.load_state_dict(torchvision_state)
    cls, box = model(arrays["images"].astype(np.float32))
    # the tolerances of the live oracle test: float32 rounding through 50 layers
    np.testing.assert_allclose(cls, arrays["cls_logits"], rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(box, arrays["bbox_regression"], rtol=1e-3, atol=2e-4)


def test_detections_equal_torchvision(stored, model64):
    meta, arrays = stored
    c = model64.config
    anchors = model64.anchors(arrays["images"].shape[-2:])
    counts = [h * w * 9 for h, w in [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]]
    ends = np.cumsum(arrays["det_counts"])
    for i, (h, w) in enumerate(meta["image_sizes"]):
        # torchvision's head outputs, so that the comparison is of the postprocessing alone
        det = postprocess(arrays["cls_logits"][i], arrays["bbox_regression"][i], anchors, counts,
                          (h, w), c.score_thresh, c.topk_candidates, c.nms_thresh,
                          c.detections_per_img)
        theirs = slice(ends[i] - arrays["det_counts"][i], ends[i])
        assert len(det["scores"]) == arrays["det_counts"][i] == 100
        np.testing.assert_array_equal(det["labels"], arrays["det_labels"][theirs])
        np.testing.assert_allclose(det["scores"], arrays["det_scores"][theirs], rtol=1e-14)
        np.testing.assert_allclose(det["boxes"], arrays["det_boxes"][theirs], rtol=1e-12,
                                   atol=1e-12)
        assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h


def test_losses_and_gradients_equal_torchvision(stored, model64):
    meta, arrays = stored
    targets = [{"boxes": np.array(t["boxes"], np.float64).reshape(-1, 4),
                "labels": np.array(t["labels"], np.int64)} for t in meta["targets"]]
    images = arrays["images"]
    model64.train()  # frozen batch norm: the running statistics, as torchvision's eval()
    model64.zero_grad()
    cls, box = model64(images)
    losses, d_cls, d_box = model64.loss(cls, box, targets, images.shape[-2:])
    np.testing.assert_allclose(losses["classification"], arrays["loss_classification"],
                               rtol=1e-10)
    np.testing.assert_allclose(losses["box_regression"], arrays["loss_bbox_regression"],
                               rtol=1e-10)
    model64.backward(d_cls, d_box)
    params = dict(model64.named_parameters())
    for name in meta["grad_params"]:
        ours = params[name].grad.reshape(-1)[arrays[f"grad_index/{name}"]]
        theirs = arrays[f"grad/{name}"]
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8 * np.abs(theirs).max(),
                                   err_msg=name)
