"""Compile every CUDA kernel of retina_np for a real GPU, with no GPU: ``python ptx_check.py``.

The simulator runs kernels as Python, so it never type-checks them for the CUDA target:
a shared array whose shape is not a compile-time constant, a float64 that sneaks into a
float32 kernel, or an unsupported call would only fail on real hardware. This script runs
every host function of ``kernels.cuda`` on host arrays, inside ``kernels.cuda.launch.target``
with a target of its own: allocations are numpy arrays, and each launch compiles its kernel with
NVVM to PTX for the given compute capability (default sm_90, the H100) instead of running it
(results are garbage, which the host code does not mind). Needs libNVVM (the CUDA toolkit or
the nvidia-cuda-nvcc wheel), not a driver. It also checks each launch's block size and
static shared memory, and reports kernels whose PTX uses local memory (arrays that did not
become registers).

Prints one line per kernel and exits 0 when all compile; exits 3 when NVVM is missing.
"""

from __future__ import annotations

import os
import re
import sys
import types

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

CC = tuple(int(v) for v in os.environ.get("RETINA_NP_PTX_CC", "9.0").split("."))
SHARED_LIMIT = 48 * 1024  # static shared memory per block


def _patch_numba_for_no_driver():
    """Device functions are compiled for the current device's cc; there is none here."""
    import numba.cuda.dispatcher as dispatcher

    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    # NVRTC is not needed to make PTX from NVVM IR, but numba-cuda looks it up on the way;
    # where it is missing (NVVM alone installed), tell it what it would have said.
    from numba.cuda import cuda_paths
    from numba.cuda.cudadrv import nvrtc

    try:
        cuda_paths._get_nvrtc_path()
    except Exception:
        cuda_paths._get_nvrtc_path = lambda: ("<not needed for PTX>", None)
        nvrtc.get_supported_ccs = lambda: [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0)]


class HostArray(np.ndarray):
    """A numpy array with the device-array methods the host code calls."""

    def copy_to_host(self):
        return np.array(self)

    def copy_to_device(self, values):
        self[...] = values


def _host(a):
    return np.ascontiguousarray(a).view(HostArray)


compiled: dict = {}
problems: list[str] = []


def _numba_type(a):
    if isinstance(a, np.ndarray):
        return numba.typeof(np.asarray(a))
    return numba.typeof(a)


def _fake_launch(kernel, grid, block, *args):
    threads = int(np.prod(block))
    sig = tuple(_numba_type(a) for a in args)
    key = (kernel.py_func, sig)
    name = kernel.py_func.__qualname__.replace(".<locals>.", ".")
    if threads > 1024:
        problems.append(f"{name}: {threads} threads per block")
    if key in compiled:
        return
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
    except Exception as exc:
        problems.append(f"{name}{sig}: {type(exc).__name__}: {str(exc)[:2000]}")
        compiled[key] = None
        return
    shared = sum(int(n) for n in re.findall(r"\.shared \.align \d+ \.b8 \S+\[(\d+)\]", ptx))
    local = sum(int(n) for n in re.findall(r"\.local \.align \d+ \.b8 \S+\[(\d+)\]", ptx))
    if shared > SHARED_LIMIT:
        problems.append(f"{name}: {shared} B of shared memory")
    compiled[key] = (name, shared, local)
    dtypes = sorted({str(t.dtype) for t in sig if isinstance(t, numba.types.Array)})
    print(f"ok  {name:45s} {'/'.join(dtypes):24s} shared {shared:6d} B  local {local:4d} B")


def exercise_every_kernel():
    """Call every host function of kernels.cuda in float32 and float64."""
    from retina_np.kernels import cuda as K
    from retina_np.kernels.cuda import launch

    compile_instead = launch.Target(empty=lambda shape, dtype: _host(np.zeros(shape, dtype)),
                                    to_device=_host, launch=_fake_launch)
    with launch.target(compile_instead):
        _call_every_kernel(K)


def _call_every_kernel(K):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        def arr(*shape, dtype=dtype):
            return _host(rng.standard_normal(shape).astype(dtype))

        x, w, b = arr(2, 3, 9, 8), arr(5, 3, 3, 3), arr(5)
        y = K.conv2d_forward(x, w, b, 1, 1)
        K.conv2d_forward(x, w, None, 2, 1)
        K.conv2d_forward(arr(1, 64, 5, 5), arr(64, 64, 3, 3), None, 1, 1)  # split-K
        K.conv2d_backward_input(y, w, 9, 8, 1, 1)
        K.conv2d_backward_weight(y, x, 3, 3, 1, 1)
        K.bias_backward(y)
        mean, var = K.batchnorm2d_stats(x)
        c = arr(3)
        K.batchnorm2d_update_stats(mean, var, 144, arr(3), _host(np.abs(c)), 0.1, 1e-5)
        K.batchnorm2d_eval_stats(arr(3), _host(np.abs(c)), 1e-5)
        K.batchnorm2d_forward(x, mean, c, c, c)
        K.batchnorm2d_backward(x, x, mean, c, c)
        _, gn_mean, gn_invstd = K.groupnorm_forward(x, c, c, 3, 1e-5)
        K.groupnorm_backward(x, x, gn_mean, gn_invstd, c, 3)
        K.relu_backward(x, K.relu_forward(x))
        K.add_forward(x, x)
        p, argmax = K.maxpool2d_forward(x, 3, 2, 1)
        argmax[...] = 0
        K.maxpool2d_backward(p, argmax, 9, 8)
        K.maxpool2d_backward(p, argmax, 9, 8, window=(3, 2, 1))
        K.upsample_nearest_backward(K.upsample_nearest_forward(x, 18, 16), 9, 8)
        z = K.zeros_like(x)
        K.scale_(z, 0.5)
        K.add_inplace_(z, x)
        K.sgd_update_(z, x, K.zeros_like(x), 0.1, 0.9, 1e-4)
        K.adamw_update_(z, x, K.zeros_like(x), K.zeros_like(x), 1e-3, 0.9, 0.999, 1e-8, 1e-2, 3)
        K.cast(x, np.float64)
        logits = arr(20, 3)
        K.focal_loss_anchor_classes(logits, _host(np.array([0, -1, -2, 2] * 5)), 0.25, 2.0, 1.0)
        K.sigmoid_focal_loss(logits, logits, 0.25, 2.0)
        K.smooth_l1_loss(logits, logits, 1 / 9)
        boxes = _host(np.abs(rng.standard_normal((20, 4))).cumsum(1).astype(dtype))
        K.box_iou(boxes, boxes)
        K.decode_boxes(arr(20, 4), boxes, (1.0, 1.0, 1.0, 1.0), 4.135)
        scores = _host(rng.uniform(size=20).astype(dtype))
        K.nms(boxes, scores, 0.5)
        K.batched_nms(boxes, scores, _host(np.arange(20) % 3), 0.5)
        # what a training step adds: the heads' layout, the per-image losses, the grad norm
        rows = K.levels_to_rows([arr(2, 6, 3, 2), arr(2, 6, 1, 1)], 3)
        K.rows_to_levels(rows, [(3, 2), (1, 1)], 3)
        K.focal_loss_anchor_classes(logits, _host(np.zeros(20, np.int64)), 0.25, 2.0, 0.5,
                                    out=K.empty_like(logits))
        K.box_loss_rows(arr(20, 4), _host(np.array([1, 5, 7])), arr(3, 4), 1 / 9, 6,
                        K.zeros_like(arr(20, 4)))
        K.sum_squares([x, w, b])


def main() -> int:
    _patch_numba_for_no_driver()

    def probe(a):
        a[0] = 1

    try:
        cuda.compile_ptx(probe, (numba.types.float32[::1],), cc=CC)
    except Exception as exc:
        print(f"NVVM unavailable, nothing compiled: {type(exc).__name__}: {exc}")
        return 3
    exercise_every_kernel()
    print(f"{len(compiled)} kernel specialisations compiled for sm_{CC[0]}{CC[1]}")
    for p in problems:
        print("PROBLEM", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
