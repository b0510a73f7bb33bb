"""The fastdl command line: ``python -m fastdl <command>`` or the ``fastdl`` console script.

    fastdl train                      # an MLP on MNIST with the defaults below (>= 98% test accuracy)
    fastdl train --hidden 512 --optimizer adam --lr 1e-3 --epochs 10 --out mlp.npz
    fastdl train --model lenet5       # LeNet-5 on MNIST as (N, 1, 28, 28) images; --model cnn: VGG-style
    fastdl predict model.npz t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz
    fastdl bench --quick              # the benchmark suite, bench/run_all.py (from a source checkout)
    fastdl info                       # version, compiler, OpenMP, ISA, threads, where MNIST is

``main(argv=None) -> int`` is the entry point: 0 on success, 1 on a runtime error (one line on
stderr, no traceback: a missing or malformed file, missing data), 2 on bad command-line flags
(argparse's message), 130 after Ctrl-C (`train` still evaluates and saves the model it has).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastdl._validation import check_int, check_real

__all__ = ["main", "build_parser"]

# The defaults of `fastdl train`: 784-256-128-10 ReLU with dropout 0.1, SGD (lr 0.05, Nesterov momentum 0.9,
# weight decay 5e-4) on a cosine schedule, batch 128, 20 epochs. Measured on 2 AMD Zen 3 cores: test accuracy
# 98.35% (seed 0; 98.41-98.48% for seeds 1-3), about 1.0 s per epoch. Change them only with a new measurement.
TRAIN_DEFAULTS = dict(hidden=[256, 128], activation="relu", optimizer="sgd", lr=None, momentum=0.9,
                      nesterov=True, weight_decay=5e-4, dropout=0.1, batch_norm=False, batch_size=128,
                      epochs=20, schedule="cosine", seed=0, val_split=0.0, out="model.npz")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
# The image models (fastdl.models.lenet5 and cnn) take MNIST as (N, 1, 28, 28) images and change these defaults
# (each only where its flag is not given). MLP-only flags (--hidden, --activation; --batch-norm and --dropout for
# lenet5) are refused with them. The CNN's accuracy target is >= 99.3%, LeNet-5's >= 99.0%.
MODELS = ("mlp", "lenet5", "cnn")
MODEL_DEFAULTS = {"lenet5": dict(dropout=0.0),
                  "cnn": dict(epochs=12, lr=0.01, dropout=0.5, batch_norm=True)}  # (lr 0.05 diverged at first)
MODEL_FLAGS = {"mlp": {"hidden", "activation", "dropout", "batch_norm"}, "lenet5": set(),
               "cnn": {"dropout", "batch_norm"}}
_MLP_FLAGS = {"hidden": "--hidden", "activation": "--activation", "dropout": "--dropout", "batch_norm": "--batch-norm"}


class CLIError(Exception):
    """A problem to report in one line on stderr (exit status 1)."""


# ---------------------------------------------------------------------------- train


def _make_optimizer(args, params):
    from fastdl import optim

    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.optimizer == "sgd":
        return optim.SGD(params, lr=lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0,
                         weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return optim.Adam(params, lr=lr, weight_decay=args.weight_decay)
    return optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)


def _describe_optimizer(args):
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    parts = [f"lr={lr:g}"]
    if args.optimizer == "sgd" and args.momentum > 0:
        parts.append(f"momentum={args.momentum:g}" + (", nesterov" if args.nesterov else ""))
    if args.weight_decay:
        parts.append(f"weight_decay={args.weight_decay:g}")
    return f"{ {'sgd': 'SGD', 'adam': 'Adam', 'adamw': 'AdamW'}[args.optimizer]}({', '.join(parts)})"


def _make_scheduler(name, opt, epochs):
    """The per-epoch schedule: cosine to 0 over the run; step: x0.1 at 1/3 and 2/3 of the run;
    exponential: x0.9 per epoch; plateau: x0.5 after 2 epochs without val_loss (else loss) progress;
    inverse_time: lr0 / (1 + t / tau) with tau = 2 epochs."""
    from fastdl import optim

    if name == "none":
        return None
    if name == "cosine":
        return optim.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if name == "step":
        return optim.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.1)
    if name == "exponential":
        return optim.ExponentialLR(opt, gamma=0.9)
    if name == "plateau":
        return optim.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    return optim.InverseTimeLR(opt, tau=2.0)


def _cmd_train(args) -> int:
    import fastdl
    from fastdl import models, nn
    from fastdl.train import evaluate, fit

    if args.threads is not None:
        fastdl.set_num_threads(args.threads)
    say = (lambda *a: None) if args.quiet else print

    _apply_model_defaults(args)
    t0 = time.perf_counter()
    (X, y), (Xt, yt) = _load_mnist(args.data)
    if args.limit_train:
        X, y = X[: args.limit_train], y[: args.limit_train]
    if args.limit_test:
        Xt, yt = Xt[: args.limit_test], yt[: args.limit_test]
    say(f"MNIST: {len(X)} training and {len(Xt)} test images ({time.perf_counter() - t0:.1f} s to load)")

    if args.model == "mlp":
        # fastdl.models.mlp: Linear -> [BatchNorm1d] -> activation -> [Dropout] per hidden size, then Linear; He
        # (relu, leaky_relu) or Glorot (tanh, sigmoid) uniform weights, the output layer's too, from default_rng(seed)
        model = models.mlp([X.shape[1], *args.hidden, 10], activation=args.activation, dropout=args.dropout,
                           batch_norm=args.batch_norm, rng=args.seed)
        sizes = "-".join(str(s) for s in [X.shape[1], *args.hidden, 10])
        what = (f"{sizes} {args.activation} MLP", ", batch norm" if args.batch_norm else "",
                f", dropout {args.dropout}" if args.dropout else "")
    else:
        # the image models see the same pixels (float32 in [0, 1]) as (N, 1, 28, 28): views, no copies
        X, Xt = X.reshape(-1, *models.IMAGE_SHAPE), Xt.reshape(-1, *models.IMAGE_SHAPE)
        if args.model == "lenet5":
            model = models.lenet5(10, rng=args.seed)
            what = ("LeNet-5 (conv 6, 16; dense 120, 84, 10)", "", "")
        else:
            model = models.cnn(10, batch_norm=args.batch_norm, dropout=args.dropout, rng=args.seed)
            what = ("VGG-style CNN (conv 32, 32, pool, 64, 64, pool; dense 128, 10)",
                    ", batch norm" if args.batch_norm else "", f", dropout {args.dropout}" if args.dropout else "")
    opt = _make_optimizer(args, model.parameters())
    scheduler = _make_scheduler(args.schedule, opt, args.epochs)
    n_params = sum(p.data.size for p in model.parameters())
    say(f"model: {what[0]}, {n_params} parameters{what[1]}{what[2]}")
    say(f"optimizer: {_describe_optimizer(args)}; schedule: {args.schedule}; batch size {args.batch_size}, {args.epochs} epochs, "
        f"seed {args.seed}; {fastdl.get_num_threads()} threads, ISA {fastdl.get_isa()}")

    # Ctrl-C stops fit after the current batch; the model as it stands is evaluated and saved, and the
    # command exits 130 (128 + SIGINT) like other tools.
    history = fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=args.epochs, batch_size=args.batch_size,
                  seed=args.seed, validation_split=args.val_split, scheduler=scheduler,
                  verbose=0 if args.quiet else 1)
    interrupted = history.stop_reason == "interrupted"
    epochs_done = len(history)
    if interrupted:
        print(f"fastdl train: training interrupted after {epochs_done} epoch{'' if epochs_done == 1 else 's'} "
              "(Ctrl-C); evaluating and saving the model as it is", file=sys.stderr, flush=True)
    result = evaluate(model, nn.CrossEntropyLoss(), Xt, yt)
    seconds = history["seconds"] if "seconds" in history else []
    stopped = "" if history.stop_reason in ("epochs", None) else f" (stopped: {history.stop_reason})"
    timing = f"; {sum(seconds) / len(seconds):.2f} s per epoch, {sum(seconds):.1f} s training" if seconds else ""
    print(f"test accuracy: {100 * result['accuracy']:.2f}% (test loss {result['loss']:.4f}) after "
          f"{epochs_done} epochs{stopped}{timing}")
    if args.out:
        model.save(args.out)
        say(f"saved the model to {args.out}")
    if args.history_png and len(history):
        from fastdl.plot import plot_history

        plot_history(history, args.history_png)
        say(f"wrote the training curves to {args.history_png}")
    return 130 if interrupted else 0


def _apply_model_defaults(args):
    """Fill in the image models' defaults (MODEL_DEFAULTS) where a flag was not given; refuse a flag the
    chosen model has no use for. ``args._explicit``: the flags given on the command line (main sets it)."""
    explicit = getattr(args, "_explicit", set())
    for dest, flag in _MLP_FLAGS.items():
        if dest in explicit and dest not in MODEL_FLAGS[args.model]:
            users = [m for m in MODELS if dest in MODEL_FLAGS[m]]
            raise CLIError(f"{flag} applies to --model {' and '.join(users)} only, not to --model {args.model}")
    for dest, value in MODEL_DEFAULTS.get(args.model, {}).items():
        if dest not in explicit:
            setattr(args, dest, value)


def _load_mnist(data):
    """MNIST from --data DIR, else from where `fastdl info` says it is (datasets.find_mnist), else downloaded;
    a CLIError telling the command-line user about --data and $FASTDL_DATA when none works."""
    from fastdl import datasets

    try:
        return datasets.load_mnist(data if data is not None else datasets.find_mnist())
    except datasets.MNISTNotFoundError as e:
        searched = ", ".join(str(d) for d in e.searched) or "nowhere"
        why = f"; the download failed: {e.reason}" if e.reason else ""
        raise CLIError(f"MNIST not found (looked in {searched}){why}. Pass --data DIR, a directory holding the "
                       "four MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                       "t10k-labels-idx1-ubyte; gzipped or not), or set $FASTDL_DATA to that directory") from None


# ---------------------------------------------------------------------------- predict


def _load_npy(path: Path) -> np.ndarray:
    """A .npy array (no pickles), its header's size checked against the file's before anything is read."""
    from fastdl.nn.serialize import read_npy_header

    try:
        with open(path, "rb") as f:
            read_npy_header(f, os.fstat(f.fileno()).st_size, "the file")
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise CLIError(f"{path}: not a readable .npy array ({e})") from None


def _read_images(path: Path) -> np.ndarray:
    """Images from .npy or IDX (gz or raw) as float32, in the shape they were stored ((N, features),
    (N, H, W) or (N, C, H, W); one image of 784 values or 28 x 28 becomes N = 1); integers are pixels
    0-255 -> [0, 1]. ``_model_input`` shapes them for the model."""
    from fastdl import datasets

    if path.suffix == ".npy":
        arr = _load_npy(path)
    else:
        arr = datasets.read_idx(path)
    if arr.ndim == 1 or arr.ndim == 2 and arr.shape == (28, 28):
        arr = arr[None]  # one image
    if not 2 <= arr.ndim <= 4 or 0 in arr.shape:
        raise CLIError(f"{path}: expected images of shape (N, 784), (N, 28, 28) or (N, 1, 28, 28), got {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise CLIError(f"{path}: integer pixels must be in 0-255, found {arr.min()}..{arr.max()}")
        return arr.astype(np.float32) / np.float32(255)
    if not np.issubdtype(arr.dtype, np.floating):
        raise CLIError(f"{path}: expected pixel numbers, got dtype {arr.dtype}")
    return np.require(arr, np.float32, "CA")


def _read_labels(path: Path) -> np.ndarray:
    from fastdl import datasets

    arr = _load_npy(path) if path.suffix == ".npy" else datasets.read_idx(path)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise CLIError(f"{path}: expected a 1-D array of integer labels, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def _model_input(model, X: np.ndarray, path) -> np.ndarray:
    """X shaped for ``model``: by its first Linear or Conv2d layer. A model that starts with Conv2d(C, ...)
    gets (N, C, H, W): (N, C, H, W) as it is, (N, H, W) as (N, 1, H, W) when C = 1, and flat rows of C·S·S
    values as (N, C, S, S) (square images: MNIST's 784 -> (N, 1, 28, 28)). A model that starts with a Linear
    (or Flatten, Linear) gets flat rows (N, in_features) of any stored shape."""
    from fastdl import nn

    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    n = X.shape[0]
    if isinstance(first, nn.Conv2d):
        c = first.in_channels
        if X.ndim == 4 and X.shape[1] == c:
            return X
        if X.ndim == 3 and c == 1:
            return X.reshape(n, 1, *X.shape[1:])
        side = int(np.sqrt(X[0].size // c)) if X[0].size % c == 0 else 0
        if X.ndim == 2 and side > 0 and c * side * side == X.shape[1]:
            return X.reshape(n, c, side, side)
        raise CLIError(f"{path}: images of shape {X.shape[1:]}; the model starts with a convolution over {c} "
                       f"channel{'s' if c > 1 else ''} and wants (N, {c}, H, W) images"
                       + (", (N, H, W)" if c == 1 else "") + " or rows of square images")
    X = X.reshape(n, -1)
    if first is not None and X.shape[1] != first.in_features:
        raise CLIError(f"{path}: images have {X.shape[1]} values each, the model expects {first.in_features}")
    return X


def _cmd_predict(args) -> int:
    from fastdl import nn
    from fastdl.train import predict

    model = nn.load(args.model)
    X = _model_input(model, _read_images(Path(args.input)), args.input)
    scores = predict(model, X, batch_size=args.batch_size)
    pred = scores.argmax(axis=1).astype(np.int64)
    shown = " ".join(str(p) for p in pred[:20]) + (" ..." if len(pred) > 20 else "")
    print(f"{len(pred)} images; predicted classes: {shown}")
    counts = np.bincount(pred, minlength=scores.shape[1])
    print("predicted class counts: " + ", ".join(f"{k}: {c}" for k, c in enumerate(counts)))
    if args.labels:
        labels = _read_labels(Path(args.labels))
        if len(labels) != len(pred):
            raise CLIError(f"{args.labels}: {len(labels)} labels for {len(pred)} images")
        print(f"accuracy: {100 * np.mean(pred == labels):.2f}% ({int(np.sum(pred == labels))}/{len(pred)})")
    if args.out:
        np.save(args.out, pred)
        print(f"saved the predictions to {args.out}")
    return 0


# ---------------------------------------------------------------------------- bench, info


def _find_bench(script):
    if script:
        return Path(script) if Path(script).is_file() else None
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        candidate = d / "bench" / "run_all.py"
        if candidate.is_file():
            return candidate
    return None


def _cmd_bench(args) -> int:
    """Run the benchmark suite in a child process: it sets its thread counts before NumPy is imported."""
    path = _find_bench(args.script)
    if path is None:
        where = args.script or "bench/run_all.py in this directory or above it"
        raise CLIError(f"bench: no benchmark script found ({where}); the benchmarks ship with the source "
                       "checkout, not the installed package: run `fastdl bench` from the repository")
    try:
        return subprocess.call([sys.executable, str(path), *args.bench_args])
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


def _cmd_info(args) -> int:
    import fastdl
    from fastdl import datasets

    fastdl.show_config()
    print(f"  NumPy:      {np.__version__}")
    for name in ("matplotlib", "tqdm"):
        print(f"  {name + ':':<11} {'installed' if importlib.util.find_spec(name) else 'not installed (optional)'}")
    found = datasets.find_mnist()  # the lookup `fastdl train` and load_mnist() use
    if found:
        print(f"  MNIST:      {found}")
    else:
        searched = ", ".join(str(d) for d in datasets._search_dirs())
        print(f"  MNIST:      not found (looked in {searched}); `fastdl train --data DIR` or $FASTDL_DATA "
              f"name a directory holding it, else `fastdl train` downloads it to {datasets.mnist_cache_dir()}")
    return 0


# ---------------------------------------------------------------------------- parser


def _number(kind, **bounds):
    """An argparse ``type``: the text as an int (``kind`` "int") or a float ("real"), checked by
    fastdl._validation's check_int / check_real with ``bounds`` (``float32=True`` for a value the kernels
    use: it must also fit in float32 and keep within the bounds once rounded there, where 1 - 1e-9 is 1)."""
    def parse(text):
        try:
            v = int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind == 'int' else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            return (check_int if kind == "int" else check_real)(v, "fastdl", "value", **bounds)
        except (TypeError, ValueError) as e:  # "fastdl: value must be ..." -> "argument --lr: value must be ..."
            raise argparse.ArgumentTypeError(str(e).removeprefix("fastdl: ")) from None
    return parse


_positive_int = _number("int", minimum=1)
_seed = _number("int", minimum=0)
_fraction = _number("real", low=0.0, high=1.0, high_open=True)                   # [0, 1)
_dropout = _number("real", low=0.0, high=1.0, high_open=True, float32=True)      # [0, 1) in float32 too
_nonnegative = _number("real", low=0.0, float32=True)                            # --weight-decay
_positive = _number("real", low=0.0, low_open=True, float32=True)                # --lr


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default once: not after a help text that states it, never 'None'."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    d = TRAIN_DEFAULTS
    p = argparse.ArgumentParser(prog="fastdl", description="fastdl: deep learning as the course teaches it, "
                                "fast on the CPU.")
    sub = p.add_subparsers(dest="command", metavar="{train,predict,bench,info}")
    sub.required = True
    fmt = _DefaultsFormatter

    t = sub.add_parser("train", help="train an MLP or a CNN on MNIST, print its test accuracy, save it",
                       formatter_class=fmt, description="Train an MLP (or, with --model, a convolutional network) "
                       "on MNIST. The defaults reach >= 98% test accuracy.")
    t.add_argument("--model", choices=MODELS, default="mlp",
                   help="the network: mlp (the MLP of --hidden), lenet5 (LeNet-5) or cnn (VGG-style: 3x3 "
                   "convolutions, 32 and 64 channels, batch norm), fastdl.models' builders; lenet5 and cnn "
                   "take the images as (N, 1, 28, 28), and cnn changes the defaults to --epochs 12 --lr 0.01 "
                   "--dropout 0.5 --batch-norm (dropout before its last layer)")
    t.add_argument("--data", metavar="DIR", default=None,
                   help="directory with the four MNIST IDX files (default: $FASTDL_DATA, the cache, "
                   "../shared/data/mnist, else download; `fastdl info` shows which)")
    t.add_argument("--hidden", type=_positive_int, nargs="+", default=d["hidden"], metavar="N",
                   help="hidden layer sizes (mlp)")
    t.add_argument("--activation", choices=["relu", "tanh", "sigmoid", "leaky_relu"], default=d["activation"],
                   help="hidden-layer activation (mlp)")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=d["optimizer"], help="optimizer")
    t.add_argument("--lr", type=_positive, default=d["lr"],
                   help="learning rate (default: %s)" % ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()))
    t.add_argument("--momentum", type=_fraction, default=d["momentum"], help="SGD momentum")
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d["nesterov"],
                   help="Nesterov momentum (SGD)")
    t.add_argument("--weight-decay", type=_nonnegative, default=d["weight_decay"],
                   help="L2 penalty (SGD, Adam) or decoupled weight decay (AdamW)")
    t.add_argument("--dropout", type=_dropout, default=d["dropout"],
                   help="dropout after each hidden layer (mlp; cnn: before the last layer)")
    t.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=d["batch_norm"],
                   help="BatchNorm1d before each hidden activation (mlp; cnn: BatchNorm2d after each convolution)")
    t.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="mini-batch size")
    t.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="training epochs")
    t.add_argument("--schedule", choices=["none", "cosine", "step", "exponential", "plateau", "inverse_time"],
                   default=d["schedule"], help="learning-rate schedule, stepped once per epoch")
    t.add_argument("--seed", type=_seed, default=d["seed"], help="seeds the weights, shuffling and dropout")
    t.add_argument("--threads", type=_positive_int, default=None, help="kernel threads (default: all CPUs)")
    t.add_argument("--val-split", type=_fraction, default=d["val_split"],
                   help="fraction of the training images held out for validation (the last ones)")
    t.add_argument("--out", metavar="PATH", default=d["out"], help="where to save the model ('' to skip)")
    t.add_argument("--history-png", metavar="PATH", default=None, help="also plot the training curves (matplotlib)")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick runs)")
    t.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="use only the first N test images")
    t.set_defaults(func=_cmd_train)

    q = sub.add_parser("predict", help="classify images with a saved model", formatter_class=fmt)
    q.add_argument("model", help="a model saved by `fastdl train` (or fastdl.nn.save)")
    q.add_argument("input", help="images: an IDX file (gz or raw) or a .npy array (N, 784), (N, 28, 28) or "
                   "(N, 1, 28, 28), shaped for the model (a convolutional model gets (N, 1, 28, 28), an MLP rows "
                   "of 784); integer pixels 0-255 are scaled to [0, 1], floats are used as they are")
    q.add_argument("--labels", metavar="FILE", default=None, help="true labels (IDX or .npy) to report accuracy")
    q.add_argument("--out", metavar="PATH", default=None, help="save the predicted classes (int64 .npy)")
    q.add_argument("--batch-size", type=_positive_int, default=1024, help="images per forward pass")
    q.set_defaults(func=_cmd_predict)

    b = sub.add_parser("bench", help="run the benchmark suite (bench/run_all.py of a source checkout)")
    b.add_argument("--script", metavar="PATH", default=None, help="the benchmark script (default: search "
                   "bench/run_all.py from the current directory up)")
    b.add_argument("bench_args", nargs="*", metavar="ARG",
                   help="arguments passed on to the benchmark, options included")
    b.set_defaults(func=_cmd_bench)

    i = sub.add_parser("info", help="show version, compiler, OpenMP, ISA, threads and data locations")
    i.set_defaults(func=_cmd_info)
    return p


def _explicit_train_flags(argv) -> set:
    """The destinations of the `train` options given in ``argv`` (abbreviations included): the same parser
    with every train default suppressed, so that only the options present come back."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["train"]._actions:
        action.default = argparse.SUPPRESS
    ns, _ = p.parse_known_args(argv)
    return set(vars(ns)) - {"command", "func"}


def _bench_passthrough(argv):
    """The tokens after `bench`, in order, without bench's own --script option (and one `--`)."""
    rest, out = argv[argv.index("bench") + 1:], []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok == "--script":
            i += 2
            continue
        if not tok.startswith("--script="):
            out.append(tok)
        i += 1
    if out[:1] == ["--"]:
        out = out[1:]
    return out


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command != "bench":
            parser.error("unrecognized arguments: " + " ".join(unknown))
        if args.command == "bench":
            args.bench_args = _bench_passthrough(argv)
        if args.command == "train":
            args._explicit = _explicit_train_flags(argv)
    except SystemExit as e:  # --help (0) or bad flags (2, after argparse printed why)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError, ImportError, OSError) as e:
        print(f"fastdl {args.command}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"fastdl {args.command}: error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastdl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
