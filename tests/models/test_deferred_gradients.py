"""The scheduled backward (retina_np/schedule.py): the convolutions' weight gradients left on
a queue (``Conv2d.defer_weight_grad``) and worked through beside the backbone's backward
equal those computed where they arise (bit for bit on one thread per kernel:
tests/test_schedule.py)."""

import numpy as np

from retina_np import schedule
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.nn import Conv2d


def test_model_backward_with_deferred_weight_gradients(make_targets, monkeypatch):
    """(Side by side on two or more cores, kernels/threads.py; else one after another.)"""
    config = RetinaNetConfig.tiny(2)
    config.head_norm_groups = 4
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 64, 64)).astype(np.float64)
    targets = make_targets(rng, 2, (64, 64), 2)

    queued = []
    append = schedule.WorkQueue.append
    monkeypatch.setattr(schedule.WorkQueue, "append",
                        lambda self, fn: (queued.append(fn), append(self, fn)))

    def grads(deferred):
        model = RetinaNet(config, seed=2).astype(np.float64).train()
        cls, box = model(images)
        _, d_cls, d_box = model.loss(cls, box, targets, images.shape[-2:])
        if deferred:
            schedule.Scheduled(model).backward(d_cls, d_box)
        else:  # the same passes, each weight gradient computed where it arises
            model.backward(d_cls, d_box)
        assert all(m.defer_weight_grad is None for m in model.modules()
                   if isinstance(m, Conv2d))
        return {n: p.grad for n, p in model.named_parameters()}

    deferred, at_once = grads(True), grads(False)
    convs = [m for m in RetinaNet(config).modules() if isinstance(m, Conv2d)]
    # every convolution's weight gradient went on the queue but the stem's, computed at once
    # (it needs no input gradient, so nothing is left to overlap with it)
    assert [c.needs_input_grad for c in convs].count(False) == 1
    assert len(queued) == len(convs) - 1
    for name, g in at_once.items():
        np.testing.assert_allclose(deferred[name], g, rtol=1e-10,
                                   atol=1e-10 * np.abs(g).max(), err_msg=name)
        assert np.abs(g).max() > 0, name
