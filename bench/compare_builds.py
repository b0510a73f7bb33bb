"""Two builds of fastdl side by side on one machine: is a change slower anywhere?

    python bench/compare_builds.py --base /path/to/other/venv/bin/python [--new PYTHON] [--rounds 7]
                                   [--name NAME] [--out DIR] [--mnist DIR] [--threads N]

Each round runs one child process per build, alternating (base, new, base, new, ...), so both see
the same minutes of this shared machine. A child (this file with --child) imports whichever fastdl
its interpreter has, warms up, then measures: one MNIST epoch of bench_training's MLP at batch 32,
128 and 512 (the same loop, weights and shuffles as the training benchmark, batch gather included)
and the layer products of a batch-128 step and of one sample's (and 4 samples') first-layer forward
(median of many calls), the dense layer's one-sample and 4-sample forward as eval mode and as
training mode call it (``ops.linear_forward(..., batch_invariant=True / False)``; a build without that
argument runs its one path for both) and one training step of the MLP on one sample (nn.Sequential in
training mode, forward, backward, SGD). The report gives, per case, the
median over rounds of each build and the median of the per-round ratios new / base (< 1: new is
faster), with the CPU, the other load before each child, and both builds' versions.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402 - must set the thread count before numpy is imported


def child(args) -> int:
    threads = common.setup_threads(args.threads)
    import numpy as np  # noqa: PLC0415
    import fastdl  # noqa: PLC0415
    from fastdl import ops  # noqa: PLC0415

    import bench_training as bt  # noqa: PLC0415

    if args.rows:
        _, xtr, ytr, _, _ = bt.load_data(common.Config(threads=threads, quick=args.rows < 60000), args.mnist)
        xtr, ytr = xtr[:args.rows], ytr[:args.rows]
    layers = bt.initial_layers()
    out = {"fastdl": fastdl.__file__, "threads": fastdl.get_num_threads(), "cases": {}}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 784), dtype=np.float32)
    w = rng.standard_normal((256, 784), dtype=np.float32)
    dy = rng.standard_normal((128, 256), dtype=np.float32)
    h = rng.standard_normal((128, 128), dtype=np.float32)
    w3 = rng.standard_normal((10, 128), dtype=np.float32)
    c1, c2, c3 = (np.empty((128, 256), np.float32), np.empty((128, 784), np.float32),
                  np.empty((128, 10), np.float32))
    x1, x4 = x[:1].copy(), x[:4].copy()
    c11, c14 = np.empty((1, 256), np.float32), np.empty((4, 256), np.float32)
    products = {
        "µs: product 128x784->256 forward": lambda: ops.matmul(x, w, trans_b=True, out=c1),
        "µs: product 1x784->256 forward (one sample)": lambda: ops.matmul(x1, w, trans_b=True, out=c11),
        "µs: product 4x784->256 forward": lambda: ops.matmul(x4, w, trans_b=True, out=c14),
        "µs: product 128x256->784 input gradient": lambda: ops.matmul(dy, w, out=c2),
        "µs: product 128x128->10 head": lambda: ops.matmul(h, w3, trans_b=True, out=c3),
    }
    # the dense layer as nn.Linear calls it: eval mode batch-invariant, training mode not (a build
    # without the argument has one path, run for both)
    import inspect  # noqa: PLC0415

    bw = rng.standard_normal(256, dtype=np.float32)
    if "batch_invariant" in inspect.signature(ops.linear_forward).parameters:  # literal keywords: a **kw
        # call costs ~0.3 us more
        def dense(xs, out, invariant):
            if invariant:
                return lambda: ops.linear_forward(xs, w, bw, "relu", out=out, batch_invariant=True)
            return lambda: ops.linear_forward(xs, w, bw, "relu", out=out, batch_invariant=False)
    else:
        def dense(xs, out, invariant):
            return lambda: ops.linear_forward(xs, w, bw, "relu", out=out)
    products.update({
        "µs: linear_forward 1x784->256 relu, eval (batch_invariant=True)": dense(x1, c11, True),
        "µs: linear_forward 1x784->256 relu, training (batch_invariant=False)": dense(x1, c11, False),
        "µs: linear_forward 4x784->256 relu, training (batch_invariant=False)": dense(x4, c14, False),
    })
    net1 = bt.FastdlNet(layers)
    xs1, ys1 = x[:1].copy(), np.array([3], np.int64)
    products["µs: MLP training step, batch 1 (nn, forward + backward + SGD)"] = lambda: net1.step(xs1, ys1)
    v = rng.standard_normal(1 << 16, dtype=np.float32)
    g = rng.standard_normal(1 << 16, dtype=np.float32)
    v_out = np.empty_like(v)
    logits = rng.standard_normal((128, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 128)
    shapes = [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)]
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in shapes]
    bufs = [np.zeros(s, np.float32) for s in shapes]
    products.update({
        "µs: relu 64K floats": lambda: ops.relu(v, out=v_out),
        "µs: relu backward 64K floats": lambda: ops.relu_backward(g, v, out=v_out),
        "µs: softmax cross-entropy 128x10, value and gradient": lambda: ops.softmax_cross_entropy(logits, labels),
        "µs: SGD momentum step over the MLP (235,146 floats)":
            lambda: ops.sgd_step_many(params, grads, bufs, lr=1e-3, momentum=0.9),
    })
    common.warm_up(list(products.values()), 0.5)
    for name, fn in products.items():
        n = common.calls_for(fn, 0.1)
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            ts.append((time.perf_counter() - t0) / n)
        out["cases"][name] = common.median(ts)
    for batch in (32, 128, 512) if args.rows else ():
        net = bt.FastdlNet(layers)
        for i in range(0, batch * 20, batch):
            net.step(xtr[i:i + batch], ytr[i:i + batch])
        time.sleep(0.1)
        sec, _ = bt.run_epoch(net, xtr, ytr, batch, 0)
        out["cases"][f"MNIST epoch ({xtr.shape[0]} rows), batch {batch}"] = sec
    if hasattr(fastdl._C, "contention_stats"):
        out["guard"] = fastdl._C.contention_stats()
    print("RESULT " + json.dumps(out))
    return 0


def parent(args) -> int:
    builds = {"base": args.base, "new": args.new or sys.executable}
    cmd_tail = ["--child", "--rows", str(args.rows)] + (["--mnist", args.mnist] if args.mnist else []) + (
        ["--threads", str(args.threads)] if args.threads else [])
    runs = {k: [] for k in builds}
    loads = {k: [] for k in builds}
    versions, guard = {}, []
    for r in range(args.rounds):
        for k, py in builds.items():
            loads[k].append(common.other_load(0.3))
            proc = subprocess.run([py, str(Path(__file__).resolve()), *cmd_tail], capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise SystemExit(f"compare_builds: the {k} child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            res = json.loads(line[0][7:])
            versions[k] = res["fastdl"]
            runs[k].append(res["cases"])
            if "guard" in res:
                guard.append(res["guard"])
            print(f"round {r + 1} {k}: " + ", ".join(f"{c} {v * (1e6 if c.startswith('µs') else 1):.4g}"
                                                     for c, v in res["cases"].items()), flush=True)
    info = common.machine()
    cases = list(runs["new"][0])
    rows, data = [], []
    for c in cases:
        b = [x[c] for x in runs["base"]]
        n = [x[c] for x in runs["new"]]
        ratios = [nn / bb for nn, bb in zip(n, b)]
        unit, scale = ("µs", 1e6) if c.startswith("µs") else ("s", 1.0)
        rows.append([c.removeprefix("µs: "), f"{common.median(b) * scale:.4g} {unit}", f"{common.median(n) * scale:.4g} {unit}",
                     f"{common.median(ratios):.3f}", f"{min(ratios):.3f}–{max(ratios):.3f}"])
        data.append({"case": c, "base": b, "new": n, "ratios_new_over_base": ratios,
                     "median_ratio": common.median(ratios)})
    all_loads = [x for v in loads.values() for x in v if x is not None]
    md = "\n".join([
        f"# {args.name}: two builds side by side", "",
        f"CPU: {info['cpu']}, {info['cpus_usable']} CPUs usable; {runs['new'] and len(runs['new'])} rounds, "
        f"children alternating base/new; date {info['date']}.",
        f"base: `{versions.get('base')}`; new: `{versions.get('new')}`.",
        (f"The new build's contention guard engaged {sum(g['stalls'] for g in guard)} times in its "
         f"{len(guard)} children (stalled regions: {sum(g['stalled_regions'] for g in guard)} of "
         f"{sum(g['regions'] for g in guard)}).\n" if guard else "") +
        "Other load before each child: " + (f"median {common.median(all_loads):.2f} CPUs, max {max(all_loads):.2f}"
                                            if all_loads else "?") + ".", "",
        common.markdown_table(["case", "base (median)", "new (median)", "new / base (median of rounds)",
                               "range of per-round ratios"], rows)])
    common.write_report(args.out, args.name, md, {"machine": info, "builds": versions, "rounds": args.rounds,
                                                  "other_load": loads, "guard": guard, "results": data})
    print(md)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="python interpreter whose fastdl is the baseline")
    ap.add_argument("--new", default=None, help="python interpreter of the build under test (default: this one)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", type=int, default=60000, help="MNIST training rows per epoch (default all; 0: "
                    "no epochs, the products alone)")
    ap.add_argument("--name", default="compare_builds", help="report name (<out>/<name>.md and .json)")
    ap.add_argument("--out", default=None, help="directory for the report (default bench/results)")
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if not args.base:
        ap.error("--base PYTHON is required")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
