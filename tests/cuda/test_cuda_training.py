"""A training step on the device (issue 7): the loss, the gradient norm and one whole
``train_step`` of a tiny RetinaNet, each against the same computation on the CPU."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev

from retina_np import backend
from retina_np.detection import retina_loss
from retina_np.kernels import options
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.nn import BatchNorm2d, Parameter
from retina_np.optim import SGD, clip_grad_norm, grad_norm
from retina_np.train import train_step


def _targets(rng, sizes, image_hw, num_classes):
    """One target dict per entry of ``sizes`` (boxes per image), boxes 6..12 px."""
    h, w = image_hw
    targets = []
    for m in sizes:
        xy = rng.uniform(0, [w - 12, h - 12], size=(m, 2))
        wh = rng.uniform(6, 12, size=(m, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)
        targets.append({"boxes": boxes, "labels": rng.integers(0, num_classes, m)})
    return targets


@pytest.mark.parametrize("box_loss", ["smooth_l1", "l1"])
def test_retina_loss_on_device_equals_cpu(small_launches, rng, box_loss):
    """Matching on the host, focal and box loss on the device: the same losses and gradients,
    and the gradients are device arrays. The last image has no boxes (all background)."""
    model = RetinaNet(RetinaNetConfig.tiny(3), seed=0)
    anchors = model.anchors((32, 32))  # (R, 4), R = 207
    N, R, K = 3, anchors.shape[0], 3
    cls_logits = rng.normal(-2, 2, (N, R, K)).astype(np.float32)
    box_deltas = rng.normal(0, 0.3, (N, R, 4)).astype(np.float32)
    targets = _targets(rng, [2, 1, 0], (32, 32), K)
    kwargs = dict(num_classes=K, box_loss=box_loss)
    want, want_cls, want_box = retina_loss(cls_logits, box_deltas, anchors, targets, **kwargs)
    got, d_cls, d_box = retina_loss(to_dev(cls_logits), to_dev(box_deltas), anchors, targets,
                                    **kwargs)
    assert backend.is_device_array(d_cls) and backend.is_device_array(d_box)
    assert want["num_foreground"] > 0 and got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert_close(host(d_cls), want_cls)
    assert_close(host(d_box), want_box)


def test_grad_norm_and_clipping_on_device(small_launches, rng):
    grads = [rng.standard_normal(shape).astype(np.float32) for shape in [(4, 3, 3, 3), (4,), (7,)]]

    def params(device):
        ps = [Parameter(np.zeros_like(g)) for g in grads]
        for p, g in zip(ps, grads):
            p.grad = to_dev(g) if device == "cuda" else g.copy()
        return ps

    on_cpu, on_gpu = params("cpu"), params("cuda")
    assert grad_norm(on_gpu) == pytest.approx(grad_norm(on_cpu), rel=1e-12)
    norm = clip_grad_norm(on_gpu, 1.0)
    assert norm == pytest.approx(clip_grad_norm(on_cpu, 1.0), rel=1e-12) and norm > 1.0
    for g, c in zip(on_gpu, on_cpu):
        assert backend.is_device_array(g.grad)
        assert_close(host(g.grad), c.grad)
    assert grad_norm(on_gpu) == pytest.approx(1.0, rel=1e-5)


# The simulator runs every GPU thread as a Python thread and interprets every element access,
# so the step runs at 16x16 pixels (P3 is 2x2, P4..P7 1x1: every layer and level still runs)
# and with GEMM tiles that leave fewer threads to start than the kernel tests' 8x8 tiles.
# Launches still span several blocks: grid-stride loops, multi-block reductions and ragged
# GEMM tiles all run.
STEP_IMAGE_HW = (16, 16)
STEP_LAUNCHES = {
    "cuda_threads_1d": 4,
    "cuda_max_blocks_1d": 2,
    "cuda_gemm_tile_m": 16,
    "cuda_gemm_tile_n": 8,
    "cuda_gemm_tile_k": 8,
    "cuda_gemm_thread_m": 4,
    "cuda_gemm_thread_n": 4,
}


@pytest.fixture
def step_launches(small_launches):
    """The launch settings of the training step, on top of the small ones, for the test."""
    with options(**STEP_LAUNCHES) as settings:
        yield settings
# At 16x16 pixels and batch 2, C4 and C5 are 1x1: their BatchNorms would normalise 2 values per
# channel, an output of +-1 whatever the input, whose input gradient is float32 rounding noise
# times 1/std (CPU and GPU then differ by 1e-3 for reasons that have nothing to do with the
# device). Those two stages use their running statistics; the stem, layer1 and layer2 (8 to 128
# values per channel) train with batch statistics on the device.
FROZEN_STAGES = ("backbone.body.layer3.", "backbone.body.layer4.")


def _tiny_model(config):
    model = RetinaNet(config, seed=0)
    for name, module in model.named_modules():
        if isinstance(module, BatchNorm2d) and name.startswith(FROZEN_STAGES):
            module.frozen = True
    return model


def test_training_step_on_device_equals_cpu(step_launches, monkeypatch, rng):
    """One train_step (forward, loss, backward, clipped SGD update) of RetinaNetConfig.tiny():
    the CPU model and a .to("cuda") copy give the same losses, gradients and parameters, and
    only the float64 partial sums of the losses and of the gradient norm are copied to the host.

    Tolerances: the two runs add the same float32 numbers in different orders (blocked GEMMs
    against BLAS, tree against serial sums). Measured on the simulator: losses agree to 3e-8
    (relative), every gradient to 2.2e-6 of its parameter's largest gradient, parameters and
    BatchNorm statistics to 6e-8 (one float32 ulp). Asserted: 1e-4 relative for the losses and
    the gradients (50x headroom, for a real GPU's exp / log1p in the focal loss and its fused
    multiply-adds), 1e-6 absolute for parameters after the update (the median update here is
    7.6e-5, the largest 5.5e-3, so a wrong learning rate, momentum or weight decay shows).
    """
    config = RetinaNetConfig.tiny(2)
    images = rng.standard_normal((2, 3, *STEP_IMAGE_HW)).astype(np.float32)
    targets = _targets(rng, [1, 2], STEP_IMAGE_HW, config.num_classes)
    cpu_model = _tiny_model(config)
    gpu_model = _tiny_model(config).to("cuda")
    before = cpu_model.state_dict()
    images_d = to_dev(images)

    def optimizer(model):
        return SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    cpu_opt, gpu_opt = optimizer(cpu_model), optimizer(gpu_model)
    # clip 0.2 < the gradient norm: the clipping path (norm, then scaling) runs as well
    want = train_step(cpu_model, cpu_opt, images, targets, lr=0.1, clip=0.2)

    copies = []  # (ndim, dtype, size) of every array copied from the device during the step
    device_array = type(images_d)
    copy_to_host = device_array.copy_to_host

    def watched_copy_to_host(self, *args, **kwargs):
        copies.append((len(self.shape), np.dtype(self.dtype), self.size))
        return copy_to_host(self, *args, **kwargs)

    with monkeypatch.context() as watch:
        watch.setattr(device_array, "copy_to_host", watched_copy_to_host)
        got = train_step(gpu_model, gpu_opt, images_d, targets, lr=0.1, clip=0.2)

    assert want["num_foreground"] > 0 and want["grad_norm"] > 0.2
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4), key

    cpu_params = dict(cpu_model.named_parameters())
    for name, p in gpu_model.named_parameters():
        assert backend.is_device_array(p.data) and backend.is_device_array(p.grad), name
        assert backend.is_device_array(gpu_opt.buffers[name]), name
        want_grad = cpu_params[name].grad
        assert np.abs(host(p.grad) - want_grad).max() <= 1e-4 * np.abs(want_grad).max(), name
    got_state, want_state = gpu_model.state_dict(), cpu_model.state_dict()  # with BN statistics
    for name, value in want_state.items():
        np.testing.assert_allclose(got_state[name], value, rtol=0, atol=1e-6, err_msg=name)
    largest_update = max(np.abs(want_state[k] - before[k]).max() for k in cpu_params)
    assert largest_update > 1e-3  # the step moved the parameters far beyond the tolerance

    # Copied to the host: only the per-block partial sums of the losses and of the squared
    # gradient norm (float64 vectors). BatchNorm updates its running statistics on the device,
    # and an activation, a gradient or a parameter never leaves it.
    assert copies
    for ndim, dtype, size in copies:
        assert ndim == 1 and dtype == np.float64, (ndim, dtype, size)
