"""Layer behaviour that the op tests do not reach: frozen batch norm in training mode."""

import numpy as np

from retina_np.nn import BatchNorm2d


def test_frozen_batch_norm_keeps_its_running_statistics_in_training_mode(rng):
    """torchvision's FrozenBatchNorm2d: training mode still normalises with the running
    statistics and never updates them; the affine weight and bias still learn."""
    frozen, live = BatchNorm2d(3, frozen=True), BatchNorm2d(3)
    mean = np.array([0.5, -1.0, 2.0], np.float32)
    var = np.array([4.0, 0.25, 1.0], np.float32)
    for bn in (frozen, live):
        bn.load_state_dict({"weight": np.array([1.0, 2.0, 0.5], np.float32),
                            "bias": np.array([0.0, 0.1, -0.2], np.float32),
                            "running_mean": mean.copy(), "running_var": var.copy()})
        bn.train()
    x = rng.normal(3.0, 2.0, (4, 3, 5, 5)).astype(np.float32)  # far from the running stats
    y = frozen(x)
    np.testing.assert_array_equal(frozen.state_dict()["running_mean"], mean)
    np.testing.assert_array_equal(frozen.state_dict()["running_var"], var)
    scale = (np.array([1.0, 2.0, 0.5]) / np.sqrt(var + 1e-5))[None, :, None, None]
    expect = (x - mean[None, :, None, None]) * scale + np.array([0.0, 0.1, -0.2])[None, :, None,
                                                                                  None]
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
    frozen.zero_grad()
    frozen.backward(np.ones_like(y))
    assert np.abs(frozen.weight.grad).sum() > 0 and np.abs(frozen.bias.grad).sum() > 0
    # the same layer unfrozen does move its statistics: the check above can fail
    live(x)
    assert not np.allclose(live.state_dict()["running_mean"], mean)
