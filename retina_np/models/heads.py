"""RetinaNet's classification and box subnets (paper, section 4), torchvision's names.

Each subnet is ``num_convs`` x (3x3 conv, ReLU) and a final 3x3 conv; its weights are shared
by every pyramid level, so one forward pass calls each conv once per level and backward calls
them back in reverse level order (the layers keep a stack of caches).
"""

from __future__ import annotations

import numpy as np

from retina_np.nn import Conv2d, Module, ReLU, Sequential, init


def _head_conv(cin, cout, std, rng, bias=0.0):
    conv = Conv2d(cin, cout, 3, stride=1, padding=1, bias=True, rng=rng)
    conv.weight.data = init.normal(conv.weight.shape, rng, std)
    conv.bias.data = np.full(cout, bias, dtype=np.float32)
    return conv


def to_rows(x, per_anchor):
    """(N, A*P, H, W) -> (N, H*W*A, P): rows ordered y, x, anchor; channel index a*P + p."""
    n, c, h, w = x.shape
    a = c // per_anchor
    return np.ascontiguousarray(
        x.reshape(n, a, per_anchor, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, per_anchor)
    )


def from_rows(rows, h, w, per_anchor):
    """The inverse of ``to_rows``: (N, H*W*A, P) -> (N, A*P, H, W)."""
    n = rows.shape[0]
    a = rows.shape[1] // (h * w)
    return np.ascontiguousarray(
        rows.reshape(n, h, w, a, per_anchor)
        .transpose(0, 3, 4, 1, 2)
        .reshape(n, a * per_anchor, h, w)
    )


class _Subnet(Module):
    """conv (Sequential of [Sequential(conv, relu)] x num_convs) + a final prediction conv."""

    final_name = ""

    def __init__(self, channels, out_per_anchor, num_anchors, num_convs, std, rng, final_bias):
        super().__init__()
        self.per_anchor = out_per_anchor
        self.conv = Sequential(
            *[
                Sequential(_head_conv(channels, channels, std, rng), ReLU())
                for _ in range(num_convs)
            ]
        )
        setattr(
            self,
            self.final_name,
            _head_conv(channels, num_anchors * out_per_anchor, std, rng, bias=final_bias),
        )

    @property
    def final(self) -> Conv2d:
        return getattr(self, self.final_name)

    def forward(self, levels):
        """levels: list of (N, C, H, W) -> (N, R, P) with R = sum H*W*A over the levels."""
        outs, shapes = [], []
        for x in levels:
            y = self.final(self.conv(x))  # (N, A*P, H, W)
            outs.append(to_rows(y, self.per_anchor))  # (N, H*W*A, P)
            shapes.append((y.shape[2], y.shape[3], y.shape[1] // self.per_anchor))
        self._push(shapes)
        return np.concatenate(outs, axis=1)

    def backward(self, d_rows):
        """(N, R, P) -> list of gradients of the levels, in level order."""
        shapes = self._pop()
        rows_per_level = [h * w * a for h, w, a in shapes]
        pieces = np.split(d_rows, np.cumsum(rows_per_level)[:-1], axis=1)
        d_levels = [None] * len(shapes)
        for i in range(len(shapes) - 1, -1, -1):  # reverse order: the layers' caches are stacks
            h, w, _ = shapes[i]
            dy = from_rows(pieces[i], h, w, self.per_anchor)
            d_levels[i] = self.conv.backward(self.final.backward(dy))
        return d_levels


class ClassificationHead(_Subnet):
    final_name = "cls_logits"


class RegressionHead(_Subnet):
    final_name = "bbox_reg"


class RetinaNetHead(Module):
    """Both subnets; ``forward(levels)`` -> (cls_logits (N, R, K), box_deltas (N, R, 4))."""

    def __init__(
        self, channels, num_anchors, num_classes, num_convs=4, std=0.01, prior_bias=0.0, rng=None
    ):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.classification_head = ClassificationHead(
            channels, num_classes, num_anchors, num_convs, std, rng, final_bias=prior_bias
        )
        self.regression_head = RegressionHead(channels, 4, num_anchors, num_convs, std, rng, 0.0)

    def forward(self, levels):
        return self.classification_head(levels), self.regression_head(levels)

    def backward(self, d_cls, d_box):
        d_a = self.classification_head.backward(d_cls)
        d_b = self.regression_head.backward(d_box)
        return [a + b for a, b in zip(d_a, d_b)]
