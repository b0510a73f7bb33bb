"""Losses: ``loss_fn(output, target) -> float``; then ``loss_fn.backward() -> dloss/doutput``.

``reduction="mean"`` averages over all elements (over the batch for CrossEntropyLoss),
``reduction="sum"`` adds them up. The loss and its gradient come from one kernel pass.
A non-finite output (NaN or Inf: the run diverged) or target is a ValueError naming the loss.
"""
from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .. import ops
from .module import Module
from .registry import register_module

__all__ = ["MSELoss", "L1Loss", "BCEWithLogitsLoss", "CrossEntropyLoss"]


class _Loss(Module):
    """Base of the losses: validates the reduction, converts inputs, keeps the gradient for backward."""

    _per_call = ("_grad",)

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _v.check_choice(reduction, type(self).__name__, "reduction", ("mean", "sum"))
        object.__setattr__(self, "_grad", None)

    def __call__(self, output, target) -> float:
        return self.forward(output, target)

    def forward(self, output, target) -> float:
        """The loss (a Python float) of ``output`` against ``target``; keeps d loss/d output."""
        who = type(self).__name__
        output = _v.as_float32(output, who, "output", check_finite=False)
        if not ops.all_finite(output):
            raise ValueError(f"{who}: output contains NaN or Inf (has training diverged? try a lower learning rate)")
        target = self._target(target, output, who)
        loss, grad = self._kernel(output, target)
        object.__setattr__(self, "_grad", grad)  # not a parameter: no registry bookkeeping
        return float(loss)

    def backward(self) -> np.ndarray:
        """d loss / d output of the last call (a fresh array, shaped like the output)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call the loss on (output, target) first")
        return self._grad

    def _target(self, target, output, who):
        target = _v.as_float32(target, who, "target")
        if target.shape != output.shape:
            hint = ""
            if target.size == output.size:
                hint = f" (reshape it: target.reshape{output.shape})"
            raise ValueError(f"{who}: target has shape {target.shape}, expected the output's shape {output.shape}{hint}")
        return target

    def _config(self):
        return {"reduction": self.reduction}

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


@register_module
class MSELoss(_Loss):
    """Mean squared error: mean (or sum) of (output - target)²."""

    def _kernel(self, output, target):
        return ops.mse_loss(output, target, reduction=self.reduction, grad=True)


@register_module
class L1Loss(_Loss):
    """Mean absolute error: mean (or sum) of |output - target| (gradient sign(output - target), 0 at 0)."""

    def _kernel(self, output, target):
        return ops.l1_loss(output, target, reduction=self.reduction, grad=True)


@register_module
class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on raw scores z (logits) with targets t in [0, 1]:
    -(t log σ(z) + (1 - t) log(1 - σ(z))), computed stably; gradient σ(z) - t (/ n for mean)."""

    def _target(self, target, output, who):
        target = super()._target(target, output, who)
        lo, hi = float(target.min()), float(target.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{who}: target values must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
        return target

    def _kernel(self, output, target):
        return ops.bce_with_logits(output, target, reduction=self.reduction, grad=True)


@register_module
class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of raw scores (batch, classes) against integer class labels (batch,):
    logsumexp(row) - row[label], averaged over the batch (or summed). Labels of any integer dtype
    are converted to int64; float labels are refused (TypeError)."""

    def _target(self, target, output, who):
        if output.ndim != 2:
            raise ValueError(f"{who}: output must be 2-D (batch, classes), got shape {output.shape}")
        labels = np.asarray(target)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{who}: target must hold integer class labels, got dtype {labels.dtype} "
                            "(convert with y.astype(np.int64))")
        if labels.shape != (output.shape[0],):
            raise ValueError(f"{who}: target has shape {labels.shape}, expected ({output.shape[0]},): one label per "
                             f"row of the output {output.shape}")
        return np.require(labels, np.int64, "CA")  # their range is checked by the kernel

    def _kernel(self, output, labels):
        try:
            return ops.softmax_cross_entropy(output, labels, reduction=self.reduction, grad=True)
        except ValueError:  # the kernel refused a label (before writing anything): say it as the loss
            nc = output.shape[1]
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= nc:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{type(self).__name__}: labels must lie in [0, {nc}) for an output with {nc} "
                                 f"classes, got {bad}") from None
            raise
