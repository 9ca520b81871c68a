"""RetinaNetConfig: every number that defines the model, with a reason for each default."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field


@dataclass
class RetinaNetConfig:
    # --- data ---------------------------------------------------------------------------------
    num_classes: int = 80  # K: COCO's 80 categories (sigmoid, no background class)
    class_names: tuple[str, ...] = ()  # optional names for plots and json, index = label
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, on [0, 1] pixels
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # (torchvision's transform)
    size_divisible: int = 32  # batches are zero-padded bottom/right to a multiple

    # --- backbone (ResNet) ----------------------------------------------------------------------
    block: str = "bottleneck"  # "basic" (ResNet-18/34) or "bottleneck" (50/101)
    stage_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)  # ResNet-50's blocks per stage
    base_width: int = 64  # channels of the stem and of stage 1's 3x3 convs
    stem_kernel: int = 7  # the 7x7 stride-2 stem conv of ResNet
    stem_pool: bool = True  # 3x3 stride-2 max pool after the stem
    frozen_bn: bool = True  # torchvision freezes BN statistics in detection backbones

    # --- feature pyramid ------------------------------------------------------------------------
    fpn_channels: int = 256  # every pyramid level and both subnets (paper: 256)
    p6_from: str = "p5"  # "p5" as torchvision's retinanet_resnet50_fpn; "c5" paper
    # P3..P7 have strides 8..128; the model always has these five levels, as in the paper.

    # --- heads ----------------------------------------------------------------------------------
    head_convs: int = 4  # 3x3 conv + ReLU layers in each subnet (paper: 4)
    head_init_std: float = 0.01  # normal(0, 0.01) weights, bias 0 (paper, section 4.1)
    prior_prob: float = 0.01  # pi: final class bias = -log((1 - pi) / pi) (section 3.3)
    head_norm_groups: int = 0  # 0: no norm (paper, v1); 32: GroupNorm between each head conv
    #   and its ReLU (torchvision v2)

    # --- anchors --------------------------------------------------------------------------------
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # base size on P3..P7 (paper)
    scales_per_octave: int = 3  # sizes s, s*2^(1/3), s*2^(2/3): denser scale coverage
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # h/w, A = 3 ratios x 3 scales = 9

    # --- matching and losses --------------------------------------------------------------------
    fg_iou_thresh: float = 0.5  # IoU >= 0.5: foreground (paper)
    bg_iou_thresh: float = 0.4  # IoU < 0.4: background; in between ignored (paper)
    allow_low_quality_matches: bool = True  # every box claims its best anchors (torchvision)
    focal_alpha: float = 0.25  # alpha balances positives/negatives (paper, table 1a)
    focal_gamma: float = 2.0  # gamma = 2 works best (paper, table 1b)
    box_loss: str = "smooth_l1"  # "smooth_l1" (paper) or "l1" (torchvision's default)
    smooth_l1_beta: float = 1.0 / 9.0  # sigma = 3 as in Detectron's RetinaNet
    # multipliers of the box targets dx, dy, dw, dh (encode in the loss, decode in detect):
    # RetinaNet regresses them unscaled (torchvision; Faster R-CNN's heads use 10, 10, 5, 5)
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    # --- inference ------------------------------------------------------------------------------
    score_thresh: float = 0.05  # drop (anchor, class) pairs below this confidence
    topk_candidates: int = 1000  # keep the best 1000 per level before NMS (paper)
    nms_thresh: float = 0.5  # per-class NMS IoU threshold (paper)
    detections_per_img: int = 100  # keep at most 100 detections per image (COCO maxDets)

    extra: dict = field(default_factory=dict)  # free-form notes that travel with checkpoints

    # --- derived --------------------------------------------------------------------------------
    @property
    def num_anchors(self) -> int:
        """A: anchors per location."""
        return self.scales_per_octave * len(self.aspect_ratios)

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of P3..P7."""
        return (8, 16, 32, 64, 128)

    @property
    def prior_bias(self) -> float:
        return -math.log((1.0 - self.prior_prob) / self.prior_prob)

    # --- presets --------------------------------------------------------------------------------
    @classmethod
    def resnet50_fpn(cls, num_classes: int = 91) -> RetinaNetConfig:
        """The paper's model, laid out as torchvision's ``retinanet_resnet50_fpn`` (v1)."""
        return cls(num_classes=num_classes, box_loss="l1")

    @classmethod
    def shapes(cls, num_classes: int = 3) -> RetinaNetConfig:
        """A small RetinaNet for 128x128 synthetic shapes on a laptop CPU.

        The shapes are 12..64 px, so the anchor base sizes start at 12 on P3 (12, 15, 19 px,
        stride 8) and double per level: every shape size has an anchor of a similar size and
        the low-quality rule gives even the smallest shape a foreground anchor. Widths are cut
        (16-channel ResNet stages, 64-channel pyramid and heads) to fit a CPU budget; the
        structure (ResNet + FPN P3..P7 + two 4-conv subnets, focal loss) is the paper's.

        The head weights start at normal(0, 0.05) instead of the paper's 0.01: trained from
        scratch in minutes (the paper starts from ImageNet weights and trains for hours), a
        0.01 init shrinks the head's signal ~6x per 64-channel layer (0.01 * sqrt(9 * 64 / 2)),
        about 1e-4 over the five layers, and the classifier stalls for hundreds of steps;
        0.05 keeps it near unit scale. The prior-probability bias is kept.

        GroupNorm (32 groups) sits between each head conv and its ReLU, as in torchvision's
        RetinaNet v2 head: normalised head layers learn faster from scratch (1000 AdamW steps:
        COCO AP 0.33 with it, 0.24 without; docs/performance-history.md, "Training recipe").
        """
        return cls(
            num_classes=num_classes,
            class_names=("square", "circle", "triangle")[:num_classes],
            block="basic",
            stage_blocks=(1, 1, 1, 1),
            base_width=16,
            frozen_bn=False,
            fpn_channels=64,
            head_init_std=0.05,
            head_norm_groups=32,
            anchor_sizes=(12, 24, 48, 96, 192),
        )

    @classmethod
    def tiny(cls, num_classes: int = 2) -> RetinaNetConfig:
        """A very small model for tests and gradient checks (64x64 inputs)."""
        return cls(
            num_classes=num_classes,
            block="basic",
            stage_blocks=(1, 1, 1, 1),
            base_width=4,
            frozen_bn=False,
            fpn_channels=8,
            head_init_std=0.05,  # as shapes(): from scratch, few steps
            head_convs=2,
            anchor_sizes=(8, 16, 32, 64, 128),
        )

    # --- serialisation --------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RetinaNetConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RetinaNetConfig fields: {unknown}")
        for f in dataclasses.fields(cls):
            if f.name in data and isinstance(data[f.name], list):
                data[f.name] = tuple(data[f.name])
        return cls(**data)
