"""MNIST with a convolutional network: LeNet-5 (default) or the VGG-style ``--model cnn``, explicit loop.

The images go in as (N, 1, 28, 28), NCHW like PyTorch; the networks come from ``fastdl.models``
(``lenet5()``: conv 5x5 6 -> pool -> conv 5x5 16 -> pool -> dense 120-84-10; ``cnn()``: two blocks of
two 3x3 convolutions with batch norm and a max pooling, 32 then 64 channels, dense 128 with dropout).
Backprop is explicit, ``model.backward(loss_fn.backward())``, where PyTorch writes ``loss.backward()``.
SGD with Nesterov momentum on a cosine schedule, as ``python -m fastdl train --model lenet5|cnn`` does
(which adds flags, a progress bar and Ctrl-C handling). Targets: LeNet-5 >= 99.0% test accuracy after
20 epochs, the CNN >= 99.3% after 12. MNIST comes from --data DIR, else from where ``fastdl info`` finds it.

Run: python examples/mnist_cnn.py [--model lenet5|cnn] [--epochs N] [--batch-size B] [--data DIR]
"""
import argparse
import sys
import time

import numpy as np

from fastdl import models, nn, optim
from fastdl.datasets import MNISTNotFoundError, load_mnist
from fastdl.train import predict

parser = argparse.ArgumentParser(description="Train LeNet-5 or a small VGG-style CNN on MNIST with an explicit loop.")
parser.add_argument("--model", choices=["lenet5", "cnn"], default="lenet5", help="the network (default: lenet5)")
parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 20 for lenet5, 12 for cnn)")
parser.add_argument("--batch-size", type=int, default=128, help="mini-batch size (default: 128)")
parser.add_argument("--lr", type=float, default=None,
                    help="SGD learning rate (default: 0.05 for lenet5, 0.01 for cnn, as `fastdl train`)")
parser.add_argument("--data", metavar="DIR", default=None,
                    help="directory with the four MNIST IDX files (default: $FASTDL_DATA, the cache, "
                         "../shared/data/mnist, else download)")
parser.add_argument("--train-size", type=int, default=None, metavar="N", help="use the first N training images")
parser.add_argument("--test-size", type=int, default=None, metavar="N", help="use the first N test images")
parser.add_argument("--out", default="mnist_cnn.npz", help="where to save the model ('' to skip)")
args = parser.parse_args()
epochs = args.epochs if args.epochs is not None else {"lenet5": 20, "cnn": 12}[args.model]
try:
    (X_train, y_train), (X_test, y_test) = load_mnist(args.data)  # float32 (N, 784) in [0, 1], int64 labels
except MNISTNotFoundError as e:
    sys.exit(f"mnist_cnn.py: MNIST not found (looked in {', '.join(map(str, e.searched)) or args.data}); "
             "pass --data DIR, a directory holding the four MNIST files, or set $FASTDL_DATA to it")
except (OSError, ValueError) as e:  # a --data that is not a directory, a corrupt file
    sys.exit(f"mnist_cnn.py: {e}")
X_train, y_train = X_train[:args.train_size], y_train[:args.train_size]
X_test, y_test = X_test[:args.test_size], y_test[:args.test_size]
X_train = X_train.reshape(-1, 1, 28, 28)   # NCHW images (a view: no copy)
X_test = X_test.reshape(-1, 1, 28, 28)

rng = np.random.default_rng(0)
model = models.lenet5(rng=rng) if args.model == "lenet5" else models.cnn(rng=rng)
print(model)
print(f"{sum(p.data.size for p in model.parameters())} parameters; {len(X_train)} training and {len(X_test)} "
      f"test images, batch size {args.batch_size}, {epochs} epochs")
loss_fn = nn.CrossEntropyLoss()
lr = args.lr if args.lr is not None else (0.05 if args.model == "lenet5" else 0.01)
opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
scheduler = optim.CosineAnnealingLR(opt, T_max=epochs)

for epoch in range(epochs):
    t0 = time.perf_counter()
    model.train()
    perm = rng.permutation(len(X_train))
    for i in range(0, len(perm), args.batch_size):
        idx = perm[i:i + args.batch_size]
        out = model(X_train[idx])            # forward: (B, 10) class scores
        loss = loss_fn(out, y_train[idx])    # a Python float
        opt.zero_grad()
        model.backward(loss_fn.backward())   # backprop, explicit
        opt.step()
    scheduler.step()
    seconds = time.perf_counter() - t0
    # eval mode (batch norm on its running statistics, no dropout), 1000 images per forward pass
    accuracy = np.mean(predict(model, X_test, batch_size=1000).argmax(axis=1) == y_test)
    print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss:.4f}, test accuracy {accuracy:.4f}, {seconds:.1f} s")

print(f"test accuracy: {100 * accuracy:.2f}%")
if args.out:
    model.save(args.out)   # nn.load(args.out) gives it back; `python -m fastdl predict` classifies with it
    print(f"saved the model to {args.out}")
