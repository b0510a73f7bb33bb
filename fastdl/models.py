"""fastdl.models: ready-made architectures, one builder each, returning plain ``nn`` modules.

    from fastdl import models
    net = models.mlp([784, 256, 128, 10], dropout=0.1, rng=0)   # an nn.Sequential, ready to train
    net = models.lenet5(rng=0)                                   # LeNet-5 for (N, 1, 28, 28) images
    net = models.cnn(rng=0)                                      # a small VGG-style network, same input

The estimators (``fastdl.estimators``), the command line (``python -m fastdl train``) and the
benchmarks build their networks here, so one architecture has one definition.

The scikit-learn estimators that lived here (``LinearRegression``, ``LogisticRegression``,
``MLPClassifier``, ``MLPRegressor``) are in ``fastdl.estimators``; importing them from
``fastdl.models`` still works, with a DeprecationWarning.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

from fastdl import nn
from fastdl._validation import check_bool, check_choice, check_int, check_real, check_rng

__all__ = ["mlp", "lenet5", "cnn", "ACTIVATIONS", "IMAGE_SHAPE"]

# activation name -> layer class (None: no layer). "logistic" is scikit-learn's name for the sigmoid.
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "logistic": nn.Sigmoid, "identity": None}
_INITS = ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "zeros")
# the input of the image models (lenet5, cnn): one MNIST image per sample, NCHW
IMAGE_SHAPE = (1, 28, 28)


def mlp(sizes, activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False, rng=None, *,
        init: str | None = None, output_init: str | None = None) -> nn.Sequential:
    """A multi-layer perceptron as an ``nn.Sequential``.

    ``sizes`` = [in_features, hidden_1, ..., hidden_k, out_features] (k >= 0). Each hidden size h adds,
    in this order::

        Linear(width, h) -> BatchNorm1d(h) -> activation -> Dropout(dropout)

    BatchNorm1d only with ``batch_norm=True``, the activation layer unless it is "identity", Dropout only
    when ``dropout`` > 0. Then ``Linear(width, out_features)``, with no activation after it (the loss
    applies softmax or sigmoid where it needs one).

    - ``activation``: "relu", "leaky_relu", "tanh", "sigmoid" (or "logistic", scikit-learn's name) or
      "identity".
    - ``init``: the hidden Linear layers' weight initializer (see ``nn.Linear``); default
      "kaiming_uniform" (He) for relu and leaky_relu, "xavier_uniform" (Glorot) otherwise.
      ``output_init``: the last Linear layer's; default the same as ``init``. Biases start at 0.
    - ``rng``: None (fresh entropy), an int seed, a ``np.random.Generator`` (used, and advanced, as it
      is) or a ``RandomState``. Draws happen layer by layer: each Linear's weights, then, for a hidden
      layer with dropout, its Dropout's mask seed ``int(rng.integers(0, 2**63))``. The same seed gives
      the same network, bit for bit.
    """
    who = "mlp"
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise TypeError(f"{who}: sizes must be a sequence of ints [in_features, hidden..., out_features], "
                        f"got {type(sizes).__name__}")
    sizes = [check_int(s, who, f"sizes[{i}]", minimum=1) for i, s in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError(f"{who}: sizes must hold at least in_features and out_features, got {sizes}")
    check_choice(activation, who, "activation", ACTIVATIONS)
    dropout = check_real(dropout, who, "dropout", low=0.0, high=1.0, high_open=True, float32=True)
    batch_norm = check_bool(batch_norm, who, "batch_norm")
    if init is None:
        init = "kaiming_uniform" if activation in ("relu", "leaky_relu") else "xavier_uniform"
    check_choice(init, who, "init", _INITS)
    output_init = init if output_init is None else check_choice(output_init, who, "output_init", _INITS)
    rng = check_rng(rng, who, "rng")

    act = ACTIVATIONS[activation]
    layers, width = [], sizes[0]
    for h in sizes[1:-1]:
        layers.append(nn.Linear(width, h, init=init, rng=rng))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        if act is not None:
            layers.append(act())
        if dropout > 0:
            layers.append(nn.Dropout(dropout, seed=int(rng.integers(0, 2**63))))
        width = h
    layers.append(nn.Linear(width, sizes[-1], init=output_init, rng=rng))
    return nn.Sequential(*layers)


def lenet5(num_classes: int = 10, *, rng=None) -> nn.Sequential:
    """LeNet-5 (LeCun et al., 1998) as it is trained today, for (N, 1, 28, 28) images::

        Conv2d(1, 6, 5, padding=2) -> ReLU -> MaxPool2d(2)     # (N, 6, 14, 14)
        Conv2d(6, 16, 5) -> ReLU -> MaxPool2d(2)               # (N, 16, 5, 5)
        Flatten -> Linear(400, 120) -> ReLU -> Linear(120, 84) -> ReLU -> Linear(84, num_classes)

    ReLU and max pooling where the paper had scaled tanh and trainable subsampling; the padding of the
    first convolution keeps MNIST's 28x28 at the paper's 32x32 input size. 61,706 parameters for 10 classes,
    the same tensors, in the same order, as the equivalent ``torch.nn.Sequential``. No activation after the
    last layer: the loss (``nn.CrossEntropyLoss``) applies the softmax.

    ``rng``: None (fresh entropy), an int seed, a ``np.random.Generator`` (used and advanced) or a
    ``RandomState``; the layers draw their weights from it in order, so a seed gives the same network bit
    for bit. Conv2d and Linear use their default initializers; biases of Linear start at 0.
    """
    who = "lenet5"
    num_classes = check_int(num_classes, who, "num_classes", minimum=1)
    rng = check_rng(rng, who, "rng")
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120, rng=rng), nn.ReLU(),
        nn.Linear(120, 84, rng=rng), nn.ReLU(),
        nn.Linear(84, num_classes, rng=rng),
    )


def cnn(num_classes: int = 10, *, batch_norm: bool = True, dropout: float = 0.5, rng=None) -> nn.Sequential:
    """A small VGG-style network for (N, 1, 28, 28) images: two blocks of two 3x3 convolutions and a 2x2
    max pooling (32, then 64 channels), then a dense layer::

        Conv2d(1, 32, 3, padding=1) -> [BatchNorm2d(32)] -> ReLU
        Conv2d(32, 32, 3, padding=1) -> [BatchNorm2d(32)] -> ReLU -> MaxPool2d(2)      # (N, 32, 14, 14)
        Conv2d(32, 64, 3, padding=1) -> [BatchNorm2d(64)] -> ReLU
        Conv2d(64, 64, 3, padding=1) -> [BatchNorm2d(64)] -> ReLU -> MaxPool2d(2)      # (N, 64, 7, 7)
        Flatten -> Linear(3136, 128) -> ReLU -> [Dropout(dropout)] -> Linear(128, num_classes)

    - ``batch_norm`` (default True): BatchNorm2d after each convolution, whose bias it makes redundant,
      so those convolutions have none (``bias=False``, as in ResNet); without it the convolutions have
      biases. In eval mode a BatchNorm2d folds into its convolution.
    - ``dropout``: the Dropout before the last layer (0: none).
    - ``rng``: as for ``lenet5``; the Dropout's mask seed ``int(rng.integers(0, 2**63))`` is drawn after the
      first Linear's weights.

    468,010 parameters with batch_norm (BatchNorm2d's running statistics are buffers, not counted),
    467,818 without; the same tensors, in the same order, as the equivalent ``torch.nn.Sequential``.
    No activation after the last layer.
    """
    who = "cnn"
    num_classes = check_int(num_classes, who, "num_classes", minimum=1)
    batch_norm = check_bool(batch_norm, who, "batch_norm")
    dropout = check_real(dropout, who, "dropout", low=0.0, high=1.0, high_open=True, float32=True)
    rng = check_rng(rng, who, "rng")

    layers = []
    for c_in, c_out in ((1, 32), (32, 32), (32, 64), (64, 64)):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm, rng=rng))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
        if c_in == c_out:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(64 * 7 * 7, 128, rng=rng), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout, seed=int(rng.integers(0, 2**63))))
    layers.append(nn.Linear(128, num_classes, rng=rng))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- moved to fastdl.estimators

_MOVED = ("LinearRegression", "LogisticRegression", "MLPClassifier", "MLPRegressor", "NotFittedError",
          "ConvergenceWarning", "HAVE_SKLEARN")


def __getattr__(name):
    if name in _MOVED:
        warnings.warn(f"fastdl.models.{name} has moved to fastdl.estimators.{name}; import it from "
                      "fastdl.estimators (fastdl.models now holds architecture builders such as models.mlp)",
                      DeprecationWarning, stacklevel=2)
        from fastdl import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'fastdl.models' has no attribute {name!r}")
