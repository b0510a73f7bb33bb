"""fastdl.train: fit / evaluate / predict / Trainer / History / EarlyStopping, and fastdl.progress.

Control flow (batching and sampling, stopping rules, callbacks, Ctrl-C, history, printing, input
checks) is tested with a NumPy linear module built on fastdl.nn.Module and a NumPy squared loss
defined here, so that every step is visible and checkable; fastdl's real SGD and schedulers update
it. The end-to-end tests at the bottom train real fastdl networks (XOR).
"""
import os
import signal

import numpy as np
import pytest

from fastdl import nn, optim
from fastdl.progress import PlainProgressBar, ProgressBar, format_epoch_line
from fastdl.train import Callback, EarlyStopping, History, Trainer, evaluate, fit, predict
import fastdl.progress as progress_mod


# ---------------------------------------------------------------- test doubles

def rowwise_affine(x, w, b):
    """x Wᵀ + b in float32, one input feature at a time: each row's output is the same sum in the
    same order whatever the other rows, as the batching tests need. (NumPy's ``@`` calls BLAS, whose
    kernels and summation order depend on the number of rows: a 10-row and a 3-row product of the
    same rows differ in the last bit for most weights.)"""
    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    out = x[:, :1] * w[:, 0]
    for j in range(1, x.shape[1]):
        out += x[:, j:j + 1] * w[:, j]
    return (out + b).astype(np.float32)


class NumpyLinear(nn.Module):
    """y = x Wᵀ + b in NumPy, with real fastdl Parameters; records what every call saw.

    ``calls``: (training flag, first column of x) per forward; put the example index in column 0
    to see which examples a batch held.
    """

    def __init__(self, d, k=1):
        super().__init__()
        self.weight = nn.Parameter(np.zeros((k, d), np.float32))
        self.bias = nn.Parameter(np.zeros(k, np.float32))
        self.calls = []
        self.dtypes = []

    def forward(self, x):
        self.calls.append((self.training, np.array(x[:, 0])))
        self.dtypes.append((x.dtype, x.flags.c_contiguous))
        self._x = x
        return rowwise_affine(x, self.weight.data, self.bias.data)

    def backward(self, dout):
        self.weight.grad += (dout.T @ self._x).astype(np.float32)
        self.bias.grad += dout.sum(axis=0).astype(np.float32)
        return dout @ self.weight.data

    def train_batches(self):
        return [idx for training, idx in self.calls if training]

    def eval_batches(self):
        return [idx for training, idx in self.calls if not training]


class SquaredLoss:
    """mean((out - y)²) in float64 NumPy; records the targets' dtype."""
    reduction = "mean"

    def __init__(self, nan_at_call=None):
        self.calls = 0
        self.nan_at_call = nan_at_call
        self.target_dtypes = []

    def __call__(self, out, y):
        self.calls += 1
        self.target_dtypes.append(y.dtype)
        self.d = out.astype(np.float64) - y
        if self.calls == self.nan_at_call:
            return float("nan")
        return float(np.mean(self.d ** 2))

    def backward(self):
        return (2.0 * self.d / self.d.size).astype(np.float32)


class NumpyCrossEntropy(nn.CrossEntropyLoss):
    """Softmax cross-entropy in NumPy (fit treats it as a CrossEntropyLoss: integer labels)."""

    def __call__(self, out, y):
        self.seen_dtype = y.dtype
        z = out.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        self.g = p.copy()
        self.g[np.arange(len(y)), y] -= 1
        self.g /= len(y)
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))

    def backward(self):
        return self.g.astype(np.float32)


class CountingSGD(optim.SGD):
    """fastdl's SGD that counts its steps and can run a hook inside step()."""

    def __init__(self, params, lr, hook=None):
        super().__init__(params, lr=lr)
        self.steps = 0
        self.completed = 0
        self.hook = hook

    def step(self, closure=None):
        self.steps += 1
        if self.hook is not None:
            self.hook(self.steps)
        super().step()
        self.completed += 1


def indexed_data(n, d=2, seed=0):
    """X whose column 0 is the example index, y linear in X."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), np.float32)
    X[:, 0] = np.arange(n)
    X[:, 1:] = rng.normal(size=(n, d - 1))
    y = (X[:, 1:].sum(axis=1) * 0.5 + 0.1).astype(np.float32)
    return X, y


def linreg_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    return X, y


def setup(d=3, lr=0.1, **kw):
    model = NumpyLinear(d)
    return model, SquaredLoss(), CountingSGD(model.parameters(), lr=lr, **kw)


# ---------------------------------------------------------------- the three forms of gradient descent

def test_full_batch_takes_one_step_per_epoch_over_all_examples():
    X, y = indexed_data(50)
    model, loss, opt = setup(2, lr=0.01)
    h = fit(model, loss, opt, X, y, epochs=4, batch_size=None, seed=0, verbose=0)
    assert opt.steps == 4 and len(h) == 4
    for idx in model.train_batches():
        np.testing.assert_array_equal(idx, np.arange(50))
    assert h.params["steps"] == 1


def test_minibatches_are_a_fresh_seeded_permutation_each_epoch():
    n, k, epochs, seed = 100, 32, 3, 11
    X, y = indexed_data(n)
    model, loss, opt = setup(2, lr=0.01)
    fit(model, loss, opt, X, y, epochs=epochs, batch_size=k, seed=seed, verbose=0)
    batches = model.train_batches()
    assert opt.steps == epochs * 4 and len(batches) == epochs * 4            # ceil(100 / 32)
    assert [len(b) for b in batches[:4]] == [32, 32, 32, 4]
    rng = np.random.default_rng(seed)
    for e in range(epochs):
        got = np.concatenate(batches[4 * e:4 * e + 4]).astype(np.int64)
        np.testing.assert_array_equal(got, rng.permutation(n))                 # every example once, in the seeded order
    assert not np.array_equal(np.concatenate(batches[0:4]), np.concatenate(batches[4:8]))


def test_minibatch_remainder_of_one_joins_the_previous_batch():
    X, y = indexed_data(97)
    model, loss, opt = setup(2, lr=0.01)
    h = fit(model, loss, opt, X, y, epochs=1, batch_size=32, seed=0, verbose=0)
    assert [len(b) for b in model.train_batches()] == [32, 32, 33]
    assert h.params["steps"] == 3 and opt.steps == 3


def test_sgd_draws_single_examples_uniformly_with_replacement():
    n, epochs, seed = 40, 3, 7
    X, y = indexed_data(n)
    model, loss, opt = setup(2, lr=0.001)
    fit(model, loss, opt, X, y, epochs=epochs, batch_size=1, seed=seed, verbose=0)
    batches = model.train_batches()
    assert opt.steps == n * epochs and all(len(b) == 1 for b in batches)
    drawn = np.concatenate(batches).astype(np.int64)
    rng = np.random.default_rng(seed)
    expected = np.concatenate([rng.integers(0, n, size=n) for _ in range(epochs)])
    np.testing.assert_array_equal(drawn, expected)
    assert len(np.unique(drawn[:n])) < n                                       # with replacement: repeats occur


def test_sgd_draws_are_uniform():
    # 10 examples, 300 epochs: 3000 draws; chi-square with 9 degrees of freedom below its 0.1% quantile
    n, epochs = 10, 300
    X, y = indexed_data(n)
    model, loss, opt = setup(2, lr=1e-4)
    fit(model, loss, opt, X, y, epochs=epochs, batch_size=1, seed=3, verbose=0)
    counts = np.bincount(np.concatenate(model.train_batches()).astype(np.int64), minlength=n)
    expected = n * epochs / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.88


def test_shuffle_false_walks_in_order():
    X, y = indexed_data(10)
    model, loss, opt = setup(2, lr=0.01)
    fit(model, loss, opt, X, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    got = [b.astype(int).tolist() for b in model.train_batches()]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2


def test_same_seed_same_run_and_generator_seed_accepted():
    X, y = linreg_data()
    runs = []
    for seed in (5, 5, np.random.default_rng(5)):
        model, loss, opt = setup(lr=0.05)
        h = fit(model, loss, opt, X, y, epochs=3, batch_size=8, seed=seed, verbose=0)
        runs.append((h["loss"], model.weight.data.copy()))
    assert runs[0][0] == runs[1][0] == runs[2][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_fit_learns_a_linear_map():
    X, y = linreg_data()
    model, loss, opt = setup(lr=0.1)
    h = fit(model, loss, opt, X, y, epochs=200, batch_size=None, verbose=0)
    np.testing.assert_allclose(model.weight.data[0], [1.0, -2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(model.bias.data, [0.3], atol=1e-3)
    assert h["loss"][-1] < 1e-6 < h["loss"][0]


# ---------------------------------------------------------------- stopping

def test_tol_stops_on_small_loss_change():
    X, y = linreg_data()
    model, loss, opt = setup(lr=0.05)
    tol = 1e-4
    h = fit(model, loss, opt, X, y, epochs=1000, batch_size=None, tol=tol, verbose=0)
    L = np.array(h["loss"])
    assert h.stop_reason == "tol" and 2 < len(L) < 1000
    assert abs(L[-1] - L[-2]) < tol
    assert np.all(np.abs(np.diff(L[:-1])) >= tol)            # the rule did not hold earlier
    model, loss, opt = setup(lr=0.05)
    assert fit(model, loss, opt, X, y, epochs=5, verbose=0).stop_reason == "epochs"


def test_early_stopping_restores_best_weights():
    # train towards y = 2x; validation wants y = 0.5x: val_loss falls while w < 0.5, then rises
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(-1, 1)
    model = NumpyLinear(1)
    opt = optim.SGD(model.parameters(), lr=0.05)
    weights = []
    es = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    h = fit(model, SquaredLoss(), opt, x, 2 * x, epochs=200, batch_size=None, validation_data=(x, 0.5 * x),
            callbacks=[es, lambda e, logs: weights.append(model.weight.data.copy())], verbose=0)
    best = int(np.argmin(h["val_loss"]))
    assert h.stop_reason == "early_stopping"
    assert es.best_epoch == best and es.stopped_epoch == best + 3 and len(h) == best + 4
    np.testing.assert_array_equal(model.weight.data, weights[best])   # restored
    assert not np.array_equal(weights[-1], weights[best])


def test_early_stopping_rule_min_delta_and_modes():
    es = EarlyStopping(monitor="loss", patience=2, min_delta=0.01)
    assert [es(e, {"loss": v}) for e, v in enumerate([1.0, 0.95, 0.945, 0.944])] == [False, False, False, True]
    assert es.best == 0.95 and es.best_epoch == 1 and es.stopped_epoch == 3
    acc = EarlyStopping(monitor="val_accuracy", patience=1)        # auto: accuracy is maximised
    assert [acc(e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.7, 0.6])] == [False, False, True]
    low = EarlyStopping(monitor="val_accuracy", patience=1, mode="min")
    assert [low(e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.7])] == [False, True]
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_early_stopping_without_validation_data_says_so():
    X, y = linreg_data()
    model, loss, opt = setup()
    with pytest.raises(ValueError, match="val_loss.*validation_split"):
        fit(model, loss, opt, X, y, epochs=3, callbacks=[EarlyStopping()], verbose=0)
    assert model.training  # mode restored after the error


def test_callback_returning_true_stops_and_every_callback_sees_each_epoch():
    X, y = linreg_data()
    model, loss, opt = setup()
    seen_a, seen_b, hooks = [], [], []

    class Hooked:
        def on_train_begin(self, m):
            hooks.append(("begin", m is model))

        def on_train_end(self, m):
            hooks.append(("end", m is model))

        def __call__(self, epoch, logs):
            seen_b.append(epoch)
            return "yes"                                 # not True: does not stop

    h = fit(model, loss, opt, X, y, epochs=10, verbose=0,
            callbacks=[lambda e, logs: seen_a.append(dict(logs)) or e == 3, Hooked()])
    assert h.stop_reason == "callback" and len(h) == 4
    assert [s["loss"] for s in seen_a] == h["loss"] and seen_b == [0, 1, 2, 3]
    assert set(seen_a[0]) == {"loss", "lr", "seconds"}
    assert hooks == [("begin", True), ("end", True)]
    with pytest.raises(TypeError, match="callbacks"):
        fit(model, loss, opt, X, y, epochs=1, callbacks=[3], verbose=0)


# ---------------------------------------------------------------- Ctrl-C and errors

def test_keyboard_interrupt_from_a_callback_returns_history_so_far():
    X, y = linreg_data()
    model, loss, opt = setup()
    model.eval()

    def interrupt(epoch, logs):
        if epoch == 2:
            raise KeyboardInterrupt

    h = fit(model, loss, opt, X, y, epochs=10, callbacks=[interrupt], verbose=0)
    assert h.stop_reason == "interrupted" and len(h) == 3 and h.epoch == [0, 1, 2]
    assert not model.training                             # previous mode restored
    out = predict(model, X)                               # the model is usable
    assert out.shape == (len(X), 1) and np.isfinite(out).all()


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT has a custom handler in this process")
def test_ctrl_c_finishes_the_current_batch_then_stops():
    X, y = indexed_data(64)

    def press_ctrl_c(step):
        if step == 6:                                     # epoch 2 (4 batches of 16 per epoch), batch 2
            os.kill(os.getpid(), signal.SIGINT)

    model = NumpyLinear(2)
    opt = CountingSGD(model.parameters(), lr=0.01, hook=press_ctrl_c)
    h = fit(model, SquaredLoss(), opt, X, y, epochs=10, batch_size=16, seed=0, verbose=0)
    assert opt.steps == 6 and opt.completed == 6          # the interrupted step was finished, no further one
    assert h.stop_reason == "interrupted" and len(h) == 1  # only the completed epoch is recorded
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert np.isfinite(predict(model, X)).all()


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT has a custom handler in this process")
def test_second_ctrl_c_interrupts_at_once():
    X, y = indexed_data(64)

    def press_twice(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    model = NumpyLinear(2)
    opt = CountingSGD(model.parameters(), lr=0.01, hook=press_twice)
    h = fit(model, SquaredLoss(), opt, X, y, epochs=10, batch_size=16, seed=0, verbose=0)
    assert opt.steps == 3 and opt.completed == 2 and h.stop_reason == "interrupted" and len(h) == 0


def test_non_finite_loss_raises_naming_epoch_batch_and_learning_rate():
    X, y = linreg_data(64)
    model = NumpyLinear(3)
    opt = CountingSGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 3 of 4.*lower learning rate"):
        fit(model, SquaredLoss(nan_at_call=7), opt, X, y, epochs=5, batch_size=16, verbose=0)
    assert opt.steps == 6                                 # the bad batch's update was not applied
    assert model.training


class NanGradientLoss(SquaredLoss):
    """A finite loss whose gradient holds a NaN at one call: only the optimizer can see it."""

    def __init__(self, nan_grad_at_call):
        super().__init__()
        self.nan_grad_at_call = nan_grad_at_call

    def backward(self):
        g = super().backward()
        if self.calls == self.nan_grad_at_call:
            g[0, 0] = np.nan
        return g


def test_a_non_finite_gradient_raises_fits_error_and_no_update():
    # output and loss finite, the gradient not: the optimizer refuses it and fit reports the batch
    X, y = linreg_data(64)
    model = NumpyLinear(3)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match=r"fit: a gradient is not finite at epoch 2, batch 3 of 4.*lower "
                                                 r"learning rate \(now 0.1\)") as e:
        fit(model, NanGradientLoss(nan_grad_at_call=7), opt, X, y, epochs=5, batch_size=16, verbose=0)
    assert "SGD.step: the gradient of parameter 0" in str(e.value.__cause__)
    assert np.isfinite(model.weight.data).all() and np.isfinite(model.bias.data).all()  # the NaN was not applied
    assert model.training


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.L1Loss()])
def test_a_diverging_real_network_raises_floating_point_error(loss_fn):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(64, 4)) * 10).astype(np.float32)
    y = (X.sum(axis=1) * 100).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 16, rng=0), nn.ReLU(), nn.Linear(16, 1, rng=1))
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+ of 4.*lower learning rate \(now 10.0\)"):
        fit(model, loss_fn, optim.SGD(model.parameters(), lr=10.0), X, y, epochs=50, batch_size=16, verbose=0)
    assert model.training


# ---------------------------------------------------------------- history, validation, schedulers, modes

def test_history_contents():
    X, y = linreg_data(80)
    model, loss, opt = setup(lr=0.05)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    h = fit(model, loss, opt, X, y, epochs=3, batch_size=16, validation_split=0.25, metrics=["mae"],
            scheduler=sched, verbose=0)
    assert isinstance(h, History) and h.epoch == [0, 1, 2] and len(h) == 3
    assert set(h.keys()) == {"loss", "mae", "val_loss", "val_mae", "lr", "seconds"}
    assert all(len(v) == 3 for v in h.history.values())
    assert h["lr"] == [0.05, 0.025, 0.0125]
    assert all(s > 0 for s in h["seconds"])
    assert h.params["samples"] == 60 and h.params["validation_samples"] == 20 and h.params["steps"] == 4
    assert h["loss"] is h.history["loss"] and "val_loss" in h
    # val_loss is the loss of the final weights of each epoch on the last 20 rows, in eval mode
    m2, l2, o2 = setup(lr=0.05)
    h2 = fit(m2, l2, o2, X, y, epochs=1, batch_size=16, validation_split=0.25, metrics=["mae"], verbose=0)
    ref = evaluate(m2, SquaredLoss(), X[60:], y[60:], metrics=["mae"])
    assert h2["val_loss"][0] == pytest.approx(ref["loss"], rel=1e-6)
    assert h2["val_mae"][0] == pytest.approx(ref["mae"], rel=1e-6)
    assert "History(epochs=3" in repr(h)


def test_validation_split_is_the_last_fraction_in_eval_mode():
    X, y = indexed_data(50)
    model, loss, opt = setup(2, lr=0.01)
    fit(model, loss, opt, X, y, epochs=2, batch_size=8, validation_split=0.2, seed=1, verbose=0)
    train_seen = np.concatenate(model.train_batches()).astype(int)
    assert set(train_seen) == set(range(40))
    for idx in model.eval_batches():
        np.testing.assert_array_equal(idx, np.arange(40, 50))
    assert len(model.eval_batches()) == 2 and model.training


def test_validation_data_beats_split_and_is_checked():
    X, y = linreg_data(40)
    model, loss, opt = setup()
    h = fit(model, loss, opt, X, y, epochs=1, validation_data=(X[:10], y[:10]), validation_split=0.5, verbose=0)
    assert h.params["samples"] == 40 and h.params["validation_samples"] == 10
    with pytest.raises(ValueError, match="X_val has 2 features"):
        fit(model, loss, opt, X, y, epochs=1, validation_data=(X[:, :2], y), verbose=0)
    with pytest.raises(ValueError, match="validation_data must be a pair"):
        fit(model, loss, opt, X, y, epochs=1, validation_data=X, verbose=0)


def test_reduce_lr_on_plateau_gets_the_monitored_value():
    X, y = linreg_data(40)
    got = []

    class Spy(optim.ReduceLROnPlateau):
        def step(self, metric):
            got.append(metric)
            super().step(metric)

    model, loss, opt = setup(lr=0.05)
    h = fit(model, loss, opt, X, y, epochs=3, validation_split=0.25, scheduler=Spy(opt), verbose=0)
    assert got == h["val_loss"]
    model, loss, opt = setup(lr=0.05)
    got.clear()
    h = fit(model, loss, opt, X, y, epochs=3, scheduler=Spy(opt), verbose=0)
    assert got == h["loss"]


def test_modes_during_and_after_fit_evaluate_predict():
    X, y = linreg_data(20)
    model, loss, opt = setup()
    fit(model, loss, opt, X, y, epochs=1, batch_size=None, validation_split=0.5, verbose=0)
    assert [t for t, _ in model.calls] == [True, False] and model.training
    model.eval()
    fit(model, loss, opt, X, y, epochs=1, batch_size=None, verbose=0)
    assert model.calls[-1][0] is True and not model.training
    model.train()
    model.calls.clear()
    evaluate(model, loss, X, y)
    predict(model, X)
    assert [t for t, _ in model.calls] == [False, False] and model.training


def test_the_numpy_double_is_independent_of_the_batch():
    """What test_evaluate_and_predict_batching relies on, for many weights (with ``x @ W.T`` most of
    these draws gave different bits for the 10-row batch and the 3-row ones)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        X = rng.normal(size=(10, 3)).astype(np.float32)
        model = NumpyLinear(3, k=2)
        model.weight.data = rng.normal(size=(2, 3))
        model.bias.data = rng.normal(size=2)
        full = model(X)
        np.testing.assert_array_equal(full, np.concatenate([model(X[i:i + 3]) for i in range(0, 10, 3)]))
        np.testing.assert_allclose(full, X.astype(np.float64) @ model.weight.data.T.astype(np.float64)
                                   + model.bias.data, rtol=1e-5, atol=1e-5)


def test_evaluate_and_predict_batching():
    X, y = linreg_data(10)
    model, loss, opt = setup()
    fit(model, loss, opt, X, y, epochs=3, verbose=0)
    full = predict(model, X, batch_size=None)
    parts = predict(model, X, batch_size=3)
    np.testing.assert_array_equal(full, parts)
    assert full.dtype == np.float32 and full.shape == (10, 1)
    r1 = evaluate(model, loss, X, y, batch_size=3, metrics=["mae", "mse"])
    r2 = evaluate(model, loss, X, y, batch_size=None, metrics=("mae", "mse"))
    assert set(r1) == {"loss", "mae", "mse"}
    for k in r1:
        assert r1[k] == pytest.approx(r2[k], rel=1e-6)
    assert r1["mse"] == pytest.approx(r1["loss"], rel=1e-6)
    assert r1["mae"] == pytest.approx(float(np.abs(full[:, 0] - y).mean()), rel=1e-5)


def test_accuracy_metric_argmax_and_thresholds():
    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out[x[:, 0].astype(int)]

    X = np.arange(4, dtype=np.float32).reshape(-1, 1)
    multi = np.array([[2, 1, 0], [0, 3, 1], [0, 0, 1], [5, 0, 0]], np.float32)
    r = evaluate(Fixed(multi), NumpyCrossEntropy(), X, np.array([0, 1, 2, 1]))
    assert r["accuracy"] == 0.75                                      # argmax over the outputs
    logits = np.array([[-0.2], [0.3], [0.1], [-2.0]], np.float32)
    t = np.array([0.0, 1.0, 0.0, 0.0], np.float32)

    class BCE(nn.BCEWithLogitsLoss):
        def __call__(self, out, y):
            return 0.0

    assert evaluate(Fixed(logits), BCE(), X, t)["accuracy"] == 0.75   # logits split at 0
    probs = np.array([[0.2], [0.3], [0.6], [0.4]], np.float32)
    assert evaluate(Fixed(probs), SquaredLoss(), X, t, metrics=["accuracy"])["accuracy"] == 0.5  # at 0.5
    assert "accuracy" not in evaluate(Fixed(probs), SquaredLoss(), X, t)   # no default metric for regression
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(Fixed(probs), SquaredLoss(), X, t, metrics=["f1"])
    assert evaluate(Fixed(probs), SquaredLoss(), X, t, metrics=[lambda yt, yp: 7.0]) == {"loss": pytest.approx(0.2625), "<lambda>": 7.0}


def test_trainer_wraps_fit_evaluate_predict():
    X, y = linreg_data(40)
    model, loss, opt = setup(lr=0.1)
    tr = Trainer(model, loss, opt, metrics=["mae"])
    h = tr.fit(X, y, epochs=50, batch_size=None, verbose=0)
    assert tr.history is h and "mae" in h
    r = tr.evaluate(X, y)
    assert set(r) == {"loss", "mae"} and r["loss"] < h["loss"][0]
    np.testing.assert_array_equal(tr.predict(X), predict(model, X))


# ---------------------------------------------------------------- printing

def test_verbose_0_prints_nothing(capsys):
    X, y = linreg_data(40)
    model, loss, opt = setup()
    fit(model, loss, opt, X, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("use_tqdm", [True, False])
def test_verbose_1_bar_and_one_line_per_epoch(capsys, monkeypatch, use_tqdm):
    if use_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setattr(progress_mod, "_tqdm", None)          # the plain bar
        monkeypatch.setattr(progress_mod, "_MIN_INTERVAL", 0.0)
    X, y = linreg_data(40)
    model, loss, opt = setup()
    h = fit(model, loss, opt, X, y, epochs=4, batch_size=8, validation_split=0.2, metrics=["mae"], verbose=1)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4
    for e, line in enumerate(lines):
        assert line.startswith(f"Epoch {e + 1}/4 - ") and "loss: " in line and "val_mae: " in line
        assert f"{h['loss'][e]:.4f}" in line
    assert "\r" in err                                           # a bar was drawn (and erased) on stderr
    if not use_tqdm:
        assert "[" in err and "4/4" in err


def test_verbose_2_lines_only(capsys):
    X, y = linreg_data(40)
    model, loss, opt = setup()
    fit(model, loss, opt, X, y, epochs=2, verbose=2)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and err == ""


def test_progress_pieces():
    import io
    buf = io.StringIO()
    bar = PlainProgressBar(5, "Epoch 1/2", file=buf, min_interval=0.0)
    bar.set_postfix_str("loss: 1.0000")
    for _ in range(5):
        bar.update()
    bar.close()
    text = buf.getvalue()
    assert "Epoch 1/2 [" in text and "5/5 loss: 1.0000" in text and text.endswith("\r")
    assert format_epoch_line(0, 3, {"loss": 0.5, "lr": 0.1, "seconds": 1.25}) == \
        "Epoch 1/3 - 1.25s - loss: 0.5000 - lr: 0.1"
    with ProgressBar(3, use_tqdm=False, file=io.StringIO()) as pb:
        pb.update(1, loss=0.25)
        assert not pb.uses_tqdm


# ---------------------------------------------------------------- input checks

def test_bad_inputs():
    X, y = linreg_data(20)
    model, loss, opt = setup()
    kw = dict(epochs=1, verbose=0)
    with pytest.raises(ValueError, match="2-D"):
        fit(model, loss, opt, X[:, 0], y, **kw)
    with pytest.raises(ValueError, match="different lengths: 20 and 19"):
        fit(model, loss, opt, X, y[:-1], **kw)
    with pytest.raises(TypeError, match="real numbers"):          # a wrong type: fastdl._validation's rule
        fit(model, loss, opt, np.array([["a", "b", "c"]] * 20), y, **kw)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(model, loss, opt, Xn, y, **kw)
    with pytest.raises(ValueError, match="NaN"):
        fit(model, loss, opt, X, np.full(20, np.inf), **kw)
    with pytest.raises(ValueError, match="empty"):
        fit(model, loss, opt, np.zeros((0, 3)), np.zeros(0), **kw)
    for bad in (dict(epochs=-1), dict(batch_size=0), dict(validation_split=1.0), dict(validation_split=1e-17),
                dict(tol=-1.0), dict(verbose=3)):
        with pytest.raises(ValueError):
            fit(model, loss, opt, X, y, **{**kw, **bad})
    for bad in (dict(epochs=2.5), dict(batch_size=True), dict(batch_size="32"), dict(shuffle="yes"),
                dict(seed="0"), dict(validation_split="0.2"), dict(tol="small")):
        with pytest.raises(TypeError):
            fit(model, loss, opt, X, y, **{**kw, **bad})
    with pytest.raises(ValueError, match="2-D"):
        predict(model, X[0])
    with pytest.raises(ValueError, match="different lengths"):
        evaluate(model, loss, X, y[:3])


def test_inputs_converted_once_float32_and_int64_labels():
    X, y = linreg_data(20)
    model, loss, opt = setup()
    fit(model, loss, opt, X.astype(np.float64), y.astype(np.float64), epochs=2, batch_size=7, verbose=0)
    assert all(dt == (np.float32, True) for dt in model.dtypes)
    assert all(dt == np.float32 for dt in loss.target_dtypes)
    # float32 C-contiguous input is used as is (full batch: the very same memory)
    seen = []
    model2 = NumpyLinear(3)
    model2.forward = lambda x, f=model2.forward: (seen.append(x), f(x))[1]
    fit(model2, SquaredLoss(), optim.SGD(model2.parameters(), lr=0.1), X, y, epochs=1, batch_size=None, verbose=0)
    assert np.shares_memory(seen[0], X)
    # CrossEntropyLoss: integer labels of any width become int64; floats and bad labels are refused
    Xc = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    clf = NumpyLinear(3, k=3)
    ce = NumpyCrossEntropy()
    h = fit(clf, ce, optim.SGD(clf.parameters(), lr=0.1), Xc, np.arange(12, dtype=np.uint8) % 3, epochs=1,
            verbose=0)
    assert ce.seen_dtype == np.int64 and "accuracy" in h
    opt_c = optim.SGD(clf.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="integer class labels"):
        fit(clf, ce, opt_c, Xc, np.zeros(12), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=">= 0"):
        fit(clf, ce, opt_c, Xc, -np.ones(12, int), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="label 3, but the model has 3 outputs"):
        fit(clf, ce, opt_c, Xc, np.arange(12) % 4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="argmax"):
        fit(clf, ce, opt_c, Xc, np.eye(3)[np.arange(12) % 3].astype(int), epochs=1, verbose=0)


# ---------------------------------------------------------------- end to end with real fastdl networks

def xor_data():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    return X, np.array([0, 1, 1, 0])


def test_xor_learned_by_a_small_network():
    X, y = xor_data()
    model = nn.Sequential(nn.Linear(2, 8, rng=0), nn.Tanh(), nn.Linear(8, 2, rng=1))
    h = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), X, y,
            epochs=300, batch_size=None, seed=0, verbose=0)
    assert h["accuracy"][-1] == 1.0 and h["loss"][-1] < 0.05
    np.testing.assert_array_equal(predict(model, X).argmax(axis=1), y)
    assert evaluate(model, nn.CrossEntropyLoss(), X, y)["accuracy"] == 1.0


def test_xor_with_sgd_one_example_at_a_time_and_bce():
    X, y = xor_data()
    model = nn.Sequential(nn.Linear(2, 8, rng=2), nn.ReLU(), nn.Linear(8, 1, rng=3))
    h = fit(model, nn.BCEWithLogitsLoss(), optim.SGD(model.parameters(), lr=0.1), X, y,
            epochs=300, batch_size=1, seed=1, verbose=0)
    assert h.params["steps"] == 4 and h["loss"][-1] < 0.1
    assert evaluate(model, nn.BCEWithLogitsLoss(), X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal((predict(model, X)[:, 0] > 0).astype(int), y)


def test_early_stopping_restores_a_real_network():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 32, rng=0), nn.ReLU(), nn.Linear(32, 2, rng=1))
    snaps = []
    es = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), X, y, epochs=300,
            batch_size=8, seed=0, validation_split=0.5, verbose=0,
            callbacks=[es, lambda e, logs: snaps.append(model.state_dict())])
    assert h.stop_reason == "early_stopping"
    best = int(np.argmin(h["val_loss"]))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, snaps[best][k])
    assert evaluate(model, nn.CrossEntropyLoss(), X[30:], y[30:])["loss"] == pytest.approx(h["val_loss"][best], rel=1e-5)


# ---------------------------------------------------------------- any rank, checks once, the DataLoader underneath

def test_fit_evaluate_predict_take_images_of_any_rank():
    rng = np.random.default_rng(0)
    X4 = rng.normal(size=(96, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 4, size=96)

    def run(X, flatten):
        layers = [nn.Flatten()] if flatten else []
        model = nn.Sequential(*layers, nn.Linear(784, 4, rng=0))
        h = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), X, y, epochs=2,
                batch_size=32, seed=3, validation_split=0.25, verbose=0)
        return model, h

    m4, h4 = run(X4, True)
    m2, h2 = run(X4.reshape(96, 784), False)
    assert h4["loss"] == h2["loss"] and h4["val_loss"] == h2["val_loss"]      # the same computation
    np.testing.assert_array_equal(m4[1].weight.data, m2[0].weight.data)
    np.testing.assert_array_equal(predict(m4, X4), predict(m2, X4.reshape(96, 784)))
    r = evaluate(m4, nn.CrossEntropyLoss(), X4, y)
    assert set(r) == {"loss", "accuracy"}
    tr = Trainer(m4, nn.CrossEntropyLoss(), optim.SGD(m4.parameters(), lr=0.05))
    assert np.isfinite(tr.train_step(X4[:8], y[:8]))
    with pytest.raises(ValueError, match="X_val has rows of shape"):
        fit(m4, nn.CrossEntropyLoss(), optim.SGD(m4.parameters(), lr=0.05), X4, y, epochs=1, verbose=0,
            validation_data=(X4[:5, :, :27], y[:5]))


def test_inputs_are_checked_once_per_fit_not_per_layer_or_batch(monkeypatch):
    import fastdl._validation as validation
    import fastdl.train as train_mod
    calls = {"as_float32": 0, "all_finite_X": 0}
    real = validation.as_float32

    def counting(x, who, *a, **k):
        if "Loss" not in who:  # the loss checks its own inputs per call (the public loss API); layers must not
            calls["as_float32"] += 1
        return real(x, who, *a, **k)

    monkeypatch.setattr(validation, "as_float32", counting)  # what every layer's public forward calls
    real_finite = train_mod.ops.all_finite
    X = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)

    def finite(a):
        if a.shape == X.shape:
            calls["all_finite_X"] += 1
        return real_finite(a)

    monkeypatch.setattr(train_mod.ops, "all_finite", finite)
    y = (X[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(6, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=3, batch_size=8,
        verbose=0)
    assert calls == {"as_float32": 0, "all_finite_X": 1}           # no layer re-checks, X checked once


def test_fit_draws_exactly_the_batches_of_epoch_batches():
    from fastdl.train import _epoch_batches
    for n, bs, shuffle in [(97, 32, True), (40, 1, True), (10, 4, False), (50, None, True), (33, 32, True)]:
        X, y = indexed_data(n)
        model, loss, opt = setup(2, lr=0.001)
        fit(model, loss, opt, X, y, epochs=3, batch_size=bs, shuffle=shuffle, seed=4, verbose=0)
        rng = np.random.default_rng(4)
        want = [np.arange(n)[b] for _ in range(3) for b in _epoch_batches(n, bs, shuffle, rng)]
        got = model.train_batches()
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.astype(np.int64), w)


# ---------------------------------------------------------------- the three levels and the callbacks

def test_train_step_train_epoch_and_fit_are_one_loop():
    from fastdl.data import DataLoader
    X, y = linreg_data(48)
    runs = []
    for how in ("fit", "trainer.fit", "epochs", "steps"):
        model, loss, opt = setup(lr=0.05)
        tr = Trainer(model, loss, opt)
        if how == "fit":
            losses = fit(model, loss, opt, X, y, epochs=2, batch_size=16, shuffle=False, verbose=0)["loss"]
        elif how == "trainer.fit":
            losses = tr.fit(X, y, epochs=2, batch_size=16, shuffle=False, verbose=0)["loss"]
        elif how == "epochs":
            loader = DataLoader(X, y.reshape(-1, 1), batch_size=16)
            losses = [tr.train_epoch(loader)["loss"] for _ in range(2)]
        else:
            losses = []
            for _ in range(2):
                steps = [tr.train_step(X[a:a + 16], y[a:a + 16]) for a in range(0, 48, 16)]
                assert all(isinstance(s, float) for s in steps)
                losses.append(float(np.mean(steps)))
        runs.append((losses, model.weight.data.copy()))
    for losses, w in runs[1:]:
        np.testing.assert_allclose(losses, runs[0][0], rtol=1e-6)
        np.testing.assert_array_equal(w, runs[0][1])


def test_train_step_checks_and_refuses_a_diverged_batch():
    model, loss, opt = setup(lr=0.1)
    tr = Trainer(model, loss, opt)
    X, y = linreg_data(8)
    with pytest.raises(ValueError, match="Trainer.train_step: x contains NaN"):
        tr.train_step(np.full_like(X, np.nan), y)
    with pytest.raises(FloatingPointError, match="the loss became nan"):
        Trainer(model, SquaredLoss(nan_at_call=1), opt).train_step(X, y)
    with pytest.raises(TypeError, match="Trainer.train_step: x must hold real numbers"):
        tr.train_step(np.array([["a"]] * 8), y)
    with pytest.raises(ValueError, match=r"Trainer.train_step: x must be at least 2-D"):
        tr.train_step(X[:, 0], y)
    with pytest.raises(ValueError, match="Trainer.train_step: x and y have different lengths: 8 and 7"):
        tr.train_step(X, y[:7])
    with pytest.raises(ValueError, match="Trainer.train_step: y contains NaN"):
        tr.train_step(X, np.full_like(y, np.nan))


class Recorder(Callback):
    def __init__(self, stop_at_batch=None):
        self.events = []
        self.stop_at_batch = stop_at_batch

    def set_model(self, model):
        super().set_model(model)
        self.events.append(("set_model",))

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch, logs=None):
        self.events.append(("batch_begin", batch, logs["size"]))

    def on_batch_end(self, batch, logs=None):
        assert np.isfinite(logs["loss"])
        self.events.append(("batch_end", batch))
        if batch == self.stop_at_batch:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, logs=None):
        self.events.append(("train_end", sorted(logs)))


def test_callback_hooks_in_keras_order():
    X, y = linreg_data(17)                                     # batches of 8 and 9 (a remainder of one joins)
    model, loss, opt = setup()
    rec = Recorder()
    h = fit(model, loss, opt, X, y, epochs=2, batch_size=8, callbacks=[rec], verbose=0)
    keys = ["loss", "lr", "seconds"]
    epoch = [("batch_begin", 0, 8), ("batch_end", 0), ("batch_begin", 1, 9), ("batch_end", 1)]
    assert rec.events == ([("set_model",), ("train_begin",)]
                          + [("epoch_begin", 0)] + epoch + [("epoch_end", 0, keys)]
                          + [("epoch_begin", 1)] + epoch + [("epoch_end", 1, keys)]
                          + [("train_end", keys)])
    assert rec.model is model and h.stop_reason == "epochs"


def test_stop_training_from_a_batch_hook_ends_the_epoch_and_training():
    X, y = linreg_data(40)
    model, loss, opt = setup()
    rec = Recorder(stop_at_batch=1)
    h = fit(model, loss, opt, X, y, epochs=5, batch_size=8, callbacks=[rec], verbose=0)
    assert h.stop_reason == "callback" and len(h) == 1 and opt.steps == 2
    model2, loss2, opt2 = setup()
    h2 = fit(model2, loss2, opt2, X, y, epochs=2, batch_size=8, verbose=0)   # the flag is reset by fit
    assert h2.stop_reason == "epochs" and opt2.steps == 10


def test_early_stopping_is_a_callback_and_checks_types():
    es = EarlyStopping(patience=2)
    assert isinstance(es, Callback)
    with pytest.raises(TypeError, match="EarlyStopping: patience must be an int"):
        EarlyStopping(patience="3")
    with pytest.raises(TypeError, match="min_delta"):
        EarlyStopping(min_delta="0.1")
    with pytest.raises(TypeError, match="monitor"):
        EarlyStopping(monitor=3)
    with pytest.raises(TypeError, match="restore_best_weights"):
        EarlyStopping(restore_best_weights="yes")
    with pytest.raises(TypeError, match="seed"):
        fit(*setup(), *linreg_data(), epochs=1, seed="1", verbose=0)


def test_plain_callables_have_no_batch_hooks():
    from fastdl.train import _Callbacks
    cbs = _Callbacks([lambda e, logs: None, EarlyStopping()], None, "fit")
    assert cbs.batch_begin == [] and cbs.batch_end == [] and cbs.epoch_begin == []
    assert len(_Callbacks([Recorder()], None, "fit").batch_end) == 1


def test_fit_gathers_in_the_background_only_with_a_cpu_to_spare(monkeypatch):
    # a gathering thread beside as many kernel threads as CPUs takes a CPU from the step's parallel regions
    import fastdl
    import fastdl.train as train_mod
    from fastdl import _C
    from fastdl.data import DataLoader

    seen = []

    def spy(*a, **k):
        seen.append(k.get("background", True))
        return DataLoader(*a, **k)

    monkeypatch.setattr(train_mod, "DataLoader", spy)
    X = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    before = fastdl.get_num_threads()
    try:
        for threads in sorted({1, _C.available_cpus()}):
            fastdl.set_num_threads(threads)
            model = nn.Sequential(nn.Linear(6, 2, rng=0))
            fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1,
                batch_size=8, verbose=0)
            assert seen[-1] == (threads < _C.available_cpus()), threads
    finally:
        fastdl.set_num_threads(before)
