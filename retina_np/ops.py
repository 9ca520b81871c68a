"""Ops as function pairs: ``y, cache = op_forward(...)`` and ``grads = op_backward(dy, cache)``.

Each backward sits right under its forward and takes the NamedTuple cache its forward made.
The ops check their inputs (raising ``ValueError`` that names the layer and the shapes), make
numpy inputs C-contiguous, and run the kernels that ``backend.kernels_for`` picks for the
arrays: ``kernels.cpu`` for numpy arrays, ``kernels.cuda`` for numba.cuda device arrays.
Shapes use the package's letters: N batch, C/F channels in/out, H/W height/width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from retina_np import backend
from retina_np.kernels.levels import Joint
from retina_np.kernels.workspace import ConvWorkspace

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------- checks
def _contiguous(a):
    """A C-contiguous version of a numpy array (device arrays are left to their kernels)."""
    if a is None or backend.is_device_array(a):
        return a
    return np.ascontiguousarray(a)


def _check_4d(name: str, what: str, a) -> None:
    if len(a.shape) != 4:
        raise ValueError(f"{name}: {what} must be 4-D (N, C, H, W), got shape {tuple(a.shape)}")


def _check_dtypes(name: str, **arrays) -> np.dtype:
    """All given arrays share one float dtype (float32 or float64); returns it."""
    given = {k: np.dtype(a.dtype) for k, a in arrays.items() if a is not None}
    for k, dt in given.items():
        if dt not in FLOAT_DTYPES:
            raise ValueError(f"{name}: {k} must be float32 or float64, got {dt}")
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{k} {dt}" for k, dt in given.items())
        raise ValueError(f"{name}: dtypes differ ({listed})")
    return next(iter(given.values()))


def _check_int(name: str, what: str, v, low: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name}: {what} must be an integer >= {low}, got {v!r}")
    return int(v)


def _check_grad(name: str, dy, shape, dtype) -> None:
    """The upstream gradient has the forward output's shape and dtype."""
    if tuple(dy.shape) != tuple(shape) or np.dtype(dy.dtype) != dtype:
        raise ValueError(
            f"{name}: dy has shape {tuple(dy.shape)} and dtype {dy.dtype}, "
            f"the forward output had {tuple(shape)} and {dtype}"
        )


def _out_size(n_in: int, k: int, stride: int, padding: int) -> int:
    return (n_in + 2 * padding - k) // stride + 1


# ----------------------------------------------------------------------------- conv2d
class Conv2dCache(NamedTuple):
    x: object  # (N, C, H, W) the input, for the weight gradient
    w: object  # (F, C, kh, kw) the weight, for the input gradient
    has_bias: bool
    stride: int
    padding: int
    y_shape: tuple  # (N, F, Ho, Wo)
    name: str
    workspace: ConvWorkspace | None = None  # what the CPU forward kept (training)


def _check_conv(name, x, w, b, stride, padding) -> tuple[int, int]:
    """Checks conv2d's arguments -> (stride, padding) as ints."""
    _check_4d(name, "x", x)
    if len(w.shape) != 4:
        raise ValueError(f"{name}: weight must be 4-D (F, C, kh, kw), got shape {tuple(w.shape)}")
    _check_dtypes(name, x=x, weight=w, bias=b)
    stride = _check_int(name, "stride", stride, 1)
    padding = _check_int(name, "padding", padding, 0)
    N, C, H, W = x.shape
    F, Cw, kh, kw = w.shape
    if C != Cw:
        raise ValueError(
            f"{name}: input has {C} channels (x {tuple(x.shape)}) but the weight expects {Cw} "
            f"(weight {tuple(w.shape)})"
        )
    if b is not None and tuple(b.shape) != (F,):
        raise ValueError(f"{name}: bias must have shape ({F},), got {tuple(b.shape)}")
    if kh > H + 2 * padding or kw > W + 2 * padding:
        raise ValueError(
            f"{name}: kernel {kh}x{kw} is larger than the padded input "
            f"{H + 2 * padding}x{W + 2 * padding} (x {tuple(x.shape)}, padding {padding})"
        )
    return stride, padding


def conv2d_forward(x, w, b, stride=1, padding=0, name="conv2d", keep_workspace=False):
    """Cross-correlation with zero padding, as torch's conv2d.

    Args:
        x (N, C, H, W), w (F, C, kh, kw), b (F,) or None; float32 or float64, one dtype.
        keep_workspace: let the kernel keep what the weight gradient reuses (its unfolded or
            transformed x) in the cache (training; costs memory, capped by
            ``kernels.options``' keep_max_elements).
    Returns:
        y (N, F, Ho, Wo) with Ho = (H + 2*padding - kh) // stride + 1, and the cache.
    """
    stride, padding = _check_conv(name, x, w, b, stride, padding)
    x, w, b = _contiguous(x), _contiguous(w), _contiguous(b)
    workspace = ConvWorkspace() if keep_workspace else None
    y = backend.kernels_for(x, w, b).conv2d_forward(x, w, b, stride, padding, workspace)
    return y, Conv2dCache(x, w, b is not None, stride, padding, tuple(y.shape), name, workspace)


def conv2d_backward(dy, cache: Conv2dCache, need_input_grad=True, need_weight_grad=True):
    """dy (N, F, Ho, Wo) -> dx (N, C, H, W) or None, dw (F, C, kh, kw), db (F,) or None;
    need_weight_grad=False gives dw = db = None (to be computed by a later call)."""
    x, w = cache.x, cache.w
    _check_grad(cache.name, dy, cache.y_shape, np.dtype(x.dtype))
    dy = _contiguous(dy)
    k = backend.kernels_for(dy, x, w)
    _, _, H, W = x.shape
    _, _, kh, kw = w.shape
    dx = (
        k.conv2d_backward_input(dy, w, H, W, cache.stride, cache.padding, cache.workspace)
        if need_input_grad
        else None
    )
    if not need_weight_grad:
        return dx, None, None
    dw = k.conv2d_backward_weight(dy, x, kh, kw, cache.stride, cache.padding,
                                  cache.workspace)
    db = k.bias_backward(dy) if cache.has_bias else None
    return dx, dw, db


# ----------------------------------------------------------------------------- conv2d on levels
class Conv2dLevelsCache(NamedTuple):
    xs: list  # the inputs, one (N, C, H_l, W_l) per level
    w: object  # (F, C, kh, kw)
    has_bias: bool
    stride: int
    padding: int
    y_shapes: list  # (N, F, Ho_l, Wo_l) per level
    name: str


def conv2d_levels_forward(xs, w, b, stride=1, padding=0, name="conv2d"):
    """The same convolution (one w, one b) of every input in the list xs, as the heads apply
    theirs to every pyramid level: ``[conv2d_forward(x, ...)[0] for x in xs]``, computed
    level by level (the heads use it where a Joint of the levels would be too large).

    Args:
        xs: a non-empty list of (N, C, H_l, W_l), one N, C and dtype; w, b, stride, padding
            as for ``conv2d_forward``.
    Returns:
        the list of y_l (N, F, Ho_l, Wo_l), and the cache.
    """
    if not xs:
        raise ValueError(f"{name}: no inputs")
    for x in xs:
        stride, padding = _check_conv(name, x, w, b, stride, padding)
        if tuple(x.shape[:2]) != tuple(xs[0].shape[:2]) or x.dtype != xs[0].dtype:
            raise ValueError(
                f"{name}: every level needs the same batch size, channels and dtype, got "
                + ", ".join(f"{tuple(a.shape)} {a.dtype}" for a in xs)
            )
    xs = [_contiguous(x) for x in xs]
    w, b = _contiguous(w), _contiguous(b)
    ys = backend.kernels_for(*xs, w, b).conv2d_forward_levels(xs, w, b, stride, padding)
    shapes = [tuple(y.shape) for y in ys]
    return ys, Conv2dLevelsCache(xs, w, b is not None, stride, padding, shapes, name)


def conv2d_levels_backward(dys, cache: Conv2dLevelsCache, need_input_grad=True):
    """dys, one (N, F, Ho_l, Wo_l) per level -> dxs (list) or None, dw (F, C, kh, kw) and db
    (F,) or None, both summed over the levels."""
    if len(dys) != len(cache.xs):
        raise ValueError(f"{cache.name}: {len(dys)} gradients for {len(cache.xs)} levels")
    for dy, shape in zip(dys, cache.y_shapes):
        _check_grad(cache.name, dy, shape, np.dtype(cache.w.dtype))
    dys = [_contiguous(dy) for dy in dys]
    k = backend.kernels_for(*dys, cache.w)
    return k.conv2d_backward_levels(dys, cache.xs, cache.w, cache.stride, cache.padding,
                                    cache.has_bias, need_input_grad)


# ----------------------------------------------------------------------------- ... on a Joint
# On the CPU the heads keep every pyramid level in one channel-major matrix (a ``Joint``,
# kernels/levels.py; made by the kernels' ``join_levels``), so that each layer is one call for
# all five levels. The heads' convolutions are "same" ones (3x3, stride 1, padding 1): their
# output has the levels of their input.
class Conv2dJointCache(NamedTuple):
    x: Joint  # the input (C, T)
    w: object  # (F, C, k, k)
    has_bias: bool
    name: str
    workspace: ConvWorkspace | None = None  # what the CPU forward kept (training)


def conv2d_joint_forward(xj: Joint, w, b, stride=1, padding=1, name="conv2d",
                         keep_workspace=False):
    """``conv2d_levels_forward`` of every level of a Joint at once -> (y Joint (F, T), cache).
    Only "same" convolutions: stride 1 and padding (k - 1) / 2."""
    F, C, kh, kw = w.shape
    if stride != 1 or kh != kw or kh != 2 * padding + 1:
        raise ValueError(f"{name}: a Joint of levels takes only stride-1 convolutions with "
                         f"padding (k-1)/2, got w {tuple(w.shape)}, stride {stride}, "
                         f"padding {padding}")
    if xj.data.shape[0] != C:
        raise ValueError(f"{name}: the levels have {xj.data.shape[0]} channels and w "
                         f"{tuple(w.shape)} takes {C}")
    _check_dtypes(name, x=xj.data, weight=w, bias=b)
    if b is not None and tuple(b.shape) != (F,):
        raise ValueError(f"{name}: bias must have shape ({F},), got {tuple(b.shape)}")
    w, b = _contiguous(w), _contiguous(b)
    workspace = ConvWorkspace() if keep_workspace else None
    y = backend.kernels_for(xj.data, w, b).conv2d_forward_joint(xj, w, b, workspace)
    return y, Conv2dJointCache(xj, w, b is not None, name, workspace)


def conv2d_joint_backward(dyj: Joint, cache: Conv2dJointCache, need_input_grad=True,
                          need_weight_grad=True):
    """dy Joint (F, T) -> (dx Joint (C, T) or None, dw (F, C, k, k), db (F,) or None);
    need_weight_grad=False gives dw = db = None (to be computed by a later call)."""
    F, T = cache.w.shape[0], cache.x.data.shape[1]
    _check_grad(cache.name, dyj.data, (F, T), np.dtype(cache.w.dtype))
    if dyj.hws != cache.x.hws or dyj.n != cache.x.n:
        raise ValueError(f"{cache.name}: dy has levels {dyj.hws} of {dyj.n} images, the "
                         f"forward had {cache.x.hws} of {cache.x.n}")
    k = backend.kernels_for(dyj.data, cache.w)
    return k.conv2d_backward_joint(dyj, cache.x, cache.w, cache.has_bias, need_input_grad,
                                   cache.workspace, need_weight_grad)


class GroupNormJointCache(NamedTuple):
    x: Joint  # (C, T)
    mean: object  # (levels * N, G) per (level, image) and group
    invstd: object  # (levels * N, G)
    gamma: object  # (C,)
    groups: int
    name: str
    y: Joint | None = None  # the output, where the forward applied the ReLU after the norm


def groupnorm_joint_forward(xj: Joint, gamma, beta, groups, eps=1e-5, name="groupnorm",
                            relu=False):
    """``groupnorm_forward`` of every level of a Joint at once: each image's group on each
    level is normalised by its own statistics -> (y Joint (C, T), cache)."""
    groups = _check_groupnorm(name, xj.data, gamma, beta, groups)
    gamma, beta = _contiguous(gamma), _contiguous(beta)
    y, mean, invstd = backend.kernels_for(xj.data, gamma, beta).groupnorm_forward_joint(
        xj, gamma, beta, groups, float(eps), bool(relu))
    return y, GroupNormJointCache(xj, mean, invstd, gamma, groups, name, y if relu else None)


def groupnorm_joint_backward(dyj: Joint, cache: GroupNormJointCache):
    """dy Joint (C, T) -> (dx Joint (C, T), dgamma (C,), dbeta (C,))."""
    xj = cache.x
    _check_grad(cache.name, dyj.data, xj.data.shape, np.dtype(xj.data.dtype))
    k = backend.kernels_for(dyj.data, xj.data)
    if cache.y is not None:  # the ReLU the forward ended in: its backward first
        dyj = dyj.like(k.relu_backward(dyj.data, cache.y.data))
    return k.groupnorm_backward_joint(dyj, xj, cache.mean, cache.invstd, cache.gamma,
                                      cache.groups)


# ----------------------------------------------------------------------------- batchnorm2d
class BatchNorm2dCache(NamedTuple):
    x: object  # (N, C, H, W)
    mean: object  # (C,) the statistics that normalised x: batch ones or running ones
    invstd: object  # (C,) 1 / sqrt(var + eps)
    gamma: object  # (C,)
    training: bool  # batch statistics (their gradient flows into x) or fixed running ones
    name: str
    # the output, where the forward applied the ReLU after the norm; the backward runs the
    # ReLU's backward as its own pass first (masking dy inside the norms' loops made them read
    # and write the same memory, which kept LLVM from vectorising them: 0.59 -> 0.90 ms for
    # the heads' group norm backward)
    y: object = None
    # synchronised batch norm (distributed.sync_batch_norm): the function that sums an array
    # over every rank, and the number of values per channel in the whole batch
    allreduce: object = None
    count: int = 0


def _like(values: np.ndarray, ref):
    """`values` in ref's dtype, on ref's device."""
    values = values.astype(ref.dtype)
    return backend.to_device(values, "cuda") if backend.is_device_array(ref) else values


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, training, momentum=0.1,
                        eps=1e-5, name="batchnorm2d", relu=False, allreduce=None):
    """Batch normalisation per channel over (N, H, W), as torch's batch_norm.

    training: normalise with the batch mean and biased variance, and update the running
    statistics IN PLACE: running = (1 - momentum) * running + momentum * batch, with the
    unbiased variance. Otherwise normalise with the running statistics.
    Args:
        x (N, C, H, W); gamma, beta, running_mean, running_var (C,); one float dtype.
        relu: apply the ReLU that follows the norm in the same pass: y = max(y, 0).
        allreduce: None, or a function that sums a float64 host array over every rank of a
            data-parallel job (``distributed.Communicator.allreduce_sum``): in training mode
            the statistics are then those of the whole batch, every rank's x together
            (synchronised batch norm), and the backward's two per-channel sums as well.
    Returns:
        y (N, C, H, W) = (x - mean) / sqrt(var + eps) * gamma + beta, and the cache.
    """
    _check_4d(name, "x", x)
    _check_dtypes(name, x=x, weight=gamma, bias=beta, running_mean=running_mean,
                  running_var=running_var)
    N, C, H, W = x.shape
    for what, v in (("weight", gamma), ("bias", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if tuple(v.shape) != (C,):
            raise ValueError(f"{name}: {what} must have shape ({C},) for x {tuple(x.shape)}, "
                             f"got {tuple(v.shape)}")
    x, gamma, beta = _contiguous(x), _contiguous(gamma), _contiguous(beta)
    k = backend.kernels_for(x, gamma, beta, running_mean, running_var)
    if training:
        M = N * H * W
        if M < 2:
            raise ValueError(f"{name}: training needs more than one value per channel, "
                             f"got x {tuple(x.shape)}")
        # the (C,) statistics stay where x is: no copy to the host in a GPU training step
        mean, var = k.batchnorm2d_stats(x)
        if allreduce is not None:
            mean, var, M = _whole_batch_stats(mean, var, M, allreduce)
        invstd = k.batchnorm2d_update_stats(mean, var, M, running_mean, running_var,
                                            float(momentum), float(eps))
    else:
        mean, invstd = k.batchnorm2d_eval_stats(running_mean, running_var, float(eps))
        allreduce = None  # constant statistics: nothing to share
    y = k.batchnorm2d_forward(x, mean, invstd, gamma, beta, bool(relu))
    return y, BatchNorm2dCache(x, mean, invstd, gamma, bool(training), name,
                               y if relu else None, allreduce, M if training else 0)


def _whole_batch_stats(mean, var, count, allreduce):
    """This rank's mean and biased var (C,) of ``count`` values per channel -> the mean, var
    and count of every rank's values together.

    One allreduce of the per-channel sums and sums of squares, in float64:
    sum x = count * mean, sum x^2 = count * (var + mean^2), then var = E[x^2] - E[x]^2. The
    subtraction loses about log10(mean^2 / var) of float64's 16 digits: nothing that shows in
    float32 activations (docs/architecture.md, "Data parallelism").
    """
    m, v = backend.to_numpy(mean).astype(np.float64), backend.to_numpy(var).astype(np.float64)
    sums = allreduce(np.concatenate([count * m, count * (v + m * m), [float(count)]]))
    C = m.shape[0]
    total = sums[-1]
    whole_mean = sums[:C] / total
    whole_var = np.maximum(sums[C:2 * C] / total - whole_mean * whole_mean, 0.0)
    return _like(whole_mean, mean), _like(whole_var, var), int(round(total))


def batchnorm2d_backward(dy, cache: BatchNorm2dCache):
    """dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,).

    In eval mode the statistics are constants and the layer is the affine map
    x * invstd*gamma + const, so dx = dy * invstd * gamma. After a forward with relu, dy
    counts only where the output is positive.
    """
    x = cache.x
    _check_grad(cache.name, dy, x.shape, np.dtype(x.dtype))
    dy = _contiguous(dy)
    k = backend.kernels_for(dy, x)
    y = cache.y  # the ReLU the forward ended in: the kernel counts dy only where y > 0
    if y is not None and not cache.training:  # the affine map's dx below needs dy masked
        dy, y = k.relu_backward(dy, y), None
    dx, dgamma, dbeta = k.batchnorm2d_backward(dy, x, cache.mean, cache.invstd, cache.gamma, y)
    if not cache.training:
        # dgamma and dbeta are the same in both modes; dx is the affine map's, which is the
        # forward kernel with a zero mean and a zero shift.
        zeros = _like(np.zeros(x.shape[1]), x)
        dx = k.batchnorm2d_forward(dy, zeros, cache.invstd, cache.gamma, zeros)
    elif cache.allreduce is not None:
        dx = k.add_forward(dx, _whole_batch_correction(k, x, cache, dgamma, dbeta))
    # dgamma and dbeta stay this rank's: the gradient average adds the ranks' shares
    return dx, dgamma, dbeta


def _whole_batch_correction(k, x, cache: BatchNorm2dCache, dgamma, dbeta):
    """What to add to this rank's dx when the statistics were the whole batch's.

    dx = gamma*invstd * (dy - mean(dy) - xhat * mean(dy*xhat)), the means over the whole
    batch: the mean and the variance depend on every rank's x. The kernel took the means over
    this rank's values (sum dy = dbeta, sum dy*xhat = dgamma, over its count m); with M the
    count of the whole batch, the difference is an affine map of x per channel:
    gamma*invstd * ((dbeta/m - S0/M) + xhat * (dgamma/m - S1/M)), S0 and S1 the allreduced
    sums. The kernel that applies it is the forward's (x - mean) * invstd * a + b.
    """
    d_beta, d_gamma = (backend.to_numpy(a).astype(np.float64) for a in (dbeta, dgamma))
    C = d_beta.shape[0]
    m = x.shape[0] * x.shape[2] * x.shape[3]
    sums = cache.allreduce(np.concatenate([d_beta, d_gamma]))
    scale = backend.to_numpy(cache.gamma).astype(np.float64) * backend.to_numpy(
        cache.invstd).astype(np.float64)
    a = scale * (d_gamma / m - sums[C:] / cache.count)
    b = scale * (d_beta / m - sums[:C] / cache.count)
    return k.batchnorm2d_forward(x, cache.mean, cache.invstd, _like(a, x), _like(b, x))


# ----------------------------------------------------------------------------- groupnorm
class GroupNormCache(NamedTuple):
    x: object  # (N, C, H, W)
    mean: object  # (N, G) per image and group
    invstd: object  # (N, G) 1 / sqrt(var + eps)
    gamma: object  # (C,)
    groups: int
    name: str
    y: object = None  # the output, where the forward applied the ReLU after the norm


def _check_groupnorm(name, x, gamma, beta, groups) -> int:
    """One float dtype, groups an integer >= 1 dividing x's channels (axis 1 of (N, C, H, W),
    axis 0 of a Joint's (C, T)), gamma and beta of shape (C,); returns groups."""
    _check_dtypes(name, x=x, weight=gamma, bias=beta)
    groups = _check_int(name, "groups", groups, 1)
    C = x.shape[1] if len(x.shape) == 4 else x.shape[0]
    if C % groups:
        raise ValueError(f"{name}: {C} channels (x {tuple(x.shape)}) cannot be split into "
                         f"{groups} groups")
    for what, v in (("weight", gamma), ("bias", beta)):
        if tuple(v.shape) != (C,):
            raise ValueError(f"{name}: {what} must have shape ({C},) for x {tuple(x.shape)}, "
                             f"got {tuple(v.shape)}")
    return groups


def groupnorm_forward(x, gamma, beta, groups, eps=1e-5, name="groupnorm", relu=False):
    """Group normalisation (Wu & He 2018), as torch's group_norm.

    The C channels are split into ``groups`` groups of C/G consecutive channels; each image's
    group is normalised by its own mean and biased variance over (C/G, H, W), then scaled
    and shifted per channel. No batch statistics: training and eval compute the same thing.
    Args:
        x (N, C, H, W); gamma, beta (C,); one float dtype; C divisible by groups.
        relu: apply the ReLU that follows the norm in the same pass: y = max(y, 0).
    Returns:
        y (N, C, H, W) = (x - mean[n, g]) / sqrt(var[n, g] + eps) * gamma + beta, and the cache.
    """
    _check_4d(name, "x", x)
    groups = _check_groupnorm(name, x, gamma, beta, groups)
    N, C, H, W = x.shape
    if N * C * H * W == 0:
        raise ValueError(f"{name}: x {tuple(x.shape)} has no values to normalise")
    x, gamma, beta = _contiguous(x), _contiguous(gamma), _contiguous(beta)
    y, mean, invstd = backend.kernels_for(x, gamma, beta).groupnorm_forward(
        x, gamma, beta, groups, float(eps), bool(relu))
    return y, GroupNormCache(x, mean, invstd, gamma, groups, name, y if relu else None)


def groupnorm_backward(dy, cache: GroupNormCache):
    """dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    x = cache.x
    _check_grad(cache.name, dy, x.shape, np.dtype(x.dtype))
    dy = _contiguous(dy)
    k = backend.kernels_for(dy, x)
    if cache.y is not None:  # the ReLU the forward ended in: its backward first
        dy = k.relu_backward(dy, cache.y)
    return k.groupnorm_backward(dy, x, cache.mean, cache.invstd, cache.gamma, cache.groups)


# ----------------------------------------------------------------------------- relu
class ReluCache(NamedTuple):
    y: object  # the output: positive exactly where the gradient passes


def relu_forward(x):
    """y = max(x, 0), any shape."""
    _check_dtypes("relu", x=x)
    x = _contiguous(x)
    y = backend.kernels_for(x).relu_forward(x)
    return y, ReluCache(y)


def relu_backward(dy, cache: ReluCache):
    """dx = dy where y > 0, else 0."""
    _check_grad("relu", dy, cache.y.shape, np.dtype(cache.y.dtype))
    dy = _contiguous(dy)
    return backend.kernels_for(dy, cache.y).relu_backward(dy, cache.y)


# ----------------------------------------------------------------------------- maxpool2d
class MaxPool2dCache(NamedTuple):
    argmax: object  # (N, C, Ho, Wo) int64, h*W + w of each window's maximum
    x_shape: tuple  # (N, C, H, W)
    dtype: np.dtype
    name: str


def maxpool2d_forward(x, kernel_size=3, stride=2, padding=1, name="maxpool2d"):
    """Max over k x k windows; padding is -inf (never the max), as torch's max_pool2d.

    x (N, C, H, W) -> y (N, C, Ho, Wo), Ho = (H + 2*padding - k) // stride + 1, and the cache.
    Ties go to the first maximum in row-major window order.
    """
    _check_4d(name, "x", x)
    dtype = _check_dtypes(name, x=x)
    k = _check_int(name, "kernel_size", kernel_size, 1)
    stride = _check_int(name, "stride", stride, 1)
    padding = _check_int(name, "padding", padding, 0)
    if padding > k // 2:  # else a window could lie entirely in the padding
        raise ValueError(f"{name}: padding {padding} is more than half the kernel size {k}")
    N, C, H, W = x.shape
    if k > H + 2 * padding or k > W + 2 * padding:
        raise ValueError(f"{name}: kernel {k}x{k} is larger than the padded input "
                         f"{H + 2 * padding}x{W + 2 * padding} (x {tuple(x.shape)})")
    x = _contiguous(x)
    y, argmax = backend.kernels_for(x).maxpool2d_forward(x, k, stride, padding)
    return y, MaxPool2dCache(argmax, tuple(x.shape), dtype, name)


def maxpool2d_backward(dy, cache: MaxPool2dCache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W); each window's gradient goes to its maximum."""
    _check_grad(cache.name, dy, cache.argmax.shape, cache.dtype)
    dy = _contiguous(dy)
    H, W = cache.x_shape[2:]
    return backend.kernels_for(dy, cache.argmax).maxpool2d_backward(dy, cache.argmax, H, W)


# ----------------------------------------------------------------------------- upsample
class UpsampleCache(NamedTuple):
    x_shape: tuple  # (N, C, H, W)
    dtype: np.dtype


def upsample_nearest_forward(x, out_hw, name="upsample_nearest"):
    """Nearest-neighbour resize to out_hw = (Ho, Wo); src = floor(dst * H / Ho), as torch's
    interpolate(mode="nearest"). x (N, C, H, W) -> y (N, C, Ho, Wo), and the cache."""
    _check_4d(name, "x", x)
    dtype = _check_dtypes(name, x=x)
    if len(out_hw) != 2:
        raise ValueError(f"{name}: out_hw must be (Ho, Wo), got {out_hw!r}")
    Ho = _check_int(name, "output height", out_hw[0], 1)
    Wo = _check_int(name, "output width", out_hw[1], 1)
    x = _contiguous(x)
    y = backend.kernels_for(x).upsample_nearest_forward(x, Ho, Wo)
    return y, UpsampleCache(tuple(x.shape), dtype)


def upsample_nearest_backward(dy, cache: UpsampleCache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each input pixel sums the outputs copied from it."""
    N, C, H, W = cache.x_shape
    if len(dy.shape) != 4 or tuple(dy.shape[:2]) != (N, C) or np.dtype(dy.dtype) != cache.dtype:
        raise ValueError(f"upsample_nearest: dy {tuple(dy.shape)} {dy.dtype} does not fit "
                         f"the input {cache.x_shape} {cache.dtype}")
    dy = _contiguous(dy)
    return backend.kernels_for(dy).upsample_nearest_backward(dy, H, W)


# ----------------------------------------------------------------------------- add
class AddCache(NamedTuple):
    shape: tuple
    dtype: np.dtype


def add_forward(a, b, name="add"):
    """y = a + b for two arrays of one shape and dtype (no broadcasting)."""
    dtype = _check_dtypes(name, a=a, b=b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = _contiguous(a), _contiguous(b)
    y = backend.kernels_for(a, b).add_forward(a, b)
    return y, AddCache(tuple(a.shape), dtype)


def add_backward(dy, cache: AddCache):
    """dy -> (da, db) = (dy, dy): the same array twice, not copies; do not write into them."""
    _check_grad("add", dy, cache.shape, cache.dtype)
    return dy, dy
