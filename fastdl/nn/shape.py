"""Layers that only reshape: Flatten."""
from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .base import _keep, _Layer
from .registry import register_module

__all__ = ["Flatten"]


@register_module
class Flatten(_Layer):
    """Merge dimensions start_dim..end_dim into one (default: everything but the batch axis), e.g.
    (N, 1, 28, 28) -> (N, 784) before a Linear. A view of the input, no copy."""

    _per_call = _Layer._per_call + ("_in_shape",)

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = _v.check_int(start_dim, "Flatten", "start_dim")
        self.end_dim = _v.check_int(end_dim, "Flatten", "end_dim")
        _keep(self, "_in_shape", None)

    def _forward(self, x, reuse):
        nd = x.ndim
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}): invalid for an input "
                             f"of shape {x.shape}")
        shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
        _keep(self, "_in_shape", x.shape)
        y = x.reshape(shape)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        return dout.reshape(self._in_shape) if need_dinp else None

    def _config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
