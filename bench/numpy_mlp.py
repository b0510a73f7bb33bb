"""The benchmark's plain-NumPy network: a ReLU MLP with softmax cross-entropy and SGD with momentum.

Written the way a careful NumPy user would, so the comparison with fastdl is fair: float32
throughout, weights shaped (out, in) as in fastdl and PyTorch with products written `X @ W.T`
(`np.matmul(x, w.T, out=...)`: OpenBLAS takes the transposed view without a copy), every
activation and gradient in a buffer allocated once per batch size, in-place ufuncs with `out=`,
and no input gradient for the first layer. The update is PyTorch's SGD with momentum:
buf = g on the first step, then buf = momentum·buf + g; param -= lr·buf.
"""
from __future__ import annotations

import numpy as np


class NumpyMLP:
    """Dense layers with ReLU between them and a linear output (logits) trained with softmax
    cross-entropy. ``layers``: list of (weight (out, in), bias (out,)) float32 arrays, copied."""

    def __init__(self, layers, *, lr: float, momentum: float = 0.0):
        self.w = [np.array(w, dtype=np.float32, order="C") for w, _ in layers]
        self.b = [np.array(b, dtype=np.float32, order="C") for _, b in layers]
        self.lr, self.momentum = float(lr), float(momentum)
        self.dw = [np.zeros_like(w) for w in self.w]
        self.db = [np.zeros_like(b) for b in self.b]
        self.buf_w = [np.zeros_like(w) for w in self.w]
        self.buf_b = [np.zeros_like(b) for b in self.b]
        self.tmp_w = [np.empty_like(w) for w in self.w]
        self.tmp_b = [np.empty_like(b) for b in self.b]
        self.steps = 0
        self._bufs = {}

    def _buffers(self, n):
        """Activations and their gradients for a batch of n rows (allocated once per n)."""
        bufs = self._bufs.get(n)
        if bufs is None:
            outs = [w.shape[0] for w in self.w]
            bufs = {"h": [np.empty((n, o), np.float32) for o in outs],   # layer outputs (last: logits)
                    "d": [np.empty((n, o), np.float32) for o in outs],   # d loss / d layer pre-activation
                    "mask": [np.empty((n, o), bool) for o in outs[:-1]],
                    "m": np.empty((n, 1), np.float32), "s": np.empty((n, 1), np.float32),
                    "rows": np.arange(n)}
            self._bufs[n] = bufs
        return bufs

    def forward(self, x, bufs=None):
        """Logits for x (n, in); the activations stay in the buffers for backward."""
        bufs = bufs or self._buffers(x.shape[0])
        h = x
        last = len(self.w) - 1
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            out = bufs["h"][i]
            np.matmul(h, w.T, out=out)
            np.add(out, b, out=out)
            if i < last:
                np.maximum(out, 0.0, out=out)
            h = out
        return h

    def loss_and_grad(self, logits, y, bufs):
        """Mean softmax cross-entropy of the logits against labels y; writes d loss / d logits."""
        n = logits.shape[0]
        m, s, d, rows = bufs["m"], bufs["s"], bufs["d"][-1], bufs["rows"]
        np.max(logits, axis=1, keepdims=True, out=m)
        np.subtract(logits, m, out=d)
        np.exp(d, out=d)
        np.sum(d, axis=1, keepdims=True, out=s)
        loss = float(np.mean(np.log(s[:, 0]) - (logits[rows, y] - m[:, 0])))
        np.divide(d, s, out=d)
        d[rows, y] -= 1.0
        np.multiply(d, 1.0 / n, out=d)
        return loss

    def backward(self, x, bufs):
        """Parameter gradients into self.dw / self.db (the input gradient is not needed)."""
        for i in range(len(self.w) - 1, -1, -1):
            d = bufs["d"][i]
            inp = bufs["h"][i - 1] if i > 0 else x
            np.matmul(d.T, inp, out=self.dw[i])
            np.sum(d, axis=0, out=self.db[i])
            if i > 0:
                dprev = bufs["d"][i - 1]
                np.matmul(d, self.w[i], out=dprev)
                mask = bufs["mask"][i - 1]
                np.greater(inp, 0.0, out=mask)  # ReLU' from its output
                np.multiply(dprev, mask, out=dprev)

    def sgd_step(self):
        first = self.steps == 0
        for p, g, buf, tmp in zip(self.w + self.b, self.dw + self.db, self.buf_w + self.buf_b,
                                  self.tmp_w + self.tmp_b):
            if self.momentum:
                if first:
                    np.copyto(buf, g)
                else:
                    np.multiply(buf, self.momentum, out=buf)
                    np.add(buf, g, out=buf)
                g = buf
            np.multiply(g, self.lr, out=tmp)
            np.subtract(p, tmp, out=p)
        self.steps += 1

    def train_step(self, x, y) -> float:
        bufs = self._buffers(x.shape[0])
        logits = self.forward(x, bufs)
        loss = self.loss_and_grad(logits, y, bufs)
        self.backward(x, bufs)
        self.sgd_step()
        return loss

    def predict_logits(self, x, batch: int = 1000):
        out = np.empty((x.shape[0], self.w[-1].shape[0]), np.float32)
        for i in range(0, x.shape[0], batch):
            xb = x[i:i + batch]
            out[i:i + xb.shape[0]] = self.forward(xb)
        return out
