"""The one place that chooses CPU (``kernels.cpu``) or CUDA (``kernels.cuda``) kernels.

An array decides its own backend: numpy arrays run on the CPU kernels, numba.cuda device
arrays (anything with ``__cuda_array_interface__``) on the CUDA kernels. Nothing else in the
package imports ``kernels.cuda``.
"""

from __future__ import annotations

import numpy as np

from retina_np.kernels import cpu

_cuda_module = None


class CudaUnavailableError(RuntimeError):
    """Raised when the CUDA backend is asked for and no usable GPU is there."""


def is_device_array(x) -> bool:
    """True for a numba.cuda device array (or any array exposing the CUDA array interface)."""
    if x is None or isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    # Arrays of the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) do not expose the interface.
    return type(x).__name__ == "FakeCUDAArray"


def cuda_kernels():
    """The ``kernels.cuda`` module; one clear error when CUDA cannot be used here."""
    global _cuda_module
    if _cuda_module is None:
        try:
            from numba import cuda
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise CudaUnavailableError(
                "device 'cuda' needs numba-cuda: pip install 'retina_np[cuda]'"
            ) from exc
        if not cuda.is_available():
            raise CudaUnavailableError(
                "device 'cuda' was asked for, but numba.cuda finds no usable NVIDIA GPU "
                "(set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the simulator)"
            )
        from retina_np.kernels import cuda as cuda_module

        _cuda_module = cuda_module
    return _cuda_module


def kernels_for(*arrays):
    """The kernel module (``kernels.cpu`` or ``kernels.cuda``) for these arrays.

    Raises ``ValueError`` if host and device arrays are mixed.
    """
    on_device = [is_device_array(a) for a in arrays if a is not None]
    if not any(on_device):
        return cpu
    if not all(on_device):
        raise ValueError("arrays on the CPU and on the GPU were mixed in one operation")
    return cuda_kernels()


def check_device(device: str) -> str:
    """Normalise a device name ('cpu' or 'cuda'); 'cuda' checks that a GPU is usable."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        cuda_kernels()
    return device


def to_device(x: np.ndarray, device: str):
    """Copy a numpy array to ``device`` ('cpu' returns it unchanged)."""
    if device == "cpu":
        return to_numpy(x)
    check_device(device)
    from numba import cuda

    if is_device_array(x):
        return x
    return cuda.to_device(np.ascontiguousarray(x))


def to_numpy(x) -> np.ndarray:
    """A numpy array for ``x`` (copied from the GPU if it lives there)."""
    if is_device_array(x):
        return x.copy_to_host()
    return np.asarray(x)


def device_of(x) -> str:
    """'cuda' for a device array, else 'cpu'."""
    return "cuda" if is_device_array(x) else "cpu"
