"""Module and Parameter: the small object system every layer and model is built from.

A Module's ``__call__`` runs ``forward`` and, in training mode, keeps what ``backward`` needs.
Caches live on a stack, so a module that is called several times in one forward pass (the
RetinaNet heads run once per pyramid level with shared weights) is back-propagated by calling
``backward`` the same number of times in reverse order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from retina_np import backend
from retina_np.nn.flat import flat_of


class Parameter:
    """A trainable array and its gradient (``grad`` is accumulated by ``backward``)."""

    flat = None  # the FlatParameters whose arrays data and grad are views of (nn/flat.py)

    def __init__(self, data):
        self.data = data
        self.grad = None
        self.zero_grad()

    def zero_grad(self) -> None:
        if backend.is_device_array(self.data):
            from numba import cuda

            self.grad = cuda.device_array_like(self.data)
            backend.cuda_kernels().fill_(self.grad, 0.0)
        else:
            self.grad = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: children, parameters and buffers are found from attributes, in order."""

    # A new token whenever any module gains, loses or replaces a child or a parameter: the
    # walks over a whole tree that ``_tree`` keeps are then made again. (A token, not a count:
    # a copied or unpickled tree brings along a token no module has any more.)
    _tree_token = object()

    def __init__(self):
        self.training = True
        self._buffers: OrderedDict[str, np.ndarray] = OrderedDict()
        self._caches: list = []

    # -- running -----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, *grads):
        raise NotImplementedError

    def _push(self, cache) -> None:
        """Keep a forward cache for backward (training mode only)."""
        if self.training:
            self._caches.append(cache)

    def _pop(self):
        if not self._caches:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a matching forward in "
                "training mode (call model.train() before the forward pass)"
            )
        return self._caches.pop()

    def clear_caches(self) -> None:
        """Forget every forward cache (e.g. after a forward pass with no backward)."""
        for module in self.modules():
            module._caches.clear()

    # -- the tree ------------------------------------------------------------------------------
    def __setattr__(self, name, value):
        tree = (Module, Parameter)
        if isinstance(value, tree) or isinstance(self.__dict__.get(name), tree):
            self._tree_changed()  # a child or a parameter changes: look again
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._tree_changed()
        object.__delattr__(self, name)

    def _tree_changed(self) -> None:
        self.__dict__.pop("_found", None)
        Module._tree_token = object()

    def _attributes(self) -> tuple[tuple, tuple]:
        """((name, child Module) ..., (name, Parameter) ...), in attribute order. Found once
        and kept until an attribute is set: a training step walks the tree several times
        (zero_grad, train(), the optimizer's gradients), ~0.2 ms a walk when each of them
        looked at every attribute of every module."""
        found = self.__dict__.get("_found")
        if found is None:
            items = list(vars(self).items())
            found = (tuple((n, v) for n, v in items if isinstance(v, Module)),
                     tuple((n, v) for n, v in items if isinstance(v, Parameter)))
            self.__dict__["_found"] = found
        return found

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """A named non-trainable array saved in state_dict (e.g. BatchNorm running stats)."""
        self._buffers[name] = value

    def _tree(self) -> tuple[tuple, tuple]:
        """(every module below this one, every (dotted name, Parameter) of the tree), in the
        order of the walk. Found once and kept until any module's children or parameters
        change: a training step walks its model's tree five times (``train()``,
        ``zero_grad``, the clipping, the schedule), ~0.07 ms a walk of generators."""
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] is not Module._tree_token:
            token = Module._tree_token
            below = tuple(m for _, child in self.named_children() for m in child.modules())
            kept = (token, below, tuple(self._named_parameters("")))
            self.__dict__["_kept"] = kept
        return kept[1], kept[2]

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return iter(self._attributes()[0])

    def modules(self) -> Iterator[Module]:
        yield self
        yield from self._tree()[0]

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        if prefix:
            return self._named_parameters(prefix)
        return iter(self._tree()[1])

    def _named_parameters(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        """``named_parameters`` found by walking the tree."""
        for name, value in self._attributes()[1]:
            yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child._named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self._tree()[1]]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, value in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    # -- modes and gradients ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        self.clear_caches()
        return self.train(False)

    def zero_grad(self) -> None:
        """Every parameter's gradient a fresh array of zeros (one array for all of them where
        they are an optimizer's flat parameters, nn/flat.py)."""
        params = self.parameters()
        flat = flat_of(params)
        if flat is not None:
            flat.zero_grad()
            return
        for p in params:
            p.zero_grad()

    # -- saving and loading ----------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers as numpy arrays (copies), keyed by dotted names."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = backend.to_numpy(p.data).copy()
        for name, b in self.named_buffers():
            state[name] = backend.to_numpy(b).copy()
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> dict[str, list[str]]:
        """Copy arrays into parameters and buffers, checking names and shapes.

        Every mismatch is collected and reported in one ``ValueError`` (shape mismatches
        always; missing and unexpected names when ``strict``). A ``num_batches_tracked``
        counter of a batch norm that keeps none (torch's BatchNorm2d writes one, torchvision's
        FrozenBatchNorm2d and this package's BatchNorm2d do not) is accepted and ignored, so a
        torch state_dict loads as it comes. Returns the lists of missing, unexpected and
        ignored keys.
        """
        own = dict(self.named_parameters())
        buffers = {}
        untracked = set()  # torch's step counters of batch norms that keep none here
        for prefix, module in self.named_modules():
            for name in module._buffers:
                buffers[f"{prefix}.{name}" if prefix else name] = (module, name)
            if "running_mean" in module._buffers and "num_batches_tracked" not in module._buffers:
                untracked.add(f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked")
        expected = list(own) + list(buffers)
        missing = [k for k in expected if k not in state]
        ignored = [k for k in state if k in untracked]
        unexpected = [k for k in state if k not in own and k not in buffers and k not in untracked]
        problems = []
        for key in expected:
            if key not in state:
                continue
            target = own[key].data if key in own else buffers[key][0]._buffers[buffers[key][1]]
            value = np.asarray(state[key])
            if tuple(value.shape) != tuple(target.shape):
                problems.append(
                    f"{key}: checkpoint has shape {tuple(value.shape)}, "
                    f"model has {tuple(target.shape)}"
                )
        if strict:
            problems += [f"{k}: missing from the checkpoint" for k in missing]
            problems += [f"{k}: not a parameter or buffer of the model" for k in unexpected]
        if problems:
            raise ValueError(
                f"state_dict does not fit {type(self).__name__} ({len(problems)} problem(s)):\n  "
                + "\n  ".join(problems)
            )
        for key in expected:
            if key not in state:
                continue
            if key in own:
                p = own[key]
                # A copy: training updates parameters and running statistics in place, and
                # must not write into the caller's arrays.
                value = np.array(state[key], dtype=backend.to_numpy(p.data).dtype, order="C")
                p.data = backend.to_device(value, backend.device_of(p.data))
            else:
                module, name = buffers[key]
                old = module._buffers[name]
                value = np.array(state[key], dtype=backend.to_numpy(old).dtype, order="C")
                module._buffers[name] = backend.to_device(value, backend.device_of(old))
        return {"missing": missing, "unexpected": unexpected, "ignored": ignored}

    def to(self, device: str) -> Module:
        """Move every parameter and buffer to 'cpu' or 'cuda' (gradients are reset)."""
        backend.check_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            p.zero_grad()
        for module in self.modules():
            for name, value in module._buffers.items():
                module._buffers[name] = backend.to_device(value, device)
        return self

    def astype(self, dtype) -> Module:
        """Cast parameters and buffers (CPU) to ``dtype``, e.g. float64 for gradient checks."""
        for p in self.parameters():
            p.data = np.ascontiguousarray(p.data, dtype=dtype)
            p.zero_grad()
        for module in self.modules():
            for name, value in module._buffers.items():
                module._buffers[name] = np.ascontiguousarray(value, dtype=dtype)
        return self

    def num_parameters(self) -> int:
        return int(sum(np.prod(p.shape) for p in self.parameters()))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self.named_children())
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return lines[0] + ")" if not children else "\n".join(lines) + "\n)"


class Sequential(Module):
    """Children run in order; names are '0', '1', ... as in torch.nn.Sequential."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._attributes()[0])

    def __getitem__(self, i: int) -> Module:
        return getattr(self, str(i % len(self)))

    def __iter__(self) -> Iterator[Module]:
        return (child for _, child in self.named_children())

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(list(self)):
            dy = layer.backward(dy)
        return dy


class ModuleList(Sequential):
    """An indexable list of modules with '0', '1', ... names; it has no forward of its own."""

    def forward(self, x):
        raise TypeError("ModuleList has no forward; index it")

    def backward(self, dy):
        raise TypeError("ModuleList has no backward; index it")
