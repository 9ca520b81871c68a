"""Deterministic, resumable mini-batches.

Every random decision of an epoch (the order of the images, which ones are flipped) is
drawn up front from a generator seeded by ``(seed, epoch)``. Batch ``i`` of epoch ``e`` is
therefore a pure function of ``(seed, e, i)``: a run stopped anywhere resumes with exactly
the batches it would have seen (``loader.batch(e, i)``), with no generator state to save.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from retina_np.data.transforms import IMAGENET_MEAN, IMAGENET_STD, hflip, normalize, pad_batch


class Batch(NamedTuple):
    """One mini-batch; unpacks as ``images, targets, image_sizes, indices``."""

    images: np.ndarray  # (N, 3, Hp, Wp) float32, normalised and zero-padded
    targets: list[dict]  # N x {"boxes": (M, 4) float32, "labels": (M,) int64}, flipped too
    image_sizes: list[tuple[int, int]]  # N x (H, W) before padding
    indices: np.ndarray  # (N,) int64 dataset indices


class DataLoader:
    """Batches of a dataset, shuffled and flipped reproducibly per epoch.

    Args:
        dataset: ``len(dataset)`` and ``dataset[i] -> (uint8 (H, W, 3), target)``.
        batch_size: images per batch.
        shuffle: visit images in a fresh random order every epoch (else in index order).
        flip: mirror each image left-right with probability 1/2 (else never).
        seed: the loader's seed; epoch ``e`` draws from ``default_rng([seed, e])``.
        drop_last: skip the last batch of an epoch when it is smaller than ``batch_size``.
        cache: keep decoded images in memory after their first load (small datasets).
        size_divisible: padded height and width are multiples of this (see ``pad_batch``).
        image_mean, image_std: the statistics ``normalize`` uses (a model's
            ``config.image_mean`` and ``config.image_std``; ImageNet's by default).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool = True,
        flip: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        cache: bool = False,
        size_divisible: int = 32,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.flip = flip
        self.seed = int(seed)
        self.drop_last = drop_last
        self.cache = cache
        self.size_divisible = size_divisible
        self.image_mean, self.image_std = image_mean, image_std
        self._cache: dict[int, tuple[np.ndarray, dict]] = {}
        self._plan_epoch, self._plan = None, None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order, flips)`` of an epoch: (n,) dataset indices in visiting order and (n,)
        bools, ``flips[p]`` saying whether the image at position p is mirrored."""
        if self._plan_epoch != epoch:
            n = len(self.dataset)
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
            self._plan_epoch, self._plan = epoch, (order.astype(np.int64), flips)
        return self._plan

    def batch(self, epoch: int, i: int, rank: int = 0, ranks: int = 1) -> Batch:
        """Batch ``i`` of epoch ``epoch``: the same as the i-th that ``epoch(epoch)`` yields.

        rank, ranks: only the rank-th of ``ranks`` equal shares of the batch (data-parallel
        training, ``retina_np/distributed.py``): images ``rank * n / ranks`` to
        ``(rank + 1) * n / ranks`` of its ``n``, padded to their own largest size.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for {len(self)} batches per epoch")
        order, flips = self.epoch_plan(epoch)
        first, n = i * self.batch_size, min(self.batch_size, len(order) - i * self.batch_size)
        if n % ranks:
            raise ValueError(f"batch {i} of {n} images does not split evenly over {ranks} ranks")
        positions = slice(first + rank * n // ranks, first + (rank + 1) * n // ranks)
        images, targets, sizes = [], [], []
        for index, flipped in zip(order[positions], flips[positions]):
            image, target = self._load(int(index))
            # Copies, so a caller editing a batch never edits the cache.
            boxes = np.array(target["boxes"], dtype=np.float32).reshape(-1, 4)
            if flipped:
                image, boxes = hflip(image, boxes, copy=False)  # normalize makes the copy
            images.append(normalize(image, self.image_mean, self.image_std))  # (3, H, W)
            targets.append({"boxes": boxes, "labels": np.array(target["labels"], np.int64)})
            sizes.append((image.shape[0], image.shape[1]))
        return Batch(
            images=pad_batch(images, self.size_divisible),  # (N, 3, Hp, Wp)
            targets=targets,
            image_sizes=sizes,
            indices=order[positions].copy(),
        )

    def epoch(self, epoch: int, start: int = 0):
        """Yield the batches of epoch ``epoch`` in order, from batch ``start`` (to resume)."""
        for i in range(start, len(self)):
            yield self.batch(epoch, i)

    def _load(self, index: int) -> tuple[np.ndarray, dict]:
        if not self.cache:
            return self.dataset[index]
        if index not in self._cache:
            self._cache[index] = self.dataset[index]
        return self._cache[index]
