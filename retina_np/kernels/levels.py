"""``conv2d_forward_levels`` / ``conv2d_backward_levels`` computed level by level, for any
kernel module ``k`` (``kernels.cpu`` or ``kernels.cuda``): one call of the single-input
kernels per pyramid level, the weight and bias gradients summed over the levels.

The CUDA kernels use these as they are (a level is one launch of the implicit GEMM, which
builds no matrix); ``kernels/cpu.py`` joins the levels into one GEMM instead and falls back on
these where the joint unfolded matrix would be too large.
"""

from __future__ import annotations


def conv2d_forward_by_level(k, xs, w, b, stride, padding):
    """xs: list of (N, C, H_l, W_l) -> list of (N, F, Ho_l, Wo_l)."""
    return [k.conv2d_forward(x, w, b, stride, padding) for x in xs]


def conv2d_backward_by_level(k, dys, xs, w, stride, padding, has_bias, need_input_grad):
    """-> (dxs or None, dw (F, C, kh, kw), db (F,) or None); dw and db summed over the levels."""
    _, _, kh, kw = w.shape
    dxs = [] if need_input_grad else None
    dw = db = None
    for dy, x in zip(dys, xs):
        dw_level = k.conv2d_backward_weight(dy, x, kh, kw, stride, padding)
        dw = dw_level if dw is None else k.add_inplace_(dw, dw_level)
        if has_bias:
            db_level = k.bias_backward(dy)
            db = db_level if db is None else k.add_inplace_(db, db_level)
        if need_input_grad:
            dxs.append(k.conv2d_backward_input(dy, w, x.shape[2], x.shape[3], stride, padding))
    return dxs, dw, db
