"""Image transforms: normalise, flip, pad into a batch.

The model sees images as torchvision's detectors do: RGB scaled to [0, 1], minus the
ImageNet mean, over the ImageNet standard deviation (the statistics pretrained backbones
were trained with), channels first, zero-padded at the bottom and right so that every
image of a batch has the same size, divisible by the largest stride of the network.
"""

from __future__ import annotations

import functools

import numpy as np

# torchvision's ImageNet statistics, per RGB channel, for images in [0, 1].
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W), ``(image / 255 - mean) / std``.

    mean, std: per RGB channel, for pixels in [0, 1] (a model's ``config.image_mean`` and
    ``config.image_std``; ImageNet's by default). A uint8 image takes each channel's 256
    results from a table made by that formula (the same numbers, 3x faster: the training
    loop draws its next batch beside the step, on the same cores)."""
    if image.dtype == np.uint8 and image.ndim == 3:
        table = _normalize_table(tuple(map(float, np.ravel(mean))),
                                 tuple(map(float, np.ravel(std))))  # (3, 256)
        out = np.empty((image.shape[2],) + image.shape[:2], np.float32)
        for c in range(image.shape[2]):
            np.take(table[c], image[:, :, c], out=out[c])
        return out
    x = image.astype(np.float32) / 255.0  # (H, W, 3)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple, std: tuple) -> np.ndarray:
    """``normalize``'s formula for the 256 values of a uint8 pixel, per channel: (C, 256)."""
    values = np.repeat(np.arange(256, dtype=np.float32).reshape(256, 1, 1), len(mean), axis=2)
    return normalize(values, mean, std)[:, :, 0]  # (256, 1, C) float -> (C, 256)


def denormalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """float (3, H, W) normalised -> uint8 (H, W, 3) RGB; undoes ``normalize`` (with the same
    mean and std) up to rounding."""
    x = image.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)  # (H, W, 3)


def hflip(image: np.ndarray, boxes: np.ndarray, copy: bool = True
          ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, C) image left-right and its (M, 4) boxes with it.

    A pixel column j goes to W - 1 - j, i.e. the interval [j, j+1) goes to [W-j-1, W-j),
    so box edges map as ``x1' = W - x2``, ``x2' = W - x1`` (y unchanged). copy=False gives
    the image as a mirrored view (the loader's, which ``normalize`` reads straight away).
    """
    width = image.shape[1]
    flipped = np.ascontiguousarray(image[:, ::-1]) if copy else image[:, ::-1]
    boxes = np.asarray(boxes)
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return flipped, out


def pad_batch(images: list[np.ndarray], size_divisible: int = 32) -> np.ndarray:
    """Stack (C, H_i, W_i) images into (N, C, Hp, Wp), zero-padded at the bottom and right.

    Hp, Wp are the largest H_i, W_i rounded up to a multiple of ``size_divisible`` (as
    torchvision's ``GeneralizedRCNNTransform.batch_images``), so every FPN level has a
    whole number of cells. Zero is the mean colour after ``normalize``. The dtype is the
    images' (float32 from ``normalize``).
    """
    if len(images) == 0:
        raise ValueError("pad_batch needs at least one image")
    channels = images[0].shape[0]
    if any(im.ndim != 3 or im.shape[0] != channels for im in images):
        raise ValueError(
            f"pad_batch wants (C, H, W) images with one C, got {[im.shape for im in images]}"
        )
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    height = -(-height // size_divisible) * size_divisible  # round up
    width = -(-width // size_divisible) * size_divisible
    dtype = np.result_type(*images)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.float32
    batch = np.zeros((len(images), channels, height, width), dtype=dtype)  # (N, C, Hp, Wp)
    for n, im in enumerate(images):
        batch[n, :, : im.shape[1], : im.shape[2]] = im
    return batch


def model_batch(images: list[np.ndarray], config) -> np.ndarray:
    """uint8 (H_i, W_i, 3) RGB images -> the (N, 3, Hp, Wp) float32 batch that a model with
    ``config`` (a RetinaNetConfig) takes: each normalised with its ``image_mean`` and
    ``image_std``, then padded to a multiple of its ``size_divisible`` (``pad_batch``)."""
    return pad_batch([normalize(im, config.image_mean, config.image_std) for im in images],
                     config.size_divisible)
