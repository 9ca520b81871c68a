"""Datasets (synthetic shapes, COCO json), transforms and a deterministic batch loader.

Every dataset has the same interface: ``len(ds)``, ``ds[i] -> (image, target)`` with image
``(H, W, 3)`` uint8 RGB and target ``{"boxes": (M, 4) float32, "labels": (M,) int64}``,
``ds.class_names``, ``ds.image_id(i)`` (its COCO id), ``ds.image_size(i) -> (H, W)``,
``ds.target(i)`` and the label <-> COCO category id maps ``ds.label_to_category_id`` and
``ds.category_id_to_label``.
"""

from retina_np.data.coco import CocoDataset, DatasetError, DatasetWarning, export_coco
from retina_np.data.loader import Batch, DataLoader
from retina_np.data.shapes import ShapesDataset
from retina_np.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    hflip,
    model_batch,
    normalize,
    pad_batch,
)

__all__ = [
    "Batch",
    "CocoDataset",
    "DataLoader",
    "DatasetError",
    "DatasetWarning",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ShapesDataset",
    "denormalize",
    "export_coco",
    "hflip",
    "model_batch",
    "normalize",
    "pad_batch",
]
