"""fastdl's GEMM against numpy.matmul, float32, same thread count.

    python bench/bench_gemm.py [--quick] [--out DIR] [--threads N] [--rounds R] [--cases SUBSTRS]

NumPy's matmul is OpenBLAS here (np.show_config() names the library): beating it is the point,
and the table says so plainly where fastdl does not. Both sides write into preallocated `out=`
arrays; transposed operands are passed to NumPy as `.T` views (OpenBLAS takes them without a copy)
and to fastdl as trans_a / trans_b flags. Every case is checked against a float64 product before
it is timed (a wrong result raises common.BenchCheckError). Timing: warm-up, then alternating NumPy
and fastdl phases separated by 0.2 s of sleep (their two spinning thread pools must not overlap),
median over the rounds. Every rate is also given as a fraction of the FMA peak measured in the same
run. Writes gemm.md, gemm.json (and PNG plots with matplotlib) to bench/results/ (or DIR).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - must set the thread count before numpy is imported

# (label, group, M, N, K, trans_a, trans_b): c (M,N) = op(a) (M,K) · op(b) (K,N)
# A dense layer with weight W (OC, C) on a batch X (B, C) computes three products, none of which
# needs a transposed copy: forward Y = X·Wᵀ (B,OC,C; NT), dW = dYᵀ·X (OC,C,B; TN), dX = dY·W (B,C,OC; NN).
SQUARE = [64, 128, 256, 512, 1024, 2048]
LAYERS = [(784, 256), (256, 128), (128, 10)]  # the 784-256-128-10 MLP
SWEEP = [32, 64, 128, 256, 512]               # batch sizes at 784 -> 256


def layer_cases(batch, c_in, c_out, tag="MLP"):
    return [
        (f"{tag} fwd X·Wᵀ {batch}×{c_in}→{c_out}", "layer", batch, c_out, c_in, False, True),
        (f"{tag} dW=dYᵀ·X {batch}×{c_in}→{c_out}", "layer", c_out, c_in, batch, True, False),
        (f"{tag} dX=dY·W {batch}×{c_in}→{c_out}", "layer", batch, c_in, c_out, False, False),
    ]


def all_cases(cfg):
    if cfg.tiny:
        return ([("64³", "square", 64, 64, 64, False, False)] + layer_cases(16, 96, 40)
                + [("sweep fwd 8×96→40", "sweep", 8, 40, 96, False, True)])
    square = [64, 256, 1024, 2048] if cfg.quick else SQUARE
    cases = [(f"{n}³", "square", n, n, n, False, False) for n in square]
    for c_in, c_out in LAYERS:
        cases += layer_cases(128, c_in, c_out)
    cases.append(("MLP fwd X·Wᵀ 512×128→10", "layer", 512, 10, 128, False, True))
    for b in ([32, 512] if cfg.quick else SWEEP):
        if b != 128:  # batch 128 is the layer case above
            cases.append((f"sweep fwd X·Wᵀ {b}×784→256", "sweep", b, 256, 784, False, True))
    return cases


RTOL = 4e-6  # as in tests/test_gemm.py: |c - ref| <= RTOL * (|op(a)|·|op(b)|), elementwise
VARIANT = {(False, False): "NN", (True, False): "TN", (False, True): "NT", (True, True): "TT"}


def run(cfg: common.Config, limits: common.Limits) -> dict:
    """Time every selected case; write gemm.md / gemm.json (+ plots); return the report dict with bars."""
    import numpy as np  # noqa: PLC0415 - after setup_threads
    from fastdl import ops  # noqa: PLC0415

    info = common.machine()
    load_before = common.load_average()
    peak = run_peak = limits.peak(cfg.threads)
    print(f"GEMM: fastdl vs numpy.matmul ({info['numpy_blas']}), float32, {cfg.threads} threads, "
          f"{cfg.rounds} rounds; FMA peak {peak:.1f} GF/s", flush=True)

    rng = np.random.default_rng(0)
    rows, records = [], []
    for label, group, M, N, K, ta, tb in all_cases(cfg):
        if not cfg.wants(label):
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
            raise common.BenchCheckError(f"GEMM {label}: fastdl result is wrong (max error {err_fd:.3g} of "
                                         f"sum |a||b|, allowed {RTOL:g}); not timing it")

        peak_fn, peak_flop = common.peak_contender(cfg.threads)
        t = common.time_cases(cfg, {"numpy": run_numpy, "fastdl": run_fastdl, "fma peak": peak_fn})
        t_np, t_fd = t["numpy"], t["fastdl"]
        flop = 2.0 * M * N * K
        gf_np, gf_fd = flop / t_np / 1e9, flop / t_fd / 1e9
        # the peak this case is measured against: the FMA loop timed in the same rounds, or the run's
        # quiet-machine peak when that is higher (a loaded machine must not flatter the fraction)
        peak_rounds = peak_flop / t["fma peak"] / 1e9
        peak = max(peak_rounds, run_peak)
        variant = VARIANT[(ta, tb)]
        rows.append([label, variant, f"{gf_np:.1f}", f"{gf_fd:.1f}", f"{gf_fd / gf_np:.2f}", f"{peak:.0f}",
                     f"{gf_np / peak:.0%}", f"{gf_fd / peak:.0%}", f"{t_np * 1e6:.1f}", f"{t_fd * 1e6:.1f}",
                     f"{err_np:.1e}", f"{err_fd:.1e}", common.load_str(t["other_load"])])
        records.append({
            "case": label, "group": group, "M": M, "N": N, "K": K, "trans_a": ta, "trans_b": tb,
            "variant": variant, "numpy_gflops": gf_np, "fastdl_gflops": gf_fd, "ratio": gf_fd / gf_np,
            "numpy_peak_fraction": gf_np / peak, "fastdl_peak_fraction": gf_fd / peak, "peak_gflops_same_rounds": peak_rounds,
            "peak_gflops_used": peak,
            "numpy_us": t_np * 1e6, "fastdl_us": t_fd * 1e6,
            "numpy_us_rounds": [x * 1e6 for x in t["rounds"]["numpy"]],
            "fastdl_us_rounds": [x * 1e6 for x in t["rounds"]["fastdl"]],
            "max_rel_error_numpy": err_np, "max_rel_error_fastdl": err_fd, "other_load_cpus": t["other_load"],
        })
        print(f"  {label:34s} {variant}  numpy {gf_np:7.1f} GF/s  fastdl {gf_fd:7.1f} GF/s  "
              f"ratio {gf_fd / gf_np:5.2f}  ({gf_fd / peak:4.0%} of peak)  "
              f"({t_np * 1e6:9.1f} / {t_fd * 1e6:9.1f} us)  other load {common.load_str(t['other_load'])}",
              flush=True)

    peak = run_peak
    bars = gemm_bars(records)
    header = ["case", "op", "NumPy GF/s", "fastdl GF/s", "fastdl / NumPy", "peak GF/s", "NumPy % peak", "fastdl % peak",
              "NumPy µs", "fastdl µs", "NumPy error", "fastdl error", "other load"]
    md = "\n".join(common.header_lines("GEMM: fastdl vs numpy.matmul", cfg, info, load_before) + [
        f"NumPy calls {info['numpy_blas']}: `np.matmul(a, b, out=c)`, transposes as `.T` views. fastdl: "
        "`fastdl.ops.matmul(a, b, trans_a=, trans_b=, out=c)`. Every result was checked against a float64 "
        "product before timing. % peak: against the FP32 FMA peak loop (inline asm) timed in the same interleaved "
        f"rounds as the case, or against the peak measured at the start of the run ({peak:.1f} GFLOP/s on "
        f"{cfg.threads} threads) when that is higher (column \"peak GF/s\": the one used).",
        "",
        common.markdown_table(header, rows),
        "",
        "op: NN = a·b, TN = aᵀ·b, NT = a·bᵀ (a or b stored transposed; no copies on either side). "
        "GF/s = 2·M·N·K / time. error: max over elements of |c − c64| / (|a|·|b|). other load: CPUs kept busy "
        "by other processes just before the case (from /proc/stat); above 0 the contenders shared the machine.",
        "MLP rows: the three products of a dense layer (weight W of shape (out, in)) at the given batch.",
        "",
        common.bars_markdown(bars) if bars else "",
    ])
    data = {"machine": info, "config": cfg.as_dict(), "load_average_before": load_before,
            "load_average_after": common.load_average(), "fma_peak_gflops": peak, "results": records,
            "bars": bars}
    md_path, js_path = common.write_report(cfg.out, "gemm", md, data)
    plots = plot(cfg, records, peak)
    print(f"wrote {md_path} and {js_path}" + "".join(f" and {p}" for p in plots))
    return {"name": "gemm", "markdown": md, "data": data, "bars": bars}


def gemm_bars(records):
    """The issue-4 bars this benchmark measures (only for the cases that ran)."""
    by = {r["case"]: r for r in records}
    bars = []
    big = by.get("2048³")
    if big:
        bars.append(common.bar("GEMM 2048³, share of FMA peak", "≥ 85%",
                               f"{big['fastdl_peak_fraction']:.0%} ({big['fastdl_gflops']:.0f} of "
                               f"{big['peak_gflops_used']:.0f} GF/s)",
                               big["fastdl_peak_fraction"] >= 0.85))
        bars.append(common.bar("GEMM 2048³ vs NumPy", "≥ 1.3×", f"{big['ratio']:.2f}×", big["ratio"] >= 1.3))
    for c_in, c_out in LAYERS[:2]:
        for r in records:
            if r["group"] == "layer" and r["case"].endswith(f" 128×{c_in}→{c_out}"):
                bars.append(common.bar(f"{r['case']} vs NumPy", "≥ 1.3×", f"{r['ratio']:.2f}×", r["ratio"] >= 1.3))
    sweep = [r for r in records if r["case"].startswith("sweep") or r["case"] == "MLP fwd X·Wᵀ 128×784→256"]
    if len(sweep) > 1:
        worst = min(sweep, key=lambda r: r["ratio"])
        each = ", ".join(f"{r['M']}: {r['ratio']:.2f}" for r in sorted(sweep, key=lambda r: r["M"]))
        bars.append(common.bar("batch sweep X·Wᵀ at 784→256, every batch vs NumPy", "≥ 1.1× each",
                               f"min {worst['ratio']:.2f}× ({each})", worst["ratio"] >= 1.1))
    head = by.get("MLP fwd X·Wᵀ 128×128→10")
    if head:
        bars.append(common.bar("small head 128×128×10 (X·Wᵀ, call overhead included) vs NumPy", "≥ 1.0×",
                               f"{head['ratio']:.2f}× ({head['fastdl_us']:.1f} vs {head['numpy_us']:.1f} µs)",
                               head["ratio"] >= 1.0))
    if records:
        floor = 2.0**-24  # NumPy's error can be 0 on a small exact case: compare with half an ulp at least
        worst = max(records, key=lambda r: r["max_rel_error_fastdl"] / max(r["max_rel_error_numpy"], floor))
        q = worst["max_rel_error_fastdl"] / max(worst["max_rel_error_numpy"], floor)
        bars.append(common.bar("GEMM error vs float64, every shape", "≤ 2× NumPy's",
                               f"worst {q:.2f}× NumPy's ({worst['case']})", q <= 2.0))
    return bars


def plot(cfg, records, peak):
    out = []
    sq = [r for r in records if r["group"] == "square"]
    if sq:
        p = common.plot_lines(cfg.out / "gemm_square.png", f"square GEMM, float32, {cfg.threads} threads",
                              "n (n×n·n×n)", "GFLOP/s", [r["M"] for r in sq],
                              {"NumPy (OpenBLAS)": [r["numpy_gflops"] for r in sq],
                               "fastdl": [r["fastdl_gflops"] for r in sq]},
                              {f"FMA peak {peak:.0f} GF/s": peak})
        out += [p] if p else []
    sw = sorted([r for r in records if r["case"].startswith("sweep") or r["case"] == "MLP fwd X·Wᵀ 128×784→256"],
                key=lambda r: r["M"])
    if len(sw) > 1:
        p = common.plot_lines(cfg.out / "gemm_batch_sweep.png", f"X·Wᵀ at 784→256 by batch, {cfg.threads} threads",
                              "batch", "GFLOP/s", [r["M"] for r in sw],
                              {"NumPy (OpenBLAS)": [r["numpy_gflops"] for r in sw],
                               "fastdl": [r["fastdl_gflops"] for r in sw]},
                              {f"FMA peak {peak:.0f} GF/s": peak})
        out += [p] if p else []
    p = common.plot_bars(cfg.out / "gemm_speedup.png", f"GEMM speed-up over NumPy, {cfg.threads} threads",
                         [r["case"] for r in records], [r["ratio"] for r in records])
    out += [p] if p else []
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    cfg = common.config_from_args(args)
    limits = common.Limits(cfg)
    limits.peak(cfg.threads)
    run(cfg, limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
