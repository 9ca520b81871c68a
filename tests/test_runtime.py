"""retina_np/runtime.py: the process-wide settings that ``retina_np``'s import applies."""

import resource

import numpy as np
import pytest

from retina_np.runtime import keep_freed_memory


def test_keep_freed_memory_stops_page_faults_on_reallocation():
    """After keep_freed_memory, freeing and allocating the same 64 MB again touches no new
    pages (glibc's default returns them to the system: about 16000 faults per round)."""
    if not keep_freed_memory():
        pytest.skip("not glibc")

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def allocate_and_free():
        arrays = [np.ones(1 << 19, np.float32) for _ in range(32)]  # 32 x 2 MB, touched
        del arrays

    allocate_and_free()
    before = faults()
    for _ in range(3):
        allocate_and_free()
    assert faults() - before < 1000


@pytest.mark.parametrize("numpy_first", [False, True])
def test_ranks_on_one_machine_share_its_cores(numpy_first):
    """Under mpiexec with 2 ranks on this machine (MPICH's MPI_LOCALNRANKS), each rank's BLAS
    and Numba get half the cores, also in a script that imported numpy before retina_np."""
    import os
    import subprocess
    import sys

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every rank gets one thread anyway")
    code = ("import numpy\n" if numpy_first else "") + (
        "import retina_np, numba, numpy, threadpoolctl\n"
        "blas = {i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
        "        if i['user_api'] == 'blas'}\n"
        "print(sorted(blas), numba.config.NUMBA_NUM_THREADS)\n")
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_NUM_THREADS") and k != "OMP_WAIT_POLICY"}
    env["MPI_LOCALNRANKS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == [f"[{cores // 2}]", str(cores // 2)]
