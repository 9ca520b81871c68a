"""A synthetic detection dataset: squares, circles and triangles on a plain background.

Small enough to train a RetinaNet on a laptop CPU, yet a real detection problem: several
objects per image, three classes, sizes from small to large, partial overlaps.

Every image is drawn from its own random generator seeded by ``(seed, index)``, so any
index can be produced alone, in any order, on any machine, and always gives the same
pixels. Shapes are rasterised without antialiasing: pixel ``(i, j)`` covers the square
``[j, j+1) x [i, i+1)`` and belongs to a shape when its centre ``(j + 0.5, i + 0.5)``
lies inside. A box is then exactly the bounds of the shape's pixels::

    x1 = min column,  x2 = max column + 1,  y1 = min row,  y2 = max row + 1

A later shape may cover part of an earlier one, but never a pixel that fixes the earlier
one's box, and boxes overlap by at most ``max_overlap`` IoU; so every box is tight around
the pixels you see.
"""

from __future__ import annotations

import numpy as np

from retina_np.detection.boxes import box_iou

CLASS_NAMES = ("square", "circle", "triangle")
SQUARE, CIRCLE, TRIANGLE = 0, 1, 2

# Attempts to place one shape before giving up on it (the image then has fewer shapes).
_PLACEMENT_TRIES = 50
# Attempts to find a colour far enough from the background and the other shapes.
_COLOR_TRIES = 100


class ShapesDataset:
    """Deterministic synthetic images with their boxes and labels.

    Args:
        num_images: number of images, ``len(dataset)``.
        image_size: side of the square images, or ``(H, W)``.
        seed: dataset seed; image ``i`` depends only on ``(seed, i)``.
        min_shapes, max_shapes: number of shapes per image, drawn uniformly (a shape that
            cannot be placed within the overlap rules after a few tries is left out).
        min_size, max_size: extent of a shape in pixels (side, diameter, triangle width).
        max_overlap: largest IoU allowed between the boxes of two shapes of one image.
        min_color_distance: smallest RGB distance between a shape's colour and the
            background's (and, when possible, the other shapes' colours).

    ``dataset[i]`` returns ``(image, target)``: image ``(H, W, 3)`` uint8 RGB, target
    ``{"boxes": (M, 4) float32 x1 y1 x2 y2, "labels": (M,) int64 in 0..2}``.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        num_images: int,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        min_shapes: int = 1,
        max_shapes: int = 4,
        min_size: int = 12,
        max_size: int = 64,
        max_overlap: float = 0.3,
        min_color_distance: float = 100.0,
    ):
        height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not 1 <= min_shapes <= max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        if not 2 <= min_size <= max_size <= min(height, width):
            raise ValueError(
                f"need 2 <= min_size <= max_size <= image side, got {min_size}, {max_size} "
                f"for a {height}x{width} image"
            )
        if not 0.0 <= max_overlap <= 1.0:
            raise ValueError(f"max_overlap must lie in [0, 1], got {max_overlap}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_images = int(num_images)
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.max_overlap = float(max_overlap)
        self.min_color_distance = float(min_color_distance)
        # COCO category ids are 1-based; label k is category k + 1 (export_coco, evaluate).
        self.label_to_category_id = {k: k + 1 for k in range(len(CLASS_NAMES))}
        self.category_id_to_label = {c: k for k, c in self.label_to_category_id.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_images

    def _check_index(self, index: int) -> int:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return int(index) % self.num_images

    def image_id(self, index: int) -> int:
        """COCO image id of image ``index`` (the index itself)."""
        return self._check_index(index)

    def image_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of image ``index``, without drawing it."""
        self._check_index(index)
        return self.height, self.width

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, index])
        return render_shapes(
            rng,
            self.height,
            self.width,
            num_shapes=int(rng.integers(self.min_shapes, self.max_shapes + 1)),
            min_size=self.min_size,
            max_size=self.max_size,
            max_overlap=self.max_overlap,
            min_color_distance=self.min_color_distance,
        )

    def target(self, index: int) -> dict:
        """The target of image ``index`` (draws the image: boxes come from its pixels)."""
        return self[index][1]

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(num_images={self.num_images}, image_size=({self.height}, "
            f"{self.width}), seed={self.seed})"
        )


# ---------------------------------------------------------------------------- drawing


def render_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_shapes: int,
    min_size: int,
    max_size: int,
    max_overlap: float,
    min_color_distance: float,
) -> tuple[np.ndarray, dict]:
    """Draw up to ``num_shapes`` shapes on a random background.

    Returns:
        image (uint8[H, W, 3]), target ``{"boxes": float32[M, 4], "labels": int64[M]}``
        with M <= num_shapes, boxes tight around each shape's visible pixels.
    """
    background = rng.integers(0, 256, size=3)
    masks, boxes, labels, colors = [], [], [], []
    for _ in range(num_shapes):
        for _ in range(_PLACEMENT_TRIES):
            label = int(rng.integers(0, len(CLASS_NAMES)))
            mask = _random_shape_mask(rng, label, height, width, min_size, max_size)
            box = mask_box(mask)
            if _placement_ok(mask, box, masks, boxes, max_overlap):
                break
        else:
            continue  # no room for this one; the image keeps fewer shapes
        masks.append(mask)
        boxes.append(box)
        labels.append(label)
        colors.append(_distinct_color(rng, background, colors, min_color_distance))

    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background
    for mask, color in zip(masks, colors):  # later shapes are painted on top
        image[mask] = color
    target = {
        "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),  # (M, 4)
        "labels": np.array(labels, dtype=np.int64),  # (M,)
    }
    return image, target


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box ``[x1, y1, x2, y2]`` (float64) of the True pixels of ``mask`` (H, W)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: ys (H, 1), xs (1, W)."""
    ys = (np.arange(height, dtype=np.float64) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float64) + 0.5)[None, :]
    return ys, xs


def _random_shape_mask(
    rng: np.random.Generator, label: int, height: int, width: int, min_size: int, max_size: int
) -> np.ndarray:
    """Boolean (H, W) mask of one random shape of class ``label`` inside the image."""
    size = int(rng.integers(min_size, max_size + 1))
    if label == TRIANGLE:
        # Triangles get their own aspect ratio, so anchors of several ratios get used.
        w = size
        h = int(np.clip(round(size * rng.uniform(0.7, 1.3)), min_size, min(max_size, height)))
    else:
        w = h = size
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    ys, xs = _pixel_centres(height, width)
    if label == SQUARE:
        mask = np.zeros((height, width), dtype=bool)
        mask[y0 : y0 + h, x0 : x0 + w] = True
    elif label == CIRCLE:
        r = size / 2.0
        mask = (xs - (x0 + r)) ** 2 + (ys - (y0 + r)) ** 2 <= r * r
    else:
        mask = _triangle_mask(ys, xs, _random_triangle(rng, x0, y0, w, h))
    return mask


def _random_triangle(rng: np.random.Generator, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """(3, 2) vertices: a base along one side of the w x h box, the apex on the opposite side."""
    t = rng.uniform(0.0, 1.0)  # where the apex sits along its side
    x1, y1 = x0 + w, y0 + h
    side = int(rng.integers(0, 4))
    if side == 0:  # base at the bottom, apex on top
        return np.array([[x0, y1], [x1, y1], [x0 + t * w, y0]], dtype=np.float64)
    if side == 1:  # base on top
        return np.array([[x0, y0], [x1, y0], [x0 + t * w, y1]], dtype=np.float64)
    if side == 2:  # base on the left
        return np.array([[x0, y0], [x0, y1], [x1, y0 + t * h]], dtype=np.float64)
    return np.array([[x1, y0], [x1, y1], [x0, y0 + t * h]], dtype=np.float64)


def _triangle_mask(ys: np.ndarray, xs: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Pixels whose centre lies inside (or on an edge of) the triangle ``vertices`` (3, 2)."""

    def edge(a, b):  # > 0 on one side of the line a -> b, < 0 on the other
        return (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])

    v0, v1, v2 = vertices
    e0, e1, e2 = edge(v0, v1), edge(v1, v2), edge(v2, v0)
    # Inside means on the same side of all three edges, whichever way the vertices wind.
    return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


def _placement_ok(mask, box, masks, boxes, max_overlap) -> bool:
    """Can ``mask`` be painted on top of the shapes already placed?

    Yes when its box overlaps every earlier box by at most ``max_overlap`` IoU and every
    earlier shape keeps the pixels that define its box (so its box stays tight).
    """
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return False
    if not masks:
        return True
    if box_iou(box[None], np.array(boxes)).max() > max_overlap:
        return False
    covered = mask.copy()
    for k in range(len(masks) - 1, -1, -1):  # walk down from the top layer
        if not np.array_equal(mask_box(masks[k] & ~covered), boxes[k]):
            return False
        covered |= masks[k]
    return True


def _distinct_color(rng, background, colors, min_distance) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` from the background.

    It also keeps that distance from the other shapes' colours when it can, so touching
    shapes do not merge into one blob.
    """
    fallback = None
    for _ in range(_COLOR_TRIES):
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - background) < min_distance:
            continue
        if fallback is None:
            fallback = color
        if all(np.linalg.norm(color - c) >= min_distance for c in colors):
            return color
    if fallback is not None:
        return fallback
    # Far corner of the RGB cube: always at least 221 away from the background.
    return np.where(background < 128, 255, 0)
