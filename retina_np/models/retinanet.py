"""RetinaNet = ResNet backbone + FPN + class/box subnets, with a full backward pass."""

from __future__ import annotations

import numpy as np

from retina_np import backend
from retina_np.detection import generate_anchors, match_targets, postprocess, retina_loss
from retina_np.models.config import RetinaNetConfig
from retina_np.models.fpn import FPN
from retina_np.models.heads import RetinaNetHead
from retina_np.models.resnet import ResNet
from retina_np.nn import Module


def _halve(n: int) -> int:
    """Output size of every stride-2 layer here (7x7/p3, 3x3/p1, 1x1/p0 and the 3x3/p1 pool)."""
    return (n + 1) // 2


class BackboneWithFPN(Module):
    """``body`` (ResNet -> C3..C5) then ``fpn`` (-> P3..P7); torchvision's ``backbone``."""

    def __init__(self, config: RetinaNetConfig, rng):
        super().__init__()
        self.body = ResNet(
            config.block,
            config.stage_blocks,
            config.base_width,
            config.stem_kernel,
            config.stem_pool,
            config.frozen_bn,
            rng,
        )
        self.fpn = FPN(self.body.out_channels, config.fpn_channels, config.p6_from, rng)

    def forward(self, x):
        return self.fpn(self.body(x))

    def backward(self, d_levels):
        return self.body.backward(*self.fpn.backward(d_levels))


class RetinaNet(Module):
    """The detector of Lin et al. 2017.

    ``model(images)`` with images (N, 3, H, W), normalised, returns
    ``(cls_logits (N, R, K), box_deltas (N, R, 4))``, rows ordered level, y, x, anchor.
    """

    def __init__(self, config: RetinaNetConfig | None = None, seed: int = 0):
        super().__init__()
        self.config = config if config is not None else RetinaNetConfig.shapes()
        rng = np.random.default_rng(seed)
        c = self.config
        self.backbone = BackboneWithFPN(c, rng)
        self.head = RetinaNetHead(
            c.fpn_channels,
            c.num_anchors,
            c.num_classes,
            c.head_convs,
            c.head_init_std,
            c.prior_bias,
            rng,
            norm_groups=c.head_norm_groups,
        )
        self._anchor_cache: dict[tuple[int, int], tuple[np.ndarray, list[int]]] = {}

    # -- forward and backward ----------------------------------------------------------------
    def forward(self, images):
        return self.head(self.features(images))

    def features(self, images, backbone=None):
        """The pyramid levels P3..P7 of images (N, 3, H, W): (N, C, H_l, W_l) each.

        backbone: a function (self.backbone, images) -> the levels, run in its place
        (retina_np/schedule.py's, with the backbone's independent branches side by side)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"RetinaNet expects images (N, 3, H, W), got shape {images.shape}")
        if self.training:
            self.clear_caches()  # a forward pass with no backward must not leave caches behind
        if backbone is not None:
            return backbone(self.backbone, images)
        return self.backbone(images)

    def backward(self, d_cls_logits, d_box_deltas):
        """Back-propagate into every parameter (adds to ``.grad``); returns nothing.

        The training step runs this with its independent parts side by side on the CPU's
        cores (retina_np/schedule.py); the numbers are the same.
        """
        d_levels = self.head.backward(d_cls_logits, d_box_deltas)
        self.backbone.backward(d_levels)

    # -- anchors -----------------------------------------------------------------------------
    def feature_sizes(self, image_hw) -> list[tuple[int, int]]:
        """(H, W) of P3..P7 for an input of size ``image_hw``."""
        h, w = image_hw
        sizes = []
        for level in range(1, 8):
            h, w = _halve(h), _halve(w)
            if level >= 3:
                sizes.append((h, w))
        return sizes

    def anchors(self, image_hw) -> np.ndarray:
        """(R, 4) anchors for an input of size ``image_hw``, in the order of the outputs."""
        return self._anchors_and_counts(image_hw)[0]

    def _anchors_and_counts(self, image_hw):
        key = (int(image_hw[0]), int(image_hw[1]))
        if key not in self._anchor_cache:
            c = self.config
            feature_hws = self.feature_sizes(key)
            # strides=None: image size // feature size per level, as torchvision does
            anchors = generate_anchors(
                key, feature_hws, None, c.anchor_sizes, c.aspect_ratios, c.scales_per_octave
            )
            counts = [fh * fw * c.num_anchors for fh, fw in feature_hws]
            self._anchor_cache[key] = (anchors, counts)
        return self._anchor_cache[key]

    # -- loss and inference --------------------------------------------------------------------
    def loss(self, cls_logits, box_deltas, targets, image_hw, map_images=map, matched=None):
        """RetinaNet's loss with this config's numbers -> (losses dict, d_cls, d_box).

        map_images: how the images' losses are run (``retina_loss``): ``map``, one after
        another, or anything that returns what ``map`` does (retina_np/schedule.py).
        matched: ``self.match(targets, image_hw, dtype)`` made before, or None."""
        c = self.config
        return retina_loss(
            cls_logits,
            box_deltas,
            self.anchors(image_hw),
            targets,
            num_classes=c.num_classes,
            alpha=c.focal_alpha,
            gamma=c.focal_gamma,
            box_loss=c.box_loss,
            beta=c.smooth_l1_beta,
            fg_iou=c.fg_iou_thresh,
            bg_iou=c.bg_iou_thresh,
            allow_low_quality_matches=c.allow_low_quality_matches,
            box_coder_weights=c.box_coder_weights,
            map_images=map_images,
            matched=matched,
        )

    def match(self, targets, image_hw, dtype=np.float32):
        """The targets matched to the anchors of an input of size ``image_hw`` in ``dtype``
        (the head outputs'), as ``loss`` matches them -> a list of ``ImageTargets``."""
        c = self.config
        return match_targets(targets, self.anchors(image_hw).astype(dtype, copy=False),
                             c.num_classes, c.fg_iou_thresh, c.bg_iou_thresh,
                             c.allow_low_quality_matches, c.box_coder_weights)

    def detect(self, images, image_sizes=None) -> list[dict]:
        """Detections per image, in each image's pixels (boxes clipped to ``image_sizes``).

        Args:
            images (ndarray[N, 3, H, W]): normalised, zero-padded images.
            image_sizes (list of (h, w)): each image's size before padding; default (H, W).
        Returns:
            list of N dicts {"boxes" (D, 4), "scores" (D,), "labels" (D,)}, scores descending.
        """
        was_training = self.training
        self.eval()
        try:
            # images go where the model is; the outputs come back to the host, where the
            # top-k, decoding and NMS run (a few thousand candidates: not worth a GPU launch)
            device = backend.device_of(self.parameters()[0].data)
            cls_logits, box_deltas = self.forward(backend.to_device(images, device))
            cls_logits, box_deltas = backend.to_numpy(cls_logits), backend.to_numpy(box_deltas)
        finally:
            self.train(was_training)
        return self.detections(cls_logits, box_deltas, images.shape[-2:], image_sizes)

    def detections(self, cls_logits, box_deltas, image_hw, image_sizes=None) -> list[dict]:
        """``detect``'s second half: head outputs -> detections, with this config's numbers.

        Args:
            cls_logits (ndarray[N, R, K]), box_deltas (ndarray[N, R, 4]): head outputs (on the
                host) for a batch of size ``image_hw``, rows in the order of ``anchors``.
            image_sizes (list of (h, w)): each image's size before padding; default image_hw.
        Returns:
            list of N dicts {"boxes" (D, 4), "scores" (D,), "labels" (D,)}, scores descending.
        """
        anchors, counts = self._anchors_and_counts(image_hw)
        if image_sizes is None:
            image_sizes = [tuple(image_hw)] * len(cls_logits)
        c = self.config
        return [
            postprocess(
                cls_logits[i],
                box_deltas[i],
                anchors,
                counts,
                image_sizes[i],
                score_thresh=c.score_thresh,
                topk_candidates=c.topk_candidates,
                nms_thresh=c.nms_thresh,
                detections_per_img=c.detections_per_img,
                box_coder_weights=c.box_coder_weights,
            )
            for i in range(len(cls_logits))
        ]
