"""Reference kernels: plain Python loops, slow and obviously right (see ``kernels/__init__.py``).

The teaching oracle: every fast kernel in ``cpu/`` and ``cuda/`` must agree with these.
Each output element is written the way the maths defines it, summing in Python floats
(float64), and the result is returned in the input's dtype. Only for small arrays.
"""

from __future__ import annotations

import math

import numpy as np

from retina_np.kernels.sentinels import BETWEEN_THRESHOLDS


def _out_size(n_in, k, stride, padding):
    return (n_in + 2 * padding - k) // stride + 1


# ----------------------------------------------------------------------------- convolution
def conv2d_forward(x, w, b, stride, padding, workspace=None):
    """y[n,f,oh,ow] = b[f] + sum_{c,i,j} x[n, c, oh*s-p+i, ow*s-p+j] * w[f,c,i,j], zero padding.

    workspace: as in cpu/conv.py; this version keeps nothing in it (nothing is unfolded).
    """
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


def conv2d_backward_input(dy, w, H, W, stride, padding, workspace=None):
    """dx[n,c,h,w] = sum of dy[n,f,oh,ow] * w[f,c,i,j] over each (f, oh, ow, i, j) that read it.

    workspace: as in kernels/cpu/conv.py; not used here.
    """
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


def conv2d_backward_weight(dy, x, kh, kw, stride, padding, workspace=None):
    """dw[f,c,i,j] = sum_{n,oh,ow} dy[n,f,oh,ow] * x[n, c, oh*s-p+i, ow*s-p+j].

    workspace: as in cpu/conv.py; not used here (x is read directly).
    """
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


def batchnorm2d_update_stats(mean, var, count, running_mean, running_var, momentum, eps):
    """invstd = 1/sqrt(var + eps); in place running = (1-momentum)*running + momentum*batch,
    with the unbiased variance var * count / (count - 1) (torch's rule)."""
    invstd = np.zeros(len(mean))
    for c in range(len(mean)):
        v = float(var[c])
        invstd[c] = 1.0 / math.sqrt(v + eps)
        running_mean[c] = (1 - momentum) * float(running_mean[c]) + momentum * float(mean[c])
        running_var[c] = (1 - momentum) * float(running_var[c]) + momentum * v * count / (count - 1)
    return invstd.astype(mean.dtype)


def batchnorm2d_eval_stats(running_mean, running_var, eps):
    """A copy of running_mean, and invstd = 1/sqrt(running_var + eps)."""
    invstd = [1.0 / math.sqrt(float(v) + eps) for v in running_var]
    return running_mean.copy(), np.array(invstd).astype(running_mean.dtype)


def batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False):
    """y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c]; relu: max(y, 0) (the norm and the
    ReLU after it, which the fast kernels do in one pass)."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    xhat = (float(x[n, c, h, w]) - float(mean[c])) * float(invstd[c])
                    y[n, c, h, w] = xhat * float(gamma[c]) + float(beta[c])
    return relu_forward(y.astype(x.dtype)) if relu else y.astype(x.dtype)


def batchnorm2d_backward(dy, x, mean, invstd, gamma, y=None):
    """Training mode, by the chain rule through xhat, var and mean (which depend on all of x).
    y: the output of a forward with relu=True, or None: then dy counts only where y > 0 (the
    ReLU's backward first).

    With M = N*H*W, xc = x - mean, xhat = xc * invstd, var = sum(xc**2)/M, invstd = (var+eps)**-0.5:
    dxhat = dy*gamma; dvar = sum(dxhat*xc) * -invstd**3/2; dmean = -sum(dxhat)*invstd
    (its term through var vanishes, sum(xc) = 0); dx = dxhat*invstd + dvar*2*xc/M + dmean/M.
    """
    if y is not None:
        dy = relu_backward(dy, y)
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


# ----------------------------------------------------------------------------- group norm
def groupnorm_forward(x, gamma, beta, groups, eps, relu=False):
    """Per image n and group g (channels g*C/G .. (g+1)*C/G - 1), over (c, h, w) of the group:
    mean and biased variance; y = (x - mean[n,g]) / sqrt(var[n,g] + eps) * gamma[c] + beta[c];
    relu: max(y, 0).

    Returns y (N, C, H, W), mean (N, G) and invstd = 1 / sqrt(var + eps) (N, G).
    """
    N, C, H, W = x.shape
    Cg = C // groups
    M = Cg * H * W
    y = np.zeros((N, C, H, W))
    mean, invstd = np.zeros((N, groups)), np.zeros((N, groups))
    for n in range(N):
        for g in range(groups):
            sites = [(c, h, w) for c in range(g * Cg, (g + 1) * Cg) for h in range(H)
                     for w in range(W)]
            mu = sum(float(x[n, c, h, w]) for c, h, w in sites) / M
            var = sum((float(x[n, c, h, w]) - mu) ** 2 for c, h, w in sites) / M
            istd = 1.0 / math.sqrt(var + eps)
            mean[n, g], invstd[n, g] = mu, istd
            for c, h, w in sites:
                xhat = (float(x[n, c, h, w]) - mu) * istd
                y[n, c, h, w] = xhat * float(gamma[c]) + float(beta[c])
    y = relu_forward(y.astype(x.dtype)) if relu else y.astype(x.dtype)
    return y, mean.astype(x.dtype), invstd.astype(x.dtype)


def groupnorm_backward(dy, x, mean, invstd, gamma, groups):
    """By the chain rule, as batchnorm2d_backward with a group (n, g) in place of a channel.

    With M = C/G*H*W values per group, xc = x - mean, dxhat = dy * gamma[c]:
    dvar = sum(dxhat*xc) * -invstd**3/2; dmean = -sum(dxhat)*invstd (sums over the group);
    dx = dxhat*invstd + dvar*2*xc/M + dmean/M. gamma and beta are per channel, so
    dgamma[c] = sum over (n, h, w) of dy * xhat and dbeta[c] = sum of dy.
    """
    N, C, H, W = x.shape
    Cg = C // groups
    M = Cg * H * W
    dx, dgamma, dbeta = np.zeros((N, C, H, W)), np.zeros(C), np.zeros(C)
    for n in range(N):
        for g in range(groups):
            sites = [(c, h, w) for c in range(g * Cg, (g + 1) * Cg) for h in range(H)
                     for w in range(W)]
            mu, istd = float(mean[n, g]), float(invstd[n, g])
            dvar, dmean = 0.0, 0.0
            for c, h, w in sites:
                xc, d = float(x[n, c, h, w]) - mu, float(dy[n, c, h, w])
                dgamma[c] += d * xc * istd
                dbeta[c] += d
                dvar += d * float(gamma[c]) * xc * -0.5 * istd**3
                dmean += -d * float(gamma[c]) * istd
            for c, h, w in sites:
                xc = float(x[n, c, h, w]) - mu
                dxhat = float(dy[n, c, h, w]) * float(gamma[c])
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


# ----------------------------------------------------------------------------- head layout
def levels_to_rows(levels, per_anchor):
    """rows[n, r0 + (y*W + x)*A + a, p] = level[n, a*P + p, y, x], r0 = rows of earlier levels."""
    n = levels[0].shape[0]
    blocks = []
    for x in levels:
        _, c, h, w = x.shape
        a_count = c // per_anchor
        block = np.zeros((n, h * w * a_count, per_anchor))
        for i in range(n):
            for a in range(a_count):
                for p in range(per_anchor):
                    for y in range(h):
                        for x_ in range(w):
                            block[i, (y * w + x_) * a_count + a, p] = float(x[i, a * per_anchor + p,
                                                                                y, x_])
        blocks.append(block)
    return np.concatenate(blocks, axis=1).astype(levels[0].dtype)


def rows_to_levels(rows, layout, per_anchor):
    """The inverse of levels_to_rows: level[n, a*P + p, y, x] = rows[n, r0 + (y*W + x)*A + a, p].
    layout: the levels' (H, W)."""
    n = rows.shape[0]
    a_count = rows.shape[1] // sum(h * w for h, w in layout)
    levels, r0 = [], 0
    for h, w in layout:
        x = np.zeros((n, a_count * per_anchor, h, w))
        for i in range(n):
            for a in range(a_count):
                for p in range(per_anchor):
                    for y in range(h):
                        for x_ in range(w):
                            x[i, a * per_anchor + p, y, x_] = float(rows[i, r0 + (y * w + x_)
                                                                         * a_count + a, p])
        levels.append(x.astype(rows.dtype))
        r0 += h * w * a_count
    return levels


# ----------------------------------------------------------------------------- losses
def sum_squares(arrays):
    """The sum of a[i]**2 over every element of every array (a Python float)."""
    return sum(float(v) ** 2 for a in arrays for v in np.asarray(a).reshape(-1))


def focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale=1.0, out=None):
    """Focal loss of one image from per-anchor classes, and grad_scale * its gradient.

    Anchor r of class k >= 0 has target 1 at class k and 0 elsewhere; BELOW_LOW_THRESHOLD
    (background) targets 0 everywhere; BETWEEN_THRESHOLDS (ignored) adds nothing and gets a
    zero gradient. For a logit
    x with target t: p = sigmoid(x), p_t = p if t else 1 - p, m = 1 - p_t, alpha_t = alpha if t
    else 1 - alpha (1 when alpha is None or < 0), FL = -alpha_t m^gamma log(p_t), and
    dFL/dx = alpha_t [(p - t) m^gamma + gamma m^(gamma-1) p (1-p) (1-2t) (-log p_t)].
    Only for moderate logits (|x| < 30): 1 - p is formed by subtraction.
    """
    R, K = logits.shape
    grad = np.zeros((R, K))
    total = 0.0
    for r in range(R):
        if anchor_class[r] == BETWEEN_THRESHOLDS:
            continue
        for k in range(K):
            x, t = float(logits[r, k]), 1.0 if k == anchor_class[r] else 0.0
            p = 1.0 / (1.0 + math.exp(-x))
            p_t = p if t == 1.0 else 1.0 - p
            a_t = 1.0 if alpha is None or alpha < 0 else (alpha if t == 1.0 else 1.0 - alpha)
            ce = -math.log(p_t)
            m = 1.0 - p_t
            total += a_t * m**gamma * ce
            dmod = gamma * m ** (gamma - 1.0) * p * (1.0 - p) * (1.0 - 2.0 * t) if m > 0 else 0.0
            grad[r, k] = grad_scale * a_t * ((p - t) * m**gamma + dmod * ce)
    grad = grad.astype(logits.dtype)
    if out is not None:
        out[...] = grad
        grad = out
    return total, grad


def box_loss_rows(pred, rows, target, beta, divisor, dpred):
    """Smooth-L1 of d = pred[rows[f], c] - target[f, c]: 0.5 d^2 / beta if |d| < beta, else
    |d| - 0.5 beta (beta == 0: |d|); dpred[rows[f], c] = (d / beta or sign(d)) / divisor.
    Returns the loss summed over the rows."""
    total = 0.0
    for f, r in enumerate(rows):
        for c in range(4):
            d = float(pred[r, c]) - float(target[f, c])
            if abs(d) < beta:
                total += 0.5 * d * d / beta
                g = d / beta
            else:
                total += abs(d) - 0.5 * beta
                g = float(np.sign(d))
            dpred[r, c] = g / divisor
    return total
