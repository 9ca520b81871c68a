"""An OpenMP runtime loaded before retina_np (``import torch`` first) busy-waits; retina_np
then runs Numba on its own workqueue threading layer instead of sharing that runtime."""

import ctypes.util
import os
import subprocess
import sys

import pytest

PROBE = """
import numpy as np
import retina_np
from retina_np.kernels import cpu
c = np.ones(64, np.float32)  # a parallel loop (batch norm's forward, 524k values) starts the pool
cpu.batchnorm2d_forward(np.ones((8, 64, 32, 32), np.float32), c, c, c, c)
import numba
print(numba.threading_layer())
"""


def _layer(preload: str, env_overrides=None) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
    env.update(env_overrides or {})
    code = (f"import ctypes; ctypes.CDLL({preload!r})\n" if preload else "") + PROBE
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()[-1]


GOMP = ctypes.util.find_library("gomp")


@pytest.mark.skipif(GOMP is None, reason="no GNU OpenMP library on this machine to load first")
def test_openmp_loaded_first_gives_the_workqueue_layer():
    assert _layer(GOMP) == "workqueue"


@pytest.mark.skipif(GOMP is None, reason="no GNU OpenMP library on this machine to load first")
def test_a_wait_policy_set_by_the_user_keeps_openmp():
    """With OMP_WAIT_POLICY set before OpenMP started, its threads sleep: nothing to avoid."""
    assert _layer(GOMP, {"OMP_WAIT_POLICY": "PASSIVE"}) != "workqueue"


def test_without_an_early_openmp_the_default_layer_stays():
    assert _layer("") != "workqueue"
