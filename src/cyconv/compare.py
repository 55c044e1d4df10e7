"""Hand-crafted features + simple classifiers against a CNN that learns its own features, on MNIST.

    rows = compare(ensure_mnist())
    print(format_table(rows))

The rows, in order:

    features              classifier                 feature dimension
    pixels                softmax regression         784
    intensity histogram   softmax regression         16   (cyconv.features.color_histogram, one channel)
    HOG                   softmax regression         324  (9 orientations, 7x7 cells, 2x2 blocks)
    pixels                MLP (784 -> 500 -> 10)     784
    learned (conv layers) LeNet-5                    2450 (what its conv layers hand to its classifier)

Every classifier is trained the same way as `cyconv train` trains a network, by the same code
(cyconv.train's per-epoch loop) and with its defaults (TrainConfig): SGD with momentum 0.9 and weight
decay 5e-4, softmax cross-entropy, mini-batches of 64 in a seeded order per epoch, the learning rate
falling to 0 on a cosine over the run; it starts at 0.03 for the feature classifiers (FEATURE_LR) and at
TrainConfig's default for LeNet-5.
LeNet-5 is trained by cyconv.train.train() itself, on the normalised images (cyconv.data.to_float32).

The hand-crafted features are standardised before their classifier, in one place (`standardize`): each
feature gets the mean and standard deviation of the training set. Without it, SGD on 16 histogram counts
in the hundreds and on HOG values in [0, 0.2] would need a different learning rate per row.

Times, in seconds: "train" is the training epochs only (no evaluation); "features" is extracting and
standardising the features of the training and test images (for LeNet-5 it is left empty: its features
are computed inside training, and counted there). Both depend on the machine and the thread count.

Default epochs (DEFAULT_EPOCHS, DEFAULT_CNN_EPOCHS): 3 for the feature classifiers, which are then close
to converged (each takes seconds), and 2 for LeNet-5 (~99%; one epoch already gives ~98.5-99%). The whole
comparison then takes about a minute on 2 idle cores (3 minutes measured with them shared), most of it
LeNet-5.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from . import models
from .data import MNIST
from .nn import Linear
from .optim import SGD
from .train import TrainConfig, evaluate, lr_schedule, train, train_epoch

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_CNN_EPOCHS", "Row", "compare", "standardize", "format_table", "as_dicts",
           "plot"]

DEFAULT_EPOCHS = 3
DEFAULT_CNN_EPOCHS = 2
MLP_HIDDEN = 500
# The feature classifiers' learning rate: the best of 0.003 / 0.01 / 0.03 for every one of them (3 epochs,
# full MNIST; measured with a NumPy stand-in for features.hog written to the same specification).
FEATURE_LR = 0.03


@dataclass(frozen=True)
class Row:
    """One line of the comparison. feature_time_s is None for LeNet-5 (see the module docstring)."""

    features: str
    classifier: str
    dimension: int
    epochs: int
    test_acc: float
    train_time_s: float
    feature_time_s: float | None


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train - mean) / std and (test - mean) / std, float32, with mean and std per feature (column)
    of `train` only, so nothing about the test set leaks into training. A feature constant over the
    training set (std 0, e.g. a border pixel) is only centred."""
    train = np.asarray(train, np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    scale = lambda x: ((np.asarray(x, np.float64) - mean) / std).astype(np.float32)  # noqa: E731
    return scale(train), scale(test)


def _extractors():
    # Imported here so that cyconv (and the rest of the CLI) loads without it.
    from . import features

    return [("pixels", features.pixels), ("intensity histogram", features.color_histogram),
            ("HOG", features.hog)]


def compare(data, *, epochs: int | None = None, cnn_epochs: int | None = None, limit: int | None = None,
            test_limit: int | None = None, seed: int = 0, progress: bool | None = False, log=print) -> list[Row]:
    """Run every row of the comparison on `data` (a cyconv.data.MNIST of uint8 arrays) and return them.

    epochs: for the feature classifiers (default DEFAULT_EPOCHS); cnn_epochs: for LeNet-5 (default
    DEFAULT_CNN_EPOCHS). limit / test_limit: use the first N training / test images only. seed fixes
    every model's initial weights and every epoch's batch order. log receives one progress line as each
    row starts ("[2/5] intensity histogram + softmax regression"); the results are only in the rows
    returned, so a caller that prints them (format_table) shows each once.
    """
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    cnn_epochs = DEFAULT_CNN_EPOCHS if cnn_epochs is None else cnn_epochs
    train_images, train_labels, test_images, test_labels = _subset(data, limit, test_limit)
    y_train, y_test = train_labels.astype(np.int64), test_labels.astype(np.int64)
    # Everything else is TrainConfig's defaults, the recipe of `cyconv train`.
    recipe = dict(epochs=epochs, seed=seed, lr=FEATURE_LR)

    rows = []
    pixel_features = None
    extractors = _extractors()
    total = len(extractors) + 2  # and the MLP and LeNet-5

    def starting(features, classifier):
        log(f"[{len(rows) + 1}/{total}] {features} + {classifier}")

    for name, extract in extractors:
        starting(name, "softmax regression")
        started = time.perf_counter()
        x_train, x_test = standardize(extract(train_images), extract(test_images))
        feature_time = time.perf_counter() - started
        if name == "pixels":
            pixel_features = (x_train, x_test, feature_time)
        model = models.softmax_regression(x_train.shape[1], rng=np.random.default_rng(seed))
        rows.append(_fit_row(name, "softmax regression", model, x_train, y_train, x_test, y_test,
                             feature_time, recipe, progress))

    x_train, x_test, feature_time = pixel_features
    mlp_name = f"MLP ({x_train.shape[1]} -> {MLP_HIDDEN} -> 10)"
    starting("pixels", mlp_name)
    model = models.mlp(MLP_HIDDEN, in_features=x_train.shape[1], rng=np.random.default_rng(seed))
    rows.append(_fit_row("pixels", mlp_name, model, x_train, y_train, x_test, y_test, feature_time, recipe,
                         progress))

    starting("learned (conv layers)", "LeNet-5")
    config = TrainConfig(model="lenet5", epochs=cnn_epochs, seed=seed)
    result = train(config, MNIST(train_images, train_labels, test_images, test_labels), progress=progress,
                   log=lambda line: None)
    conv_out = next(layer for layer in result.model if isinstance(layer, Linear)).in_features
    rows.append(Row("learned (conv layers)", "LeNet-5", conv_out, cnn_epochs, result.metrics[-1]["test_acc"],
                    sum(m["epoch_time_s"] for m in result.metrics), None))
    return rows


def _subset(data, limit, test_limit):
    train_images, train_labels, test_images, test_labels = data
    for name, n, available in (("limit", limit, len(train_labels)), ("test_limit", test_limit, len(test_labels))):
        if n is not None and n > available:
            raise ValueError(f"compare(): {name} {n} is more than the {available} images there are")
    return (train_images[:limit], train_labels[:limit], test_images[:test_limit], test_labels[:test_limit])


def _fit_row(features, classifier, model, x_train, y_train, x_test, y_test, feature_time, recipe,
             progress) -> Row:
    """Train `model` on feature vectors with train.py's per-epoch loop, then test it once."""
    config = TrainConfig(**recipe)  # its `model` field is not used: the model is given
    optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    schedule = lr_schedule(config, -(-len(y_train) // config.batch_size))
    train_time = 0.0
    for epoch in range(config.epochs):
        train_time += train_epoch(model, optimizer, x_train, y_train, config, epoch, schedule,
                                   progress)["epoch_time_s"]
    accuracy = evaluate(model, x_test, y_test, 1000)["test_acc"]
    return Row(features, classifier, x_train.shape[1], config.epochs, accuracy, train_time, feature_time)


_HEADER = ("features", "classifier", "dim", "epochs", "test acc", "train s", "features s")


def format_table(rows: list[Row]) -> str:
    """An aligned text table of the rows: text columns left-aligned, numbers right-aligned."""
    cells = [_HEADER] + [
        (r.features, r.classifier, str(r.dimension), str(r.epochs), f"{100 * r.test_acc:.2f}%",
         f"{r.train_time_s:.2f}", "-" if r.feature_time_s is None else f"{r.feature_time_s:.2f}")
        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADER))]

    def line(row):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def as_dicts(rows: list[Row]) -> list[dict]:
    """The rows as JSON-ready dicts (feature_time_s None for LeNet-5)."""
    return [asdict(r) for r in rows]


def plot(rows: list[Row], path) -> None:
    """Test accuracy against training time (log x), one labelled point per row, saved as an image at path.
    Needs matplotlib (pip install 'cyconv[plot]'); raises ImportError without it."""
    from matplotlib.figure import Figure  # not pyplot: no backend or global state is touched

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    slowest = max(r.train_time_s for r in rows)
    for r in rows:
        ax.scatter(r.train_time_s, 100 * r.test_acc)
        # The slowest point's label goes to its left, or it would run off the axes.
        left = r.train_time_s == slowest
        ax.annotate(f"{r.features} + {r.classifier}", (r.train_time_s, 100 * r.test_acc),
                    textcoords="offset points", xytext=(-5 if left else 5, -12 if left else 4),
                    ha="right" if left else "left", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST: hand-crafted features vs learned features")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path)
