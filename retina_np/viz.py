"""Pictures of detections, anchors, losses and precision-recall curves (matplotlib).

Figures are built with ``matplotlib.figure.Figure``, not ``pyplot``: no global figure list
to leak memory in long training runs, and no display needed (Agg renders the files). Every
function returns its Figure and saves it when given a ``path``; in a notebook, a returned
Figure shows with ``display(fig)`` (or by itself once ``matplotlib.pyplot`` is imported).

Images are drawn with ``extent=(0, W, H, 0)`` so pixel (i, j) covers [j, j+1) x [i, i+1),
the same convention as the boxes: a box edge falls exactly on a pixel border.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import is_color_like
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from retina_np.data.transforms import denormalize


def class_color(label: int) -> tuple[float, float, float, float]:
    """A fixed colour per class label (matplotlib's tab10, cycling)."""
    return matplotlib.colormaps["tab10"](int(label) % 10)


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 100) -> Figure:
    """Save ``fig`` to ``path`` (parent folders created) when a path is given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _as_hwc_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 as is; a normalised (3, H, W) float image is denormalised first."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        return denormalize(image)
    return image


def _show_image(ax, image: np.ndarray) -> None:
    image = _as_hwc_uint8(image)
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()


def _box_patch(box, color, linestyle="-", linewidth=1.5) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle(
        (x1, y1),
        x2 - x1,
        y2 - y1,
        fill=False,
        edgecolor=color,
        linestyle=linestyle,
        linewidth=linewidth,
    )


_LABEL_FONTSIZE = 7  # points


def _label_position(ax, box, text, fontsize, width, height, placed):
    """Where a box's label goes, in image pixels: ``(x, y_top, w, h)``.

    Above the box's top-left corner, or just inside it where the image's top would cut it;
    moved left where the image's right edge would cut it; and moved down, one label height at
    a time, while it would cover a label already drawn (two classes on one object, say). The
    label's size comes from the font size and the axes' size on the figure (about 0.6 em per
    character, 1.5 em with the padding).
    """
    pixels_per_unit = max(ax.bbox.width / width, 1e-6)  # display pixels per image pixel
    em = fontsize * ax.figure.dpi / 72 / pixels_per_unit
    w, h = 0.6 * em * len(text), 1.5 * em
    x = float(min(max(box[0], 0.0), max(width - w, 0.0)))
    y = float(box[1]) - h if box[1] - h >= 0 else float(max(box[1], 0.0))

    def overlaps(y_top):
        return any(x < px2 and px1 < x + w and y_top < py2 and py1 < y_top + h
                   for px1, py1, px2, py2 in placed)

    while overlaps(y) and y + 2 * h <= height:
        y += h
    return x, y, w, h


def draw_detections(
    ax,
    image: np.ndarray,
    detections: dict,
    class_names,
    score_thresh: float = 0.3,
    gt: dict | None = None,
) -> Figure:
    """Draw an image with its detections (solid, "name score") and ground truth (dashed).

    Args:
        ax: a matplotlib Axes to draw into.
        image: (H, W, 3) uint8, or a normalised (3, H, W) float image.
        detections: ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}``; those with a
            score below ``score_thresh`` are not drawn.
        class_names: name of each label.
        gt: optional ``{"boxes": (M, 4), "labels": (M,)}``.

    Returns:
        the Figure of ``ax``.
    """
    _show_image(ax, image)
    if gt is not None:
        for box, label in zip(np.asarray(gt["boxes"]).reshape(-1, 4), np.asarray(gt["labels"])):
            ax.add_patch(_box_patch(box, class_color(label), linestyle="--", linewidth=1.0))
    boxes = np.asarray(detections["boxes"]).reshape(-1, 4)
    scores = np.asarray(detections["scores"]).reshape(-1)
    labels = np.asarray(detections["labels"]).reshape(-1)
    height, width = _as_hwc_uint8(image).shape[:2]
    placed = []  # (x1, y1, x2, y2) of the labels drawn so far, in image pixels
    for i in np.argsort(-scores, kind="stable"):
        box, score, label = boxes[i], float(scores[i]), int(labels[i])
        if score < score_thresh:
            continue
        color = class_color(label)
        ax.add_patch(_box_patch(box, color))
        text = f"{class_names[label]} {score:.2f}"
        x, y, w, h = _label_position(ax, box, text, _LABEL_FONTSIZE, width, height, placed)
        placed.append((x, y, x + w, y + h))
        ax.text(
            x,
            y,
            text,
            fontsize=_LABEL_FONTSIZE,
            color="white",
            va="top",
            ha="left",
            clip_on=True,
            bbox={"facecolor": color, "edgecolor": "none", "pad": 1.0, "alpha": 0.8},
        )
    return ax.figure


def detection_grid(
    images,
    detections_list,
    class_names,
    path: str | Path | None = None,
    ncols: int = 4,
    gts=None,
    score_thresh: float = 0.3,
) -> Figure:
    """A grid of images with their detections (and dashed ground truth when ``gts`` is given).

    Args:
        images: N images, each (H, W, 3) uint8 or normalised (3, H, W).
        detections_list: N detection dicts.
        gts: optional N target dicts.
    """
    n = len(images)
    if len(detections_list) != n or (gts is not None and len(gts) != n):
        raise ValueError("images, detections_list and gts must have the same length")
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(3 * ncols, 3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        gt = None if gts is None else gts[k]
        draw_detections(ax, images[k], detections_list[k], class_names, score_thresh, gt)
    fig.tight_layout()
    return save_figure(fig, path)


def _ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average, bias-corrected as TensorBoard's, so it starts at the data."""
    out = np.empty(len(values))
    acc = 0.0
    for t, v in enumerate(values):
        acc = smoothing * acc + (1.0 - smoothing) * v
        out[t] = acc / (1.0 - smoothing ** (t + 1))
    return out


# The loss terms that retina_np.train logs (its records also hold lr, time, grad_norm ...).
TRAINING_LOSS_KEYS = ("total", "classification", "box_regression")


def _loss_keys(log_records) -> list[str]:
    numeric = []
    for record in log_records:
        for key, value in record.items():
            is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if key != "step" and is_number and key not in numeric:
                numeric.append(key)
    losses = [k for k in numeric if "loss" in k or k in TRAINING_LOSS_KEYS]
    return losses or numeric


def plot_loss_curves(
    log_records: list[dict],
    path: str | Path | None = None,
    smoothing: float = 0.9,
    keys: list[str] | None = None,
) -> Figure:
    """Loss terms against step, log-scale y: faint raw values and a smoothed line per term.

    Args:
        log_records: dicts with a ``"step"`` and numbers; plotted are ``keys``, by default
            every numeric key with "loss" in its name or in ``TRAINING_LOSS_KEYS`` (every
            numeric key if there is none).
        smoothing: EMA factor in [0, 1); 0 draws the raw values only.
    """
    keys = _loss_keys(log_records) if keys is None else list(keys)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for k, key in enumerate(keys):
        points = [
            (r["step"], float(r[key])) for r in log_records if key in r and r[key] is not None
        ]
        points = [(s, v) for s, v in points if np.isfinite(v) and v > 0]  # log scale
        if not points:
            continue
        steps, values = (np.array(a, dtype=np.float64) for a in zip(*points))
        color = class_color(k)
        if smoothing > 0:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _ema(values, smoothing), color=color, label=key, linewidth=1.5)
        else:
            ax.plot(steps, values, color=color, label=key, linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pr_curves(coco_eval_precision: np.ndarray, class_names, path=None) -> Figure:
    """Precision-recall curves from pycocotools' ``COCOeval.eval["precision"]``.

    Args:
        coco_eval_precision: (T, R, K, A, M) precision at T IoU thresholds (0.50:0.05:0.95),
            R recall points, K classes, A area ranges (0 = all), M max-detection caps (last
            = 100); -1 where a class has no ground truth.
        class_names: K names, in the order of COCOeval's sorted category ids.

    One curve per class at IoU 0.5, and the mean over classes and IoU 0.50:0.95 (dashed);
    the legend gives each curve's AP, the mean height of the curve.
    """
    precision = np.asarray(coco_eval_precision)[:, :, :, 0, -1]  # (T, R, K)
    num_recall = precision.shape[1]
    recall = np.linspace(0.0, 1.0, num_recall)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for k, name in enumerate(class_names):
        curve = precision[0, :, k]  # IoU 0.5
        if (curve < 0).all():
            continue  # no ground truth of this class
        ax.plot(recall, curve, color=class_color(k), label=f"{name} (AP50 {curve.mean():.3f})")
    valid = precision > -1
    if valid.any():
        counts = valid.sum(axis=(0, 2))  # (R,)
        mean = np.where(valid, precision, 0.0).sum(axis=(0, 2)) / np.maximum(counts, 1)
        ax.plot(recall, mean, "k--", label=f"mean, IoU .50:.95 (AP {mean.mean():.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_anchors(
    image: np.ndarray,
    boxes: np.ndarray,
    path: str | Path | None = None,
    ax=None,
    color="yellow",
    linewidth: float = 0.8,
    title: str | None = None,
    linestyle: str = "-",
    label: str | None = None,
) -> Figure:
    """Draw an image with a set of boxes (anchors, matched anchors, ...) on it.

    Args:
        image: (H, W, 3) uint8 or normalised (3, H, W).
        boxes: (R, 4) x1 y1 x2 y2.
        ax: draw into this Axes instead of a new Figure (called again with the same Axes, it
            draws more boxes on the same image).
        color: one matplotlib colour, or one per box.
        linestyle: matplotlib's ("-", "--", ":").
        label: the boxes' entry in ``ax.legend()`` (given to the first box).
    """
    if ax is None:
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
    _show_image(ax, image)
    boxes = np.asarray(boxes).reshape(-1, 4)
    colors = [color] * len(boxes) if is_color_like(color) else list(color)
    for i, (box, c) in enumerate(zip(boxes, colors)):
        patch = _box_patch(box, c, linestyle=linestyle, linewidth=linewidth)
        if i == 0 and label:
            patch.set_label(label)
        ax.add_patch(patch)
    if title:
        ax.set_title(title)
    return save_figure(ax.figure, path)
