"""Training and small products while other processes keep CPUs busy (issue 14).

    python bench/bench_contention.py [--quick|--tiny] [--out DIR] [--threads N] [--busy K]
                                     [--batches 32,128] [--mnist DIR] [--no-torch]

K busy-loop processes (`while True: pass`, default 1) run for the whole benchmark, so on the 2-core
machine a contender with 2 threads has 3 runnable threads on 2 CPUs. Contenders, all under that load:
fastdl at N threads (its contention guard on, as users get it), fastdl at 1 thread, NumPy (OpenBLAS,
N threads) and PyTorch (N threads) when installed; for the single products also fastdl at N threads
with the guard off (`_C.set_contention_guard(False)`: the behaviour before issue 14).

Cases: one epoch over the first 15,000 MNIST training rows of the 784-256-128-10 MLP at batch 32 and
128 (bench_training's networks, initial weights, shuffles and loop, batch gather included), and the layer products of a batch-128
step (784->256 forward, its input gradient, the 10-class head). Contenders alternate in rounds
(sleep 0.2 s between phases); each figure is the median over rounds. The load is recorded before the
busy processes start and between phases.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - must set the thread count before numpy is imported

BUSY_LOOP = "while True: pass"
TOLERANCE = 1.10  # fastdl at N threads under load: at most this times its own 1-thread time
EPOCH_ROWS = 15000  # a quarter of MNIST: PyTorch and NumPy take 10-40 s a full epoch under this load


class Busy:
    """K processes spinning on a CPU each, for the duration of a with-block."""

    def __init__(self, k: int):
        self.k, self.procs = k, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.k)]
        time.sleep(0.5)  # started and spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def product_cases(np, rng, batch):
    """(name, a, b, trans_b, flops): the products of one training step of the MLP's layers."""
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    w1 = rng.standard_normal((256, 784), dtype=np.float32) * 0.05
    dy = rng.standard_normal((batch, 256), dtype=np.float32)
    h = rng.standard_normal((batch, 128), dtype=np.float32)
    w3 = rng.standard_normal((10, 128), dtype=np.float32) * 0.1
    return [
        (f"forward X·Wᵀ {batch}x784->256", x, w1, True, 2 * batch * 784 * 256),
        (f"input gradient dY·W {batch}x256->784", dy, w1, False, 2 * batch * 784 * 256),
        (f"10-class head X·Wᵀ {batch}x128->10", h, w3, True, 2 * batch * 128 * 10),
    ]


def run(cfg: common.Config, *, busy=1, batches=(32, 128), mnist=None, use_torch=True) -> dict:
    import numpy as np  # noqa: PLC0415 - after setup_threads
    import fastdl  # noqa: PLC0415
    from fastdl import _C, ops  # noqa: PLC0415

    import bench_training as bt  # noqa: PLC0415

    info = common.machine()
    info["cpus_available_to_fastdl"] = _C.available_cpus()
    threads = cfg.threads
    load_average = common.load_average()
    load_quiet = common.other_load(0.5) if not cfg.tiny else None
    classes, missing = bt.available_contenders(use_torch, threads)
    if bt.TorchNet in classes:
        import torch  # noqa: PLC0415

        info["torch"] = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    d = None
    try:
        d, xtr, ytr, _, _ = bt.load_data(cfg, mnist)
        xtr, ytr = xtr[:EPOCH_ROWS], ytr[:EPOCH_ROWS]
    except FileNotFoundError as e:
        missing["mnist"] = str(e)
    layers = bt.initial_layers()
    rounds = cfg.rounds if not cfg.quick else min(cfg.rounds, 5)
    sleep = 0.0 if cfg.tiny else 0.2
    phase = cfg.phase
    stats_before = _C.contention_stats()

    def use(n, guard=True):
        def setup():
            fastdl.set_num_threads(n)
            _C.set_contention_guard(guard)
        return setup

    def nothing():
        fastdl.set_num_threads(threads)
        _C.set_contention_guard(True)

    label_n = f"fastdl {threads} threads"
    records, loads = [], []
    print(f"contention: {busy} busy-loop process(es) beside {threads}-thread contenders; other load before "
          f"they start {common.load_str(load_quiet)} CPUs", flush=True)
    rng = np.random.default_rng(0)
    with Busy(busy):
        for name, a, b, tb, flops in product_cases(np, rng, 128):
            if not cfg.wants(name):
                continue
            out = np.empty((a.shape[0], b.shape[0] if tb else b.shape[1]), np.float32)
            ref = a.astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            common.check(name, ops.matmul(a, b, trans_b=tb, out=out), ref, 1e-5)
            bt_ = np.ascontiguousarray(b.T) if tb else b
            fd = lambda a=a, b=b, tb=tb, out=out: ops.matmul(a, b, trans_b=tb, out=out)  # noqa: E731
            fns, setups = {label_n: fd, "fastdl 1 thread": fd}, {label_n: use(threads), "fastdl 1 thread": use(1)}
            if threads > 1:
                fns[f"{label_n}, guard off"], setups[f"{label_n}, guard off"] = fd, use(threads, guard=False)
            fns["numpy"] = lambda a=a, b=b, tb=tb, out=out: np.matmul(a, b.T if tb else b, out=out)
            setups["numpy"] = nothing
            if bt.TorchNet in classes:
                ta, tb_t, to = torch.from_numpy(a), torch.from_numpy(bt_), torch.from_numpy(out)
                fns["torch"], setups["torch"] = lambda ta=ta, tb_t=tb_t, to=to: torch.mm(ta, tb_t, out=to), nothing
            t = common.interleaved(fns, rounds=rounds, phase_seconds=phase, sleep=sleep, setups=setups, loads=loads)
            nothing()
            rec = {"case": name, "kind": "product", "flops": flops}
            for k, v in t.items():
                rec[k] = {"seconds": common.median(v), "rounds": v}
            records.append(rec)
            print(f"  {name}: " + ", ".join(f"{k} {rec[k]['seconds'] * 1e6:.1f} us" for k in t), flush=True)

        if d is not None:
            for batch in batches:
                name = f"MNIST epoch, batch {batch}"
                if not cfg.wants(name):
                    continue
                nets = {label_n: bt.FastdlNet(layers), "fastdl 1 thread": bt.FastdlNet(layers)}
                setups = {label_n: use(threads), "fastdl 1 thread": use(1)}
                for cls in classes:
                    if cls is not bt.FastdlNet:
                        nets[cls.name] = cls(layers)
                        setups[cls.name] = nothing
                for cls in classes:  # warm-up on throwaway copies
                    warm = cls(layers)
                    for i in range(0, min(xtr.shape[0], batch * (2 if cfg.tiny else 20)), batch):
                        warm.step(xtr[i:i + batch], ytr[i:i + batch])
                times = {k: [] for k in nets}
                epochs = max(2, min(rounds, 5))
                for epoch in range(epochs):
                    for k, net in nets.items():
                        setups[k]()
                        if sleep:
                            loads.append(common.other_load(sleep))
                        sec, _ = bt.run_epoch(net, xtr, ytr, batch, epoch)
                        times[k].append(sec)
                nothing()
                rec = {"case": name, "kind": "epoch", "train_rows": int(xtr.shape[0]), "epochs": epochs}
                for k, v in times.items():
                    rec[k] = {"seconds": common.median(v), "rounds": v}
                records.append(rec)
                print(f"  {name}: " + ", ".join(f"{k} {rec[k]['seconds']:.3f} s" for k in times), flush=True)
    stats_after = _C.contention_stats()
    loads = [x for x in loads if x is not None]
    bars = contention_bars(records, label_n)
    md = markdown(cfg, info, load_average, load_quiet, loads, busy, records, bars, label_n, stats_before, stats_after)
    data = {"machine": info, "config": cfg.as_dict(), "busy_processes": busy, "load_average_before": load_average,
            "other_load_before_busy": load_quiet,
            "other_load_between_phases": loads, "load_average_after": common.load_average(), "missing": missing,
            "mnist": str(d) if d else None, "results": records, "bars": bars,
            "guard_stats": {"before": stats_before, "after": stats_after}}
    md_path, js_path = common.write_report(cfg.out, "contention", md, data)
    print(f"wrote {md_path} and {js_path}")
    return {"name": "contention", "markdown": md, "data": data, "bars": bars}


def paired(r, a, b):
    """Median over rounds of a's time / b's time in the same round (the load moves between rounds)."""
    return common.median([x / y for x, y in zip(r[a]["rounds"], r[b]["rounds"])])


def contention_bars(records, label_n):
    bars = []
    for r in records:
        if label_n not in r or "fastdl 1 thread" not in r:
            continue
        ratio = paired(r, label_n, "fastdl 1 thread")
        bars.append(common.bar(f"under load: {r['case']}, {label_n} vs 1 thread", f"<= {TOLERANCE:.2f}x",
                               f"{ratio:.2f}x", ratio <= TOLERANCE))
        others = {k: paired(r, k, label_n) for k in ("numpy", "torch") if k in r}
        if others:
            bars.append(common.bar(f"under load: {r['case']}, fastdl ahead of " + " and ".join(others),
                                   "> 1x each", ", ".join(f"{v:.2f}x {k}" for k, v in others.items()),
                                   all(v > 1 for v in others.values())))
    return bars


def markdown(cfg, info, load_average, load_quiet, loads, busy, records, bars, label_n, before, after):
    lines = common.header_lines("Contention: fastdl with other processes on the CPUs", cfg, info, load_average)
    lines += [
        f"{busy} busy-loop process(es) ran for the whole benchmark. Other load measured before they started: "
        f"{common.load_str(load_quiet)} CPUs; between phases (the busy loops included): "
        + (f"median {common.median(loads):.2f}, range {min(loads):.2f}-{max(loads):.2f} CPUs" if loads else "?") + ".",
        f"Contention guard during the run: {after['stalls'] - before['stalls']} stalls seen, "
        f"{after['guarded_regions'] - before['guarded_regions']} kernel calls limited by it.",
        "",
    ]
    names = []
    for r in records:
        for k in r:
            if isinstance(r[k], dict) and "seconds" in r[k] and k not in names:
                names.append(k)
    rows = []
    for r in records:
        unit, scale = ("s", 1.0) if r["kind"] == "epoch" else ("µs", 1e6)
        cells = [r["case"]]
        for k in names:
            cells.append(f"{r[k]['seconds'] * scale:.3g} {unit}" if k in r else "")
        cells.append(f"{paired(r, label_n, 'fastdl 1 thread'):.2f}x" if label_n in r and "fastdl 1 thread" in r else "")
        rows.append(cells)
    lines.append(common.markdown_table(["case", *names, f"{label_n} / 1 thread (median of per-round ratios)"],
                                       rows))
    lines += ["", "Times are medians over rounds; ratios (the last column, the bars) are medians of the ratios "
              "within each round, where both contenders saw the same minute of load."]
    lines += ["", "## Bars", "", common.bars_markdown(bars)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    add_contention_args(ap)
    args = ap.parse_args(argv)
    cfg = common.config_from_args(args)
    run_from_args(cfg, args)
    return 0


def add_contention_args(ap):
    ap.add_argument("--busy", type=int, default=1, help="busy-loop processes beside the benchmark (default 1)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes of the epochs (default 32,128)")
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--no-torch", action="store_true", help="do not run PyTorch even when installed")


def run_from_args(cfg, args):
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [32, 128]
    return run(cfg, busy=args.busy, batches=batches, mnist=args.mnist, use_torch=not args.no_torch)


if __name__ == "__main__":
    sys.exit(main())
