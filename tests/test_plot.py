"""fastdl.plot.plot_history: a valid PNG with one panel per metric; a clear error without matplotlib."""
import builtins
import struct
import zlib

import pytest

from fastdl.plot import plot_history

HISTORY = {
    "loss": [2.3, 0.9, 0.5, 0.35, 0.3],
    "val_loss": [1.1, 0.7, 0.5, 0.45, 0.44],
    "accuracy": [0.3, 0.7, 0.85, 0.9, 0.92],
    "val_accuracy": [0.6, 0.78, 0.86, 0.88, 0.885],
    "lr": [0.1, 0.09, 0.07, 0.04, 0.01],
    "seconds": [1.0, 1.1, 1.0, 0.9, 1.0],
}


def _png_size(path):
    """(width, height) after checking the PNG signature, the IHDR chunk and its CRC, and IEND."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    return struct.unpack(">II", data[16:24])


class FakeHistory:  # what fastdl.train.History looks like to plot_history
    def __init__(self, h):
        self.history = h
        self.epoch = list(range(len(h["loss"])))


def test_png_from_dict_one_panel_per_metric(tmp_path):
    pytest.importorskip("matplotlib")
    p = plot_history(HISTORY, tmp_path / "h.png")
    assert p == tmp_path / "h.png"
    w2, h2 = _png_size(p)  # loss and accuracy panels (lr and seconds are bookkeeping)
    w1, h1 = _png_size(plot_history({"loss": HISTORY["loss"]}, tmp_path / "one.png"))
    w3, _ = _png_size(plot_history(HISTORY, tmp_path / "three.png", metrics=["loss", "accuracy", "lr"]))
    assert h1 == h2 and w2 == 2 * w1 and w3 == 3 * w1


def test_png_from_history_object_and_str_path(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "hist.png")
    plot_history(FakeHistory({"loss": [1.0, 0.5], "val_loss": [1.2, 0.8]}), path)
    _png_size(tmp_path / "hist.png")


def test_only_validation_curve(tmp_path):
    pytest.importorskip("matplotlib")
    plot_history({"val_accuracy": [0.5, 0.7, 0.8]}, tmp_path / "v.png")
    _png_size(tmp_path / "v.png")


def test_bad_histories(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(TypeError, match="dict of lists"):
        plot_history([1, 2, 3], tmp_path / "x.png")
    with pytest.raises(TypeError, match="loss"):
        plot_history({"loss": ["a"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_history({"loss": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'f1'"):
        plot_history(HISTORY, tmp_path / "x.png", metrics=["f1"])
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_clear_import_error(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"plot_history needs matplotlib: pip install matplotlib"):
        plot_history(HISTORY, tmp_path / "x.png")
