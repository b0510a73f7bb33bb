"""fastdl.estimators: classic models as scikit-learn estimators, trained with fastdl's kernels.

    from fastdl.estimators import LinearRegression, LogisticRegression, MLPClassifier, MLPRegressor

    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test); clf.loss_curve_

The conventions are scikit-learn's: hyperparameters only in ``__init__`` (stored as given,
checked by ``fit``), learned attributes end in ``_``, ``get_params`` / ``set_params``, and one
``random_state`` (None, an int, a ``np.random.Generator`` or a ``RandomState``) drives
initialization, shuffling, the validation split and dropout; the global ``np.random`` is never used.
With scikit-learn installed the estimators derive from its ``BaseEstimator`` and mixins, so they work
in ``Pipeline``, ``GridSearchCV`` and ``clone`` and pass its ``check_estimator``; without it a small
equivalent base class is used.

A bad hyperparameter raises ``InvalidParameterError`` (from ``fastdl._validation``), a subclass of both
ValueError and TypeError, as scikit-learn's estimators do; bad data raises TypeError (wrong type) or
ValueError (wrong value), with scikit-learn's wording where its checks look for it.

- ``LinearRegression``: least squares, closed form (``solver="normal"``: the normal equations solved
  stably by ``numpy.linalg.lstsq``, an SVD, never an explicit inverse) or gradient descent
  (``solver="gd"``) on a fastdl ``nn.Linear`` with ``MSELoss`` and ``optim.SGD``.
- ``LogisticRegression``: two classes, binary cross-entropy on the logit, gradient descent.
- ``MLPClassifier`` / ``MLPRegressor``: multi-layer perceptrons (``fastdl.models.mlp``) with
  scikit-learn's parameters, plus ``dropout`` and ``batch_norm``.
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

from fastdl import models, nn, ops, optim
from fastdl._validation import (InvalidParameterError, as_samples, check_bool, check_choice, check_int, check_real,
                                check_rng, invalid_parameters, numeric_array)
from fastdl.train import EarlyStopping, fit, predict

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    HAVE_SKLEARN = True
except ImportError:  # the small stand-ins below keep the same conventions
    HAVE_SKLEARN = False

__all__ = ["LinearRegression", "LogisticRegression", "MLPClassifier", "MLPRegressor",
           "NotFittedError", "ConvergenceWarning", "InvalidParameterError"]


# ---------------------------------------------------------------- estimator base (without scikit-learn)

if not HAVE_SKLEARN:
    class NotFittedError(ValueError, AttributeError):
        """Raised when an estimator is used before ``fit``."""

    class ConvergenceWarning(UserWarning):
        """``fit`` stopped at ``max_iter`` before the stopping rule was met."""

    class DataConversionWarning(UserWarning):
        """y had to be reshaped (a column vector where a 1-D array was expected)."""

    class BaseEstimator:
        """get_params / set_params / repr from the ``__init__`` signature, as scikit-learn's BaseEstimator."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

        def get_params(self, deep=True):
            out = {}
            for name in self._get_param_names():
                value = getattr(self, name)
                if deep and hasattr(value, "get_params") and not isinstance(value, type):
                    out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
                out[name] = value
            return out

        def set_params(self, **params):
            valid = self.get_params(deep=True)
            nested = {}
            for key, value in params.items():
                name, sep, sub = key.partition("__")
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                                     f"Valid parameters are: {self._get_param_names()!r}.")
                if sep:
                    nested.setdefault(name, {})[sub] = value
                else:
                    setattr(self, name, value)
                    valid[name] = value
            for name, sub in nested.items():
                valid[name].set_params(**sub)
            return self

        def __repr__(self):
            sig = inspect.signature(type(self).__init__)
            args = []
            for name in self._get_param_names():
                value = getattr(self, name)
                default = sig.parameters[name].default
                if default is inspect.Parameter.empty or not _same(value, default):
                    args.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(args)})"

    class ClassifierMixin:
        _estimator_type = "classifier"

        def score(self, X, y, sample_weight=None):
            """Mean accuracy of ``predict(X)`` against y."""
            return float(np.average(self.predict(X) == np.asarray(y), weights=sample_weight))

    class RegressorMixin:
        _estimator_type = "regressor"

        def score(self, X, y, sample_weight=None):
            """R² of ``predict(X)`` against y (averaged over outputs)."""
            return _r2_score(np.asarray(y, dtype=np.float64), np.asarray(self.predict(X), dtype=np.float64),
                             sample_weight)


def _same(a, b):
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:
        return False


def _r2_score(y, pred, sample_weight=None):
    y = y.reshape(len(y), -1)
    pred = pred.reshape(len(pred), -1)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = w[:, None]
    ss_res = (w * (y - pred) ** 2).sum(axis=0)
    ss_tot = (w * (y - np.average(y, axis=0, weights=w[:, 0])) ** 2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                  np.where(ss_res > 0, 0.0, 1.0))
    return float(r2.mean())


# ---------------------------------------------------------------- shared helpers

def _check_verbose(value, who):
    """verbose: a bool or 0, 1, 2 (InvalidParameterError otherwise)."""
    with invalid_parameters():
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        return check_int(value, who, "verbose", minimum=0, maximum=2)


def _gd_params(est, who):
    """The hyperparameters of LinearRegression / LogisticRegression, checked (InvalidParameterError)."""
    with invalid_parameters():
        return {
            "fit_intercept": check_bool(est.fit_intercept, who, "fit_intercept"),
            "lr": check_real(est.lr, who, "lr", low=0.0, low_open=True, float32=True),
            "max_iter": check_int(est.max_iter, who, "max_iter", minimum=1),
            "tol": check_real(est.tol, who, "tol", low=0.0),
            "batch_size": check_int(est.batch_size, who, "batch_size", minimum=1, allow_none=True),
            "verbose": _check_verbose(est.verbose, who),
            "rng": check_rng(est.random_state, who, "random_state"),
        }


def _check_fitted(est, attr):
    if not hasattr(est, attr):
        raise NotFittedError(f"This {type(est).__name__} instance is not fitted yet. "
                             "Call 'fit' with appropriate arguments before using this estimator.")


def _features(est, X, who):
    """X as float32 (n, n_features_in_); the fitted feature count must match."""
    X = as_samples(X, who)
    if X.shape[1] != est.n_features_in_:
        raise ValueError(f"{who}: X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input")
    return X


def _require_y(est, y):
    if y is None:
        raise ValueError(f"{type(est).__name__} requires y to be passed, but the target y is None")


def _regression_targets(y, n, who):
    """float32 (n, k) targets and whether y was 1-D."""
    y = numeric_array(y, who, "y")
    if y.ndim not in (1, 2) or len(y) != n:
        raise ValueError(f"{who}: y must have shape ({n},) or ({n}, n_targets), got {y.shape}")
    one_d = y.ndim == 1
    y2 = np.require(y.reshape(n, -1), np.float32, "CA")
    if y2.shape[1] == 0:
        raise ValueError(f"{who}: y has no targets (shape {y.shape})")
    if not np.isfinite(y2).all():
        raise ValueError(f"{who}: y contains NaN or infinity")
    return y2, one_d


def _class_labels(y, n, who):
    """y as a 1-D array of class labels (any sortable values; floats must be whole numbers)."""
    if hasattr(y, "toarray") and hasattr(y, "nnz"):
        raise TypeError(f"{who}: y is a sparse matrix, but dense data is required")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y "
                      f"to (n_samples,), for example using ravel() ({who})", DataConversionWarning, stacklevel=4)
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{who}: y must be 1-D with one label per sample ({n}), got shape {y.shape}")
    if y.dtype.kind in "fc":
        if not np.isfinite(y).all():
            raise ValueError(f"{who}: y contains NaN or infinity")
        if y.dtype.kind == "c" or np.any(y != np.round(y)):
            raise ValueError(f"{who}: Unknown label type: continuous. Class labels must be discrete "
                             "(integers or strings); for real-valued targets use a regressor")
    return y


def _multi_output_tags(cls):
    """Declare to scikit-learn that the estimator fits several targets at once."""
    if HAVE_SKLEARN:
        def __sklearn_tags__(self):
            tags = super(cls, self).__sklearn_tags__()
            tags.target_tags.multi_output = True
            return tags
        cls.__sklearn_tags__ = __sklearn_tags__
        cls._more_tags = lambda self: {"multioutput": True}   # scikit-learn < 1.6
    return cls


def _sigmoid(z):
    """σ(z) without overflow, float64."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# ---------------------------------------------------------------- LinearRegression

@_multi_output_tags
class LinearRegression(RegressorMixin, BaseEstimator):
    """Least squares: minimise ||X w + b - y||².

    solver="normal": the closed form, the solution of the normal equations XᵀX w = Xᵀy, computed
    stably by ``numpy.linalg.lstsq`` on the centred data (an SVD: no explicit inverse, and the
    minimum-norm solution when XᵀX is singular), in float64.
    solver="gd": full-batch gradient descent (``batch_size=None``; 1 or k give SGD / mini-batches)
    on a fastdl ``nn.Linear`` started at zero, with ``MSELoss`` and ``optim.SGD(lr)``, for at most
    ``max_iter`` epochs, stopping when |L_new - L_old| < tol.

    Attributes: ``coef_`` ((n_features,), or (n_targets, n_features) for 2-D y), ``intercept_``,
    ``n_features_in_``, ``n_iter_`` (1 for "normal"); with "normal" also ``rank_`` and
    ``singular_``; with "gd" ``loss_curve_`` and ``model_`` (the nn.Linear).
    """

    def __init__(self, fit_intercept=True, solver="normal", lr=0.01, max_iter=1000, tol=1e-6,
                 batch_size=None, random_state=None, verbose=0):
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        who = "LinearRegression.fit"
        with invalid_parameters():
            check_choice(self.solver, who, "solver", ("normal", "gd"))
        p = _gd_params(self, who)
        _require_y(self, y)
        X = as_samples(X, who, dtype=np.float64 if self.solver == "normal" else np.float32)
        y2, one_d = _regression_targets(y, len(X), who)
        self.n_features_in_ = X.shape[1]
        if self.solver == "normal":
            Xd = X
            yd = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
            if p["fit_intercept"]:  # centring removes the intercept from the solve
                x_mean, y_mean = Xd.mean(axis=0), yd.mean(axis=0)
                Xd, yd = Xd - x_mean, yd - y_mean
            coef, _, self.rank_, self.singular_ = np.linalg.lstsq(Xd, yd, rcond=None)
            coef = coef.T                                            # (n_targets, n_features)
            intercept = (y_mean - coef @ x_mean) if p["fit_intercept"] else np.zeros(len(coef))
            self.n_iter_ = 1   # one solve
        else:
            max_iter = p["max_iter"]
            lin = nn.Linear(X.shape[1], y2.shape[1], bias=p["fit_intercept"], init="zeros")
            history = fit(lin, nn.MSELoss(), optim.SGD(lin.parameters(), lr=p["lr"]), X, y2, epochs=max_iter,
                          batch_size=p["batch_size"], seed=p["rng"], tol=p["tol"], metrics=(),
                          verbose=p["verbose"])
            self.model_ = lin
            self.n_iter_ = len(history)
            self.loss_curve_ = list(history["loss"])
            if history.stop_reason == "epochs":
                warnings.warn(f"{who}: gradient descent reached max_iter={max_iter} before |L_new - L_old| < tol; "
                              "raise max_iter or lr", ConvergenceWarning, stacklevel=2)
            coef = lin.weight.data.astype(np.float64)
            intercept = (lin.bias.data.astype(np.float64) if lin.bias is not None else np.zeros(len(coef)))
        self.coef_ = coef[0] if one_d else coef
        self.intercept_ = float(intercept[0]) if one_d else intercept
        return self

    def predict(self, X):
        """X @ coef_ᵀ + intercept_ (float64)."""
        _check_fitted(self, "coef_")
        X = as_samples(X, "LinearRegression.predict", dtype=np.float64)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"LinearRegression.predict: X has {X.shape[1]} features, but LinearRegression "
                             f"is expecting {self.n_features_in_} features as input")
        return X @ np.asarray(self.coef_).T + self.intercept_


# ---------------------------------------------------------------- LogisticRegression

class LogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression trained by gradient descent on fastdl.

    Two classes: P(y = classes_[1] | x) = σ(w·x + b), with the binary cross-entropy of the logit
    (``nn.BCEWithLogitsLoss``, stable for any logit). More classes: multinomial (softmax)
    regression, P(y = k | x) = softmax(W x + b)_k, with ``nn.CrossEntropyLoss``.
    Full batch by default (``batch_size=None``; 1 or k give SGD / mini-batches), ``optim.SGD(lr)``,
    weights started at 0, at most ``max_iter`` epochs, stopping when |L_new - L_old| < tol.
    Labels may be any sortable values (``classes_``, sorted).

    Attributes: ``classes_``, ``coef_`` (1, n_features) for two classes, (n_classes, n_features)
    otherwise, ``intercept_``, ``n_iter_``, ``loss_curve_``, ``n_features_in_``, ``model_`` (the
    nn.Linear).
    """

    def __init__(self, fit_intercept=True, lr=0.1, max_iter=1000, tol=1e-6, batch_size=None,
                 random_state=None, verbose=0):
        self.fit_intercept = fit_intercept
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        who = "LogisticRegression.fit"
        p = _gd_params(self, who)
        max_iter = p["max_iter"]
        _require_y(self, y)
        X = as_samples(X, who)
        y = _class_labels(y, len(X), who)
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{who}: needs samples of at least 2 classes, but the data contains only one class: "
                             f"{classes[0]!r}")
        binary = len(classes) == 2
        lin = nn.Linear(X.shape[1], 1 if binary else len(classes), bias=p["fit_intercept"], init="zeros")
        if binary:
            loss_fn, target = nn.BCEWithLogitsLoss(), labels.astype(np.float32).reshape(-1, 1)
        else:
            loss_fn, target = nn.CrossEntropyLoss(), labels.astype(np.int64)
        history = fit(lin, loss_fn, optim.SGD(lin.parameters(), lr=p["lr"]), X, target, epochs=max_iter,
                      batch_size=p["batch_size"], seed=p["rng"], tol=p["tol"], metrics=(), verbose=p["verbose"])
        if history.stop_reason == "epochs":
            warnings.warn(f"{who}: gradient descent reached max_iter={max_iter} before |L_new - L_old| < tol",
                          ConvergenceWarning, stacklevel=2)
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.model_ = lin
        self.n_iter_ = len(history)
        self.loss_curve_ = list(history["loss"])
        self.coef_ = lin.weight.data.astype(np.float64)
        self.intercept_ = (lin.bias.data.astype(np.float64) if lin.bias is not None
                           else np.zeros(len(self.coef_)))
        return self

    def decision_function(self, X):
        """Logits: (n,) for two classes (w·x + b), else (n, n_classes)."""
        _check_fitted(self, "coef_")
        X = _features(self, X, "LogisticRegression.decision_function")
        out = predict(self.model_, X).astype(np.float64)
        return out[:, 0] if out.shape[1] == 1 else out

    def predict_proba(self, X):
        """(n, n_classes): class probabilities, columns following ``classes_``."""
        z = self.decision_function(X)
        if z.ndim == 1:
            p = _sigmoid(z)
            return np.column_stack([1.0 - p, p])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        z = self.decision_function(X)
        idx = (z > 0).astype(np.intp) if z.ndim == 1 else z.argmax(axis=1)
        return self.classes_[idx]


# ---------------------------------------------------------------- MLPs

_ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "leaky_relu")  # scikit-learn's names (models.mlp's too)


class _BaseMLP(BaseEstimator):
    """Shared by MLPClassifier and MLPRegressor (parameters as in scikit-learn; see the subclasses)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate_init=1e-3, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, dropout=0.0, batch_norm=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.batch_norm = batch_norm

    # ---- hyperparameters, checked when fitting (scikit-learn's rule)
    def _checked_params(self, who):
        with invalid_parameters():
            hidden = self.hidden_layer_sizes
            if isinstance(hidden, numbers.Integral) and not isinstance(hidden, (bool, np.bool_)):
                hidden = (hidden,)
            if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
                raise TypeError(f"{who}: hidden_layer_sizes must be an int or a sequence of ints, "
                                f"got {type(hidden).__name__}")
            hidden = tuple(check_int(h, who, f"hidden_layer_sizes[{i}]", minimum=1) for i, h in enumerate(hidden))
            check_choice(self.activation, who, "activation", _ACTIVATIONS)
            check_choice(self.solver, who, "solver", ("adam", "sgd"))
            if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
                check_int(self.batch_size, who, "batch_size", minimum=1)
            flags = {flag: check_bool(getattr(self, flag), who, flag)
                     for flag in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping", "batch_norm")}
            return {
                "hidden": hidden,
                **flags,
                "alpha": check_real(self.alpha, who, "alpha", low=0.0, float32=True),
                "lr": check_real(self.learning_rate_init, who, "learning_rate_init", low=0.0, low_open=True,
                                 float32=True),
                "max_iter": check_int(self.max_iter, who, "max_iter", minimum=1),
                "tol": check_real(self.tol, who, "tol", low=0.0),
                "momentum": check_real(self.momentum, who, "momentum", low=0.0, high=1.0, float32=True),
                "validation_fraction": check_real(self.validation_fraction, who, "validation_fraction",
                                                  low=0.0, high=1.0, low_open=True, high_open=True),
                "beta_1": check_real(self.beta_1, who, "beta_1", low=0.0, high=1.0, high_open=True),
                "beta_2": check_real(self.beta_2, who, "beta_2", low=0.0, high=1.0, high_open=True),
                "epsilon": check_real(self.epsilon, who, "epsilon", low=0.0, low_open=True, float32=True),
                "n_iter_no_change": check_int(self.n_iter_no_change, who, "n_iter_no_change", minimum=1),
                "dropout": check_real(self.dropout, who, "dropout", low=0.0, high=1.0, high_open=True,
                                      float32=True),
                "verbose": _check_verbose(self.verbose, who),
            }

    # ---- the network and its optimizer
    def _build(self, p, n_in, n_out, rng):
        # models.mlp: Linear -> [BatchNorm1d] -> activation -> [Dropout] per hidden layer (He init for relu
        # and leaky_relu, Glorot otherwise), then a Glorot-initialised Linear output layer
        model = models.mlp([n_in, *p["hidden"], n_out], activation=self.activation, dropout=p["dropout"],
                           batch_norm=p["batch_norm"], rng=rng, output_init="xavier_uniform")
        # L2 penalty (alpha) on the weights only, as scikit-learn does, through the optimizer's weight_decay
        weights = [m.weight for m in model if isinstance(m, nn.Linear)]
        ids = {id(w) for w in weights}
        others = [q for q in model.parameters() if id(q) not in ids]
        groups = [{"params": weights, "weight_decay": p["alpha"]}]
        if others:
            groups.append({"params": others, "weight_decay": 0.0})
        if self.solver == "adam":
            opt = optim.Adam(groups, lr=p["lr"], betas=(p["beta_1"], p["beta_2"]), eps=p["epsilon"])
        else:
            opt = optim.SGD(groups, lr=p["lr"], momentum=p["momentum"],
                            nesterov=p["nesterovs_momentum"] and p["momentum"] > 0)
        return model, opt

    def _linears(self):
        _check_fitted(self, "model_")
        return [m for m in self.model_ if isinstance(m, nn.Linear)]

    @property
    def coefs_(self):
        """Weight matrices, (n_in, n_out) per layer as in scikit-learn: views (transposes) of the live weights."""
        return [lin.weight.data.T for lin in self._linears()]

    @property
    def intercepts_(self):
        """Bias vectors per layer: views of the live biases."""
        return [lin.bias.data for lin in self._linears()]

    # ---- training
    def _fit(self, X, y, *, incremental, classes=None):
        who = f"{type(self).__name__}.{'partial_fit' if incremental else 'fit'}"
        p = self._checked_params(who)
        _require_y(self, y)
        X = as_samples(X, who)
        fresh = not hasattr(self, "model_") or not (incremental or self.warm_start)
        if not fresh and X.shape[1] != self.n_features_in_:
            raise ValueError(f"{who}: X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        target = self._targets(y, len(X), who, fresh, incremental, classes)
        if fresh:
            with invalid_parameters():
                self._rng = check_rng(self.random_state, who, "random_state")
            self.n_features_in_ = X.shape[1]
            self.model_, self._optimizer = self._build(p, X.shape[1], self._n_out(), self._rng)
            self.n_layers_ = len(p["hidden"]) + 2
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self.best_loss_ = None
            self.validation_scores_ = [] if self.early_stopping and not incremental else None
            self.best_validation_score_ = None
        else:
            for group in self._optimizer.param_groups:   # hyperparameters may have changed (set_params)
                group["lr"] = p["lr"]

        X_val = y_val = None
        n = len(X)
        if self.early_stopping and not incremental:
            n_val = int(math.ceil(p["validation_fraction"] * n))
            if n_val < 1 or n - n_val < 1:
                raise ValueError(f"{who}: validation_fraction={self.validation_fraction} leaves no training or "
                                 f"validation samples out of {n}")
            perm = self._rng.permutation(n)
            tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
            X, X_val, target, y_val = X[tr], X[va], target[tr], target[va]
            n = len(X)
        batch = min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)

        callbacks = []
        if not incremental:
            if X_val is not None:
                monitor = "val_accuracy" if self._is_classifier else "val_loss"
                stopper = EarlyStopping(monitor=monitor, patience=p["n_iter_no_change"], min_delta=p["tol"],
                                        restore_best_weights=True)
            else:
                stopper = EarlyStopping(monitor="loss", patience=p["n_iter_no_change"], min_delta=p["tol"])
            callbacks.append(stopper)
        history = fit(self.model_, self._loss_fn(), self._optimizer, X, target,
                      epochs=1 if incremental else p["max_iter"], batch_size=batch, shuffle=p["shuffle"],
                      seed=self._rng, validation_data=None if X_val is None else (X_val, y_val),
                      metrics=("accuracy",) if self._is_classifier else (), callbacks=callbacks,
                      verbose=p["verbose"])

        self.loss_curve_.extend(history["loss"])
        self.n_iter_ += len(history)
        self.t_ += n * len(history)
        self.best_loss_ = min(self.loss_curve_) if self.loss_curve_ else None
        if X_val is not None and len(history):
            if self._is_classifier:
                scores = list(history["val_accuracy"])
            else:  # R² (variance-weighted over outputs) from the validation MSE
                var = float(y_val.astype(np.float64).var(axis=0).mean())
                scores = [1.0 - v / var if var > 0 else 0.0 for v in history["val_loss"]]
            if not isinstance(getattr(self, "validation_scores_", None), list):
                self.validation_scores_ = []
            self.validation_scores_.extend(scores)
            self.best_validation_score_ = max(self.validation_scores_)
        if history.stop_reason == "interrupted":
            warnings.warn(f"{who}: training interrupted after {len(history)} epoch(s)", RuntimeWarning,
                          stacklevel=3)
        elif not incremental and history.stop_reason == "epochs":
            warnings.warn(f"{who}: maximum iterations ({p['max_iter']}) reached and the optimization hasn't "
                          "converged yet", ConvergenceWarning, stacklevel=3)
        return self

    def fit(self, X, y):
        """Train for at most ``max_iter`` epochs (from scratch unless ``warm_start``). Returns self."""
        return self._fit(X, y, incremental=False)

    def _outputs(self, X, who):
        _check_fitted(self, "model_")
        X = _features(self, X, who)
        return predict(self.model_, X)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's ``MLPClassifier`` on fastdl.

    The network: for each size in ``hidden_layer_sizes`` a Linear layer (He init for relu, Glorot
    otherwise), then BatchNorm1d (``batch_norm=True``), the activation ("relu", "tanh", "logistic",
    "identity", "leaky_relu") and Dropout (``dropout`` > 0); then a Linear layer with one output per
    class, trained with softmax cross-entropy (``nn.CrossEntropyLoss``).

    Training: ``solver`` "adam" (``learning_rate_init``, ``beta_1``, ``beta_2``, ``epsilon``) or
    "sgd" (``momentum``, ``nesterovs_momentum``); ``alpha``: L2 penalty on the weights (not the
    biases), applied as the optimizer's weight_decay (scikit-learn divides it by the batch size,
    fastdl does not); ``batch_size`` "auto" = min(200, n_samples); at most ``max_iter`` epochs.
    Stops when the training loss has not improved by ``tol`` for ``n_iter_no_change`` epochs, or,
    with ``early_stopping=True``, when the accuracy on a random ``validation_fraction`` of the
    training data has not improved by ``tol`` for ``n_iter_no_change`` epochs (then the best
    weights are kept). ``partial_fit`` runs one epoch and needs ``classes=`` on its first call.

    Attributes: ``classes_``, ``loss_curve_``, ``n_iter_``, ``t_``, ``best_loss_``,
    ``validation_scores_`` / ``best_validation_score_`` (early_stopping), ``coefs_`` /
    ``intercepts_`` (views of the weights, (n_in, n_out) per layer), ``n_features_in_``,
    ``n_layers_``, ``n_outputs_``, ``out_activation_`` ("softmax"), ``model_`` (the fastdl
    ``nn.Sequential``; ``model_.save(path)`` works).
    """
    _is_classifier = True

    def _n_out(self):
        return len(self.classes_)

    def _loss_fn(self):
        return nn.CrossEntropyLoss()

    def _targets(self, y, n, who, fresh, incremental, classes):
        y = _class_labels(y, n, who)
        if fresh:
            if incremental:
                if classes is None:
                    raise ValueError(f"{who}: classes must be passed on the first call to partial_fit")
                cls = np.unique(np.asarray(classes))
            else:
                cls = np.unique(y)
            if len(cls) < 2:
                raise ValueError(f"{who}: needs samples of at least 2 classes, but the data contains only one "
                                 f"class: {cls[0]!r}")
            self.classes_ = cls
            self.n_outputs_ = len(cls)
            self.out_activation_ = "softmax"
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"{who}: classes={classes!r} differs from the classes of the first call "
                             f"{self.classes_!r}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            raise ValueError(f"{who}: y holds label(s) {np.unique(y[bad])[:5]!r} not in classes_ {self.classes_!r}")
        return idx.astype(np.int64)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current weights. Returns self."""
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """(n, n_classes): softmax of the network's outputs (float64); columns follow ``classes_``."""
        out = self._outputs(X, "MLPClassifier.predict_proba")
        return ops.softmax(np.ascontiguousarray(out, dtype=np.float32)).astype(np.float64)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        out = self._outputs(X, "MLPClassifier.predict")
        return self.classes_[out.argmax(axis=1)]


@_multi_output_tags
class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's ``MLPRegressor`` on fastdl.

    The same network and training as ``MLPClassifier`` (see there), with a linear output layer
    (one unit per target) and the squared error (``nn.MSELoss``). With ``early_stopping=True`` the
    validation score is R². ``predict`` returns (n,) when y was 1-D, else (n, n_targets).
    Attributes as ``MLPClassifier`` without ``classes_``; ``out_activation_`` is "identity".
    """
    _is_classifier = False

    def _n_out(self):
        return self.n_outputs_

    def _loss_fn(self):
        return nn.MSELoss()

    def _targets(self, y, n, who, fresh, incremental, classes):
        y2, one_d = _regression_targets(y, n, who)
        if fresh:
            self.n_outputs_ = y2.shape[1]
            self._y_1d = one_d
            self.out_activation_ = "identity"
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(f"{who}: y has {y2.shape[1]} targets, the model was fitted with {self.n_outputs_}")
        return y2

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing from the current weights. Returns self."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """(n,) when y was 1-D, else (n, n_targets); float64."""
        out = self._outputs(X, "MLPRegressor.predict").astype(np.float64)
        return out[:, 0] if self._y_1d else out
