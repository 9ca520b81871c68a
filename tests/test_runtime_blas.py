"""numpy imported before retina_np: its OpenBLAS read OPENBLAS_THREAD_TIMEOUT before retina_np
set it, and its idle threads spun ~0.1 s after every GEMM on the cores the next Numba loop
needed (a training step 1.6x slower). ``runtime.retime_loaded_openblas`` makes the loaded
libraries take the setting."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import numpy as np
if sys.argv[1] == "retina_np":
    import retina_np
from threadpoolctl import threadpool_info
timeouts = [ctypes.CDLL(i["filepath"]).openblas_thread_timeout()
            for i in threadpool_info() if i.get("internal_api") == "openblas"]
print(" ".join(map(str, timeouts)) or "none")
"""


def _timeouts(then: str, env_overrides=None) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(env_overrides or {})
    out = subprocess.run([sys.executable, "-c", PROBE, then], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    if out == ["none"]:
        pytest.skip("numpy's BLAS is not OpenBLAS here")
    return [int(t) for t in out]


def test_numpy_imported_first_gets_the_timeout():
    assert _timeouts("nothing") == [0] * len(_timeouts("nothing"))  # the library's default
    assert set(_timeouts("retina_np")) == {4}


def test_a_timeout_set_by_the_user_is_kept():
    assert set(_timeouts("retina_np", {"OPENBLAS_THREAD_TIMEOUT": "7"})) == {7}
