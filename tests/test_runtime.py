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
