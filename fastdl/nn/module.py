"""Parameter and Module: the object model every layer and model is built on.

Backprop in fastdl is explicit, as the course teaches it::

    out = model(x)                       # forward, caches what backward needs
    loss = loss_fn(out, y)               # a Python float
    opt.zero_grad()                      # every .grad back to 0
    model.backward(loss_fn.backward())   # dloss/dout in, dloss/dinput out; .grad += ...
    opt.step()

``backward`` ADDS into each parameter's ``.grad`` (PyTorch semantics), so gradients of several
backward calls accumulate until ``zero_grad()``. Layers reach ``.grad`` one way only:
``grads_for_backward`` (see there, and ``fastdl.nn.base._Layer``).

This file imports nothing else from ``fastdl.nn``: the registry of layer types is in ``registry``,
saving in ``serialize`` (``Module.save`` imports it when called).
"""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from .. import _validation as _v

__all__ = ["Parameter", "Module", "num_parameters", "grads_for_backward"]

# ---------------------------------------------------------------- Parameter


class Parameter:
    """A trainable array: ``.data`` (float32, C-contiguous) and ``.grad`` (same shape, zeros
    until a backward pass adds into it).

    Both arrays keep their identity for the life of the parameter: assigning ``p.data = a``
    copies ``a`` into the existing array (same shape required), so optimizers and layers that
    hold a reference never see a stale array.
    """

    __slots__ = ("_data", "_grad", "_grad_stale", "_read_only", "__weakref__")

    def __init__(self, data):
        arr = np.array(_v.numeric_array(data, "Parameter", "data"), dtype=np.float32, order="C", copy=True)
        if arr.size == 0:
            raise ValueError(f"Parameter: data is empty (shape {arr.shape})")
        self._data = arr
        self._grad = np.zeros_like(arr)
        # zero_grad() only sets this flag: the next read of .grad fills the array with zeros, and a
        # layer's backward that meets it writes the gradient instead of adding it to zeros (one pass
        # over the gradient saved, and one read of it inside the kernel).
        self._grad_stale = False
        self._read_only = False  # True for weights unpickled read-only (see __setstate__)

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
        """(the gradient array, accumulate) for this parameter alone: ``grads_for_backward(None, self)``."""
        (grad,), accumulate = grads_for_backward(None, self)
        return grad, accumulate

    # Pickling keeps the weights only: .grad comes back as zeros. Weights unpickled read-only (joblib.load
    # with mmap_mode="r" maps them from the file) stay read-only and shared: forward works, backward
    # refuses (grads_for_backward), since training would write into them.
    def __getstate__(self):
        return {"data": self._data}

    def __setstate__(self, state):
        if isinstance(state, tuple):  # pickled by fastdl before __getstate__: (None, {slot: value})
            state = {"data": state[1]["_data"]}
        data = np.asarray(state["data"])  # a np.memmap becomes a plain ndarray view of the same memory
        self._data = data
        self._grad = np.zeros(data.shape, dtype=np.float32)
        self._grad_stale = False
        self._read_only = not data.flags.writeable

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


def _refuse_read_only(layer, params):
    p = next(p for p in params if p._read_only)
    names = [n for n, q in (layer._parameters.items() if layer is not None else ()) if q is p]
    name = f"parameter {names[0]!r}" if names else "a parameter"
    who = f"{getattr(layer, '_who', type(layer).__name__)}.backward" if layer is not None else "backward"
    raise ValueError(f"{who}: {name} is read-only (memory-mapped, e.g. by joblib.load(..., mmap_mode='r')), "
                     "so the model cannot be trained; copy.deepcopy(model) gives a writable copy")


def grads_for_backward(layer, *params):
    """The one way a layer's backward reaches its parameters' gradients.

    Returns ``(grads, accumulate)``: ``grads[i]`` is ``params[i]``'s ``.grad`` array, and ``accumulate``
    says whether the layer must ADD its gradients into them (True) or may overwrite them (False:
    every one of them was zeroed by ``zero_grad()`` since the last backward, so the zero fill and a
    read of the old values are saved). One flag for all: if only some were zeroed, those are filled
    with zeros now and ``accumulate`` is True. After this call the gradients count as written.

    A kernel with an ``accumulate`` flag (``ops.linear_backward``) takes ``grads`` and the flag; a
    kernel without one writes into ``_Layer._grad_outputs(grads, accumulate)`` and the layer then
    calls ``_Layer._grad_commit``. Weights that were unpickled read-only (memory-mapped) are refused
    with a ValueError naming ``layer`` (the module asking) and the parameter, before anything is
    written (the optimizer could not update them).
    """
    if len(params) == 2:  # (weight, bias), the common case, unrolled: this runs every step
        p, q = params
        if not (p._read_only or q._read_only):
            sp, sq = p._grad_stale, q._grad_stale
            p._grad_stale = q._grad_stale = False
            if sp and sq:
                return (p._grad, q._grad), False
            if sp:
                p._grad.fill(0.0)
            elif sq:
                q._grad.fill(0.0)
            return (p._grad, q._grad), True
    if any(p._read_only for p in params):
        _refuse_read_only(layer, params)
    stale = [p._grad_stale for p in params]
    accumulate = not all(stale)
    for p, st in zip(params, stale):
        if st and accumulate:
            p._grad.fill(0.0)
        p._grad_stale = False
    return tuple(p._grad for p in params), accumulate


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
    ``backward(dout) -> dinp``; ``backward`` must ADD its parameter gradients into ``.grad``
    (built-in layers do it through ``grads_for_backward``, which also lets them overwrite a
    gradient that ``zero_grad()`` cleared instead of adding to zeros).

    Pickling (``pickle``, ``joblib``, ``copy.deepcopy``) keeps the architecture, parameters and
    buffers, not what one call leaves behind: the attributes named in ``_per_call`` (caches kept
    for backward) come back as None, and parameters' ``.grad`` as zeros.
    """

    training: bool
    _per_call: tuple = ()  # attributes holding per-call state: reset to None when pickled

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

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in self._per_call:
            if name in state:
                state[name] = None
        for name in self._buffers:  # pickled once, in _buffers; __setstate__ points the attribute at it
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in self._per_call:  # (for pickles written before __getstate__ dropped them)
            if name in state:
                object.__setattr__(self, name, None)
        buffers = self._buffers
        for name, arr in buffers.items():
            buffers[name] = arr = np.asarray(arr)  # a np.memmap becomes a plain view of the same memory
            object.__setattr__(self, name, arr)

    def _buffer_array(self, name, value):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{type(self).__name__}: buffer {name!r} must be numeric, got dtype {arr.dtype}")
        return np.array(arr, dtype=np.float32, order="C", copy=True)

    def register_buffer(self, name: str, value) -> None:
        """Register a float32 array that is saved in ``state_dict`` but not trained."""
        if not isinstance(name, str):
            raise TypeError(f"register_buffer: name must be a str, got {type(name).__name__}")
        if not name or "." in name:
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
        mode = _v.check_bool(mode, f"{type(self).__name__}.train", "mode")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
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
        strict = _v.check_bool(strict, who, "strict")
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


def __getattr__(name):
    # register_module, module_from_config and _REGISTRY moved to fastdl.nn.registry; still importable here
    if name in ("register_module", "module_from_config", "_REGISTRY"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
