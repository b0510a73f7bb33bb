"""fastdl.plot: training curves as a PNG (matplotlib is optional; imported only when plotting).

    history = fastdl.fit(model, loss_fn, opt, X, y, validation_split=0.1, epochs=10)
    fastdl.plot_history(history, "history.png")

One panel per metric: "loss" (with "val_loss"), then each other metric in the history
("accuracy" with "val_accuracy", ...), against the epoch number. The figure is drawn with the
Agg canvas directly, so matplotlib's global backend (e.g. in a notebook) is left alone.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["plot_history"]

# History keys that are bookkeeping, not curves worth a panel of their own by default.
_NOT_METRICS = ("lr", "seconds", "epoch", "time")


def _as_dict(history) -> dict:
    h = getattr(history, "history", history)
    if not isinstance(h, Mapping):
        raise TypeError(f"plot_history: history must be a fastdl History or a dict of lists, "
                        f"got {type(history).__name__}")
    out = {}
    for key, values in h.items():
        try:
            out[str(key)] = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise TypeError(f"plot_history: history[{key!r}] must be a list of numbers ({e})") from None
    return out


def plot_history(history, path, *, metrics=None, title=None):
    """Write the loss and metric curves of `history` to the PNG file `path`; return the path.

    history: a fastdl History (its ``.history`` dict) or a plain dict of per-epoch lists.
    metrics: the panels to draw, as base names (each panel also draws ``"val_" + name`` when
    present), e.g. ``["loss", "accuracy", "lr"]``. None: "loss" first, then every other
    metric in the history except val_* and bookkeeping (lr, seconds).
    Raises ImportError when matplotlib is missing, ValueError when there is nothing to plot.
    """
    h = _as_dict(history)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError("plot_history needs matplotlib: pip install matplotlib") from e

    if metrics is None:
        bases = dict.fromkeys(k[4:] if k.startswith("val_") else k for k in h)  # ordered, unique
        metrics = sorted((k for k in bases if k not in _NOT_METRICS), key=lambda k: k != "loss")
    elif isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    for m in metrics:
        if m not in h and "val_" + m not in h:
            raise ValueError(f"plot_history: no {m!r} (or 'val_{m}') in the history; it has {sorted(h)}")
    panels = [m for m in metrics if h.get(m) or h.get("val_" + m)]
    if not panels:
        raise ValueError(f"plot_history: nothing to plot (history keys: {sorted(h)})")

    fig = Figure(figsize=(5.0 * len(panels), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, name in zip(axes, panels):
        for key, style in ((name, "-"), ("val_" + name, "--")):
            values = h.get(key)
            if not values:
                continue
            ax.plot(range(1, len(values) + 1), values, style, marker="o" if len(values) <= 30 else None,
                    markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_title(name)
        if name == "lr" or (name == "loss" and _spans_decades(h.get(name, []) + h.get("val_" + name, []))):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _spans_decades(values) -> bool:
    """True when positive values span more than two orders of magnitude (log scale reads better)."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > 100
