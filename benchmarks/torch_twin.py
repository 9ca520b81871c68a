"""A PyTorch twin of retina_np's RetinaNet, for timing the same training step in torch.

``TorchRetinaNet(config)`` builds, in plain torch, the network that ``RetinaNet(config)``
builds (ResNet -> FPN P3..P7 -> class and box subnets) with the same parameter names and
shapes, so ``load_numpy_state(twin, model.state_dict())`` gives both the same weights and
``twin(images)`` returns the same ``(cls_logits (N, R, K), box_deltas (N, R, 4))``. The
loss is RetinaNet's (``retina_np.detection.retina_loss``) written with torch ops, on anchor
matches computed once on the host by retina_np's matcher (``match_batch``): matching is not
a conv cost, and both sides then train on exactly the same targets.

Letter legend as in the package: N batch, R anchors, K classes, A anchors per location.
Only benchmarks and tests import this module (retina_np never imports torch). It imports
retina_np only inside ``match_batch``: a process that just trains the twin on prepared
matches (bench_cold_start.py's torch side) loads no Numba, as a PyTorch program would not.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# retina_np's sentinel for an anchor between the IoU thresholds (ignored by the loss), written
# out rather than imported (see above); ``match_batch`` checks that the two agree.
BETWEEN_THRESHOLDS = -2

# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm on running statistics in every mode, as our ``BatchNorm2d(frozen=True)``."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _bn(channels, frozen):
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels)


def _conv(cin, cout, k, stride=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, frozen_bn):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 3, stride), _bn(width, frozen_bn)
        self.conv2, self.bn2 = _conv(width, width, 3), _bn(width, frozen_bn)
        self._shortcut(cin, width, stride, frozen_bn)

    def _shortcut(self, cin, width, stride, frozen_bn):
        cout = width * self.expansion
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout, frozen_bn))

    def residual(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.bn2(self.conv2(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.residual(x) + identity, inplace=True)


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin, width, stride, frozen_bn):
        nn.Module.__init__(self)
        self.conv1, self.bn1 = _conv(cin, width, 1), _bn(width, frozen_bn)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), _bn(width, frozen_bn)
        self.conv3, self.bn3 = _conv(width, width * 4, 1), _bn(width * 4, frozen_bn)
        self._shortcut(cin, width, stride, frozen_bn)

    def residual(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """Stem + four stages -> (C3, C4, C5), as ``retina_np.models.resnet.ResNet``."""

    def __init__(self, config):
        super().__init__()
        c = config
        Block = {"basic": BasicBlock, "bottleneck": Bottleneck}[c.block]
        self.conv1 = _conv(3, c.base_width, c.stem_kernel, 2)
        self.bn1 = _bn(c.base_width, c.frozen_bn)
        self.stem_pool = c.stem_pool
        cin, self.out_channels = c.base_width, []
        for s, n in enumerate(c.stage_blocks):
            width, blocks = c.base_width * 2**s, []
            for b in range(n):
                blocks.append(Block(cin, width, 2 if (s > 0 and b == 0) else 1, c.frozen_bn))
                cin = width * Block.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)
        self.out_channels = self.out_channels[1:]

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.stem_pool:
            x = F.max_pool2d(x, 3, 2, 1)
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class LastLevelP6P7(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.p6 = _conv(cin, cout, 3, 2, bias=True)
        self.p7 = _conv(cout, cout, 3, 2, bias=True)

    def forward(self, x):
        p6 = self.p6(x)
        return p6, self.p7(F.relu(p6))


class FPN(nn.Module):
    """(C3, C4, C5) -> (P3, .., P7), as ``retina_np.models.fpn.FPN``."""

    def __init__(self, in_channels, channels, p6_from):
        super().__init__()
        self.p6_from = p6_from
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(_conv(c, channels, 1, bias=True)) for c in in_channels
        )
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(_conv(channels, channels, 3, bias=True)) for _ in in_channels
        )
        p6_in = channels if p6_from == "p5" else in_channels[-1]
        self.extra_blocks = LastLevelP6P7(p6_in, channels)

    def forward(self, feats):
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[i](last_inner))
        p6, p7 = self.extra_blocks(results[-1] if self.p6_from == "p5" else feats[-1])
        return [*results, p6, p7]


class Backbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.body = ResNet(config)
        self.fpn = FPN(self.body.out_channels, config.fpn_channels, config.p6_from)

    def forward(self, x):
        return self.fpn(self.body(x))


class Subnet(nn.Module):
    """``conv`` = head_convs x (3x3 conv, ReLU), then the final 3x3 conv; shared by levels."""

    def __init__(self, channels, num_convs, out_per_anchor, num_anchors, final_name, groups=0):
        super().__init__()
        self.per_anchor, self.final_name = out_per_anchor, final_name

        def block():  # conv, ReLU; or conv (no bias), GroupNorm, ReLU as torchvision's v2 head
            if groups:
                return nn.Sequential(
                    _conv(channels, channels, 3), nn.GroupNorm(groups, channels), nn.ReLU()
                )
            return nn.Sequential(_conv(channels, channels, 3, bias=True), nn.ReLU(inplace=True))

        self.conv = nn.Sequential(*[block() for _ in range(num_convs)])
        setattr(self, final_name, _conv(channels, num_anchors * out_per_anchor, 3, bias=True))

    def forward(self, levels):
        final, outs = getattr(self, self.final_name), []
        for x in levels:
            y = final(self.conv(x))  # (N, A*P, H, W)
            n, _, h, w = y.shape
            y = y.view(n, -1, self.per_anchor, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, A, P)
            outs.append(y.reshape(n, -1, self.per_anchor))  # (N, H*W*A, P)
        return torch.cat(outs, dim=1)


class Head(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        g = c.head_norm_groups
        self.classification_head = Subnet(
            c.fpn_channels, c.head_convs, c.num_classes, c.num_anchors, "cls_logits", g
        )
        self.regression_head = Subnet(
            c.fpn_channels, c.head_convs, 4, c.num_anchors, "bbox_reg", g
        )

    def forward(self, levels):
        return self.classification_head(levels), self.regression_head(levels)


class TorchRetinaNet(nn.Module):
    """``twin(images (N, 3, H, W))`` -> ``(cls_logits (N, R, K), box_deltas (N, R, 4))``."""

    def __init__(self, config):
        super().__init__()
        self.backbone = Backbone(config)
        self.head = Head(config)

    def forward(self, images):
        return self.head(self.backbone(images))


def load_numpy_state(twin: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Copy our ``state_dict()`` into the twin; every name must fit, in both directions.

    torch's BatchNorm2d keeps a ``num_batches_tracked`` counter that we do not have (it only
    matters for momentum=None); those are the only names allowed to be missing.
    """
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
    missing, unexpected = twin.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"state does not fit the twin: missing {missing}, unexpected {unexpected}")


def _decay_groups(twin: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups as our optimizers decay them: not the 1-D parameters (biases, norms)."""
    params = list(twin.parameters())
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def sgd(twin: nn.Module, lr=0.01, momentum=0.9, weight_decay=1e-4) -> torch.optim.SGD:
    """torch's SGD with our ``retina_np.optim.SGD`` defaults: no decay on 1-D parameters."""
    return torch.optim.SGD(_decay_groups(twin, weight_decay), lr=lr, momentum=momentum)


def adamw(twin: nn.Module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05):
    """torch's AdamW with our ``retina_np.optim.AdamW`` defaults: no decay on 1-D parameters."""
    return torch.optim.AdamW(_decay_groups(twin, weight_decay), lr=lr, betas=betas, eps=eps)


# --------------------------------------------------------------------------------------
# The loss, on host-side matches
# --------------------------------------------------------------------------------------


def match_batch(model, targets, image_hw, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Per-anchor targets of a batch, from retina_np's matcher (as ``retina_loss`` does).

    Returns:
        anchor_class (ndarray[N, R] int64): class of a foreground anchor, else the matcher's
            sentinel (``BELOW_LOW_THRESHOLD`` background, ``BETWEEN_THRESHOLDS`` ignored).
        target_deltas (ndarray[N, R, 4] dtype): encoded box of foreground anchors, else 0.
    """
    from retina_np import detection
    from retina_np.detection import box_iou, encode_boxes, match_anchors

    if detection.BETWEEN_THRESHOLDS != BETWEEN_THRESHOLDS:
        raise ValueError(f"retina_np's BETWEEN_THRESHOLDS is {detection.BETWEEN_THRESHOLDS}, "
                         f"the twin's loss ignores {BETWEEN_THRESHOLDS}")
    c = model.config
    anchors = model.anchors(image_hw).astype(dtype)  # (R, 4)
    anchor_class = np.empty((len(targets), len(anchors)), np.int64)
    target_deltas = np.zeros((len(targets), len(anchors), 4), dtype)
    for b, target in enumerate(targets):
        boxes = np.asarray(target["boxes"], dtype).reshape(-1, 4)  # (M, 4)
        labels = np.asarray(target["labels"], np.int64).reshape(-1)  # (M,)
        matches = match_anchors(box_iou(boxes, anchors), c.fg_iou_thresh, c.bg_iou_thresh)
        fg = np.flatnonzero(matches >= 0)
        anchor_class[b] = matches
        anchor_class[b, fg] = labels[matches[fg]]
        target_deltas[b, fg] = encode_boxes(boxes[matches[fg]], anchors[fg])
    return anchor_class, target_deltas


def retina_loss(cls_logits, box_deltas, anchor_class, target_deltas, config) -> torch.Tensor:
    """``retina_np.detection.retina_loss``'s total in torch ops (mean over images of focal +
    box loss, each divided by the image's max(1, foreground anchors)).

    Args:
        cls_logits (Tensor[N, R, K]), box_deltas (Tensor[N, R, 4]): the twin's outputs.
        anchor_class (Tensor[N, R] int64), target_deltas (Tensor[N, R, 4]): ``match_batch``.
    """
    c = config
    foreground = anchor_class >= 0  # (N, R)
    norm = foreground.sum(1).clamp(min=1).to(cls_logits.dtype)  # (N,)
    classes = torch.arange(cls_logits.shape[-1], device=cls_logits.device)
    t = (anchor_class[..., None] == classes).to(cls_logits.dtype)  # (N, R, K), one-hot or 0
    # torchvision.ops.sigmoid_focal_loss, written out
    p = torch.sigmoid(cls_logits)
    ce = F.binary_cross_entropy_with_logits(cls_logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = c.focal_alpha * t + (1 - c.focal_alpha) * (1 - t)
    focal = alpha_t * ce * (1 - p_t) ** c.focal_gamma  # (N, R, K)
    keep = (anchor_class != BETWEEN_THRESHOLDS).to(cls_logits.dtype)  # (N, R)
    cls_loss = (focal.sum(-1) * keep).sum(1) / norm  # (N,)
    beta = c.smooth_l1_beta if c.box_loss == "smooth_l1" else 0.0  # beta 0: plain L1
    box = F.smooth_l1_loss(box_deltas, target_deltas, beta=beta, reduction="none")  # (N, R, 4)
    box_loss = (box.sum(-1) * foreground.to(box.dtype)).sum(1) / norm  # (N,)
    return (cls_loss + box_loss).mean()


def train_step(twin, optimizer, images, anchor_class, target_deltas, config, clip=0.0) -> float:
    """Forward, loss, backward, update (tensors in, the loss as a float out); ``clip`` > 0
    scales the gradients to at most that global norm first, as ``retina_np.train.train_step``."""
    twin.train()
    optimizer.zero_grad(set_to_none=True)
    cls_logits, box_deltas = twin(images)
    loss = retina_loss(cls_logits, box_deltas, anchor_class, target_deltas, config)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(twin.parameters(), clip)
    optimizer.step()
    return loss.item()
