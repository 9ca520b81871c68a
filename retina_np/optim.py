"""SGD with momentum (the paper's), AdamW, the learning-rate schedule, gradient-norm clipping.

On the CPU the optimizers keep their parameters flat (``retina_np/nn/flat.py``): every
parameter's data and gradient are views of two flat arrays, in one run per weight-decay value,
and their own state (momentum, Adam's moments) views of flat arrays in the same layout. A step
is then one kernel call per run, shared among the cores, instead of one per parameter, and the
gradient norm and the zeroing of the gradients are one call each; the numbers are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retina_np import backend
from retina_np.nn import Parameter
from retina_np.nn.flat import FlatParameters, can_flatten, flat_of


class _Flat:
    """What SGD and AdamW share: their parameters as FlatParameters, one run per weight-decay
    value (``self.flat``, made again when something replaced their arrays; None on a GPU),
    and their per-parameter state as views of flat arrays in that layout (``_flat_state``)."""

    def _init_flat(self) -> None:
        self.flat = None
        self._flat_names = []  # the parameters' names in the flat arrays' order
        self._flat_decays = ()  # their weight decays when the runs were made
        self._state = ()  # the flat state arrays ...
        self._state_layout = None  # ... and the FlatParameters whose layout they follow
        self._flat_now()

    def _flat_now(self):
        """The flat parameters, still flat or made again (when an array was replaced, or the
        weight decays changed); None where they cannot be."""
        decays = tuple(self.decay_for(name) for name in self._flat_names)
        if self.flat is not None and decays == self._flat_decays and self.flat.intact():
            return self.flat
        self.flat = None
        if can_flatten(list(self.params.values())):
            runs = {}
            for name in self.params:
                runs.setdefault(self.decay_for(name), []).append(name)
            self._flat_names = [name for names in runs.values() for name in names]
            self._flat_decays = tuple(self.decay_for(name) for name in self._flat_names)
            self.flat = FlatParameters([[self.params[name] for name in names]
                                        for names in runs.values()])
        return self.flat

    def _runs(self, flat):
        """(start, stop, weight decay) of each run of the flat arrays."""
        return [(a, b, self._flat_decays[first])
                for (a, b), (first, _) in zip(flat.runs, flat.run_params)]

    def _flat_state(self, flat, states):
        """Flat arrays, one per dict of ``states`` (name -> array, or None before the first
        step), in flat's layout; every dict's arrays become views of them (a state loaded or
        made before is copied in, a missing one starts at zero)."""
        if self._state_layout is not flat:
            arrays = []
            for state in states:
                array = np.zeros_like(flat.data)
                for name, p, (a, b) in zip(self._flat_names, flat.params, flat.bounds):
                    if state[name] is not None:
                        array[a:b] = backend.to_numpy(state[name]).reshape(-1)
                    state[name] = array[a:b].reshape(p.data.shape)
                arrays.append(array)
            self._state, self._state_layout = tuple(arrays), flat
        return self._state

    def _state_replaced(self) -> None:
        """The per-parameter state was given new arrays (``load_state_dict``): the flat state
        is made from them at the next step."""
        self._state_layout = None


class SGD(_Flat):
    """torch.optim.SGD's rule: v = momentum * v + (g + wd * p);  p -= lr * v.

    Weight decay skips 1-D parameters (biases and BatchNorm's weight and bias) unless
    ``decay_norm_and_bias`` is set: shrinking them towards zero regularises nothing useful.
    """

    def __init__(
        self, named_parameters, lr=0.01, momentum=0.9, weight_decay=1e-4, decay_norm_and_bias=False
    ):
        self.params: dict[str, Parameter] = dict(named_parameters)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.decay_norm_and_bias = decay_norm_and_bias
        self.buffers = {name: None for name in self.params}
        self._init_flat()

    def decay_for(self, name: str) -> float:
        p = self.params[name]
        if len(p.shape) == 1 and not self.decay_norm_and_bias:
            return 0.0
        return self.weight_decay

    def step(self, lr: float | None = None) -> None:
        """One update of every parameter from its ``.grad`` (gradients are not cleared)."""
        lr = self.lr if lr is None else lr
        flat = self._flat_now()
        if flat is not None:
            buf, = self._flat_state(flat, (self.buffers,))
            for a, b, decay in self._runs(flat):
                backend.kernels_for(flat.data).sgd_update_(
                    flat.data[a:b], flat.grad[a:b], buf[a:b], lr, self.momentum, decay)
            return
        for name, p in self.params.items():
            kernels = backend.kernels_for(p.data)
            if self.buffers[name] is None:
                self.buffers[name] = kernels.zeros_like(p.data)
            kernels.sgd_update_(
                p.data, p.grad, self.buffers[name], lr, self.momentum, self.decay_for(name)
            )

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            name: backend.to_numpy(buf).copy()
            for name, buf in self.buffers.items()
            if buf is not None
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        problems = [f"{k}: not a parameter of the model" for k in state if k not in self.params]
        problems += [
            f"{k}: momentum has shape {tuple(v.shape)}, parameter {self.params[k].shape}"
            for k, v in state.items()
            if k in self.params and tuple(v.shape) != self.params[k].shape
        ]
        if problems:
            raise ValueError("optimizer state does not fit the model:\n  " + "\n  ".join(problems))
        for name, value in state.items():
            device = backend.device_of(self.params[name].data)
            self.buffers[name] = backend.to_device(np.array(value, copy=True), device)
        self._state_replaced()


class AdamW(_Flat):
    """torch.optim.AdamW's rule (Loshchilov & Hutter 2019): Adam's step with the weight decay
    applied to the weights directly, ``p -= lr * (wd * p + m_hat / (sqrt(v_hat) + eps))``.

    The paper trains with SGD from ImageNet weights for hours; trained from scratch in
    minutes, Adam's per-parameter step sizes learn faster: on the shapes preset, 1000 steps
    reached COCO AP 0.236 with AdamW (lr 1e-3, cosine) against 0.155 with SGD (lr 0.02, steps)
    (docs/performance-history.md, "Training recipe"). Decay skips 1-D parameters as in ``SGD``.
    """

    def __init__(
        self,
        named_parameters,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.05,
        decay_norm_and_bias=False,
    ):
        self.params: dict[str, Parameter] = dict(named_parameters)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.decay_norm_and_bias = decay_norm_and_bias
        self.exp_avg = {name: None for name in self.params}  # m: mean of the gradient
        self.exp_avg_sq = {name: None for name in self.params}  # v: mean of its square
        self.steps = 0  # updates so far (the bias correction needs it)
        self._init_flat()

    decay_for = SGD.decay_for

    def step(self, lr: float | None = None) -> None:
        """One update of every parameter from its ``.grad`` (gradients are not cleared)."""
        lr = self.lr if lr is None else lr
        self.steps += 1
        beta1, beta2 = self.betas
        flat = self._flat_now()
        if flat is not None:
            m, v = self._flat_state(flat, (self.exp_avg, self.exp_avg_sq))
            for a, b, decay in self._runs(flat):
                backend.kernels_for(flat.data).adamw_update_(
                    flat.data[a:b], flat.grad[a:b], m[a:b], v[a:b], lr, beta1, beta2, self.eps,
                    decay, self.steps)
            return
        for name, p in self.params.items():
            kernels = backend.kernels_for(p.data)
            if self.exp_avg[name] is None:
                self.exp_avg[name] = kernels.zeros_like(p.data)
                self.exp_avg_sq[name] = kernels.zeros_like(p.data)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            decay = self.decay_for(name)
            kernels.adamw_update_(p.data, p.grad, m, v, lr, beta1, beta2, self.eps, decay,
                                  self.steps)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"steps": np.array(self.steps, dtype=np.int64)}
        for key in ("exp_avg", "exp_avg_sq"):
            for name, buf in getattr(self, key).items():
                if buf is not None:
                    state[f"{key}/{name}"] = backend.to_numpy(buf).copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        problems = [] if "steps" in state else ["steps: missing (is this an SGD state?)"]
        for k, v in state.items():
            key, _, name = k.partition("/")
            if k == "steps":
                continue
            if key not in ("exp_avg", "exp_avg_sq") or name not in self.params:
                problems.append(f"{k}: not an AdamW state entry of this model")
            elif tuple(v.shape) != self.params[name].shape:
                problems.append(f"{k}: shape {tuple(v.shape)}, parameter {self.params[name].shape}")
        if problems:
            raise ValueError("optimizer state does not fit the model:\n  " + "\n  ".join(problems))
        self.steps = int(state["steps"])
        for k, value in state.items():
            if k != "steps":
                key, _, name = k.partition("/")
                device = backend.device_of(self.params[name].data)
                getattr(self, key)[name] = backend.to_device(np.array(value, copy=True), device)
        self._state_replaced()


@dataclass
class LRSchedule:
    """Linear warm-up from ``base_lr * warmup_factor``, then x``gamma`` at each milestone, or,
    with ``cosine_steps`` > 0, half a cosine from ``base_lr`` down to 0 at ``cosine_steps``
    (Loshchilov & Hutter 2017; a short run decays smoothly instead of in two late drops)."""

    base_lr: float = 0.01
    warmup_steps: int = 500  # the paper warms up; 500 iterations as in Detectron
    warmup_factor: float = 1.0 / 3.0
    milestones: tuple[int, ...] = ()  # steps at which the rate drops
    gamma: float = 0.1  # the drop factor (paper: 10x at 60k and 80k of 90k)
    cosine_steps: int = 0  # > 0: cosine decay over this many steps instead of milestones

    def __call__(self, step: int, progress: float | None = None) -> float:
        """The rate at ``step``; ``progress`` in [0, 1] overrides how far the cosine is."""
        if self.cosine_steps > 0:
            if progress is None:
                progress = step / self.cosine_steps
            done = min(1.0, max(0.0, progress))
            lr = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * done))
        else:
            lr = self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            lr *= self.warmup_factor * (1.0 - alpha) + alpha
        return lr


def grad_norm(params) -> float:
    """Global L2 norm of all gradients (squares summed in float64 where the gradients are)."""
    params = list(params)
    return _grad_norm(params, flat_of(params))


def _grad_norm(params, flat) -> float:
    """``grad_norm`` of the list params, flat: ``flat_of(params)``."""
    if flat is not None:  # one call over the flat gradients, in the order of params: same bits
        return math.sqrt(backend.kernels_for(flat.grad).sum_squares_runs(
            flat.grad, flat.bounds_of(params)))
    grads = [p.grad for p in params]
    return math.sqrt(backend.kernels_for(*grads).sum_squares(grads))


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so their global norm is at most ``max_norm``; returns the norm."""
    params = list(params)
    flat = flat_of(params)
    norm = _grad_norm(params, flat)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for grad in [flat.grad] if flat is not None else [p.grad for p in params]:
            backend.kernels_for(grad).scale_(grad, scale)
    return norm
