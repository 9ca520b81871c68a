"""The per-image loss kernels of a training step (CPU), with the names and signatures of their
CUDA twins."""

from __future__ import annotations

import numpy as np

# The CPU loss kernels are written out in retina_np.detection.losses (where the maths is
# explained); these give them the names and signatures of their CUDA twins. They import it
# when called, because detection.losses imports retina_np.backend, which imports this module.


def focal_loss_anchor_classes(logits, anchor_class, alpha, gamma, grad_scale=1.0, out=None):
    """Focal loss of one image (R, K) from per-anchor classes (R,) -> (loss sum, gradient).

    The gradient, grad_scale * d loss / d logits, is written into ``out`` (R, K) when given.
    See ``detection.losses._focal_anchor_range``.
    """
    from retina_np.detection.losses import _alpha_for_kernel, _focal_loss_anchor_classes

    dlogits = np.empty_like(logits) if out is None else out
    total = _focal_loss_anchor_classes(logits, anchor_class, _alpha_for_kernel(alpha),
                                       float(gamma), grad_scale, dlogits)
    return total, dlogits


def box_loss_rows(pred, rows, target, beta, divisor, dpred):
    """Smooth-L1 (beta > 0) or L1 (beta == 0) loss of pred[rows] (F, 4) against target (F, 4);
    writes dpred[rows] = d loss / d pred[rows] / divisor and returns the loss sum.

    See ``detection.losses.smooth_l1_loss``.
    """
    from retina_np.detection.losses import smooth_l1_loss

    total, d_rows = smooth_l1_loss(pred[rows], target, beta)
    dpred[rows] = d_rows / divisor
    return total
