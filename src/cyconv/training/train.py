"""Training on MNIST or an image folder: mini-batch SGD with softmax cross-entropy, evaluation and
checkpoints each epoch.

    config = TrainConfig(model="lenet5", epochs=3)
    result = train(config, ensure_mnist(), out_dir="runs/lenet5")
    result.metrics[-1]["test_acc"]        # 0.99...

    folder = ImageFolder("shapes", size=(64, 64))                 # one sub-folder per class
    result = train(TrainConfig(**FOLDER_RECIPE), folder.split(0.2, seed=0))       # small_cnn, augmented

MNIST's images are normalised with its published mean and std (cyconv.data.to_float32); an image folder's
per channel with its training split's (cyconv.data.normalize, FolderSpec.mean/std), which the checkpoint
keeps so that evaluation and prediction normalise the same way. The model gets as many input channels and
outputs as the data has channels and classes.

Reproducible by construction: the initial weights come from np.random.default_rng(seed) and each epoch's
order of the training images from np.random.default_rng([seed, 1, epoch]), so an epoch's shuffle does not
depend on what ran before it. With the same seed and thread count a run gives the same loss curve, and a
run resumed from its checkpoint ends with the same weights as one that never stopped.

The learning rate is set before every step from the schedule over the whole run (all epochs' steps).
The last batch of an epoch may be smaller than batch_size; it is kept, as in PyTorch's DataLoader.

Augmentation (config.augment, image folders only): each training batch is flipped and cropped at random
(`augment`) from np.random.default_rng([seed, 2, epoch]), so it too is the same run after run and resumes
exactly.

Distributed (train(..., distributed=True) under `mpiexec -n N`, cyconv.distributed): batch_size is the
global batch; each rank trains on its part of every batch (distributed.shard) with the same shuffle, the
gradients are averaged over the ranks before each step, and each rank evaluates its part of the test set.
The run follows the trajectory of one process with the same batch, to float rounding.

Left out on purpose: a validation split (the test set is evaluated after each epoch, as in the classic
MNIST results, and nothing is selected by it), mixed precision.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import distributed as dist
from ..layers import functional as F
from ..kernels.threads import get_num_threads
from .._files import atomic_write, remove_stale_temp_files
from .checkpoint import build_model_for, load_checkpoint, restore, save_checkpoint
from ..data import FolderSpec, ImageSplit, normalize, to_float32
from ..layers.models import MODELS
from .optim import OPTIMIZERS, build_optimizer, cosine_lr, step_lr

__all__ = [
    "SCHEDULES",
    "FOLDER_RECIPE",
    "FOLDER_RECIPES",
    "FOLDER_IMAGE_SIZE",
    "folder_recipe",
    "run_config",
    "saved_run",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "train",
    "train_epoch",
    "augment",
    "lr_schedule",
    "evaluate",
    "predict_logits",
    "confusion_matrix",
    "CHECKPOINT_NAME",
    "DEFAULT_LR",
    "METRICS_NAME",
]

SCHEDULES = ("cosine", "constant", "step")
# The base lr where TrainConfig.lr is None. SGD's was chosen by measurement (benchmarks/RESULTS.md, "the default
# recipe, again"); Adam's is its paper's and PyTorch's default.
DEFAULT_LR = {"sgd": 0.04, "adam": 1e-3, "adamw": 1e-3}
# What `cyconv train --data-dir` trains where the command line is silent (TrainConfig's defaults are the MNIST
# recipe). Chosen on make_shapes(600) (480 training pictures): small_cnn's 4096-wide classifier over batch-normed
# features diverges at the MNIST lr of 0.04 (and at 0.01), so a lower lr with more, smaller steps; without
# augmentation small_cnn fits the training pictures and stops near 89% on the test ones, with it 99-100%
# (three data and weight seeds).
FOLDER_RECIPE = {"model": "small_cnn", "epochs": 40, "batch_size": 16, "lr": 0.002, "augment": True}
# The recipes of the models that have their own on an image folder (the others take FOLDER_RECIPE's settings),
# and the image side each reads the pictures at where --image-size is not given (else data.DEFAULT_IMAGE_SIZE).
# resnet20's, measured on make_shapes(600) at 32 x 32 (benchmarks/RESULTS.md, "resnet20 on the shapes"): 99-100%
# test accuracy over seeds 0, 1 and 2, 70-80 s a run on 2 cores. At lr 0.05 one seed in three stayed near chance for
# ten epochs and ended at 72% (a linear warm-up did not help); at 0.02 all three learn from the first epochs.
RESNET20_FOLDER_RECIPE = {"model": "resnet20", "epochs": 20, "batch_size": 32, "lr": 0.02, "augment": True}
FOLDER_RECIPES = {"small_cnn": FOLDER_RECIPE, "resnet20": RESNET20_FOLDER_RECIPE}
FOLDER_IMAGE_SIZE = {"resnet20": 32}
CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.json"
_SHUFFLE_STREAM = 1  # the word that keeps shuffle seeds apart from the init seed (see _epoch_order)
_AUGMENT_STREAM = 2  # and augmentation's apart from both


def folder_recipe(model: str) -> dict:
    """The TrainConfig settings `cyconv train --data-dir` uses for `model` where the command line is silent:
    its own recipe (FOLDER_RECIPES) or else FOLDER_RECIPE's settings, with model set to `model`."""
    if model not in MODELS:
        raise ValueError(f"folder_recipe(): model must be one of {', '.join(MODELS)}, got {model!r}")
    return {**FOLDER_RECIPES.get(model, FOLDER_RECIPE), "model": model}



def run_config(given: dict, *, image_folder: bool = False, saved: dict | None = None) -> TrainConfig:
    """The config of a run from the TrainConfig fields `given` (a command line's options; the others left out).

    A new run takes what is not given from TrainConfig's defaults, or on an image folder from the model's
    folder_recipe (without its lr when the optimizer is not SGD: that lr is SGD's, Adam's default fits).
    A resumed run (saved: saved_run() of its directory) takes it from the run being resumed, so resuming
    with nothing given continues it; what is given must agree with it (train() checks).
    """
    if saved is not None:
        return TrainConfig.from_dict({**saved["config"], **given})
    if not image_folder:
        return TrainConfig(**given)
    recipe = folder_recipe(given.get("model", FOLDER_RECIPE["model"]))
    if given.get("optimizer", "sgd") != "sgd":
        recipe = {k: v for k, v in recipe.items() if k != "lr"}
    return TrainConfig(**{**recipe, **given})


def saved_run(out_dir) -> dict:
    """The config and image-folder spec (None for MNIST) of the run saved in out_dir, as JSON-able dicts
    (so a distributed run's rank 0 can read it and broadcast it): what run_config(saved=...) resumes."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    saved = load_checkpoint(path)
    return {"config": saved.config, "data": None if saved.data is None else saved.data.to_dict()}

@dataclass(frozen=True)
class TrainConfig:
    """Everything a run's result depends on (besides the data and the thread count).

    model         a name in cyconv.models.MODELS ("mlp": `hidden` units, "mobilenet_v2": `width_mult`;
                  each ignored by the others)
    schedule      "cosine": from lr to 0 over all steps, after `warmup_steps` linear warm-up steps;
                  "step": lr times `gamma` every `step_size` epochs; "constant"
    limit         train on the first `limit` training images only (None: all)
    augment       flip and crop each training batch at random (`augment`); image folders only
    optimizer     "sgd" (with momentum), "adam" or "adamw" (cyconv.optim; momentum applies to SGD only)
    lr            None: the optimizer's default, DEFAULT_LR (0.04 for SGD, measured; 1e-3 for Adam/AdamW);
                  the config then holds the number, so a checkpoint records what was used
    """

    model: str = "lenet5"
    hidden: int = 500
    epochs: int = 3
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    step_size: int = 1
    gamma: float = 0.1
    seed: int = 0
    limit: int | None = None
    augment: bool = False
    optimizer: str = "sgd"
    width_mult: float = 1.0

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"TrainConfig: {name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_real(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and np.isfinite(v)

        if self.model not in MODELS:
            fail("model", f"one of {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"one of {', '.join(OPTIMIZERS)}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])  # frozen: set once, here
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {', '.join(SCHEDULES)}")
        for name in ("hidden", "epochs", "batch_size", "step_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "an int >= 1")
        for name in ("warmup_steps", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an int >= 0")
        if self.limit is not None and (not is_int(self.limit) or self.limit < 1):
            fail("limit", "None or an int >= 1")
        if not is_real(self.width_mult) or self.width_mult <= 0:
            fail("width_mult", "a number > 0")
        if not is_real(self.lr) or self.lr <= 0:
            fail("lr", "a number > 0")
        if not is_real(self.momentum) or not 0 <= self.momentum < 1:
            fail("momentum", "in [0, 1)")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a number >= 0")
        if not is_real(self.gamma) or not 0 < self.gamma <= 1:
            fail("gamma", "in (0, 1]")
        if self.warmup_steps and self.schedule != "cosine":
            fail("warmup_steps", "0 unless schedule is 'cosine'")
        if not isinstance(self.augment, (bool, np.bool_)):
            fail("augment", "True or False")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {', '.join(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    model: object
    optimizer: object
    metrics: list  # one dict per epoch, see _epoch_metrics
    checkpoint: Path | None  # the last checkpoint written or resumed from, if any


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during train(): `checkpoint` is the last complete checkpoint of this run (None if none yet)
    and `epochs_done` the number of epochs it holds; `out_dir` is train()'s out_dir (None without one),
    which resuming needs."""

    def __init__(self, checkpoint: Path | None, epochs_done: int, out_dir: Path | None = None):
        super().__init__(checkpoint, epochs_done)
        self.checkpoint = checkpoint
        self.epochs_done = epochs_done
        self.out_dir = out_dir


# ---------------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, data, *, out_dir=None, resume: bool = False, progress: bool | None = None,
          log=print, eval_batch_size: int = 1000, distributed: bool = False) -> TrainResult:
    """Train config.model on `data`, evaluating on its test set after each epoch. data: a cyconv.data.MNIST
    of uint8 arrays, or an image folder's cyconv.data.ImageSplit (ImageFolder.split), for which the model is
    built with the data's channels, image size and number of classes (and must take them).

    With out_dir, a checkpoint (out_dir/checkpoint.npz) and the metrics so far (out_dir/metrics.json) are
    written after every epoch; resume=True continues the run from that checkpoint, which must come from
    the same config and data (number of training images; for an image folder, its FolderSpec but for
    the root, which may have moved). Temp files of those two that a run killed mid-write
    left in out_dir are removed first. progress: a tqdm bar on stderr per epoch (None: only when stderr
    is a terminal). log receives the one-line summaries.

    Returns the model, the optimizer and one metrics dict per epoch: epoch (from 1), train_loss and
    train_acc (mean over the epoch's batches, as the model was while it learned), test_acc, lr (of the
    epoch's last step), steps (completed in the run), epoch_time_s and images_per_s (training only),
    eval_time_s. Accuracies are fractions in [0, 1].

    distributed=True: data-parallel over the ranks of the MPI job this process belongs to (see the module
    docstring; one process without a job). Rank 0 alone logs, shows progress, and writes and resumes from
    out_dir; it broadcasts the initial or resumed state. Every rank returns the same model and metrics.
    Raises cyconv.distributed.SetupError on every rank, before training, if batch_size does not split
    evenly over the ranks or the ranks hold different data or settings.

    Raises TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C, FloatingPointError if the loss stops
    being finite.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train(): config must be a TrainConfig, got {type(config).__name__}")
    if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise ValueError(f"train(): eval_batch_size must be an int >= 1, got {eval_batch_size!r}")
    from .. import __version__  # here, not at the top: cyconv/__init__.py sets it after its imports

    root = True  # this process logs and writes: the only one, or rank 0 of a distributed run
    if distributed:
        root = _join_distributed_run(config)
        log, progress = (_flushing(log), progress) if root else (_quiet, False)
    train_x, train_y, test_x, test_y, spec = _prepare(data, config)
    n_train = len(train_y)
    steps_per_epoch = -(-n_train // config.batch_size)
    model = build_model_for(config.model, hidden=config.hidden, width_mult=config.width_mult, spec=spec,
                            rng=np.random.default_rng(config.seed))
    if distributed:
        dist.check_same("settings (TrainConfig, cyconv version)", json.dumps(config.to_dict(), sort_keys=True),
                        __version__)
        dist.check_same("data (training and test images and labels)", train_x, train_y, test_x, test_y)
    optimizer = _build_optimizer(config, model, distributed)

    info = {"cyconv_version": __version__, "num_threads": get_num_threads(), "n_train": n_train,
            "n_test": len(test_y)}
    if distributed:
        info["ranks"] = dist.world_size()

    checkpoint_path = metrics_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        if root:
            out_dir.mkdir(parents=True, exist_ok=True)
            checkpoint_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
            remove_stale_temp_files(out_dir, (CHECKPOINT_NAME, METRICS_NAME))  # of a run killed mid-write
    elif resume:
        raise ValueError("train(): resume=True needs the out_dir that holds the checkpoint")

    metrics: list[dict] = []
    start_epoch = 0
    saved = None  # the last complete checkpoint of this run
    saved_epochs = 0  # the epochs it holds; not len(metrics): a Ctrl-C can land inside save_checkpoint
    if resume:
        resumed = _resume(checkpoint_path, config, n_train, spec, model, optimizer) if root else None
        if distributed:  # rank 0 read the checkpoint: its weights, optimizer state and progress go to every rank
            dist.broadcast_parameters(model)
            dist.broadcast_state(optimizer)
            resumed = dist.broadcast_json(resumed)
        start_epoch, metrics = resumed
        saved, saved_epochs = checkpoint_path, start_epoch
        if start_epoch >= config.epochs:
            log(f"{checkpoint_path} already holds all {config.epochs} epochs; nothing to do")
            return TrainResult(model, optimizer, metrics, saved)

    workers = _plural(get_num_threads(), 'thread')
    if distributed:
        workers = f"{_plural(dist.world_size(), 'rank')} x {workers}"
    shape = "" if spec is None else f" of {'x'.join(map(str, train_x.shape[1:]))} in {len(spec.classes)} classes"
    log(f"training {config.model} on {n_train} images{shape} ({steps_per_epoch} steps/epoch, batch "
        f"{config.batch_size}), testing on {len(test_y)}; {workers}"
        + (f"; resuming after epoch {start_epoch}" if start_epoch else ""))
    if distributed and dist.world_size() > 1:  # launchers name a rank that died by its PID
        log("ranks: " + ", ".join(f"{r} = PID {pid} on {host}" for r, (host, pid) in enumerate(dist.processes())))
    schedule = lr_schedule(config, steps_per_epoch)
    try:
        for epoch in range(start_epoch, config.epochs):
            stats = train_epoch(model, optimizer, train_x, train_y, config, epoch, schedule, progress)
            stats.update(evaluate(model, test_x, test_y, eval_batch_size, sharded=distributed))
            metrics.append(stats)
            log(_epoch_line(stats, config.epochs))
            if checkpoint_path is not None:
                previous = _inode(checkpoint_path)
                try:
                    save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, model_name=config.model,
                                    epoch=epoch + 1, config=config.to_dict(), metrics=metrics, info=info,
                                    data=None if spec is None else spec.to_dict())
                except KeyboardInterrupt:
                    # atomic_write holds a Ctrl-C back until the new file is in place, complete (a new
                    # inode says so), or the write failed and the old one is untouched.
                    if _inode(checkpoint_path) != previous:
                        saved, saved_epochs = checkpoint_path, epoch + 1
                    raise
                saved, saved_epochs = checkpoint_path, epoch + 1
                _write_metrics(metrics_path, metrics)
            if distributed and out_dir is not None:
                # The others wait for rank 0's writes here, under a limit for writing, rather than in their
                # next allreduce, where a large checkpoint on a slow disk would count against its timeout.
                dist.barrier("waiting for rank 0 to write the checkpoint", dist.WRITE_TIMEOUT)
    except KeyboardInterrupt:
        # metrics already counts the epoch whose checkpoint was being written when Ctrl-C came, and the
        # file still holds the one before: report what the file holds (without out_dir, what was trained).
        raise TrainingInterrupted(saved, saved_epochs if checkpoint_path is not None else len(metrics),
                                  out_dir) from None
    return TrainResult(model, optimizer, metrics, saved)


def _build_optimizer(config: TrainConfig, model, distributed: bool):
    """config.optimizer over the model's parameters; in a distributed run its Distributed* twin, which
    averages the gradients over the ranks and starts from rank 0's weights."""
    hyperparameters = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if not distributed:
        return build_optimizer(config.optimizer, model.parameters(), **hyperparameters)
    return dist.build_optimizer(config.optimizer, model.parameters(), **hyperparameters)


def _join_distributed_run(config: TrainConfig) -> bool:
    """Join the MPI job (cyconv.distributed.init) and check that the batch splits; True on rank 0."""
    dist.init(required=True)
    ranks = dist.world_size()
    if config.batch_size % ranks:
        # Checked, not split unevenly: every step would then weigh the ranks' images differently from the
        # batch the user asked for. (The last batch of an epoch may still split unevenly; see train_epoch.)
        raise dist.SetupError(f"train(): batch_size {config.batch_size} (the global batch) does not split "
                              f"evenly over {ranks} ranks; use a multiple of {ranks}")
    return dist.rank() == 0


def _quiet(*args, **kwargs):
    pass


def _flushing(log):
    # A failure in another rank ends this process (MPI_Abort) without flushing its buffers: a log going to a
    # file or pipe would lose its last lines, the ones that say what happened, unless each is flushed.
    def flushed(*args, **kwargs):
        log(*args, **kwargs)
        sys.stdout.flush()
        sys.stderr.flush()
    return flushed


def _prepare(data, config):
    """Normalise each image set once; batches are then rows of these arrays. Returns them and the data's
    FolderSpec (None for MNIST)."""
    spec = data.spec if isinstance(data, ImageSplit) else None
    try:
        train_images, train_labels, test_images, test_labels = data
    except (TypeError, ValueError):
        raise TypeError("train(): data must be a cyconv.data.MNIST (train_images, train_labels, "
                        "test_images, test_labels) or an ImageSplit (ImageFolder.split())") from None
    if spec is None and getattr(train_images, "ndim", 3) != 3:
        raise TypeError("train(): (N, C, H, W) images come as an ImageSplit (ImageFolder.split()), which "
                        "carries their classes and normalisation; MNIST's are (N, 28, 28)")
    if spec is None and config.augment:
        raise ValueError("train(): augment applies to image folders (an ImageSplit), not to MNIST")
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise ValueError("train(): data has different numbers of images and labels")
    if config.limit is not None:
        if config.limit > len(train_labels):
            raise ValueError(f"train(): limit {config.limit} is more than the {len(train_labels)} training images")
        train_images, train_labels = train_images[:config.limit], train_labels[:config.limit]
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise ValueError("train(): data needs at least one training and one test image")
    if spec is None:
        prepare = to_float32
    else:
        prepare = lambda images: normalize(images, spec.mean, spec.std)  # noqa: E731
    return (prepare(train_images), np.asarray(train_labels, np.int64),
            prepare(test_images), np.asarray(test_labels, np.int64), spec)


def _resume(path: Path, config: TrainConfig, n_train: int, spec: FolderSpec | None, model, optimizer):
    """Load the run's checkpoint into model and optimizer; return (epochs done, metrics so far)."""
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    ckpt = load_checkpoint(path)
    # Through TrainConfig, so that a field added since the checkpoint was written counts as its default.
    saved = TrainConfig.from_dict(ckpt.config).to_dict()
    differ = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in config.to_dict().items() if saved.get(k) != v]
    if differ:
        raise ValueError(f"cannot resume {path}: it was trained with other settings ({'; '.join(differ)}); "
                         "use the same settings or a new output directory")
    if (ckpt.data is None) != (spec is None):
        trained, given = ("MNIST", "an image folder") if ckpt.data is None else ("an image folder", "MNIST")
        raise ValueError(f"cannot resume {path}: it was trained on {trained}, this run has {given}")
    if spec is not None:
        # Not the root: a folder that moved is the same data.
        was, now = ckpt.data.to_dict(), spec.to_dict()
        differ = [f"{k} {was[k]!r} -> {now[k]!r}" for k in now if k != "root" and was[k] != now[k]]
        if differ:
            raise ValueError(f"cannot resume {path}: it was trained on other data ({'; '.join(differ)})")
    if ckpt.info.get("n_train") != n_train:
        raise ValueError(f"cannot resume {path}: it was trained on {ckpt.info.get('n_train')} images, "
                         f"this run has {n_train}")
    restore(model, ckpt.model_state, path, f"saved weights do not fit a {config.model}")
    restore(optimizer, ckpt.optimizer_state, path, "saved optimizer state does not fit")
    return ckpt.epoch, list(ckpt.metrics)


def lr_schedule(config: TrainConfig, steps_per_epoch: int):
    """The recipe's learning rate as a function: step (0-based, over the whole run) -> lr."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return lambda step: cosine_lr(step, total, config.lr, warmup_steps=config.warmup_steps)
    if config.schedule == "step":
        return lambda step: step_lr(step, config.step_size * steps_per_epoch, config.gamma, config.lr)
    return lambda step: config.lr


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    # [seed, 1, epoch] is never the init seed [seed] (SeedSequence pads short entropy with zeros), and
    # depends on nothing but its arguments, which is what makes resuming exact.
    return np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(n)


def train_epoch(model, optimizer, x, y, config: TrainConfig, epoch: int, schedule, progress=None) -> dict:
    """One epoch of SGD over (x, y) in the recipe's shuffled order (which depends on config.seed and epoch
    alone); schedule from lr_schedule; progress: a bar on stderr (None: when stderr is a terminal).
    Returns the epoch's metrics (train loss and accuracy, time, images/s, last lr, steps so far).

    With a cyconv.distributed.DistributedOptimizer (DistributedSGD), each rank trains on its part
    (distributed.shard) of every batch of config.batch_size, and the loss and accuracy returned are over all
    ranks' images."""
    n, bs = len(y), config.batch_size
    steps = -(-n // bs)
    order = _epoch_order(config.seed, epoch, n)
    rng = np.random.default_rng([config.seed, _AUGMENT_STREAM, epoch]) if config.augment else None
    sharded = isinstance(optimizer, dist.DistributedOptimizer)
    ranks = dist.world_size() if sharded else 1
    loss_sum = 0.0
    correct = seen = 0
    model.train()
    bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{config.epochs}", unit="img", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress, leave=False,
               dynamic_ncols=True)
    started = time.perf_counter()
    with bar:
        for i in range(steps):
            batch = order[i * bs:(i + 1) * bs]
            part = dist.shard(len(batch)) if sharded else slice(None)
            index = batch[part]
            if rng is None:
                xb, yb = x[index], y[index]
            else:  # the whole batch's draws on every rank, so N ranks see what one process would
                xb, yb = augment(x[batch], rng)[part], y[index]
            optimizer.lr = lr = schedule(epoch * steps + i)
            if len(index):
                logits = model(xb)
                loss, grad = F.softmax_cross_entropy(logits, yb)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"the loss became {loss} at epoch {epoch + 1}, step {i + 1} "
                                             f"(lr {lr:.4g}); try a lower lr")
                if len(index) * ranks != len(batch):
                    # A last batch that splits unevenly: the mean over ranks must still be the mean over
                    # the batch, so each rank's mean gradient counts by its share of the images.
                    grad *= len(index) * ranks / len(batch)
                optimizer.zero_grad()
                model.backward(grad)
                loss_sum += loss * len(index)
                correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
                seen += len(index)
            else:  # no image of a last batch smaller than the ranks: this rank's gradient is zero
                optimizer.zero_grad()
            optimizer.step()

            if seen:  # this rank's images so far: the bar is an estimate on its way
                bar.set_postfix_str(f"loss {loss_sum / seen:.4f}, acc {100 * correct / seen:.2f}%", refresh=False)
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    if sharded:
        loss_sum, correct = (float(v) for v in dist.sum_over_ranks([loss_sum, correct]))
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / n,
        "train_acc": correct / n,
        "epoch_time_s": elapsed,
        "images_per_s": n / elapsed if elapsed > 0 else float("inf"),
        "lr": float(lr),  # of the epoch's last step
        "steps": (epoch + 1) * steps,
    }


def augment(x: np.ndarray, rng: np.random.Generator, padding: int | None = None) -> np.ndarray:
    """A randomly flipped and cropped copy of a batch, as torchvision's RandomHorizontalFlip() followed by
    RandomCrop(size, padding): each image is mirrored left-right with probability 1/2, padded with
    `padding` zeros on every side (after normalisation, zero is the training set's mean colour) and cut
    back to its size at an offset drawn uniformly from the (2 padding + 1)^2 possible ones. One call draws
    everything for the batch from `rng` and moves the pixels in two vectorised copies.

    padding defaults to an eighth of the smaller side (8 for 64x64 images; 4 for 32x32, as the CIFAR
    recipes use), at least 1.

    Shape:
        x (N, C, H, W) -> (N, C, H, W), same dtype, C-contiguous
    """
    n, c, h, w = x.shape
    p = max(1, min(h, w) // 8) if padding is None else int(padding)
    if p < 0:
        raise ValueError(f"augment(): padding must be >= 0, got {padding}")
    flip = rng.random(n) < 0.5
    dy, dx = rng.integers(0, 2 * p + 1, size=(2, n))
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), x.dtype)
    padded[:, :, p:p + h, p:p + w] = x
    padded[flip] = padded[flip, :, :, ::-1]  # the padding is symmetric, so flipping it first changes nothing
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W)
    return np.ascontiguousarray(windows[np.arange(n), :, dy, dx])


def evaluate(model, x, y, batch_size=1000, *, sharded=False) -> dict:
    """Test accuracy of model on (x, y), in eval mode (left in train mode after), and the time it took.
    sharded=True (every rank of a distributed run, with the same model): each rank predicts its part
    (distributed.shard) and every rank gets the accuracy over all of (x, y)."""
    started = time.perf_counter()
    model.eval()
    part = dist.shard(len(y)) if sharded else slice(None)
    x, y_part = x[part], y[part]
    correct = int(np.count_nonzero(predict_logits(model, x, batch_size).argmax(axis=1) == y_part)) if len(x) else 0
    if sharded:
        correct = int(dist.sum_over_ranks([correct])[0])
    model.train()
    return {"test_acc": correct / len(y), "eval_time_s": time.perf_counter() - started}


def _epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.4f}  "
            f"train acc {100 * m['train_acc']:.2f}%  test acc {100 * m['test_acc']:.2f}%  "
            f"time {m['epoch_time_s']:.1f} s  {m['images_per_s']:.0f} img/s")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _write_metrics(path: Path, metrics: list) -> None:
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


# ---------------------------------------------------------------------------------------------------------
# Evaluation helpers


def predict_logits(model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """model(x) in batches of batch_size, concatenated: (N, classes). Leaves the model's mode alone."""
    if len(x) == 0:
        raise ValueError("predict_logits(): x is empty")
    return np.concatenate([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """counts[true, predicted], int64 (num_classes, num_classes).

    Raises ValueError if a label or prediction is not a class in [0, num_classes), TypeError if they are
    not integers.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"confusion_matrix(): num_classes must be an int >= 1, got {num_classes!r}")
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"confusion_matrix(): labels {labels.shape} and predictions {predictions.shape} "
                         "must be 1-D of the same length")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.dtype.kind not in "iu":
            raise TypeError(f"confusion_matrix(): {name} must be integers, got {values.dtype}")
        # Checked, not left to indexing: NumPy would count -1 as the last class.
        bad = np.unique(values[(values < 0) | (values >= num_classes)])
        if bad.size:
            shown = ", ".join(map(str, bad[:10].tolist())) + (", ..." if bad.size > 10 else "")
            raise ValueError(f"confusion_matrix(): {name} must be in [0, {num_classes}), got [{shown}]")
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return counts
