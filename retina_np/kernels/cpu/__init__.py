"""Fast CPU kernels: ``@njit`` loops plus BLAS matrix products (numpy's ``@``, OpenBLAS).

Same names, signatures and results as ``kernels/reference.py`` (and, name for name, as
``kernels/cuda/``); ``retina_np.backend`` is the one module that picks them. One file per
idea, mirrored by ``kernels/cuda/``:

    conv.py         conv2d_forward, conv2d_backward_input, conv2d_backward_weight,
                    bias_backward: im2col + GEMM, or Winograd where the plan says so
    conv_joint.py   the heads' convolutions on every pyramid level at once (a Joint),
                    join_levels / split_levels, and the level-by-level list versions
    norm.py         batch norm and group norm (with the ReLU that follows them)
    elementwise.py  ReLU, add, max pooling, nearest upsampling
    optim.py        new arrays, in-place updates, SGD and AdamW steps, the gradient norm
                    (and, CPU only, that of flat parameters: sum_squares_runs)
    layout.py       the heads' outputs between levels and one row per anchor
    loss.py         the focal loss (its element formula), smooth-L1 and L1, per image and dense
    detection.py    box IoU, box decoding, NMS

and, with no CUDA twin: ``plan.py`` (which algorithm a convolution takes, and why),
``im2col.py`` (the unfolding), ``winograd.py`` with ``winograd_f2.py`` and ``winograd_f4.py``
(Winograd's minimal filtering). The thread budget of each kernel call comes from
``kernels/threads.py``; every tunable is in ``kernels/options.py``.
"""

from retina_np.kernels.cpu.conv import (
    bias_backward,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
)
from retina_np.kernels.cpu.conv_joint import (
    conv2d_backward_joint,
    conv2d_backward_levels,
    conv2d_forward_joint,
    conv2d_forward_levels,
    join_levels,
    split_levels,
)
from retina_np.kernels.cpu.detection import batched_nms, box_iou, decode_boxes, nms
from retina_np.kernels.cpu.elementwise import (
    add_forward,
    maxpool2d_backward,
    maxpool2d_forward,
    relu_backward,
    relu_forward,
    upsample_nearest_backward,
    upsample_nearest_forward,
)
from retina_np.kernels.cpu.layout import levels_layout, levels_to_rows, rows_to_levels
from retina_np.kernels.cpu.loss import (
    box_loss_rows,
    focal_loss_anchor_classes,
    l1_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from retina_np.kernels.cpu.norm import (
    batchnorm2d_backward,
    batchnorm2d_eval_stats,
    batchnorm2d_forward,
    batchnorm2d_stats,
    batchnorm2d_update_stats,
    groupnorm_backward,
    groupnorm_backward_joint,
    groupnorm_forward,
    groupnorm_forward_joint,
)
from retina_np.kernels.cpu.optim import (
    adamw_update_,
    add_inplace_,
    empty_like,
    fill_,
    scale_,
    sgd_update_,
    sum_squares,
    sum_squares_runs,
    zeros_like,
)

__all__ = [
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_backward",
    "conv2d_forward_levels", "conv2d_backward_levels", "conv2d_forward_joint",
    "conv2d_backward_joint", "join_levels", "split_levels",
    "batchnorm2d_stats", "batchnorm2d_update_stats", "batchnorm2d_eval_stats",
    "batchnorm2d_forward", "batchnorm2d_backward",
    "groupnorm_forward", "groupnorm_backward", "groupnorm_forward_joint",
    "groupnorm_backward_joint",
    "relu_forward", "relu_backward", "maxpool2d_forward", "maxpool2d_backward",
    "upsample_nearest_forward", "upsample_nearest_backward", "add_forward",
    "empty_like", "zeros_like", "fill_", "scale_", "add_inplace_", "sgd_update_", "adamw_update_",
    "sum_squares", "sum_squares_runs", "levels_to_rows", "rows_to_levels", "levels_layout",
    "focal_loss_anchor_classes", "box_loss_rows",
    "sigmoid_focal_loss", "smooth_l1_loss", "l1_loss",
    "box_iou", "decode_boxes", "nms", "batched_nms",
]
