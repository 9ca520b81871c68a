"""COCO-format datasets: read any image folder + annotations json, and write one.

The COCO json format (https://cocodataset.org/#format-data), the parts used here::

    {"images":      [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                      "area", "iscrowd"}, ...],
     "categories":  [{"id", "name"}, ...]}

COCO category ids are arbitrary integers (COCO itself skips some: 1..90 for 80 classes);
the model wants labels 0..K-1. ``CocoDataset`` maps sorted category ids to contiguous labels
and back. Bad input fails early with one ``DatasetError`` naming the file and the index:
annotations are checked when the dataset is built (cheap), images when they are loaded.

Real annotation files hold a few boxes that no detector can learn from: COCO's own
``instances_train2017.json`` has two boxes of height 0 (annotation ids 918 and 2206849), and
labelling tools export boxes reaching past the image. As torchvision's reference loader and
detectron2 do, such boxes are clipped to the image and dropped when nothing is left of them,
with one ``DatasetWarning`` that counts them; ``strict=True`` refuses the file instead.
Non-finite numbers and unknown ids are errors either way.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

# COCO's own boxes overhang the image border by a fraction of a pixel in places (rounding
# in the original tools); boxes within this margin are accepted (even when strict) and
# clipped to the image without a word.
_BORDER_TOLERANCE = 1.0
# How many annotation ids the warning about dropped or clipped boxes names.
_IDS_SHOWN = 5


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message says where."""


class DatasetWarning(UserWarning):
    """Some annotations were repaired (clipped) or left out (degenerate); the message counts."""


class CocoDataset:
    """A COCO-format dataset: an image folder and an annotations json.

    Args:
        images_dir: folder holding the images; ``file_name`` in the json is relative to it.
        annotations_json: the COCO annotations file.
        strict: refuse a box of zero (or negative) width or height, or one lying more than
            a pixel outside its image, instead of dropping or clipping it with a warning.

    ``dataset[i]`` returns ``(image, target)``: image ``(H, W, 3)`` uint8 RGB, target
    ``{"boxes": (M, 4) float32 x1 y1 x2 y2, "labels": (M,) int64 in 0..K-1}``. Crowd
    annotations are left out of the targets (kept for evaluation, see
    ``coco_annotations``); an image without annotations has ``boxes`` of shape (0, 4).

    Raises:
        DatasetError: malformed json, an unknown category or image id, a box that is not 4
            finite numbers, with ``strict`` a degenerate or out-of-image box (here); a
            missing or corrupt image file (when loaded).

    Warns:
        DatasetWarning: once, when boxes were dropped or clipped (not ``strict``): how many,
            and the first few annotation ids.
    """

    def __init__(
        self, images_dir: str | Path, annotations_json: str | Path, strict: bool = False
    ):
        self.images_dir = Path(images_dir)
        self.annotations_json = Path(annotations_json)
        data = _read_json(self.annotations_json)
        where = str(self.annotations_json)

        categories = _list_field(data, "categories", where)
        category_ids, names = [], {}
        for index, cat in enumerate(categories):
            cid = _int_field(cat, "id", f"{where}: categories[{index}]")
            if cid in names:
                raise DatasetError(f"{where}: categories[{index}]: duplicate category id {cid}")
            names[cid] = str(cat.get("name", cid))
            category_ids.append(cid)
        category_ids.sort()
        self.label_to_category_id = {label: cid for label, cid in enumerate(category_ids)}
        self.category_id_to_label = {cid: label for label, cid in enumerate(category_ids)}
        self.class_names = tuple(names[cid] for cid in category_ids)

        self._images = []  # one dict per image: id, file_name, height, width
        position = {}  # COCO image id -> dataset index
        for index, img in enumerate(_list_field(data, "images", where)):
            at = f"{where}: images[{index}]"
            image_id = _int_field(img, "id", at)
            if image_id in position:
                raise DatasetError(f"{at}: duplicate image id {image_id}")
            file_name = img.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise DatasetError(f"{at}: missing or empty 'file_name'")
            height, width = _int_field(img, "height", at), _int_field(img, "width", at)
            if height <= 0 or width <= 0:
                raise DatasetError(f"{at}: image size {width}x{height} is not positive")
            position[image_id] = index
            self._images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )

        self._annotations = [[] for _ in self._images]  # per image, valid json annotations
        dropped, clipped = [], []  # annotation ids left out / repaired (not strict)
        # A json without "annotations" (a test split) is fine: every image has no boxes.
        annotations = _list_field(data, "annotations", where) if "annotations" in data else []
        for index, ann in enumerate(annotations):
            at = f"{where}: annotations[{index}] (id {ann.get('id')})"
            image_id = _int_field(ann, "image_id", at)
            if image_id not in position:
                raise DatasetError(f"{at}: image_id {image_id} is not in 'images'")
            category_id = _int_field(ann, "category_id", at)
            if category_id not in self.category_id_to_label:
                raise DatasetError(
                    f"{at}: unknown category_id {category_id} (known: {category_ids})"
                )
            info = self._images[position[image_id]]
            bbox = _finite_bbox(ann.get("bbox"), at)
            if strict:
                _check_bbox(bbox, info["width"], info["height"], at)
            else:
                inside = _clip_bbox(bbox, info["width"], info["height"])
                if inside is None:
                    dropped.append(ann.get("id", f"at index {index}"))
                    continue
                if not _within_tolerance(bbox, info["width"], info["height"]):
                    ann = {**ann, "bbox": inside}  # the json's own dict stays as it was
                    clipped.append(ann.get("id", f"at index {index}"))
            self._annotations[position[image_id]].append(ann)
        if dropped or clipped:
            warnings.warn(_repair_message(where, dropped, clipped), DatasetWarning, stacklevel=2)

    # ------------------------------------------------------------------ interface

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def _check_index(self, index: int) -> int:
        n = len(self._images)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return int(index) % n

    def image_id(self, index: int) -> int:
        """COCO image id of image ``index``."""
        return self._images[self._check_index(index)]["id"]

    def image_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of image ``index`` as the json gives it, without decoding it."""
        info = self._images[self._check_index(index)]
        return info["height"], info["width"]

    def file_path(self, index: int) -> Path:
        """Path of the image file of image ``index``."""
        return self.images_dir / self._images[self._check_index(index)]["file_name"]

    def coco_annotations(self, index: int) -> list[dict]:
        """The json annotations of image ``index``, crowd regions included (for evaluation)."""
        return list(self._annotations[self._check_index(index)])

    def target(self, index: int) -> dict:
        """``{"boxes": (M, 4) float32, "labels": (M,) int64}`` of image ``index``, no crowd."""
        index = self._check_index(index)
        info = self._images[index]
        anns = [a for a in self._annotations[index] if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> (x1, y1, x2, y2)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, info["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, info["height"])
        labels = [self.category_id_to_label[a["category_id"]] for a in anns]
        return {
            "boxes": boxes.astype(np.float32),  # (M, 4)
            "labels": np.array(labels, dtype=np.int64),  # (M,)
        }

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` as (H, W, 3) uint8 RGB."""
        index = self._check_index(index)
        info = self._images[index]
        path = self.images_dir / info["file_name"]
        at = f"{path} (dataset index {index}, image id {info['id']})"
        if not path.is_file():
            raise DatasetError(f"{at}: image file not found")
        try:
            with Image.open(path) as img:
                img.load()  # decode now, so a truncated file fails here
                image = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL reports bad files as these
            raise DatasetError(f"{at}: cannot decode image: {exc}") from exc
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"{at}: image is {image.shape[1]}x{image.shape[0]} but the json says "
                f"{info['width']}x{info['height']}"
            )
        return image

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        return self.load_image(index), self.target(index)

    def __repr__(self) -> str:
        return (
            f"CocoDataset({str(self.images_dir)!r}, {str(self.annotations_json)!r}: "
            f"{len(self)} images, {self.num_classes} classes)"
        )


# ---------------------------------------------------------------------- validation


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: annotations file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    return data


def _list_field(data: dict, key: str, where: str) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise DatasetError(f"{where}: '{key}' must be a list, got {type(value).__name__}")
    if not all(isinstance(item, dict) for item in value):
        bad = next(i for i, item in enumerate(value) if not isinstance(item, dict))
        raise DatasetError(f"{where}: {key}[{bad}] must be an object")
    return value


def _int_field(obj: dict, key: str, where: str) -> int:
    value = obj.get(key)
    # bool is an int in Python, but never a valid id or size.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DatasetError(f"{where}: '{key}' must be an integer, got {value!r}")
    return int(value)


def _finite_bbox(bbox, where: str) -> list:
    """``bbox`` as a list of 4 numbers; DatasetError unless it is 4 finite numbers."""
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        or not all(math.isfinite(v) for v in bbox)
    ):
        raise DatasetError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    return list(bbox)


def _within_tolerance(bbox: list, width: int, height: int) -> bool:
    """Whether [x, y, w, h] reaches at most _BORDER_TOLERANCE past the image border."""
    x, y, w, h = bbox
    tol = _BORDER_TOLERANCE
    return x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol


def _check_bbox(bbox: list, width: int, height: int, where: str) -> None:
    """Raise DatasetError unless [x, y, w, h] has w, h > 0 and lies in the image (strict)."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: degenerate bbox {bbox} (width and height must be > 0)")
    if not _within_tolerance(bbox, width, height):
        raise DatasetError(f"{where}: bbox {bbox} lies outside the {width}x{height} image")


def _clip_bbox(bbox: list, width: int, height: int) -> list | None:
    """[x, y, w, h] clipped to the image, or None when no area is left (degenerate)."""
    x, y, w, h = bbox
    x1, y1 = min(max(x, 0), width), min(max(y, 0), height)
    x2, y2 = min(max(x + w, 0), width), min(max(y + h, 0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def _repair_message(where: str, dropped: list, clipped: list) -> str:
    """The one warning line: what was dropped and clipped, and the first ids of each."""

    def ids(found):
        shown = ", ".join(str(i) for i in found[:_IDS_SHOWN])
        return shown + (f" and {len(found) - _IDS_SHOWN} more" if len(found) > _IDS_SHOWN else "")

    parts = []
    if dropped:
        parts.append(
            f"dropped {len(dropped)} box(es) of zero width or height or outside their image "
            f"(annotation ids {ids(dropped)})"
        )
    if clipped:
        parts.append(
            f"clipped {len(clipped)} box(es) reaching more than {_BORDER_TOLERANCE:g} px past "
            f"their image (annotation ids {ids(clipped)})"
        )
    return f"{where}: {' and '.join(parts)}; strict=True (--strict-data) refuses such files"


# -------------------------------------------------------------------------- export


def export_coco(dataset, out_dir: str | Path, progress: bool = True) -> Path:
    """Write ``dataset`` as COCO: ``out_dir/images/*.png`` and ``out_dir/annotations.json``.

    Works for any dataset with ``len``, ``dataset[i] -> (image, target)``, ``class_names``
    and ``image_id(i)``; category ids come from ``dataset.label_to_category_id`` when it
    has one, else label + 1. PNG is lossless and boxes are written as exact floats, so
    ``CocoDataset(out_dir / "images", out_dir / "annotations.json")`` gives the same images
    and boxes back.

    Returns:
        the path of the annotations json.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    to_category = getattr(dataset, "label_to_category_id", None) or {
        k: k + 1 for k in range(len(dataset.class_names))
    }
    images, annotations = [], []
    for index in tqdm(range(len(dataset)), desc="export", disable=not progress):
        image, target = dataset[index]
        image_id = dataset.image_id(index)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(images_dir / file_name)
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO ids start at 1 (0 means "no match")
                    "image_id": image_id,
                    "category_id": to_category[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": to_category[k], "name": name} for k, name in enumerate(dataset.class_names)
    ]
    path = out_dir / "annotations.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path
