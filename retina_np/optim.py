"""SGD with momentum and weight decay, the learning-rate schedule, gradient-norm clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retina_np import backend
from retina_np.nn import Parameter


class SGD:
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

    def decay_for(self, name: str) -> float:
        p = self.params[name]
        if len(p.shape) == 1 and not self.decay_norm_and_bias:
            return 0.0
        return self.weight_decay

    def step(self, lr: float | None = None) -> None:
        """One update of every parameter from its ``.grad`` (gradients are not cleared)."""
        lr = self.lr if lr is None else lr
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


@dataclass
class LRSchedule:
    """Linear warm-up from ``base_lr * warmup_factor``, then x``gamma`` at each milestone."""

    base_lr: float = 0.01
    warmup_steps: int = 500  # the paper warms up; 500 iterations as in Detectron
    warmup_factor: float = 1.0 / 3.0
    milestones: tuple[int, ...] = ()  # steps at which the rate drops
    gamma: float = 0.1  # the drop factor (paper: 10x at 60k and 80k of 90k)

    def __call__(self, step: int) -> float:
        lr = self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            lr *= self.warmup_factor * (1.0 - alpha) + alpha
        return lr


def grad_norm(params) -> float:
    """Global L2 norm of all gradients."""
    total = 0.0
    for p in params:
        g = backend.to_numpy(p.grad)
        total += float(np.dot(g.ravel().astype(np.float64), g.ravel().astype(np.float64)))
    return math.sqrt(total)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so their global norm is at most ``max_norm``; returns the norm."""
    params = list(params)
    norm = grad_norm(params)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            backend.kernels_for(p.grad).scale_(p.grad, scale)
    return norm
