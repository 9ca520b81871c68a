"""Feature Pyramid Network (Lin et al. 2017) with RetinaNet's P6 and P7, torchvision's names."""

from __future__ import annotations

import numpy as np

from retina_np import ops
from retina_np.nn import Add, Conv2d, Module, ModuleList, ReLU, Sequential, Upsample, init


def _fpn_conv(cin, cout, k, stride, rng):
    """FPN convs: kaiming_uniform(a=1) weights and zero bias, as torchvision's FPN."""
    conv = Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True, rng=rng)
    conv.weight.data = init.kaiming_uniform(conv.weight.shape, rng, a=1.0)
    conv.bias.data = np.zeros_like(conv.bias.data)
    return conv


class LastLevelP6P7(Module):
    """P6 = 3x3/2 conv on P5 (or C5); P7 = 3x3/2 conv on relu(P6)."""

    def __init__(self, cin, cout, rng):
        super().__init__()
        self.p6 = _fpn_conv(cin, cout, 3, 2, rng)
        self.relu = ReLU()
        self.p7 = _fpn_conv(cout, cout, 3, 2, rng)

    def forward(self, x):
        p6 = self.p6(x)
        p7 = self.p7(self.relu(p6))
        return p6, p7

    def backward(self, d_p6, d_p7):
        d_p6 = ops.add_forward(d_p6, self.relu.backward(self.p7.backward(d_p7)))[0]
        return self.p6.backward(d_p6)


class FPN(Module):
    """(C3, C4, C5) -> (P3, P4, P5, P6, P7), every level with ``out_channels`` channels.

    Lateral 1x1 convs, nearest top-down upsampling to each lateral's size (so any input size
    works), 3x3 output convs; ``p6_from`` is "p5" (torchvision v1) or "c5" (the paper).
    """

    def __init__(self, in_channels, out_channels, p6_from="p5", rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {p6_from!r}")
        self.p6_from = p6_from
        self.inner_blocks = ModuleList(
            *[Sequential(_fpn_conv(c, out_channels, 1, 1, rng)) for c in in_channels]
        )
        self.layer_blocks = ModuleList(
            *[Sequential(_fpn_conv(out_channels, out_channels, 3, 1, rng)) for _ in in_channels]
        )
        p6_in = out_channels if p6_from == "p5" else in_channels[-1]
        self.extra_blocks = LastLevelP6P7(p6_in, out_channels, rng)
        self.upsamples = ModuleList(*[Upsample() for _ in in_channels[:-1]])
        self.adds = ModuleList(*[Add() for _ in in_channels[:-1]])

    def forward(self, feats):
        return self.outputs(self.top_down(feats), feats)

    def top_down(self, feats, laterals=()):
        """The merged maps, finest first: each level's lateral 1x1 conv plus the nearest
        upsampling of the merged map above it (the coarsest: its lateral alone).

        laterals: the lateral convs' outputs of the finest levels if already made (a training
        step makes C3's and C4's beside the backbone, retina_np/schedule.py); the rest are
        made here."""
        n = len(feats)
        merged = [None] * n
        merged[n - 1] = self.inner_blocks[n - 1](feats[-1])
        for i in range(n - 2, -1, -1):
            lateral = laterals[i] if i < len(laterals) else self.inner_blocks[i](feats[i])
            top_down = self.upsamples[i](merged[i + 1], lateral.shape[-2:])
            merged[i] = self.adds[i](lateral, top_down)
        return merged

    def outputs(self, merged, feats, first=0):
        """The 3x3 output conv of each merged map from level ``first`` on, then P6 and P7."""
        results = [self.layer_blocks[i](merged[i]) for i in range(first, len(merged))]
        p6, p7 = self.extra_blocks(results[-1] if self.p6_from == "p5" else feats[-1])
        return (*results, p6, p7)

    def backward(self, d_levels):
        """d_levels: gradients of (P3, .., P7) -> gradients of (C3, C4, C5)."""
        n = len(self.inner_blocks)
        d_results = list(d_levels[:n])
        d_extra_in = self.extra_blocks.backward(d_levels[n], d_levels[n + 1])
        d_c_last_extra = None
        if self.p6_from == "p5":
            d_results[-1] = ops.add_forward(d_results[-1], d_extra_in)[0]
        else:
            d_c_last_extra = d_extra_in
        d_feats = [None] * n
        # Walk the top-down path back up: level i's merge fed level i's output conv and, through
        # upsampling, every merge below it, whose gradient arrives first in this order.
        d_inner = None
        for i in range(n):
            d_merge = self.layer_blocks[i].backward(d_results[i])
            if d_inner is not None:
                d_merge = ops.add_forward(d_merge, d_inner)[0]
            if i < n - 1:
                d_lateral, d_top_down = self.adds[i].backward(d_merge)
                d_feats[i] = self.inner_blocks[i].backward(d_lateral)
                d_inner = self.upsamples[i].backward(d_top_down)
            else:
                d_feats[i] = self.inner_blocks[i].backward(d_merge)
        if d_c_last_extra is not None:
            d_feats[-1] = ops.add_forward(d_feats[-1], d_c_last_extra)[0]
        return tuple(d_feats)
