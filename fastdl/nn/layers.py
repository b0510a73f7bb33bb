"""Layers: Sequential, Linear, activations, Dropout, BatchNorm1d, Flatten.

Every layer computes through ``fastdl.ops`` (the native kernels). ``forward`` caches what
``backward`` needs; ``backward(dout)`` returns the gradient with respect to the layer's input and
ADDS parameter gradients into ``.grad``.

Arrays returned to the caller are always fresh. Inside a Sequential, intermediate activations and
gradients are written into buffers each layer owns and reuses from one batch to the next of the
same shape (no allocation per step); consecutive ``Linear`` + ``ReLU``/``Sigmoid``/``Tanh`` run as
one fused ``ops.linear_forward(activation=...)`` call.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import ops
from . import init as _init
from .module import Module, Parameter, as_float32, check_float, check_int, register_module

# What forward keeps for backward (the input, the output, its shape) is never a Parameter or a
# Module, so it skips Module.__setattr__'s registry bookkeeping (a Python call per attribute, ~6
# per layer and step).
_keep = object.__setattr__

__all__ = ["Sequential", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Step", "Dropout",
           "BatchNorm1d", "Flatten"]


class _Layer(Module):
    """A built-in layer: converts inputs once, checks shapes, and reuses buffers inside containers."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_ws", {})           # reusable buffers, by purpose
        object.__setattr__(self, "_out_shape", None)  # shape of the last forward output

    @property
    def _who(self) -> str:
        return type(self).__name__

    def forward(self, x):
        """The layer's output for ``x`` (array-like, converted once to float32)."""
        return self._forward(as_float32(x, self._who), reuse=False)

    def backward(self, dout, *, need_input_grad: bool = True):
        """Gradient of the loss with respect to the last forward's input, given ``dout`` (the
        gradient with respect to its output). Parameter gradients are ADDED into ``.grad``.
        With ``need_input_grad=False`` only the parameter gradients are computed (returns None)."""
        if self._out_shape is None:
            raise RuntimeError(f"{self._who}.backward: call forward first")
        dout = as_float32(dout, f"{self._who}.backward", "dout", check_finite=False)
        if dout.shape != self._out_shape:
            raise ValueError(f"{self._who}.backward: dout has shape {dout.shape}, expected the shape of the "
                             f"last output {self._out_shape}")
        return self._backward(dout, bool(need_input_grad), reuse=False)

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

    def _need_2d(self, x, features, desc):
        if x.ndim != 2:
            raise ValueError(f"{desc}: input must be 2-D (batch, {features}), got shape {x.shape}")
        if x.shape[1] != features:
            raise ValueError(f"{desc}: input has {x.shape[1]} features, expected {features}")


# ---------------------------------------------------------------- Linear

_INITS = {
    "kaiming_uniform": _init.kaiming_uniform_,
    "kaiming_normal": _init.kaiming_normal_,
    "xavier_uniform": _init.xavier_uniform_,
    "xavier_normal": _init.xavier_normal_,
    "zeros": lambda w, rng: _init.zeros_(w),
}


@register_module
class Linear(_Layer):
    """y = x · Wᵀ + b, with weight W of shape (out_features, in_features) as in PyTorch.

    ``init`` picks the weight initializer: "kaiming_uniform" (default; He uniform with the ReLU gain,
    U(±sqrt(6 / in_features))), "kaiming_normal", "xavier_uniform", "xavier_normal" or "zeros".
    The bias starts at 0. ``rng``: np.random.Generator, int seed, or None (fresh generator).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "kaiming_uniform", rng=None):
        super().__init__()
        self.in_features = check_int(in_features, "Linear", "in_features", minimum=1)
        self.out_features = check_int(out_features, "Linear", "out_features", minimum=1)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"Linear: bias must be a bool, got {type(bias).__name__}")
        if not isinstance(init, str) or init not in _INITS:
            raise ValueError(f"Linear: init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
        self.init = init
        gen = _init.as_generator(rng, "Linear")
        w = np.empty((self.out_features, self.in_features), dtype=np.float32)
        _INITS[init](w, gen)
        self.weight = Parameter(w)
        self.bias = Parameter(np.zeros(self.out_features, dtype=np.float32)) if bias else None
        object.__setattr__(self, "_x", None)

    @property
    def _who(self):
        return f"Linear({self.in_features} -> {self.out_features})"

    def _forward(self, x, reuse, act=None):
        if x.ndim != 2 or x.shape[1] != self.in_features:  # (the message is built only on failure)
            self._need_2d(x, self.in_features, self._who)
        out = self._buf("out", (x.shape[0], self.out_features), reuse)
        b = None if self.bias is None else self.bias.data
        y = ops.linear_forward(x, self.weight.data, b, activation=act, out=out)
        _keep(self, "_x", x)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse, input_act=None):
        # input_act: the name of the activation whose output our input was (Sequential fuses its
        # backward into ours: dx comes back already multiplied by its derivative)
        dx = self._buf("dinp", self._x.shape, reuse) if need_dinp else None
        dweight, accumulate = self.weight._grad_for_backward()
        dbias = None
        if self.bias is not None:
            dbias, acc_b = self.bias._grad_for_backward()
            if acc_b != accumulate:  # one of the two was zeroed on its own: zero it now, add to both
                (dbias if accumulate else dweight).fill(0.0)
                accumulate = True
        dinp, _, _ = ops.linear_backward(dout, self._x, self.weight.data, bias=dbias is not None,
                                         need_dx=need_dinp, accumulate=accumulate, dx=dx, dweight=dweight,
                                         dbias=dbias, input_activation=input_act)
        return dinp

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "init": self.init}

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------- activations


class _Activation(_Layer):
    """Elementwise activation that differentiates from its OUTPUT y (so a fused Linear+act, which
    never materialises the pre-activation, backpropagates exactly like the unfused pair)."""

    _fused_name = None  # the linear_forward activation this layer can be fused as

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_y", None)

    def _fused_output(self, y):
        """Called by Sequential after Linear computed y = act(x·Wᵀ + b) in one kernel."""
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

    _fused_name = "relu"

    def _fwd(self, x, out):
        return ops.relu(x, out=out)

    def _bwd(self, dout, y, out):
        # y > 0 exactly where x > 0, so the output gives the same mask as the input.
        return ops.relu_backward(dout, y, out=out)


@register_module
class Sigmoid(_Activation):
    """1 / (1 + exp(-x)); derivative y (1 - y)."""

    _fused_name = "sigmoid"

    def _fwd(self, x, out):
        return ops.sigmoid(x, out=out)

    def _bwd(self, dout, y, out):
        return ops.sigmoid_backward(dout, y, out=out)


@register_module
class Tanh(_Activation):
    """tanh(x); derivative 1 - y²."""

    _fused_name = "tanh"

    def _fwd(self, x, out):
        return ops.tanh(x, out=out)

    def _bwd(self, dout, y, out):
        return ops.tanh_backward(dout, y, out=out)


@register_module
class Softmax(_Activation):
    """exp(x_i) / Σ_j exp(x_j) over the last axis of a 2-D input (batch, classes).

    For training a classifier use CrossEntropyLoss on the raw scores instead (it includes the
    softmax, in a numerically stable way)."""

    def _fwd(self, x, out):
        if x.ndim != 2:
            raise ValueError(f"Softmax: input must be 2-D (batch, classes), got shape {x.shape}")
        return ops.softmax(x, out=out)

    def _bwd(self, dout, y, out):
        return ops.softmax_backward(dout, y, out=out)


@register_module
class LeakyReLU(_Layer):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = check_float(negative_slope, "LeakyReLU", "negative_slope", float32=True)
        object.__setattr__(self, "_x", None)

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

    def _forward(self, x, reuse):
        y = ops.step(x, out=self._buf("out", x.shape, reuse))
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        raise RuntimeError("Step.backward: the step function has derivative 0 almost everywhere and no "
                           "useful gradient; train with Sigmoid, Tanh or ReLU instead")


# ---------------------------------------------------------------- Dropout


@register_module
class Dropout(_Layer):
    """Inverted dropout: in training mode each element is zeroed with probability p and the rest
    are scaled by 1 / (1 - p); in eval mode (and for p = 0) it is the identity.

    Each training-mode forward draws a fresh 64-bit mask seed from a Generator (``seed``: int,
    Generator, or None for a fresh ``default_rng()``); backward regenerates the same mask from it.
    The mask depends only on the seed, never on the thread count.
    """

    def __init__(self, p: float = 0.5, *, seed=None):
        super().__init__()
        self.p = check_float(p, "Dropout", "p", low=0.0, high=1.0, high_open=True, float32=True)
        if seed is not None and not isinstance(seed, np.random.Generator) and (
                isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"Dropout: seed must be an int, a numpy.random.Generator or None, got {type(seed).__name__}")
        self.seed = int(seed) if isinstance(seed, numbers.Integral) else None
        object.__setattr__(self, "_rng", _init.as_generator(seed, "Dropout"))
        object.__setattr__(self, "_mask_seed", None)

    def manual_seed(self, seed) -> "Dropout":
        """Restart the generator that draws the per-forward mask seeds (for reproducible runs)."""
        self._rng = _init.as_generator(seed, "Dropout.manual_seed")
        return self

    def _forward(self, x, reuse):
        _keep(self, "_out_shape", x.shape)
        if not self.training or self.p == 0.0:
            self._mask_seed = None
            return x
        self._mask_seed = int(self._rng.integers(0, 2**64, dtype=np.uint64))
        return ops.dropout(x, self.p, self._mask_seed, out=self._buf("out", x.shape, reuse))

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        if self._mask_seed is None:
            return dout
        return ops.dropout_backward(dout, self.p, self._mask_seed, out=self._buf("dinp", dout.shape, reuse))

    def _config(self):
        return {"p": self.p, "seed": self.seed}

    def extra_repr(self):
        return f"p={self.p}"


# ---------------------------------------------------------------- BatchNorm1d


@register_module
class BatchNorm1d(_Layer):
    """Batch normalization over a (batch, num_features) input.

    Training: y = gamma · (x - mean_B) / sqrt(var_B + eps) + beta with the batch's mean and biased
    variance, and the running statistics (buffers ``running_mean``, ``running_var``, saved in
    ``state_dict``) updated as running = (1 - momentum) · running + momentum · batch statistic
    (unbiased variance), as in PyTorch. Eval: the running statistics replace the batch's.
    Parameters: ``weight`` (gamma, starts at 1) and ``bias`` (beta, starts at 0).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features = check_int(num_features, "BatchNorm1d", "num_features", minimum=1)
        self.eps = check_float(eps, "BatchNorm1d", "eps", low=0.0, low_open=True, float32=True)
        self.momentum = check_float(momentum, "BatchNorm1d", "momentum", low=0.0, high=1.0, float32=True)
        c = self.num_features
        self.weight = Parameter(np.ones(c, dtype=np.float32))
        self.bias = Parameter(np.zeros(c, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(c, dtype=np.float32))
        self.register_buffer("running_var", np.ones(c, dtype=np.float32))
        object.__setattr__(self, "_cache", None)

    @property
    def _who(self):
        return f"BatchNorm1d({self.num_features})"

    def _forward(self, x, reuse):
        self._need_2d(x, self.num_features, self._who)
        out = self._buf("out", x.shape, reuse)
        if self.training:
            if x.shape[0] < 2:
                raise ValueError(f"{self._who}: training mode needs more than 1 sample per batch to estimate the "
                                 f"batch statistics, got input shape {x.shape} (call eval() to use running statistics)")
            y, mean, invstd = ops.batchnorm_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                                    self.running_var, training=True, momentum=self.momentum,
                                                    eps=self.eps, out=out)
            self._cache = (x, mean, invstd)
        else:
            y, _, _ = ops.batchnorm_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                            self.running_var, training=False, momentum=self.momentum,
                                            eps=self.eps, out=out)
            self._cache = (x, None, None)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        x, mean, invstd = self._cache
        c = self.num_features
        if mean is None:
            # Eval mode: y = gamma * (x - rm) * s + beta with constants s = 1/sqrt(rv + eps): a per-feature
            # affine map (a rare path, e.g. input gradients of a trained model; no kernel for it).
            s = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
            xhat = (x - self.running_mean) * s.astype(np.float32)
            self.weight.grad += np.einsum("bc,bc->c", dout, xhat, dtype=np.float64).astype(np.float32)
            self.bias.grad += dout.sum(axis=0, dtype=np.float64).astype(np.float32)
            if not need_dinp:
                return None
            dx = dout * (self.weight.data * s).astype(np.float32)
            return dx
        dgamma = self._buf("dgamma", (c,), True)
        dbeta = self._buf("dbeta", (c,), True)
        dx = self._buf("dinp", x.shape, reuse or not need_dinp)
        dx, dgamma, dbeta = ops.batchnorm_backward(dout, x, self.weight.data, mean, invstd, dx=dx,
                                                   dgamma=dgamma, dbeta=dbeta)
        np.add(self.weight.grad, dgamma, out=self.weight.grad)
        np.add(self.bias.grad, dbeta, out=self.bias.grad)
        return dx if need_dinp else None

    def _config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


# ---------------------------------------------------------------- Flatten


@register_module
class Flatten(_Layer):
    """Merge dimensions start_dim..end_dim into one (default: everything but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = check_int(start_dim, "Flatten", "start_dim")
        self.end_dim = check_int(end_dim, "Flatten", "end_dim")
        object.__setattr__(self, "_in_shape", None)

    def _forward(self, x, reuse):
        nd = x.ndim
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}): invalid for an input "
                             f"of shape {x.shape}")
        shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
        self._in_shape = x.shape
        y = x.reshape(shape)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        return dout.reshape(self._in_shape) if need_dinp else None

    def _config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---------------------------------------------------------------- Sequential

_FUSABLE = (ReLU, Sigmoid, Tanh)


@register_module
class Sequential(_Layer):
    """Layers applied in order: ``Sequential(Linear(2, 8), ReLU(), Linear(8, 1))`` (a list works
    too). Supports ``len``, indexing (an int gives the layer, a slice a Sequential of the same
    layers), iteration and ``append``. State-dict keys are ``"<index>.<name>"`` as in PyTorch.

    Backward runs the layers in reverse. A Linear directly followed by ReLU, Sigmoid or Tanh is run
    as one fused kernel call (same results as running them separately), and so is, in backward, such
    an activation followed by a Linear: the activation's derivative is applied as the Linear's
    input gradient is computed.
    """

    def __init__(self, *layers):
        super().__init__()
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
        i, layer = 0, None
        while i < n:
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < n else None
            if type(layer) is Linear and type(nxt) in _FUSABLE:
                last = i + 2 == n
                y = layer._forward(x, reuse or not last, act=nxt._fused_name)
                nxt._fused_output(y)
                i += 2
            else:
                last = i + 1 == n
                y = layer._forward(x, reuse or not last)
                i += 1
            if not last:
                inner.append(y)
            x = y
        # A last Linear wrote a fresh array (reuse=False); an identity-like last layer (Dropout in
        # eval, Flatten) may hand back one of the buffers
        if not reuse and type(layer) is not Linear and any(np.may_share_memory(x, b) for b in inner):
            x = x.copy()
        _keep(self, "_out_shape", x.shape)
        return x

    def _backward(self, dout, need_dinp, reuse):
        layers = list(self._modules.values())
        inner = []  # gradients that live in reusable buffers
        i = len(layers) - 1
        while i >= 0:
            layer, prev = layers[i], layers[i - 1] if i > 0 else None
            if type(layer) is Linear and type(prev) in _FUSABLE and prev._y is layer._x:
                # an activation feeding a Linear: its backward runs in the Linear's dx product
                first = i == 1
                dout = layer._backward(dout, need_dinp if first else True, reuse if first else True,
                                       input_act=prev._fused_name)
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
        from .module import module_from_config

        layers = config.get("layers")
        if not isinstance(layers, list) or set(config) != {"layers"}:
            raise ValueError("Sequential config must be {'layers': [layer configs]}")
        return cls(*[module_from_config(c) for c in layers])
