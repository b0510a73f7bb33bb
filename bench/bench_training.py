"""Whole training: one epoch of the 784-256-128-10 ReLU MLP on MNIST, fastdl vs plain NumPy vs PyTorch.

    python bench/bench_training.py [--quick] [--out DIR] [--threads N] [--batches 32,128,512]
                                   [--mnist DIR] [--no-torch] [--skip-98]

Same network, same initial weights (fastdl's Linear init with a fixed seed, copied into the
others), same shuffles (one permutation per epoch from a fixed seed), same hyperparameters:
softmax cross-entropy, SGD with momentum 0.9 (PyTorch's formula), learning rate 0.05.

- fastdl: fastdl.nn.Sequential + CrossEntropyLoss + fastdl.optim.SGD, the explicit loop
  ``out = model(x); loss = loss_fn(out, y); opt.zero_grad(); model.backward(loss_fn.backward(),
  need_input_grad=False); opt.step()``.
- NumPy: bench/numpy_mlp.py (float32, buffers reused, OpenBLAS matmuls on transposed views).
- PyTorch (CPU, torch.set_num_threads to the same count) when ``import torch`` works:
  nn.Sequential of Linear/ReLU, nn.CrossEntropyLoss, optim.SGD(momentum=0.9), loss.backward().

Every contender's first two steps are checked against a float64 NumPy reference before any
timing. Then, per batch size, the contenders train in interleaved rounds (each round one epoch of
each, 0.2 s of sleep between them so their thread pools do not fight); the epoch time is the median
over rounds; test accuracy is reported after the same number of epochs for each. Finally fastdl
trains a fresh model at batch 128 until 98% test accuracy (time to accuracy; --quick skips it).
Each batch's rows are gathered with NumPy fancy indexing inside the timed loop for all contenders.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - must set the thread count before numpy is imported

SIZES = [784, 256, 128, 10]
LR, MOMENTUM, SEED = 0.05, 0.9, 0
TARGET_ACC = 0.98


def mlp_flops_per_sample():
    """GEMM flops of one training step per sample: forward, dW for every layer, dX for all but the first."""
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    fwd = sum(2 * a * b for a, b in pairs)
    return fwd + fwd + sum(2 * a * b for a, b in pairs[1:])


def find_mnist(explicit=None):
    """The MNIST directory: --mnist, $FASTDL_MNIST_DIR, or shared/data/mnist beside the repository
    (or beside one of its parents: worktrees sit deeper)."""
    for cand in [explicit, os.environ.get("FASTDL_MNIST_DIR")]:
        if cand:
            return Path(cand)
    here = Path(__file__).resolve().parent.parent
    for d in [here, *here.parents]:
        p = d / "shared" / "data" / "mnist"
        if p.is_dir():
            return p
    return None


_LOADED = {}  # directory -> the four arrays (one process may run the training benchmark twice)


def load_data(cfg, mnist_dir):
    from fastdl import datasets  # noqa: PLC0415

    d = find_mnist(mnist_dir)
    if d is None:
        raise FileNotFoundError("MNIST not found: pass --mnist DIR or set FASTDL_MNIST_DIR "
                                "(expected ../shared/data/mnist beside the repository)")
    if str(d) not in _LOADED:
        (xtr, ytr), (xte, yte) = datasets.load_mnist(d)
        _LOADED[str(d)] = (xtr, ytr, xte, yte)
    xtr, ytr, xte, yte = _LOADED[str(d)]
    if cfg.tiny:
        xtr, ytr, xte, yte = xtr[:1024], ytr[:1024], xte[:1000], yte[:1000]
    elif cfg.quick:
        xtr, ytr = xtr[:15000], ytr[:15000]
    return d, xtr, ytr, xte, yte


# ------------------------------------------------------------------------------------- contenders


def fastdl_mlp(sizes, rng):
    """``fastdl.models.mlp(sizes, rng=rng)``; with a build from before it existed (compare_builds and
    bench_data run older builds), the same layers by hand."""
    import numpy as np  # noqa: PLC0415
    from fastdl import models, nn  # noqa: PLC0415

    if hasattr(models, "mlp"):
        return models.mlp(sizes, rng=rng)
    rng = np.random.default_rng(rng)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, init="kaiming_uniform", rng=rng))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def initial_layers():
    """The initial weights every contender starts from: those of ``fastdl.models.mlp(SIZES, rng=SEED)``
    (ReLU, Kaiming uniform weights, zero biases)."""
    from fastdl import nn  # noqa: PLC0415

    net = fastdl_mlp(SIZES, SEED)
    return [(m.weight.data.copy(), m.bias.data.copy()) for m in net if isinstance(m, nn.Linear)]


class FastdlNet:
    name = "fastdl"

    def __init__(self, layers):
        from fastdl import nn, optim  # noqa: PLC0415

        # the ReLU MLP of these sizes (fastdl.models.mlp), started from the given weights
        self.model = fastdl_mlp([layers[0][0].shape[1], *(w.shape[0] for w, _ in layers)], 0)
        for lin, (w, b) in zip((m for m in self.model if isinstance(m, nn.Linear)), layers):
            lin.weight.data[...] = w
            lin.bias.data[...] = b
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(self, x, y) -> float:
        model, loss_fn, opt = self.model, self.loss_fn, self.opt
        out = model(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
        return loss

    def logits(self, x):
        self.model.eval()
        out = self.model(x)
        self.model.train()
        return out

    def layers(self):
        lins = [m for m in self.model if hasattr(m, "weight")]
        return [(m.weight.data.copy(), m.bias.data.copy()) for m in lins]


class NumpyNet:
    name = "numpy"

    def __init__(self, layers):
        from numpy_mlp import NumpyMLP  # noqa: PLC0415

        self.net = NumpyMLP(layers, lr=LR, momentum=MOMENTUM)

    def step(self, x, y) -> float:
        return self.net.train_step(x, y)

    def logits(self, x):
        return self.net.predict_logits(x)

    def layers(self):
        return [(w.copy(), b.copy()) for w, b in zip(self.net.w, self.net.b)]


class TorchNet:
    name = "torch"

    def __init__(self, layers):
        import torch  # noqa: PLC0415

        self.torch = torch
        mods = []
        for i, (w, b) in enumerate(layers):
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if i < len(layers) - 1:
                mods.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*mods)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(self, x, y) -> float:
        torch = self.torch
        xb, yb = torch.from_numpy(x), torch.from_numpy(y)
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        return loss.item()

    def logits(self, x):
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()

    def layers(self):
        lins = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in lins]


def available_contenders(use_torch: bool, threads: int):
    """[(class, note)] of the contenders this environment can run, and why others are missing."""
    from fastdl import ops  # noqa: PLC0415

    out, missing = [], {}
    if hasattr(ops, "softmax_cross_entropy"):
        out.append(FastdlNet)
    else:
        missing["fastdl"] = "fastdl.ops.softmax_cross_entropy not in this build (CrossEntropyLoss needs it)"
    out.append(NumpyNet)
    if use_torch:
        try:
            import torch  # noqa: PLC0415

            torch.set_num_threads(threads)
            out.append(TorchNet)
        except ImportError:
            missing["torch"] = "PyTorch not installed"
    else:
        missing["torch"] = "--no-torch"
    return out, missing


# ----------------------------------------------------------------------------------- correctness


def reference_steps(layers, x, y, steps):
    """`steps` SGD-momentum steps on the same batch, float64, written naively; returns the layers."""
    import numpy as np  # noqa: PLC0415

    ws = [w.astype(np.float64) for w, _ in layers]
    bs = [b.astype(np.float64) for _, b in layers]
    bufs = None
    for _ in range(steps):
        hs = [x.astype(np.float64)]
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = hs[-1] @ w.T + b
            hs.append(np.maximum(z, 0) if i < len(ws) - 1 else z)
        z = hs[-1]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d = p
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        grads = []
        for i in range(len(ws) - 1, -1, -1):
            grads.append((d.T @ hs[i], d.sum(axis=0)))
            if i > 0:
                d = (d @ ws[i]) * (hs[i] > 0)
        grads = grads[::-1]
        flat = [g for pair in grads for g in pair]
        bufs = [g.copy() for g in flat] if bufs is None else [MOMENTUM * bf + g for bf, g in zip(bufs, flat)]
        for j, (w, b) in enumerate(zip(ws, bs)):
            w -= LR * bufs[2 * j]
            b -= LR * bufs[2 * j + 1]
    return list(zip(ws, bs))


def check_contenders(classes, layers, x, y):
    """Two steps of each contender against reference_steps: the weight CHANGES must agree (a
    comparison of the weights themselves would hide a wrong update). Returns {name: error}."""
    ref = reference_steps(layers, x, y, 2)
    errors = {}
    for cls in classes:
        net = cls(layers)
        net.step(x, y)
        net.step(x, y)
        err = 0.0
        for i, ((w, b), (rw, rb), (w0, b0)) in enumerate(zip(net.layers(), ref, layers)):
            err = max(err, common.rel_error(w - w0, rw - w0), common.rel_error(b - b0, rb - b0))
        if not err <= 2e-3:
            raise common.BenchCheckError(f"training {cls.name}: two SGD steps differ from the float64 reference "
                                         f"(error {err:.3g} of the weight change, allowed 2e-3); not timing it")
        errors[cls.name] = err
    return errors


# ------------------------------------------------------------------------------------------- run


def accuracy(net, x, y):
    import numpy as np  # noqa: PLC0415

    return float(np.mean(np.argmax(net.logits(x), axis=1) == y))


def run_epoch(net, x, y, batch, epoch):
    """One epoch, shuffled by the epoch's permutation. Returns (seconds, mean loss)."""
    import numpy as np  # noqa: PLC0415

    perm = np.random.default_rng(SEED + 1000 + epoch).permutation(x.shape[0])
    total, count = 0.0, 0
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        idx = perm[i:i + batch]
        total += net.step(x[idx], y[idx])
        count += 1
    return time.perf_counter() - t0, total / count


def run(cfg: common.Config, limits: common.Limits, *, batches=(32, 128, 512), mnist=None, use_torch=True,
        time_to_98=True) -> dict:
    import numpy as np  # noqa: PLC0415 - after setup_threads

    info = common.machine()
    load_before = common.load_average()
    d, xtr, ytr, xte, yte = load_data(cfg, mnist)
    classes, missing = available_contenders(use_torch, cfg.threads)
    layers = initial_layers()
    peak = limits.peak(cfg.threads)
    epochs = max(2, min(cfg.rounds, 5))
    print(f"training: 784-256-128-10 MLP on MNIST ({xtr.shape[0]} train / {xte.shape[0]} test rows), "
          f"{cfg.threads} threads, {epochs} epochs per contender and batch size; contenders "
          f"{', '.join(c.name for c in classes)}" + (f"; missing: {missing}" if missing else ""), flush=True)

    check_err = check_contenders(classes, layers, xtr[:128], ytr[:128])
    print("  checked against float64 (error of the weight change after 2 steps): "
          + ", ".join(f"{k} {v:.1e}" for k, v in check_err.items()), flush=True)
    if TorchNet in classes:
        import torch  # noqa: PLC0415

        info["torch"] = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    flop_epoch = mlp_flops_per_sample() * xtr.shape[0]
    records = []
    for batch in batches:
        if not cfg.wants(f"batch {batch}"):
            continue
        nets = {cls.name: cls(layers) for cls in classes}
        load_start = common.wait_for_quiet(cfg.max_wait) if cfg.max_wait > 0 else None
        # warm-up on throwaway copies: pools started, buffers allocated, clocks up
        for cls in classes:
            warm = cls(layers)
            for i in range(0, min(xtr.shape[0], batch * (2 if cfg.tiny else 20)), batch):
                warm.step(xtr[i:i + batch], ytr[i:i + batch])
        times = {name: [] for name in nets}
        losses = {name: [] for name in nets}
        loads = []
        for epoch in range(epochs):
            for name, net in nets.items():
                if cfg.sleep:
                    loads.append(common.other_load(cfg.sleep))
                sec, loss = run_epoch(net, xtr, ytr, batch, epoch)
                times[name].append(sec)
                losses[name].append(loss)
        rec = {"batch": batch, "epochs": epochs, "train_rows": int(xtr.shape[0]), "flop_per_epoch": flop_epoch,
               "other_load_before": load_start, "other_load_between_epochs": [x for x in loads if x is not None]}
        for name, net in nets.items():
            med = common.median(times[name])
            rec[name] = {"epoch_seconds": med, "epoch_seconds_rounds": times[name], "train_loss": losses[name],
                         "test_accuracy": accuracy(net, xte, yte), "gflops": flop_epoch / med / 1e9,
                         "peak_fraction": flop_epoch / med / 1e9 / peak}
        for other in ("numpy", "torch"):
            if "fastdl" in rec and other in rec:
                rec[f"speedup_vs_{other}"] = rec[other]["epoch_seconds"] / rec["fastdl"]["epoch_seconds"]
        records.append(rec)
        print(f"  batch {batch:4d}: " + "  ".join(
            f"{n} {rec[n]['epoch_seconds']:.3f} s/epoch (acc {rec[n]['test_accuracy']:.2%})" for n in nets)
            + "".join(f"  fastdl ×{rec[k]:.2f} vs {k[11:]}" for k in rec if k.startswith("speedup_vs_")), flush=True)

    t98 = None
    if time_to_98 and not cfg.quick and any(c is FastdlNet for c in classes) and cfg.wants("time to 98%"):
        t98 = time_to_accuracy(FastdlNet(layers), xtr, ytr, xte, yte, batch=128, max_epochs=20)
        print(f"  fastdl time to {TARGET_ACC:.0%} test accuracy at batch 128: " + (
            f"{t98['train_seconds']:.2f} s of training ({t98['epochs']} epochs)" if t98["reached"]
            else f"not reached in {t98['epochs']} epochs (best {max(t98['test_accuracy']):.2%})"), flush=True)

    bars = training_bars(records, missing)
    md = markdown(cfg, info, load_before, records, t98, missing, check_err, peak, bars, d)
    data = {"machine": info, "config": cfg.as_dict(), "load_average_before": load_before,
            "load_average_after": common.load_average(), "fma_peak_gflops": peak, "lr": LR, "momentum": MOMENTUM,
            "seed": SEED, "mnist": str(d), "missing": missing, "check_errors": check_err, "results": records,
            "time_to_98": t98, "bars": bars}
    md_path, js_path = common.write_report(cfg.out, "training", md, data)
    plots = []
    labels, values = [], []
    for r in records:
        for k in ("speedup_vs_numpy", "speedup_vs_torch"):
            if k in r:
                labels.append(f"batch {r['batch']}: fastdl vs {k[11:]}")
                values.append(r[k])
    p = common.plot_bars(cfg.out / "training_speedup.png", f"MNIST epoch speed-up, {cfg.threads} threads",
                         labels, values, xlabel="speed-up (× the other's epoch time)")
    plots += [p] if p else []
    print(f"wrote {md_path} and {js_path}" + "".join(f" and {p}" for p in plots))
    return {"name": "training", "markdown": md, "data": data, "bars": bars}


def time_to_accuracy(net, xtr, ytr, xte, yte, *, batch, max_epochs):
    """Train until the test accuracy reaches TARGET_ACC; training seconds exclude the evaluations."""
    train_s, accs = 0.0, []
    t_wall = time.perf_counter()
    for epoch in range(max_epochs):
        sec, _ = run_epoch(net, xtr, ytr, batch, 100 + epoch)
        train_s += sec
        accs.append(accuracy(net, xte, yte))
        if accs[-1] >= TARGET_ACC:
            break
    return {"reached": accs[-1] >= TARGET_ACC, "epochs": len(accs), "train_seconds": train_s,
            "wall_seconds_with_evaluation": time.perf_counter() - t_wall, "test_accuracy": accs, "batch": batch}


def training_bars(records, missing):
    bars = []
    r = next((r for r in records if r["batch"] == 128), None)
    if r is None:
        return bars
    for other, target in (("torch", 2.5), ("numpy", 3.0)):
        label = f"MNIST epoch at batch 128 vs {'PyTorch CPU' if other == 'torch' else 'the NumPy network'}"
        k = f"speedup_vs_{other}"
        if k in r:
            bars.append(common.bar(label, f"≥ {target}×", f"{r[k]:.2f}× ({r['fastdl']['epoch_seconds']:.2f} s vs "
                                   f"{r[other]['epoch_seconds']:.2f} s)", r[k] >= target))
        else:
            why = missing.get("fastdl") or missing.get(other, "not measured")
            bars.append(common.bar(label, f"≥ {target}×", f"not measured: {why}", None))
    if "fastdl" in r:
        others = [o for o in ("torch", "numpy") if o in r]
        if others:
            gap = max(abs(r["fastdl"]["test_accuracy"] - r[o]["test_accuracy"]) for o in others) * 100
            each = ", ".join(f"{o} {r[o]['test_accuracy']:.2%}" for o in ["fastdl", *others])
            bars.append(common.bar(f"same accuracy after {r['epochs']} epochs, same seed (batch 128)",
                                   "within 0.3 points", f"{gap:.2f} points ({each})", gap <= 0.3))
    return bars


def markdown(cfg, info, load_before, records, t98, missing, check_err, peak, bars, d):
    lines = common.header_lines("Training: MNIST 784-256-128-10 MLP, one epoch", cfg, info, load_before)
    lines += [
        f"Data: {d} ({records[0]['train_rows'] if records else '?'} training rows per epoch). Same initial weights "
        f"and shuffles for every contender; SGD lr {LR}, momentum {MOMENTUM}; softmax cross-entropy. Epoch time = "
        "median over the epochs (contenders interleaved, 0.2 s apart); test accuracy after the same epochs. "
        f"GF/s = GEMM flops of the epoch / time ({mlp_flops_per_sample():,} per sample), % peak against the "
        f"{peak:.0f} GF/s FMA peak of this run.",
        f"fastdl: nn.Sequential + optim.SGD, explicit loop with `model.backward(..., need_input_grad=False)`. "
        "NumPy: bench/numpy_mlp.py. PyTorch: " + (f"{info.get('torch')}, torch.set_num_threads({cfg.threads})"
                                                   if "torch" in info else "not run") + ".",
        "Checked before timing, error of the weight change after two steps against float64: "
        + ", ".join(f"{k} {v:.1e}" for k, v in check_err.items()) + ".",
        "",
    ]
    names = [n for n in ("fastdl", "numpy", "torch") if any(n in r for r in records)]
    rows = []
    for r in records:
        for n in names:
            if n in r:
                x = r[n]
                loads = r.get("other_load_between_epochs") or []
                rows.append([r["batch"], n, f"{x['epoch_seconds']:.3f}", f"{x['gflops']:.1f}",
                             f"{x['peak_fraction']:.0%}", f"{x['test_accuracy']:.2%}", f"{x['train_loss'][-1]:.4f}",
                             f"{r[n]['epoch_seconds'] / r['fastdl']['epoch_seconds']:.2f}" if "fastdl" in r else "—",
                             common.load_str(common.median(loads) if loads else None)])
    lines += [common.markdown_table(["batch", "contender", "s / epoch", "GF/s", "% peak", "test acc",
                                     "last epoch loss", "time / fastdl's", "other load"], rows),
              "", "other load: median over the epochs of the CPUs other processes kept busy in the pause "
              "before each epoch.", ""]
    if missing:
        lines += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in missing.items()) + ".", ""]
    if t98:
        lines += [f"fastdl time to {TARGET_ACC:.0%} test accuracy (batch {t98['batch']}, lr {LR}, momentum "
                  f"{MOMENTUM}): " + (f"**{t98['train_seconds']:.2f} s** of training, {t98['epochs']} epochs "
                                      f"({t98['wall_seconds_with_evaluation']:.2f} s with the evaluations)"
                                      if t98["reached"] else f"not reached in {t98['epochs']} epochs")
                  + "; accuracy by epoch: " + ", ".join(f"{a:.2%}" for a in t98["test_accuracy"]) + ".", ""]
    if bars:
        lines += [common.bars_markdown(bars)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    add_training_args(ap)
    args = ap.parse_args(argv)
    cfg = common.config_from_args(args)
    run_from_args(cfg, common.Limits(cfg), args)
    return 0


def add_training_args(ap):
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 32,128,512)")
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--no-torch", action="store_true", help="do not run PyTorch even when installed")
    ap.add_argument("--skip-98", action="store_true", help="skip the time-to-98%% run")


def run_from_args(cfg, limits, args):
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([32, 128] if cfg.tiny else [32, 128, 512])
    return run(cfg, limits, batches=batches, mnist=args.mnist, use_torch=not args.no_torch,
               time_to_98=not args.skip_98)


if __name__ == "__main__":
    sys.exit(main())
