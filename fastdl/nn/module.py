"""Parameter, Module and the registry of layer types (used to rebuild a model from its config).

Backprop in fastdl is explicit, as the course teaches it::

    out = model(x)                       # forward, caches what backward needs
    loss = loss_fn(out, y)               # a Python float
    opt.zero_grad()                      # every .grad back to 0
    model.backward(loss_fn.backward())   # dloss/dout in, dloss/dinput out; .grad += ...
    opt.step()

``backward`` ADDS into each parameter's ``.grad`` (PyTorch semantics), so gradients of several
backward calls accumulate until ``zero_grad()``.
"""
from __future__ import annotations

import numbers
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from .. import ops
from .._validation import F32_TINY, as_float32, as_kernel_float32, check_int, check_real  # noqa: F401

__all__ = ["Parameter", "Module", "register_module", "module_from_config", "num_parameters"]


# ---------------------------------------------------------------- array helpers


# the checks live in fastdl._validation (one rule for the package); these names stay importable from here
check_float = check_real


# ---------------------------------------------------------------- Parameter


class Parameter:
    """A trainable array: ``.data`` (float32, C-contiguous) and ``.grad`` (same shape, zeros
    until a backward pass adds into it).

    Both arrays keep their identity for the life of the parameter: assigning ``p.data = a``
    copies ``a`` into the existing array (same shape required), so optimizers and layers that
    hold a reference never see a stale array.
    """

    __slots__ = ("_data", "_grad", "_grad_stale", "__weakref__")

    def __init__(self, data):
        arr = np.array(data, dtype=np.float32, order="C", copy=True)
        if arr.size == 0:
            raise ValueError(f"Parameter: data is empty (shape {arr.shape})")
        self._data = arr
        self._grad = np.zeros_like(arr)
        # zero_grad() only sets this flag: the next read of .grad fills the array with zeros, and a
        # layer's backward that meets it writes the gradient instead of adding it to zeros (one pass
        # over the gradient saved, and one read of it inside the kernel).
        self._grad_stale = False

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value):
        self._data[...] = self._checked(value, "data")

    @property
    def grad(self) -> np.ndarray:
        if self._grad_stale:
            self._grad.fill(0.0)
            self._grad_stale = False
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is None:  # PyTorch's `p.grad = None` idiom: back to zeros
            self.zero_grad()
            return
        self._grad[...] = self._checked(value, "grad")
        self._grad_stale = False

    def _grad_for_backward(self):
        """(the gradient array, accumulate): what a layer's backward writes its gradient into, and
        whether it must add to what is there (False right after zero_grad: it may overwrite)."""
        accumulate = not self._grad_stale
        self._grad_stale = False
        return self._grad, accumulate

    def _checked(self, value, name):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"Parameter.{name} must be numeric, got dtype {arr.dtype}")
        if arr.shape != self._data.shape:
            raise ValueError(f"Parameter.{name}: got shape {arr.shape}, expected {self._data.shape}")
        return arr

    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def dtype(self):
        return self._data.dtype

    def numel(self) -> int:
        """Number of elements (PyTorch's name for ``size``)."""
        return self._data.size

    def zero_grad(self) -> None:
        """Set ``.grad`` to 0. Lazily: the array is filled when ``.grad`` is next read, and a backward
        pass that comes first writes its gradient over it instead of adding to zeros."""
        self._grad_stale = True

    def __array__(self, dtype=None, copy=None):
        if copy:
            return np.array(self._data, dtype=dtype, copy=True)
        return self._data if dtype is None else self._data.astype(dtype, copy=False)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return "Parameter containing:\n" + repr(self._data)


# ---------------------------------------------------------------- registry

_REGISTRY: dict = {}


def register_module(cls=None, *, name: str | None = None):
    """Register a Module subclass so that saved models using it can be rebuilt by ``load``.

    Use as a decorator (``@register_module`` or ``@register_module(name="MyLayer")``). The class
    must rebuild itself from ``cls.from_config(module.get_config()["config"])``; by default
    ``from_config(cfg)`` calls ``cls(**cfg)`` and the config comes from ``_config()``.
    """

    def deco(c):
        if not (isinstance(c, type) and issubclass(c, Module)):
            raise TypeError(f"register_module: expected a subclass of fastdl.nn.Module, got {c!r}")
        key = name or c.__name__
        if not isinstance(key, str) or not key:
            raise TypeError("register_module: name must be a non-empty str")
        old = _REGISTRY.get(key)
        if old is not None and old is not c and (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__):
            raise ValueError(f"register_module: the name {key!r} is already taken by {old.__module__}.{old.__qualname__}")
        _REGISTRY[key] = c
        c._registered_name = key
        return c

    return deco if cls is None else deco(cls)


def module_from_config(config) -> "Module":
    """Build a module (and its children) from ``Module.get_config()`` output."""
    if not isinstance(config, Mapping) or "type" not in config or "config" not in config:
        raise ValueError(f"module_from_config: expected a dict with 'type' and 'config', got {config!r:.200}")
    kind = config["type"]
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(f"module_from_config: unknown layer type {kind!r} "
                         "(register custom layers with fastdl.nn.register_module)")
    cfg = config["config"]
    if not isinstance(cfg, Mapping):
        raise ValueError(f"module_from_config: the config of {kind} must be a dict, got {type(cfg).__name__}")
    try:
        return cls.from_config(dict(cfg))
    except (TypeError, ValueError) as e:
        raise ValueError(f"module_from_config: cannot build {kind} from {dict(cfg)!r:.200}: {e}") from e


# ---------------------------------------------------------------- Module

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _indent(text: str, n: int) -> str:
    lines = text.split("\n")
    return "\n".join([lines[0]] + [" " * n + line for line in lines[1:]])


class Module:
    """Base class of every layer and model.

    Attributes that are Parameters or Modules are registered automatically (in assignment order);
    arrays that belong in ``state_dict`` but are not trained (BatchNorm's running statistics) are
    registered with ``register_buffer``. Subclasses implement ``forward(x)`` and
    ``backward(dout) -> dinp``; ``backward`` must ADD its parameter gradients into ``.grad``.
    """

    training: bool

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # -------- registration
    def _registries(self):
        try:
            return self.__dict__["_parameters"], self.__dict__["_buffers"], self.__dict__["_modules"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes") from None

    def __setattr__(self, name, value):
        params, buffers, modules = self._registries()
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in buffers:
            buffers[name] = self._buffer_array(name, value)
            value = buffers[name]
        else:
            params.pop(name, None)
            modules.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        params, buffers, modules = self._registries()
        params.pop(name, None)
        buffers.pop(name, None)
        modules.pop(name, None)
        object.__delattr__(self, name)

    def _buffer_array(self, name, value):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{type(self).__name__}: buffer {name!r} must be numeric, got dtype {arr.dtype}")
        return np.array(arr, dtype=np.float32, order="C", copy=True)

    def register_buffer(self, name: str, value) -> None:
        """Register a float32 array that is saved in ``state_dict`` but not trained."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"register_buffer: name must be a non-empty str without '.', got {name!r}")
        _, buffers, _ = self._registries()
        buffers[name] = self._buffer_array(name, value)
        object.__setattr__(self, name, buffers[name])

    # -------- traversal
    def named_modules(self, prefix: str = ""):
        """[(name, module)] for this module ('' for itself) and every descendant, each once."""
        out, seen = [], set()

        def walk(m, pre):
            if id(m) in seen:
                return
            seen.add(id(m))
            out.append((pre, m))
            for n, c in m._modules.items():
                walk(c, f"{pre}.{n}" if pre else n)

        walk(self, prefix)
        return out

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_children(self):
        return list(self._modules.items())

    def children(self):
        return list(self._modules.values())

    def named_parameters(self, prefix: str = ""):
        """[(dotted name, Parameter)], e.g. ('0.weight', ...) in a Sequential; shared ones once."""
        out, seen = [], set()
        for mname, m in self.named_modules(prefix):
            for n, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{mname}.{n}" if mname else n, p))
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        out = []
        for mname, m in self.named_modules(prefix):
            for n, b in m._buffers.items():
                out.append((f"{mname}.{n}" if mname else n, b))
        return out

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def num_parameters(self) -> int:
        """Total number of trainable scalars."""
        return int(sum(p.size for p in self.parameters()))

    # -------- modes and gradients
    def train(self, mode: bool = True):
        """Training mode (Dropout drops, BatchNorm uses batch statistics) for this module and its
        children; ``train(False)`` is ``eval()``. Returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.train: mode must be a bool, got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode: Dropout is the identity, BatchNorm uses its running statistics. Returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to 0 (in place)."""
        for p in self.parameters():
            p.zero_grad()

    # -------- computation
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    # The protocol containers use: `reuse` allows the layer to write into a buffer it owns (kept
    # across calls of the same shape); arrays handed back to the user never come from there.
    # Built-in layers override these; a user's module only needs forward/backward.
    def _forward(self, x, reuse):
        return self.forward(x)

    def _backward(self, dout, need_dinp, reuse):
        return self.backward(dout)

    # -------- state
    def state_dict(self) -> dict:
        """{dotted name: copy of the array} for every parameter and buffer."""
        d = {n: p.data.copy() for n, p in self.named_parameters()}
        d.update((n, b.copy()) for n, b in self.named_buffers())
        return d

    def _state_targets(self) -> dict:
        d = {n: p.data for n, p in self.named_parameters()}
        d.update(self.named_buffers())
        return d

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers (in place).

        Shapes must match. With ``strict`` (default) the keys must match exactly; the error lists
        missing keys, unexpected keys and shape mismatches. Nothing is copied unless everything
        checks out. Returns ``(missing_keys, unexpected_keys)``.
        """
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{who}: state_dict must be a dict of arrays, got {type(state_dict).__name__}")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"{who}: strict must be a bool, got {type(strict).__name__}")
        targets = self._state_targets()
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        mismatched, arrays = [], {}
        for k, dst in targets.items():
            if k not in state_dict:
                continue
            src = np.asarray(state_dict[k])
            if src.dtype.kind not in "biuf":
                raise TypeError(f"{who}: {k!r} must be a numeric array, got dtype {src.dtype}")
            if src.shape != dst.shape:
                mismatched.append(f"{k}: got shape {src.shape}, expected {dst.shape}")
            arrays[k] = src
        problems = []
        if mismatched:
            problems.append("shape mismatch for " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(map(str, unexpected)))
        if problems:
            raise ValueError(f"{who}: " + " | ".join(problems))
        for k, src in arrays.items():
            np.copyto(targets[k], src, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # -------- config (architecture as JSON) and saving
    def _config(self) -> dict:
        """Constructor arguments that rebuild this module (JSON-able). Override in subclasses."""
        return {}

    def get_config(self) -> dict:
        """{'type': registered name, 'config': constructor arguments}; containers nest their children."""
        cls = type(self)
        return {"type": cls.__dict__.get("_registered_name") or cls.__name__, "config": self._config()}

    @classmethod
    def from_config(cls, config: dict) -> "Module":
        return cls(**config)

    def save(self, path) -> None:
        """Write weights, buffers and architecture to one ``.npz`` file (see ``fastdl.nn.save``)."""
        from .serialize import save

        save(self, path)

    # -------- printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        children = [f"({n}): " + _indent(repr(m), 2) for n, m in self._modules.items()]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([extra] if extra else []) + children
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def num_parameters(module: Module) -> int:
    """Total number of trainable scalars in ``module``."""
    if not isinstance(module, Module):
        raise TypeError(f"num_parameters: expected a fastdl.nn.Module, got {type(module).__name__}")
    return module.num_parameters()
