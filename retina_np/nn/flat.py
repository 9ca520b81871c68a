"""Parameters kept side by side in one flat array, and their gradients in another.

The optimizer's update, the gradient norm and the zeroing of the gradients are each one pass
over every element of every parameter. Parameter by parameter, that is one kernel call each
(the shapes preset has 80 parameters, most of them small), and the calls cost about as much as
the arithmetic. With the parameters in one array, each pass is one call, which can also share
its elements among the cores (docs/performance.md, "The step's tail").

``FlatParameters(groups)`` copies the parameters' data into one array and their gradients
into another, and makes every ``p.data`` and ``p.grad`` a view of its slice. Every layer,
kernel and checkpoint sees the arrays it always did. The optimizers in ``retina_np/optim.py``
make one for their parameters, with the parameters that take weight decay in one run and the
others in the next.

Anything that puts a new array in place of a view (``Module.load_state_dict``, ``astype``,
``to``, an assignment to ``p.data``) leaves the parameter correct but no longer flat:
``intact()`` then says False, and the optimizer makes a new ``FlatParameters`` at its next
step (a copy, same numbers). A gradient is zeroed as a fresh array, never in place, as
``Parameter.zero_grad`` does: an array that someone kept from before keeps its values.
"""

from __future__ import annotations

import numpy as np


class FlatParameters:
    """Parameters whose ``data`` and ``grad`` are views of the flat arrays ``data`` and ``grad``.

    Args:
        groups: lists of Parameters, CPU arrays of one dtype. Each group is one run of the
            flat arrays (``runs``), the parameters in the order given.
    """

    def __init__(self, groups):
        self.params = [p for group in groups for p in group]
        if not can_flatten(self.params):
            raise ValueError("FlatParameters needs CPU parameters of one dtype")
        total = sum(p.data.size for p in self.params)
        dtype = self.params[0].data.dtype
        self.data = np.empty(total, dtype)
        self.grad = np.empty(total, dtype)
        self.bounds = np.empty((len(self.params), 2), np.int64)  # each parameter's (start, stop)
        self.runs = []  # each group's (start, stop) in the flat arrays
        self.run_params = []  # each group's (first, last + 1) in params
        i = start = 0
        for group in groups:
            run_start, run_first = start, i
            for p in group:
                self.bounds[i] = start, start + p.data.size
                i, start = i + 1, start + p.data.size
            self.runs.append((run_start, start))
            self.run_params.append((run_first, i))
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._slices = [(int(a), int(b), p.data.shape) for p, (a, b) in zip(self.params,
                                                                            self.bounds)]
        for p, (a, b, shape) in zip(self.params, self._slices):
            self.data[a:b] = p.data.reshape(-1)
            self.grad[a:b] = p.grad.reshape(-1)
            p.data = self.data[a:b].reshape(shape)
            p.grad = self.grad[a:b].reshape(shape)
            p.flat = self

    def intact(self) -> bool:
        """Whether every parameter's data and gradient are still views of the flat arrays."""
        data, grad = self.data, self.grad
        for p in self.params:
            if p.flat is not self or p.data.base is not data or p.grad is None \
                    or p.grad.base is not grad:
                return False
        return True

    def holds_exactly(self, params) -> bool:
        """Whether ``params`` (a list) are this one's parameters, all of them, still flat."""
        return (len(params) == len(self.params) and all(p.flat is self for p in params)
                and self.intact())

    def bounds_of(self, params) -> np.ndarray:
        """The (start, stop) of each of ``params`` (this one's), in their order, (P, 2)."""
        index = self._index
        return self.bounds[[index[id(p)] for p in params]]

    def zero_grad(self) -> None:
        """Every gradient a view of one fresh array of zeros."""
        self.grad = np.zeros_like(self.data)
        for p, (a, b, shape) in zip(self.params, self._slices):
            p.grad = self.grad[a:b].reshape(shape)


def can_flatten(params) -> bool:
    """Whether ``params`` can share flat arrays: CPU arrays, all of one dtype, gradients of
    their shapes."""
    if not params:
        return False
    dtype = params[0].data.dtype  # (a GPU's arrays are not numpy arrays)
    return all(isinstance(p.data, np.ndarray) and p.data.dtype == dtype
               and isinstance(p.grad, np.ndarray) and p.grad.shape == p.data.shape
               for p in params)


def flat_of(params):
    """The FlatParameters that holds exactly ``params`` (a list), still flat, or None."""
    flat = params[0].flat if params else None
    return flat if flat is not None and flat.holds_exactly(params) else None
