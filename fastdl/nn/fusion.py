"""Which layer runs which activation inside its own kernel: one table, consulted by Sequential.

``FUSIONS[(layer type, activation type)]`` is the activation's name as that layer's kernels know it
(``ops.linear_forward(activation=...)``, ``ops.linear_backward(input_activation=...)``). A row means
both directions:

- forward, the layer followed by the activation: ``y = layer._forward(x, reuse, act=name)`` computes
  act(layer(x)) in one call, and the activation is told its output with ``act._fused_output(y)``;
- backward, the activation followed by the layer (the activation's output was the layer's input):
  ``layer._backward(dout, need_dinp, reuse, input_act=name)`` returns the gradient already carried
  back through the activation, whose own backward is skipped.

So a layer in the table takes ``act=`` and ``input_act=`` keywords and keeps its last input as
``_x``; the activation is an ``_Activation`` (differentiates from its output ``_y``). Results equal
the unfused pair's. A new fused pair is one new row here (or, from outside this file, one
``register_fusion`` call; edit FUSIONS through it, so that its index follows).

``FOLDS[(layer type, normalization type)]`` is a function ``fold(layer, norm) -> (weight, bias)``: in
eval mode (both layers), a normalization that follows the layer is folded into the layer's weights -
``y = layer._forward(x, reuse, act=..., params=fold(layer, norm))`` - and skipped (Conv2d then
BatchNorm2d: W' = W·γ/√(σ²+ε) per output channel, b' = (b - μ)·γ/√(σ²+ε) + β). An activation after
the normalization then fuses into the layer as if it followed it. Should a backward follow such a
forward, Sequential first reruns the pair unfolded, so that every layer's gradient is the unfolded one.
"""
from __future__ import annotations

import numpy as np

from .activation import ReLU, Sigmoid, Tanh
from .conv import Conv2d
from .linear import Linear
from .normalization import BatchNorm2d

__all__ = ["FUSIONS", "FOLDS", "register_fusion", "register_fold", "fused_activations"]

FUSIONS: dict = {
    (Linear, ReLU): "relu",
    (Linear, Sigmoid): "sigmoid",
    (Linear, Tanh): "tanh",
    (Conv2d, ReLU): "relu",
    (Conv2d, Sigmoid): "sigmoid",
    (Conv2d, Tanh): "tanh",
}


def fold_batchnorm(layer, norm):
    """(weight, bias) of ``layer`` (output channels first) with the eval-mode batch norm ``norm`` after it
    folded in, computed in float64: W·s and (b - running_mean)·s + beta, s = gamma / sqrt(running_var + eps)."""
    scale = norm.weight.data.astype(np.float64) / np.sqrt(norm.running_var.astype(np.float64) + norm.eps)
    w = layer.weight.data.astype(np.float64) * scale.reshape((-1,) + (1,) * (layer.weight.data.ndim - 1))
    b = -norm.running_mean.astype(np.float64) * scale + norm.bias.data
    if layer.bias is not None:
        b += layer.bias.data * scale
    return w.astype(np.float32), b.astype(np.float32)


FOLDS: dict = {}
_FOLDS_BY_LAYER: dict = {}

# The same table by layer type, {layer type: {activation type: name}}: what Sequential reads (two
# dict lookups by type cost what the isinstance tests they replace did; a (type, type) tuple key
# costs three times more). Kept in step with FUSIONS by register_fusion.
_BY_LAYER: dict = {}


def _index():
    _BY_LAYER.clear()
    for (layer_type, act_type), name in FUSIONS.items():
        _BY_LAYER.setdefault(layer_type, {})[act_type] = name


def register_fold(layer_type: type, norm_type: type, fold=fold_batchnorm) -> None:
    """Add a row to FOLDS: in eval mode ``norm_type`` after ``layer_type`` folds into its weights."""
    if not isinstance(layer_type, type) or not isinstance(norm_type, type):
        raise TypeError("register_fold: layer_type and norm_type must be classes")
    if not callable(fold):
        raise TypeError(f"register_fold: fold must be callable, got {type(fold).__name__}")
    FOLDS[(layer_type, norm_type)] = fold
    _FOLDS_BY_LAYER.clear()
    for (lt, nt), f in FOLDS.items():
        _FOLDS_BY_LAYER.setdefault(lt, {})[nt] = f


def fused_activations(layer_type: type) -> dict:
    """{activation type: name} of the activations ``layer_type`` runs in its own kernels ({} for none)."""
    return dict(_BY_LAYER.get(layer_type, {}))


def register_fusion(layer_type: type, activation_type: type, name: str) -> None:
    """Add a row: ``layer_type``'s kernels apply ``activation_type`` (known to them as ``name``)."""
    if not isinstance(layer_type, type) or not isinstance(activation_type, type):
        raise TypeError("register_fusion: layer_type and activation_type must be classes")
    if not isinstance(name, str):
        raise TypeError(f"register_fusion: name must be a str, got {type(name).__name__}")
    FUSIONS[(layer_type, activation_type)] = name
    _index()


_index()
register_fold(Conv2d, BatchNorm2d)
