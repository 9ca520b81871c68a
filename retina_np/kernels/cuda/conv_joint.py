"""The heads' convolutions over every pyramid level, on the GPU: level by level.

The CPU joins the levels into one matrix (``join_levels``) so that a layer is one GEMM; on the
GPU each level is one launch of the implicit GEMM (``conv.py``), which builds no matrix, so
there is nothing to join: ``join_levels`` and ``split_levels`` give the list of levels back as
it is, and the two convolutions run ``kernels/levels.py``'s loop over the levels.
"""

from __future__ import annotations

from types import SimpleNamespace

from retina_np.kernels import levels
from retina_np.kernels.cuda import conv
from retina_np.kernels.cuda.optim import add_inplace_

# The single-input kernels that kernels/levels.py calls once per level.
_PER_LEVEL = SimpleNamespace(
    conv2d_forward=conv.conv2d_forward,
    conv2d_backward_input=conv.conv2d_backward_input,
    conv2d_backward_weight=conv.conv2d_backward_weight,
    bias_backward=conv.bias_backward,
    add_inplace_=add_inplace_,
)


def conv2d_forward_levels(xs, w, b, stride, padding, workspace=None):
    """xs: list of (N, C, H_l, W_l) -> list of (N, F, Ho_l, Wo_l), one launch per level;
    ``workspace`` is unused."""
    return levels.conv2d_forward_by_level(_PER_LEVEL, xs, w, b, stride, padding)


def conv2d_backward_levels(dys, xs, w, stride, padding, has_bias, need_input_grad,
                           workspace=None):
    """Level by level: dxs (list) or None, dw and db (or None) summed over the levels."""
    return levels.conv2d_backward_by_level(_PER_LEVEL, dys, xs, w, stride, padding, has_bias,
                                           need_input_grad)


def join_levels(xs, kernel_size=None):
    """The list of levels itself: on the GPU each level is its own launch anyway."""
    return xs


def split_levels(xj):
    """The list of levels itself (the inverse of ``join_levels``, which gave it as it was)."""
    return xj
