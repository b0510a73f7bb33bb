"""The data path of training (issue 15): gathering a batch, the DataLoader's cost seen by the step, fit's epoch.

    python bench/bench_data.py [--quick] [--out DIR] [--threads N] [--mnist DIR] [--base PATH] [--rounds N]

Cases (MNIST's 60000 x 784 float32 training images and labels; random data of that shape when the
files are missing), each checked against NumPy fancy indexing first:

- ``gather``: one 128-row batch, X[idx] and y[idx] by NumPy fancy indexing vs ``ops.gather_rows``
  into reused buffers (interleaved phases, median).
- ``loader next()``: the time the training step spends in ``next(loader)`` per batch, over epochs of
  the 784-256-128-10 MLP (the real step — forward, loss, backward, SGD — between two calls, while the
  loader's native thread gathers the following batches); median, mean and 90th percentile per
  call, and the same epoch with NumPy fancy indexing in the loop for comparison (epoch seconds).
- ``fit epoch`` (with ``--base PATH``): one epoch of ``fastdl.fit`` on that MLP at batch 128, this
  tree vs the tree at PATH (its own fastdl/_C*.so built in place, e.g. ``git archive 2b9d1dc``
  extracted and built with tools/dev_build.sh), in alternating child processes.

The machine is shared: the report records the CPUs other processes kept busy and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402 - must set the thread count before numpy is imported

BATCH = 128


def load_xy(cfg, mnist):
    import numpy as np  # noqa: PLC0415

    import bench_training as bt  # noqa: PLC0415

    try:
        d, xtr, ytr, _, _ = bt.load_data(common.Config(threads=cfg.threads), mnist)
        source = f"MNIST ({d})"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        xtr = rng.random((60000, 784), dtype=np.float32)
        ytr = rng.integers(0, 10, 60000)
        source = "random data of MNIST's shape"
    if cfg.tiny:
        xtr, ytr = xtr[:4096], ytr[:4096]
    return np.ascontiguousarray(xtr, np.float32), np.ascontiguousarray(ytr, np.int64), source


def check_loader(X, y):
    import numpy as np  # noqa: PLC0415
    from fastdl.data import DataLoader  # noqa: PLC0415

    n = min(5000, len(X))
    perm = np.random.default_rng(1).permutation(n)
    for b, (xb, yb) in enumerate(DataLoader(X[:n], y[:n], batch_size=BATCH, shuffle=True, seed=1)):
        idx = perm[b * BATCH:(b + 1) * BATCH]
        if not (np.array_equal(xb, X[idx]) and np.array_equal(yb, y[idx])):
            raise common.BenchCheckError(f"DataLoader: batch {b} differs from X[perm], y[perm]")


def gather_case(cfg, X, y):
    import numpy as np  # noqa: PLC0415
    from fastdl import ops  # noqa: PLC0415

    rng = np.random.default_rng(0)
    idxs = [rng.permutation(len(X))[:BATCH] for _ in range(64)]
    xb = np.empty((BATCH,) + X.shape[1:], X.dtype)
    yb = np.empty(BATCH, y.dtype)
    for idx in idxs[:4]:
        ops.gather_rows(X, idx, xb)
        ops.gather_rows(y, idx, yb)
        if not (np.array_equal(xb, X[idx]) and np.array_equal(yb, y[idx])):
            raise common.BenchCheckError("gather_rows differs from fancy indexing")
    state = {"k": 0}

    def numpy_fancy():
        idx = idxs[state["k"] % 64]
        state["k"] += 1
        return X[idx], y[idx]

    def native():
        idx = idxs[state["k"] % 64]
        state["k"] += 1
        ops.gather_rows(X, idx, xb)
        ops.gather_rows(y, idx, yb)

    t = common.time_cases(cfg, {"numpy fancy indexing": numpy_fancy, "ops.gather_rows": native})
    return {"numpy_us": t["numpy fancy indexing"] * 1e6, "native_us": t["ops.gather_rows"] * 1e6,
            "other_load": t["other_load"]}


def make_mlp():
    from fastdl import nn, optim  # noqa: PLC0415

    import bench_training as bt  # noqa: PLC0415

    net = bt.FastdlNet(bt.initial_layers())
    return net.model, nn.CrossEntropyLoss(), net.opt, optim


def loader_case(cfg, X, y, epochs):
    """Per-call time of next() with the real training step between calls; and the same epoch with
    NumPy fancy indexing in the loop."""
    import numpy as np  # noqa: PLC0415
    from fastdl.data import DataLoader  # noqa: PLC0415

    model, loss_fn, opt, _ = make_mlp()

    def step(xb, yb):
        out = model._forward(xb, True)
        loss_fn(out, yb)
        opt.zero_grad()
        model._backward(loss_fn.backward(), False, True)
        opt.step()

    loader = DataLoader(X, y, batch_size=BATCH, shuffle=True, seed=0)
    rng = np.random.default_rng(0)
    loads = []
    rows = []
    for e in range(epochs):
        loads.append(common.other_load(0.3))
        times = []
        t0 = time.perf_counter()
        it = iter(loader)
        while True:
            a = time.perf_counter()
            try:
                xb, yb = next(it)
            except StopIteration:
                break
            times.append(time.perf_counter() - a)
            step(xb, yb)
        loader_epoch = time.perf_counter() - t0
        time.sleep(0.2)
        perm = rng.permutation(len(X))
        gt = []
        t0 = time.perf_counter()
        for a in range(0, len(X), BATCH):
            g0 = time.perf_counter()
            idx = perm[a:a + BATCH]
            xb, yb = X[idx], y[idx]
            gt.append(time.perf_counter() - g0)
            step(xb, yb)
        numpy_epoch = time.perf_counter() - t0
        t = np.array(times) * 1e6
        rows.append({"epoch": e, "batches": len(t), "next_median_us": float(np.median(t)),
                     "next_mean_us": float(t.mean()), "next_p90_us": float(np.percentile(t, 90)),
                     "waited_over_20us": float(np.mean(t > 20)), "numpy_gather_median_us": float(np.median(gt) * 1e6),
                     "numpy_gather_mean_us": float(np.mean(gt) * 1e6), "loader_epoch_s": loader_epoch,
                     "numpy_epoch_s": numpy_epoch})
        time.sleep(0.2)
    return {"epochs": rows, "other_load": loads}


_CHILD = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import common
common.setup_threads({threads})
import numpy as np
import fastdl
from fastdl import nn, optim
from fastdl.train import fit
import bench_training as bt
X, y = np.load({x!r}), np.load({y!r})
net = bt.FastdlNet(bt.initial_layers())
fit(net.model, nn.CrossEntropyLoss(), net.opt, X[:2048], y[:2048], epochs=1, batch_size=128, seed=0, verbose=0)
net = bt.FastdlNet(bt.initial_layers())
h = fit(net.model, nn.CrossEntropyLoss(), net.opt, X, y, epochs={epochs}, batch_size=128, seed=0, verbose=0)
print(json.dumps({{"fastdl": fastdl.__file__, "seconds": h["seconds"], "loss": h["loss"]}}))
"""


def fit_case(cfg, X, y, base, rounds, epochs):
    """fit's epoch, this tree vs the tree at ``base``, in alternating child processes."""
    import tempfile  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    np.save(tmp / "x.npy", X)
    np.save(tmp / "y.npy", y)
    code = _CHILD.format(here=str(HERE), threads=cfg.threads, x=str(tmp / "x.npy"), y=str(tmp / "y.npy"),
                         epochs=epochs)
    trees = {"base": str(Path(base).resolve()), "new": str(HERE.parent)}
    res = {k: [] for k in trees}
    loads = []
    for _ in range(rounds):
        for name, tree in trees.items():
            loads.append(common.other_load(0.3))
            env = dict(os.environ, PYTHONPATH=tree)
            r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True,
                               timeout=900)
            if r.returncode != 0:
                raise RuntimeError(f"fit child ({name}) failed: {r.stderr[-2000:]}")
            out = json.loads(r.stdout.strip().splitlines()[-1])
            if not out["fastdl"].startswith(tree):
                raise RuntimeError(f"the {name} child imported {out['fastdl']}, not the tree {tree}")
            res[name].append(out)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    # the same batches and steps give the same per-batch losses; the epoch mean may differ in its last bit
    # (the order fit adds them in), not more
    lb, ln = res["base"][0]["loss"], res["new"][0]["loss"]
    if len(lb) != len(ln) or any(abs(a - b) > 1e-12 * abs(a) for a, b in zip(lb, ln)):
        raise common.BenchCheckError(f"fit: the two trees' losses differ: {lb} vs {ln} (the batches or the "
                                     "steps are not the same)")
    med = {k: common.median([min(o["seconds"]) for o in v]) for k, v in res.items()}
    ratios = [min(n["seconds"]) / min(b["seconds"]) for b, n in zip(res["base"], res["new"])]
    return {"base_s": med["base"], "new_s": med["new"], "ratio_new_over_base": common.median(ratios),
            "rounds": res, "other_load": loads, "base": trees["base"]}


def run(cfg, mnist=None, base=None, fit_rounds=3):
    import fastdl  # noqa: PLC0415

    X, y, source = load_xy(cfg, mnist)
    check_loader(X, y)
    info = common.machine()
    data = {"machine": info, "config": cfg.as_dict(), "data": source, "load_average_start": common.load_average()}
    lines = [f"# DataLoader and gather (issue 15) — {cfg.mode()}", "",
             f"{info['cpu']}, {cfg.threads} thread(s) (fastdl {fastdl.get_num_threads()}), {source}; "
             f"load average at start {data['load_average_start']}", ""]
    if cfg.wants("gather"):
        g = gather_case(cfg, X, y)
        data["gather"] = g
        lines += ["## One 128-row batch (X rows of 784 float32 and the int64 labels)", "",
                  common.markdown_table(["method", "µs per batch"],
                                        [["NumPy fancy indexing X[idx], y[idx]", f"{g['numpy_us']:.1f}"],
                                         ["ops.gather_rows into reused buffers", f"{g['native_us']:.1f}"]]),
                  "", f"other load before: {common.load_str(g['other_load'])} CPUs", ""]
    if cfg.wants("loader"):
        lc = loader_case(cfg, X, y, epochs=1 if cfg.quick else 3)
        data["loader"] = lc
        rows = [[r["epoch"], r["batches"], f"{r['next_median_us']:.2f}", f"{r['next_mean_us']:.2f}",
                 f"{r['next_p90_us']:.2f}", f"{100 * r['waited_over_20us']:.1f}%",
                 f"{r['numpy_gather_median_us']:.1f}", f"{r['numpy_gather_mean_us']:.1f}",
                 f"{r['loader_epoch_s']:.3f}", f"{r['numpy_epoch_s']:.3f}"] for r in lc["epochs"]]
        lines += ["## The loader's cost seen by the training step (784-256-128-10 MLP, batch 128)", "",
                  common.markdown_table(["epoch", "batches", "next() median µs", "mean µs", "p90 µs",
                                         "calls > 20 µs", "NumPy gather median µs", "mean µs",
                                         "epoch s (loader)", "epoch s (NumPy gather)"], rows),
                  "", "other load before each epoch: " + ", ".join(common.load_str(v) for v in lc["other_load"]),
                  ""]
    if base and cfg.wants("fit"):
        fc = fit_case(cfg, X, y, base, fit_rounds, epochs=1 if cfg.quick else 2)
        data["fit"] = fc
        lines += ["## fit: one MNIST epoch at batch 128, base tree vs this tree", "",
                  common.markdown_table(["tree", "median epoch s"], [[f"base ({fc['base']})", f"{fc['base_s']:.3f}"],
                                                                   ["this tree", f"{fc['new_s']:.3f}"]]),
                  "", f"median per-round ratio new / base: {fc['ratio_new_over_base']:.3f}; other load before each "
                  "child: " + ", ".join(common.load_str(v) for v in fc["other_load"]), ""]
    data["load_average_end"] = common.load_average()
    lines += [f"load average at end {data['load_average_end']}"]
    bars = []
    if "loader" in data:
        med = common.median([r["next_median_us"] for r in data["loader"]["epochs"]])
        bars.append(common.bar("DataLoader: next() per 128-row MNIST batch during training (median)", "< 2 µs",
                               f"{med:.2f} µs", med < 2.0))
    data["bars"] = bars
    md = "\n".join(lines)
    md_path, js_path = common.write_report(cfg.out, "data", md, data)
    print(md, flush=True)
    return {"name": "data", "markdown": md, "data": data, "bars": bars, "md": md_path, "json": js_path}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--base", default=None, help="a source tree with its extension built in place: fit's epoch "
                    "is compared with it")
    ap.add_argument("--fit-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = common.config_from_args(args)
    run(cfg, mnist=args.mnist, base=args.base, fit_rounds=args.fit_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
