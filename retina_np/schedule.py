"""A training step's independent CPU work run side by side, from outside the model.

The model, its heads and its loss are written as the paper describes them, one step after
another. Much work in a training step does not depend on the work beside it, and on a CPU
with several cores it runs at once, each piece on its share of the cores (``side_by_side`` in
kernels/threads.py, which says when it runs them one by one instead):

* in the backbone's forward, each residual block's shortcut (a strided 1x1 conv and its batch
  norm) beside its 3x3s, with the FPN's lateral 1x1 conv of C3 or C4 where the block reads
  it, and the FPN's output conv of P3 beside those of P4, P5 and P6/P7: they share only their
  input (the backward needs no such help: the queue below already keeps a second core busy
  there);
* beside the stem's max pooling (one thread), what needs nothing of the forward: zeroing the
  gradients and matching the targets to the anchors (``Scheduled(model, targets,
  zero_grad=True)``; the loss then takes that matching);
* the classification and box subnets, forward and backward: they share only their input;
* the two halves of the batch in the loss: the images share only the anchors;
* the convolutions' weight gradients beside the backbone's backward: no layer's backward
  needs the weight gradients of the layers above it, only the update does. Each conv hands
  its weight gradient to a queue (``Conv2d.defer_weight_grad``) that a second thread works
  through while the backward goes on; the first of the two to finish helps the other.

``Scheduled(model)`` is called as the model is::

    net = Scheduled(model, targets, zero_grad=True)  # as train_step(..., scheduled=True)
    cls_logits, box_deltas = net(images)
    losses, d_cls, d_box = net.loss(cls_logits, box_deltas, targets, image_hw)
    net.backward(d_cls, d_box)

and computes the same numbers as the model does, bit for bit when each kernel runs on as
many threads either way (tests/test_schedule.py; a GEMM's rounding depends on its thread
count). On a GPU it runs the model as it is: the kernel launches queue on the device in
order anyway. The time it saves is in docs/performance-history.md ("Model").
"""

from __future__ import annotations

import queue

from retina_np import backend
from retina_np.kernels import threads
from retina_np.nn import Conv2d


class Scheduled:
    """``model`` (a RetinaNet) with its independent CPU work side by side; same calls.

    targets: the batch's ground truth, matched to the anchors beside the forward's stem (the
    loss of the same targets then takes that matching); zero_grad: the model's gradients
    zeroed there too, where ``train_step`` would zero them before the forward. Both need
    nothing of the forward, which leaves a core idle while its max pooling runs.
    """

    def __init__(self, model, targets=None, zero_grad=False):
        self.model = model
        self.targets, self.zero_grad = targets, zero_grad
        self._matched = None  # (image_hw, dtype, the targets' ImageTargets)

    def __call__(self, images):
        """``model(images)``, the backbone's branches and the two subnets side by side."""
        def beside_stem():
            if self.zero_grad:
                self.model.zero_grad()
            if self.targets is not None:
                hw = tuple(images.shape[-2:])
                self._matched = (hw, images.dtype, self.model.match(self.targets, hw,
                                                                    images.dtype))

        levels = self.model.features(
            images, backbone=lambda backbone, x: backbone_forward(backbone, x, beside_stem))
        return head_forward(self.model.head, levels)

    def loss(self, cls_logits, box_deltas, targets, image_hw):
        """``model.loss(...)``, the two halves of the batch side by side."""
        def map_images(image_loss, images):
            return _halves_side_by_side(image_loss, list(images), like=cls_logits)

        matched = None
        if self._matched is not None and targets is self.targets:
            hw, dtype, made = self._matched
            if hw == tuple(image_hw) and dtype == cls_logits.dtype:
                matched = made
        return self.model.loss(cls_logits, box_deltas, targets, image_hw, map_images=map_images,
                               matched=matched)

    def backward(self, d_cls_logits, d_box_deltas):
        """``model.backward(...)``, the weight gradients worked through beside it."""
        model = self.model
        if backend.is_device_array(d_cls_logits):
            return model.backward(d_cls_logits, d_box_deltas)
        later = WorkQueue()
        # Not the stem's (no input gradient): nothing would be left to overlap with it, and
        # queued it came last and kept one thread busy after the other had run dry.
        convs = [m for m in model.modules() if isinstance(m, Conv2d) and m.needs_input_grad]
        for conv in convs:
            conv.defer_weight_grad = later.append
        try:
            d_levels = head_backward(model.head, d_cls_logits, d_box_deltas)

            def backbone_then_queue():
                try:
                    model.backbone.backward(d_levels)
                finally:
                    later.close(workers=2)  # this thread and the other
                later.work_through()

            _side_by_side(d_levels[0], backbone_then_queue, later.work_through,
                          channels=model.head.channels)
        finally:
            for conv in convs:
                conv.defer_weight_grad = None


def backbone_forward(backbone, images, beside_stem=None):
    """``backbone(images)`` (a BackboneWithFPN): ``beside_stem`` (a function of nothing, or
    None) beside the stem's last layer (its max pooling: one thread), ResNet's blocks with
    their shortcuts beside their 3x3s, the FPN's lateral 1x1 convs of C3 and C4 with the
    shortcuts of the stages that read them, then the FPN with its output convs side by
    side."""
    body, fpn, x = backbone.body, backbone.fpn, images
    *stem, last = body.stem()
    for layer in stem:
        x = layer(x)
    if beside_stem is None:
        x = last(x)
    else:
        x, _ = _side_by_side(x, lambda: last(x), beside_stem)
    stages, laterals = [], []
    for k, stage in enumerate((body.layer1, body.layer2, body.layer3, body.layer4)):
        for b, block in enumerate(stage):
            # C3 and C4 (the outputs of layer2 and layer3) are the inputs of the next stages
            lateral = fpn.inner_blocks[k - 2] if b == 0 and k >= 2 else None
            x, made = _block_forward(block, x, lateral)
            if lateral is not None:
                laterals.append(made)
        stages.append(x)
    return _fpn_forward(fpn, stages[1:], laterals)  # C3, C4, C5


def _block_forward(block, x, beside=None):
    """(``block(x)`` (a BasicBlock or Bottleneck), ``beside(x)`` or None): the block's shortcut,
    and ``beside`` (a layer that also reads x), beside its residual branch."""
    if block.downsample is None and beside is None:
        return block(x), None
    if block.downsample is None:
        shortcut, channels = (lambda x: x), x.shape[1]
    else:
        shortcut, channels = block.downsample, block.downsample[0].out_channels
    out, (identity, made) = _side_by_side(
        x, lambda: block.residual_forward(x),
        lambda: (shortcut(x), beside(x) if beside is not None else None), channels=channels)
    return block.merge(out, identity), made


def _fpn_forward(fpn, feats, laterals=()):
    """``fpn(feats)``: the top-down path first (1x1 laterals where not made yet, upsampling,
    sums: small), then the output conv of the largest level beside those of the others and
    P6, P7."""
    merged = fpn.top_down(feats, laterals)
    largest, others = _side_by_side(feats[0], lambda: fpn.layer_blocks[0](merged[0]),
                                    lambda: fpn.outputs(merged, feats, first=1),
                                    channels=fpn.layer_blocks[0][0].out_channels)
    return (largest, *others)


def head_forward(head, levels):
    """``head(levels)`` (a RetinaNetHead), the two subnets side by side."""
    xs = head.join(levels)
    return tuple(_side_by_side(levels[0], lambda: head.classification_head(xs),
                               lambda: head.regression_head(xs), channels=head.channels))


def head_backward(head, d_cls, d_box):
    """``head.backward(d_cls, d_box)``, the two subnets side by side."""
    d_cls_levels, d_box_levels = _side_by_side(
        d_cls, lambda: head.classification_head.backward(d_cls),
        lambda: head.regression_head.backward(d_box), channels=head.channels)
    return head.sum_levels(d_cls_levels, d_box_levels)


class WorkQueue:
    """Functions put aside by one thread (``append``) for others to call in order
    (``work_through``, which returns once the queue is ``close``d and done; each call of
    ``close`` lets one of the threads working through it return)."""

    _CLOSED = object()

    def __init__(self):
        self._queue = queue.SimpleQueue()

    def append(self, fn) -> None:
        self._queue.put(fn)

    def close(self, workers: int = 1) -> None:
        for _ in range(workers):
            self._queue.put(self._CLOSED)

    def work_through(self) -> None:
        while (fn := self._queue.get()) is not self._CLOSED:
            fn()


def _halves_side_by_side(fn, items, like):
    """``[fn(item) for item in items]``, the two halves of items side by side."""
    half = (len(items) + 1) // 2
    first, second = _side_by_side(like, lambda: [fn(i) for i in items[:half]],
                                  lambda: [fn(i) for i in items[half:]])
    return first + second


def _side_by_side(like, *tasks, channels=0):
    """The tasks' results, in order: side by side for arrays on the CPU (``like`` is one of
    the arrays they work on), one after another on a GPU."""
    if backend.is_device_array(like):
        return [task() for task in tasks]
    return threads.side_by_side(*tasks, channels=channels)
