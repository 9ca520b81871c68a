import numpy as np
import pytest

from retina_np.models import RetinaNet, RetinaNetConfig


@pytest.fixture(scope="module")
def tiny_model():
    return RetinaNet(RetinaNetConfig.tiny(2), seed=0)


def random_targets(rng, n_images, image_hw, num_classes, max_boxes=3):
    h, w = image_hw
    targets = []
    for _ in range(n_images):
        m = int(rng.integers(1, max_boxes + 1))
        xy = rng.uniform(0, [w * 0.6, h * 0.6], size=(m, 2))
        wh = rng.uniform(8, [w * 0.4, h * 0.4], size=(m, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        targets.append({"boxes": boxes, "labels": rng.integers(0, num_classes, m)})
    return targets


@pytest.fixture
def make_targets():
    return random_targets
