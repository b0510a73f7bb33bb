"""Conv2d: y = conv2d(x, W) + b over NCHW images (``ops.conv2d_forward`` / ``ops.conv2d_backward``)."""
from __future__ import annotations

from .. import _validation as _v
from .. import ops
from .base import _keep, _Layer
from .linear import weight_and_bias
from .registry import register_module

__all__ = ["Conv2d"]


@register_module
class Conv2d(_Layer):
    """2-D convolution (cross-correlation, as ``torch.nn.Conv2d``) over (N, C, H, W) float32 input.

    ``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True)``: kernel_size, stride and dilation an int or a pair (h, w); padding an int, a pair,
    ``"same"`` (output as large as the input, stride 1) or ``"valid"`` (no padding); groups divides
    both channel counts (groups = in_channels: depthwise). The weight has PyTorch's shape
    (out_channels, in_channels // groups, kh, kw), so a state dict maps one to one onto
    ``torch.nn.Conv2d``'s. ``init`` and ``rng`` as for ``Linear`` (He uniform by default, bias 0).

    Output (N, out_channels, OH, OW) with OH = (H + 2·pad - dilation·(kh - 1) - 1) // stride + 1.
    Fusion (``fastdl.nn.fusion``): a following ReLU, Sigmoid or Tanh runs in the convolution's
    kernel, and a preceding one's derivative in its input gradient; in eval mode a following
    BatchNorm2d folds into the weights (``FOLDS``).
    """

    _per_call = _Layer._per_call + ("_x",)
    _fresh_output = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, init: str = "kaiming_uniform", rng=None):
        super().__init__()
        who = "Conv2d"
        self.in_channels = _v.check_int(in_channels, who, "in_channels", minimum=1)
        self.out_channels = _v.check_int(out_channels, who, "out_channels", minimum=1)
        self.kernel_size = _v.check_pair(kernel_size, who, "kernel_size", minimum=1)
        self.stride = _v.check_pair(stride, who, "stride", minimum=1)
        self.dilation = _v.check_pair(dilation, who, "dilation", minimum=1)
        self.groups = _v.check_int(groups, who, "groups", minimum=1)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{who}: groups={self.groups} must divide in_channels={self.in_channels} and "
                             f"out_channels={self.out_channels}")
        # padding as given (an int pair or a string) and as the kernel takes it: (top, left, bottom, right)
        self._pad = ops.conv2d_padding(padding, self.kernel_size, self.stride, self.dilation, who)
        self.padding = padding if isinstance(padding, str) else _v.check_pair(padding, who, "padding", minimum=0)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight, self.bias = weight_and_bias(shape, init, rng, bias, who)
        self.init = init
        _keep(self, "_x", None)

    @property
    def _who(self):
        return f"Conv2d({self.in_channels} -> {self.out_channels}, kernel_size={self.kernel_size})"

    def _out_hw(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            hint = (f"; a batch of one image is x[None] (shape (1,) + {x.shape})" if x.ndim == 3 else
                    "; reshape flat images to (N, C, H, W), e.g. x.reshape(-1, 1, 28, 28)" if x.ndim == 2 else "")
            what = (f"input must be 4-D (batch, {self.in_channels}, height, width), got shape {x.shape}{hint}"
                    if x.ndim != 4 else f"input has {x.shape[1]} channels, expected {self.in_channels} "
                    f"(shape {x.shape})")
            raise ValueError(f"{self._who}: {what}")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, left, bottom, right = self._pad
        reach_h, reach_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        hp, wp = x.shape[2] + top + bottom, x.shape[3] + left + right
        if reach_h > hp or reach_w > wp:
            raise ValueError(f"{self._who}: the kernel ({reach_h} x {reach_w} with dilation) is larger than the "
                             f"padded input ({hp} x {wp}); input shape {x.shape}")
        return (hp - reach_h) // sh + 1, (wp - reach_w) // sw + 1

    def _forward(self, x, reuse, act=None, params=None):
        # params: (weight, bias) to use instead of the layer's own (a BatchNorm2d folded in, eval mode)
        oh, ow = self._out_hw(x)
        out = self._buf("out", (x.shape[0], self.out_channels, oh, ow), reuse)
        w, b = params if params is not None else (self.weight.data, None if self.bias is None else self.bias.data)
        y = ops.conv2d_forward(x, w, b, self.stride, self._pad, self.dilation, self.groups, act, out)
        _keep(self, "_x", x)
        _keep(self, "_out_shape", y.shape)
        return y

    def _backward(self, dout, need_dinp, reuse, input_act=None):
        # input_act: the activation whose output our input was; dx comes back through its derivative
        dx = self._buf("dinp", self._x.shape, reuse) if need_dinp else None
        dweight, dbias, accumulate = self._weight_bias_grads()
        dinp, _, _ = ops.conv2d_backward(dout, self._x, self.weight.data, stride=self.stride, padding=self._pad,
                                         dilation=self.dilation, groups=self.groups, bias=dbias is not None,
                                         need_dx=need_dinp, accumulate=accumulate, dx=dx, dweight=dweight,
                                         dbias=dbias, input_activation=input_act)
        return dinp

    def _config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None,
                "init": self.init}

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
