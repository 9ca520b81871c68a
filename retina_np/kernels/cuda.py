"""CUDA kernels (numba.cuda): the contract of ``kernels/__init__.py`` on device arrays.

Same names and signatures as ``cpu.py`` and ``reference.py``; every function takes numba.cuda
device arrays (C-contiguous, float32 or float64) and returns new device arrays allocated with
``cuda.device_array``; nothing is copied to the host except where a result is a Python
number (loss sums) or inherently sequential (the last step of NMS). Import this module only
through ``retina_np.backend``.

The kernels live in five files, one idea each:

    cuda_conv.py         conv2d_forward, conv2d_backward_input, conv2d_backward_weight:
                         one tiled shared-memory GEMM (64x64x16 tiles, 4x4 outputs per thread)
                         read through three index maps (implicit GEMM), split-K when K is long
                         (conv2d_forward_levels, conv2d_backward_levels, below: one launch
                         per pyramid level, kernels/levels.py)
    cuda_reduce.py       bias_backward, batchnorm2d_stats, batchnorm2d_backward: per-channel
                         sums in two deterministic passes ((C, S) blocks, then per channel);
                         sum_squares: whole arrays to one float64 number
    cuda_elementwise.py  relu, add, batch-norm apply and statistics (running-statistics
                         update, invstd), max pooling, nearest upsampling
                         (backwards by gather), the heads' levels_to_rows / rows_to_levels,
                         and the in-place utilities below
    cuda_detection.py    focal loss, smooth-L1 / L1 (box_loss_rows: over the foreground rows
                         of one image), box IoU, box decoding, bitmask NMS
    cuda_norm.py         groupnorm_forward, groupnorm_backward: cuda_reduce's per-channel sums
                         on views with one channel per (image, group) or (image, channel)

plus ``cuda_config.py`` (every tunable: threads per block, tile sizes) and
``cuda_launch.py`` (allocation and launch helpers).

Beyond the kernel contract, the optimiser and the layers use (CPU twins in ``cpu.py``):

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

and the heads and the loss use (CPU twins in ``cpu.py``, the loss ones wrapping
``retina_np.detection.losses``):

    levels_to_rows(levels, per_anchor)             # [(N, A*P, H, W)] -> (N, R, P)
    rows_to_levels(rows, level_hw, per_anchor)     # (N, R, P) -> [(N, A*P, H, W)]
    levels_layout(levels)                          # [(H, W)]: what rows_to_levels needs
    join_levels(levels, kernel_size=None)          # the list itself (cpu.py: one Joint matrix
    split_levels(levels)                           #   of every level, and back)
    side_by_side(*tasks, channels=0)               # [task() for task in tasks]: the launches
                                                   #   queue on the GPU anyway (cpu.py runs
                                                   #   them at once, kernels/threads.py)
    focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale, out=None)
                                                   # (R, K) -> loss, d logits (into out)
    box_loss_rows(pred, rows, target, beta, divisor, dpred)
                                                   # (R, 4) at rows (F,) -> loss; into dpred
"""

import sys

from retina_np.kernels import levels
from retina_np.kernels.cuda_conv import (
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
)
from retina_np.kernels.cuda_detection import (
    batched_nms,
    box_iou,
    box_loss_rows,
    decode_boxes,
    focal_loss_anchor_classes,
    l1_loss,
    nms,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from retina_np.kernels.cuda_elementwise import (
    adamw_update_,
    add_forward,
    add_inplace_,
    batchnorm2d_eval_stats,
    batchnorm2d_forward,
    batchnorm2d_update_stats,
    cast,
    empty_like,
    fill_,
    levels_to_rows,
    maxpool2d_backward,
    maxpool2d_forward,
    relu_backward,
    relu_forward,
    rows_to_levels,
    scale_,
    sgd_update_,
    upsample_nearest_backward,
    upsample_nearest_forward,
    zeros_like,
)
from retina_np.kernels.cuda_norm import groupnorm_backward, groupnorm_forward
from retina_np.kernels.cuda_reduce import (
    batchnorm2d_backward,
    batchnorm2d_stats,
    bias_backward,
    sum_squares,
)

__all__ = [
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_backward",
    "conv2d_forward_levels", "conv2d_backward_levels",
    "batchnorm2d_stats", "batchnorm2d_update_stats", "batchnorm2d_eval_stats",
    "batchnorm2d_forward", "batchnorm2d_backward",
    "groupnorm_forward", "groupnorm_backward",
    "relu_forward", "relu_backward", "maxpool2d_forward", "maxpool2d_backward",
    "upsample_nearest_forward", "upsample_nearest_backward", "add_forward",
    "empty_like", "zeros_like", "fill_", "scale_", "add_inplace_", "sgd_update_", "adamw_update_",
    "cast",
    "sum_squares", "levels_to_rows", "rows_to_levels", "levels_layout", "side_by_side",
    "join_levels", "split_levels",
    "focal_loss_anchor_classes", "sigmoid_focal_loss", "smooth_l1_loss", "l1_loss",
    "box_loss_rows", "box_iou", "decode_boxes", "nms", "batched_nms",
]


def conv2d_forward_levels(xs, w, b, stride, padding, columns=None):
    """One conv2d_forward launch per level (kernels/levels.py); ``columns`` is unused."""
    return levels.conv2d_forward_by_level(sys.modules[__name__], xs, w, b, stride, padding)


def conv2d_backward_levels(dys, xs, w, stride, padding, has_bias, need_input_grad,
                           columns=None):
    """Level by level (kernels/levels.py): dxs or None, dw and db summed over the levels."""
    return levels.conv2d_backward_by_level(sys.modules[__name__], dys, xs, w, stride, padding,
                                           has_bias, need_input_grad)


def side_by_side(*tasks, channels=0):
    """The tasks one after another: their kernel launches queue on the device in order."""
    return [task() for task in tasks]


def levels_layout(levels):
    """The (H, W) of each level (a list of device arrays), for ``rows_to_levels``."""
    return [(x.shape[2], x.shape[3]) for x in levels]


def join_levels(levels, kernel_size=None):
    """The list of levels itself: on the GPU each level is its own launch anyway."""
    return levels


def split_levels(levels):
    """The list of levels itself (the inverse of ``join_levels``)."""
    return levels
