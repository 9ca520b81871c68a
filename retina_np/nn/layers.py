"""Layers: thin classes over the op pairs in ``retina_np.ops``.

Each ``forward`` keeps the op's cache (training mode); each ``backward`` returns the input
gradient and ADDS parameter gradients into ``Parameter.grad``.
"""

from __future__ import annotations

import numpy as np

from retina_np import backend, ops
from retina_np.kernels.levels import Joint
from retina_np.nn import init
from retina_np.nn.module import Module, Parameter


def _accumulate(param: Parameter, grad) -> None:
    if backend.is_device_array(param.grad):
        backend.cuda_kernels().add_inplace_(param.grad, grad)
    else:
        param.grad += grad


def _pair(v) -> int:
    """Square kernels, strides and paddings only: (3, 3) -> 3."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"only square sizes are supported, got {v}")
        return int(v[0])
    return int(v)


class Conv2d(Module):
    """2-D cross-correlation with zero padding, as torch.nn.Conv2d (weight (F, C, kh, kw))."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        bias=True,
        rng: np.random.Generator | None = None,
        dtype=np.float32,
    ):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        k = _pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = k, _pair(stride), _pair(padding)
        shape = (out_channels, in_channels, k, k)
        self.weight = Parameter(init.kaiming_uniform(shape, rng, dtype=dtype))
        self.bias = (
            Parameter(init.conv_bias_uniform(out_channels, in_channels * k * k, rng, dtype))
            if bias
            else None
        )
        self.name = "Conv2d"
        # The first conv of a network needs no input gradient; models switch this off there.
        self.needs_input_grad = True
        # None: backward adds the weight gradient at once. A scheduler may set a function
        # here (retina_np/schedule.py): backward then hands it the computing and adding of
        # the weight gradient, to be done later on another thread (no layer below needs it).
        self.defer_weight_grad = None

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        y, cache = ops.conv2d_forward(  # training: backward reuses the unfolded x
            x, self.weight.data, b, self.stride, self.padding, name=self.name,
            keep_workspace=self.training,
        )
        self._push(cache)
        return y

    def backward(self, dy):
        return self._backward(ops.conv2d_backward, dy, self._pop())

    def forward_levels(self, xs):
        """This convolution of every pyramid level (the heads' shared weights): xs is the list
        of levels -> the list of outputs, or one Joint of them (``kernels.levels``; on the CPU
        all levels make one GEMM) -> a Joint."""
        b = self.bias.data if self.bias is not None else None
        if isinstance(xs, Joint):
            ys, cache = ops.conv2d_joint_forward(xs, self.weight.data, b, self.stride,
                                                 self.padding, name=self.name,
                                                 keep_workspace=self.training)
        else:
            ys, cache = ops.conv2d_levels_forward(xs, self.weight.data, b, self.stride,
                                                  self.padding, name=self.name)
        self._push(cache)
        return ys

    def backward_levels(self, dys):
        """The backward of ``forward_levels``: the input gradients (a list, or a Joint); the
        parameter gradients of all levels are added into ``.grad``."""
        cache = self._pop()
        if not isinstance(cache, ops.Conv2dJointCache):
            dxs, dw, db = ops.conv2d_levels_backward(dys, cache,
                                                     need_input_grad=self.needs_input_grad)
            self._add_grads(dw, db)
            return dxs
        return self._backward(ops.conv2d_joint_backward, dys, cache)

    def _backward(self, op_backward, dy, cache):
        """The input gradient from ``op_backward`` (``ops.conv2d_backward`` or its Joint
        twin); the weight gradient added now, or handed to ``defer_weight_grad`` as work."""
        if self.defer_weight_grad is None:
            dx, dw, db = op_backward(dy, cache, self.needs_input_grad)
            self._add_grads(dw, db)
            return dx
        dx = op_backward(dy, cache, self.needs_input_grad, need_weight_grad=False)[0]
        self.defer_weight_grad(
            lambda: self._add_grads(*op_backward(dy, cache, need_input_grad=False)[1:]))
        return dx

    def _add_grads(self, dw, db):
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, with torch's running-statistics rules.

    ``frozen=True`` always uses the running statistics and never updates them (torchvision's
    FrozenBatchNorm2d in detection backbones); its weight and bias still get gradients.
    ``relu=True``: the ReLU that follows the norm, in the same kernel (max(y, 0): the forward
    makes one pass over the array instead of two; the backward runs the ReLU's first).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, frozen=False, dtype=np.float32,
                 relu=False):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.frozen, self.relu = (
            num_features,
            eps,
            momentum,
            frozen,
            relu,
        )
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.name = "BatchNorm2d"
        # None: the statistics of this process's batch. A data-parallel job sets here the
        # function that sums an array over every rank (distributed.sync_batch_norm): training
        # then normalises with the statistics of the whole batch, every rank's images.
        self.allreduce = None

    def forward(self, x):
        y, cache = ops.batchnorm2d_forward(
            x,
            self.weight.data,
            self.bias.data,
            self._buffers["running_mean"],
            self._buffers["running_var"],
            training=self.training and not self.frozen,
            momentum=self.momentum,
            eps=self.eps,
            name=self.name,
            relu=self.relu,
            allreduce=self.allreduce,
        )
        self._push(cache)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = ops.batchnorm2d_backward(dy, self._pop())
        _accumulate(self.weight, dgamma)
        _accumulate(self.bias, dbeta)
        return dx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, frozen={self.frozen}"
            + (", relu=True" if self.relu else "")
        )


class GroupNorm(Module):
    """Group normalisation (Wu & He 2018), as torch.nn.GroupNorm: each image's channels are
    split into ``num_groups`` groups normalised by their own statistics, then scaled and
    shifted per channel (weight (C,), bias (C,)). No running statistics and no batch
    dependence, so training and eval agree and any batch size works (RetinaNet v2's heads).
    ``relu=True``: the ReLU that follows the norm, in the same kernel, as BatchNorm2d's."""

    def __init__(self, num_groups, num_channels, eps=1e-5, dtype=np.float32, relu=False):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels cannot be split into "
                             f"{num_groups} groups")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.relu = relu
        self.weight = Parameter(np.ones(num_channels, dtype))
        self.bias = Parameter(np.zeros(num_channels, dtype))
        self.name = "GroupNorm"

    def forward(self, x):
        y, cache = ops.groupnorm_forward(x, self.weight.data, self.bias.data, self.num_groups,
                                         self.eps, name=self.name, relu=self.relu)
        self._push(cache)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = ops.groupnorm_backward(dy, self._pop())
        _accumulate(self.weight, dgamma)
        _accumulate(self.bias, dbeta)
        return dx

    def forward_levels(self, xs):
        """forward on every pyramid level: a list of levels (one call each), or a Joint of
        them (one call for all; each level's statistics are its own)."""
        if not isinstance(xs, Joint):
            return _each_level_forward(self, xs)
        y, cache = ops.groupnorm_joint_forward(xs, self.weight.data, self.bias.data,
                                               self.num_groups, self.eps, name=self.name,
                                               relu=self.relu)
        self._push(cache)
        return y

    def backward_levels(self, dys):
        if not isinstance(dys, Joint):
            return _each_level_backward(self, dys)
        dx, dgamma, dbeta = ops.groupnorm_joint_backward(dys, self._pop())
        _accumulate(self.weight, dgamma)
        _accumulate(self.bias, dbeta)
        return dx

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}"
                + (", relu=True" if self.relu else ""))


class ReLU(Module):
    def forward(self, x):
        y, cache = ops.relu_forward(x)
        self._push(cache)
        return y

    def backward(self, dy):
        return ops.relu_backward(dy, self._pop())

    def forward_levels(self, xs):
        """forward on every pyramid level: a list of levels, or a Joint (one call for all)."""
        if not isinstance(xs, Joint):
            return _each_level_forward(self, xs)
        return xs.like(self(xs.data))

    def backward_levels(self, dys):
        if not isinstance(dys, Joint):
            return _each_level_backward(self, dys)
        return dys.like(self.backward(dys.data))


def _each_level_forward(layer, xs):
    """The layer on each level of the list xs; one cache per level, on the layer's stack."""
    return [layer(x) for x in xs]


def _each_level_backward(layer, dys):
    """The backward of ``_each_level_forward``: the caches come off the stack in reverse
    level order."""
    return [layer.backward(d) for d in reversed(dys)][::-1]


class MaxPool2d(Module):
    """Max pooling with -inf padding (ResNet's stem: kernel 3, stride 2, padding 1)."""

    def __init__(self, kernel_size=3, stride=2, padding=1):
        super().__init__()
        self.kernel_size, self.stride, self.padding = (
            _pair(kernel_size),
            _pair(stride),
            _pair(padding),
        )
        self.name = "MaxPool2d"

    def forward(self, x):
        y, cache = ops.maxpool2d_forward(
            x, self.kernel_size, self.stride, self.padding, name=self.name
        )
        self._push(cache)
        return y

    def backward(self, dy):
        return ops.maxpool2d_backward(dy, self._pop())

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Upsample(Module):
    """Nearest-neighbour upsampling to a given output size (the FPN top-down path)."""

    def forward(self, x, out_hw):
        y, cache = ops.upsample_nearest_forward(x, tuple(out_hw))
        self._push(cache)
        return y

    def backward(self, dy):
        return ops.upsample_nearest_backward(dy, self._pop())


class Add(Module):
    """Elementwise sum of two arrays of one shape (residual and top-down connections)."""

    def forward(self, a, b):
        y, cache = ops.add_forward(a, b)
        self._push(cache)
        return y

    def backward(self, dy):
        return ops.add_backward(dy, self._pop())
