"""The shipped shapes model: it loads in one call and detects held-out shapes (AP50 >= 0.9)."""

import json

import numpy as np
import pytest

from retina_np.data import ShapesDataset
from retina_np.evaluate import evaluate
from retina_np.models import RetinaNet, RetinaNetConfig, pretrained
from retina_np.models.pretrained import HELD_OUT_SEED, WEIGHTS_DIR, pretrained_path

# The bar; the committed metrics (500 held-out images) are well above it.
MIN_AP50 = 0.9


@pytest.fixture(scope="module")
def model():
    return pretrained("shapes")


def test_pretrained_loads_in_eval_mode_with_the_shapes_config(model):
    assert isinstance(model, RetinaNet)
    assert not model.training
    assert model.config == RetinaNetConfig.shapes()
    # trained: not the weights of a fresh model
    fresh = RetinaNet(RetinaNetConfig.shapes(), seed=0).state_dict()
    name = "head.classification_head.cls_logits.weight"
    assert not np.array_equal(model.state_dict()[name], fresh[name])


def test_pretrained_file_is_small_and_documented():
    assert pretrained_path("shapes").stat().st_size <= 4 * 2**20
    metrics = json.loads((WEIGHTS_DIR / "shapes_metrics.json").read_text())
    assert metrics["AP50"] >= MIN_AP50
    assert (WEIGHTS_DIR / "shapes_log.jsonl").stat().st_size > 0


def test_pretrained_unknown_name():
    with pytest.raises(ValueError, match="no pretrained model"):
        pretrained("coco")


def test_pretrained_ap50_on_100_held_out_images(model):
    held_out = ShapesDataset(100, seed=HELD_OUT_SEED)
    metrics = evaluate(model, held_out, batch_size=20, progress=False)
    assert metrics["AP50"] >= MIN_AP50, metrics
