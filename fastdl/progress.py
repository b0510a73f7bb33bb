"""fastdl.progress: the progress bar and the per-epoch line that ``fit(verbose=1)`` shows.

``ProgressBar`` draws with tqdm when it is installed and with a small plain bar otherwise; both go
to stderr (so stdout holds only the one summary line per epoch, see ``format_epoch_line``) and both
vanish when closed. Redraws are throttled (about 10 per second), so a bar over 60000 one-example
SGD steps costs little.

    with ProgressBar(total=469, desc="Epoch 1/10") as bar:
        for batch in batches:
            ...
            bar.update(1, loss=running_loss)
"""
from __future__ import annotations

import sys
import time

try:  # optional: a nicer bar when tqdm is installed
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

__all__ = ["ProgressBar", "PlainProgressBar", "format_epoch_line", "format_logs"]

_MIN_INTERVAL = 0.1  # seconds between two redraws


class PlainProgressBar:
    """A one-line text bar, ``desc [=======>      ] 120/469 loss: 0.2345``, redrawn in place with '\\r'."""

    def __init__(self, total, desc="", *, file=None, width=30, min_interval=_MIN_INTERVAL):
        self.total = int(total)
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.n = 0
        self.postfix = ""
        self._last_draw = -float("inf")
        self._drawn_len = 0
        self._closed = False

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or self.n >= self.total:
            self._last_draw = now
            self._draw()

    def set_postfix_str(self, s):
        self.postfix = s

    def _draw(self):
        frac = min(self.n / self.total, 1.0) if self.total > 0 else 1.0
        filled = int(frac * self.width)
        arrow = ">" if filled < self.width else ""
        bar = "=" * filled + arrow + " " * (self.width - filled - len(arrow))
        line = f"{self.desc} [{bar}] {self.n}/{self.total}"
        if self.postfix:
            line += " " + self.postfix
        pad = " " * max(self._drawn_len - len(line), 0)
        self.file.write("\r" + line + pad)
        self.file.flush()
        self._drawn_len = len(line)

    def close(self):
        """Erase the bar (the caller prints its own summary line)."""
        if self._closed:
            return
        self._closed = True
        if self._drawn_len:
            self.file.write("\r" + " " * self._drawn_len + "\r")
            self.file.flush()


class ProgressBar:
    """A bar over ``total`` steps: tqdm when installed (``use_tqdm=None``), else ``PlainProgressBar``.

    ``update(n, loss=...)`` advances it and shows the running loss; ``close()`` (or leaving the
    ``with`` block) removes it from the terminal.
    """

    def __init__(self, total, desc="", *, file=None, use_tqdm=None):
        file = file if file is not None else sys.stderr
        if use_tqdm is None:
            use_tqdm = _tqdm is not None
        if use_tqdm and _tqdm is None:
            raise ImportError("ProgressBar(use_tqdm=True) needs tqdm: pip install tqdm")
        self.uses_tqdm = bool(use_tqdm)
        if self.uses_tqdm:
            self._bar = _tqdm(total=total, desc=desc, file=file, leave=False, unit="batch",
                              dynamic_ncols=True, mininterval=_MIN_INTERVAL)
        else:
            self._bar = PlainProgressBar(total, desc, file=file)
        self._last_postfix = -float("inf")

    def update(self, n=1, *, loss=None):
        if loss is not None:
            now = time.monotonic()
            if now - self._last_postfix >= _MIN_INTERVAL:  # formatting every step would cost more than the step
                self._last_postfix = now
                if self.uses_tqdm:
                    self._bar.set_postfix_str(f"loss: {loss:.4f}", refresh=False)
                else:
                    self._bar.set_postfix_str(f"loss: {loss:.4f}")
        self._bar.update(n)

    def close(self):
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def format_logs(logs):
    """``loss: 0.1234 - accuracy: 0.9500 - lr: 0.01`` from a dict of numbers (seconds left out)."""
    parts = []
    for key, value in logs.items():
        if key == "seconds":
            continue
        if key == "lr":
            parts.append(f"lr: {value:.4g}")
        else:
            parts.append(f"{key}: {value:.4f}")
    return " - ".join(parts)


def format_epoch_line(epoch, epochs, logs):
    """The line ``fit`` prints after each epoch: ``Epoch 3/10 - 0.52s - loss: 0.1234 - ...``.

    ``epoch`` counts from 0 (as in ``History.epoch``); the line shows it counting from 1.
    """
    head = f"Epoch {epoch + 1}/{epochs}"
    if "seconds" in logs:
        head += f" - {logs['seconds']:.2f}s"
    rest = format_logs(logs)
    return f"{head} - {rest}" if rest else head
