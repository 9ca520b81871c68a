"""kernels/threads.py: independent CPU work side by side (the model's use of it:
tests/test_schedule.py)."""

import sys
import threading
import time

import numba
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from retina_np.kernels import cpu, threads


def _start_thread_pool():
    """Run one parallel loop, so that Numba has chosen its threading layer."""
    x = np.ones((2, 4, 64, 64), np.float32)  # above PARALLEL_MIN_ELEMENTS: the prange loop
    cpu.groupnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), 2, 1e-5)


def _blas_threads():
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas")
            .lib_controllers]


@pytest.fixture
def side_by_side_possible():
    _start_thread_pool()
    if threads._threads_per_task(2) is None:
        pytest.skip(f"tasks run one by one here: {numba.get_num_threads()} Numba thread(s), "
                    f"threading layer {numba.threading_layer()}")


def test_tasks_run_at_once_on_their_share_of_the_cores(side_by_side_possible):
    cores, blas_before = numba.get_num_threads(), _blas_threads()
    both_running = threading.Barrier(2, timeout=10)  # broken unless the tasks overlap

    def task(value):
        def run():
            both_running.wait()
            return value, threading.get_ident(), numba.get_num_threads(), _blas_threads()
        return run

    (a, ident_a, numba_a, blas_a), (b, ident_b, numba_b, blas_b) = threads.side_by_side(
        task("a"), task("b"))
    assert (a, b) == ("a", "b")
    assert ident_a == threading.get_ident() != ident_b
    assert numba_a == numba_b == cores // 2
    assert set(blas_a) == set(blas_b) == {cores // 2}
    assert numba.get_num_threads() == cores and _blas_threads() == blas_before


def test_a_blas_library_loaded_after_the_first_call_is_limited_too(side_by_side_possible,
                                                                   monkeypatch):
    import scipy.linalg  # noqa: F401 - scipy's own OpenBLAS, beside numpy's

    every = ThreadpoolController().select(user_api="blas").lib_controllers
    if len(every) < 2:
        pytest.skip("numpy and scipy share one BLAS library here")
    # as if the libraries had been looked up before scipy was imported
    monkeypatch.setattr(threads, "_blas", every[:1])
    monkeypatch.setattr(threads, "_blas_modules", len(sys.modules) - 1)
    cores = numba.get_num_threads()
    (blas_a, blas_b) = threads.side_by_side(_blas_threads, _blas_threads)
    assert len(blas_a) == len(every) and set(blas_a) == set(blas_b) == {cores // 2}


def test_an_error_is_raised_once_every_task_has_finished(side_by_side_possible):
    cores, blas_before = numba.get_num_threads(), _blas_threads()
    finished = []

    def fails():
        raise ValueError("first task failed")

    def slow():
        time.sleep(0.2)
        finished.append(True)
        return 1

    with pytest.raises(ValueError, match="first task failed"):
        threads.side_by_side(fails, slow)
    assert finished == [True]
    with pytest.raises(KeyError):
        threads.side_by_side(slow, lambda: {}["missing"])
    assert numba.get_num_threads() == cores and _blas_threads() == blas_before


def _thread_counts(x):
    return numba.get_num_threads(), _blas_threads()


def test_small_kernels_run_on_one_thread_outside_a_task(side_by_side_possible, monkeypatch):
    cores, blas_before = numba.get_num_threads(), _blas_threads()
    counts = threads.serial_when_small(_thread_counts)
    small = np.zeros(threads.SERIAL_MAX_ELEMENTS - 1, np.float32)
    large = np.zeros(threads.SERIAL_MAX_ELEMENTS, np.float32)
    assert counts(small) == (1, [1] * len(blas_before))
    assert counts(large) == (cores, blas_before)
    # a small input but a large product (a convolution's multiply-adds) keeps every core
    by_work = threads.serial_when_small(macs=lambda x, work: work)(
        lambda x, work: _thread_counts(x))
    assert by_work(small, threads.SERIAL_MAX_MACS - 1) == (1, [1] * len(blas_before))
    assert by_work(small, threads.SERIAL_MAX_MACS) == (cores, blas_before)
    # inside a task the task's share stays
    assert threads.side_by_side(lambda: counts(small), lambda: counts(small)) == [
        (cores // 2, [cores // 2] * len(blas_before))] * 2
    monkeypatch.setattr(threads, "SERIAL_MAX_ELEMENTS", 0)
    assert counts(small) == (cores, blas_before)
    monkeypatch.undo()

    def fails(x):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        threads.serial_when_small(fails)(small)
    assert (numba.get_num_threads(), _blas_threads()) == (cores, blas_before)


def test_the_parallel_kernels_of_the_backbone_go_serial_when_small(side_by_side_possible,
                                                                  monkeypatch):
    # every kernel that the backbone's forward calls with every core and that splits its work
    # over them (a prange loop or a GEMM) is behind the gate
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    v = np.ones(3, np.float32)
    calls = {
        "conv2d_forward": lambda: cpu.conv2d_forward(x, w, None, 1, 1),
        "conv2d_backward_input": lambda: cpu.conv2d_backward_input(dy, w, 8, 8, 1, 1),
        "conv2d_backward_weight": lambda: cpu.conv2d_backward_weight(dy, x, 3, 3, 1, 1),
        "batchnorm2d_stats": lambda: cpu.batchnorm2d_stats(x),
        "batchnorm2d_forward": lambda: cpu.batchnorm2d_forward(x, v, v, v, v),
        "batchnorm2d_backward": lambda: cpu.batchnorm2d_backward(x, x, v, v, v),
        "maxpool2d_forward": lambda: cpu.maxpool2d_forward(x, 3, 2, 1),
    }
    serial = []
    run = threads._run

    def recording_run(task, n):
        serial.append(n)
        return run(task, n)

    monkeypatch.setattr(threads, "_run", recording_run)
    for name, call in calls.items():
        serial.clear()
        call()
        assert serial == [1], name


def test_one_by_one_inside_a_task_when_wide_disabled_or_on_workqueue(side_by_side_possible,
                                                                 monkeypatch):
    here = threading.get_ident()

    def inner():
        caller = threading.get_ident()
        return threads.side_by_side(threading.get_ident, threading.get_ident), caller

    (inner_a, _), (inner_b, caller_b) = threads.side_by_side(inner, inner)
    assert set(inner_a) == {here}  # a nested call stays on its task's thread
    assert set(inner_b) == {caller_b} != {here}

    wide = threads.SIDE_BY_SIDE_MAX_CHANNELS + 1  # products that keep the cores busy alone
    assert threads.side_by_side(threading.get_ident, threading.get_ident,
                                channels=wide) == [here, here]
    monkeypatch.setattr(threads, "ENABLED", False)
    assert threads.side_by_side(threading.get_ident, threading.get_ident) == [here, here]
    monkeypatch.setattr(threads, "ENABLED", True)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")  # not thread-safe
    assert threads.side_by_side(threading.get_ident, threading.get_ident) == [here, here]
