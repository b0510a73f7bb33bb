"""Activations: ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Step. Elementwise ones take any rank;
Softmax works over the last axis of an input of rank >= 2."""
from __future__ import annotations

from .. import _validation as _v
from .. import ops
from .base import _keep, _Layer
from .registry import register_module

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Step"]


class _Activation(_Layer):
    """Activation that differentiates from its OUTPUT y (so a fused layer+activation, which never
    materialises the pre-activation, backpropagates exactly like the unfused pair)."""

    _per_call = _Layer._per_call + ("_y",)
    _fresh_output = True

    def __init__(self):
        super().__init__()
        _keep(self, "_y", None)

    def _fused_output(self, y):
        """Called by Sequential after the layer before computed y = act(...) in its own kernel
        (a row of ``fastdl.nn.fusion.FUSIONS``)."""
        _keep(self, "_y", y)
        _keep(self, "_out_shape", y.shape)

    def _forward(self, x, reuse):
        y = self._fwd(x, self._buf("out", x.shape, reuse))
        _keep(self, "_y", y)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        return self._bwd(dout, self._y, self._buf("dinp", dout.shape, reuse))


@register_module
class ReLU(_Activation):
    """max(x, 0)."""

    def _fwd(self, x, out):
        return ops.relu(x, out=out)

    def _bwd(self, dout, y, out):
        # y > 0 exactly where x > 0, so the output gives the same mask as the input.
        return ops.relu_backward(dout, y, out=out)


@register_module
class Sigmoid(_Activation):
    """1 / (1 + exp(-x)); derivative y (1 - y)."""

    def _fwd(self, x, out):
        return ops.sigmoid(x, out=out)

    def _bwd(self, dout, y, out):
        return ops.sigmoid_backward(dout, y, out=out)


@register_module
class Tanh(_Activation):
    """tanh(x); derivative 1 - y²."""

    def _fwd(self, x, out):
        return ops.tanh(x, out=out)

    def _bwd(self, dout, y, out):
        return ops.tanh_backward(dout, y, out=out)


@register_module
class Softmax(_Activation):
    """exp(x_i) / Σ_j exp(x_j) over the last axis of an input of rank >= 2 (batch, ..., classes).

    For training a classifier use CrossEntropyLoss on the raw scores instead (it includes the
    softmax, in a numerically stable way)."""

    def _fwd(self, x, out):
        if x.ndim < 2:
            raise ValueError(f"Softmax: input must be at least 2-D (batch, ..., classes), got shape {x.shape}")
        if x.ndim == 2:
            return ops.softmax(x, out=out)
        rows = (-1, x.shape[-1])  # C-contiguous: reshaping to rows is a view, and back again
        y = ops.softmax(x.reshape(rows), out=None if out is None else out.reshape(rows))
        return y.reshape(x.shape)

    def _bwd(self, dout, y, out):
        if y.ndim == 2:
            return ops.softmax_backward(dout, y, out=out)
        rows = (-1, y.shape[-1])
        d = ops.softmax_backward(dout.reshape(rows), y.reshape(rows), out=None if out is None else out.reshape(rows))
        return d.reshape(y.shape)


@register_module
class LeakyReLU(_Layer):
    """x if x > 0 else negative_slope * x."""

    _per_call = _Layer._per_call + ("_x",)
    _fresh_output = True

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _v.check_real(negative_slope, "LeakyReLU", "negative_slope", float32=True)
        _keep(self, "_x", None)

    def _forward(self, x, reuse):
        y = ops.leaky_relu(x, self.negative_slope, out=self._buf("out", x.shape, reuse))
        _keep(self, "_x", x)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        return ops.leaky_relu_backward(dout, self._x, self.negative_slope, out=self._buf("dinp", dout.shape, reuse))

    def _config(self):
        return {"negative_slope": self.negative_slope}

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


@register_module
class Step(_Layer):
    """Heaviside step: 1 where x >= 0, else 0 (the perceptron's activation). Forward only: its
    derivative is 0 almost everywhere, so gradient descent cannot train through it."""

    _fresh_output = True

    def _forward(self, x, reuse):
        y = ops.step(x, out=self._buf("out", x.shape, reuse))
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        raise RuntimeError("Step.backward: the step function has derivative 0 almost everywhere and no "
                           "useful gradient; train with Sigmoid, Tanh or ReLU instead")
