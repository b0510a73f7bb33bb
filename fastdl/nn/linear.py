"""Linear: y = x · Wᵀ + b (``ops.linear_forward`` / ``ops.linear_backward``)."""
from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .. import ops
from . import init as _init
from .base import _keep, _Layer
from .module import Parameter
from .registry import register_module

__all__ = ["Linear"]

_INITS = {
    "kaiming_uniform": _init.kaiming_uniform_,
    "kaiming_normal": _init.kaiming_normal_,
    "xavier_uniform": _init.xavier_uniform_,
    "xavier_normal": _init.xavier_normal_,
    "zeros": lambda w, rng: _init.zeros_(w),
}


def weight_and_bias(shape, init, rng, bias, who):
    """A layer's (weight Parameter of ``shape``, output channels first, drawn by initializer ``init`` from
    ``rng``; a zero bias Parameter or None): what Linear and Conv2d build, with their argument checks."""
    bias = _v.check_bool(bias, who, "bias")
    init = _v.check_choice(init, who, "init", _INITS)
    w = np.empty(shape, dtype=np.float32)
    _INITS[init](w, _v.check_rng(rng, who, "rng"))
    return Parameter(w), (Parameter(np.zeros(shape[0], dtype=np.float32)) if bias else None)


@register_module
class Linear(_Layer):
    """y = x · Wᵀ + b, with weight W of shape (out_features, in_features) as in PyTorch.

    The input is 2-D, (batch, in_features); put ``Flatten()`` before it for higher-rank input.
    ``init`` picks the weight initializer: "kaiming_uniform" (default; He uniform with the ReLU gain,
    U(±sqrt(6 / in_features))), "kaiming_normal", "xavier_uniform", "xavier_normal" or "zeros".
    The bias starts at 0. ``rng``: np.random.Generator, int seed, or None (fresh generator).

    In eval mode the forward is batch-invariant (a row's output has the same bits in any batch,
    ``ops.linear_forward(batch_invariant=True)``); in training mode it takes the fastest path
    (``batch_invariant=False``: one or two rows as dot products, in another summation order).

    Fusion (``fastdl.nn.fusion``): ``_forward(..., act=name)`` applies an activation in the same
    kernel, and ``_backward(..., input_act=name)`` carries dx back through the activation whose
    output its input was.
    """

    _per_call = _Layer._per_call + ("_x",)
    _fresh_output = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "kaiming_uniform", rng=None):
        super().__init__()
        self.in_features = _v.check_int(in_features, "Linear", "in_features", minimum=1)
        self.out_features = _v.check_int(out_features, "Linear", "out_features", minimum=1)
        self.weight, self.bias = weight_and_bias((self.out_features, self.in_features), init, rng, bias, "Linear")
        self.init = init
        _keep(self, "_x", None)

    @property
    def _who(self):
        return f"Linear({self.in_features} -> {self.out_features})"

    def _forward(self, x, reuse, act=None):
        if x.ndim != 2 or x.shape[1] != self.in_features:  # (the message is built only on failure)
            self._need_2d(x, self.in_features, self._who)
        out = self._buf("out", (x.shape[0], self.out_features), reuse)
        b = None if self.bias is None else self.bias.data
        # eval: each row's bits independent of the batch (predict in any batch size); training: the
        # fastest path (for a batch of one or two rows another summation order)
        y = ops.linear_forward(x, self.weight.data, b, activation=act, out=out, batch_invariant=not self.training)
        _keep(self, "_x", x)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse, input_act=None):
        # input_act: the name of the activation whose output our input was (Sequential fuses its
        # backward into ours: dx comes back already multiplied by its derivative)
        dx = self._buf("dinp", self._x.shape, reuse) if need_dinp else None
        dweight, dbias, accumulate = self._weight_bias_grads()
        dinp, _, _ = ops.linear_backward(dout, self._x, self.weight.data, bias=dbias is not None,
                                         need_dx=need_dinp, accumulate=accumulate, dx=dx, dweight=dweight,
                                         dbias=dbias, input_activation=input_act)
        return dinp

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "init": self.init}

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
