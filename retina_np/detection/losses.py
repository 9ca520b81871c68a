"""RetinaNet's losses, each returned together with its analytic gradient.

* :func:`sigmoid_focal_loss` -- the classification loss of the paper (Lin et al. 2017);
* :func:`smooth_l1_loss` and :func:`l1_loss` -- box regression losses;
* :func:`retina_loss` -- the full training loss of a batch: match anchors to ground truth,
  focal loss over every non-ignored (anchor, class), box loss over foreground anchors, each
  image normalised by its number of foreground anchors, mean over images. The matching runs
  on the host; the two losses run where the head outputs are (on a GPU: the CUDA twins of
  the loss loops, so the gradients never leave the device).

Every function returns ``(loss, gradient)``: no autograd here, the derivative of each loss
is written out in its docstring and checked against finite differences in the tests. The
loops themselves are kernels (``kernels/cpu/loss.py`` and its CUDA twin), called through
``retina_np.backend``: the focal loss of a batch touches R * K ~ 10^7 logits, so its inner
loop is a Numba kernel that reads the class of each anchor instead of a dense one-hot target
array.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from retina_np import backend
from retina_np.detection.boxes import (
    DEFAULT_BOX_CODER_WEIGHTS,
    box_iou,
    encode_boxes,
    validate_boxes,
)
from retina_np.detection.matcher import (
    DEFAULT_BG_IOU_THRESH,
    DEFAULT_FG_IOU_THRESH,
    match_anchors,
    match_and_encode_kernel,
)

# Focal loss (section 3.2 / 5.1 of the paper): alpha weights the positives, gamma down-weights
# the easy examples; alpha = 0.25 with gamma = 2 was the best pair in their Table 1a.
DEFAULT_FOCAL_ALPHA = 0.25
DEFAULT_FOCAL_GAMMA = 2.0
# Smooth-L1 switches from quadratic to linear at |d| = beta; 1/9 (Detectron's sigma = 3,
# beta = 1 / sigma^2) keeps it close to L1 for the small deltas of well-placed anchors.
DEFAULT_SMOOTH_L1_BETA = 1.0 / 9.0


# --------------------------------------------------------------------------------------
# Sigmoid focal loss
# --------------------------------------------------------------------------------------


def _check_focal(alpha, gamma) -> None:
    """alpha in [0, 1], or None / negative for no weighting; gamma >= 0."""
    if alpha is not None and alpha > 1:
        raise ValueError(f"alpha must be in [0, 1], or None / negative for no weighting: {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def sigmoid_focal_loss(
    logits: np.ndarray,
    targets: np.ndarray,
    alpha: float | None = DEFAULT_FOCAL_ALPHA,
    gamma: float = DEFAULT_FOCAL_GAMMA,
):
    """Summed sigmoid focal loss and its gradient with respect to the logits.

    With ``p = sigmoid(x)``, ``q = 1 - p`` and target ``t`` in [0, 1] (0 or 1 in RetinaNet):

        ce      = -t log p - (1 - t) log q          (binary cross-entropy)
        m       = 1 - p_t = p (1 - t) + q t         (probability of the wrong answer)
        alpha_t = alpha t + (1 - alpha) (1 - t)     (1 when alpha is None or < 0)
        FL      = alpha_t * m^gamma * ce

    Gradient, from dp/dx = p q:  d ce / dx = p - t  and  dm/dx = p q (1 - 2t), so

        dFL/dx = alpha_t * [ (p - t) m^gamma + gamma m^(gamma-1) p q (1 - 2t) ce ].

    For t = 1 this is ``-alpha q^gamma (q + gamma p ce)``; for t = 0,
    ``(1 - alpha) p^gamma (p + gamma q ce)`` with ``ce = softplus(x)``. The second term
    vanishes with m (when m = 0 it is taken as 0, also for gamma < 1). The maths runs in
    float64 from ``exp(-|x|)``, so logits of +-100 give finite losses and gradients: the
    element kernel, ``_focal_element`` in ``kernels/cpu/loss.py``, writes this out (its CUDA
    twin compiles the same Python source for the GPU).

    Args:
        logits (ndarray[...]): any shape, float32 or float64.
        targets (ndarray[...]): same shape, values in [0, 1].
        alpha (float | None): weight of the positives; ``None`` or < 0 for none.
        gamma (float): focusing exponent, >= 0; 0 gives plain cross-entropy.

    Returns:
        tuple[float, ndarray[...]]: the loss summed over all elements, and d loss / d logits
        in the shape and dtype of ``logits``.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} differ in shape")
    _check_focal(alpha, gamma)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    return backend.kernels_for(logits, targets).sigmoid_focal_loss(logits, targets, alpha, gamma)


# --------------------------------------------------------------------------------------
# Box regression losses
# --------------------------------------------------------------------------------------


def smooth_l1_loss(pred: np.ndarray, target: np.ndarray, beta: float = DEFAULT_SMOOTH_L1_BETA):
    """Summed smooth-L1 (Huber / beta) loss and its gradient with respect to ``pred``.

    With d = pred - target:

        loss = 0.5 d^2 / beta    if |d| < beta      d loss / d pred = d / beta
               |d| - 0.5 beta    otherwise                           sign(d)

    ``beta = 0`` is plain L1 (as in torch). The gradient is continuous; its kink is at
    |d| = beta.

    Args:
        pred (ndarray[...]): predictions, float32 or float64.
        target (ndarray[...]): same shape.
        beta (float): width of the quadratic zone, >= 0.

    Returns:
        tuple[float, ndarray[...]]: loss sum and d loss / d pred (dtype of ``pred``).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    pred = np.asarray(pred)
    target = np.asarray(target, dtype=pred.dtype)
    return backend.kernels_for(pred, target).smooth_l1_loss(pred, target, beta)


def l1_loss(pred: np.ndarray, target: np.ndarray):
    """Summed L1 loss ``sum |pred - target|`` and its gradient ``sign(pred - target)``.

    The gradient at a zero difference is taken as 0 (as torch does).

    Returns:
        tuple[float, ndarray[...]]: loss sum and d loss / d pred (shape and dtype of ``pred``).
    """
    pred = np.asarray(pred)
    target = np.asarray(target, dtype=pred.dtype)
    return backend.kernels_for(pred, target).l1_loss(pred, target)


_BOX_LOSSES = {"smooth_l1", "l1"}


# --------------------------------------------------------------------------------------
# The RetinaNet loss of a batch
# --------------------------------------------------------------------------------------


def retina_loss(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    anchors: np.ndarray,
    targets: list,
    num_classes: int | None = None,
    alpha: float | None = DEFAULT_FOCAL_ALPHA,
    gamma: float = DEFAULT_FOCAL_GAMMA,
    box_loss: str = "smooth_l1",
    beta: float = DEFAULT_SMOOTH_L1_BETA,
    fg_iou: float = DEFAULT_FG_IOU_THRESH,
    bg_iou: float = DEFAULT_BG_IOU_THRESH,
    allow_low_quality_matches: bool = True,
    box_coder_weights=DEFAULT_BOX_CODER_WEIGHTS,
    map_images=map,
    matched=None,
):
    """RetinaNet's training loss of a batch and its gradients with respect to the head outputs.

    Per image: IoU of the ground truth with every anchor, :func:`match_anchors`; focal loss
    summed over all (anchor, class) pairs of non-ignored anchors (one-hot targets from the
    matched box's label, all zeros for background); box loss summed over the encoded targets
    of the foreground anchors; both divided by ``max(1, foreground anchors of the image)``.
    The batch losses are the means over images, as torchvision computes them.

    Args:
        cls_logits (ndarray[N, R, K]): classification logits (numpy, or a numba.cuda device
            array: the losses then run on the GPU and the gradients stay there).
        box_deltas (ndarray[N, R, 4]): predicted ``dx, dy, dw, dh``, on the same device.
        anchors (ndarray[R, 4]): anchors in the same order (shared by the images).
        targets (list[dict]): per image ``{"boxes": (M, 4), "labels": (M,)}``; M may be 0.
        num_classes (int | None): K, checked against ``cls_logits`` when given.
        alpha, gamma: focal loss parameters (see :func:`sigmoid_focal_loss`).
        box_loss (str): ``"smooth_l1"`` (with ``beta``) or ``"l1"``.
        fg_iou, bg_iou (float): matcher thresholds.
        allow_low_quality_matches (bool): each box also claims its best anchors
            (:func:`match_anchors`).
        box_coder_weights (tuple[float, float, float, float]): the weights of ``dx, dy, dw,
            dh`` in the encoded targets (:func:`encode_boxes`); detection decodes with them.
        map_images: how the images are run, ``map_images(image_loss, range(N))``: ``map``,
            one after another; or anything that returns ``map``'s results in order (the
            images share nothing but the anchors: retina_np/schedule.py runs the two halves
            of the batch side by side).
        matched (list[ImageTargets] | None): the targets already matched to these anchors
            with these numbers (:func:`match_targets`; retina_np/schedule.py matches them
            beside the forward), or None: matched here.

    Returns:
        tuple: ``losses`` dict with ``"classification"``, ``"box_regression"``, ``"total"``
        (their sum) and ``"num_foreground"`` (over the batch), all Python floats;
        ``d_cls_logits`` (ndarray[N, R, K]) and ``d_box_deltas`` (ndarray[N, R, 4]), the
        gradients of ``total``, in the dtypes and on the device of the inputs.

    Raises:
        ValueError: on inconsistent shapes, or a target with a degenerate or non-finite box
            or a label outside 0..K-1 (the message names the image and the box).
    """
    device = backend.device_of(cls_logits)
    if device == "cpu":
        cls_logits = np.ascontiguousarray(cls_logits)
        box_deltas = np.asarray(box_deltas)
    if len(cls_logits.shape) != 3:
        raise ValueError(f"cls_logits must be (N, R, K), got {cls_logits.shape}")
    batch, num_anchors, k = cls_logits.shape
    if num_classes is not None and num_classes != k:
        raise ValueError(f"num_classes={num_classes} but cls_logits has {k} classes")
    if tuple(box_deltas.shape) != (batch, num_anchors, 4):
        raise ValueError(f"box_deltas must be {(batch, num_anchors, 4)}, got {box_deltas.shape}")
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} targets given for a batch of {batch}")
    if box_loss not in _BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {sorted(_BOX_LOSSES)}, got {box_loss!r}")
    anchors = np.asarray(anchors, dtype=cls_logits.dtype)
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors must be {(num_anchors, 4)}, got {anchors.shape}")
    _check_focal(alpha, gamma)
    box_beta = beta if box_loss == "smooth_l1" else 0.0  # smooth-L1 with beta 0 is L1

    # Matching runs on the host, where the anchors and the targets are; the focal and box
    # losses run where the head outputs are (the CPU kernels, or their CUDA twins on a GPU),
    # given the per-anchor results of the matching.
    kernels = backend.kernels_for(cls_logits, box_deltas)
    d_cls_logits = kernels.empty_like(cls_logits)  # (N, R, K): every element is written
    d_box_deltas = kernels.zeros_like(box_deltas)  # (N, R, 4): zero but foreground rows

    # First every image's matching (unless it was made already), then the losses, the
    # kernels' work, which ``map_images`` may run side by side.
    if matched is None:
        matched = match_targets(targets, anchors, k, fg_iou, bg_iou, allow_low_quality_matches,
                                box_coder_weights)
    elif len(matched) != batch or any(m.anchor_class.shape != (num_anchors,) for m in matched):
        raise ValueError(f"matched must hold {batch} images' matching to {num_anchors} anchors")

    def image_loss(b):
        """Image b's (focal loss, box loss, foreground anchors); its gradients into d_*[b]."""
        anchor_class, foreground, target_deltas = matched[b]
        norm = max(1, foreground.size)
        cls_sum, _ = kernels.focal_loss_anchor_classes(
            cls_logits[b], backend.to_device(anchor_class, device), alpha, float(gamma),
            1.0 / (norm * batch), out=d_cls_logits[b],
        )
        box_sum = kernels.box_loss_rows(
            box_deltas[b], backend.to_device(foreground, device),
            backend.to_device(target_deltas.astype(box_deltas.dtype, copy=False), device),
            box_beta, norm * batch, d_box_deltas[b],
        )
        return cls_sum / norm, box_sum / norm, foreground.size

    cls_total = box_total = 0.0
    num_foreground_total = 0
    for cls_b, box_b, num_foreground in map_images(image_loss, range(batch)):  # image order
        cls_total += cls_b
        box_total += box_b
        num_foreground_total += num_foreground

    classification = cls_total / max(1, batch)
    box_regression = box_total / max(1, batch)
    losses = {
        "classification": classification,
        "box_regression": box_regression,
        "total": classification + box_regression,
        "num_foreground": float(num_foreground_total),
    }
    return losses, d_cls_logits, d_box_deltas


class ImageTargets(NamedTuple):
    """One image's ground truth matched to the anchors: all that its loss needs of it."""

    anchor_class: np.ndarray  # (R,) int64: a foreground anchor's class, else the matcher's
    #                           sentinel (below the low threshold, or between: ignored)
    foreground: np.ndarray  # (F,) the foreground anchors' indices
    target_deltas: np.ndarray  # (F, 4) their matched boxes, encoded against them


def match_targets(targets, anchors, num_classes, fg_iou=DEFAULT_FG_IOU_THRESH,
                  bg_iou=DEFAULT_BG_IOU_THRESH, allow_low_quality_matches=True,
                  box_coder_weights=DEFAULT_BOX_CODER_WEIGHTS) -> list[ImageTargets]:
    """Every image's target matched to the anchors (R, 4), one after another (``match_image``;
    Python and small arrays, which would only take turns with the interpreter beside each
    other) -> a list of ``ImageTargets``, what :func:`retina_loss` takes as ``matched``."""
    return [match_image(target, anchors, num_classes, b, fg_iou, bg_iou,
                        allow_low_quality_matches, box_coder_weights)
            for b, target in enumerate(targets)]


def match_image(target, anchors, num_classes, image_index=0, fg_iou=DEFAULT_FG_IOU_THRESH,
                bg_iou=DEFAULT_BG_IOU_THRESH, allow_low_quality_matches=True,
                box_coder_weights=DEFAULT_BOX_CODER_WEIGHTS) -> ImageTargets:
    """One image's target ``{"boxes": (M, 4), "labels": (M,)}`` matched to the anchors (R, 4)
    as :func:`retina_loss` matches it: the IoU, :func:`match_anchors`, and the foreground
    anchors' boxes encoded, in the anchors' dtype. Raises ValueError on a degenerate or
    non-finite box, or a label outside 0..num_classes-1 (the message names image
    ``image_index`` and the box).

    :func:`match_image_steps` is the same in NumPy calls, one step after another: read it
    first. This runs its steps in one kernel (``matcher.match_and_encode_kernel``; ~20 small
    calls an image cost more than the arithmetic) and gives its bits (tests/detection)."""
    boxes, labels = _checked_target(target, anchors, num_classes, image_index, fg_iou, bg_iou)
    dtype = anchors.dtype.type
    wx, wy, ww, wh = box_coder_weights
    anchor_class, foreground, target_deltas = match_and_encode_kernel(
        boxes, labels, anchors, dtype(fg_iou), dtype(bg_iou), bool(allow_low_quality_matches),
        dtype(0.5), dtype(wx), dtype(wy))
    # the sizes' ratios to their logarithms, by NumPy's log as encode_boxes takes them
    ratios = np.ascontiguousarray(target_deltas[:, 2:].T)  # (2, F)
    target_deltas[:, 2] = ww * np.log(ratios[0])
    target_deltas[:, 3] = wh * np.log(ratios[1])
    return ImageTargets(anchor_class, foreground, target_deltas)


def match_image_steps(target, anchors, num_classes, image_index=0,
                      fg_iou=DEFAULT_FG_IOU_THRESH, bg_iou=DEFAULT_BG_IOU_THRESH,
                      allow_low_quality_matches=True,
                      box_coder_weights=DEFAULT_BOX_CODER_WEIGHTS) -> ImageTargets:
    """:func:`match_image`, one NumPy step after another."""
    boxes, labels = _checked_target(target, anchors, num_classes, image_index, fg_iou, bg_iou)
    matches = match_anchors(box_iou(boxes, anchors), fg_iou, bg_iou,
                            allow_low_quality_matches)  # (R,)
    foreground = np.flatnonzero(matches >= 0)  # (F,)
    anchor_class = matches.copy()  # (R,): class of foreground anchors, sentinels kept
    anchor_class[foreground] = labels[matches[foreground]]
    target_deltas = encode_boxes(boxes[matches[foreground]], anchors[foreground],
                                 box_coder_weights)  # (F, 4)
    return ImageTargets(anchor_class, foreground, target_deltas)


def _checked_target(target, anchors, num_classes, image_index, fg_iou, bg_iou):
    """(boxes (M, 4) in the anchors' dtype, labels (M,) int64), both C-contiguous, of a
    target that ``validate_boxes`` passed; thresholds in order."""
    if bg_iou > fg_iou:
        raise ValueError(f"low threshold {bg_iou} must not exceed high threshold {fg_iou}")
    boxes = np.asarray(target["boxes"])
    labels = np.asarray(target["labels"])
    validate_boxes(boxes, labels, num_classes, image_index=image_index)
    boxes = np.ascontiguousarray(boxes.reshape(-1, 4), dtype=anchors.dtype)  # (M, 4)
    labels = np.ascontiguousarray(labels.reshape(-1), dtype=np.int64)  # (M,)
    return boxes, labels
