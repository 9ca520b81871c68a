"""Weight initialisers (numpy Generators in, arrays out)."""

from __future__ import annotations

import math

import numpy as np


def kaiming_uniform(shape, rng: np.random.Generator, a: float = math.sqrt(5), dtype=np.float32):
    """torch's default conv init: U(-b, b), b = gain * sqrt(3 / fan_in), gain = sqrt(2/(1+a^2))."""
    fan_in = int(np.prod(shape[1:]))
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_normal_fan_out(shape, rng: np.random.Generator, dtype=np.float32):
    """He init for ReLU nets, fan_out mode (torchvision's ResNet): N(0, 2 / fan_out)."""
    fan_out = shape[0] * int(np.prod(shape[2:]))
    return rng.normal(0.0, math.sqrt(2.0 / fan_out), size=shape).astype(dtype)


def conv_bias_uniform(out_channels: int, fan_in: int, rng: np.random.Generator, dtype=np.float32):
    """torch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(out_channels,)).astype(dtype)


def normal(shape, rng: np.random.Generator, std: float, dtype=np.float32):
    """N(0, std^2): RetinaNet's head init uses std = 0.01."""
    return rng.normal(0.0, std, size=shape).astype(dtype)
