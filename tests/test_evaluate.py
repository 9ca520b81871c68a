import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_np.data import CocoDataset, ShapesDataset, denormalize, export_coco, normalize
from retina_np.evaluate import (
    COCO_METRIC_NAMES,
    ap50_written_out,
    average_precision,
    coco_evaluate,
    detect_dataset,
    evaluate,
    match_detections,
    precision_recall,
)
from retina_np.models import RetinaNetConfig


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(12, image_size=96, seed=4, max_size=48)


def perfect_detections(dataset, indices=None):
    indices = range(len(dataset)) if indices is None else indices
    out = []
    for i in indices:
        t = dataset.target(i)
        scores = np.ones(len(t["labels"]))
        out.append({"boxes": t["boxes"], "scores": scores, "labels": t["labels"]})
    return out


def random_detections(dataset, rng, per_image=8, score_levels=None, jitter=4.0):
    """Noisy copies of the ground truth plus random boxes; scores with ties when
    ``score_levels`` is given (ties decide the order, the part most easily gotten wrong)."""
    height, width = dataset.image_size(0)
    K = len(dataset.class_names)
    out = []
    for i in range(len(dataset)):
        t = dataset.target(i)
        keep = rng.random(len(t["labels"])) < 0.8
        near = t["boxes"][keep] + rng.normal(0, jitter, (keep.sum(), 4))
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)  # a detector's boxes have w, h > 0
        near_labels = np.where(rng.random(keep.sum()) < 0.85, t["labels"][keep], rng.integers(0, K))
        xy = rng.uniform(0, [width, height], (per_image, 2))
        wh = rng.uniform(4, 40, (per_image, 2))
        boxes = np.concatenate([near, np.concatenate([xy, xy + wh], axis=1)]).astype(np.float32)
        labels = np.concatenate([near_labels, rng.integers(0, K, per_image)]).astype(np.int64)
        if score_levels:
            scores = rng.integers(1, score_levels + 1, len(boxes)) / score_levels
        else:
            scores = rng.random(len(boxes))
        out.append({"boxes": boxes, "scores": scores.astype(np.float32), "labels": labels})
    return out


def test_ground_truth_scores_one_and_perturbed_lower(shapes, tmp_path):
    metrics = coco_evaluate(perfect_detections(shapes), shapes, out_dir=tmp_path)
    for name in ["AP", "AP50", "AP75", "AR100"]:
        assert metrics[name] == pytest.approx(1.0)
    assert set(COCO_METRIC_NAMES) <= set(metrics)
    assert all(v == pytest.approx(1.0) for v in metrics["AP_per_class"].values())
    rng = np.random.default_rng(0)
    noisy = random_detections(shapes, rng, per_image=3)
    worse = coco_evaluate(noisy, shapes)
    assert 0 < worse["AP"] < worse["AP50"] < 1
    assert set(worse["AP_per_class"]) == set(shapes.class_names)


def test_files_written(shapes, tmp_path):
    detections = perfect_detections(shapes)
    metrics = coco_evaluate(detections, shapes, out_dir=tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    results = json.loads((tmp_path / "detections.json").read_text())
    assert len(results) == sum(len(d["boxes"]) for d in detections)
    first = results[0]
    x1, y1, x2, y2 = detections[0]["boxes"][0].tolist()
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert first["category_id"] == int(detections[0]["labels"][0]) + 1
    assert (tmp_path / "pr_curves.png").stat().st_size > 1000


def test_zero_detections_is_zero_not_a_crash(shapes):
    empty = [
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
        for _ in range(len(shapes))
    ]
    metrics = coco_evaluate(empty, shapes)
    assert metrics["AP"] == 0 and metrics["AP50"] == 0 and metrics["AR100"] == 0
    assert ap50_written_out(empty, shapes) == 0


def test_subset_of_images(shapes):
    indices = [3, 1, 7]
    detections = perfect_detections(shapes, indices)
    assert coco_evaluate(detections, shapes, image_indices=indices)["AP"] == pytest.approx(1)
    with pytest.raises(ValueError):
        coco_evaluate(detections, shapes)  # 3 dicts for 12 images


def test_coco_dataset_with_crowd_and_category_ids(tmp_path):
    shapes = ShapesDataset(5, image_size=64, seed=2, max_size=32)
    path = export_coco(shapes, tmp_path, progress=False)
    data = json.loads(path.read_text())
    for cat in data["categories"]:  # non-contiguous category ids
        cat["id"] *= 10
    for ann in data["annotations"]:
        ann["category_id"] *= 10
    # a crowd region: detections inside it are neither right nor wrong
    data["annotations"].append(
        {
            "id": 999,
            "image_id": 0,
            "category_id": 10,
            "bbox": [0, 0, 64, 64],
            "area": 4096.0,
            "iscrowd": 1,
        }
    )
    path.write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "images", path)
    detections = perfect_detections(ds)
    detections[0] = {
        "boxes": np.concatenate([detections[0]["boxes"], [[5, 5, 20, 20]]]).astype(np.float32),
        "scores": np.concatenate([detections[0]["scores"], [0.9]]),
        "labels": np.concatenate([detections[0]["labels"], [0]]),
    }
    metrics = coco_evaluate(detections, ds, out_dir=tmp_path / "eval")
    assert metrics["AP"] == pytest.approx(1.0)  # the extra box falls in the crowd region
    results = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert {r["category_id"] for r in results} <= {10, 20, 30}


class GeometryModel:
    """A fake detector for lone shapes: the box is the bounds of the pixels that differ from
    the corner colour; the class is guessed from how much of the box the shape fills."""

    def __init__(self):
        self.training = True
        self.calls = []

    def eval(self):
        self.training = False

    def train(self):
        self.training = True

    def detect(self, images, image_sizes):
        assert not self.training
        assert images.dtype == np.float32 and images.ndim == 4 and images.shape[1] == 3
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        self.calls.append(len(images))
        out = []
        for image, (h, w) in zip(images, image_sizes):
            rgb = denormalize(image[:, :h, :w])
            fg = (rgb != rgb[0, 0]).any(axis=-1)
            rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
            box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            fill = fg.sum() / ((box[2] - box[0]) * (box[3] - box[1]))
            label = 0 if fill > 0.95 else 1 if fill > 0.65 else 2
            out.append(
                {
                    "boxes": np.array([box], np.float32),
                    "scores": np.array([0.9]),
                    "labels": np.array([label]),
                }
            )
        return out


def test_evaluate_runs_the_model(tmp_path):
    # corner pixel is background: keep shapes away from it by making them small
    ds = ShapesDataset(
        10, image_size=(70, 90), seed=3, min_shapes=1, max_shapes=1, min_size=20, max_size=40
    )
    model = GeometryModel()
    metrics = evaluate(model, ds, batch_size=4, out_dir=tmp_path, progress=False)
    assert model.calls == [4, 4, 2] and model.training  # eval mode restored afterwards
    assert metrics["AP50"] > 0.9
    assert (tmp_path / "metrics.json").exists()


def test_detect_dataset_normalises_with_the_models_statistics():
    """A RetinaNet's ``config.image_mean`` and ``image_std``; a model without a config gets
    the defaults (ImageNet's)."""
    ds = ShapesDataset(2, image_size=(40, 50), seed=3, max_size=30)
    seen = []

    class Recording(GeometryModel):
        def detect(self, images, image_sizes):
            seen.append(images)
            none = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0),
                    "labels": np.zeros(0, np.int64)}
            return [none] * len(images)

    plain, with_config = Recording(), Recording()
    with_config.config = RetinaNetConfig(image_mean=(0.5, 0.5, 0.5), image_std=(0.25,) * 3)
    detect_dataset(plain, ds, progress=False)
    detect_dataset(with_config, ds, progress=False)
    image = ds[0][0]
    np.testing.assert_array_equal(seen[0][0, :, :40, :50], normalize(image))
    np.testing.assert_array_equal(seen[1][0, :, :40, :50],
                                  normalize(image, (0.5, 0.5, 0.5), (0.25,) * 3))


# --------------------------------------------------------------- AP written out by hand


def test_match_detections_greedy_by_score():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    det = np.array([[0, 0, 10, 9], [0, 0, 10, 10], [21, 0, 30, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.8])
    # the best-scored box takes gt 0; the 0.5 box, though overlapping, comes too late
    np.testing.assert_array_equal(match_detections(det, scores, gt, 0.5), [-1, 0, 1, -1])
    np.testing.assert_array_equal(match_detections(det, scores, gt[:0], 0.5), [-1] * 4)
    assert match_detections(det[:0], scores[:0], gt, 0.5).shape == (0,)
    # IoU exactly at the threshold matches
    half = np.array([[0, 0, 10, 5]], np.float32)
    np.testing.assert_array_equal(match_detections(half, [1.0], gt[:1], 0.5), [0])


def test_precision_recall_and_ap_by_hand():
    recall, precision = precision_recall(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 4)
    np.testing.assert_allclose(recall, [0.25, 0.25, 0.5])
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
    # envelope: 1 up to recall .25 (26 points), then 2/3 up to .5 (25 points), then 0
    expected = (26 * 1 + 25 * (2 / 3)) / 101
    assert average_precision(recall, precision) == pytest.approx(expected)
    assert average_precision(np.array([1.0]), np.array([1.0])) == 1.0
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


class ReorderedDataset:
    """Ground truth with image ids in reverse order and non-contiguous category ids, so the
    written-out AP must order ties across images as pycocotools does."""

    def __init__(self, base):
        self.base = base
        self.class_names = base.class_names
        self.label_to_category_id = {0: 7, 1: 2, 2: 30}

    def __len__(self):
        return len(self.base)

    def image_id(self, i):
        return 1000 - 3 * i

    def image_size(self, i):
        return self.base.image_size(i)

    def target(self, i):
        return self.base.target(i)


@settings(max_examples=20)
@given(
    seed=st.integers(0, 2**32 - 1),
    score_levels=st.sampled_from([None, 2, 5]),
    reorder=st.booleans(),
)
def test_written_out_ap_agrees_with_pycocotools(shapes, seed, score_levels, reorder):
    rng = np.random.default_rng(seed)
    dataset = ReorderedDataset(shapes) if reorder else shapes
    detections = random_detections(
        dataset,
        rng,
        per_image=int(rng.integers(0, 12)),
        score_levels=score_levels,
        jitter=float(rng.uniform(1, 8)),
    )
    metrics = coco_evaluate(detections, dataset)
    assert ap50_written_out(detections, dataset) == pytest.approx(metrics["AP50"], abs=1e-6)
    ap75 = ap50_written_out(detections, dataset, iou_threshold=0.75)
    assert ap75 == pytest.approx(metrics["AP75"], abs=1e-6)


def test_written_out_ap_caps_at_100_detections_per_image_and_class(shapes):
    rng = np.random.default_rng(1)
    detections = random_detections(shapes, rng, per_image=4)
    # image 0 gets 150 low-scored misses, then its true boxes at even lower scores:
    # with the cap at 100, those true boxes are cut off
    t = shapes.target(0)
    junk = np.tile([[0, 0, 2, 2]], (150, 1)).astype(np.float32)
    detections[0] = {
        "boxes": np.concatenate([junk, t["boxes"]]),
        "scores": np.concatenate([np.linspace(0.5, 0.4, 150), np.full(len(t["labels"]), 0.1)]),
        "labels": np.concatenate([np.full(150, t["labels"][0]), t["labels"]]),
    }
    metrics = coco_evaluate(detections, shapes)
    assert ap50_written_out(detections, shapes) == pytest.approx(metrics["AP50"], abs=1e-6)
