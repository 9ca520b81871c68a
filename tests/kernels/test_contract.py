"""The kernel contract: ``kernels.cpu`` and ``kernels.cuda`` export the same names, and
``kernels.reference`` a documented subset of them, so that the twins cannot drift apart.

The CUDA package is read without importing it (its public names are its ``__all__``), so this
runs without numba-cuda.
"""

import ast
import inspect
from pathlib import Path

import pytest

from retina_np.kernels import cpu
from retina_np.kernels import reference as ref

CUDA_INIT = Path(cpu.__file__).parent.parent / "cuda" / "__init__.py"

# On the CPU the heads keep their levels as one Joint matrix; on the GPU each level is its own
# launch anyway, so CUDA's join_levels returns the list and these are never called there.
# sum_squares_runs: the gradient norm of flat parameters (nn/flat.py), which live on the CPU.
CPU_ONLY = {"conv2d_forward_joint", "conv2d_backward_joint", "groupnorm_forward_joint",
            "groupnorm_backward_joint", "sum_squares_runs"}
# A dtype conversion on the device (the CPU uses numpy's astype).
CUDA_ONLY = {"cast"}
# The fast paths' own utilities, which the loops of reference.py have no need to mirror:
# the heads' level plumbing, new arrays and in-place updates, optimizer steps, and the
# detection kernels (whose written-out versions are retina_np.detection's own functions).
NOT_IN_REFERENCE = CPU_ONLY | {
    "conv2d_forward_levels", "conv2d_backward_levels", "join_levels", "split_levels",
    "levels_layout", "empty_like", "zeros_like", "fill_", "scale_", "add_inplace_",
    "sgd_update_", "adamw_update_", "box_iou", "decode_boxes", "nms", "batched_nms",
    "sigmoid_focal_loss", "smooth_l1_loss", "l1_loss",
}


def _cuda_names() -> set[str]:
    tree = ast.parse(CUDA_INIT.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("kernels/cuda/__init__.py has no __all__")


def _public_functions(module) -> set[str]:
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and callable(value) and not inspect.isclass(value)
            and getattr(value, "__module__", "").startswith("retina_np.kernels")}


def test_cpu_exports_exactly_its_all():
    assert set(cpu.__all__) == _public_functions(cpu)


def test_cpu_and_cuda_export_the_same_kernels():
    assert set(cpu.__all__) - CPU_ONLY == _cuda_names() - CUDA_ONLY


def test_reference_is_the_documented_subset():
    assert _public_functions(ref) == set(cpu.__all__) - NOT_IN_REFERENCE


@pytest.mark.parametrize("name", sorted(set(cpu.__all__) - NOT_IN_REFERENCE))
def test_reference_and_cpu_signatures_agree(name):
    """The same parameter names in the same order (defaults may differ only in value)."""
    params = [list(inspect.signature(getattr(m, name)).parameters) for m in (ref, cpu)]
    assert params[0] == params[1]
