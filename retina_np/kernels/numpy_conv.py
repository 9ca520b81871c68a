"""A convolution as im2col + one matrix product, in plain NumPy: the step between the loops of
``reference.py`` and the Numba kernels of ``cpu/conv.py``.

Unfold every kh x kw patch of the padded input into a column; the convolution is then one
matrix product of the (F, C*kh*kw) weights with those columns. The backward is two more
products: dw = dy @ columns^T, and d(columns) = w^T @ dy, which col2im adds back onto the
patches they came from (patches overlap, so pixels collect several terms). ``cpu/conv.py``
does exactly this, but unfolds with Numba loops, in tiles, without a padded copy where it
can, and picks Winograd's algorithm where that pays (``cpu/plan.py``).
"""

from __future__ import annotations

import numpy as np


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> columns (C*kh*kw, N*Ho*Wo): column (n, oh, ow) is the patch under
    output (oh, ow) of image n, rows ordered (c, i, j)."""
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((C, kh, kw, N, Ho, Wo), x.dtype)
    for i in range(kh):  # tap (i, j) of every patch: a strided view of the padded input
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] \
                .transpose(1, 0, 2, 3)
    return cols.reshape(C * kh * kw, N * Ho * Wo)


def col2im(dcols, x_shape, kh, kw, stride, padding):
    """The adjoint of ``im2col``: add every column of dcols (C*kh*kw, N*Ho*Wo) back onto its
    patch -> dx (N, C, H, W)."""
    N, C, H, W = x_shape
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    dxp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dcols.dtype)
    d = dcols.reshape(C, kh, kw, N, Ho, Wo)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += \
                d[:, i, j].transpose(1, 0, 2, 3)
    return dxp[:, :, padding:padding + H, padding:padding + W]


def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> y (N, F, Ho, Wo)."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    y = w.reshape(F, -1) @ im2col(x, kh, kw, stride, padding)  # (F, N*Ho*Wo): one GEMM
    if b is not None:
        y += b[:, None]
    return y.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3).copy()


def conv2d_backward(dy, x, w, stride, padding):
    """dy (N, F, Ho, Wo) -> dx (N, C, H, W), dw (F, C, kh, kw), db (F,)."""
    F, C, kh, kw = w.shape
    dy2 = dy.transpose(1, 0, 2, 3).reshape(F, -1)  # (F, N*Ho*Wo), the columns' order
    dw = dy2 @ im2col(x, kh, kw, stride, padding).T  # (F, C*kh*kw)
    dx = col2im(w.reshape(F, -1).T @ dy2, x.shape, kh, kw, stride, padding)
    return dx, dw.reshape(w.shape), dy2.sum(axis=1)
