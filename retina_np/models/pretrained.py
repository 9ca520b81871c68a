"""A small trained RetinaNet that ships with the package, so that detection works at once.

``pretrained("shapes")`` returns the shapes model (``RetinaNetConfig.shapes()``) with the
weights of ``weights/shapes.npz``, in eval mode. Those weights were made by one seeded
command, ``python -m retina_np.models.make_pretrained`` (its recipe is there); its training
log and COCO metrics lie beside the weights (``weights/shapes_log.jsonl``,
``weights/shapes_metrics.json``).

The held-out images are ``ShapesDataset(n, seed=HELD_OUT_SEED)``: image ``i`` depends only on
the seed and ``i``, so its first 100 images are the first 100 of the 500 that the metrics
were measured on, and none of them was trained on (the training images have seed
``TRAIN_SEED``).
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# name -> weights file in WEIGHTS_DIR (a retina_np checkpoint: config, weights, no optimizer)
PRETRAINED_FILES = {"shapes": "shapes.npz"}
TRAIN_SEED = 0  # ShapesDataset(2000, seed=0): the images the shapes model was trained on
HELD_OUT_SEED = 10_000  # ShapesDataset(n, seed=10_000): images it never saw (as the demo's)


def pretrained_path(name: str = "shapes") -> Path:
    """The weights file of the pretrained model ``name``."""
    if name not in PRETRAINED_FILES:
        raise ValueError(f"no pretrained model {name!r}; there is {sorted(PRETRAINED_FILES)}")
    path = WEIGHTS_DIR / PRETRAINED_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; make it with `python -m retina_np.models.make_pretrained`"
        )
    return path


def pretrained(name: str = "shapes"):
    """A trained RetinaNet with its config and weights, in eval mode.

    >>> model = pretrained("shapes")          # RetinaNetConfig.shapes(), 3 classes
    >>> detections = model.detect(images)     # images (N, 3, H, W), normalised
    """
    from retina_np.checkpoint import load_model

    model, _ = load_model(pretrained_path(name))
    return model.eval()
