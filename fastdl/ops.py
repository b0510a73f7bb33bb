"""fastdl.ops: every native kernel as a plain function over NumPy arrays.

This is to ``fastdl.nn`` what ``torch.nn.functional`` is to ``torch.nn``. Arrays must be
float32 (int64 for class labels) and C-contiguous; nothing is converted silently — convert once
with ``np.asarray(x, dtype=np.float32)``. Each function allocates its outputs unless ``out=`` is
given; an ``out`` array is written in place and returned.
"""
from __future__ import annotations

from . import _C

__all__: list = []  # each section below adds its names


# ---------------------------------------------------------------- gemm / linear


# ---------------------------------------------------------------- activations
__all__ += [
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "step",
]
# Elementwise functions take x of any shape; out=x computes in place.


def relu(x, out=None):
    """max(x, 0), elementwise."""
    return _C.relu_forward(x, out)


def relu_backward(dout, x, out=None):
    """Gradient of relu: dout where x > 0, else 0."""
    return _C.relu_backward(dout, x, out)


def leaky_relu(x, negative_slope=0.01, out=None):
    """x where x > 0, else negative_slope * x."""
    return _C.leaky_relu_forward(x, negative_slope, out)


def leaky_relu_backward(dout, x, negative_slope=0.01, out=None):
    """Gradient of leaky_relu: dout where x > 0, else negative_slope * dout."""
    return _C.leaky_relu_backward(dout, x, negative_slope, out)


def sigmoid(x, out=None):
    """1 / (1 + exp(-x)), stable for any x (computed from exp(-|x|))."""
    return _C.sigmoid_forward(x, out)


def sigmoid_backward(dout, y, out=None):
    """Gradient of sigmoid from its output y = sigmoid(x): dout * y * (1 - y)."""
    return _C.sigmoid_backward(dout, y, out)


def tanh(x, out=None):
    """tanh(x), stable for any x."""
    return _C.tanh_forward(x, out)


def tanh_backward(dout, y, out=None):
    """Gradient of tanh from its output y = tanh(x): dout * (1 - y**2)."""
    return _C.tanh_backward(dout, y, out)


def softmax(x, out=None):
    """Softmax over the last axis of a 2-D x (batch, features); each row's max is subtracted first."""
    return _C.softmax_forward(x, out)


def softmax_backward(dout, y, out=None):
    """Gradient of softmax from its output y (rows): y * (dout - sum(dout * y, axis=1, keepdims=True))."""
    return _C.softmax_backward(dout, y, out)


def step(x, out=None):
    """Heaviside step: 1 where x >= 0, else 0 (forward only; it has no useful gradient)."""
    return _C.step_forward(x, out)


# ---------------------------------------------------------------- losses
__all__ += ["mse_loss", "l1_loss", "bce_with_logits", "softmax_cross_entropy"]
# Each loss returns (loss, grad): loss a Python float (the sum is kept in double), grad the gradient
# of that loss with respect to the first argument (None when grad=False), written into out if given.
# reduction="mean" divides by the element count (by the batch size for softmax_cross_entropy), "sum"
# does not. A NaN or Inf input raises ValueError naming the argument; it is found from the loss
# itself, so checking costs nothing when the inputs are finite (out may have been written by then).


def mse_loss(pred, target, reduction="mean", grad=True, out=None):
    """Mean squared error: mean((pred - target)**2); dpred = 2 (pred - target) / n."""
    return _C.mse_forward_backward(pred, target, reduction, grad, out)


def l1_loss(pred, target, reduction="mean", grad=True, out=None):
    """Mean absolute error: mean(|pred - target|); dpred = sign(pred - target) / n (0 where equal)."""
    return _C.l1_forward_backward(pred, target, reduction, grad, out)


def bce_with_logits(logits, target, reduction="mean", grad=True, out=None):
    """Binary cross-entropy on logits, target in [0, 1]:
    mean(max(x, 0) - x t + log1p(exp(-|x|))); dlogits = (sigmoid(x) - t) / n."""
    return _C.bce_logits_forward_backward(logits, target, reduction, grad, out)


def softmax_cross_entropy(logits, labels, reduction="mean", grad=True, out=None):
    """Cross-entropy of softmax(logits) (B, NC) against int64 class labels (B,), fused:
    loss = mean(logsumexp(row) - row[label]); dlogits = (softmax(logits) - onehot(labels)) / B."""
    return _C.softmax_crossentropy_forward_backward(logits, labels, reduction, grad, out)


# ---------------------------------------------------------------- dropout / batchnorm


# ---------------------------------------------------------------- optimizer updates

