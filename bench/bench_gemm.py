"""fastdl's GEMM against numpy.matmul, float32, same thread count.

    python bench/bench_gemm.py [--quick] [--out DIR] [--threads N] [--rounds R]

NumPy's matmul is OpenBLAS here (np.show_config() names the library): beating it is the point,
and the table says so plainly where fastdl does not. Both sides write into preallocated `out=`
arrays; transposed operands are passed to NumPy as `.T` views (OpenBLAS takes them without a copy)
and to fastdl as trans_a / trans_b flags. Every case is checked against a float64 product before
it is timed. Timing: warm-up, then alternating NumPy and fastdl phases separated by 0.2 s of sleep
(their two spinning thread pools must not overlap), median over the rounds. Writes gemm.md and
gemm.json to bench/results/ (or DIR).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - must set the thread count before numpy is imported

# (label, M, N, K, trans_a, trans_b): c (M,N) = op(a) (M,K) · op(b) (K,N)
CASES = [
    ("256³", 256, 256, 256, False, False),
    ("512³", 512, 512, 512, False, False),
    ("1024³", 1024, 1024, 1024, False, False),
    ("2048³", 2048, 2048, 2048, False, False),
    ("MLP 128×784·784×256", 128, 256, 784, False, False),
    ("MLP 128×256·256×128", 128, 128, 256, False, False),
    ("MLP 128×128·128×10", 128, 10, 128, False, False),
    # the dense layer's own products for the 784→256 layer at batch 128 (no transposed copies)
    ("fwd X·Wᵀ 128×784·(256×784)ᵀ", 128, 256, 784, False, True),
    ("dW dYᵀ·X (128×256)ᵀ·128×784", 256, 784, 128, True, False),
    ("dX dY·W 128×256·256×784", 128, 784, 256, False, False),
]
QUICK = {"256³", "1024³", "MLP 128×784·784×256", "MLP 128×128·128×10"}
RTOL = 4e-6  # as in tests/test_gemm.py: |c - ref| <= RTOL * (|op(a)|·|op(b)|), elementwise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 cases, 3 short rounds (a smoke run)")
    ap.add_argument("--out", default=None, help="directory for gemm.md / gemm.json (default bench/results)")
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: usable CPUs)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 7, quick 3)")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds to wait, per case, for other processes to leave the CPUs idle "
                         "(default 60, quick 0); the load seen is reported either way")
    args = ap.parse_args(argv)

    threads = common.setup_threads(args.threads)
    import numpy as np  # noqa: PLC0415 - after setup_threads
    from fastdl import ops  # noqa: PLC0415

    rounds = args.rounds or (3 if args.quick else 7)
    phase = 0.05 if args.quick else 0.25
    warm = 0.2 if args.quick else 1.0
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if args.quick else 60.0)
    info = common.machine()
    print(f"fastdl GEMM vs numpy.matmul ({info['numpy_blas']}), float32, {threads} threads, "
          f"{rounds} rounds; CPU: {info['cpu']}", flush=True)

    rng = np.random.default_rng(0)
    rows, records = [], []
    for label, M, N, K, ta, tb in CASES:
        if args.quick and label not in QUICK:
            continue
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        a_np, b_np = (a.T if ta else a), (b.T if tb else b)  # views: OpenBLAS gets the transpose flags
        c_np = np.empty((M, N), np.float32)
        c_fd = np.empty((M, N), np.float32)

        def run_numpy():
            np.matmul(a_np, b_np, out=c_np)

        def run_fastdl():
            ops.matmul(a, b, trans_a=ta, trans_b=tb, out=c_fd)

        # correctness first, against float64
        A64, B64 = a_np.astype(np.float64), b_np.astype(np.float64)
        ref, scale = A64 @ B64, np.abs(A64) @ np.abs(B64)
        run_numpy()
        run_fastdl()
        err_fd = float(np.max(np.abs(c_fd - ref) / scale))
        err_np = float(np.max(np.abs(c_np - ref) / scale))
        if not err_fd <= RTOL:
            print(f"{label}: fastdl result is wrong (max error {err_fd:.3g} of sum |a||b|)", file=sys.stderr)
            return 1

        load = common.wait_for_quiet(max_wait)
        common.warm_up([run_numpy, run_fastdl], warm)
        t = common.interleaved({"numpy": run_numpy, "fastdl": run_fastdl}, rounds=rounds, phase_seconds=phase)
        t_np, t_fd = common.median(t["numpy"]), common.median(t["fastdl"])
        flop = 2.0 * M * N * K
        gf_np, gf_fd = flop / t_np / 1e9, flop / t_fd / 1e9
        # the best round too: on a shared machine it is the one least disturbed by other processes
        best_np, best_fd = flop / min(t["numpy"]) / 1e9, flop / min(t["fastdl"]) / 1e9
        variant = {(False, False): "NN", (True, False): "TN", (False, True): "NT", (True, True): "TT"}[(ta, tb)]
        load_s = "?" if load is None else f"{load:.1f}"
        row = [label, variant, f"{gf_np:.1f}", f"{gf_fd:.1f}", f"**{gf_fd / gf_np:.2f}**", f"{t_np * 1e6:.1f}",
               f"{t_fd * 1e6:.1f}", f"{best_np:.1f}", f"{best_fd:.1f}", f"{best_fd / best_np:.2f}", load_s]
        rows.append(row)
        records.append({
            "case": label, "M": M, "N": N, "K": K, "trans_a": ta, "trans_b": tb,
            "numpy_gflops": gf_np, "fastdl_gflops": gf_fd, "ratio": gf_fd / gf_np,
            "numpy_gflops_best": best_np, "fastdl_gflops_best": best_fd, "ratio_best": best_fd / best_np,
            "numpy_us": t_np * 1e6, "fastdl_us": t_fd * 1e6,
            "numpy_us_rounds": [x * 1e6 for x in t["numpy"]], "fastdl_us_rounds": [x * 1e6 for x in t["fastdl"]],
            "max_rel_error_numpy": err_np, "max_rel_error_fastdl": err_fd, "other_load_cpus": load,
        })
        print(f"  {label:32s} {variant}  numpy {gf_np:7.1f} GF/s  fastdl {gf_fd:7.1f} GF/s  "
              f"ratio {gf_fd / gf_np:5.2f}   ({t_np * 1e6:9.1f} / {t_fd * 1e6:9.1f} us)  best {best_np:6.1f} / "
              f"{best_fd:6.1f} GF/s = {best_fd / best_np:4.2f}  other load {load_s}",
              flush=True)

    header = ["case", "op", "NumPy GF/s", "fastdl GF/s", "fastdl / NumPy", "NumPy µs", "fastdl µs",
              "NumPy best GF/s", "fastdl best GF/s", "best: fastdl / NumPy", "other load"]
    md = "\n".join([
        "# GEMM: fastdl vs numpy.matmul",
        "",
        f"float32, {threads} threads on both sides, median of {rounds} interleaved rounds "
        f"({'quick run' if args.quick else 'full run'}, {info['date']}).",
        f"NumPy {info['numpy']} calls {info['numpy_blas']} (OpenBLAS): `np.matmul(a, b, out=c)`, transposes as "
        "`.T` views. fastdl: `fastdl.ops.matmul(a, b, trans_a=, trans_b=, out=c)`, ISA "
        f"{info['fastdl_isa']}, {info['compiler']}.",
        f"CPU: {info['cpu']} ({info['cpus_usable']} usable CPUs). Every result was checked against a float64 "
        "product before timing.",
        "",
        common.markdown_table(header, rows),
        "",
        "op: NN = a·b, TN = aᵀ·b, NT = a·bᵀ (a or b stored transposed; no copies on either side). "
        "GF/s = 2·M·N·K / time, from the median round; \"best\" columns: the fastest round of each. other load: CPUs kept busy by other processes just before the case "
        "(from /proc/stat); anything above 0 means the two contenders shared the machine and the "
        "absolute numbers are low (the ratio, measured in alternating phases, suffers less).",
    ])
    md_path, js_path = common.write_report(args.out, "gemm", md,
                                           {"machine": info, "threads": threads, "rounds": rounds,
                                            "quick": args.quick, "results": records})
    print(f"wrote {md_path} and {js_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
