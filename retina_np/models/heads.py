"""RetinaNet's classification and box subnets (paper, section 4), torchvision's names.

Each subnet is ``num_convs`` x (3x3 conv, ReLU) and a final 3x3 conv; its weights are shared
by every pyramid level, so each layer runs once on all levels (``forward_levels``). On the
CPU the levels are kept as one channel-major matrix (a ``Joint``, kernels/levels.py), so that
each conv is one GEMM and each norm and ReLU one call; elsewhere (the GPU, or images too
large for one matrix) as the list of levels, the norm and ReLU running level by level.
"""

from __future__ import annotations

import numpy as np

from retina_np import backend
from retina_np.nn import Conv2d, GroupNorm, Module, ReLU, Sequential, init

KERNEL = 3  # every head conv is 3x3, stride 1, padding 1: its output has its input's levels


def _head_conv(cin, cout, std, rng, bias=0.0):
    """3x3 conv with normal(0, std) weights and a constant bias (``bias=None``: no bias)."""
    conv = Conv2d(cin, cout, KERNEL, stride=1, padding=KERNEL // 2, bias=bias is not None,
                  rng=rng)
    conv.weight.data = init.normal(conv.weight.shape, rng, std)
    if bias is not None:
        conv.bias.data = np.full(cout, bias, dtype=np.float32)
    return conv


def to_rows(x, per_anchor):
    """(N, A*P, H, W) -> (N, H*W*A, P): rows ordered y, x, anchor; channel index a*P + p.

    One level of the kernel ``levels_to_rows`` (in ``kernels/cpu/layout.py``: a reshape to
    (N, A, P, H, W) and one transpose to (N, H, W, A, P)).
    """
    return backend.kernels_for(x).levels_to_rows([x], per_anchor)


def from_rows(rows, h, w, per_anchor):
    """The inverse of ``to_rows``: (N, H*W*A, P) -> (N, A*P, H, W)."""
    return backend.kernels_for(rows).rows_to_levels(rows, [(h, w)], per_anchor)[0]


class _Subnet(Module):
    """conv (Sequential of [Sequential(conv, relu)] x num_convs) + a final prediction conv."""

    final_name = ""

    def __init__(self, channels, out_per_anchor, num_anchors, num_convs, std, rng, final_bias,
                 norm_groups=0):
        super().__init__()
        self.per_anchor = out_per_anchor

        def block():
            if not norm_groups:  # the paper's (torchvision v1's) conv + ReLU
                return Sequential(_head_conv(channels, channels, std, rng), ReLU())
            # torchvision v2: conv, GroupNorm, ReLU (here in the norm's kernel); the conv has
            # no bias, since the norm subtracts each group's mean (a bias would cancel) and
            # adds its own shift
            conv = _head_conv(channels, channels, std, rng, bias=None)
            return Sequential(conv, GroupNorm(norm_groups, channels, relu=True))

        self.conv = Sequential(*[block() for _ in range(num_convs)])
        setattr(
            self,
            self.final_name,
            _head_conv(channels, num_anchors * out_per_anchor, std, rng, bias=final_bias),
        )

    @property
    def final(self) -> Conv2d:
        return getattr(self, self.final_name)

    def forward(self, levels):
        """levels: the pyramid levels (a list of (N, C, H, W), or on the CPU one Joint of them,
        ``RetinaNetHead.forward``) -> (N, R, P) with R = sum H*W*A over the levels.

        Layer by layer, each on every level at once: its weights are shared, so on the CPU
        the levels make one GEMM (and the norm and ReLU one call, on a Joint).
        """
        xs = levels
        for block in self.conv:
            xs = _block_forward(block, xs)
        outs = self.final.forward_levels(xs)  # (N, A*P, H, W) per level, or their Joint
        k = backend.kernels_for(*_arrays(outs))
        self._push(k.levels_layout(outs))
        # each level's channels become rows ordered y, x, anchor; the levels one after another
        return k.levels_to_rows(outs, self.per_anchor)  # (N, R, P)

    def backward(self, d_rows):
        """(N, R, P) -> the gradients of the levels, as the forward got them (list or Joint)."""
        layout = self._pop()
        d_outs = backend.kernels_for(d_rows).rows_to_levels(d_rows, layout, self.per_anchor)
        d_levels = self.final.backward_levels(d_outs)
        for block in reversed(list(self.conv)):
            d_levels = _block_backward(block, d_levels)
        return d_levels


def _arrays(levels):
    """The arrays behind levels (a list, or a Joint): for ``backend.kernels_for``."""
    return levels if isinstance(levels, list) else [levels.data]


def _block_forward(block, xs):
    """One head layer, Sequential(conv, [norm], ReLU), on every level of xs."""
    for layer in block:
        xs = layer.forward_levels(xs)
    return xs


def _block_backward(block, d_levels):
    """The backward of ``_block_forward``."""
    for layer in reversed(list(block)):
        d_levels = layer.backward_levels(d_levels)
    return d_levels


class ClassificationHead(_Subnet):
    final_name = "cls_logits"


class RegressionHead(_Subnet):
    final_name = "bbox_reg"


class RetinaNetHead(Module):
    """Both subnets; ``forward(levels)`` -> (cls_logits (N, R, K), box_deltas (N, R, 4))."""

    def __init__(
        self, channels, num_anchors, num_classes, num_convs=4, std=0.01, prior_bias=0.0, rng=None,
        norm_groups=0,
    ):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.channels = channels
        self.classification_head = ClassificationHead(
            channels, num_classes, num_anchors, num_convs, std, rng, final_bias=prior_bias,
            norm_groups=norm_groups,
        )
        self.regression_head = RegressionHead(channels, 4, num_anchors, num_convs, std, rng, 0.0,
                                              norm_groups=norm_groups)

    def forward(self, levels):
        """levels: P3..P7, (N, C, H, W) each -> (cls_logits (N, R, K), box_deltas (N, R, 4))."""
        xs = self.join(levels)
        return self.classification_head(xs), self.regression_head(xs)

    def backward(self, d_cls, d_box):
        """-> the list of the levels' gradients, (N, C, H, W) each."""
        return self.sum_levels(self.classification_head.backward(d_cls),
                               self.regression_head.backward(d_box))

    def join(self, levels):
        """The levels as both subnets take them: on the CPU one channel-major Joint matrix
        (unless that is too large), which the heads' layers keep from input to output
        (kernels/levels.py); elsewhere the list itself."""
        return backend.kernels_for(*levels).join_levels(levels, KERNEL)

    def sum_levels(self, d_cls_levels, d_box_levels):
        """Both subnets read every level, so its gradient is the sum of theirs -> a list of
        (N, C, H, W). The first holds new arrays (the input gradients of the first convs),
        so the sum is taken in place."""
        k = backend.kernels_for(*_arrays(d_cls_levels))
        return [k.add_inplace_(a, b)
                for a, b in zip(k.split_levels(d_cls_levels), k.split_levels(d_box_levels))]
