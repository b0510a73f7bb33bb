"""2-D pooling over (N, C, H, W) input: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (``ops.max_pool2d``,
``ops.avg_pool2d``, ``ops.adaptive_avg_pool2d`` and their backwards)."""
from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .. import ops
from .base import _keep, _Layer
from .registry import register_module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


def _pair(value, who, name, minimum, allow_none=False):
    """(h, w) from an int or a pair of ints, each >= minimum and below 2^31 (None kept when allow_none)."""
    return _v.check_pair(value, who, name, minimum=minimum, maximum=2**31 - 1, allow_none=allow_none)


def _plain(pair):
    """The config form of a pair: an int when both sizes agree, else a list (JSON keeps it as it is)."""
    return pair[0] if pair[0] == pair[1] else list(pair)


def _shown(v):
    """A config value as PyTorch prints it: (3, 2), not [3, 2]."""
    return tuple(v) if isinstance(v, list) else v


def _need_4d(x, who):
    if x.ndim != 4:
        hint = "; for a single image use x[None]" if x.ndim == 3 else ""
        raise ValueError(f"{who}: input must be 4-D (batch, channels, height, width), got shape {x.shape}{hint}")


class _Pool2d(_Layer):
    """What MaxPool2d and AvgPool2d share: kernel_size, stride (None: kernel_size), padding (at most
    half the kernel), each an int or an (h, w) pair; floor mode (PyTorch's ceil_mode=False)."""

    _per_call = _Layer._per_call + ("_in_shape",)
    _fresh_output = True

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        who = type(self).__name__
        k = _pair(kernel_size, who, "kernel_size", 1)
        s = k if stride is None else _pair(stride, who, "stride", 1)
        p = _pair(padding, who, "padding", 0)
        if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
            raise ValueError(f"{who}: padding must be at most half of kernel_size, got padding {_plain(p)} for "
                             f"kernel_size {_plain(k)}")
        self.kernel_size, self.stride, self.padding = _plain(k), _plain(s), _plain(p)
        _keep(self, "_k", k + s + p)
        _keep(self, "_in_shape", None)

    def _out_shape_for(self, x):
        """The output shape for x, or None when the kernel does not fit (the op then says why)."""
        _need_4d(x, self._who)
        kh, kw, sh, sw, ph, pw = self._k
        oh, ow = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        return (x.shape[0], x.shape[1], oh, ow) if oh >= 1 and ow >= 1 else None

    def _config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def extra_repr(self):
        return (f"kernel_size={_shown(self.kernel_size)}, stride={_shown(self.stride)}, "
                f"padding={_shown(self.padding)}")


@register_module
class MaxPool2d(_Pool2d):
    """Max pooling over (N, C, H, W) input, as ``torch.nn.MaxPool2d(kernel_size, stride, padding)``:
    padding counts as -inf, the first maximum of a window takes the gradient, a NaN propagates.
    Backward routes each output gradient to the input element that was the maximum (indices kept
    from the forward, int64)."""

    _per_call = _Pool2d._per_call + ("_indices",)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding)
        _keep(self, "_indices", None)

    def _forward(self, x, reuse):
        shape = self._out_shape_for(x)
        out = idx = None
        if reuse and shape is not None:
            out = self._buf("out", shape, True)
            idx = self._ws.get("indices")
            if idx is None or idx.shape != shape:
                idx = np.empty(shape, dtype=np.int64)
                self._ws["indices"] = idx
        kh, kw, sh, sw, ph, pw = self._k
        y, indices = ops.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), out=out, indices=idx)
        _keep(self, "_indices", indices)
        _keep(self, "_in_shape", x.shape)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        return ops.max_pool2d_backward(dout, self._indices, self._in_shape, out=self._buf("dinp", self._in_shape, reuse))


@register_module
class AvgPool2d(_Pool2d):
    """Average pooling over (N, C, H, W) input, as ``torch.nn.AvgPool2d(kernel_size, stride, padding)``
    with its defaults count_include_pad=True and ceil_mode=False: every window is divided by
    kernel_h * kernel_w, padding included."""

    def _forward(self, x, reuse):
        shape = self._out_shape_for(x)
        out = self._buf("out", shape, reuse) if shape is not None else None
        kh, kw, sh, sw, ph, pw = self._k
        y = ops.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), out=out)
        _keep(self, "_in_shape", x.shape)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        kh, kw, sh, sw, ph, pw = self._k
        return ops.avg_pool2d_backward(dout, self._in_shape, (kh, kw), (sh, sw), (ph, pw),
                                       out=self._buf("dinp", self._in_shape, reuse))


@register_module
class AdaptiveAvgPool2d(_Layer):
    """Adaptive average pooling to a fixed ``output_size`` (an int, or (OH, OW) where None keeps that
    input size), as ``torch.nn.AdaptiveAvgPool2d``. ``AdaptiveAvgPool2d(1)`` is global average pooling
    (then ``Flatten()`` gives (N, C) for a Linear)."""

    _per_call = _Layer._per_call + ("_in_shape",)
    _fresh_output = True

    def __init__(self, output_size):
        super().__init__()
        oh, ow = _pair(output_size, "AdaptiveAvgPool2d", "output_size", 1, allow_none=True)
        self.output_size = oh if oh == ow else [oh, ow]
        _keep(self, "_size", (oh, ow))
        _keep(self, "_in_shape", None)

    def _forward(self, x, reuse):
        _need_4d(x, self._who)
        oh, ow = self._size
        oh = x.shape[2] if oh is None else oh
        ow = x.shape[3] if ow is None else ow
        y = ops.adaptive_avg_pool2d(x, (oh, ow), out=self._buf("out", x.shape[:2] + (oh, ow), reuse))
        _keep(self, "_in_shape", x.shape)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse):
        if not need_dinp:
            return None
        return ops.adaptive_avg_pool2d_backward(dout, self._in_shape, out=self._buf("dinp", self._in_shape, reuse))

    def _config(self):
        return {"output_size": self.output_size}

    def extra_repr(self):
        return f"output_size={_shown(self.output_size)}"
