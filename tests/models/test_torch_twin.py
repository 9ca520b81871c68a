"""benchmarks/torch_twin.py computes what our RetinaNet computes, so its timings compare."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from retina_np.data import DataLoader, ShapesDataset  # noqa: E402
from retina_np.models import RetinaNet, RetinaNetConfig  # noqa: E402
from retina_np.optim import SGD  # noqa: E402

pytestmark = pytest.mark.torch


def _load_twin_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "torch_twin.py"
    spec = importlib.util.spec_from_file_location("torch_twin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tt = _load_twin_module()


def _pair(config, dtype=np.float32):
    model = RetinaNet(config, seed=0).astype(dtype)
    twin = tt.TorchRetinaNet(config).to(torch.float64 if dtype == np.float64 else torch.float32)
    tt.load_numpy_state(twin, model.state_dict())
    return model, twin


def test_twin_has_our_parameter_names_and_shapes():
    model, twin = _pair(RetinaNetConfig.shapes())
    theirs = {
        k: tuple(v.shape)
        for k, v in twin.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert theirs == {k: v.shape for k, v in model.state_dict().items()}


def test_shapes_preset_forward_equals_ours_float32():
    """The benchmarked model, in training mode (batch statistics), on a real batch."""
    model, twin = _pair(RetinaNetConfig.shapes())
    images, _, _, _ = DataLoader(ShapesDataset(4), 4).batch(0, 0)
    cls, box = model(images)
    model.clear_caches()
    with torch.no_grad():
        t_cls, t_box = twin.train()(torch.from_numpy(images))
    np.testing.assert_allclose(t_cls.numpy(), cls, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(t_box.numpy(), box, rtol=1e-3, atol=1e-4)


def test_tiny_training_steps_equal_ours_float64(make_targets):
    """Loss, every parameter gradient and the SGD update (momentum from the second step on):
    the whole benchmarked step, twice. In float64, so rounding cannot hide a difference;
    float32 runs drift apart within a few from-scratch steps (rounding amplified by the steps
    themselves), float64 runs agree to ~1e-12."""
    config = RetinaNetConfig.tiny(2)
    model, twin = _pair(config, np.float64)
    optimizer, t_optimizer = SGD(model.named_parameters(), lr=0.1), tt.sgd(twin, lr=0.1)
    rng = np.random.default_rng(0)
    for _ in range(2):
        images = rng.normal(size=(2, 3, 64, 64))
        targets = make_targets(rng, 2, (64, 64), 2)

        model.zero_grad()
        cls, box = model(images)
        losses, d_cls, d_box = model.loss(cls, box, targets, (64, 64))
        model.backward(d_cls, d_box)
        optimizer.step()

        anchor_class, target_deltas = tt.match_batch(model, targets, (64, 64), np.float64)
        t_optimizer.zero_grad()
        t_cls, t_box = twin.train()(torch.from_numpy(images))
        loss = tt.retina_loss(
            t_cls, t_box, torch.from_numpy(anchor_class), torch.from_numpy(target_deltas), config
        )
        loss.backward()
        grads = {k: p.grad.numpy().copy() for k, p in twin.named_parameters()}
        t_optimizer.step()

        assert losses["num_foreground"] > 0
        np.testing.assert_allclose(loss.item(), losses["total"], rtol=1e-9)
        for name, p in model.named_parameters():
            np.testing.assert_allclose(grads[name], p.grad, rtol=1e-6, atol=1e-10, err_msg=name)
        after = twin.state_dict()
        for name, value in model.state_dict().items():
            np.testing.assert_allclose(after[name].numpy(), value, rtol=1e-9, atol=1e-12)
