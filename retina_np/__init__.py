"""retina_np: RetinaNet written from scratch in NumPy and Numba.

Letter legend, used in every docstring and shape comment of the package:

    N  batch (images)            C / F  channels in / out
    H / W  height / width        A  anchors per location
    K  classes                   R  anchors in total, all levels
    M  ground-truth boxes        D  detections

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, width = x2 - x1. Images and feature maps
are NCHW float32 (float64 works on the CPU, for gradient checks).
"""

from retina_np import runtime

runtime.configure()  # OpenBLAS's and OpenMP's idle threads, malloc: before numpy loads BLAS

__version__ = "0.1.0"
