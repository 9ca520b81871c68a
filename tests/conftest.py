import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The CUDA tests run in their own pytest process with NUMBA_ENABLE_CUDASIM=1 set before numba
# is imported (see README's test command), or on a real GPU.
collect_ignore = []
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and os.environ.get("RETINA_NP_GPU") != "1":
    collect_ignore.append("cuda")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
