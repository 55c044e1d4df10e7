"""cyconv.plots: pictures of training runs, networks and comparisons (needs matplotlib: pip install
"cyconv[plot]").

    curves(metrics, path)                   loss and accuracy per epoch (read_metrics reads a run's)
    filters(model, path)                    the first convolution's filters as a grid of small images
    feature_maps(model, image, path)        every convolution's output for one input image
    confusion(counts, classes, path)        a confusion matrix, class names on the axes
    comparison(rows, path, title)           cyconv.compare's rows: test accuracy against training time

Every function draws a matplotlib Figure (never pyplot: no backend, window or global state is touched) and
writes it to `path` atomically (cyconv._files.atomic_write: a reader sees the old file or the whole new
one), in the format its name ends in (.png, .pdf, .svg, ...: `formats()`). Without matplotlib each raises
ImportError saying how to install it.

Left out on purpose: interactive windows, styling options. The figures are for looking at a run, not
for publication; matplotlib's own API is there for that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..layers.graph import layers as _layers, run_unfused, trace
from ..layers.nn import Conv2d

__all__ = ["formats", "check_path", "read_metrics", "curves", "filters", "feature_maps", "confusion",
           "comparison"]

INSTALL_HINT = "pip install 'cyconv[plot]'"
_METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_acc")
_MAX_METRICS_BYTES = 64 << 20  # a run's metrics.json is a few hundred bytes an epoch
_CELL_TEXT_MAX_CLASSES = 30  # the counts are written in the confusion matrix's cells up to this many classes


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"drawing pictures needs matplotlib; install it with {INSTALL_HINT}") from None
    return Figure(layout="constrained", **kwargs)


def formats() -> list[str]:
    """The file name endings matplotlib writes (without the dot), e.g. ["eps", "jpeg", ..., "png", ...]."""
    _figure()  # the ImportError without matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_path(path) -> str:
    """The format to write `path` in (its ending, lower case), after checking that matplotlib writes it and
    that its directory exists: so a command fails before its work, not after. Raises ImportError without
    matplotlib, ValueError for an unknown ending, FileNotFoundError for a missing directory."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    known = formats()
    if fmt not in known:
        raise ValueError(f"{path}: the name must end in one of {', '.join('.' + f for f in known)}")
    directory = path.resolve().parent
    if not directory.is_dir():
        raise FileNotFoundError(2, "No such directory", str(directory))
    return fmt


def _save(fig, path) -> Path:
    path = Path(path)
    fmt = check_path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=fig.dpi))
    return path


# ---------------------------------------------------------------------------------------------------------
# Training curves


def read_metrics(run) -> list[dict]:
    """The per-epoch metrics `cyconv train` wrote: `run` is its output directory (holding metrics.json) or
    the metrics.json file. Checked: a JSON list of objects, each with a whole epoch and finite numbers for
    train_loss, train_acc and test_acc. Raises FileNotFoundError if there is no such file, ValueError
    naming the file and the problem otherwise."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a run directory of 'cyconv train' holds metrics.json)")
    if path.stat().st_size > _MAX_METRICS_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes is not a metrics file of 'cyconv train'")
    try:
        metrics = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError, a ValueError
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(metrics, list) or not metrics:
        raise ValueError(f"{path}: expected a non-empty JSON list of per-epoch metrics")
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            raise ValueError(f"{path}: entry {i} is not a JSON object")
        for key in _METRIC_KEYS:
            value = m.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{path}: entry {i} has no finite number {key!r}")
    return metrics


def curves(metrics: list[dict], path, *, title: str | None = None) -> Path:
    """Training loss (left) and training and test accuracy (right) against the epoch, from a run's
    metrics (read_metrics): one point per epoch. Returns the path written."""
    epochs = [m["epoch"] for m in metrics]
    fig = _figure(figsize=(9, 3.6))
    loss, accuracy = fig.subplots(1, 2)
    loss.plot(epochs, [m["train_loss"] for m in metrics], marker="o", label="train")
    loss.set_ylabel("loss (softmax cross-entropy)")
    accuracy.plot(epochs, [100 * m["train_acc"] for m in metrics], marker="o", label="train")
    accuracy.plot(epochs, [100 * m["test_acc"] for m in metrics], marker="o", label="test")
    accuracy.set_ylabel("accuracy (%)")
    for ax in (loss, accuracy):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Filters and feature maps


def _convolutions(model) -> list[Conv2d]:
    return [layer for layer in _layers(model) if isinstance(layer, Conv2d)]


def _no_convolution(model) -> ValueError:
    return ValueError(f"the model has no convolution layer (its layers: "
                      f"{', '.join(type(layer).__name__ for layer in _layers(model))}); filters and feature maps "
                      "are drawn for convolutional networks")


def _mosaic(tiles: np.ndarray, columns: int, gap: float) -> np.ndarray:
    """Tiles (N, h, w) or (N, h, w, 3) side by side, `columns` to a row, one pixel of `gap` between them."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, *tiles.shape[3:]), gap, np.float64)
    for i in range(n):  # one slice copy per tile, a few hundred at most
        r, c = divmod(i, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[i]
    return out


def _columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def _scaled_each(maps: np.ndarray) -> np.ndarray:
    """Each map (axis 0) scaled to [0, 1] by its own minimum and maximum (a constant map is 0.5)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return ((flat - low) / span + np.where(high > low, 0.0, 0.5)).reshape(maps.shape)


def filters(model, path, *, title: str | None = None) -> Path:
    """The first convolution's filters (weight (O, C, kh, kw)) as a grid of O small images: colour (RGB)
    when the layer takes 3 channels, else one grey image per (filter, input channel). Each filter is
    scaled by its own largest |weight|, so mid-grey is 0 (RGB: each channel's 0 at mid-level). Raises
    ValueError if the model has no convolution layer. Returns the path written."""
    convs = _convolutions(model)
    if not convs:
        raise _no_convolution(model)
    w = convs[0].weight.data.astype(np.float64)
    o, c, kh, kw = w.shape
    scale = np.abs(w).reshape(o, -1).max(axis=1)
    w = 0.5 + 0.5 * w / np.where(scale > 0, scale, 1.0)[:, None, None, None]
    if c == 3:
        tiles, columns, cmap = w.transpose(0, 2, 3, 1), _columns(o), None
    else:
        tiles, columns, cmap = w.reshape(o * c, kh, kw), (c if c > 1 else _columns(o)), "gray"
    grid = _mosaic(tiles, columns, gap=1.0)
    fig = _figure(figsize=_fit_size(grid.shape[1], grid.shape[0], 6))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"first convolution: {o} filters of {c} x {kh} x {kw}"
                 + ("" if c in (1, 3) else f" (a row of {c} per filter)"))
    return _save(fig, path)


def _fit_size(width: int, height: int, inches: float) -> tuple[float, float]:
    """A figure size of about `inches` on its longer side, with the picture's aspect ratio."""
    ratio = height / width
    return (inches, max(2.0, inches * ratio + 0.6)) if ratio <= 1 else (max(2.0, inches / ratio), inches + 0.6)


def feature_maps(model, image: np.ndarray, path, *, title: str | None = None) -> Path:
    """Each convolution's output planes for one input image, layer by layer (the model is put in eval mode,
    and left so, and run one layer at a time): the input, then one grid of maps per Conv2d, each map scaled
    to its own range.

    image: the network's input for one image, float (C, H, W) as the model takes it (normalised as in
    training). Raises ValueError if the model has no convolution layer or cannot take the image.
    Returns the path written."""
    convs = _convolutions(model)
    if not convs:
        raise _no_convolution(model)
    x = np.asarray(image)
    if x.ndim != 3:
        raise ValueError(f"feature_maps(): image must be one (C, H, W) input, got shape {x.shape}")
    dtype = convs[0].weight.data.dtype
    x = np.ascontiguousarray(x[None], dtype=dtype)
    model.eval()
    tr = trace(model)
    try:
        values = run_unfused(tr, x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"feature_maps(): the model cannot take a {image.shape} image: {e}") from None
    outputs = [values[i + 1][0] for i, node in enumerate(tr.nodes) if isinstance(node.module, Conv2d)]
    panels = [("input", _input_picture(np.asarray(image, np.float64)))] + [
        (f"convolution {i + 1}: {len(maps)} maps of {maps.shape[1]} x {maps.shape[2]}",
         _mosaic(_scaled_each(maps), _columns(len(maps)), gap=np.nan)) for i, maps in enumerate(outputs)]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig = _figure(figsize=(4 * columns, 4.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax, (label, picture) in zip(axes, panels):
        ax.imshow(picture, cmap=None if picture.ndim == 3 else _grey_with_gaps(), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _input_picture(image: np.ndarray) -> np.ndarray:
    """The network's input as a picture: RGB (H, W, 3) for 3 channels, else the first channel; scaled to
    [0, 1] by its range (normalisation moved it)."""
    picture = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    return _scaled_each(picture[None])[0]


def _grey_with_gaps():
    from matplotlib import colormaps

    return colormaps["gray"].with_extremes(bad="white")  # white: the NaN gaps between maps


# ---------------------------------------------------------------------------------------------------------
# Confusion matrix


def confusion(counts: np.ndarray, classes, path, *, title: str | None = None) -> Path:
    """counts[true, predicted] (cyconv.train.confusion_matrix) as a picture: rows the true classes, columns
    the predicted ones, each labelled with its class name; the colour of a cell is its share of its row
    (the row's recall on the diagonal), the number in it the count (up to 30 classes). Returns the path
    written."""
    counts = np.asarray(counts)
    k = len(classes)
    if counts.ndim != 2 or counts.shape != (k, k) or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"confusion(): counts must be a ({k}, {k}) matrix of counts >= 0 for the {k} classes, "
                         f"got {counts.dtype} {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / np.where(totals > 0, totals, 1)
    side = min(12.0, 3.0 + 0.45 * k)
    fig = _figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    names = [str(c) for c in classes]
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                  if max(map(len, names)) > 2 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= _CELL_TEXT_MAX_CLASSES:
        for (t, p), n in np.ndenumerate(counts):
            ax.text(p, t, str(n), ha="center", va="center", fontsize=8,
                    color="white" if share[t, p] > 0.5 else "black")
    correct, total = int(np.trace(counts)), int(counts.sum())
    accuracy = f"accuracy {100 * correct / total:.2f}% ({correct}/{total})" if total else "no images"
    ax.set_title(f"{title}\n{accuracy}" if title else accuracy, fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# The comparison of cyconv.compare


def comparison(rows, path, title: str) -> Path:
    """Test accuracy against training time (log x), one labelled point per row of cyconv.compare."""
    fig = _figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    times = [r.train_time_s for r in rows]
    # The middle of the log axis: labels of points right of it go to their left, or they would run off it.
    middle = math.sqrt(max(min(times), 1e-9) * max(max(times), 1e-9))
    for r in rows:
        ax.scatter(r.train_time_s, 100 * r.test_acc)
        left = r.train_time_s > middle
        below = r.train_time_s == max(times)  # below the slowest point, clear of its neighbours' labels
        ax.annotate(f"{r.features} + {r.classifier}", (r.train_time_s, 100 * r.test_acc),
                    textcoords="offset points", xytext=(-5 if left else 5, -12 if below else 4),
                    ha="right" if left else "left", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
