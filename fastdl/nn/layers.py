"""Compatibility: the layers moved to one file per family (linear, activation, normalization,
dropout, shape, container); import them from ``fastdl.nn``."""
from .activation import LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh  # noqa: F401
from .base import _Layer  # noqa: F401
from .container import Sequential  # noqa: F401
from .dropout import Dropout  # noqa: F401
from .linear import Linear  # noqa: F401
from .normalization import BatchNorm1d  # noqa: F401
from .shape import Flatten  # noqa: F401

__all__ = ["Sequential", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Step", "Dropout",
           "BatchNorm1d", "Flatten"]
