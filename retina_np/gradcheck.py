"""Finite-difference gradient checks, in float64, for tests and notebooks.

The numerical derivative of a scalar loss L along entry i of an input is the central
difference (L(x + eps e_i) - L(x - eps e_i)) / (2 eps); its error is O(eps^2) from the
Taylor series plus about ulp(L) / eps from rounding. Each checked entry is compared with
the analytic gradient by the relative error

    err_i = |a_i - n_i| / max(|a_i|, |n_i|, floor),  floor = floor_rel * max_j max(|a_j|, |n_j|)

over the checked entries j of the same input. The floor is there because the rounding error
is absolute: an entry a thousand times smaller than the largest one of its input would show
a large relative error that says nothing about the code. For the same reason the part of
|a_i - n_i| that central differences cannot resolve, ``ROUNDING_ULPS`` units in the last
place of L divided by eps (L's own rounding, taken twice, over 2 eps), is not counted: an
input whose every gradient entry is tiny (a bias of the last pyramid level, 1e-5 against a
loss of 15) has no large entry to set the floor, and its check would pass or fail on how
the loss's sums happened to round. A wrong gradient (a missing term, a
transposed index, a factor 2) gives errors near 1; a correct one in float64 gives 1e-7 or less.

    report = gradcheck_op(conv2d_forward, conv2d_backward, {"x": x, "w": w, "b": b})
    print(report)              # one line per input: worst error, where, both values
    assert report.worst < 1e-6

A check must not pass by checking nothing: an input whose gradient is missing (None) counts
as an infinite error, and a check of no input at all is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

DEFAULT_FLOOR_REL = 1e-3  # entries below 1/1000 of their input's largest gradient: absolute error
ROUNDING_ULPS = 4  # a computed loss is a long sum: a few units in its last place, not one


class GradcheckResult(NamedTuple):
    """How one input's gradient compares with finite differences."""

    name: str
    shape: tuple
    checked: int  # entries compared (all of them, or a random sample; 0 when no gradient)
    worst: float  # worst relative error over the checked entries (inf when no gradient)
    index: tuple  # where the worst one is
    analytic: float  # the two values there
    numeric: float


class GradcheckReport(NamedTuple):
    """Per-input results of a gradient check; ``.worst`` is the worst error over all inputs."""

    results: dict  # name -> GradcheckResult
    eps: float

    @property
    def worst(self) -> float:
        # An empty report checked nothing, so it must not pass.
        return max((r.worst for r in self.results.values()), default=math.inf)

    def __str__(self) -> str:
        lines = [f"gradcheck (central differences, eps={self.eps:g}): worst relative error "
                 f"{self.worst:.2e}",
                 f"  {'input':<16} {'shape':<18} {'checked':>9} {'worst':>9}  "
                 f"{'at':<16} {'analytic':>12} {'numeric':>12}"]
        for r in self.results.values():
            if r.checked == 0:
                lines.append(f"  {r.name:<16} {str(r.shape):<18} {0:>9} {'inf':>9}  "
                             "no gradient was given for this input")
                continue
            lines.append(f"  {r.name:<16} {str(r.shape):<18} {r.checked:>9} {r.worst:>9.2e}  "
                         f"{str(r.index):<16} {r.analytic:>12.5e} {r.numeric:>12.5e}")
        return "\n".join(lines)


def relative_error(analytic, numeric, floor_rel=DEFAULT_FLOOR_REL, resolution=0.0) -> np.ndarray:
    """Entry-wise max(|a - n| - resolution, 0) / max(|a|, |n|, floor_rel * largest |a| or |n|)
    (see module docstring; resolution: what the numerical derivative cannot resolve)."""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    size = np.maximum(np.abs(a), np.abs(n))
    floor = floor_rel * size.max(initial=0.0)
    unresolved = np.maximum(np.abs(a - n) - resolution, 0.0)
    return unresolved / np.maximum(size, max(floor, np.finfo(np.float64).tiny))


def resolution(loss: float, eps: float) -> float:
    """The smallest error in a central difference of a loss near ``loss`` that says anything
    about the gradient: ``ROUNDING_ULPS`` units in the last place of the loss, over eps."""
    return ROUNDING_ULPS * float(np.spacing(abs(float(loss)))) / eps


def numerical_gradient(f: Callable, inputs: dict, name: str, flat_indices, eps=1e-6):
    """Central differences of the scalar f(inputs) along inputs[name].flat[i] for each i.

    The array is perturbed in place and restored exactly afterwards.
    """
    x = inputs[name]
    out = np.empty(len(flat_indices))
    for k, i in enumerate(flat_indices):
        old = x.flat[i]
        x.flat[i] = old + eps
        f_plus = float(f(inputs))
        x.flat[i] = old - eps
        f_minus = float(f(inputs))
        x.flat[i] = old
        out[k] = (f_plus - f_minus) / (2 * eps)
    return out


def _pick(size: int, num_samples, rng) -> np.ndarray:
    if num_samples is None or num_samples >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, num_samples, replace=False))


def gradcheck(f: Callable, inputs: dict, analytic: dict, eps=1e-6, num_samples=None,
              indices=None, floor_rel=DEFAULT_FLOOR_REL, seed=0) -> GradcheckReport:
    """Compare analytic gradients of the scalar loss f(inputs) with central differences.

    Args:
        f: maps the dict ``inputs`` to a float (it is called with the same dict, whose arrays
            are perturbed in place one entry at a time).
        inputs: name -> float64 array (the point where the gradient is checked).
        analytic: name -> dL/d(inputs[name]), same shape; names left out are not checked,
            a name given with None fails the check (its error is inf).
        num_samples: check this many random entries of each input (None: all of them).
        indices: name -> flat indices to check, overriding num_samples for that name.
    Returns:
        a GradcheckReport: per name the worst relative error, where it is, both values.
    Raises:
        ValueError: ``analytic`` names no input (a check of nothing), or an input that is
            not a float64 array or whose gradient has another shape.
    """
    if not analytic:
        raise ValueError("gradcheck: no gradient to check (analytic is empty)")
    rng = np.random.default_rng(seed)
    results = {}
    unresolved = resolution(f(inputs), eps)
    for name, grad in analytic.items():
        x = inputs[name]
        if grad is None:
            results[name] = GradcheckResult(name, np.shape(x), 0, math.inf, (), math.nan,
                                            math.nan)
            continue
        if not isinstance(x, np.ndarray) or x.dtype != np.float64:
            raise ValueError(f"gradcheck: input {name!r} must be a float64 numpy array "
                             "(finite differences in float32 only measure rounding)")
        grad = np.asarray(grad)
        if grad.shape != x.shape:
            raise ValueError(f"gradcheck: analytic gradient of {name!r} has shape {grad.shape}, "
                             f"the input has {x.shape}")
        picked = np.asarray(indices[name]) if indices and name in indices else _pick(
            x.size, num_samples, rng)
        a = grad.reshape(-1)[picked].astype(np.float64)
        n = numerical_gradient(f, inputs, name, picked, eps)
        err = relative_error(a, n, floor_rel, unresolved)
        k = int(np.argmax(err)) if err.size else 0
        results[name] = GradcheckResult(
            name, x.shape, len(picked), float(err[k]) if err.size else 0.0,
            tuple(int(v) for v in np.unravel_index(picked[k], x.shape)) if err.size else (),
            float(a[k]) if err.size else 0.0, float(n[k]) if err.size else 0.0,
        )
    return GradcheckReport(results, eps)


def gradcheck_op(forward: Callable, backward: Callable, inputs: dict, eps=1e-6,
                 num_samples=None, floor_rel=DEFAULT_FLOOR_REL, seed=0) -> GradcheckReport:
    """Check an op pair through the random projection loss L = sum(y * g), g fixed ~ N(0, 1).

    dL/dy = g, so backward(g, cache) must give dL/d(input) for every input. A random g
    weighs every output differently, so no error can cancel out as it could in sum(y).
    Args:
        forward: ``forward(**inputs) -> (y, cache)`` (bind other arguments with a lambda).
        backward: ``backward(dy, cache)`` -> the gradients in the order of ``inputs``, a
            single array for one input, or a dict.
        inputs: name -> array; checked at a float64 copy. Every one is checked: a gradient
            that backward leaves out or gives as None fails the check (bind an input that is
            not differentiated into ``forward`` instead of passing it here).
    """
    inputs = {k: np.array(v, dtype=np.float64) for k, v in inputs.items()}
    y, cache = forward(**inputs)
    # [seed, 1], not seed: a caller drawing its inputs from default_rng(seed) would otherwise
    # get g equal to (a multiple of) its own inputs, which can hide errors (batch norm: dx = 0).
    g = np.random.default_rng([seed, 1]).standard_normal(np.shape(y))
    grads = backward(g, cache)
    if isinstance(grads, dict):
        analytic = {k: grads.get(k) for k in inputs}
    else:
        grads = (grads,) if isinstance(grads, np.ndarray) else tuple(grads)
        if len(grads) != len(inputs):
            raise ValueError(f"gradcheck_op: backward gave {len(grads)} gradients for the "
                             f"{len(inputs)} inputs {list(inputs)}")
        analytic = dict(zip(inputs, grads))

    def loss(inp):
        return float(np.sum(forward(**inp)[0] * g))

    return gradcheck(loss, inputs, analytic, eps=eps, num_samples=num_samples,
                     floor_rel=floor_rel, seed=seed)
