"""Detection geometry and losses: anchors, boxes, matching, losses, NMS, postprocessing.

Pure functions on numpy arrays (float32 or float64), with Numba kernels where the work is
O(R * K) or O(N^2). Letter legend as in the package: R anchors, K classes, M ground-truth
boxes, D detections, N batch.

The kernels are ``@njit(cache=True, nogil=True, error_model="numpy")``: a float division by
zero gives inf / NaN as in numpy instead of raising, so no division carries a check that
would also stop LLVM from vectorising the loop around it; they release the GIL, so that the
two halves of a batch's loss can run on two threads (retina_np/schedule.py). None uses ``fastmath``.

    generate_anchors(image_hw, feature_hws)      -> anchors (R, 4)
    box_iou(gt_boxes, anchors)                   -> (M, R)
    match_anchors(iou)                           -> (R,) gt index or sentinel
    encode_boxes(gt, anchors) / decode_boxes(deltas, anchors)
    match_targets(targets, anchors, K)           -> per image (anchor classes, foreground, deltas)
    retina_loss(cls_logits, box_deltas, anchors, targets) -> losses, d_cls, d_box
    postprocess(cls_logits, box_deltas, anchors, level_sizes, image_hw) -> detections
"""

from retina_np.detection.anchors import (
    DEFAULT_ANCHOR_SIZES,
    DEFAULT_ASPECT_RATIOS,
    DEFAULT_SCALES_PER_OCTAVE,
    cell_anchors,
    generate_anchors,
    grid_anchors,
    num_anchors_per_location,
    octave_scales,
)
from retina_np.detection.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    validate_boxes,
)
from retina_np.detection.losses import (
    ImageTargets,
    l1_loss,
    match_targets,
    retina_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from retina_np.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_anchors
from retina_np.detection.nms import batched_nms, nms
from retina_np.detection.postprocess import postprocess

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "DEFAULT_ANCHOR_SIZES",
    "DEFAULT_ASPECT_RATIOS",
    "DEFAULT_SCALES_PER_OCTAVE",
    "ImageTargets",
    "batched_nms",
    "box_area",
    "box_iou",
    "cell_anchors",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "grid_anchors",
    "l1_loss",
    "match_anchors",
    "match_targets",
    "nms",
    "num_anchors_per_location",
    "octave_scales",
    "postprocess",
    "retina_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "validate_boxes",
]
