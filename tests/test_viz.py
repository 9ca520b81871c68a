import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from retina_np.data import ShapesDataset, normalize
from retina_np.viz import (
    detection_grid,
    draw_anchors,
    draw_detections,
    plot_loss_curves,
    plot_pr_curves,
)


@pytest.fixture(scope="module")
def samples():
    ds = ShapesDataset(3, image_size=64, seed=0, max_size=32)
    images, detections, gts = [], [], []
    for i in range(len(ds)):
        image, target = ds[i]
        images.append(image)
        gts.append(target)
        m = len(target["labels"])
        detections.append(
            {
                "boxes": target["boxes"] + 1,
                "scores": np.linspace(0.9, 0.2, m),
                "labels": target["labels"],
            }
        )
    return ds, images, detections, gts


def assert_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


def test_draw_detections_draws_boxes_above_threshold(samples):
    ds, images, detections, gts = samples
    fig = Figure()
    ax = fig.subplots()
    out = draw_detections(ax, images[0], detections[0], ds.class_names, score_thresh=0.5, gt=gts[0])
    assert out is fig
    shown = int((detections[0]["scores"] >= 0.5).sum())
    assert len(ax.texts) == shown  # one "name score" label per detection shown
    assert len(ax.patches) == shown + len(gts[0]["labels"])
    dashed = [p for p in ax.patches if p.get_linestyle() == "--"]
    assert len(dashed) == len(gts[0]["labels"])



def test_detection_labels_neither_overlap_nor_leave_the_image():
    """Two classes on one object get two labels, one under the other; a box at the image's
    right edge gets its label moved left, inside the image."""
    image = np.zeros((128, 128, 3), np.uint8)
    detections = {
        "boxes": np.array([[20, 30, 60, 70], [21, 31, 61, 71], [110, 60, 128, 80]], np.float32),
        "scores": np.array([0.9, 0.6, 0.8], np.float32),
        "labels": np.array([0, 1, 2]),
    }
    fig = Figure(figsize=(3, 3))
    ax = fig.subplots()
    draw_detections(ax, image, detections, ["square", "circle", "triangle"], score_thresh=0.1)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    extents = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(extents) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not extents[i].overlaps(extents[j]), (ax.texts[i], ax.texts[j])
    inside = ax.get_window_extent(renderer)
    for e in extents:
        assert inside.x0 - 1 <= e.x0 and e.x1 <= inside.x1 + 1 and e.y0 >= inside.y0 - 1

def test_detection_grid_file(samples, tmp_path):
    ds, images, detections, gts = samples
    images[1] = normalize(images[1])  # normalised CHW images are shown as well
    fig = detection_grid(
        images, detections, ds.class_names, path=tmp_path / "g" / "grid.png", ncols=2, gts=gts
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert_png(tmp_path / "g" / "grid.png")


def test_loss_curves_file(tmp_path):
    rng = np.random.default_rng(0)
    records = [
        {
            "step": s,
            "loss": 2.0 / (s + 1) + 0.01 * rng.random(),
            "cls_loss": 1.0 / (s + 1),
            "box_loss": 0.5 / (s + 1),
            "lr": 0.01,
        }
        for s in range(50)
    ]
    fig = plot_loss_curves(records, path=tmp_path / "loss.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "box_loss",
        "cls_loss",
        "loss",
    ]
    assert_png(tmp_path / "loss.png")


def test_pr_curves_file(tmp_path):
    rng = np.random.default_rng(0)
    precision = np.sort(rng.random((10, 101, 3, 4, 3)), axis=1)[:, ::-1]
    precision[:, :, 2] = -1  # a class without ground truth is left out
    fig = plot_pr_curves(precision, ["a", "b", "c"], path=tmp_path / "pr.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 3 and labels[0].startswith("a") and labels[2].startswith("mean")
    assert_png(tmp_path / "pr.png")


def test_draw_anchors_file(samples, tmp_path):
    _, images, _, _ = samples
    boxes = np.array([[8, 8, 40, 40], [0, 0, 16, 32], [30, 10, 60, 20]], np.float32)
    fig = draw_anchors(images[0], boxes, path=tmp_path / "anchors.png", title="anchors")
    assert len(fig.axes[0].patches) == 3
    assert_png(tmp_path / "anchors.png")
    fig = draw_anchors(images[0], boxes, color=["red", "blue", "green"])
    assert len(fig.axes[0].patches) == 3
