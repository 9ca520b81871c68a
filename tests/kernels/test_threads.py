"""kernels/threads.py: independent CPU work side by side (the model's use of it:
tests/test_schedule.py)."""

import functools
import json
import subprocess
import sys
import textwrap
import threading
import time

import numba
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from retina_np import kernels
from retina_np.kernels import cpu, threads
from retina_np.kernels import reference as ref
from retina_np.kernels.tunables import current
from retina_np.kernels.workspace import ConvWorkspace


def _start_thread_pool():
    """Run one parallel loop, so that Numba has chosen its threading layer."""
    x = np.ones((2, 4, 64, 64), np.float32)  # above groupnorm_parallel_min_elements: prange
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


_LATE_BLAS = textwrap.dedent("""
    import json
    import numba, numpy as np
    from threadpoolctl import ThreadpoolController
    from retina_np.kernels import cpu, threads

    def blas():
        return [lib.num_threads for lib in
                ThreadpoolController().select(user_api="blas").lib_controllers]

    first = len(threads._blas_libraries())  # looked up as side_by_side does: numpy's BLAS
    x = np.ones((2, 4, 64, 64), np.float32)  # a parallel loop: Numba picks its layer, and
    cpu.groupnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), 2, 1e-5)
    print(json.dumps({"first": first, "now": len(blas()),  # loads scipy.linalg's BLAS
                      "cores": numba.get_num_threads(),
                      "possible": threads._threads_per_task(2) is not None,
                      "tasks": threads.side_by_side(blas, blas)}))
""")


def test_a_blas_library_loaded_after_the_first_call_is_limited_too():
    """In a fresh process: the BLAS libraries are looked up while only numpy's is loaded;
    Numba then loads scipy.linalg with its own; the next side_by_side limits that one too."""
    run = subprocess.run([sys.executable, "-c", _LATE_BLAS], capture_output=True, text=True,
                         timeout=300, check=True)
    seen = json.loads(run.stdout.splitlines()[-1])
    if not seen["possible"]:
        pytest.skip("tasks run one by one in a fresh process here")
    if seen["now"] <= seen["first"]:
        pytest.skip("numpy and scipy share one BLAS library here")
    assert seen["tasks"] == [[seen["cores"] // 2] * seen["now"]] * 2


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


def test_small_kernels_run_on_one_thread_outside_a_task(side_by_side_possible):
    """threads.budget: the count it yields is the one set inside the block (Numba's and
    BLAS's), and afterwards the counts are as before, also after an error."""
    cores, blas_before = numba.get_num_threads(), _blas_threads()

    def counts(elements, macs=0):
        with threads.budget(elements, macs) as budget:
            return budget, numba.get_num_threads(), _blas_threads()

    opts = current()
    small, large = opts.serial_max_elements - 1, opts.serial_max_elements
    assert counts(small) == (1, 1, [1] * len(blas_before))
    assert counts(large) == (cores, cores, blas_before)
    # a small input but a large product (a convolution's multiply-adds) keeps every core
    assert counts(small, opts.serial_max_macs - 1) == (1, 1, [1] * len(blas_before))
    assert counts(small, opts.serial_max_macs) == (cores, cores, blas_before)
    # inside a task the task's share stays
    assert threads.side_by_side(lambda: counts(small), lambda: counts(small)) == [
        (cores // 2, cores // 2, [cores // 2] * len(blas_before))] * 2
    with kernels.options(serial_max_elements=0):
        assert counts(small) == (cores, cores, blas_before)
    assert (numba.get_num_threads(), _blas_threads()) == (cores, blas_before)

    with pytest.raises(ValueError, match="bad input"), threads.budget(small):
        raise ValueError("bad input")
    assert (numba.get_num_threads(), _blas_threads()) == (cores, blas_before)


def _thread_counts_seen(call):
    """The Numba thread counts of this thread at every Python call made while ``call`` runs
    (a kernel's helpers, and the ``threads.budget`` around its work): what its work ran on,
    observed with a profile hook rather than by replacing a function."""
    seen = set()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(numba.get_num_threads())

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


def test_the_parallel_kernels_of_the_backbone_go_serial_when_small(side_by_side_possible):
    # every kernel that the backbone's forward calls with every core and that splits its work
    # over them (a prange loop or a GEMM) is behind the gate (threads.budget)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    v = np.ones(3, np.float32)
    calls = {
        "conv2d_forward": lambda: cpu.conv2d_forward(x, w, None, 1, 1),
        "conv2d_backward_input": lambda: cpu.conv2d_backward_input(dy, w, 8, 8, 1, 1),
        "conv2d_backward_weight": lambda: cpu.conv2d_backward_weight(dy, x, 3, 3, 1, 1),
        "batchnorm2d_forward": lambda: cpu.batchnorm2d_forward(x, v, v, v, v),
    }  # (batch norm's statistics and backward and max pooling run on one thread anyway)
    cores = numba.get_num_threads()
    for name, call in calls.items():
        assert _thread_counts_seen(call) == {cores, 1}, name  # its work on one thread
        with kernels.options(serial_max_elements=0):  # the gate open: every core throughout
            assert _thread_counts_seen(call) == {cores}, name


def test_an_im2col_forward_on_every_core_runs_its_tiles_side_by_side(side_by_side_possible):
    """With a tile or more per core (kernels/cpu/plan.py) the forward's tiles run in one task
    per core, each on its share of the threads: y is the reference's, and the columns it keeps
    come in the order of the tiles (the weight gradient from them is unfolding's again)."""
    rng = np.random.default_rng(0)
    cores = numba.get_num_threads()
    for k, stride, padding in ((3, 2, 1), (3, 1, 1)):  # through the phases, and "same"
        x = rng.standard_normal((3, 2, 9, 7))
        w = rng.standard_normal((4, 2, k, k))
        with kernels.options(serial_max_elements=0, cols_max_elements=60, winograd=False):
            workspace = ConvWorkspace()
            y = cpu.conv2d_forward(x, w, None, stride, padding, workspace)
            assert workspace.plan.tasks == cores and workspace.plan.keep
            assert len(workspace.columns) >= cores
            seen = _thread_counts_seen(
                functools.partial(cpu.conv2d_forward, x, w, None, stride, padding))
            assert cores // 2 in seen  # this thread ran the first task on its share
            dy = rng.standard_normal(y.shape)
            np.testing.assert_array_equal(
                cpu.conv2d_backward_weight(dy, x, k, k, stride, padding, workspace),
                cpu.conv2d_backward_weight(dy, x, k, k, stride, padding))
        want = ref.conv2d_forward(x, w, None, stride, padding)
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-10 * np.abs(want).max())


def test_one_by_one_inside_a_task_when_wide_disabled_or_on_workqueue(side_by_side_possible,
                                                                     monkeypatch):
    here = threading.get_ident()

    def inner():
        caller = threading.get_ident()
        return threads.side_by_side(threading.get_ident, threading.get_ident), caller

    (inner_a, _), (inner_b, caller_b) = threads.side_by_side(inner, inner)
    assert set(inner_a) == {here}  # a nested call stays on its task's thread
    assert set(inner_b) == {caller_b} != {here}

    wide = current().side_by_side_max_channels + 1  # products that keep the cores busy alone
    assert threads.side_by_side(threading.get_ident, threading.get_ident,
                                channels=wide) == [here, here]
    with kernels.options(side_by_side=False):
        assert threads.side_by_side(threading.get_ident, threading.get_ident) == [here, here]
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")  # not thread-safe
    assert threads.side_by_side(threading.get_ident, threading.get_ident) == [here, here]
