"""Dropout (inverted), on input of any rank (``ops.dropout`` / ``ops.dropout_backward``), and Dropout2d, which
drops whole channels of (N, C, H, W) input (``ops.dropout2d`` / ``ops.dropout2d_backward``)."""
from __future__ import annotations

import numbers

import numpy as np

from .. import _validation as _v
from .. import ops
from .base import _keep, _Layer
from .registry import register_module

__all__ = ["Dropout", "Dropout2d"]


@register_module
class Dropout(_Layer):
    """Inverted dropout: in training mode each element is zeroed with probability p and the rest
    are scaled by 1 / (1 - p); in eval mode (and for p = 0) it is the identity. Any input shape.

    Each training-mode forward draws a fresh 64-bit mask seed from a Generator (``seed``: int,
    Generator, or None for a fresh ``default_rng()``); backward regenerates the same mask from it.
    The mask depends only on the seed, never on the thread count.
    """

    _per_call = _Layer._per_call + ("_mask_seed",)

    def __init__(self, p: float = 0.5, *, seed=None):
        super().__init__()
        who = type(self).__name__
        self.p = _v.check_real(p, who, "p", low=0.0, high=1.0, high_open=True, float32=True)
        rng = _v.check_rng(seed, who, "seed")
        self.seed = int(seed) if isinstance(seed, numbers.Integral) else None
        _keep(self, "_rng", rng)
        _keep(self, "_mask_seed", None)

    def manual_seed(self, seed) -> "Dropout":
        """Restart the generator that draws the per-forward mask seeds (for reproducible runs)."""
        _keep(self, "_rng", _v.check_rng(seed, f"{type(self).__name__}.manual_seed", "seed"))
        return self

    _ops = ("dropout", "dropout_backward")  # the fastdl.ops functions (looked up at each call)

    def _check(self, x):
        """Dropout takes any shape."""

    def _forward(self, x, reuse):
        self._check(x)
        _keep(self, "_out_shape", x.shape)
        if not self.training or self.p == 0.0:
            _keep(self, "_mask_seed", None)
            return x
        seed = int(self._rng.integers(0, 2**64, dtype=np.uint64))
        _keep(self, "_mask_seed", seed)
        return getattr(ops, self._ops[0])(x, self.p, seed, out=self._buf("out", x.shape, reuse))

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        if self._mask_seed is None:
            return dout
        return getattr(ops, self._ops[1])(dout, self.p, self._mask_seed, out=self._buf("dinp", dout.shape, reuse))

    def _config(self):
        return {"p": self.p, "seed": self.seed}

    def extra_repr(self):
        return f"p={self.p}"


@register_module
class Dropout2d(Dropout):
    """Channel dropout, as ``torch.nn.Dropout2d(p)``: in training mode each (n, c) plane of the (N, C, H, W)
    input is zeroed as a whole with probability p and the kept ones are scaled by 1 / (1 - p); in eval
    mode (and for p = 0) it is the identity. Seeded as Dropout: a fresh mask seed per training-mode
    forward, the mask a function of that seed and the plane index only."""

    _ops = ("dropout2d", "dropout2d_backward")

    def _check(self, x):
        if x.ndim != 4:
            hint = "; for a single image use x[None]" if x.ndim == 3 else ""
            raise ValueError(f"{self._who}: input must be 4-D (batch, channels, height, width), got shape "
                             f"{x.shape}{hint}")
