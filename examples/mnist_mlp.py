"""MNIST with an MLP, written the way a PyTorch user would (about 20 lines of loop).

fastdl's backprop is explicit: ``model.backward(loss_fn.backward())`` is where PyTorch writes
``loss.backward()``. Everything else reads the same. About 1 s per epoch on 2 cores; 10 epochs
reach about 98.2% test accuracy. (``python -m fastdl train`` does the same with fit, flags, dropout
and a saved model.) MNIST comes from --data DIR, else from where ``fastdl info`` finds it
($FASTDL_DATA, the cache, ../shared/data/mnist), else a download (see load_mnist).

Run: python examples/mnist_mlp.py [epochs] [--data DIR]
"""
import argparse
import sys
import time

import numpy as np

from fastdl import nn, optim
from fastdl.datasets import MNISTNotFoundError, load_mnist

parser = argparse.ArgumentParser(description="Train a 784-256-128-10 MLP on MNIST with an explicit loop.")
parser.add_argument("epochs", type=int, nargs="?", default=10, help="training epochs (default: 10)")
parser.add_argument("--data", metavar="DIR", default=None,
                    help="directory with the four MNIST IDX files (default: $FASTDL_DATA, the cache, "
                         "../shared/data/mnist, else download)")
args = parser.parse_args()
epochs = args.epochs
try:
    (X_train, y_train), (X_test, y_test) = load_mnist(args.data)  # float32 (N, 784) in [0, 1], int64 labels
except MNISTNotFoundError as e:
    sys.exit(f"mnist_mlp.py: MNIST not found (looked in {', '.join(map(str, e.searched)) or args.data}); "
             "pass --data DIR, a directory holding the four MNIST files, or set $FASTDL_DATA to it")
except (OSError, ValueError) as e:  # a --data that is not a directory, a corrupt file
    sys.exit(f"mnist_mlp.py: {e}")

rng = np.random.default_rng(0)
model = nn.Sequential(
    nn.Linear(784, 256, rng=rng), nn.ReLU(),
    nn.Linear(256, 128, rng=rng), nn.ReLU(),
    nn.Linear(128, 10, rng=rng),
)
loss_fn = nn.CrossEntropyLoss()
opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
scheduler = optim.CosineAnnealingLR(opt, T_max=epochs)

for epoch in range(epochs):
    t0 = time.perf_counter()
    model.train()
    perm = rng.permutation(len(X_train))
    for i in range(0, len(perm), 128):
        idx = perm[i:i + 128]
        out = model(X_train[idx])            # forward
        loss = loss_fn(out, y_train[idx])    # a Python float
        opt.zero_grad()
        model.backward(loss_fn.backward())   # backprop, explicit
        opt.step()
    scheduler.step()
    model.eval()
    accuracy = np.mean(model(X_test).argmax(axis=1) == y_test)
    print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss:.4f}, test accuracy {accuracy:.4f}, "
          f"{time.perf_counter() - t0:.1f} s")

model.save("mnist_mlp.npz")   # nn.load("mnist_mlp.npz") gives it back
