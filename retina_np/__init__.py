"""retina_np: RetinaNet written from scratch in NumPy and Numba.

Letter legend, used in every docstring and shape comment of the package:

    N  batch (images)            C / F  channels in / out
    H / W  height / width        A  anchors per location
    K  classes                   R  anchors in total, all levels
    M  ground-truth boxes        D  detections

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, width = x2 - x1. Images and feature maps
are NCHW float32 (float64 works on the CPU, for gradient checks).
"""

import os

# OpenBLAS's idle threads spin for about 0.1 s after every GEMM and take a core from the
# Numba loop that follows (training steps ran 0.17 s instead of 0.13 s on 2 cores). A
# shorter spin has to be asked for before numpy loads OpenBLAS, so here, where the
# `retina-np` command starts; a user's own setting wins (docs/performance.md).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
