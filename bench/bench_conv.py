"""Convolutional networks (issue 16): the convolution kernels, pooling, BatchNorm2d, whole MNIST epochs and
peak memory, fastdl vs a NumPy im2col version vs PyTorch CPU, side by side in one run.

    python bench/bench_conv.py [--quick | --tiny] [--out DIR] [--threads N] [--rounds R] [--cases SUBSTRS]
                               [--mnist DIR] [--no-torch] [--epochs-lenet5 E] [--epochs-cnn E]
    python bench/run_all.py --only conv [...]       (or `python -m fastdl bench --only conv`)

Cases, each checked against a float64 reference before it is timed (a wrong fastdl result raises
common.BenchCheckError; NumPy's and PyTorch's errors are reported):

- ``conv``: LeNet conv1 (1→6, 5×5, pad 2, 28×28), LeNet conv2 (6→16, 5×5, 14×14), 32→64 3×3 pad 1 at
  14×14 and 64→64 3×3 pad 1 at 28×28, batch 128, each as forward (with bias), input gradient (dX) and
  weight gradient (dW). fastdl: ``ops.conv2d_forward`` / ``ops.conv2d_backward`` into preallocated
  outputs; NumPy: bench/numpy_conv.py (``sliding_window_view`` + one im2col copy + ``np.matmul``,
  col2im by strided adds); PyTorch: ``torch.nn.functional.conv2d`` and
  ``torch.ops.aten.convolution_backward`` with the output mask of the one gradient (oneDNN). The FP32 FMA
  peak loop (``fastdl._C.bench``, as in bench_gemm.py) runs in the same interleaved rounds: GFLOP/s =
  2·N·OC·OH·OW·C·KH·KW / time for each of the three, and % of that peak.
- ``pool``: max pooling 2×2 on (128, 32, 28, 28), forward and backward (``nn.MaxPool2d``'s calls; PyTorch's
  ``max_pool2d_with_indices`` and its backward; NumPy reshape + argmax).
- ``batchnorm``: BatchNorm2d(32) in training mode on (128, 32, 28, 28), forward and backward
  (``nn.BatchNorm2d``'s calls; PyTorch's ``native_batch_norm`` and its backward; NumPy by the formulas).
- ``epoch``: whole epochs of LeNet-5 and of the VGG-style ``models.cnn()`` on MNIST at batch 128: fastdl
  ``fit`` vs the same network in PyTorch (fastdl's initial weights copied in), SGD lr 0.05, momentum 0.9,
  Nesterov, weight decay 5e-4 on both, the same epochs, epochs of the two interleaved; epoch time (median),
  ratio and test accuracy after the epochs.
- ``memory``: peak RSS (VmHWM) of a child process training LeNet-5 for one epoch at batch 128, fastdl vs
  PyTorch, and its rise over the process's RSS once the libraries and MNIST are loaded.

fastdl and PyTorch run at the same thread count (``torch.set_num_threads``), OpenBLAS too. Every result
records the CPU model, the load average and the CPUs other processes kept busy. Reports: conv.md /
conv.json in bench/results/issue16/ (or --out DIR).
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

OUT = common.RESULTS / "issue16"
# SGD learning rate by model (the CLI's defaults: 0.05 made the VGG-style net diverge in its first steps)
LR = {"lenet5": 0.05, "cnn": 0.01}
MOMENTUM, WEIGHT_DECAY, SEED = 0.9, 5e-4, 0
# (label, C, OC, K, padding, H): stride 1, square images, batch BATCH
CONV_CASES = [
    ("LeNet conv1 1→6 5×5 pad 2 28×28", 1, 6, 5, 2, 28),
    ("LeNet conv2 6→16 5×5 14×14", 6, 16, 5, 0, 14),
    ("32→64 3×3 pad 1 14×14", 32, 64, 3, 1, 14),
    ("64→64 3×3 pad 1 28×28", 64, 64, 3, 1, 28),
]
BATCH = 128
OPS = ("forward", "dX", "dW")
CONV_RTOL = 1e-4   # normwise against float64 (sums of <= 576 float32 products)
POOL_SHAPE = (128, 32, 28, 28)


def sizes(cfg):
    """(batch, pooling / batch-norm shape, training rows, test rows) for the run's mode."""
    if cfg.tiny:
        return 2, (2, 4, 8, 8), 256, 200
    if cfg.quick:
        return 32, (32, 32, 28, 28), 6000, 2000
    return BATCH, POOL_SHAPE, None, None


# ---------------------------------------------------------------------------- contenders


def torch_or_none(use_torch, threads):
    if not use_torch:
        return None, "--no-torch"
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None, "PyTorch not installed"
    torch.set_num_threads(threads)
    return torch, None


def _dx_only():
    import inspect  # noqa: PLC0415
    from fastdl import ops  # noqa: PLC0415

    return "need_dweight" in inspect.signature(ops.conv2d_backward).parameters


DX_ONLY = None   # set by run(): whether fastdl's dX case computes dX alone


def conv_case(cfg, torch, label, n, c, oc, k, pad, h):
    """{op: {contender: fn}} for one convolution layer, each checked first; and the errors."""
    import numpy as np  # noqa: PLC0415
    import numpy_conv as nc  # noqa: PLC0415
    from fastdl import ops  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = (rng.standard_normal((oc, c, k, k), dtype=np.float32) / np.float32(np.sqrt(c * k * k)))
    b = rng.standard_normal(oc, dtype=np.float32)
    oh = nc.out_size(h, k, 1, pad)
    dy = rng.standard_normal((n, oc, oh, oh), dtype=np.float32)
    y_buf = np.empty((n, oc, oh, oh), np.float32)
    dx_buf, dw_buf = np.empty_like(x), np.empty_like(w)

    fns = {op: {} for op in OPS}
    fns["forward"]["fastdl"] = lambda: ops.conv2d_forward(x, w, b, stride=1, padding=pad, out=y_buf)
    # dX alone where conv2d_backward can skip the weight gradient (need_dweight=False); else dX and dW together
    dx_only = {"need_dweight": False} if DX_ONLY else {"dweight": dw_buf}
    fns["dX"]["fastdl"] = lambda: ops.conv2d_backward(dy, x, w, stride=1, padding=pad, bias=False, need_dx=True,
                                                       dx=dx_buf, **dx_only)
    fns["dW"]["fastdl"] = lambda: ops.conv2d_backward(dy, x, w, stride=1, padding=pad, bias=False, need_dx=False,
                                                       dweight=dw_buf)
    fns["forward"]["numpy"] = lambda: nc.conv2d_forward(x, w, b, 1, pad)
    fns["dX"]["numpy"] = lambda: nc.conv2d_backward_input(dy, x.shape, w, 1, pad)
    fns["dW"]["numpy"] = lambda: nc.conv2d_backward_weight(dy, x, w.shape, 1, pad)
    if torch is not None:
        xt, wt, bt, dyt = (torch.from_numpy(a) for a in (x, w, b, dy))
        conv_bwd = torch.ops.aten.convolution_backward
        args = ([1, 1], [pad, pad], [1, 1], False, [0, 0], 1)
        fns["forward"]["torch"] = lambda: torch.nn.functional.conv2d(xt, wt, bt, 1, pad)
        fns["dX"]["torch"] = lambda: conv_bwd(dyt, xt, wt, None, *args, [True, False, False])[0]
        fns["dW"]["torch"] = lambda: conv_bwd(dyt, xt, wt, None, *args, [False, True, False])[1]

    # correctness first: float64 im2col (numpy_conv itself checked against plain loops) as the reference
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    refs = {"forward": nc.conv2d_forward(x64, w64, b.astype(np.float64), 1, pad),
            "dX": nc.conv2d_backward_input(dy64, x.shape, w64, 1, pad),
            "dW": nc.conv2d_backward_weight(dy64, x64, w.shape, 1, pad)}
    errors = {op: {} for op in OPS}
    for op in OPS:
        for name, fn in fns[op].items():
            got = fn()
            if name == "fastdl":
                got = got if op == "forward" else got[0] if op == "dX" else got[1]   # (dx, dweight, dbias)
                errors[op][name] = common.check(f"conv {label} {op} (fastdl)", got, refs[op], CONV_RTOL)
            else:
                got = got.numpy() if hasattr(got, "numpy") else got
                errors[op][name] = common.rel_error(got, refs[op])
    return fns, errors


def pool_case(cfg, torch, shape):
    """Max pooling 2×2: {"forward": {...}, "backward": {...}}, checked against NumPy's."""
    import numpy as np  # noqa: PLC0415
    import numpy_conv as nc  # noqa: PLC0415
    from fastdl import nn  # noqa: PLC0415

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32)
    pool = nn.MaxPool2d(2)
    y = pool._forward(x, True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = pool._backward(dy, True, True)
    ref_y, arg = nc.max_pool2d_forward(x)
    common.check("max pool forward (fastdl)", y, ref_y, 0.0)
    common.check("max pool backward (fastdl)", dx, nc.max_pool2d_backward(dy, arg, x.shape), 0.0)
    fns = {"forward": {"fastdl": lambda: pool._forward(x, True), "numpy": lambda: nc.max_pool2d_forward(x)},
           "backward": {"fastdl": lambda: pool._backward(dy, True, True),
                        "numpy": lambda: nc.max_pool2d_backward(dy, arg, x.shape)}}
    if torch is not None:
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        aten = torch.ops.aten
        yt, it = aten.max_pool2d_with_indices(xt, [2, 2], [2, 2], [0, 0], [1, 1], False)
        common.check("max pool forward (torch)", yt.numpy(), ref_y, 0.0)
        fns["forward"]["torch"] = lambda: aten.max_pool2d_with_indices(xt, [2, 2], [2, 2], [0, 0], [1, 1], False)
        fns["backward"]["torch"] = lambda: aten.max_pool2d_with_indices_backward(dyt, xt, [2, 2], [2, 2], [0, 0],
                                                                                 [1, 1], False, it)
    return fns


def batchnorm_case(cfg, torch, shape):
    """BatchNorm2d training mode: {"forward": {...}, "backward": {...}}, fastdl checked against NumPy's (float64)."""
    import numpy as np  # noqa: PLC0415
    import numpy_conv as nc  # noqa: PLC0415
    from fastdl import nn  # noqa: PLC0415

    rng = np.random.default_rng(2)
    c = shape[1]
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    bn = nn.BatchNorm2d(c)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, c)
    bn.bias.data[:] = rng.uniform(-0.5, 0.5, c)
    gamma, beta = bn.weight.data.copy(), bn.bias.data.copy()
    bn.train()
    y = bn._forward(x, True).copy()
    bn.zero_grad()
    dx = bn._backward(dy, True, True).copy()
    ref_y, xhat, invstd = nc.batchnorm2d_forward(x.astype(np.float64), gamma.astype(np.float64),
                                                 beta.astype(np.float64))
    ref_dx, ref_dg, ref_db = nc.batchnorm2d_backward(dy.astype(np.float64), xhat, invstd, gamma.astype(np.float64))
    common.check("BatchNorm2d forward (fastdl)", y, ref_y, 1e-5)
    common.check("BatchNorm2d dX (fastdl)", dx, ref_dx, 1e-4)
    common.check("BatchNorm2d dgamma (fastdl)", bn.weight.grad, ref_dg, 1e-4)
    common.check("BatchNorm2d dbeta (fastdl)", bn.bias.grad, ref_db, 1e-4)
    cache = {}

    def np_fwd():
        cache["f"] = nc.batchnorm2d_forward(x, gamma, beta)

    np_fwd()
    fns = {"forward": {"fastdl": lambda: bn._forward(x, True), "numpy": np_fwd},
           "backward": {"fastdl": lambda: bn._backward(dy, True, True),
                        "numpy": lambda: nc.batchnorm2d_backward(dy, cache["f"][1], cache["f"][2], gamma)}}
    if torch is not None:
        aten = torch.ops.aten
        xt, dyt, gt, bt = (torch.from_numpy(a) for a in (x, dy, gamma, beta))
        rm, rv = torch.zeros(c), torch.ones(c)
        yt, sm, si = aten.native_batch_norm(xt, gt, bt, rm, rv, True, 0.1, 1e-5)
        common.check("BatchNorm2d forward (torch)", yt.numpy(), ref_y, 1e-4)
        fns["forward"]["torch"] = lambda: aten.native_batch_norm(xt, gt, bt, rm, rv, True, 0.1, 1e-5)
        fns["backward"]["torch"] = lambda: aten.native_batch_norm_backward(dyt, xt, gt, rm, rv, sm, si, True, 1e-5,
                                                                           [True, True, True])
    return fns


# ---------------------------------------------------------------------------- kernel timing


def time_kernels(cfg, limits, torch):
    """Every conv / pool / batch-norm case, contenders interleaved with the FMA peak loop."""
    n, shape, _, _ = sizes(cfg)
    run_peak = limits.peak(cfg.threads)
    records = []
    groups = []
    for label, c, oc, k, pad, h in CONV_CASES:
        if cfg.wants(f"conv {label}"):
            fns, errors = conv_case(cfg, torch, label, n, c, oc, k, pad, h)
            oh = h + 2 * pad - k + 1
            flop = 2.0 * n * oc * oh * oh * c * k * k
            small = c < 16 or oc < 16
            groups.append(("conv", label, fns, errors, flop, small))
    if cfg.wants(f"pool max 2×2 {shape}"):
        groups.append(("pool", f"max pool 2×2 {shape}", pool_case(cfg, torch, shape), None, None, None))
    if cfg.wants(f"batchnorm BatchNorm2d {shape}"):
        groups.append(("batchnorm", f"BatchNorm2d({shape[1]}) {shape}", batchnorm_case(cfg, torch, shape), None,
                       None, None))
    for kind, label, fns, errors, flop, small in groups:
        for op, contenders in fns.items():
            timed = dict(contenders)
            if flop:
                peak_fn, peak_flop = common.peak_contender(cfg.threads)
                timed["fma peak"] = peak_fn
            t = common.time_cases(cfg, timed)
            rec = {"kind": kind, "case": label, "op": op, "other_load_cpus": t["other_load"],
                   "load_average": common.load_average()}
            for name in contenders:
                rec[name] = {"ms": t[name] * 1e3, "ms_rounds": [v * 1e3 for v in t["rounds"][name]]}
                if errors:
                    rec[name]["rel_error"] = errors[op][name]
            if flop:
                peak = max(peak_flop / t["fma peak"] / 1e9, run_peak)
                rec.update(flop=flop, peak_gflops_used=peak, small_channels=small)
                for name in contenders:
                    gf = flop / t[name] / 1e9
                    rec[name].update(gflops=gf, peak_fraction=gf / peak)
            for other in ("numpy", "torch"):
                if other in contenders:
                    rec[f"speedup_vs_{other}"] = t[other] / t["fastdl"]
            records.append(rec)
            print(f"  {label:36s} {op:8s} " + "  ".join(
                f"{name} {rec[name]['ms']:8.3f} ms" + (f" ({rec[name]['peak_fraction']:4.0%})" if flop else "")
                for name in contenders) + "".join(f"  ×{rec[k]:.2f} vs {k[11:]}" for k in rec
                                                  if k.startswith("speedup_vs_"))
                + f"  other load {common.load_str(t['other_load'])}", flush=True)
    return records


# ---------------------------------------------------------------------------- whole epochs


def torch_twin(torch, model):
    """The PyTorch network of fastdl's ``model`` (a Sequential of Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten,
    Linear, Dropout) with its weights and buffers copied in."""
    from fastdl import nn  # noqa: PLC0415

    tnn, layers = torch.nn, []
    for m in model:
        if isinstance(m, nn.Conv2d):
            layers.append(tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                     bias=m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            layers.append(tnn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum))
        elif isinstance(m, nn.ReLU):
            layers.append(tnn.ReLU())
        elif isinstance(m, nn.MaxPool2d):
            layers.append(tnn.MaxPool2d(m.kernel_size, m.stride, m.padding))
        elif isinstance(m, nn.Flatten):
            layers.append(tnn.Flatten())
        elif isinstance(m, nn.Linear):
            layers.append(tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
        elif isinstance(m, nn.Dropout):
            layers.append(tnn.Dropout(m.p))
        else:
            raise TypeError(f"torch_twin: no PyTorch twin for {type(m).__name__}")
    net = tnn.Sequential(*layers)
    import numpy as np  # noqa: PLC0415

    missing, unexpected = net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()},
                                              strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise common.BenchCheckError(f"torch_twin: state dicts differ (missing {missing}, unexpected {unexpected})")
    return net


def build_model(name):
    from fastdl import models  # noqa: PLC0415

    return models.lenet5(rng=SEED) if name == "lenet5" else models.cnn(rng=SEED)


def epoch_case(cfg, torch, name, epochs, xtr, ytr, xte, yte):
    """fastdl fit vs the PyTorch loop, one epoch each in turn; checked first: the same loss and logits at
    the start (fastdl's weights copied into the PyTorch twin)."""
    import numpy as np  # noqa: PLC0415
    from fastdl import nn, optim  # noqa: PLC0415
    from fastdl.train import fit, predict  # noqa: PLC0415

    model = build_model(name)
    opt = optim.SGD(model.parameters(), lr=LR[name], momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss()
    rec = {"model": name, "epochs": epochs, "train_rows": int(len(xtr)), "test_rows": int(len(xte)), "batch": BATCH,
           "parameters": int(sum(p.data.size for p in model.parameters())), "fastdl": {"epoch_seconds_rounds": []}}
    nets = {"fastdl": None}
    if torch is not None:
        tnet = torch_twin(torch, model)
        topt = torch.optim.SGD(tnet.parameters(), lr=LR[name], momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
        tloss = torch.nn.CrossEntropyLoss()
        model.eval(), tnet.eval()
        with torch.no_grad():
            want = tnet(torch.from_numpy(xte[:64])).numpy()
        got = predict(model, xte[:64])
        rec["check_logits_rel_error"] = common.check(f"epoch {name}: fastdl's logits vs the PyTorch twin's", got,
                                                     want, 1e-4)
        nets["torch"] = tnet
        rec["torch"] = {"epoch_seconds_rounds": []}
    loads = []
    for epoch in range(epochs):
        if cfg.sleep:
            loads.append(common.other_load(cfg.sleep))
        h = fit(model, loss_fn, opt, xtr, ytr, epochs=1, batch_size=BATCH, seed=SEED + epoch, verbose=0)
        rec["fastdl"]["epoch_seconds_rounds"].append(float(h["seconds"][0]))
        rec["fastdl"].setdefault("train_loss", []).append(float(h["loss"][0]))
        if "torch" in nets:
            if cfg.sleep:
                loads.append(common.other_load(cfg.sleep))
            tnet.train()
            perm = np.random.default_rng(SEED + epoch).permutation(len(xtr))
            total, count = 0.0, 0
            t0 = time.perf_counter()
            for i in range(0, len(perm), BATCH):
                idx = perm[i:i + BATCH]
                xb, yb = torch.from_numpy(xtr[idx]), torch.from_numpy(ytr[idx])
                topt.zero_grad()
                loss = tloss(tnet(xb), yb)
                loss.backward()
                topt.step()
                total += loss.item()
                count += 1
            rec["torch"]["epoch_seconds_rounds"].append(time.perf_counter() - t0)
            rec["torch"].setdefault("train_loss", []).append(total / count)
    rec["fastdl"]["test_accuracy"] = float(np.mean(predict(model, xte).argmax(1) == yte))
    if "torch" in nets:
        tnet.eval()
        with torch.no_grad():
            logits = np.concatenate([tnet(torch.from_numpy(xte[i:i + 1000])).numpy() for i in range(0, len(xte), 1000)])
        rec["torch"]["test_accuracy"] = float(np.mean(logits.argmax(1) == yte))
    for k in nets:
        rec[k]["epoch_seconds"] = common.median(rec[k]["epoch_seconds_rounds"])
    if "torch" in nets:
        rec["speedup_vs_torch"] = rec["torch"]["epoch_seconds"] / rec["fastdl"]["epoch_seconds"]
        rec["accuracy_gap_points"] = 100 * abs(rec["fastdl"]["test_accuracy"] - rec["torch"]["test_accuracy"])
    rec["other_load_between_epochs"] = [x for x in loads if x is not None]
    rec["load_average"] = common.load_average()
    print(f"  epoch {name:6s}: " + "  ".join(f"{k} {rec[k]['epoch_seconds']:.2f} s/epoch (test acc "
                                             f"{rec[k]['test_accuracy']:.2%})" for k in nets)
          + (f"  fastdl ×{rec['speedup_vs_torch']:.2f} vs torch" if "speedup_vs_torch" in rec else ""), flush=True)
    return rec


# ---------------------------------------------------------------------------- peak memory


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_child(which, mnist, rows, threads):
    """In a child process: load MNIST, then train LeNet-5 for one epoch at batch 128 with ``which`` (fastdl or
    torch); print one JSON line with VmHWM (peak RSS) and the RSS before training."""
    common.setup_threads(threads)
    import numpy as np  # noqa: PLC0415
    import bench_training as bt  # noqa: PLC0415
    from fastdl import datasets, nn, optim  # noqa: PLC0415
    from fastdl.train import fit  # noqa: PLC0415

    (xtr, ytr), _ = datasets.load_mnist(bt.find_mnist(mnist))
    xtr, ytr = xtr[:rows].reshape(-1, 1, 28, 28), ytr[:rows]
    model = build_model("lenet5")
    if which == "torch":
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
        net = torch_twin(torch, model)
        del model
        opt = torch.optim.SGD(net.parameters(), lr=LR["lenet5"], momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
        loss_fn = torch.nn.CrossEntropyLoss()
        rss_before = _status_kib("VmRSS")
        perm = np.random.default_rng(SEED).permutation(len(xtr))
        for i in range(0, len(perm), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = loss_fn(net(torch.from_numpy(xtr[idx])), torch.from_numpy(ytr[idx]))
            loss.backward()
            opt.step()
    else:
        opt = optim.SGD(model.parameters(), lr=LR["lenet5"], momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
        rss_before = _status_kib("VmRSS")
        fit(model, nn.CrossEntropyLoss(), opt, xtr, ytr, epochs=1, batch_size=BATCH, seed=SEED, verbose=0)
    print(json.dumps({"which": which, "rows": int(len(xtr)), "vm_hwm_kib": _status_kib("VmHWM"),
                      "rss_before_training_kib": rss_before}))
    return 0


def memory_case(cfg, mnist, use_torch, rows):
    out = {}
    for which in ["fastdl"] + (["torch"] if use_torch else []):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", which, "--threads", str(cfg.threads),
               "--memory-rows", str(rows)] + (["--mnist", str(mnist)] if mnist else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {which} failed: {proc.stderr.strip()[-500:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["peak_mib"] = r["vm_hwm_kib"] / 1024
        r["rise_mib"] = (r["vm_hwm_kib"] - r["rss_before_training_kib"]) / 1024
        out[which] = r
        print(f"  memory {which:6s}: peak RSS {r['peak_mib']:.0f} MiB ({r['rise_mib']:.0f} MiB above the RSS "
              f"before training)", flush=True)
    out["load_average"] = common.load_average()
    return out


# ---------------------------------------------------------------------------- report


def conv_bars(records, epochs, memory):
    bars = []
    convs = [r for r in records if r["kind"] == "conv"]
    if convs:
        with_np = [r for r in convs if "speedup_vs_numpy" in r]
        if with_np:
            worst = min(with_np, key=lambda r: r["speedup_vs_numpy"])
            bars.append(common.bar("convolution: every case vs the NumPy im2col version", "≥ 3×",
                                   f"slowest {worst['speedup_vs_numpy']:.2f}× ({worst['case']} {worst['op']})",
                                   all(r["speedup_vs_numpy"] >= 3 for r in with_np)))
        for small, op_set, target in ((False, ("forward",), 0.70), (False, ("dX", "dW"), 0.60),
                                      (True, OPS, 0.30)):
            rs = [r for r in convs if r["small_channels"] == small and r["op"] in op_set]
            if rs:
                worst = min(rs, key=lambda r: r["fastdl"]["peak_fraction"])
                what = ("LeNet's small layers, every op" if small else
                        f"≥ 16 channels, {'forward' if op_set == ('forward',) else 'each gradient'}")
                bars.append(common.bar(f"convolution % of FMA peak: {what}", f"≥ {target:.0%}",
                                       f"lowest {worst['fastdl']['peak_fraction']:.0%} ({worst['case']} {worst['op']})",
                                       all(r["fastdl"]["peak_fraction"] >= target for r in rs)))
    for r in epochs:
        target = 2.5 if r["model"] == "lenet5" else 1.5
        label = f"{'LeNet-5' if r['model'] == 'lenet5' else 'VGG-style CNN'} epoch at batch 128 vs PyTorch CPU"
        if "speedup_vs_torch" in r:
            bars.append(common.bar(label, f"≥ {target}×", f"{r['speedup_vs_torch']:.2f}× ({r['fastdl']['epoch_seconds']:.2f}"
                                   f" s vs {r['torch']['epoch_seconds']:.2f} s, {r['train_rows']} rows)",
                                   r["speedup_vs_torch"] >= target))
            bars.append(common.bar(f"{r['model']}: same accuracy after {r['epochs']} epochs, same seed",
                                   "within 0.3 points", f"{r['accuracy_gap_points']:.2f} points (fastdl "
                                   f"{r['fastdl']['test_accuracy']:.2%}, torch {r['torch']['test_accuracy']:.2%})",
                                   r["accuracy_gap_points"] <= 0.3))
    if memory and "torch" in memory and "fastdl" in memory:
        f, t = memory["fastdl"], memory["torch"]
        bars.append(common.bar("peak memory of a LeNet-5 training run (batch 128)", "≤ PyTorch's",
                               f"fastdl {f['peak_mib']:.0f} MiB vs torch {t['peak_mib']:.0f} MiB (rise in training "
                               f"{f['rise_mib']:.0f} vs {t['rise_mib']:.0f} MiB)", f["vm_hwm_kib"] <= t["vm_hwm_kib"]))
    return bars


def markdown(cfg, info, load_before, records, epochs, memory, bars, missing, peak):
    lines = common.header_lines("Convolutional networks: fastdl vs NumPy im2col vs PyTorch CPU", cfg, info,
                                load_before)
    lines += [
        f"PyTorch: {info.get('torch', 'not run: ' + str(missing))}. NumPy: bench/numpy_conv.py (im2col by "
        "`sliding_window_view` + one copy, `np.matmul` on OpenBLAS; col2im by strided adds). fastdl: "
        "`ops.conv2d_forward` / `ops.conv2d_backward` into preallocated outputs; pooling and BatchNorm2d through "
        "their layers' calls (`nn.MaxPool2d`, `nn.BatchNorm2d`, training mode). Every fastdl result was checked "
        "against a float64 reference before timing. % peak: against the FP32 FMA peak loop timed in the same "
        f"interleaved rounds, or the run's peak ({peak:.1f} GFLOP/s on {cfg.threads} threads) when higher.",
        "",
    ]
    names = [n for n in ("fastdl", "numpy", "torch") if any(n in r for r in records)]
    conv_rows, other_rows = [], []
    for r in records:
        row = [r["case"], r["op"]] + [f"{r[n]['ms']:.3f}" if n in r else "—" for n in names]
        if r["kind"] == "conv":
            row += [f"{r[n]['gflops']:.1f} ({r[n]['peak_fraction']:.0%})" if n in r else "—" for n in names]
        row += [f"{r['speedup_vs_numpy']:.2f}×" if "speedup_vs_numpy" in r else "—",
                f"{r['speedup_vs_torch']:.2f}×" if "speedup_vs_torch" in r else "—"]
        if r["kind"] == "conv":
            row.append(", ".join(f"{n} {r[n]['rel_error']:.1e}" for n in names if n in r))
        row.append(common.load_str(r["other_load_cpus"]))
        (conv_rows if r["kind"] == "conv" else other_rows).append(row)
    if conv_rows:
        lines += ["## Convolution, batch " + str(sizes(cfg)[0]), "", common.markdown_table(
            ["case", "op"] + [f"{n} ms" for n in names] + [f"{n} GF/s (% peak)" for n in names]
            + ["fastdl vs NumPy", "fastdl vs PyTorch", "error vs float64", "other load"], conv_rows), "",
            "forward includes the bias; dX and dW are separate calls (PyTorch: `convolution_backward` with the "
            "output mask of one gradient)" + ("" if DX_ONLY else "; fastdl's dX row computes dW too "
            "(`conv2d_backward` has no call for dX alone), its GF/s count only dX's flops") + ". Speed-ups: the "
            "other's time / fastdl's.", ""]
    if other_rows:
        lines += ["## Pooling and BatchNorm2d", "", common.markdown_table(
            ["case", "op"] + [f"{n} ms" for n in names] + ["fastdl vs NumPy", "fastdl vs PyTorch", "other load"],
            other_rows), ""]
    if epochs:
        rows = []
        for r in epochs:
            for n in ("fastdl", "torch"):
                if n in r:
                    rows.append([r["model"], n, f"{r[n]['epoch_seconds']:.2f}", f"{r[n]['test_accuracy']:.2%}",
                                 f"{r[n]['train_loss'][-1]:.4f}", f"{r['train_rows']} / {r['test_rows']}",
                                 r["epochs"], f"{r.get('speedup_vs_torch', float('nan')):.2f}×" if n == "torch"
                                 else "", common.load_str(common.median(r["other_load_between_epochs"])
                                                          if r["other_load_between_epochs"] else None)])
        lines += ["## Whole epochs on MNIST, batch 128", "", common.markdown_table(
            ["model", "contender", "s / epoch (median)", "test acc", "last epoch loss", "train / test rows", "epochs",
             "torch / fastdl", "other load"], rows), "",
            f"SGD lr {LR['lenet5']} (LeNet-5) / {LR['cnn']} (CNN), momentum {MOMENTUM}, Nesterov, weight decay {WEIGHT_DECAY} on both; fastdl `fit` vs "
            "the PyTorch loop on the same network with fastdl's initial weights copied in (logits checked equal "
            "first); their epochs alternate.", ""]
    if memory:
        rows = [[k, f"{v['peak_mib']:.0f}", f"{v['rss_before_training_kib'] / 1024:.0f}", f"{v['rise_mib']:.0f}",
                 v["rows"]] for k, v in memory.items() if k in ("fastdl", "torch")]
        lines += ["## Peak memory of a LeNet-5 training run (child processes)", "", common.markdown_table(
            ["contender", "peak RSS MiB (VmHWM)", "RSS before training MiB", "rise MiB", "training rows"], rows), "",
            "One epoch at batch 128 after loading MNIST; the RSS before training includes the library's import.",
            ""]
    if bars:
        lines += [common.bars_markdown(bars)]
    return "\n".join(lines)


def load_mnist_images(cfg, mnist):
    import bench_training as bt  # noqa: PLC0415

    d, xtr, ytr, xte, yte = bt.load_data(common.Config(threads=cfg.threads), mnist)
    _, _, rows, test_rows = sizes(cfg)
    xtr, ytr, xte, yte = xtr[:rows], ytr[:rows], xte[:test_rows], yte[:test_rows]
    return d, xtr.reshape(-1, 1, 28, 28), ytr, xte.reshape(-1, 1, 28, 28), yte


def run(cfg: common.Config, limits: common.Limits, *, mnist=None, use_torch=True, epochs_lenet5=None,
        epochs_cnn=None) -> dict:
    info = common.machine()
    load_before = common.load_average()
    torch, missing = torch_or_none(use_torch, cfg.threads)
    if torch is not None:
        info["torch"] = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    peak = limits.peak(cfg.threads)
    print(f"conv: fastdl vs NumPy im2col vs {info.get('torch', 'no PyTorch (' + str(missing) + ')')}, "
          f"{cfg.threads} threads, {cfg.mode()}; FMA peak {peak:.1f} GF/s; load average {load_before}", flush=True)
    global DX_ONLY
    DX_ONLY = _dx_only()
    records = time_kernels(cfg, limits, torch)

    epochs, memory, notes = [], None, []
    wants_epochs = [m for m in ("lenet5", "cnn") if cfg.wants(f"epoch {m}")]
    if wants_epochs or cfg.wants("memory"):
        try:
            d, xtr, ytr, xte, yte = load_mnist_images(cfg, mnist)
        except FileNotFoundError as e:
            notes.append(f"epochs and memory not run: {e}")
            print(f"  {notes[-1]}", flush=True)
            wants_epochs, d = [], None
        for m in wants_epochs:
            default = (1 if cfg.quick else 5) if m == "lenet5" else (1 if cfg.quick else 2)
            e = {"lenet5": epochs_lenet5, "cnn": epochs_cnn}[m] or default
            n_rows = len(xtr) if m == "lenet5" or not cfg.tiny else min(len(xtr), 128)
            epochs.append(epoch_case(cfg, torch, m, e, xtr[:n_rows], ytr[:n_rows], xte, yte))
        if d is not None and cfg.wants("memory"):
            memory = memory_case(cfg, d, torch is not None, 512 if cfg.tiny else len(xtr))

    bars = conv_bars(records, epochs, memory)
    md = markdown(cfg, info, load_before, records, epochs, memory, bars, missing, peak)
    if notes:
        md += "\n\n" + "\n".join(f"- {n}" for n in notes)
    data = {"machine": info, "config": cfg.as_dict(), "load_average_before": load_before,
            "load_average_after": common.load_average(), "fma_peak_gflops": peak, "torch_missing": missing,
            "fastdl_dx_alone": DX_ONLY,
            "kernels": records, "epochs": epochs, "memory": memory, "bars": bars, "notes": notes,
            "hyperparameters": {"lr": dict(LR), "momentum": MOMENTUM, "nesterov": True, "weight_decay": WEIGHT_DECAY,
                                "seed": SEED, "batch": BATCH}}
    md_path, js_path = common.write_report(cfg.out, "conv", md, data)
    print(f"wrote {md_path} and {js_path}")
    return {"name": "conv", "markdown": md, "data": data, "bars": bars}


def add_conv_args(ap):
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--no-torch", action="store_true", help="do not run PyTorch even when installed")
    ap.add_argument("--epochs-lenet5", type=int, default=None, help="epochs of LeNet-5 (default 5, quick 1)")
    ap.add_argument("--epochs-cnn", type=int, default=None, help="epochs of the VGG-style CNN (default 2, quick 1)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    add_conv_args(ap)
    ap.add_argument("--memory-child", choices=["fastdl", "torch"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-rows", type=int, default=60000, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        return memory_child(args.memory_child, args.mnist, args.memory_rows, args.threads or common.cpu_count())
    if args.out is None:
        args.out = str(OUT)
    cfg = common.config_from_args(args)
    run(cfg, common.Limits(cfg), mnist=args.mnist, use_torch=not args.no_torch, epochs_lenet5=args.epochs_lenet5,
        epochs_cnn=args.epochs_cnn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
