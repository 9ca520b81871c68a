"""Layers with forward and backward: the building blocks of the models."""

from retina_np.nn import init
from retina_np.nn.layers import (
    Add,
    BatchNorm2d,
    Conv2d,
    GroupNorm,
    MaxPool2d,
    ReLU,
    Upsample,
)
from retina_np.nn.module import Module, ModuleList, Parameter, Sequential

__all__ = [
    "Add",
    "BatchNorm2d",
    "Conv2d",
    "GroupNorm",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Upsample",
    "init",
]
