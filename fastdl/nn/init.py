"""Weight initializers, in place, drawing from an explicit ``np.random.Generator`` (never the global
``np.random``). Names and formulas follow ``torch.nn.init``.

For a weight of shape (out_features, in_features): fan_in = in_features, fan_out = out_features.

- ``kaiming_uniform_``: U(-b, b), b = gain * sqrt(3 / fan)      (He et al. 2015; gain sqrt(2) for ReLU)
- ``kaiming_normal_``:  N(0, std²), std = gain / sqrt(fan)
- ``xavier_uniform_``:  U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))   (Glorot & Bengio 2010)
- ``xavier_normal_``:   N(0, std²), std = gain * sqrt(2 / (fan_in + fan_out))

``rng`` may be a Generator, an int seed >= 0, None (a fresh ``np.random.default_rng()``) or a legacy
``np.random.RandomState`` (a seed is drawn from it), as ``fastdl._validation.check_rng`` reads it.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _validation as _v
from .module import Parameter

__all__ = ["calculate_gain", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
           "uniform_", "normal_", "constant_", "zeros_", "ones_", "as_generator"]


def as_generator(rng, who: str = "rng") -> np.random.Generator:
    """A Generator from ``rng``: ``fastdl._validation.check_rng(rng, who, "rng")`` (kept for old callers)."""
    return _v.check_rng(rng, who, "rng")


def _target(array, who):
    """The float32 ndarray to fill in place (a Parameter's .data is accepted)."""
    if isinstance(array, Parameter):
        return array.data
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{who}: array must be a numpy.ndarray or Parameter, got {type(array).__name__}")
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: array must be float32 or float64, got dtype {array.dtype}")
    if not array.flags.writeable:
        raise ValueError(f"{who}: array is read-only")
    if array.size == 0:
        raise ValueError(f"{who}: array is empty (shape {array.shape})")
    return array


def _fans(shape, who):
    if len(shape) < 2:
        raise ValueError(f"{who}: fan in and fan out need at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


_NONLINEARITIES = ("linear", "identity", "sigmoid", "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``)."""
    _v.check_choice(nonlinearity, "calculate_gain", "nonlinearity", _NONLINEARITIES)
    linear = ("linear", "identity", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else _v.check_real(param, "calculate_gain", "param")
        return math.sqrt(2.0 / (1.0 + slope * slope))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r} "
                     "(expected linear, identity, sigmoid, tanh, relu, leaky_relu or selu)")


def _kaiming_std(array, a, mode, nonlinearity, who):
    _v.check_choice(mode, who, "mode", ("fan_in", "fan_out"))
    fan_in, fan_out = _fans(array.shape, who)
    fan = fan_in if mode == "fan_in" else fan_out
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan)


def kaiming_uniform_(array, rng=None, *, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan); the default gives gain sqrt(2) (ReLU)."""
    who = "kaiming_uniform_"
    arr = _target(array, who)
    bound = math.sqrt(3.0) * _kaiming_std(arr, a, mode, nonlinearity, who)
    arr[...] = _v.check_rng(rng, who, "rng").uniform(-bound, bound, size=arr.shape)
    return array


def kaiming_normal_(array, rng=None, *, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """He normal: N(0, std²) with std = gain / sqrt(fan)."""
    who = "kaiming_normal_"
    arr = _target(array, who)
    std = _kaiming_std(arr, a, mode, nonlinearity, who)
    arr[...] = _v.check_rng(rng, who, "rng").normal(0.0, std, size=arr.shape)
    return array


def xavier_uniform_(array, rng=None, *, gain: float = 1.0):
    """Glorot uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    who = "xavier_uniform_"
    arr = _target(array, who)
    gain = _v.check_real(gain, who, "gain", low=0.0)
    fan_in, fan_out = _fans(arr.shape, who)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    arr[...] = _v.check_rng(rng, who, "rng").uniform(-bound, bound, size=arr.shape)
    return array


def xavier_normal_(array, rng=None, *, gain: float = 1.0):
    """Glorot normal: N(0, std²) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    who = "xavier_normal_"
    arr = _target(array, who)
    gain = _v.check_real(gain, who, "gain", low=0.0)
    fan_in, fan_out = _fans(arr.shape, who)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    arr[...] = _v.check_rng(rng, who, "rng").normal(0.0, std, size=arr.shape)
    return array


def uniform_(array, a: float = 0.0, b: float = 1.0, rng=None):
    """U(a, b)."""
    who = "uniform_"
    arr = _target(array, who)
    a, b = _v.check_real(a, who, "a"), _v.check_real(b, who, "b")
    if b < a:
        raise ValueError(f"{who}: need a <= b, got a={a}, b={b}")
    arr[...] = _v.check_rng(rng, who, "rng").uniform(a, b, size=arr.shape)
    return array


def normal_(array, mean: float = 0.0, std: float = 1.0, rng=None):
    """N(mean, std²)."""
    who = "normal_"
    arr = _target(array, who)
    mean, std = _v.check_real(mean, who, "mean"), _v.check_real(std, who, "std", low=0.0)
    arr[...] = _v.check_rng(rng, who, "rng").normal(mean, std, size=arr.shape)
    return array


def constant_(array, val: float):
    """Fill with ``val``."""
    who = "constant_"
    arr = _target(array, who)
    arr.fill(_v.check_real(val, who, "val"))
    return array


def zeros_(array):
    """Fill with 0."""
    _target(array, "zeros_").fill(0.0)
    return array


def ones_(array):
    """Fill with 1."""
    _target(array, "ones_").fill(1.0)
    return array
