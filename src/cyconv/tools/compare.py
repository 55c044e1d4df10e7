"""Hand-crafted features + simple classifiers against a CNN that learns its own features: the course's
comparison, on MNIST or on an image folder's colour pictures.

    rows = compare(ensure_mnist())                                   # handwritten digits
    rows = compare(ImageFolder("shapes").split(0.2, seed=0))          # e.g. make_shapes(600).save("shapes")
    print(format_table(rows))

The rows on MNIST, in order:

    features              classifier                 feature dimension
    pixels                softmax regression         784
    intensity histogram   softmax regression         16   (cyconv.features.color_histogram, one channel)
    HOG                   softmax regression         324  (9 orientations, 7x7 cells, 2x2 blocks)
    pixels                MLP (784 -> 500 -> 10)     784
    learned (conv layers) LeNet-5                    2450 (what its conv layers hand to its classifier)

On an image folder of C x H x W pictures in K classes (a cyconv.data.ImageSplit), the course's own
running example, with the dimensions of 64 x 64 colour pictures:

    features              classifier                 feature dimension
    pixels                softmax regression         12288 = C*H*W, the course's vector
    colour histogram      softmax regression         768  = 256 bins per channel, the course's 256x3
                                                     ("intensity histogram" for grey pictures)
    HOG                   softmax regression         324  (9 orientations, 16x16 cells, 2x2 blocks)
    bag of visual words   softmax regression         400  (features.BagOfWords with its defaults: 400
                                                     words of HOG blocks of 3x3 cells of 8x8 pixels every
                                                     8 pixels; the codebook is fitted on the training
                                                     images, in "features s"; fewer words, a tenth of the
                                                     descriptors, for a folder of few or small pictures)
    pixels                MLP (12288 -> 500 -> K)    12288
    learned (conv layers) small CNN                  what its conv layers hand to its classifier
                                                     (cyconv.models.small_cnn)

Every feature classifier is trained the same way as `cyconv train` trains a network, by the same code
(cyconv.train's per-epoch loop) and with its defaults (TrainConfig): SGD with momentum 0.9 and weight
decay 5e-4, softmax cross-entropy, mini-batches of 64 in a seeded order per epoch, the learning rate
falling to 0 on a cosine over the run, starting at 0.03 (FEATURE_LR). The CNN is trained by
cyconv.train.train() itself, as `cyconv train` (MNIST) or `cyconv train --data-dir` (an image folder:
train.FOLDER_RECIPE) trains it, on the images normalised as there.

The hand-crafted features are standardised before their classifier, in one place (`standardize`): each
feature gets the mean and standard deviation of the training set. Without it, SGD on 16 histogram counts
in the hundreds and on HOG values in [0, 0.2] would need a different learning rate per row.

Times, in seconds: "train" is the training epochs only (no evaluation); "features" is extracting and
standardising the features of the training and test images, fitting the bag of words' codebook included
(for the CNN it is left empty: its features are computed inside training, and counted there). Both depend
on the machine and the thread count.

Default epochs: on MNIST (DEFAULT_EPOCHS, DEFAULT_CNN_EPOCHS), 3 for the feature classifiers, which are
then close to converged (each takes seconds), and 2 for LeNet-5 (~99%; one epoch already gives ~98.5-99%):
about a minute on 2 idle cores (3 minutes measured with them shared), most of it LeNet-5. On an image
folder (FOLDER_EPOCHS, and the CNN's FOLDER_RECIPE epochs), more epochs of fewer images: a few hundred
pictures make a few steps an epoch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..layers import graph, models
from ..training.checkpoint import build_model_for
from ..data import MNIST, ImageSplit
from ..layers.nn import Linear
from ..training.optim import SGD
from ..training.train import FOLDER_RECIPE, TrainConfig, evaluate, lr_schedule, train, train_epoch

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_CNN_EPOCHS", "FOLDER_EPOCHS", "Row", "compare", "standardize",
           "format_table", "as_dicts", "plot_title"]

DEFAULT_EPOCHS = 3
DEFAULT_CNN_EPOCHS = 2
FOLDER_EPOCHS = 20
MLP_HIDDEN = 500
# The feature classifiers' learning rate: the best of 0.003 / 0.01 / 0.03 for every one of them (3 epochs,
# full MNIST; measured with a NumPy stand-in for features.hog written to the same specification).
FEATURE_LR = 0.03
# On an image folder: 256 bins per channel, as the course has it (fewer measured no better on make_shapes,
# where colour says nothing of the class: at chance with 8, 32 or 256); HOG cells of 16x16 pixels (75-86% on
# make_shapes(600), seeds 0-2, where Dalal and Triggs' 8x8 gave 70-76%).
HISTOGRAM_BINS = 256
FOLDER_HOG_CELL = 16


@dataclass(frozen=True)
class Row:
    """One line of the comparison. feature_time_s is None for the CNN (see the module docstring)."""

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


@dataclass(frozen=True)
class _Task:
    """What the comparison on one kind of data is made of."""

    name: str  # the data, in the plot's title
    extractors: list  # (features name, extract(train_images, test_images) -> (train features, test features))
    num_classes: int
    epochs: int  # the feature classifiers' default
    cnn: dict  # TrainConfig fields of the CNN's recipe, its epochs included
    cnn_label: str


def _each(extract):
    """An extractor that fits nothing: the same function on both image sets."""
    return lambda train_images, test_images: (extract(train_images), extract(test_images))


def _task(data, seed: int = 0) -> _Task:
    # Imported here so that cyconv (and the rest of the CLI) loads without it.
    from ..data import features

    if isinstance(data, ImageSplit):
        c, (h, w) = data.spec.channels, data.spec.size
        # What can fail on the pictures' size fails now, not after minutes of training the rows before it.
        smallest = max(2 * FOLDER_HOG_CELL, features.BagOfWords().patch)
        if min(h, w) < smallest:
            raise ValueError(f"compare(): pictures must be at least {smallest}x{smallest} pixels (HOG blocks of 2x2 "
                             f"cells of {FOLDER_HOG_CELL}, bag of words windows of {features.BagOfWords().patch}), "
                             f"got {h}x{w}")
        try:
            build_model_for(FOLDER_RECIPE["model"], hidden=MLP_HIDDEN, spec=data.spec)
        except ValueError as e:
            raise ValueError(f"compare(): the CNN cannot take these pictures: {e}") from None

        def bag_of_words(train_images, test_images):
            default = features.BagOfWords()
            sample = min(len(train_images) * default.descriptors(train_images[:1]).shape[1], default.max_descriptors)
            # At most a word per ten descriptors clustered: a codebook nearly as large as its sample is the
            # sample itself. Only a folder of few or small pictures gets fewer than the default.
            bow = features.BagOfWords(max(1, min(default.n_words, sample // 10)), seed=seed).fit(train_images)
            return bow.transform(train_images), bow.transform(test_images)

        root = data.spec.root
        return _Task(
            name=f"{Path(root).name if root else 'image folder'} ({len(data.classes)} classes, {h}x{w}x{c})",
            extractors=[("pixels", _each(features.pixels)),
                        ("colour histogram" if c > 1 else "intensity histogram",
                         _each(lambda x: features.color_histogram(x, HISTOGRAM_BINS))),
                        ("HOG", _each(lambda x: features.hog(x, 9, (FOLDER_HOG_CELL,) * 2, (2, 2)))),
                        ("bag of visual words", bag_of_words)],
            num_classes=len(data.classes), epochs=FOLDER_EPOCHS, cnn=dict(FOLDER_RECIPE), cnn_label="small CNN")
    if isinstance(data, MNIST):
        return _Task(name="MNIST",
                     extractors=[("pixels", _each(features.pixels)),
                                 ("intensity histogram", _each(features.color_histogram)),
                                 ("HOG", _each(features.hog))],
                     num_classes=10, epochs=DEFAULT_EPOCHS, cnn=dict(model="lenet5", epochs=DEFAULT_CNN_EPOCHS),
                     cnn_label="LeNet-5")
    raise TypeError(f"compare(): data must be a cyconv.data.MNIST or an image folder's cyconv.data.ImageSplit, "
                    f"got {type(data).__name__}")


def plot_title(data) -> str:
    """The title of the comparison's plot (cyconv.plots.comparison): which data it ran on."""
    return f"{_task(data).name}: hand-crafted features vs learned features"


def compare(data, *, epochs: int | None = None, cnn_epochs: int | None = None, limit: int | None = None,
            test_limit: int | None = None, seed: int = 0, progress: bool | None = False, log=print) -> list[Row]:
    """Run every row of the comparison on `data` and return them: a cyconv.data.MNIST of uint8 arrays, or an
    image folder's cyconv.data.ImageSplit (ImageFolder.split).

    epochs: for the feature classifiers (default DEFAULT_EPOCHS on MNIST, FOLDER_EPOCHS on a folder);
    cnn_epochs: for the CNN (default DEFAULT_CNN_EPOCHS on MNIST, FOLDER_RECIPE's on a folder).
    limit / test_limit: use the first N training / test images only. seed fixes every model's initial
    weights and every epoch's batch order. log receives one progress line as each row starts
    ("[2/5] intensity histogram + softmax regression"); the results are only in the rows returned, so a
    caller that prints them (format_table) shows each once.
    """
    task = _task(data, seed)
    epochs = task.epochs if epochs is None else epochs
    cnn_config = {**task.cnn, "seed": seed, **({} if cnn_epochs is None else {"epochs": cnn_epochs})}
    data = _subset(data, limit, test_limit)
    train_images, train_labels, test_images, test_labels = data
    if train_images.ndim == 4:  # NCHW as the network takes them; cyconv.features takes channels last
        train_images, test_images = train_images.transpose(0, 2, 3, 1), test_images.transpose(0, 2, 3, 1)
    y_train, y_test = train_labels.astype(np.int64), test_labels.astype(np.int64)
    # Everything else is TrainConfig's defaults, the recipe of `cyconv train`.
    recipe = dict(epochs=epochs, seed=seed, lr=FEATURE_LR)

    rows = []
    pixel_features = None
    total = len(task.extractors) + 2  # and the MLP and the CNN

    def starting(features, classifier):
        log(f"[{len(rows) + 1}/{total}] {features} + {classifier}")

    def fit_row(features, classifier, model, x_train, x_test, feature_time):
        rows.append(_fit_row(features, classifier, model, x_train, y_train, x_test, y_test, feature_time, recipe,
                             progress))

    for name, extract in task.extractors:
        starting(name, "softmax regression")
        started = time.perf_counter()
        x_train, x_test = standardize(*extract(train_images, test_images))
        feature_time = time.perf_counter() - started
        if name == "pixels":
            pixel_features = (x_train, x_test, feature_time)
        model = models.softmax_regression(x_train.shape[1], task.num_classes, rng=np.random.default_rng(seed))
        fit_row(name, "softmax regression", model, x_train, x_test, feature_time)

    x_train, x_test, feature_time = pixel_features
    mlp_name = f"MLP ({x_train.shape[1]} -> {MLP_HIDDEN} -> {task.num_classes})"
    starting("pixels", mlp_name)
    model = models.mlp(MLP_HIDDEN, task.num_classes, in_features=x_train.shape[1], rng=np.random.default_rng(seed))
    fit_row("pixels", mlp_name, model, x_train, x_test, feature_time)

    starting("learned (conv layers)", task.cnn_label)
    result = train(TrainConfig(**cnn_config), data, progress=progress, log=lambda line: None)
    conv_out = next(layer for layer in graph.layers(result.model) if isinstance(layer, Linear)).in_features
    rows.append(Row("learned (conv layers)", task.cnn_label, conv_out, cnn_config["epochs"],
                    result.metrics[-1]["test_acc"], sum(m["epoch_time_s"] for m in result.metrics), None))
    return rows


def _subset(data, limit, test_limit):
    """data with the first `limit` training and `test_limit` test images only (None: all)."""
    train_images, train_labels, test_images, test_labels = data
    for name, n, available in (("limit", limit, len(train_labels)), ("test_limit", test_limit, len(test_labels))):
        if n is not None and n > available:
            raise ValueError(f"compare(): {name} {n} is more than the {available} images there are")
    parts = (train_images[:limit], train_labels[:limit], test_images[:test_limit], test_labels[:test_limit])
    if isinstance(data, ImageSplit):
        return dataclasses.replace(data, **dict(zip(("train_images", "train_labels", "test_images", "test_labels"),
                                                    parts)))
    return MNIST(*parts)


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
    """The rows as JSON-ready dicts (feature_time_s None for the CNN)."""
    return [asdict(r) for r in rows]
