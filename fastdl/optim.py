"""fastdl.optim: SGD, Adam, AdamW and learning-rate schedules, with PyTorch's names and semantics.

Optimizers update each parameter's ``.data`` in place from its ``.grad`` through one native
kernel call per parameter group (``ops.sgd_step_many`` / ``ops.adam_step_many``). Their state (momentum buffers,
Adam's moments and step counts) is kept per parameter in ``optimizer.state``.

Every hyperparameter the kernels use must fit in float32 (``lr=1e39`` is refused where it is
given), and ``step()`` refuses a gradient holding NaN or Inf (``check_finite``, below).

Schedules change ``optimizer.lr``; call their ``step()`` once per epoch (``ReduceLROnPlateau``:
``step(val_loss)``). ``get_last_lr()`` returns the current learning rate as a float.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from . import ops
from ._validation import check_bool, check_callable, check_choice, check_int, check_real
from .nn.module import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW",
           "LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "InverseTimeLR", "ReduceLROnPlateau"]


# ================================================================ optimizers


class Optimizer:
    """Base class: holds ``param_groups`` (a list of dicts: ``"params"`` plus hyperparameters) and
    per-parameter ``state``. ``params`` is an iterable of Parameters (e.g. ``model.parameters()``)
    or of dicts ``{"params": [...], "lr": ...}`` giving some parameters their own settings.

    ``check_finite`` (default True; the attribute may be changed later): ``step()`` raises
    ValueError naming the parameter (its index across the groups and its shape) when a gradient
    holds NaN or Inf, and updates no parameter at all, so a manual loop that backpropagates a
    NaN stops there instead of writing NaN into the weights. SGD and Adam check inside their
    update's native call (one more read of the gradients); False skips the check, as PyTorch does.
    """

    # True where _update_group's native call checks the gradients itself and writes nothing when one
    # is not finite; otherwise step() checks every gradient first (one all_finite call each).
    _kernel_checks_finite = False

    def __init__(self, params, defaults: dict, *, check_finite: bool = True):
        who = type(self).__name__
        self.check_finite = check_bool(check_finite, who, "check_finite")
        if isinstance(params, Module):
            raise TypeError(f"{who}: params must be an iterable of Parameters; pass model.parameters()")
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError(f"{who}: params must be an iterable of Parameters, got a single "
                            f"{type(params).__name__}; wrap it in a list")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{who}: params must be an iterable of Parameters, got {type(params).__name__}") from None
        if not params:
            raise ValueError(f"{who}: got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups: list = []
        self.state: dict = {}
        groups = params if isinstance(params[0], Mapping) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones take the defaults)."""
        who = type(self).__name__
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(f"{who}: a parameter group must be a dict with a 'params' entry, got {type(group).__name__}")
        ps = group["params"]
        ps = [ps] if isinstance(ps, Parameter) else list(ps)
        for i, p in enumerate(ps):
            if not isinstance(p, Parameter):
                raise TypeError(f"{who}: params[{i}] must be a fastdl.nn.Parameter, got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in ps:
            if id(p) in seen:
                raise ValueError(f"{who}: a parameter appears more than once (shape {p.shape})")
            seen.add(id(p))
        if not ps:
            raise ValueError(f"{who}: got an empty parameter group")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"{who}: unknown hyperparameter(s) {sorted(unknown)} in a parameter group")
        new = dict(self.defaults)
        new.update({k: v for k, v in group.items() if k != "params"})
        new = self._validate(new)
        new["params"] = ps
        self.param_groups.append(new)

    def _validate(self, group: dict) -> dict:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The learning rate (of the first parameter group); setting it sets every group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        value = check_real(value, type(self).__name__, "lr", low=0.0, float32=True)
        for g in self.param_groups:
            g["lr"] = value

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        """Set the ``.grad`` of every parameter this optimizer updates to 0."""
        for p in self._params():
            p.zero_grad()

    def step(self, closure=None):
        """One update of every parameter from its current ``.grad``. ``closure``, if given, is
        called first (it should recompute the gradients) and its return value is returned."""
        loss = None
        if closure is not None:
            loss = check_callable(closure, f"{type(self).__name__}.step", "closure")()
        # A native update checks its own group's gradients before writing; with several groups (several
        # calls), or no such update, every gradient is checked first, so a refused step changes nothing.
        check = bool(self.check_finite)
        if check and (len(self.param_groups) > 1 or not self._kernel_checks_finite):
            self._require_finite_grads(self._params())
            check = False
        for g in self.param_groups:
            self._update_group(g, check)
        return loss

    def _update_group(self, g, check_finite: bool) -> None:
        """Update every parameter of group ``g`` (one ``_update`` each, unless a subclass does better).
        ``check_finite``: refuse a non-finite gradient of the group before writing anything."""
        if check_finite:
            self._require_finite_grads(g["params"])
        for p in g["params"]:
            self._update(p, g)

    def _nonfinite_grad_error(self, params):
        """The ValueError naming the first of ``params`` whose gradient holds NaN or Inf, or None."""
        for p in params:
            grad = p.grad
            if not ops.all_finite(grad):
                index = next(i for i, q in enumerate(self._params()) if q is p)
                k = int(np.flatnonzero(~np.isfinite(grad))[0])
                return ValueError(
                    f"{type(self).__name__}.step: the gradient of parameter {index} (shape {p.shape}) contains "
                    f"NaN or Inf (first at flat index {k}: {grad.flat[k]}); no parameter was updated. The "
                    f"backward pass met non-finite values (a diverged loss?); check_finite=False skips this check")
        return None

    def _require_finite_grads(self, params) -> None:
        err = self._nonfinite_grad_error(params)
        if err is not None:
            raise err

    def _native_update(self, params, check_finite, update, *args, **kwargs):
        """``update(*args, check_finite=check_finite, **kwargs)``, one native call over ``params``; a
        gradient it refuses (having written nothing) is reported by parameter, not by array."""
        try:
            update(*args, check_finite=check_finite, **kwargs)
        except ValueError:
            err = self._nonfinite_grad_error(params) if check_finite else None
            if err is None:
                raise
            raise err from None

    # -------- state
    def state_dict(self) -> dict:
        """{'state': {index: {name: array copy or number}}, 'param_groups': [{hyperparameters,
        'params': [indices]}]}, indices counting parameters across groups in order (as PyTorch)."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {}
        for p in self._params():
            if p in self.state:
                state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                       for k, v in self.state[p].items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict) -> None:
        """Restore hyperparameters and state saved by ``state_dict`` (same parameter layout)."""
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{who}: state_dict must be a dict with 'state' and 'param_groups', "
                            f"got {type(state_dict).__name__}")
        if set(state_dict) != {"state", "param_groups"}:
            raise ValueError(f"{who}: state_dict must be a dict with 'state' and 'param_groups', "
                             f"got keys {sorted(map(str, state_dict))}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{who}: the saved state has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved.get("params", ())) != len(mine["params"]):
                raise ValueError(f"{who}: group {i} has {len(saved.get('params', ()))} parameters in the saved "
                                 f"state, {len(mine['params'])} here")
        params = self._params()
        new_groups = []
        for saved, mine in zip(groups, self.param_groups):
            hyper = self._validate({k: v for k, v in saved.items() if k != "params"})
            new_groups.append(hyper)
        new_state = {}
        for i, st in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"{who}: state for parameter {i}, but there are {len(params)}")
            p = params[i]
            entry = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray) or isinstance(v, (list, tuple)):
                    arr = np.array(v, dtype=np.float32, order="C", copy=True)
                    if arr.shape != p.shape:
                        raise ValueError(f"{who}: state {k!r} of parameter {i} has shape {arr.shape}, "
                                         f"expected {p.shape}")
                    entry[k] = arr
                else:
                    entry[k] = v
            new_state[p] = entry
        for hyper, mine in zip(new_groups, self.param_groups):
            mine.update(hyper)
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, dampening, weight decay and Nesterov, exactly
    as ``torch.optim.SGD``. For each parameter θ with gradient ∇ at step t:

        g   = ∇ + weight_decay · θ
        b_t = g                                    (t = 1)
        b_t = momentum · b_{t-1} + (1 - dampening) · g     (t > 1)
        g   = g + momentum · b_t   if nesterov   else   b_t       (only when momentum ≠ 0)
        θ   = θ - lr · g

    With momentum = 0 this is plain θ ← θ - lr · (∇ + weight_decay · θ). The momentum buffer b is
    ``optimizer.state[p]["momentum_buffer"]``. ``check_finite``: see ``Optimizer``.
    """

    _kernel_checks_finite = True

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, check_finite: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov), check_finite=check_finite)

    def _validate(self, g):
        who = "SGD"
        out = dict(g)
        out["lr"] = check_real(g["lr"], who, "lr", low=0.0, float32=True)
        out["momentum"] = check_real(g["momentum"], who, "momentum", low=0.0, float32=True)
        out["dampening"] = check_real(g["dampening"], who, "dampening", float32=True)
        out["weight_decay"] = check_real(g["weight_decay"], who, "weight_decay", low=0.0, float32=True)
        check_bool(g["nesterov"], who, "nesterov")
        out["nesterov"] = bool(g["nesterov"])
        if out["nesterov"] and (out["momentum"] <= 0.0 or out["dampening"] != 0.0):
            raise ValueError(f"{who}: nesterov momentum requires momentum > 0 and dampening = 0, got "
                             f"momentum={out['momentum']}, dampening={out['dampening']}")
        return out

    def _update_group(self, g, check_finite):
        # One native call for the group's parameters (two on the step where some buffers are new:
        # a new buffer starts as the gradient itself, PyTorch's first step). New buffers join the
        # state once the update has run: after a refused step the next one is still a first step.
        params = g["params"]
        kw = {"lr": g["lr"], "momentum": g["momentum"], "dampening": g["dampening"],
              "weight_decay": g["weight_decay"], "nesterov": g["nesterov"]}
        data, grads = [p.data for p in params], [p.grad for p in params]
        if g["momentum"] == 0.0:
            self._native_update(params, check_finite, ops.sgd_step_many, data, grads, None, **kw)
            return
        bufs, new = [], []
        for p in params:
            buf = self.state.get(p, {}).get("momentum_buffer")
            new.append(buf is None)
            bufs.append(np.zeros_like(p.data) if buf is None else buf)
        if not any(new) or all(new):  # every step but a group's first: one call
            self._native_update(params, check_finite, ops.sgd_step_many, data, grads, bufs, first_step=new[0], **kw)
        else:
            if check_finite:  # two calls: the first must not run when the second would refuse
                self._require_finite_grads(params)
            for first in (False, True):
                pick = [i for i, n in enumerate(new) if n == first]
                ops.sgd_step_many([data[i] for i in pick], [grads[i] for i in pick], [bufs[i] for i in pick],
                                  first_step=first, check_finite=False, **kw)
        for p, buf, is_new in zip(params, bufs, new):
            if is_new:
                self.state.setdefault(p, {})["momentum_buffer"] = buf


class Adam(Optimizer):
    r"""Adam (Kingma & Ba), as ``torch.optim.Adam``. For each parameter θ at step t = 1, 2, ...:

        g = ∇ + weight_decay · θ                   (L2 penalty added to the gradient)
        m = β1 · m + (1 - β1) · g                  v = β2 · v + (1 - β2) · g²
        θ = θ - lr · (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + eps)

    State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v). ``check_finite``: see ``Optimizer``.
    """

    _decoupled = False
    _kernel_checks_finite = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 *, check_finite: bool = True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         check_finite=check_finite)

    def _validate(self, g):
        who = type(self).__name__
        out = dict(g)
        out["lr"] = check_real(g["lr"], who, "lr", low=0.0, float32=True)
        out["eps"] = check_real(g["eps"], who, "eps", low=0.0, float32=True)
        out["weight_decay"] = check_real(g["weight_decay"], who, "weight_decay", low=0.0, float32=True)
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        out["betas"] = (check_real(betas[0], who, "betas[0]", low=0.0, high=1.0, high_open=True),
                        check_real(betas[1], who, "betas[1]", low=0.0, high=1.0, high_open=True))
        return out

    def _update_group(self, g, check_finite):
        # One native call for the group's parameters; new states join and step counts move only once
        # it has run.
        params = g["params"]
        states = []
        for p in params:
            st = self.state.get(p)
            if st is None:
                st = {"step": 0, "exp_avg": np.zeros_like(p.data), "exp_avg_sq": np.zeros_like(p.data)}
            states.append(st)
        b1, b2 = g["betas"]
        self._native_update(params, check_finite, ops.adam_step_many, [p.data for p in params],
                            [p.grad for p in params], [st["exp_avg"] for st in states],
                            [st["exp_avg_sq"] for st in states], lr=g["lr"], steps=[st["step"] + 1 for st in states],
                            beta1=b1, beta2=b2, eps=g["eps"], weight_decay=g["weight_decay"],
                            decoupled=self._decoupled)
        for p, st in zip(params, states):
            st["step"] += 1
            self.state[p] = st


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:

        θ = θ · (1 - lr · weight_decay)            (instead of adding weight_decay · θ to the gradient)
        m, v, θ as in Adam with g = ∇
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 *, check_finite: bool = True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, check_finite=check_finite)


# ================================================================ schedules


class LRScheduler:
    """Base of the epoch-indexed schedules: lr_t = f(initial lr, t), t = ``last_epoch`` = number
    of ``step()`` calls. Construction sets t = 0 (the initial lr), as PyTorch does."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a fastdl.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = -1
        self.step()

    def _lr_at(self, base: float, t: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and set the optimizer's learning rate (which must fit in float32)."""
        t = self.last_epoch + 1
        lrs = [check_real(self._lr_at(base, t), type(self).__name__, f"lr (epoch {t})", low=0.0, float32=True)
               for base in self.base_lrs]
        self.last_epoch = t
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr

    def get_last_lr(self) -> float:
        """The learning rate set by the last ``step()`` (first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict")
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "optimizer"})


class StepLR(LRScheduler):
    """lr_t = lr_0 · gamma^⌊t / step_size⌋ (decay by gamma every step_size epochs)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = check_int(step_size, "StepLR", "step_size", minimum=1)
        self.gamma = check_real(gamma, "StepLR", "gamma", low=0.0, low_open=True)
        super().__init__(optimizer)

    def _lr_at(self, base, t):
        return base * self.gamma ** (t // self.step_size)


class ExponentialLR(LRScheduler):
    """lr_t = lr_0 · gamma^t."""

    def __init__(self, optimizer, gamma: float):
        self.gamma = check_real(gamma, "ExponentialLR", "gamma", low=0.0, low_open=True)
        super().__init__(optimizer)

    def _lr_at(self, base, t):
        return base * self.gamma ** t


class CosineAnnealingLR(LRScheduler):
    """lr_t = eta_min + (lr_0 - eta_min) · (1 + cos(π t / T_max)) / 2 (SGDR without restarts)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        self.T_max = check_int(T_max, "CosineAnnealingLR", "T_max", minimum=1)
        self.eta_min = check_real(eta_min, "CosineAnnealingLR", "eta_min", low=0.0, float32=True)
        super().__init__(optimizer)

    def _lr_at(self, base, t):
        return self.eta_min + (base - self.eta_min) * (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0


class InverseTimeLR(LRScheduler):
    """lr_t = lr_0 / (1 + t / tau): Σ lr_t diverges while Σ lr_t² converges, the Robbins–Monro
    conditions under which SGD provably converges."""

    def __init__(self, optimizer, tau: float):
        self.tau = check_real(tau, "InverseTimeLR", "tau", low=0.0, low_open=True)
        super().__init__(optimizer)

    def _lr_at(self, base, t):
        return base / (1.0 + t / self.tau)


class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` when a metric has not improved for more than
    ``patience`` epochs (as ``torch.optim.lr_scheduler.ReduceLROnPlateau``); call ``step(metric)``
    once per epoch.

    Improvement (mode "min", threshold_mode "rel"): metric < best · (1 - threshold); "abs":
    metric < best - threshold (mirrored for mode "max"). After a reduction, ``cooldown`` epochs
    pass before bad epochs count again. The lr never goes below ``min_lr``, and changes smaller
    than ``eps`` are skipped.
    """

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8):
        who = "ReduceLROnPlateau"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{who}: optimizer must be a fastdl.optim.Optimizer, got {type(optimizer).__name__}")
        check_choice(mode, who, "mode", ("min", "max"))
        check_choice(threshold_mode, who, "threshold_mode", ("rel", "abs"))
        self.optimizer = optimizer
        self.mode = mode
        self.factor = check_real(factor, who, "factor", low=0.0, high=1.0, high_open=True)
        self.patience = check_int(patience, who, "patience", minimum=0)
        self.threshold = check_real(threshold, who, "threshold", low=0.0)
        self.threshold_mode = threshold_mode
        self.cooldown = check_int(cooldown, who, "cooldown", minimum=0)
        self.min_lr = check_real(min_lr, who, "min_lr", low=0.0, float32=True)
        self.eps = check_real(eps, who, "eps", low=0.0)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metric) -> None:
        """Record this epoch's ``metric`` (e.g. the validation loss) and reduce the lr if it stalled."""
        if isinstance(metric, (bool, np.bool_)) or not isinstance(metric, (numbers.Real, np.ndarray)):
            raise TypeError(f"ReduceLROnPlateau.step: metric must be a real number, got {type(metric).__name__}")
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for g in self.optimizer.param_groups:
                old = g["lr"]
                new = max(old * self.factor, self.min_lr)
                if old - new > self.eps:
                    g["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def get_last_lr(self) -> float:
        """The current learning rate (first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError("ReduceLROnPlateau.load_state_dict: expected a dict")
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "optimizer"})
