"""The XOR story, in three acts.

1. A linear model cannot do it: least squares on the four points gives w = 0, b = 1/2, so the
   prediction is the constant 0.5 for every input.
2. One hidden ReLU layer can, exactly: with W = [[1, 1], [1, 1]], b = [0, -1], w = [1, -2], c = 0,
       f(x) = wᵀ max(0, Wx + b) + c
   gives 0, 1, 1, 0 on (0,0), (0,1), (1,0), (1,1).
3. Gradient descent finds such a network by itself: a small MLP trained on the four points.

Run: python examples/xor.py
"""
import numpy as np

from fastdl import nn, optim
from fastdl.datasets import make_xor
from fastdl.estimators import LinearRegression
from fastdl.train import fit, predict

X, y = make_xor()  # X float32 (4, 2): (0,0), (0,1), (1,0), (1,1); y int64: 0, 1, 1, 0
print("inputs:", X.tolist(), "targets:", y.tolist())

# 1. least squares: the best linear fit is the constant 1/2
lin = LinearRegression().fit(X, y.astype(np.float64))
print("\n1. least-squares linear model")
print(f"   w = {(np.round(lin.coef_, 6) + 0.0).tolist()}, b = {lin.intercept_ + 0.0:.6f}")  # + 0.0: no -0.0
print(f"   predictions: {(np.round(lin.predict(X), 6) + 0.0).tolist()}")

# 2. the hand-made ReLU network
net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
net[0].weight.data[...] = [[1, 1], [1, 1]]
net[0].bias.data[...] = [0, -1]
net[2].weight.data[...] = [[1, -2]]
net[2].bias.data[...] = [0]
hidden = np.maximum(X @ net[0].weight.data.T + net[0].bias.data, 0)
out = predict(net, X)[:, 0]
print("\n2. ReLU network W = [[1,1],[1,1]], b = [0,-1], w = [1,-2], c = 0")
print(f"   hidden layer: {hidden.tolist()}")
print(f"   network output: {out.tolist()}")
print(f"   computes XOR exactly: {bool(np.array_equal(out, y.astype(np.float32)))}")

# 3. learn it: 2-8-2 ReLU network, cross-entropy, full-batch Adam
model = nn.Sequential(nn.Linear(2, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))
history = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), X, y,
              epochs=300, batch_size=None, verbose=0)
learned = predict(model, X).argmax(axis=1)
print("\n3. trained 2-8-2 ReLU network (full-batch Adam, 300 epochs)")
print(f"   loss {history['loss'][0]:.4f} -> {history['loss'][-1]:.6f}")
print(f"   predicted classes: {learned.tolist()}")
print(f"   learned XOR: {bool(np.array_equal(learned, y))}")
