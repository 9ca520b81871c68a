"""``conv2d_forward_levels`` / ``conv2d_backward_levels`` computed level by level, for any
kernel module ``k`` (``kernels.cpu`` or ``kernels.cuda``): one call of the single-input
kernels per pyramid level, the weight and bias gradients summed over the levels.

The CUDA kernels use these as they are (a level is one launch of the implicit GEMM, which
builds no matrix); ``kernels/cpu/`` joins the levels into one matrix, a Joint, and falls back on
these where the joint unfolded matrix would be too large.
"""

from __future__ import annotations

from typing import NamedTuple


class Joint(NamedTuple):
    """The feature maps of several pyramid levels in one channel-major matrix (``kernels.cpu``
    keeps the heads' activations this way, so that a layer is one call for every level).

    data (C, T): column block l holds level l, images one after another, each image's pixels
    in row-major order: level l of image n is ``data[:, starts[l] + n*H*W : ... + H*W]``, with
    starts[l] = n_images * (sum of H*W over the levels before l).
    """

    data: object  # (C, T)
    n: int  # images
    hws: tuple  # ((H_l, W_l), ...) per level

    @property
    def starts(self) -> list[int]:
        """Column offsets of the levels, (levels + 1) of them."""
        starts = [0]
        for h, w in self.hws:
            starts.append(starts[-1] + self.n * h * w)
        return starts

    def like(self, data) -> Joint:
        """Other data (rows, T) with this one's levels."""
        return Joint(data, self.n, self.hws)


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
