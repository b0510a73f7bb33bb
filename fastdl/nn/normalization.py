"""BatchNorm1d and BatchNorm2d (``ops.batchnorm_forward`` / ``ops.batchnorm_backward`` and their 2d twins)."""
from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .. import ops
from .base import _keep, _Layer
from .module import Parameter, grads_for_backward
from .registry import register_module

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(_Layer):
    """What BatchNorm1d and BatchNorm2d share: parameters, buffers, the training/eval forward and the
    backward; they differ in the input's rank, the ops they call and the axes the statistics span."""

    _per_call = _Layer._per_call + ("_cache",)
    _fresh_output = True

    _ops = (None, None)  # (forward, backward) in fastdl.ops
    _axes = ()           # the axes each channel's statistics span
    _channel_shape = ()  # how a (C,) vector broadcasts against the input

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        who = type(self).__name__
        self.num_features = _v.check_int(num_features, who, "num_features", minimum=1)
        self.eps = _v.check_real(eps, who, "eps", low=0.0, low_open=True, float32=True)
        self.momentum = _v.check_real(momentum, who, "momentum", low=0.0, high=1.0, float32=True)
        c = self.num_features
        self.weight = Parameter(np.ones(c, dtype=np.float32))
        self.bias = Parameter(np.zeros(c, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(c, dtype=np.float32))
        self.register_buffer("running_var", np.ones(c, dtype=np.float32))
        _keep(self, "_cache", None)

    @property
    def _who(self):
        return f"{type(self).__name__}({self.num_features})"

    def _check_input(self, x):
        raise NotImplementedError

    def _forward(self, x, reuse):
        self._check_input(x)
        out = self._buf("out", x.shape, reuse)
        forward_op = self._ops[0]
        if self.training:
            try:
                y, mean, invstd = forward_op(x, self.weight.data, self.bias.data, self.running_mean,
                                             self.running_var, training=True, momentum=self.momentum,
                                             eps=self.eps, out=out)
            except ValueError:
                self._refuse_read_only_buffers()
                raise
            _keep(self, "_cache", (x, mean, invstd))
        else:
            y, _, _ = forward_op(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                 training=False, momentum=self.momentum, eps=self.eps, out=out)
            _keep(self, "_cache", (x, None, None))
        _keep(self, "_out_shape", y.shape)
        return y

    def _refuse_read_only_buffers(self):
        for name in ("running_mean", "running_var"):
            if not getattr(self, name).flags.writeable:
                raise ValueError(f"{self._who}: {name} is read-only (memory-mapped, e.g. by joblib.load(..., "
                                 "mmap_mode='r')), and training mode updates it; call eval() to predict, or "
                                 "train a writable copy: copy.deepcopy(model)") from None

    def _backward(self, dout, need_dinp, reuse):
        x, mean, invstd = self._cache
        grads, accumulate = grads_for_backward(self, self.weight, self.bias)
        if mean is None:
            # Eval mode: y = gamma * (x - rm) * s + beta with constants s = 1/sqrt(rv + eps): a per-feature
            # affine map (a rare path, e.g. input gradients of a trained model; no kernel for it).
            cs = self._channel_shape
            s = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
            xhat = (x - self.running_mean.reshape(cs)) * s.astype(np.float32).reshape(cs)
            dgamma = (dout.astype(np.float64) * xhat).sum(axis=self._axes).astype(np.float32)
            dbeta = dout.sum(axis=self._axes, dtype=np.float64).astype(np.float32)
            self._grad_commit(grads, (dgamma, dbeta), accumulate)
            if not need_dinp:
                return None
            return dout * (self.weight.data * s).astype(np.float32).reshape(cs)
        dgamma, dbeta = self._grad_outputs(grads, accumulate)
        dx = self._buf("dinp", x.shape, reuse or not need_dinp)
        dx, _, _ = self._ops[1](dout, x, self.weight.data, mean, invstd, dx=dx, dgamma=dgamma, dbeta=dbeta)
        self._grad_commit(grads, (dgamma, dbeta), accumulate)
        return dx if need_dinp else None

    def _config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


@register_module
class BatchNorm1d(_BatchNorm):
    """Batch normalization over a (batch, num_features) input (put ``Flatten()`` before it for
    higher-rank input).

    Training: y = gamma · (x - mean_B) / sqrt(var_B + eps) + beta with the batch's mean and biased
    variance, and the running statistics (buffers ``running_mean``, ``running_var``, saved in
    ``state_dict``) updated as running = (1 - momentum) · running + momentum · batch statistic
    (unbiased variance), as in PyTorch. Eval: the running statistics replace the batch's.
    Parameters: ``weight`` (gamma, starts at 1) and ``bias`` (beta, starts at 0).
    """


    _ops = (ops.batchnorm_forward, ops.batchnorm_backward)
    _axes = (0,)
    _channel_shape = (-1,)

    def _check_input(self, x):
        if x.ndim != 2 or x.shape[1] != self.num_features:
            self._need_2d(x, self.num_features, self._who)
        if self.training and x.shape[0] < 2:
            raise ValueError(f"{self._who}: training mode needs more than 1 sample per batch to estimate the "
                             f"batch statistics, got input shape {x.shape} (call eval() to use running statistics)")


@register_module
class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input, per channel, as ``torch.nn.BatchNorm2d``: each
    channel's statistics span its N*H*W values (the running variance is unbiased by n / (n - 1),
    n = N*H*W). Otherwise as BatchNorm1d: parameters ``weight`` and ``bias`` (C,), buffers
    ``running_mean`` and ``running_var`` (C,), names that map onto PyTorch's state dict."""

    _ops = (ops.batchnorm2d_forward, ops.batchnorm2d_backward)
    _axes = (0, 2, 3)
    _channel_shape = (-1, 1, 1)

    def _check_input(self, x):
        if x.ndim != 4:
            hint = "; for a single image use x[None]" if x.ndim == 3 else ""
            raise ValueError(f"{self._who}: input must be 4-D (batch, {self.num_features}, height, width), got "
                             f"shape {x.shape}{hint}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{self._who}: input has {x.shape[1]} channels, expected {self.num_features}")
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"{self._who}: training mode needs more than 1 value per channel to estimate the "
                             f"batch statistics, got input shape {x.shape} (call eval() to use running statistics)")
