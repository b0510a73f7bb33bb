"""fastdl.nn: layers, losses and initializers with PyTorch's names, and explicit backprop.

    from fastdl import nn, optim
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        out = model(x)                        # forward
        loss = loss_fn(out, y)                # a float
        opt.zero_grad()
        model.backward(loss_fn.backward())    # where PyTorch writes loss.backward()
        opt.step()
    model.save("mlp.npz"); model = nn.load("mlp.npz")

Files, one per family (a new family adds its own file, and a row in ``fusion.FUSIONS`` if it
fuses with an activation): ``module`` (Parameter, Module), ``registry`` (register_module,
module_from_config), ``base`` (_Layer, the built-in layers' protocol), ``linear``, ``activation``,
``conv`` (Conv2d), ``normalization``, ``dropout``, ``pooling``, ``shape`` (Flatten), ``container`` (Sequential),
``fusion``, ``losses``, ``init``, ``serialize`` (save, load).
"""
from . import init
from .activation import LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh
from .container import Sequential
from .conv import Conv2d
from .dropout import Dropout, Dropout2d
from .linear import Linear
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss
from .module import Module, Parameter, num_parameters
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .registry import module_from_config, register_module
from .serialize import FORMAT_VERSION, load, save
from .shape import Flatten

__all__ = [
    "Module", "Parameter", "Sequential", "Linear", "Conv2d", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Step",
    "Dropout", "BatchNorm1d", "Flatten", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "CrossEntropyLoss",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "Dropout2d",
    "init", "save", "load", "register_module", "module_from_config", "num_parameters", "FORMAT_VERSION",
]
