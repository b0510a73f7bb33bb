"""Sequential: layers applied in order, with the fusions of ``fastdl.nn.fusion``."""
from __future__ import annotations

import numbers

import numpy as np

from .base import _keep, _Layer
from .fusion import _BY_LAYER, _FOLDS_BY_LAYER
from .module import Module
from .registry import module_from_config, register_module

__all__ = ["Sequential"]


@register_module
class Sequential(_Layer):
    """Layers applied in order: ``Sequential(Linear(2, 8), ReLU(), Linear(8, 1))`` (a list works
    too). Supports ``len``, indexing (an int gives the layer, a slice a Sequential of the same
    layers), iteration and ``append``. State-dict keys are ``"<index>.<name>"`` as in PyTorch.

    The input may have any rank the first layer accepts, e.g. ``Sequential(Flatten(), Linear(784,
    10))`` on (N, 1, 28, 28); it is converted and checked once, then handed from layer to layer.
    Backward runs the layers in reverse (``dout`` shaped like the output). A pair listed in
    ``fastdl.nn.fusion.FUSIONS`` (Linear then ReLU, Sigmoid or Tanh) runs as one fused kernel call
    (same results as running them separately), and so, in backward, does such an activation
    followed by its layer: the activation's derivative is applied as the layer's input gradient
    is computed.
    """

    _per_call = _Layer._per_call + ("_folded",)

    def __init__(self, *layers):
        super().__init__()
        _keep(self, "_folded", ())  # indices of layers whose next layer was folded into them (eval mode)
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for layer in layers:
            self.append(layer)

    def append(self, layer: Module) -> "Sequential":
        """Add a layer at the end. Returns self."""
        from .losses import _Loss

        i = len(self._modules)
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential: layer {i} must be a fastdl.nn.Module, got {type(layer).__name__}")
        if isinstance(layer, _Loss):
            raise TypeError(f"Sequential: layer {i} is a loss ({type(layer).__name__}); losses are called "
                            "separately: loss = loss_fn(model(x), y)")
        setattr(self, str(i), layer)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def __getitem__(self, idx):
        layers = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*layers[idx])
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise TypeError(f"Sequential indices must be integers or slices, not {type(idx).__name__}")
        if not -len(layers) <= idx < len(layers):
            raise IndexError(f"Sequential index {idx} is out of range for {len(layers)} layers")
        return layers[idx]

    def _forward(self, x, reuse):
        layers = list(self._modules.values())
        n = len(layers)
        inner = []  # outputs that live in reusable buffers
        folded = []
        i, fresh = 0, False
        by_layer = _BY_LAYER  # fusion.FUSIONS, indexed by layer type
        while i < n:
            layer = layers[i]
            j = i + 1  # the next layer not yet run
            params = None
            folds = _FOLDS_BY_LAYER.get(type(layer)) if not layer.training else None
            if folds is not None and j < n and not layers[j].training:
                fold = folds.get(type(layers[j]))
                if fold is not None:  # eval mode: the normalization after the layer, in its weights
                    params = fold(layer, layers[j])
                    folded.append(i)
                    j += 1
            acts = by_layer.get(type(layer))
            fused = acts.get(type(layers[j])) if acts is not None and j < n else None
            if fused is not None:
                act = layers[j]
                j += 1
                last = j == n
                if params is None:
                    y = layer._forward(x, reuse or not last, act=fused)
                else:
                    y = layer._forward(x, reuse or not last, act=fused, params=params)
                act._fused_output(y)
            else:
                last = j == n
                if params is None:
                    y = layer._forward(x, reuse or not last)
                else:
                    y = layer._forward(x, reuse or not last, params=params)
            i = j
            if last:
                fresh = getattr(layer, "_fresh_output", False)
            else:
                inner.append(y)
            x = y
        # A last layer with a fresh output (Linear, an activation) wrote a new array (reuse=False); an
        # identity-like one (Dropout in eval, Flatten) may hand back one of the buffers
        if not reuse and not fresh and any(np.may_share_memory(x, b) for b in inner):
            x = x.copy()
        _keep(self, "_out_shape", x.shape)
        _keep(self, "_folded", tuple(folded))
        return x

    def _backward(self, dout, need_dinp, reuse):
        layers = list(self._modules.values())
        for i in self._folded:  # the forward folded layers[i + 1] into layers[i]: rerun the pair unfolded
            layers[i + 1]._forward(layers[i]._forward(layers[i]._x, False), False)
        _keep(self, "_folded", ())
        inner = []  # gradients that live in reusable buffers
        by_layer = _BY_LAYER
        i = len(layers) - 1
        while i >= 0:
            layer = layers[i]
            acts = by_layer.get(type(layer))
            fused = acts.get(type(layers[i - 1])) if acts is not None and i > 0 else None
            if fused is not None and layers[i - 1]._y is layer._x:
                # an activation feeding the layer: its backward runs in the layer's dx kernel
                first = i == 1
                dout = layer._backward(dout, need_dinp if first else True, reuse if first else True,
                                       input_act=fused)
                i -= 2
            else:
                first = i == 0
                dout = layer._backward(dout, need_dinp if first else True, reuse if first else True)
                i -= 1
            if not first:
                inner.append(dout)
        if not reuse and dout is not None and any(np.may_share_memory(dout, b) for b in inner):
            dout = dout.copy()  # an identity-like first layer handed back a buffer
        return dout

    def get_config(self):
        return {"type": "Sequential", "config": {"layers": [m.get_config() for m in self._modules.values()]}}

    @classmethod
    def from_config(cls, config):
        layers = config.get("layers")
        if not isinstance(layers, list) or set(config) != {"layers"}:
            raise ValueError("Sequential config must be {'layers': [layer configs]}")
        return cls(*[module_from_config(c) for c in layers])
