import numpy as np
import pytest

from retina_np.data import ShapesDataset
from retina_np.data.shapes import mask_box


def background_of(image):
    """The background colour: the most common colour of the image."""
    packed = image.reshape(-1, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    mode = np.bincount(packed).argmax()
    return np.array([mode >> 16, (mode >> 8) & 255, mode & 255])


def pairwise_iou(boxes):
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


def test_same_seed_same_images_any_order():
    a = ShapesDataset(20, seed=3)
    b = ShapesDataset(20, seed=3)
    for i in [7, 0, 19, 7]:  # any index alone, in any order
        image_a, target_a = a[i]
        image_b, target_b = b[i]
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(target_a["boxes"], target_b["boxes"])
        np.testing.assert_array_equal(target_a["labels"], target_b["labels"])


def test_different_seed_or_index_different_images():
    a, b = ShapesDataset(5, seed=0), ShapesDataset(5, seed=1)
    assert not np.array_equal(a[0][0], b[0][0])
    assert not np.array_equal(a[0][0], a[1][0])


def test_types_shapes_and_labels():
    ds = ShapesDataset(30, image_size=(96, 128), seed=0)
    assert len(ds) == 30 and ds.class_names == ("square", "circle", "triangle")
    seen = set()
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert labels.dtype == np.int64 and labels.shape == (len(boxes),)
        assert 1 <= len(boxes) <= 4
        assert ((labels >= 0) & (labels <= 2)).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        assert (boxes == np.round(boxes)).all()  # pixel borders
        assert ds.image_id(i) == i and ds.image_size(i) == (96, 128)
        seen.update(labels.tolist())
    assert seen == {0, 1, 2}


def test_lone_shape_box_is_exactly_its_pixels():
    ds = ShapesDataset(60, seed=5, min_shapes=1, max_shapes=1, min_size=6, max_size=50)
    for i in range(len(ds)):
        image, target = ds[i]
        foreground = (image != background_of(image)).any(axis=-1)
        np.testing.assert_array_equal(mask_box(foreground), target["boxes"][0])
        if target["labels"][0] == 0:  # a square fills its box
            x1, y1, x2, y2 = target["boxes"][0].astype(int)
            assert foreground[y1:y2, x1:x2].all() and foreground.sum() == (x2 - x1) * (y2 - y1)


def test_every_box_touches_its_shape_and_covers_all_shapes():
    ds = ShapesDataset(40, seed=2, min_shapes=3, max_shapes=4)
    for i in range(len(ds)):
        image, target = ds[i]
        foreground = (image != background_of(image)).any(axis=-1)
        covered = np.zeros_like(foreground)
        for x1, y1, x2, y2 in target["boxes"].astype(int):
            inside = foreground[y1:y2, x1:x2]
            # tight: the first and last row and column of the box each hold shape pixels
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            covered[y1:y2, x1:x2] = True
        assert not (foreground & ~covered).any()


@pytest.mark.parametrize("max_overlap", [0.0, 0.1, 0.3])
def test_overlap_limit(max_overlap):
    ds = ShapesDataset(40, seed=11, min_shapes=4, max_shapes=4, max_overlap=max_overlap)
    counts = []
    for i in range(len(ds)):
        boxes = ds[i][1]["boxes"].astype(np.float64)
        iou = pairwise_iou(boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max(initial=0) <= max_overlap + 1e-12
        counts.append(len(boxes))
    assert max(counts) >= 3  # placement does succeed


def test_sizes_in_range():
    ds = ShapesDataset(40, seed=4, min_size=20, max_size=30)
    for i in range(len(ds)):
        boxes = ds[i][1]["boxes"]
        wh = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
        # a triangle's tip may miss the centres of the pixels of its last row
        assert wh.max() <= 30 and wh.min() >= 20 - 1


def test_index_errors_and_bad_arguments():
    ds = ShapesDataset(3)
    with pytest.raises(IndexError):
        ds[3]
    np.testing.assert_array_equal(ds[-1][0], ds[2][0])
    assert len(list(ds)) == 3  # iteration stops at IndexError
    with pytest.raises(ValueError):
        ShapesDataset(3, image_size=32, max_size=64)
    with pytest.raises(ValueError):
        ShapesDataset(3, min_shapes=3, max_shapes=2)
