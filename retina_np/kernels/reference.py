"""Reference kernels: plain Python loops, slow and obviously right (see ``kernels/__init__.py``).

The teaching oracle: every fast kernel in ``cpu.py`` and ``cuda.py`` must agree with these.
Each output element is written the way the maths defines it, summing in Python floats
(float64), and the result is returned in the input's dtype. Only for small arrays.
"""

from __future__ import annotations

import math

import numpy as np


def _out_size(n_in, k, stride, padding):
    return (n_in + 2 * padding - k) // stride + 1


# ----------------------------------------------------------------------------- convolution
def conv2d_forward(x, w, b, stride, padding):
    """y[n,f,oh,ow] = b[f] + sum_{c,i,j} x[n, c, oh*s-p+i, ow*s-p+j] * w[f,c,i,j], zero padding."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = _out_size(H, kh, stride, padding), _out_size(W, kw, stride, padding)
    y = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for oh in range(Ho):
                for ow in range(Wo):
                    total = 0.0 if b is None else float(b[f])
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                h, w_ = oh * stride - padding + i, ow * stride - padding + j
                                if 0 <= h < H and 0 <= w_ < W:  # outside: a padding zero
                                    total += float(x[n, c, h, w_]) * float(w[f, c, i, j])
                    y[n, f, oh, ow] = total
    return y.astype(x.dtype)


def conv2d_backward_input(dy, w, H, W, stride, padding):
    """dx[n,c,h,w] = sum of dy[n,f,oh,ow] * w[f,c,i,j] over each (f, oh, ow, i, j) that read it."""
    N, F, Ho, Wo = dy.shape
    _, C, kh, kw = w.shape
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for f in range(F):
            for oh in range(Ho):
                for ow in range(Wo):
                    g = float(dy[n, f, oh, ow])
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                h, w_ = oh * stride - padding + i, ow * stride - padding + j
                                if 0 <= h < H and 0 <= w_ < W:
                                    dx[n, c, h, w_] += g * float(w[f, c, i, j])
    return dx.astype(dy.dtype)


def conv2d_backward_weight(dy, x, kh, kw, stride, padding):
    """dw[f,c,i,j] = sum_{n,oh,ow} dy[n,f,oh,ow] * x[n, c, oh*s-p+i, ow*s-p+j]."""
    N, F, Ho, Wo = dy.shape
    C, H, W = x.shape[1:]
    dw = np.zeros((F, C, kh, kw))
    for f in range(F):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    total = 0.0
                    for n in range(N):
                        for oh in range(Ho):
                            for ow in range(Wo):
                                h, w_ = oh * stride - padding + i, ow * stride - padding + j
                                if 0 <= h < H and 0 <= w_ < W:
                                    total += float(dy[n, f, oh, ow]) * float(x[n, c, h, w_])
                    dw[f, c, i, j] = total
    return dw.astype(dy.dtype)


def bias_backward(dy):
    """db[f] = sum_{n,oh,ow} dy[n,f,oh,ow]: every output of channel f adds b[f] once."""
    N, F, Ho, Wo = dy.shape
    db = np.zeros(F)
    for f in range(F):
        for n in range(N):
            for oh in range(Ho):
                for ow in range(Wo):
                    db[f] += float(dy[n, f, oh, ow])
    return db.astype(dy.dtype)


# ----------------------------------------------------------------------------- batch norm
def batchnorm2d_stats(x):
    """Per channel c over (n, h, w): mean and the biased variance (divide by N*H*W)."""
    N, C, H, W = x.shape
    M = N * H * W
    mean, var = np.zeros(C), np.zeros(C)
    for c in range(C):
        values = [float(x[n, c, h, w]) for n in range(N) for h in range(H) for w in range(W)]
        mean[c] = sum(values) / M
        var[c] = sum((v - mean[c]) ** 2 for v in values) / M
    return mean.astype(x.dtype), var.astype(x.dtype)


def batchnorm2d_forward(x, mean, invstd, gamma, beta):
    """y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c]."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    xhat = (float(x[n, c, h, w]) - float(mean[c])) * float(invstd[c])
                    y[n, c, h, w] = xhat * float(gamma[c]) + float(beta[c])
    return y.astype(x.dtype)


def batchnorm2d_backward(dy, x, mean, invstd, gamma):
    """Training mode, by the chain rule through xhat, var and mean (which depend on all of x).

    With M = N*H*W, xc = x - mean, xhat = xc * invstd, var = sum(xc**2)/M, invstd = (var+eps)**-0.5:
    dxhat = dy*gamma; dvar = sum(dxhat*xc) * -invstd**3/2; dmean = -sum(dxhat)*invstd
    (its term through var vanishes, sum(xc) = 0); dx = dxhat*invstd + dvar*2*xc/M + dmean/M.
    """
    N, C, H, W = x.shape
    M = N * H * W
    dx, dgamma, dbeta = np.zeros((N, C, H, W)), np.zeros(C), np.zeros(C)
    sites = [(n, h, w) for n in range(N) for h in range(H) for w in range(W)]
    for c in range(C):
        mu, istd, g = float(mean[c]), float(invstd[c]), float(gamma[c])
        dvar, dmean = 0.0, 0.0
        for n, h, w in sites:
            xc, d = float(x[n, c, h, w]) - mu, float(dy[n, c, h, w])
            dgamma[c] += d * xc * istd
            dbeta[c] += d
            dvar += d * g * xc * -0.5 * istd**3
            dmean += -d * g * istd
        for n, h, w in sites:
            xc = float(x[n, c, h, w]) - mu
            dxhat = float(dy[n, c, h, w]) * g
            dx[n, c, h, w] = dxhat * istd + dvar * 2.0 * xc / M + dmean / M
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# ----------------------------------------------------------------------------- elementwise
def relu_forward(x):
    """y = max(x, 0)."""
    y = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        y[idx] = max(float(x[idx]), 0.0)
    return y.astype(x.dtype)


def relu_backward(dy, y):
    """dx = dy where the output was positive, else 0 (the derivative at 0 is taken as 0)."""
    dx = np.zeros(dy.shape)
    for idx in np.ndindex(dy.shape):
        dx[idx] = float(dy[idx]) if y[idx] > 0 else 0.0
    return dx.astype(dy.dtype)


def add_forward(a, b):
    """y = a + b, elementwise, same shapes."""
    y = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
        y[idx] = float(a[idx]) + float(b[idx])
    return y.astype(a.dtype)


# ----------------------------------------------------------------------------- max pooling
def maxpool2d_forward(x, k, stride, padding):
    """Max over each k x k window (padding is -inf); argmax = h*W + w of the first maximum."""
    N, C, H, W = x.shape
    Ho, Wo = _out_size(H, k, stride, padding), _out_size(W, k, stride, padding)
    y = np.zeros((N, C, Ho, Wo))
    argmax = np.zeros((N, C, Ho, Wo), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    best, best_at = -math.inf, -1
                    for i in range(k):
                        for j in range(k):
                            h, w = oh * stride - padding + i, ow * stride - padding + j
                            if 0 <= h < H and 0 <= w < W and (best_at < 0 or x[n, c, h, w] > best):
                                best, best_at = float(x[n, c, h, w]), h * W + w
                    y[n, c, oh, ow], argmax[n, c, oh, ow] = best, best_at
    return y.astype(x.dtype), argmax


def maxpool2d_backward(dy, argmax, H, W):
    """Each window's gradient goes to the input position that was its maximum."""
    N, C, Ho, Wo = dy.shape
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    h, w = divmod(int(argmax[n, c, oh, ow]), W)
                    dx[n, c, h, w] += float(dy[n, c, oh, ow])
    return dx.astype(dy.dtype)


# ----------------------------------------------------------------------------- upsampling
def upsample_nearest_forward(x, Ho, Wo):
    """y[n,c,oh,ow] = x[n, c, floor(oh*H/Ho), floor(ow*W/Wo)] (torch's mode="nearest")."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    y[n, c, oh, ow] = float(x[n, c, oh * H // Ho, ow * W // Wo])
    return y.astype(x.dtype)


def upsample_nearest_backward(dy, H, W):
    """dx[n,c,h,w] = sum of dy over the output pixels that copied x[n,c,h,w]."""
    N, C, Ho, Wo = dy.shape
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    dx[n, c, oh * H // Ho, ow * W // Wo] += float(dy[n, c, oh, ow])
    return dx.astype(dy.dtype)
