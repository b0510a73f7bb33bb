"""Universal approximation: one hidden layer, wide enough, approximates a continuous f on an interval.

Two constructions, each a network with ONE hidden layer of n units, weights set by hand:
  step units: a staircase. Cut [lo, hi] into n + 1 cells of width h with centres t_0 < ... < t_n
      and boundaries m_1 < ... < m_n; then
          f_n(x) = f(t_0) + sum_i (f(t_i) - f(t_{i-1})) * step(x - m_i)
      and |f - f_n| <= L h for an L-Lipschitz f: the error falls like 1/n.
  ReLU units: the piecewise-linear interpolant at knots t_0 < ... < t_n (spacing h),
          f_n(x) = f(t_0) + sum_{i<n} (s_i - s_{i-1}) * relu(x - t_i),   s_i the slope on [t_i, t_{i+1}], s_{-1} = 0
      and |f - f_n| <= max|f''| h^2 / 8: the error falls like 1/n^2.
Then gradient descent: the same one-hidden-layer shape (sigmoid and ReLU units) trained on noisy
samples of f, with the course's loop. Errors are max |f - f_n| on a fine grid of the interval.

Run: python examples/universal_approximation.py [--fn sin] [--widths 1 2 4 8 16 32] [--plot fits.png]
"""
import argparse

import numpy as np

from fastdl import nn, optim
from fastdl.datasets import REGRESSION_FUNCTIONS, make_regression_1d
from fastdl.train import predict


def step_network(f, lo, hi, n):
    """Linear(1, n) -> Step -> Linear(n, 1): the staircase through f at n + 1 cell centres."""
    h = (hi - lo) / (n + 1)
    centres = lo + (np.arange(n + 1) + 0.5) * h
    boundaries = lo + np.arange(1, n + 1) * h
    values = f(centres)
    net = nn.Sequential(nn.Linear(1, n), nn.Step(), nn.Linear(n, 1))
    net[0].weight.data[...] = 1.0
    net[0].bias.data[...] = -boundaries
    net[2].weight.data[...] = np.diff(values)[None, :]
    net[2].bias.data[...] = values[0]
    return net


def relu_network(f, lo, hi, n):
    """Linear(1, n) -> ReLU -> Linear(n, 1): the piecewise-linear interpolant of f at n + 1 knots."""
    knots = np.linspace(lo, hi, n + 1)
    slopes = np.diff(f(knots)) / np.diff(knots)
    net = nn.Sequential(nn.Linear(1, n), nn.ReLU(), nn.Linear(n, 1))
    net[0].weight.data[...] = 1.0
    net[0].bias.data[...] = -knots[:-1]
    net[2].weight.data[...] = np.diff(slopes, prepend=0.0)[None, :]
    net[2].bias.data[...] = f(knots[:1])
    return net


def trained_network(X, y, n, activation, steps, seed):
    """One hidden layer of n units trained by full-batch Adam on (X, y), MSE loss."""
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation]
    init = "xavier_uniform" if activation == "sigmoid" else "kaiming_uniform"
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Linear(1, n, init=init, rng=rng), act(), nn.Linear(n, 1, init=init, rng=rng))
    loss_fn = nn.MSELoss()
    opt = optim.Adam(model.parameters(), lr=0.05)
    sched = optim.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):  # the course's loop, one full-batch step at a time
        out = model(X)
        loss_fn(out, y)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        sched.step()
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fn", choices=sorted(REGRESSION_FUNCTIONS), default="sin")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--samples", type=int, default=256, help="noisy training samples for the trained networks")
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps per trained network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PNG", help="draw f and the approximations (needs matplotlib)")
    args = p.parse_args()

    f = REGRESSION_FUNCTIONS[args.fn]
    lo, hi = -np.pi, np.pi
    grid = np.linspace(lo, hi, 2001).reshape(-1, 1)
    truth = f(grid[:, 0])
    X, y = make_regression_1d(args.samples, fn=args.fn, noise=args.noise, x_range=(lo, hi),
                              random_state=args.seed)

    def error(net):
        return float(np.max(np.abs(predict(net, grid)[:, 0] - truth)))

    print(f"f = {args.fn} on [-pi, pi]; max |f - f_n| on {len(grid)} grid points; trained nets: "
          f"{args.samples} samples, noise {args.noise}, {args.steps} Adam steps")
    print(f"{'width':>6} {'step (built)':>13} {'relu (built)':>13} {'sigmoid (trained)':>18} {'relu (trained)':>15}")
    curves = {}
    for n in args.widths:
        nets = {"step (built)": step_network(f, lo, hi, n), "relu (built)": relu_network(f, lo, hi, n),
                "sigmoid (trained)": trained_network(X, y, n, "sigmoid", args.steps, args.seed),
                "relu (trained)": trained_network(X, y, n, "relu", args.steps, args.seed)}
        errs = {k: error(net) for k, net in nets.items()}
        curves[n] = {k: predict(net, grid)[:, 0] for k, net in nets.items()}
        print(f"{n:>6} {errs['step (built)']:>13.5f} {errs['relu (built)']:>13.5f} "
              f"{errs['sigmoid (trained)']:>18.5f} {errs['relu (trained)']:>15.5f}")

    if args.plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 8))
        FigureCanvasAgg(fig)
        for ax, kind in zip(fig.subplots(2, 2).ravel(), curves[args.widths[0]]):
            ax.plot(grid[:, 0], truth, "k", lw=2, label=f"f = {args.fn}")
            for n in args.widths[-3:]:
                ax.plot(grid[:, 0], curves[n][kind], lw=1, label=f"n = {n}")
            if "trained" in kind:
                ax.plot(X[:, 0], y[:, 0], ".", ms=2, color="0.6", label="samples")
            ax.set_title(kind)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
