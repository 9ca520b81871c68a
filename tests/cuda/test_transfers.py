"""A training step on the GPU stays on the GPU (issue 21): every host <-> device copy made during
one ``train_step`` of a tiny RetinaNet is counted, and the test fails when one appears that is
not in the list below.

What may cross, and why (N images in the batch):

    host -> device  1       the batch of images (the loader draws numpy images)
                    N       per image, the class of every anchor (R,) int64: matching runs on
                            the host, where the anchors and the targets are
                    N       per image, the indices of its foreground anchors (F,) int64
                    N       per image, the encoded box targets of those anchors (F, 4) float32
    device -> host  2N      per image, the per-block partial sums of its focal loss and of its
                            box loss (float64 vectors): the losses are logged as Python floats
                    1       the partial sums of the squared gradient norm (float64): logged, and
                            compared with the clipping threshold on the host

That is 5N + 2 copies, 12 for the batch of 2 here. Activations, gradients, parameters, optimiser
state and BatchNorm statistics never cross.

The first step of a model also uploads the convolutions' int64 index tables, (n, 3) each, once
per shape (they are cached); the test runs that step first and checks that nothing else is added
there. It then counts a second step with AdamW (the demo's optimiser, whose state is created on
the device at its first step).

How the copies are seen: on the simulator, by wrapping ``numba.cuda.to_device`` (and the
simulator's own ``to_device``, which kernel launches use for host arrays passed as arguments),
the device array's ``copy_to_host`` and ``copy_to_device``, and element reads and writes of a
device array from the host thread (each a copy on a real GPU). On a GPU, by wrapping the driver's
``host_to_device`` and ``device_to_host``, through which all of those go, and by turning
numba's warning about a host array passed to a kernel into an error.
"""

from __future__ import annotations

import collections
import os
import threading
import traceback
import warnings

import numpy as np
import pytest
from numba import cuda
from test_cuda_training import STEP_IMAGE_HW, STEP_LAUNCHES, _targets

from retina_np import backend
from retina_np.kernels import options
from retina_np.models import RetinaNet, RetinaNetConfig
from retina_np.optim import SGD, AdamW
from retina_np.train import train_step

ON_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

H2D, D2H = "host->device", "device->host"


class Transfer(collections.namedtuple("Transfer", "direction dtype shape where")):
    """One copy: its direction, the dtype and shape of the array copied, and the package lines that
    asked for it (the two innermost frames in retina_np)."""

    def kind(self):
        return self.direction, np.dtype(self.dtype).name, len(self.shape)


def _caller() -> str:
    marker = f"{os.sep}retina_np{os.sep}"
    frames = [f"{f.filename.split(marker)[-1]}:{f.lineno} ({f.name})"
              for f in reversed(traceback.extract_stack()) if marker in f.filename]
    return " <- ".join(frames[:2]) or "outside retina_np"


def _watch_simulator(patch, log):
    from numba.cuda.simulator.cudadrv import devicearray

    fake = devicearray.FakeCUDAArray
    host_thread = threading.get_ident()  # the simulator runs kernels in threads of their own
    to_device, copy_to_host = devicearray.to_device, fake.copy_to_host
    copy_to_device, getitem, setitem = fake.copy_to_device, fake.__getitem__, fake.__setitem__

    def watched_to_device(ary, *args, **kwargs):
        a = np.asarray(ary)
        log.append(Transfer(H2D, a.dtype, a.shape, _caller()))
        return to_device(ary, *args, **kwargs)

    def watched_copy_to_host(self, *args, **kwargs):
        log.append(Transfer(D2H, self.dtype, tuple(self.shape), _caller()))
        return copy_to_host(self, *args, **kwargs)

    def watched_copy_to_device(self, ary, *args, **kwargs):
        if not isinstance(ary, fake):  # device to device stays on the device
            a = np.asarray(ary)
            log.append(Transfer(H2D, a.dtype, a.shape, _caller()))
        return copy_to_device(self, ary, *args, **kwargs)

    def watched_getitem(self, index):
        value = getitem(self, index)
        if threading.get_ident() == host_thread and not isinstance(value, fake):
            log.append(Transfer(D2H, self.dtype, (), _caller()))  # an element read
        return value

    def watched_setitem(self, index, value):
        if threading.get_ident() == host_thread and not isinstance(value, fake):
            v = np.asarray(value)
            log.append(Transfer(H2D, v.dtype, v.shape, _caller()))
        return setitem(self, index, value)

    # cuda.to_device is the same function object as devicearray.to_device: both names are
    # replaced; a call through either is logged once.
    patch.setattr(cuda, "to_device", watched_to_device)
    patch.setattr(devicearray, "to_device", watched_to_device)
    patch.setattr(fake, "copy_to_host", watched_copy_to_host)
    patch.setattr(fake, "copy_to_device", watched_copy_to_device)
    patch.setattr(fake, "__getitem__", watched_getitem)
    patch.setattr(fake, "__setitem__", watched_setitem)


def _watch_gpu(patch, log):
    from numba.cuda.cudadrv import devicearray, driver

    host_to_device, device_to_host = driver.host_to_device, driver.device_to_host

    def described(device, host):
        """(dtype, shape) of a copy, read off the device array where there is one: the host
        side of copy_to_host is a flat byte buffer."""
        if hasattr(device, "dtype") and hasattr(device, "shape"):
            return np.dtype(device.dtype), tuple(device.shape)
        if isinstance(host, np.ndarray):
            return host.dtype, host.shape
        return np.dtype(np.uint8), (0,)  # a raw pointer: kind unknown, still counted

    def watched_host_to_device(dst, src, size, *args, **kwargs):
        log.append(Transfer(H2D, *described(dst, src), _caller()))
        return host_to_device(dst, src, size, *args, **kwargs)

    def watched_device_to_host(dst, src, size, *args, **kwargs):
        log.append(Transfer(D2H, *described(src, dst), _caller()))
        return device_to_host(dst, src, size, *args, **kwargs)

    patch.setattr(driver, "host_to_device", watched_host_to_device)
    patch.setattr(driver, "device_to_host", watched_device_to_host)
    # A host array passed to a kernel is copied in and out without either function: numba
    # warns about it (when its config says so, as by default), and here the warning fails
    # the step.
    config = getattr(devicearray, "config", None)
    if config is not None and hasattr(config, "CUDA_WARN_ON_IMPLICIT_COPY"):
        patch.setattr(config, "CUDA_WARN_ON_IMPLICIT_COPY", 1)
        patch.setattr(config, "DISABLE_PERFORMANCE_WARNINGS", 0, raising=False)
    warnings.filterwarnings("error", message="Host array used in CUDA kernel")


def counted_step(monkeypatch, *step_args, **step_kwargs):
    """(losses, transfers) of one train_step."""
    log: list[Transfer] = []
    with monkeypatch.context() as patch, warnings.catch_warnings():
        (_watch_simulator if ON_SIMULATOR else _watch_gpu)(patch, log)
        losses = train_step(*step_args, **step_kwargs)
    return losses, log


def expected_kinds(batch: int) -> collections.Counter:
    """The copies of one step, by (direction, dtype, ndim): see the module docstring."""
    return collections.Counter({
        (H2D, "float32", 4): 1,  # the images
        (H2D, "int64", 1): 2 * batch,  # per image: anchor classes (R,), foreground indices (F,)
        (H2D, "float32", 2): batch,  # per image: box targets of the foreground anchors (F, 4)
        (D2H, "float64", 1): 2 * batch + 1,  # per image: focal and box partial sums; grad norm
    })


def _is_index_table(t: Transfer) -> bool:
    return t.kind() == (H2D, "int64", 2)


def _table(log) -> str:
    return "\n".join(f"  {t.direction} {np.dtype(t.dtype).name}{list(t.shape)} from {t.where}"
                      for t in log)


def test_training_step_copies_only_matching_and_logged_scalars(small_launches, monkeypatch,
                                                                rng):
    with options(**STEP_LAUNCHES):
        _check_training_step_copies(monkeypatch, rng)


def _check_training_step_copies(monkeypatch, rng):
    config = RetinaNetConfig.tiny(2)
    images = rng.standard_normal((2, 3, *STEP_IMAGE_HW)).astype(np.float32)  # numpy, as loaded
    targets = _targets(rng, [1, 2], STEP_IMAGE_HW, config.num_classes)
    model = RetinaNet(config, seed=0).to("cuda")
    batch = images.shape[0]
    want = expected_kinds(batch)
    assert sum(want.values()) == 5 * batch + 2 == 12

    # First step (SGD, clipping on): the expected copies plus the index tables, once per shape.
    sgd = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    losses, first = counted_step(monkeypatch, model, sgd, images, targets, lr=0.01, clip=0.2)
    assert losses["num_foreground"] > 0 and losses["grad_norm"] > 0.2  # every path ran
    got = collections.Counter(t.kind() for t in first)
    assert got[H2D, "float32", 4] == 1, "the upload of the images was not seen:\n" + _table(first)
    others = [t for t in first if not _is_index_table(t)]  # tables: (n, 3) int64, cached
    assert collections.Counter(t.kind() for t in others) == want, (
        f"first step: expected {dict(want)} besides the index tables, got:\n" + _table(others))

    # Second step, with AdamW: exactly the expected copies, and nothing left on the host.
    adamw = AdamW(model.named_parameters(), lr=0.001)
    losses, second = counted_step(monkeypatch, model, adamw, images, targets, lr=0.001, clip=0.2)
    got = collections.Counter(t.kind() for t in second)
    assert got == want, f"expected {dict(want)}, got:\n" + _table(second)
    assert all(isinstance(v, float) for v in losses.values())
    num_anchors = model.anchors(STEP_IMAGE_HW).shape[0]
    anchor_classes = [t for t in second if t.kind() == (H2D, "int64", 1)
                      and t.shape == (num_anchors,)]
    assert len(anchor_classes) == batch, _table(second)
    for p in model.parameters():
        assert backend.is_device_array(p.data) and backend.is_device_array(p.grad)


@cuda.jit
def _double(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] *= 2


@pytest.mark.skipif(not ON_SIMULATOR, reason="checks the watch itself, on the simulator")
def test_the_watch_sees_each_kind_of_copy(monkeypatch):
    """The wrappers above see explicit uploads and downloads, element reads and writes from the
    host, and host arrays handed to a kernel (copied in, and back out after the launch)."""
    log: list[Transfer] = []
    with monkeypatch.context() as patch:
        _watch_simulator(patch, log)
        d = backend.to_device(np.ones(3, np.float32), "cuda")
        backend.to_numpy(d)
        d[0] = 5.0
        float(d[1])
        d.copy_to_device(np.zeros(3, np.float32))
        host = np.ones(4, np.float32)
        _double[1, 4](host)
    assert np.all(host == 2)
    assert [t.direction for t in log] == [H2D, D2H, H2D, D2H, H2D, H2D, D2H], _table(log)
