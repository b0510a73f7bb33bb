"""End to end on real MNIST: the course's MLP, trained with fastdl.fit, passes 97% test accuracy."""
import numpy as np

import fastdl
from fastdl import nn, optim
from fastdl.datasets import load_mnist


def test_mlp_on_mnist_reaches_97_percent(mnist_path):
    (X_train, y_train), (X_test, y_test) = load_mnist(mnist_path)
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(784, 256, rng=rng), nn.ReLU(),
                          nn.Linear(256, 128, rng=rng), nn.ReLU(),
                          nn.Linear(128, 10, rng=rng))
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    history = fastdl.fit(model, loss_fn, opt, X_train, y_train, epochs=3, batch_size=128, seed=0,
                         validation_data=(X_test, y_test), verbose=0)
    assert history["loss"][-1] < history["loss"][0]          # it learned
    result = fastdl.evaluate(model, loss_fn, X_test, y_test)
    assert result["accuracy"] >= 0.97, result
    assert history["val_accuracy"][-1] == result["accuracy"]
