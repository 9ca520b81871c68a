import numpy as np
import pytest

from retina_np.data import DataLoader, ShapesDataset, hflip, normalize


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(11, image_size=(40, 50), seed=1, max_size=30)


def assert_batches_equal(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.image_sizes == b.image_sizes
    for ta, tb in zip(a.targets, b.targets):
        np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
        np.testing.assert_array_equal(ta["labels"], tb["labels"])


def test_batches_are_normalised_with_the_given_statistics(dataset):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    default = DataLoader(dataset, batch_size=2, flip=False, shuffle=False).batch(0, 0)
    other = DataLoader(dataset, batch_size=2, flip=False, shuffle=False, image_mean=mean,
                       image_std=std).batch(0, 0)
    image = dataset[int(other.indices[0])][0]
    h, w = image.shape[:2]
    np.testing.assert_array_equal(other.images[0, :, :h, :w], normalize(image, mean, std))
    np.testing.assert_array_equal(default.images[0, :, :h, :w], normalize(image))


def test_batch_contents(dataset):
    loader = DataLoader(dataset, batch_size=4, seed=0)
    assert len(loader) == 3
    images, targets, sizes, indices = loader.batch(0, 0)
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.float32
    assert sizes == [(40, 50)] * 4 and len(targets) == 4 and indices.dtype == np.int64
    last = loader.batch(0, 2)
    assert last.images.shape[0] == 3  # 11 = 4 + 4 + 3
    assert len(DataLoader(dataset, batch_size=4, drop_last=True)) == 2


def test_each_image_once_per_epoch_and_epochs_differ(dataset):
    loader = DataLoader(dataset, batch_size=3, seed=0)
    orders = []
    for e in range(2):
        seen = np.concatenate([b.indices for b in loader.epoch(e)])
        assert sorted(seen.tolist()) == list(range(len(dataset)))
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])
    unshuffled = DataLoader(dataset, batch_size=3, shuffle=False)
    np.testing.assert_array_equal(
        np.concatenate([b.indices for b in unshuffled.epoch(4)]), np.arange(len(dataset))
    )


def test_deterministic_and_resumable(dataset):
    a = DataLoader(dataset, batch_size=4, seed=7)
    b = DataLoader(dataset, batch_size=4, seed=7, cache=True)
    for e in [0, 3]:
        batches = list(a.epoch(e))
        assert len(batches) == len(a)
        for i, batch in enumerate(batches):
            assert_batches_equal(batch, b.batch(e, i))  # batch(e, i) is iteration's i-th
        assert_batches_equal(next(b.epoch(e, start=2)), batches[2])  # resume mid-epoch
    other = DataLoader(dataset, batch_size=4, seed=8)
    assert not np.array_equal(other.batch(0, 0).indices, a.batch(0, 0).indices)


def test_flipped_images_and_boxes_agree(dataset):
    loader = DataLoader(dataset, batch_size=11, seed=2, flip=True)
    order, flips = loader.epoch_plan(0)
    assert 0 < flips.sum() < len(flips)  # some of each
    batch = loader.batch(0, 0)
    for k, (index, flipped) in enumerate(zip(order, flips)):
        image, target = dataset[index]
        boxes = target["boxes"]
        if flipped:
            image, boxes = hflip(image, boxes)
        np.testing.assert_array_equal(batch.images[k, :, :40, :50], normalize(image))
        np.testing.assert_array_equal(batch.targets[k]["boxes"], boxes)
        np.testing.assert_array_equal(batch.targets[k]["labels"], target["labels"])
    no_flip = DataLoader(dataset, batch_size=11, seed=2, flip=False)
    assert not no_flip.epoch_plan(0)[1].any()


def test_cache_is_not_modified_by_callers(dataset):
    loader = DataLoader(dataset, batch_size=2, shuffle=False, flip=False, cache=True)
    first = loader.batch(0, 0)
    first.targets[0]["boxes"][:] = -1
    np.testing.assert_array_equal(loader.batch(0, 0).targets[0]["boxes"], dataset[0][1]["boxes"])
    with pytest.raises(IndexError):
        loader.batch(0, len(loader))
