"""Linear regression three ways: closed form, gradient descent by hand, and the estimator.

Data: y = 3 x1 - 2 x2 + 0.5 x3 + 1 + noise, 500 samples.
  1. the closed form (least squares, the normal equations XᵀX w = Xᵀy solved stably): LinearRegression()
  2. full-batch gradient descent on the mean squared error, written out with NumPy:
        w <- w - lr * (2/n) Xᵀ(Xw + b - y),   b <- b - lr * (2/n) Σ (Xw + b - y)
     stopped by the course's rule |L_new - L_old| < tol
  3. the same gradient descent with fastdl's pieces: nn.Linear + nn.MSELoss + optim.SGD, via fit
All three agree with numpy.linalg.lstsq.

Run: python examples/linear_regression.py
"""
import numpy as np

from fastdl import nn, optim
from fastdl.estimators import LinearRegression
from fastdl.train import fit

rng = np.random.default_rng(0)
true_w, true_b = np.array([3.0, -2.0, 0.5]), 1.0
X = rng.standard_normal((500, 3)).astype(np.float32)
y = (X @ true_w + true_b + 0.1 * rng.standard_normal(500)).astype(np.float32)
print(f"true:            w = {true_w.tolist()}, b = {true_b}")

# the reference: lstsq on [X, 1]
A = np.c_[X.astype(np.float64), np.ones(len(X))]
ref = np.linalg.lstsq(A, y.astype(np.float64), rcond=None)[0]
print(f"numpy lstsq:     w = {np.round(ref[:3], 5).tolist()}, b = {ref[3]:.5f}")

# 1. closed form
lin = LinearRegression().fit(X, y)
print(f"1. closed form:  w = {np.round(lin.coef_, 5).tolist()}, b = {lin.intercept_:.5f}")

# 2. gradient descent by hand (float64), stopping rule |L_new - L_old| < tol
w, b, lr, tol = np.zeros(3), 0.0, 0.1, 1e-15
Xd, yd = X.astype(np.float64), y.astype(np.float64)
loss_old = np.inf
for it in range(1, 10_001):
    r = Xd @ w + b - yd
    loss = np.mean(r * r)
    if abs(loss_old - loss) < tol:
        break
    loss_old = loss
    w -= lr * 2 * Xd.T @ r / len(r)
    b -= lr * 2 * r.mean()
print(f"2. GD by hand:   w = {np.round(w, 5).tolist()}, b = {b:.5f}  ({it} iterations, MSE {loss:.6f})")

# 3. gradient descent with fastdl: the model, the loss, the optimizer, the loop
model = nn.Linear(3, 1, init="zeros")
history = fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), X, y.reshape(-1, 1),
              epochs=1000, batch_size=None, tol=1e-10, verbose=0)
w3, b3 = model.weight.data[0].astype(np.float64), float(model.bias.data[0])
print(f"3. fastdl fit:   w = {np.round(w3, 5).tolist()}, b = {b3:.5f}  ({len(history)} epochs, "
      f"MSE {history['loss'][-1]:.6f}, stopped by {history.stop_reason})")

print(f"max |closed form - lstsq| = {np.max(np.abs(np.r_[lin.coef_, lin.intercept_] - ref)):.2e}")
print(f"max |GD by hand - lstsq|  = {np.max(np.abs(np.r_[w, b] - ref)):.2e}")
print(f"max |fastdl fit - lstsq|  = {np.max(np.abs(np.r_[w3, b3] - ref)):.2e}")
