"""fastdl.train: the training loop (Keras's ``fit``, PyTorch's explicit step), evaluation and prediction.

    from fastdl import nn, optim
    from fastdl.train import fit, EarlyStopping

    model = nn.Sequential(nn.Linear(2, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))
    history = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y,
                  epochs=50, batch_size=16, seed=0, validation_split=0.2,
                  callbacks=[EarlyStopping(patience=5, restore_best_weights=True)])
    history["val_loss"]            # one number per epoch

Each step of ``fit`` is exactly the course's loop:

    out = model(x); loss = loss_fn(out, y); opt.zero_grad(); model.backward(loss_fn.backward()); opt.step()

Gradient descent in its three forms, by ``batch_size``:
    None   full-batch gradient descent: one step per epoch over the whole training set.
    1      stochastic gradient descent: n steps per epoch, each on one example drawn uniformly at
           random (with replacement: the epoch's indices are ``rng.integers(0, n, size=n)``).
    k      mini-batches of k from ``rng.permutation(n)``, a fresh shuffle every epoch (the last
           batch holds the remainder; a remainder of one example joins the batch before it, since
           BatchNorm cannot train on a single example).
``rng = np.random.default_rng(seed)``; the global ``np.random`` is never used. ``shuffle=False``
walks the data in order instead (then batch_size=1 visits every example once per epoch).

Stopping: after ``epochs`` epochs; by the course's rule |L_new - L_old| < tol on the epoch's
training loss (``tol=``); by a callback (``EarlyStopping`` is one); by Ctrl-C.

The loop has three levels, all in ``Trainer``: ``train_step(x, y)`` (one batch: forward, loss,
backward, optimizer step; returns the loss), ``train_epoch(loader)`` (one pass over a
``fastdl.data.DataLoader`` or any iterable of batches; returns the epoch's logs) and ``fit``;
``fastdl.train.fit(model, loss_fn, optimizer, X, y, ...)`` is ``Trainer(model, loss_fn,
optimizer).fit(X, y, ...)``. fit checks and converts X and y once (X of any rank (n, ...), e.g.
images (n, 1, 28, 28)), gathers each batch with a DataLoader (in its background thread when a CPU is
left over beside fastdl's threads), and runs the
model's unchecked internal path per batch (``model._forward`` / ``model._backward``, which for a
plain Module are its ``forward`` / ``backward``).

Callbacks: ``Callback`` objects with Keras's hooks (``on_train_begin(logs)``,
``on_epoch_begin(epoch, logs)``, ``on_batch_begin(batch, logs)``, ``on_batch_end(batch, logs)``,
``on_epoch_end(epoch, logs)``, ``on_train_end(logs)``; ``set_model(model)`` first), and plain
callables ``cb(epoch, logs)``, called after every epoch with the epoch index (from 0) and the
epoch's logs, e.g. ``{"loss": 0.31, "accuracy": 0.9, "val_loss": 0.35, "val_accuracy": 0.88,
"lr": 0.1, "seconds": 0.02}``. **A callback stops training by returning True** from
``on_epoch_end`` (or, as a plain callable, from its call; any other return value, None included,
lets it go on), or by setting ``model.stop_training = True`` in any hook (fit stops after that
batch); every callback still sees the epoch that one of them stops. So a predicate works as a
callback: ``lambda epoch, logs: logs["loss"] < 0.01``. A plain callable may also define
``on_train_begin(model)`` and ``on_train_end(model)``, called with the model once before the first
and after the last epoch. The batch hooks cost nothing when no callback overrides them.
``EarlyStopping`` is a Callback.

Ctrl-C (SIGINT) during ``fit`` finishes the current batch, then stops: no half-applied update, the
model usable, and ``fit`` returns the History of the completed epochs with
``history.stop_reason == "interrupted"``. A second Ctrl-C interrupts at once. (Off the main
thread, or when a program installed its own SIGINT handler, ``fit`` catches the
KeyboardInterrupt wherever it lands instead.)
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time

import numpy as np

from fastdl import _C, nn, ops, optim
from fastdl._validation import as_samples, check_bool, check_choice, check_int, check_real, check_rng, numeric_array
from fastdl.data import DataLoader
from fastdl.progress import ProgressBar, format_epoch_line

__all__ = ["fit", "evaluate", "predict", "Trainer", "History", "Callback", "EarlyStopping"]


# ---------------------------------------------------------------- History

class History:
    """What ``fit`` returns: per-epoch lists of the logs, as in Keras.

    ``history.history``: dict of lists, keys among "loss", the metrics ("accuracy", ...),
    "val_loss", "val_<metric>", "lr" (the learning rate used during the epoch) and "seconds"
    (wall time of the epoch, validation included). ``history["loss"]`` is short for
    ``history.history["loss"]``. ``history.epoch``: the epoch indices (from 0).
    ``history.params``: the fit settings (epochs, batch_size, steps per epoch, samples, ...).
    ``history.stop_reason``: "epochs", "tol", "early_stopping", "callback" or "interrupted".
    """

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}
        self.stop_reason = None

    def _append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def __len__(self):
        return len(self.epoch)

    def keys(self):
        return self.history.keys()

    def __repr__(self):
        return (f"History(epochs={len(self.epoch)}, keys={list(self.history)}, "
                f"stop_reason={self.stop_reason!r})")


# ---------------------------------------------------------------- callbacks

class Callback:
    """Base class of the callbacks ``fit`` calls, with Keras's hook names; override the ones you need.

    ``fit`` calls ``set_model(model)`` first, then ``on_train_begin(logs)``; per epoch
    ``on_epoch_begin(epoch, logs)``, per batch ``on_batch_begin(batch, logs)`` and
    ``on_batch_end(batch, logs)`` (logs: "batch", "size" and, at the end, "loss"), then
    ``on_epoch_end(epoch, logs)`` with the epoch's logs ("loss", metrics, "val_*", "lr", "seconds");
    finally ``on_train_end(logs)`` (the last epoch's logs), whatever ended training. The batch hooks
    cost nothing when no callback overrides them. Epochs and batches count from 0.

    To stop training: return True from ``on_epoch_end``, or set ``self.model.stop_training = True``
    in any hook (fit then stops after the current batch).
    """

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (a callback for ``fit``).

    An epoch improves when its value beats the best so far by more than ``min_delta``
    (``value < best - min_delta`` in mode "min", ``value > best + min_delta`` in mode "max";
    mode "auto" is "max" for accuracy-like names and "min" otherwise). With
    ``restore_best_weights=True`` the model gets the weights of its best epoch back when training
    ends, whatever ended it (patience, the epoch limit, tol, Ctrl-C or an error).
    After fit: ``best``, ``best_epoch``, ``stopped_epoch`` (None when patience never ran out).
    ``es(epoch, logs)`` is ``es.on_epoch_end(epoch, logs)``: True when training should stop.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best_weights=False,
                 mode="auto"):
        who = "EarlyStopping"
        if not isinstance(monitor, str):
            raise TypeError(f"{who}: monitor must be a log name such as 'val_loss', got {type(monitor).__name__}")
        if not monitor:
            raise ValueError(f"{who}: monitor must be a log name such as 'val_loss', got ''")
        self.monitor = monitor
        self.patience = check_int(patience, who, "patience", minimum=0)
        self.min_delta = check_real(min_delta, who, "min_delta", low=0.0)
        self.restore_best_weights = check_bool(restore_best_weights, who, "restore_best_weights")
        self.mode = check_choice(mode, who, "mode", ("auto", "min", "max"))
        if mode == "auto":
            name = monitor.lower()
            maximize = name.endswith(("accuracy", "acc", "r2", "score"))
        else:
            maximize = mode == "max"
        self._sign = -1.0 if maximize else 1.0   # compare sign * value, smaller is better
        self.model = None
        self._reset()

    def _reset(self):
        self.wait = 0
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None
        self._last_epoch = None

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            hint = " (pass validation_data or validation_split to fit)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not in the logs; "
                             f"available: {', '.join(logs)}{hint}")
        value = float(logs[self.monitor])
        self._last_epoch = epoch
        if self.best is None or self._sign * value < self._sign * self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                if self.model is None:
                    raise ValueError("EarlyStopping(restore_best_weights=True) needs the model: "
                                     "use it as a callback of fastdl.fit")
                self.best_weights = self.model.state_dict()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    __call__ = on_epoch_end

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None and self.model is not None:
            self.model.load_state_dict(self.best_weights)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, restore_best_weights={self.restore_best_weights}, "
                f"mode={self.mode!r})")


def _overrides(cb, name):
    return getattr(type(cb), name, None) is not getattr(Callback, name)


class _Callbacks:
    """The callbacks of one fit: ``Callback`` objects get every hook; a plain callable ``cb(epoch, logs)``
    is an epoch-end callback (its ``on_train_begin(model)`` / ``on_train_end(model)``, when it has them,
    are called with the model, as before callbacks had a base class)."""

    def __init__(self, callbacks, model, who):
        if callbacks is None:
            callbacks = ()
        callbacks = [callbacks] if (callable(callbacks) or isinstance(callbacks, Callback)) else list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback) and not callable(cb):
                raise TypeError(f"{who}: callbacks must be fastdl.train.Callback objects or callables cb(epoch, "
                                f"logs), got {type(cb).__name__}")
        self.all = callbacks
        self.model = model
        self.batch_begin = [cb for cb in callbacks if isinstance(cb, Callback) and _overrides(cb, "on_batch_begin")]
        self.batch_end = [cb for cb in callbacks if isinstance(cb, Callback) and _overrides(cb, "on_batch_end")]
        self.epoch_begin = [cb for cb in callbacks if isinstance(cb, Callback) and _overrides(cb, "on_epoch_begin")]

    def train_begin(self):
        for cb in self.all:
            if isinstance(cb, Callback):
                cb.set_model(self.model)
                cb.on_train_begin({})
            else:
                hook = getattr(cb, "on_train_begin", None)
                if callable(hook):
                    hook(self.model)

    def train_end(self, logs):
        for cb in self.all:
            if isinstance(cb, Callback):
                cb.on_train_end(dict(logs))
            else:
                hook = getattr(cb, "on_train_end", None)
                if callable(hook):
                    hook(self.model)

    def epoch_end(self, epoch, logs):
        """The stop reason ("early_stopping", "callback") or None; every callback sees the epoch."""
        stop = None
        for cb in self.all:
            result = cb.on_epoch_end(epoch, logs) if isinstance(cb, Callback) else cb(epoch, logs)
            if _wants_stop(result) and stop is None:
                stop = "early_stopping" if isinstance(cb, EarlyStopping) else "callback"
        return stop


# ---------------------------------------------------------------- inputs

_UNSET_ARG = object()


def _is_real(v):
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


def _as_y(y, n, int_labels, where, name="y", xname="X"):
    """int64 class labels (n,) for CrossEntropyLoss; float32 targets (n, k) otherwise ((n,) -> (n, 1))."""
    arr = numeric_array(y, where, name)
    if arr.ndim == 0:
        raise ValueError(f"{where}: {name} must be an array with one entry per sample, got a scalar")
    if len(arr) != n:
        raise ValueError(f"{where}: {xname} and {name} have different lengths: {n} and {len(arr)}")
    if int_labels:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"{where}: CrossEntropyLoss wants {name} as class indices of shape (n,), "
                             f"got shape {arr.shape}" + ("; from one-hot rows use y.argmax(axis=1)" if arr.ndim == 2 else ""))
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{where}: CrossEntropyLoss wants integer class labels in {name}, got dtype "
                             f"{arr.dtype}; convert with {name}.astype(np.int64)")
        arr = np.require(arr, np.int64, "CA")
        if arr.min() < 0:
            raise ValueError(f"{where}: class labels in {name} must be >= 0, found {arr.min()}")
        return arr
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{where}: {name} must be 1-D or 2-D (n_samples, n_outputs), got shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.require(arr, np.float32, "CA")
    if not ops.all_finite(arr):
        raise ValueError(f"{where}: {name} contains NaN or infinity")
    return arr


def _wants_int_labels(loss_fn):
    return isinstance(loss_fn, nn.CrossEntropyLoss)


def _check_label_range(y, out, where, name):
    """Labels must index the model's outputs: 0 <= y < K for an (n, K) output."""
    if out.ndim == 2:
        k = out.shape[1]
        top = int(y.max())
        if top >= k:
            raise ValueError(f"{where}: {name} holds class label {top}, but the model has {k} outputs "
                             f"(labels must be in [0, {k}))")


# ---------------------------------------------------------------- metrics

def _accuracy(y_true, y_pred, threshold):
    """Fraction right: argmax over the outputs of a multi-class model; ``output > threshold`` for one output."""
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        pred = y_pred.argmax(axis=1)
        truth = y_true if y_true.ndim == 1 else y_true.argmax(axis=1)
    else:
        pred = y_pred.reshape(len(y_pred)) > threshold
        truth = y_true.reshape(len(y_true)) > 0.5
    return float(np.mean(pred == truth))


def _mae(y_true, y_pred):
    return float(np.mean(np.abs(y_pred.astype(np.float64) - y_true.reshape(y_pred.shape))))


def _mse(y_true, y_pred):
    d = y_pred.astype(np.float64) - y_true.reshape(y_pred.shape)
    return float(np.mean(d * d))


def _resolve_metrics(metrics, loss_fn, where):
    """[(name, fn(y_true, y_pred) -> batch mean)]. None: accuracy for classification losses, else none."""
    is_clf = isinstance(loss_fn, (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss))
    if metrics is None:
        metrics = ("accuracy",) if is_clf else ()
    elif isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    # one output: logits are split at 0 (BCEWithLogitsLoss), other outputs (sigmoid, MSE on 0/1) at 0.5
    threshold = 0.0 if isinstance(loss_fn, nn.BCEWithLogitsLoss) else 0.5
    resolved = []
    for m in metrics:
        if callable(m):
            name, fn = getattr(m, "__name__", "metric"), m
        elif m in ("accuracy", "acc"):
            name, fn = "accuracy", (lambda t, p: _accuracy(t, p, threshold))
        elif m == "mae":
            name, fn = "mae", _mae
        elif m == "mse":
            name, fn = "mse", _mse
        else:
            raise ValueError(f"{where}: unknown metric {m!r}; use 'accuracy', 'mae', 'mse' "
                             "or a function f(y_true, y_pred) -> float")
        if name in ("loss", "lr", "seconds") or name.startswith("val_") or name in (r[0] for r in resolved):
            raise ValueError(f"{where}: metric name {name!r} is reserved or given twice")
        resolved.append((name, fn))
    return resolved


# ---------------------------------------------------------------- evaluation

def _batch_slices(n, batch_size):
    step = n if batch_size is None else batch_size
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _evaluate_arrays(model, loss_fn, X, y, batch_size, metric_fns, int_labels, where, yname="y"):
    """Loss and metrics over (X, y) in batches, no mode changes; X, y already validated (the model's
    unchecked path runs: ``model._forward``)."""
    n = len(X)
    summed = getattr(loss_fn, "reduction", "mean") == "sum"
    loss_total = 0.0
    metric_totals = [0.0] * len(metric_fns)
    forward = model._forward
    for b, sl in enumerate(_batch_slices(n, batch_size)):
        xb, yb = X[sl], y[sl]
        out = forward(xb, True)   # read below, before the next batch overwrites the layer's buffers
        if b == 0 and int_labels:
            _check_label_range(y, out, where, yname)
        loss = float(loss_fn(out, yb))
        m = len(xb)
        loss_total += loss if summed else loss * m
        for k, (_, fn) in enumerate(metric_fns):
            metric_totals[k] += float(fn(yb, out)) * m
    logs = {"loss": loss_total if summed else loss_total / n}
    for (name, _), total in zip(metric_fns, metric_totals):
        logs[name] = total / n
    return logs


def _check_batch_size(batch_size, where):
    return check_int(batch_size, where, "batch_size", minimum=1, allow_none=True)


def _check_parts(where, model, loss_fn=None, optimizer=None):
    """TypeError naming the argument when model / loss_fn / optimizer are not what fit expects."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a fastdl.nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not (callable(loss_fn) and callable(getattr(loss_fn, "backward", None))):
        raise TypeError(f"{where}: loss_fn must be a loss such as nn.CrossEntropyLoss() (callable, with a "
                        f"backward() method), got {type(loss_fn).__name__}")
    if optimizer is not None and not all(callable(getattr(optimizer, a, None)) for a in ("step", "zero_grad")):
        raise TypeError(f"{where}: optimizer must be an optimizer such as optim.SGD(...) (with step() and "
                        f"zero_grad()), got {type(optimizer).__name__}")


class _ModeRestorer:
    """Put the model in training or eval mode for a while, then back in the mode it was in."""

    def __init__(self, model, training):
        self.model, self.training = model, training

    def __enter__(self):
        self.prev = bool(getattr(self.model, "training", True))
        self.model.train(self.training)
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.prev)
        return False


def evaluate(model, loss_fn, X, y, *, batch_size=1024, metrics=None):
    """Loss and metrics of ``model`` on (X, y), in eval mode: ``{"loss": ..., "accuracy": ...}``.

    X: (n, ...) of any rank >= 2; y as for ``fit``. ``metrics``: names ("accuracy", "mae", "mse") or
    functions f(y_true, y_pred) -> float; None means accuracy for CrossEntropyLoss / BCEWithLogitsLoss
    and nothing else otherwise. The model's previous mode (training or eval) is restored afterwards.
    """
    _check_parts("evaluate", model, loss_fn)
    batch_size = _check_batch_size(batch_size, "evaluate")
    int_labels = _wants_int_labels(loss_fn)
    X = as_samples(X, "evaluate", any_rank=True)
    y = _as_y(y, len(X), int_labels, "evaluate")
    metric_fns = _resolve_metrics(metrics, loss_fn, "evaluate")
    with _ModeRestorer(model, False):
        return _evaluate_arrays(model, loss_fn, X, y, batch_size, metric_fns, int_labels, "evaluate")


def predict(model, X, *, batch_size=1024):
    """The model's outputs for X ((n, ...) of any rank >= 2, converted once to float32), computed in eval
    mode in batches. The model's previous mode is restored afterwards.
    """
    _check_parts("predict", model)
    batch_size = _check_batch_size(batch_size, "predict")
    X = as_samples(X, "predict", any_rank=True)
    result = None
    forward = model._forward
    with _ModeRestorer(model, False):
        for sl in _batch_slices(len(X), batch_size):
            out = np.asarray(forward(X[sl], True))
            if result is None:
                result = np.empty((len(X),) + out.shape[1:], dtype=out.dtype)
            result[sl] = out   # copy: the next batch reuses the layers' buffers
    return result


# ---------------------------------------------------------------- fit

class _SigintFlag:
    """While active, the first Ctrl-C only sets ``.raised`` (fit stops after the batch); a second one interrupts."""

    def __init__(self):
        self.raised = False
        self._installed = False

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._prev = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)
        return False


def _train_bounds(n, batch_size):
    """(start, stop) of each training batch of ``batch_size``; a last batch of one example joins the
    batch before it (BatchNorm cannot train on a single example)."""
    if batch_size is None or batch_size >= n:
        return [(0, n)]
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def _spare_cpu() -> bool:
    """Whether a CPU is left over beside fastdl's threads for the DataLoader's gathering thread. When every
    CPU runs a kernel thread, that thread takes a CPU from the step's parallel regions, which then wait for
    it: measured on 2 CPUs, 3-8% slower epochs than gathering in the step (natively, ~35 us a 128-row batch)."""
    return _C.get_num_threads() < _C.available_cpus()


class _FitSampler:
    """fit's batches (the module docstring), as a DataLoader sampler: per epoch, ``rng.permutation(n)``
    cut at ``_train_bounds``; batch_size=1 with shuffle draws ``rng.integers(0, n, size=n)`` (with
    replacement); a single batch, or shuffle=False, walks the data in order (slices: views, no copy)."""

    def __init__(self, n, batch_size, shuffle, rng):
        self.n, self.batch_size, self.shuffle, self.rng = n, batch_size, shuffle, rng
        self.bounds = _train_bounds(n, batch_size)

    def __len__(self):
        return len(self.bounds)

    def __iter__(self):
        n, rng = self.n, self.rng
        if self.batch_size == 1 and self.shuffle and n > 1:
            for i in rng.integers(0, n, size=n).tolist():
                yield slice(i, i + 1)
        elif not self.shuffle or len(self.bounds) == 1:
            for a, b in self.bounds:
                yield slice(a, b)
        else:
            perm = rng.permutation(n)
            for a, b in self.bounds:
                yield perm[a:b]


def _epoch_batches(n, batch_size, shuffle, rng):
    """One epoch's batches, as slices or index arrays (what fit's sampler yields for one epoch)."""
    return list(_FitSampler(n, batch_size, shuffle, rng))


def _split_validation(X, y, validation_data, validation_split, int_labels):
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("fit: validation_data must be a pair (X_val, y_val)")
        Xv = as_samples(validation_data[0], "fit", "X_val", any_rank=True)
        if Xv.shape[1:] != X.shape[1:]:
            if X.ndim == 2 and Xv.ndim == 2:
                raise ValueError(f"fit: X_val has {Xv.shape[1]} features, X has {X.shape[1]}")
            raise ValueError(f"fit: X_val has rows of shape {Xv.shape[1:]}, X has rows of shape {X.shape[1:]}")
        yv = _as_y(validation_data[1], len(Xv), int_labels, "fit", "y_val", "X_val")
        if yv.shape[1:] != y.shape[1:]:
            raise ValueError(f"fit: y_val has shape {yv.shape}, y has shape {y.shape}: they must agree")
        return X, y, Xv, yv
    if validation_split:
        n = len(X)
        n_train = int(math.floor(n * (1.0 - validation_split)))
        if n_train == 0 or n_train == n:
            raise ValueError(f"fit: validation_split={validation_split} leaves {n_train} of {n} samples for "
                             "training; both parts must be non-empty")
        # the last fraction, before any shuffling (as Keras does)
        return X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    return X, y, None, None


def _get_lr(optimizer):
    lr = getattr(optimizer, "lr", None)
    return float(lr) if _is_real(lr) else None


def _diverged(what, epoch, b, nbatches, lr):
    where = f"epoch {epoch + 1}, batch {b + 1} of {nbatches}" if epoch is not None else f"batch {b + 1}"
    return FloatingPointError(f"fit: {what} at {where}; training diverged: try a lower learning rate (now {lr}) "
                              "or scale the inputs")


def _wants_stop(result):
    return isinstance(result, (bool, np.bool_)) and bool(result)


def fit(model, loss_fn, optimizer, X, y, *, epochs=10, batch_size=32, shuffle=True, seed=None,
        validation_data=None, validation_split=0.0, metrics=None, callbacks=(), scheduler=None,
        tol=None, verbose=1):
    """Train ``model`` on (X, y) with ``loss_fn`` and ``optimizer``; return a ``History``.

    X: (n, ...) numbers of any rank >= 2 ((n, features), (n, 1, 28, 28), ...), converted once to
    float32 and checked once. y: integer class labels (n,) for CrossEntropyLoss (converted to
    int64), otherwise targets (n,) or (n, outputs) (converted to float32; (n,) becomes (n, 1) to match
    a one-output model).
    epochs: the most epochs to run. batch_size: None (full batch), 1 (SGD) or k (mini-batch); see
    the module docstring for how examples are drawn. seed: int, np.random.Generator or None.
    validation_data: (X_val, y_val); or validation_split: the last fraction of (X, y), taken before
    shuffling (validation_data wins when both are given). Validation runs in eval mode after each
    epoch and adds "val_loss" and "val_<metric>" to the logs.
    metrics: as in ``evaluate``; their training values are averages over the epoch's batches.
    callbacks: ``Callback`` objects and callables cb(epoch, logs) (module docstring).
    scheduler: stepped once per epoch after the callbacks; ReduceLROnPlateau gets val_loss (loss
    without validation data).
    tol: stop when |L_new - L_old| < tol for the training losses of two consecutive epochs.
    verbose: 0 silent; 1 a progress bar per epoch (stderr) and one line per epoch (stdout);
    2 only the line per epoch.

    The batches come from a ``fastdl.data.DataLoader``, gathered in its background thread while the
    step computes when a CPU is left over beside fastdl's threads (``set_num_threads`` below the CPUs
    available), else by the same native kernel at the start of each step. The model is in training mode during fit and back in its previous mode
    afterwards. A loss, model output or gradient that is not finite (a diverged run) raises
    FloatingPointError naming the epoch and batch, before that batch's update is applied (for a
    gradient: when the optimizer refuses it, as fastdl's do unless built with ``check_finite=False``).
    This is ``Trainer(model, loss_fn, optimizer).fit(X, y, ...)``.
    """
    trainer = Trainer(model, loss_fn, optimizer, metrics=metrics, scheduler=scheduler, callbacks=callbacks,
                      _who="fit")
    return trainer.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                       validation_data=validation_data, validation_split=validation_split, tol=tol,
                       verbose=verbose)


# ---------------------------------------------------------------- Trainer

class Trainer:
    """A model, its loss and optimizer (and metrics, scheduler, callbacks) kept together; the training
    loop in three levels:

        trainer = Trainer(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3))
        trainer.train_step(xb, yb)                       # one batch: forward, loss, backward, step -> loss
        trainer.train_epoch(loader)                      # one pass over batches (x, y) -> the epoch's logs
        trainer.fit(X, y, epochs=5, batch_size=128)      # same keywords as fastdl.train.fit
        trainer.evaluate(X_test, y_test)                 # {"loss": ..., "accuracy": ...}
        trainer.predict(X_test)

    ``fastdl.train.fit`` is ``Trainer(...).fit``. ``trainer.history`` is the History of the last ``fit``.
    ``train_step`` and ``train_epoch`` check and convert what they are given (per call); ``fit`` checks
    X and y once and runs the model's unchecked path for every batch.
    """

    def __init__(self, model, loss_fn, optimizer, *, metrics=None, scheduler=None, callbacks=(), _who="Trainer"):
        _check_parts(_who, model, loss_fn, optimizer)
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.metrics = metrics
        self.scheduler = scheduler
        self.callbacks = callbacks
        self.history = None
        self._who = _who
        _Callbacks(callbacks, model, _who)  # refuse bad callbacks now
        self._metric_fns = _resolve_metrics(metrics, loss_fn, _who)
        self._int_labels = _wants_int_labels(loss_fn)
        self._summed = getattr(loss_fn, "reduction", "mean") == "sum"

    # -------- level 1: one batch

    def _step(self, xb, yb, b, nbatches, epoch, lr, labels=None):
        """forward, loss, backward, optimizer step on a checked batch; returns (loss, output). ``labels``:
        class labels to check against the model's output width first (all of y in fit, once)."""
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer
        out = model._forward(xb, True)
        if labels is not None:
            _check_label_range(labels, out, self._who, "y")
        try:
            loss = float(loss_fn(out, yb))
        except ValueError as e:  # a loss kernel may refuse a non-finite output
            if np.isfinite(out).all():
                raise
            raise _diverged("the model's output is not finite", epoch, b, nbatches, lr) from e
        if not math.isfinite(loss):
            raise _diverged(f"the loss became {loss}", epoch, b, nbatches, lr)
        optimizer.zero_grad()
        model._backward(loss_fn.backward(), False, True)
        try:
            optimizer.step()
        except ValueError as e:  # the optimizer refuses a non-finite gradient (check_finite)
            if all(np.isfinite(p.grad).all() for p in model.parameters()):
                raise
            raise _diverged("a gradient is not finite", epoch, b, nbatches, lr) from e
        return loss, out

    def _check_batch(self, x, y, who):
        x = as_samples(x, who, "x", any_rank=True)
        y = _as_y(y, len(x), self._int_labels, who, xname="x")
        return x, y

    def train_step(self, x, y):
        """One training step on the batch (x, y) — forward, loss, backward, optimizer step — in the model's
        current mode; returns the loss (a float). FloatingPointError when the output, loss or a gradient
        is not finite (the update is then not applied)."""
        x, y = self._check_batch(x, y, "Trainer.train_step")
        loss, _ = self._step(x, y, 0, 1, None, _get_lr(self.optimizer), y if self._int_labels else None)
        return loss

    # -------- level 2: one epoch

    def _run_epoch(self, batches, nbatches, cbs, epoch=None, bar=None, sigint=None, checked=True, y_all=None):
        """Train on every batch of ``batches``; the epoch's logs ("loss" and the metrics)."""
        metric_fns, summed = self._metric_fns, self._summed
        lr = _get_lr(self.optimizer)
        loss_total, seen = 0.0, 0
        metric_totals = [0.0] * len(metric_fns)
        batch_begin, batch_end = cbs.batch_begin, cbs.batch_end
        model = self.model
        check_labels = self._int_labels
        for b, (xb, yb) in enumerate(batches):
            if not checked:
                xb, yb = self._check_batch(xb, yb, "Trainer.train_epoch")
            m = len(xb)
            if batch_begin:
                for cb in batch_begin:
                    cb.on_batch_begin(b, {"batch": b, "size": m})
            # labels must index the outputs: all of y on the first batch in fit, each batch otherwise
            labels = (yb if y_all is None else y_all) if check_labels else None
            loss, out = self._step(xb, yb, b, nbatches, epoch, lr, labels)
            check_labels = check_labels and not checked
            loss_total += loss if summed else loss * m
            for k, (_, fn) in enumerate(metric_fns):
                metric_totals[k] += float(fn(yb, out)) * m
            seen += m
            if batch_end:
                for cb in batch_end:
                    cb.on_batch_end(b, {"batch": b, "size": m, "loss": loss})
            if bar is not None:
                bar.update(1, loss=loss_total if summed else loss_total / seen)
            if (sigint is not None and sigint.raised) or getattr(model, "stop_training", False):
                break
        if seen == 0:
            return {}
        logs = {"loss": loss_total if summed else loss_total / seen}
        for (name, _), total in zip(metric_fns, metric_totals):
            logs[name] = total / seen
        return logs

    def train_epoch(self, loader):
        """One pass over ``loader`` (a ``fastdl.data.DataLoader`` or any iterable of (x, y) batches): a
        training step per batch, each batch checked and converted. Returns the epoch's logs: "loss" (the
        mean over the examples, or the sum for a reduction="sum" loss) and the metrics. Callbacks' batch
        hooks run; setting ``model.stop_training = True`` ends the pass after the batch."""
        cbs = _Callbacks(self.callbacks, self.model, "Trainer.train_epoch")
        for cb in cbs.all:
            if isinstance(cb, Callback):
                cb.set_model(self.model)
        try:
            nbatches = len(loader)
        except TypeError:
            nbatches = 0
        it = iter(loader)
        try:
            return self._run_epoch(it, nbatches, cbs, checked=False)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    # -------- level 3: fit

    def fit(self, X, y, *, epochs=10, batch_size=32, shuffle=True, seed=None, validation_data=None,
            validation_split=0.0, metrics=_UNSET_ARG, callbacks=_UNSET_ARG, scheduler=_UNSET_ARG, tol=None,
            verbose=1):
        """Train on (X, y); return a History. Keywords as ``fastdl.train.fit``; metrics, callbacks and
        scheduler default to the Trainer's."""
        who = self._who
        if metrics is not _UNSET_ARG:
            self.metrics = metrics
            self._metric_fns = _resolve_metrics(metrics, self.loss_fn, who)
        if callbacks is not _UNSET_ARG:
            self.callbacks = callbacks
        if scheduler is not _UNSET_ARG:
            self.scheduler = scheduler
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        epochs = check_int(epochs, who, "epochs", minimum=0)
        batch_size = _check_batch_size(batch_size, who)
        shuffle = check_bool(shuffle, who, "shuffle")
        validation_split = check_real(validation_split, who, "validation_split", low=0.0, high=1.0, high_open=True)
        tol = check_real(tol, who, "tol", low=0.0, allow_none=True)
        verbose = check_choice(verbose, who, "verbose", (0, 1, 2))
        cbs = _Callbacks(self.callbacks, model, who)

        int_labels = self._int_labels
        X = as_samples(X, who, any_rank=True)
        y = _as_y(y, len(X), int_labels, who)
        X, y, Xv, yv = _split_validation(X, y, validation_data, validation_split, int_labels)
        metric_fns = self._metric_fns
        rng = check_rng(seed, who)
        n = len(X)
        plateau = isinstance(scheduler, optim.ReduceLROnPlateau)
        loader = DataLoader(X, y, sampler=_FitSampler(n, batch_size, shuffle, rng), background=_spare_cpu())
        nbatches = len(loader)

        history = History()
        history.params = {"epochs": int(epochs), "batch_size": batch_size, "samples": n, "steps": nbatches,
                          "validation_samples": 0 if Xv is None else len(Xv), "tol": tol}
        history.stop_reason = "epochs"
        self.history = history
        out_stream = sys.stdout
        logs = {}
        model.stop_training = False

        with _SigintFlag() as sigint, _ModeRestorer(model, True):
            cbs.train_begin()
            try:
                for epoch in range(epochs):
                    t0 = time.perf_counter()
                    lr = _get_lr(optimizer)
                    for cb in cbs.epoch_begin:
                        cb.on_epoch_begin(epoch, {})
                    bar = ProgressBar(nbatches, f"Epoch {epoch + 1}/{epochs}") if verbose == 1 else None
                    it = iter(loader)
                    try:
                        logs = self._run_epoch(it, nbatches, cbs, epoch, bar, sigint, True, y)
                    finally:
                        it.close()
                        if bar is not None:
                            bar.close()
                    if sigint.raised:
                        raise KeyboardInterrupt   # the epoch was cut short: not recorded
                    if Xv is not None:
                        model.eval()
                        try:
                            vlogs = _evaluate_arrays(model, self.loss_fn, Xv, yv, max(batch_size or 0, 1024),
                                                     metric_fns, int_labels, who, "y_val")
                        finally:
                            model.train()
                        logs.update({"val_" + k: v for k, v in vlogs.items()})
                    if lr is not None:
                        logs["lr"] = lr
                    logs["seconds"] = time.perf_counter() - t0
                    history._append(epoch, logs)
                    if verbose:
                        print(format_epoch_line(epoch, epochs, logs), file=out_stream, flush=True)

                    stop = cbs.epoch_end(epoch, logs)
                    if scheduler is not None:
                        if plateau:
                            scheduler.step(logs.get("val_loss", logs["loss"]))
                        else:
                            scheduler.step()
                    if stop is None and getattr(model, "stop_training", False):
                        stop = "callback"
                    if stop is None and tol is not None and len(history) >= 2:
                        if abs(history["loss"][-1] - history["loss"][-2]) < tol:
                            stop = "tol"
                    if stop is None and sigint.raised:
                        stop = "interrupted"
                    if stop is not None:
                        history.stop_reason = stop
                        break
            except KeyboardInterrupt:
                history.stop_reason = "interrupted"
                if verbose:
                    print(f"fit: interrupted; returning the History of {len(history)} completed epoch(s)",
                          file=sys.stderr, flush=True)
            finally:
                cbs.train_end(logs)
        return history

    def evaluate(self, X, y, *, batch_size=1024):
        return evaluate(self.model, self.loss_fn, X, y, batch_size=batch_size, metrics=self.metrics)

    def predict(self, X, *, batch_size=1024):
        return predict(self.model, X, batch_size=batch_size)

    def __repr__(self):
        return f"Trainer(model={self.model!r}, loss_fn={self.loss_fn!r}, optimizer={self.optimizer!r})"
