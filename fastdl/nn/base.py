"""_Layer: the base of the built-in layers (what they share beyond Module).

A built-in layer implements ``_forward(x, reuse)`` and ``_backward(dout, need_dinp, reuse)``, the
protocol containers call directly:

- **Input checks run once per call.** The public ``forward``/``backward`` convert and check their
  argument once (``fastdl._validation.as_float32``); ``_forward``/``_backward`` take an array that is
  already float32, C-contiguous and checked, and only check what is theirs (Linear its feature
  count). A Sequential converts its input once and hands it from layer to layer.
- **Buffers.** With ``reuse`` a layer writes into a buffer it owns (``_buf``, kept across calls of the
  same shape); arrays handed back to the user never come from there (``reuse=False``).
- **Parameter gradients**, one mechanism for every layer: ``grads, acc = grads_for_backward(self, *params)``
  (from ``fastdl.nn.module``) gives the ``.grad`` arrays and whether to add into them (False right after
  ``zero_grad()``: overwrite). A kernel with an ``accumulate`` flag takes both (Linear); a kernel
  without one writes into ``outs = self._grad_outputs(grads, acc)`` (the ``.grad`` arrays themselves
  when it may overwrite, else scratch buffers) and the layer ends with
  ``self._grad_commit(grads, outs, acc)``, which adds the scratch into ``.grad`` (BatchNorm1d).
  Values computed in NumPy go through ``_grad_commit`` too.
- **Per-call state** (what forward caches for backward) is set with ``object.__setattr__`` (no
  registry bookkeeping: a Python call per attribute saved) and named in ``_per_call``, so that
  pickling drops it; the workspace buffers (``_ws``) are dropped too.
- ``_fresh_output``: True when ``_forward(x, reuse=False)`` always returns a new array (never ``x``, a
  view of it or a buffer), so a Sequential ending in this layer needs no aliasing check.
"""
from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .module import Module, grads_for_backward

__all__ = []

_keep = object.__setattr__


class _Layer(Module):
    """A built-in layer: converts inputs once, checks shapes, and reuses buffers inside containers."""

    _per_call = ("_out_shape",)
    _fresh_output = False

    def __init__(self):
        super().__init__()
        _keep(self, "_ws", {})           # reusable buffers, by purpose
        _keep(self, "_out_shape", None)  # shape of the last forward output

    def __getstate__(self):
        state = super().__getstate__()
        state["_ws"] = {}  # workspace: rebuilt on the next call (unpickled read-only, it would break it)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        _keep(self, "_ws", {})  # (pickles written before __getstate__ dropped it)

    @property
    def _who(self) -> str:
        return type(self).__name__

    def forward(self, x):
        """The layer's output for ``x`` (array-like, converted once to float32)."""
        return self._forward(_v.as_float32(x, self._who), reuse=False)

    def backward(self, dout, *, need_input_grad: bool = True):
        """Gradient of the loss with respect to the last forward's input, given ``dout`` (the
        gradient with respect to its output). Parameter gradients are ADDED into ``.grad``.
        With ``need_input_grad=False`` only the parameter gradients are computed (returns None)."""
        if self._out_shape is None:
            raise RuntimeError(f"{self._who}.backward: call forward first")
        dout = _v.as_float32(dout, f"{self._who}.backward", "dout", check_finite=False)
        if dout.shape != self._out_shape:
            raise ValueError(f"{self._who}.backward: dout has shape {dout.shape}, expected the shape of the "
                             f"last output {self._out_shape}")
        if need_input_grad is not True and need_input_grad is not False:
            need_input_grad = _v.check_bool(need_input_grad, f"{self._who}.backward", "need_input_grad")
        return self._backward(dout, need_input_grad, reuse=False)

    def _buf(self, key, shape, reuse):
        """A float32 buffer this layer owns (reused across calls of the same shape), or None to let
        the kernel allocate a fresh array (what the caller gets back must never be reused)."""
        if not reuse:
            return None
        b = self._ws.get(key)
        if b is None or b.shape != shape:
            b = np.empty(shape, dtype=np.float32)
            self._ws[key] = b
        return b

    # -------- parameter gradients (see the module docstring)
    def _weight_bias_grads(self):
        """(dweight, dbias, accumulate) of a layer with ``weight`` and an optional ``bias`` (None: dbias None),
        for a kernel with an ``accumulate`` flag (Linear, Conv2d)."""
        if self.bias is None:
            (dweight,), accumulate = grads_for_backward(self, self.weight)
            return dweight, None, accumulate
        (dweight, dbias), accumulate = grads_for_backward(self, self.weight, self.bias)
        return dweight, dbias, accumulate

    def _grad_outputs(self, grads, accumulate):
        """Where a kernel without an ``accumulate`` flag writes the parameter gradients: the ``.grad``
        arrays themselves when it may overwrite them, else scratch buffers this layer owns."""
        if not accumulate:
            return grads
        return [self._buf(f"grad{i}", g.shape, True) for i, g in enumerate(grads)]

    @staticmethod
    def _grad_commit(grads, outs, accumulate):
        """Finish a backward: add ``outs`` into ``grads`` (or copy, when it may overwrite); nothing to
        do for the arrays that are the ``.grad`` arrays already."""
        for g, o in zip(grads, outs):
            if o is g:
                continue
            if accumulate:
                np.add(g, o, out=g, casting="unsafe")
            else:
                np.copyto(g, o, casting="unsafe")

    def _need_2d(self, x, features, desc, what="features"):
        """The 2-D rule of Linear and BatchNorm1d: (batch, features), with a hint for other ranks."""
        if x.ndim != 2:
            hint = ("; put nn.Flatten() before it to flatten the other axes" if x.ndim > 2 else
                    "; for a single sample use x.reshape(1, -1)" if x.ndim == 1 else "")
            raise ValueError(f"{desc}: input must be 2-D (batch, {features}), got shape {x.shape}{hint}")
        if x.shape[1] != features:
            raise ValueError(f"{desc}: input has {x.shape[1]} {what}, expected {features}")
