"""The heads' convolutions on every pyramid level at once (CPU).

RetinaNet's heads apply each convolution, with the same weights, to all five levels. The
small levels (4x4 to 1x1 on a 128x128 image) cost mostly fixed overheads per call, so on the
CPU the levels live side by side in one channel-major matrix, a ``levels.Joint`` (C, T), and
each layer is one call for all of them: the heads' convolutions are "same" ones, so a layer's
(F, T) output already is the next layer's input, and each norm and ReLU is one call too.
``join_levels`` makes a Joint from the list of levels, ``split_levels`` gives the list back.

``conv2d_forward_levels`` / ``conv2d_backward_levels`` take the list of levels and run level
by level (``levels.py``), as the CUDA kernels do: the heads use them where a Joint would be too
large (``join_levels(xs, kernel_size)`` returns the list).
"""

from __future__ import annotations

import sys

import numpy as np

from retina_np.kernels import levels
from retina_np.kernels.cpu import winograd
from retina_np.kernels.cpu.conv import weight_gradient
from retina_np.kernels.cpu.im2col import (
    col2im_same_add,
    from_channel_major,
    im2col_same,
    same_tables,
)
from retina_np.kernels.cpu.plan import WINOGRAD, choose_conv
from retina_np.kernels.levels import Joint
from retina_np.kernels.tunables import current


def join_levels(xs, kernel_size=None):
    """The levels xs (a list of (N, C, H_l, W_l)) as one Joint (C, T). With a kernel_size:
    xs itself (the list) where the unfolded matrix of such a convolution of the Joint would
    exceed ``options.keep_max_elements`` (large images: their layers run level by level)."""
    if isinstance(xs, Joint):
        return xs
    N, C = xs[0].shape[:2]
    hws = tuple((x.shape[2], x.shape[3]) for x in xs)
    T = N * sum(h * w for h, w in hws)
    if kernel_size is not None and C * kernel_size * kernel_size * T > current().keep_max_elements:
        return xs
    xc = np.empty((C, T), xs[0].dtype)
    joint = Joint(xc, N, hws)
    for x, (h, w), a, b in zip(xs, hws, joint.starts, joint.starts[1:]):
        xc[:, a:b].reshape(C, N, h * w)[...] = x.reshape(N, C, h * w).transpose(1, 0, 2)
    return joint


def split_levels(xj):
    """The inverse of ``join_levels``: a Joint -> the list of (N, C, H_l, W_l) (a list is
    returned as it is)."""
    if not isinstance(xj, Joint):
        return xj
    starts = xj.starts
    return [np.ascontiguousarray(from_channel_major(xj.data[:, a:b], xj.n, h, w))
            for (h, w), a, b in zip(xj.hws, starts, starts[1:])]


def conv2d_forward_levels(xs, w, b, stride, padding, workspace=None):
    """One convolution of several inputs: xs, a list of (N, C, H_l, W_l) with the same N and
    C -> a list of y_l (N, F, Ho_l, Wo_l), level by level; ``workspace`` is unused."""
    return levels.conv2d_forward_by_level(sys.modules[__package__], xs, w, b, stride, padding)


def conv2d_backward_levels(dys, xs, w, stride, padding, has_bias, need_input_grad,
                           workspace=None):
    """The backward of ``conv2d_forward_levels``: (dxs or None, dw summed over the levels, db
    or None)."""
    return levels.conv2d_backward_by_level(sys.modules[__package__], dys, xs, w, stride,
                                           padding, has_bias, need_input_grad)


def _joint_geometry(xj, k):
    """The (geometry, keep) tables of a "same" k x k convolution of a Joint: one piece per
    level (``im2col.same_tables``)."""
    starts = xj.starts
    return same_tables(tuple((xj.n, h, w, 0, h, a, a) for (h, w), a in zip(xj.hws, starts)), k)


def _plan(xj, w):
    F, C, k, _ = w.shape
    return choose_conv(xj.n, C, F, xj.hws, k, k, 1, k // 2, threads=1, joint=True)


def conv2d_forward_joint(xj, w, b, workspace=None):
    """A "same" convolution (stride 1, padding (k-1)/2) of a Joint (C, T) -> Joint (F, T):
    one unfolding and one GEMM for every level, or Winograd's F(m x m, 3x3) where the plan
    says so. workspace: None, or an empty ``ConvWorkspace`` that receives the plan and what
    the weight gradient reuses."""
    F, C, k, _ = w.shape
    plan = _plan(xj, w)
    if workspace is not None:
        workspace.plan = plan
    if plan.algorithm == WINOGRAD:
        U = winograd.filters(w, plan.block)
        y, V = winograd.conv3x3_forward(xj.data, xj.n, xj.hws, w, b, plan.block,
                                        keep=workspace is not None, U=U)
        if workspace is not None:
            workspace.transformed, workspace.transformed_filters = V, U
        return xj.like(y)
    cols = np.empty((C * k * k, xj.data.shape[1]), xj.data.dtype)
    im2col_same(xj.data, k, *_joint_geometry(xj, k), cols)
    if workspace is not None:
        workspace.columns.append(cols)
    y = w.reshape(F, C * k * k) @ cols  # (F, T)
    if b is not None:
        y += b.reshape(F, 1)
    return xj.like(y)


def conv2d_backward_joint(dyj, xj, w, has_bias, need_input_grad, workspace=None,
                          need_weight_grad=True):
    """The backward of ``conv2d_forward_joint``: (dx Joint (C, T) or None, dw (F, C, k, k) or
    None, db (F,) or None); need_weight_grad=False leaves dw and db for a later call."""
    F, C, k, _ = w.shape
    dy = dyj.data  # (F, T)
    db = _bias_gradient(dy) if has_bias and need_weight_grad else None
    plan = workspace.plan if workspace is not None and workspace.plan else _plan(xj, w)
    if plan.algorithm == WINOGRAD:
        return _backward_joint_winograd(dyj, xj, w, need_input_grad, need_weight_grad,
                                        workspace, plan.block) + (db,)
    dw = None
    if need_weight_grad:
        cols = workspace.columns[0] if workspace is not None and workspace.columns else None
        if cols is None:
            cols = np.empty((C * k * k, xj.data.shape[1]), xj.data.dtype)
            im2col_same(xj.data, k, *_joint_geometry(xj, k), cols)
        dw = weight_gradient([(dy, cols)], F, C * k * k, dy.dtype).reshape(w.shape)
    if not need_input_grad:
        return None, dw, db
    dcols = w.reshape(F, C * k * k).T @ dy  # (C*k*k, T)
    dxc = np.zeros((C, dy.shape[1]), dy.dtype)
    col2im_same_add(dcols, k, *_joint_geometry(xj, k), dxc)  # folded without padding
    return xj.like(dxc), dw, db


def _backward_joint_winograd(dyj, xj, w, need_input_grad, need_weight_grad, workspace, m):
    """(dx Joint or None, dw or None) of a Winograd Joint convolution with m x m blocks. An
    input-gradient call without the weight gradient leaves its transformed output gradient
    in the workspace, as (dy, dM), for the later call that computes the weight gradient from
    the same dy (the heads' queued weight gradients: it is not made twice)."""
    dy, n, hws = dyj.data, xj.n, xj.hws
    ws = workspace
    reuse = ws is not None and ws.output_gradient is not None and ws.output_gradient[0] is dy
    dM = ws.output_gradient[1] if reuse else winograd.output_gradients(dy, n, hws, m)
    dx = dw = None
    if need_input_grad:
        U = ws.transformed_filters if ws is not None else None
        dx = xj.like(winograd.conv3x3_backward_input(dy, w, n, hws, m, dM, U=U))
        if not need_weight_grad and ws is not None:
            ws.output_gradient = (dy, dM)
    if need_weight_grad:
        V = ws.transformed if ws is not None else None
        dw = winograd.conv3x3_backward_weight(dy, xj.data, n, hws, m, V, dM)
        if ws is not None:
            ws.output_gradient = None  # done with dM
    return dx, dw


def _bias_gradient(dy):
    """dy (F, T) -> (F,) summed in float64 per output channel, as ``bias_backward``."""
    return dy.sum(axis=1, dtype=np.float64).astype(dy.dtype)
