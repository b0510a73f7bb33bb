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
the unfused pair's. A new fused pair (Conv2d + ReLU) is one new row here (or, from outside
this file, one ``register_fusion`` call; edit FUSIONS through it, so that its index follows).
"""
from __future__ import annotations

from .activation import ReLU, Sigmoid, Tanh
from .linear import Linear

__all__ = ["FUSIONS", "register_fusion", "fused_activations"]

FUSIONS: dict = {
    (Linear, ReLU): "relu",
    (Linear, Sigmoid): "sigmoid",
    (Linear, Tanh): "tanh",
}

# The same table by layer type, {layer type: {activation type: name}}: what Sequential reads (two
# dict lookups by type cost what the isinstance tests they replace did; a (type, type) tuple key
# costs three times more). Kept in step with FUSIONS by register_fusion.
_BY_LAYER: dict = {}


def _index():
    _BY_LAYER.clear()
    for (layer_type, act_type), name in FUSIONS.items():
        _BY_LAYER.setdefault(layer_type, {})[act_type] = name


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
