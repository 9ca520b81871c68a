"""RetinaNet's classification and box subnets (paper, section 4), torchvision's names.

Each subnet is ``num_convs`` x (3x3 conv, ReLU) and a final 3x3 conv; its weights are shared
by every pyramid level, so each conv runs once on the list of all levels (``Conv2d
.forward_levels``) and the ReLU (and norm) once per level, keeping a stack of caches that
backward takes back in reverse level order.
"""

from __future__ import annotations

import numpy as np

from retina_np import backend
from retina_np.nn import Conv2d, GroupNorm, Module, ReLU, Sequential, init


def _head_conv(cin, cout, std, rng, bias=0.0):
    """3x3 conv with normal(0, std) weights and a constant bias (``bias=None``: no bias)."""
    conv = Conv2d(cin, cout, 3, stride=1, padding=1, bias=bias is not None, rng=rng)
    conv.weight.data = init.normal(conv.weight.shape, rng, std)
    if bias is not None:
        conv.bias.data = np.full(cout, bias, dtype=np.float32)
    return conv


def to_rows(x, per_anchor):
    """(N, A*P, H, W) -> (N, H*W*A, P): rows ordered y, x, anchor; channel index a*P + p.

    One level of the kernel ``levels_to_rows`` (in ``kernels/cpu.py``: a reshape to
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
            # torchvision v2: conv, GroupNorm, ReLU; the conv has no bias, since the norm
            # subtracts each group's mean (a bias would cancel) and adds its own shift
            conv = _head_conv(channels, channels, std, rng, bias=None)
            return Sequential(conv, GroupNorm(norm_groups, channels), ReLU())

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
        """levels: list of (N, C, H, W) -> (N, R, P) with R = sum H*W*A over the levels.

        Layer by layer: each conv runs on every level at once (its weights are shared, so on
        the CPU the levels make one GEMM), the norm and ReLU level by level.
        """
        xs = levels
        for block in self.conv:
            xs = _block_forward(block, xs)
        outs = self.final.forward_levels(xs)  # (N, A*P, H, W) per level
        self._push([(y.shape[2], y.shape[3]) for y in outs])
        # each level's channels become rows ordered y, x, anchor; the levels one after another
        return backend.kernels_for(*outs).levels_to_rows(outs, self.per_anchor)  # (N, R, P)

    def backward(self, d_rows):
        """(N, R, P) -> list of gradients of the levels, in level order."""
        level_hw = self._pop()
        d_outs = backend.kernels_for(d_rows).rows_to_levels(d_rows, level_hw, self.per_anchor)
        d_levels = self.final.backward_levels(d_outs)
        for block in reversed(list(self.conv)):
            d_levels = _block_backward(block, d_levels)
        return d_levels


def _block_forward(block, xs):
    """One head layer, Sequential(conv, [norm], ReLU), on the list of levels xs."""
    conv, *rest = block
    xs = conv.forward_levels(xs)
    for layer in rest:
        xs = [layer(x) for x in xs]
    return xs


def _block_backward(block, d_levels):
    """The backward of ``_block_forward``. The per-level layers keep one cache per level on a
    stack, so they go back through the levels in reverse order."""
    conv, *rest = block
    for layer in reversed(rest):
        d_levels = [layer.backward(d) for d in reversed(d_levels)][::-1]
    return conv.backward_levels(d_levels)


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
        # the subnets share nothing but their input: on the CPU narrow ones run side by side,
        # each on its share of the cores (kernels/threads.py)
        cls, box = backend.kernels_for(*levels).side_by_side(
            lambda: self.classification_head(levels), lambda: self.regression_head(levels),
            channels=self.channels)
        return cls, box

    def backward(self, d_cls, d_box):
        d_a, d_b = backend.kernels_for(d_cls, d_box).side_by_side(
            lambda: self.classification_head.backward(d_cls),
            lambda: self.regression_head.backward(d_box), channels=self.channels)
        # both subnets read every level, so its gradient is the sum; d_a holds new arrays (the
        # input gradients of the first convs), so the sum can be taken in place
        return [backend.kernels_for(a, b).add_inplace_(a, b) for a, b in zip(d_a, d_b)]
