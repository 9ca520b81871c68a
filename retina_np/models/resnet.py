"""ResNet backbones (He et al. 2016) returning C3, C4, C5, with torchvision's parameter names."""

from __future__ import annotations

import numpy as np

from retina_np import ops
from retina_np.nn import Add, BatchNorm2d, Conv2d, MaxPool2d, Module, ReLU, Sequential, init


def _add(a, b):
    """Sum of two gradients of one shape (no cache: nothing to back-propagate)."""
    return ops.add_forward(a, b)[0]


def _conv(cin, cout, k, stride, rng):
    """A bias-free conv (BN follows) with He init, as torchvision's ResNet."""
    conv = Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, rng=rng)
    conv.weight.data = init.kaiming_normal_fan_out(conv.weight.shape, rng)
    return conv


class BasicBlock(Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin, width, stride, frozen_bn, rng):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 3, stride, rng)
        self.bn1 = BatchNorm2d(width, frozen=frozen_bn, relu=True)  # and the ReLU after it
        self.conv2 = _conv(width, cout, 3, 1, rng)
        self.bn2 = BatchNorm2d(cout, frozen=frozen_bn)
        self._shortcut_and_merge(cin, cout, stride, frozen_bn, rng)

    def _shortcut_and_merge(self, cin, cout, stride, frozen_bn, rng):
        """The identity path (a strided 1x1 conv + BN when the shape changes), add and ReLU."""
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = Sequential(
                _conv(cin, cout, 1, stride, rng), BatchNorm2d(cout, frozen=frozen_bn)
            )
        self.add = Add()
        self.relu_out = ReLU()

    def residual(self):
        return [self.conv1, self.bn1, self.conv2, self.bn2]

    def forward(self, x):
        out = self.residual_forward(x)
        identity = self.downsample(x) if self.downsample is not None else x
        return self.merge(out, identity)

    def residual_forward(self, x):
        """The residual branch: ``residual()``'s layers one after another."""
        for layer in self.residual():
            x = layer(x)
        return x

    def merge(self, out, identity):
        """The two branches added, then the ReLU."""
        return self.relu_out(self.add(out, identity))

    def backward(self, dy):
        d_out, d_identity = self.add.backward(self.relu_out.backward(dy))
        for layer in reversed(self.residual()):
            d_out = layer.backward(d_out)
        if self.downsample is not None:
            d_identity = self.downsample.backward(d_identity)
        return _add(d_out, d_identity)


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3 (carrying the stride, "ResNet v1.5"), 1x1 expand x4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, cin, width, stride, frozen_bn, rng):
        Module.__init__(self)
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1, 1, rng)
        self.bn1 = BatchNorm2d(width, frozen=frozen_bn, relu=True)
        self.conv2 = _conv(width, width, 3, stride, rng)
        self.bn2 = BatchNorm2d(width, frozen=frozen_bn, relu=True)
        self.conv3 = _conv(width, cout, 1, 1, rng)
        self.bn3 = BatchNorm2d(cout, frozen=frozen_bn)
        self._shortcut_and_merge(cin, cout, stride, frozen_bn, rng)

    def residual(self):
        return [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3]


class ResNet(Module):
    """Stem + four stages; ``forward`` returns (C3, C4, C5) at strides 8, 16, 32.

    Args:
        block: "basic" or "bottleneck".
        stage_blocks: blocks in each of the four stages, e.g. (3, 4, 6, 3) for ResNet-50.
        base_width: stem channels and stage-1 width; stage s has width base_width * 2**s.
    """

    def __init__(
        self,
        block="bottleneck",
        stage_blocks=(3, 4, 6, 3),
        base_width=64,
        stem_kernel=7,
        stem_pool=True,
        frozen_bn=True,
        rng=None,
    ):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        Block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.conv1 = _conv(3, base_width, stem_kernel, 2, rng)
        self.conv1.needs_input_grad = False  # nothing learns below the image
        self.bn1 = BatchNorm2d(base_width, frozen=frozen_bn, relu=True)
        self.maxpool = MaxPool2d(3, 2, 1) if stem_pool else None
        cin = base_width
        self.out_channels = []
        for s, n in enumerate(stage_blocks):
            width = base_width * 2**s
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(Block(cin, width, stride, frozen_bn, rng))
                cin = width * Block.expansion
            setattr(self, f"layer{s + 1}", Sequential(*blocks))
            self.out_channels.append(cin)
        self.out_channels = tuple(self.out_channels[1:])  # channels of C3, C4, C5

    def stem(self):
        return [m for m in (self.conv1, self.bn1, self.maxpool) if m is not None]

    def forward(self, x):
        for layer in self.stem():
            x = layer(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5

    def backward(self, d_c3, d_c4, d_c5):
        d = self.layer4.backward(d_c5)
        d = self.layer3.backward(_add(d, d_c4))
        d = self.layer2.backward(_add(d, d_c3))
        d = self.layer1.backward(d)
        for layer in reversed(self.stem()):
            d = layer.backward(d)
        return d
