"""CUDA kernels (numba.cuda): the contract of ``kernels/__init__.py`` on device arrays.

Same names and signatures as ``kernels.cpu`` and ``reference.py``; every function takes
numba.cuda device arrays (C-contiguous, float32 or float64) and returns new device arrays
allocated with ``cuda.device_array``; nothing is copied to the host except where a result is a
Python number (loss sums) or inherently sequential (the last step of NMS). Import this package
only through ``retina_np.backend``.

One file per idea, mirroring ``kernels/cpu/`` file for file:

    conv.py         conv2d_forward, conv2d_backward_input, conv2d_backward_weight:
                    one tiled shared-memory GEMM (64x64x16 tiles, 4x4 outputs per thread)
                    read through three index maps (implicit GEMM), split-K when K is long;
                    bias_backward
    conv_joint.py   conv2d_forward_levels, conv2d_backward_levels: one launch per pyramid
                    level (kernels/levels.py); join_levels, split_levels: the list itself
    norm.py         batch norm (statistics, running-statistics update, apply, backward) and
                    group norm
    elementwise.py  relu, add, max pooling, nearest upsampling (backwards by gather), cast
    optim.py        empty_like, zeros_like, fill_, scale_, add_inplace_, the SGD and AdamW
                    steps, sum_squares
    layout.py       levels_to_rows, rows_to_levels, levels_layout (the heads' outputs)
    loss.py         focal loss (dense, and per image from per-anchor classes), smooth-L1 / L1
                    (dense, and box_loss_rows over the foreground rows of one image)
    detection.py    box IoU, box decoding, bitmask NMS

and three that only the GPU needs: ``reduce.py`` (per-channel sums in two deterministic
passes, and sums to one number, for the kernels above), ``config.py`` (what each launch
setting, the ``cuda_*`` fields of ``kernels.options``, means) and ``launch.py`` (allocation
and launch helpers).

Beyond the kernel contract, the optimiser and the layers use (CPU twins in ``kernels.cpu``):

    empty_like(a)                                  # new uninitialised array like a
    zeros_like(a)                                  # new zero array like a
    fill_(a, value)                                # a[...] = value, in place
    scale_(a, s)                                   # a *= s, in place
    add_inplace_(a, b)                             # a += b, in place
    sgd_update_(param, grad, buf, lr, momentum, weight_decay)
        # in place, torch's rule: buf = momentum*buf + (grad + wd*param); param -= lr*buf
    adamw_update_(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
        # in place, torch.optim.AdamW's rule for step number `step` (1, 2, ...)
    sum_squares(arrays)                            # sum of a*a over all, float64 -> float

the heads and the loss use:

    levels_to_rows(levels, per_anchor)             # [(N, A*P, H, W)] -> (N, R, P)
    rows_to_levels(rows, layout, per_anchor)       # (N, R, P) -> [(N, A*P, H, W)]
    levels_layout(levels)                          # [(H, W)]: what rows_to_levels needs
    join_levels(levels, kernel_size=None)          # the list itself (kernels.cpu: one Joint
    split_levels(levels)                           #   matrix of every level, and back)
    focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale, out=None)
                                                   # (R, K) -> loss, d logits (into out)
    box_loss_rows(pred, rows, target, beta, divisor, dpred)
                                                   # (R, 4) at rows (F,) -> loss; into dpred

and ``retina_np.detection`` (numbers as arguments: the defaults are detection's):

    sigmoid_focal_loss(logits, targets, alpha, gamma)      # -> loss, d logits
    smooth_l1_loss(pred, target, beta), l1_loss(pred, target)  # -> loss, d pred
    box_iou(boxes1, boxes2)                                # (N, 4), (M, 4) -> (N, M)
    decode_boxes(deltas, anchors, weights, scale_clamp)    # (N, 4), (N, 4) -> (N, 4)
    nms(boxes, scores, iou_threshold, max_keep=None)       # -> kept indices (host int64)
    batched_nms(boxes, scores, labels, iou_threshold, max_keep=None)
"""

from retina_np.kernels.cuda.conv import (
    bias_backward,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
)
from retina_np.kernels.cuda.conv_joint import (
    conv2d_backward_levels,
    conv2d_forward_levels,
    join_levels,
    split_levels,
)
from retina_np.kernels.cuda.detection import batched_nms, box_iou, decode_boxes, nms
from retina_np.kernels.cuda.elementwise import (
    add_forward,
    cast,
    maxpool2d_backward,
    maxpool2d_forward,
    relu_backward,
    relu_forward,
    upsample_nearest_backward,
    upsample_nearest_forward,
)
from retina_np.kernels.cuda.layout import levels_layout, levels_to_rows, rows_to_levels
from retina_np.kernels.cuda.loss import (
    box_loss_rows,
    focal_loss_anchor_classes,
    l1_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from retina_np.kernels.cuda.norm import (
    batchnorm2d_backward,
    batchnorm2d_eval_stats,
    batchnorm2d_forward,
    batchnorm2d_stats,
    batchnorm2d_update_stats,
    groupnorm_backward,
    groupnorm_forward,
)
from retina_np.kernels.cuda.optim import (
    adamw_update_,
    add_inplace_,
    empty_like,
    fill_,
    scale_,
    sgd_update_,
    sum_squares,
    zeros_like,
)

__all__ = [
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_backward",
    "conv2d_forward_levels", "conv2d_backward_levels", "join_levels", "split_levels",
    "batchnorm2d_stats", "batchnorm2d_update_stats", "batchnorm2d_eval_stats",
    "batchnorm2d_forward", "batchnorm2d_backward",
    "groupnorm_forward", "groupnorm_backward",
    "relu_forward", "relu_backward", "maxpool2d_forward", "maxpool2d_backward",
    "upsample_nearest_forward", "upsample_nearest_backward", "add_forward", "cast",
    "empty_like", "zeros_like", "fill_", "scale_", "add_inplace_", "sgd_update_", "adamw_update_",
    "sum_squares", "levels_to_rows", "rows_to_levels", "levels_layout",
    "focal_loss_anchor_classes", "sigmoid_focal_loss", "smooth_l1_loss", "l1_loss",
    "box_loss_rows", "box_iou", "decode_boxes", "nms", "batched_nms",
]

