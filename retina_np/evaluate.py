"""Evaluation: COCO metrics by pycocotools, and average precision written out by hand.

``evaluate(model, dataset)`` runs the detector over a dataset and scores it with
pycocotools (``coco_evaluate``), the reference every detection paper reports.

The second half of this module computes AP50 the way pycocotools does, in plain code, to
show what the number means:

1. per image and class, take the detections by descending score (at most 100) and match
   each greedily to the unmatched ground-truth box it overlaps most, if IoU >= 0.5
   (``match_detections``): matched = true positive, else false positive;
2. per class, pool the detections of all images, sort by score and accumulate precision
   and recall down the list (``precision_recall``);
3. AP = mean of the precision envelope at 101 recall points 0, 0.01, ..., 1
   (``average_precision``); AP50 = mean over the classes that have ground truth.

``ap50_written_out`` agrees with pycocotools' AP50 to rounding; tests check it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retina_np.data.transforms import model_batch
from retina_np.detection.boxes import box_iou
from retina_np.models.config import RetinaNetConfig
from retina_np.progress import progress_bar

# The order of COCOeval.stats after summarize(): AP at IoU .50:.95, .50, .75, AP for small,
# medium, large objects, then recall with at most 1, 10, 100 detections and by size.
COCO_METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
# pycocotools' recall points: 0, 0.01, ..., 1.
COCO_RECALL_POINTS = 101
# pycocotools' cap on detections per image and class for AP.
COCO_MAX_DETS = 100


# --------------------------------------------------------------------------- COCO json


def _check_indices(dataset, image_indices) -> list[int]:
    n = len(dataset)
    indices = list(range(n)) if image_indices is None else [int(i) for i in image_indices]
    if not indices:
        raise ValueError("nothing to evaluate: no images")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"image indices {bad[:5]} out of range for {n} images")
    if len(set(indices)) != len(indices):
        raise ValueError("image_indices has repeats")
    return indices


def _label_to_category(dataset) -> dict[int, int]:
    mapping = getattr(dataset, "label_to_category_id", None)
    return dict(mapping) if mapping else {k: k + 1 for k in range(len(dataset.class_names))}


def _target(dataset, index: int) -> dict:
    return dataset.target(index) if hasattr(dataset, "target") else dataset[index][1]


def _image_size(dataset, index: int) -> tuple[int, int]:
    if hasattr(dataset, "image_size"):
        return dataset.image_size(index)
    return dataset[index][0].shape[:2]


def coco_ground_truth(dataset, image_indices=None) -> dict:
    """The ground truth of ``dataset`` (those images) as a COCO json dict.

    A dataset with ``coco_annotations(i)`` (``CocoDataset``) gives its own json
    annotations, so crowd regions and segment areas count as in the official evaluation;
    otherwise annotations are built from ``target(i)`` with area = box area.
    """
    indices = _check_indices(dataset, image_indices)
    to_category = _label_to_category(dataset)
    images, annotations = [], []
    for index in indices:
        image_id = dataset.image_id(index)
        height, width = _image_size(dataset, index)
        images.append({"id": image_id, "width": int(width), "height": int(height)})
        if hasattr(dataset, "coco_annotations"):
            for ann in dataset.coco_annotations(index):
                ann = dict(ann, iscrowd=int(ann.get("iscrowd", 0)))
                ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
                ann["id"] = len(annotations) + 1  # fresh ids: COCOeval needs them unique, > 0
                annotations.append(ann)
            continue
        target = _target(dataset, index)
        for box, label in zip(np.asarray(target["boxes"]).tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval reads id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": to_category[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": to_category[k], "name": n} for k, n in enumerate(dataset.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(detections: list[dict], dataset, image_indices=None) -> list[dict]:
    """Detections as a COCO results list: ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}`` per box, labels mapped back to the dataset's category ids.

    Args:
        detections: one dict per image of ``image_indices`` (default: all, in order), with
            ``"boxes" (D, 4)`` x1 y1 x2 y2, ``"scores" (D,)``, ``"labels" (D,)``.
    """
    indices = _check_indices(dataset, image_indices)
    if len(detections) != len(indices):
        raise ValueError(f"{len(detections)} detection dicts for {len(indices)} images")
    to_category = _label_to_category(dataset)
    results = []
    for index, det in zip(indices, detections):
        image_id = dataset.image_id(index)
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(det["labels"]).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image index {index}: boxes, scores, labels differ in length")
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels):
            if int(label) not in to_category:
                raise ValueError(f"image index {index}: label {label} is not a class")
            results.append(
                {
                    "image_id": image_id,
                    "category_id": to_category[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return results


# ------------------------------------------------------------------------- pycocotools


def run_cocoeval(
    detections: list[dict], dataset, image_indices=None, verbose: bool = False
) -> COCOeval:
    """Evaluate with pycocotools and return the ``COCOeval`` after ``summarize()``.

    ``.stats`` holds the 12 numbers of ``COCO_METRIC_NAMES``; ``.eval["precision"]`` is the
    (T, R, K, A, M) precision table behind them. pycocotools' prints are silenced unless
    ``verbose``.
    """
    indices = _check_indices(dataset, image_indices)
    gt = coco_ground_truth(dataset, indices)
    results = detections_to_coco(detections, dataset, indices)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes edits its input
        else:
            # loadRes fails on an empty list; an empty results set scores 0, as it should.
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"]}
            coco_dt.dataset["annotations"] = []
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.imgIds = [img["id"] for img in gt["images"]]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def coco_evaluate(
    detections: list[dict],
    dataset,
    image_indices=None,
    out_dir: str | Path | None = None,
    verbose: bool = False,
) -> dict:
    """COCO box metrics of ``detections`` on ``dataset``, computed by pycocotools.

    Args:
        detections: one dict per image of ``image_indices`` (default: every image, in
            order): ``"boxes" (D, 4)`` x1 y1 x2 y2 in the image's pixels, ``"scores" (D,)``,
            ``"labels" (D,)`` in 0..K-1.
        dataset: ``ShapesDataset``, ``CocoDataset`` or any dataset with their interface.
        out_dir: if given, writes ``detections.json`` (COCO results), ``metrics.json`` and
            ``pr_curves.png`` there.
        verbose: print pycocotools' summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl": float, "AP_per_class": {name: AP}, "AP50_per_class": {name: AP50}}``. As in
        pycocotools, -1 means "no ground truth to measure this on" (e.g. APs without small
        objects, or a class absent from these images).
    """
    coco_eval = run_cocoeval(detections, dataset, image_indices, verbose)
    metrics = {name: float(v) for name, v in zip(COCO_METRIC_NAMES, coco_eval.stats)}
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    names = _class_names_by_category(dataset, coco_eval.params.catIds)
    per_class, per_class50 = {}, {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]  # (T, R): all areas, 100 detections
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
        p50 = p[0]
        per_class50[name] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0
    metrics["AP_per_class"] = per_class
    metrics["AP50_per_class"] = per_class50

    if out_dir is not None:
        from retina_np.viz import plot_pr_curves  # matplotlib only when a picture is asked for

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "detections.json", "w", encoding="utf-8") as f:
            json.dump(detections_to_coco(detections, dataset, image_indices), f)
        with open(out_dir / "metrics.json", "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        plot_pr_curves(precision, names, path=out_dir / "pr_curves.png")
    return metrics


def _class_names_by_category(dataset, category_ids) -> list[str]:
    """Class names in the order of COCOeval's (sorted) category ids."""
    to_label = {c: k for k, c in _label_to_category(dataset).items()}
    return [dataset.class_names[to_label[c]] for c in category_ids]


# ------------------------------------------------------------------------ with a model


def detect_dataset(
    model, dataset, batch_size: int = 8, image_indices=None, progress: bool = True
) -> list[dict]:
    """Run ``model.detect`` over the dataset; one detection dict (numpy) per image.

    Images are normalised (``transforms.normalize``, with a RetinaNet's
    ``config.image_mean`` and ``image_std``) and padded (``pad_batch``) as in training;
    ``model.detect(images (N, 3, Hp, Wp) float32, image_sizes [(H, W)] * N)`` returns boxes
    in each original image's pixels. The model is put in eval mode and, if it was training,
    back in training mode afterwards.
    """
    indices = _check_indices(dataset, image_indices)
    config = getattr(model, "config", RetinaNetConfig())  # a RetinaNet's, else the defaults
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    detections = []
    try:
        starts = range(0, len(indices), batch_size)
        bar = progress_bar(len(starts), 0, progress, desc="evaluate", unit="batch")
        for start in starts:
            chunk = indices[start : start + batch_size]
            images = [dataset[i][0] for i in chunk]  # (H, W, 3) uint8 each
            sizes = [im.shape[:2] for im in images]
            batch = model_batch(images, config)  # (N, 3, Hp, Wp)
            for det in model.detect(batch, sizes):
                detections.append(
                    {
                        "boxes": np.asarray(det["boxes"], dtype=np.float32).reshape(-1, 4),
                        "scores": np.asarray(det["scores"], dtype=np.float32).reshape(-1),
                        "labels": np.asarray(det["labels"], dtype=np.int64).reshape(-1),
                    }
                )
            bar.update(1)
        bar.close()
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    if len(detections) != len(indices):
        raise ValueError(f"model.detect returned {len(detections)} results for {len(indices)}")
    return detections


def evaluate(
    model,
    dataset,
    batch_size: int = 8,
    image_indices=None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Detect on every image (or ``image_indices``) and return ``coco_evaluate``'s metrics."""
    detections = detect_dataset(model, dataset, batch_size, image_indices, progress)
    return coco_evaluate(detections, dataset, image_indices, out_dir)


# ---------------------------------------------------------- average precision, by hand


def match_detections(
    det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Greedy matching of one image's detections of one class to its ground truth, as COCO.

    Detections are visited by descending score (ties in input order); each takes the
    still-unmatched ground-truth box it overlaps most, if that IoU >= ``iou_threshold``
    (on equal IoU the later box, as pycocotools).

    Args:
        det_boxes (D, 4), det_scores (D,), gt_boxes (M, 4): x1 y1 x2 y2.

    Returns:
        matched (D,) int64, in input order: index of the ground-truth box each detection
        matched, or -1 for a false positive.
    """
    order = np.argsort(-np.asarray(det_scores), kind="mergesort")
    # In float64, as pycocotools, so that IoUs right at the threshold fall the same way.
    ious = box_iou(np.asarray(det_boxes, np.float64), np.asarray(gt_boxes, np.float64))  # (D, M)
    taken = np.zeros(ious.shape[1], dtype=bool)  # (M,) ground truth already matched
    matched = np.full(len(order), -1, dtype=np.int64)
    # pycocotools starts from just below 1 so that IoU 1.0 still matches at threshold 1.0.
    start = min(iou_threshold, 1 - 1e-10)
    for d in order:
        best, best_g = start, -1
        for g in range(len(taken)):
            if not taken[g] and ious[d, g] >= best:
                best, best_g = ious[d, g], g
        if best_g >= 0:
            taken[best_g] = True
            matched[d] = best_g
    return matched


def precision_recall(
    scores: np.ndarray, is_tp: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision down the list of detections sorted by descending score.

    Args:
        scores (D,), is_tp (D,) bool: all detections of one class, over all images.
        num_gt: number of ground-truth boxes of that class.

    Returns:
        recall (D,), precision (D,): after the k best detections, TP_k / num_gt and
        TP_k / k. Ties in score keep their input order (stable sort, as pycocotools).
    """
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.cumsum(np.asarray(is_tp, dtype=bool)[order]).astype(np.float64)  # (D,)
    fp = np.arange(1, len(tp) + 1) - tp
    return tp / num_gt, tp / (tp + fp)


def average_precision(
    recall: np.ndarray, precision: np.ndarray, recall_points: int = COCO_RECALL_POINTS
) -> float:
    """COCO's interpolated AP: mean over recall points r of the best precision at recall >= r.

    The envelope ``max(precision[i:])`` makes the curve non-increasing; a recall point
    beyond the highest recall reached counts precision 0.
    """
    envelope = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    points = np.linspace(0.0, 1.0, recall_points)
    # First detection whose recall reaches the point (side="left": recall >= r).
    first = np.searchsorted(recall, points, side="left")
    reached = first < len(envelope)
    q = np.zeros(recall_points)
    q[reached] = envelope[first[reached]]
    return float(q.mean())


def ap_per_class_written_out(
    detections: list[dict],
    dataset,
    image_indices=None,
    iou_threshold: float = 0.5,
    max_dets: int = COCO_MAX_DETS,
) -> dict[int, float]:
    """AP at one IoU threshold for every label that has ground truth: ``{label: AP}``.

    All object sizes, no crowd regions, at most ``max_dets`` detections per image and
    class (the best by score, as pycocotools). Images are pooled in order of image id.
    Boxes must have x2 >= x1 and y2 >= y1, as a detector's do (pycocotools quietly ignores
    unmatched boxes of negative area; this does not).
    """
    indices = _check_indices(dataset, image_indices)
    if len(detections) != len(indices):
        raise ValueError(f"{len(detections)} detection dicts for {len(indices)} images")
    # pycocotools visits images by increasing id; it decides the order of equal scores.
    pairs = sorted(zip(indices, detections), key=lambda p: dataset.image_id(p[0]))
    num_classes = len(dataset.class_names)
    scores = {k: [] for k in range(num_classes)}
    is_tp = {k: [] for k in range(num_classes)}
    num_gt = dict.fromkeys(range(num_classes), 0)
    for index, det in pairs:
        target = _target(dataset, index)
        gt_boxes = np.asarray(target["boxes"]).reshape(-1, 4)
        gt_labels = np.asarray(target["labels"])
        boxes = np.asarray(det["boxes"]).reshape(-1, 4)
        det_scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        det_labels = np.asarray(det["labels"]).reshape(-1)
        for k in range(num_classes):
            num_gt[k] += int((gt_labels == k).sum())
            mine = np.flatnonzero(det_labels == k)
            best = mine[np.argsort(-det_scores[mine], kind="mergesort")][:max_dets]
            matched = match_detections(
                boxes[best], det_scores[best], gt_boxes[gt_labels == k], iou_threshold
            )
            scores[k].append(det_scores[best])
            is_tp[k].append(matched >= 0)
    ap = {}
    for k in range(num_classes):
        if num_gt[k] == 0:
            continue  # pycocotools leaves such a class out of the mean
        recall, precision = precision_recall(
            np.concatenate(scores[k]), np.concatenate(is_tp[k]), num_gt[k]
        )
        ap[k] = average_precision(recall, precision)
    return ap


def ap50_written_out(
    detections: list[dict], dataset, image_indices=None, iou_threshold: float = 0.5
) -> float:
    """Mean AP at IoU 0.5 over the classes with ground truth, written out; equals
    pycocotools' AP50 (-1 when no class has ground truth, as pycocotools)."""
    ap = ap_per_class_written_out(detections, dataset, image_indices, iou_threshold)
    return float(np.mean(list(ap.values()))) if ap else -1.0
