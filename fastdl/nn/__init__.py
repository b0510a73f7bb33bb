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
"""
from . import init
from .layers import (BatchNorm1d, Dropout, Flatten, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Softmax, Step,
                     Tanh)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss
from .module import Module, Parameter, module_from_config, num_parameters, register_module
from .serialize import FORMAT_VERSION, load, save

__all__ = [
    "Module", "Parameter", "Sequential", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Step",
    "Dropout", "BatchNorm1d", "Flatten", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "CrossEntropyLoss",
    "init", "save", "load", "register_module", "module_from_config", "num_parameters", "FORMAT_VERSION",
]
