"""`cyconv train`'s LeNet-5 run, done by PyTorch eager: the reference for the epoch-time comparison.

    python benchmarks/torch_train_mnist.py [--threads N] [--epochs E] [--limit N] [--data DIR]
    cyconv train --threads N --no-progress --out /tmp/run     # the cyconv side, same recipe

Everything a run's result depends on is cyconv's, so the two runs differ only in the engine:
- the data: MNIST from cyconv.data.ensure_mnist (never downloaded here), normalised by to_float32;
- the recipe: cyconv.train.TrainConfig()'s defaults (epochs, batch size, lr, momentum, weight decay,
  cosine schedule over all steps of the run, seed), the same per-epoch shuffle (train._epoch_order),
  the last smaller batch kept;
- the initial weights: cyconv's lenet5(rng=default_rng(seed)), copied into the torch.nn.Sequential
  that bench_e2e.py builds from cyconv's layer list;
- the loop: gather the batch by fancy indexing, forward, cross-entropy, zero_grad, backward, step, and
  the same running loss/accuracy bookkeeping; then the test set in batches of 1000 in eval mode
  (torch: under no_grad).

Epoch lines use cyconv's format (train._epoch_line), followed by the evaluation time: "time" and
"img/s" are training only, as in `cyconv train`. The per-step loss.item() and accuracy count are kept
because cyconv's loop does the same work (its loss is a Python float, checked to be finite).

cyconv is imported for the data, config and initial weights only; none of its compiled kernels run
here, so only torch's thread pool is busy.
"""

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_e2e  # noqa: E402  (describe, torch_model: the torch twin of cyconv's network)

import cyconv  # noqa: E402
from cyconv import data, models, optim  # noqa: E402
from cyconv import train as cytrain  # noqa: E402


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None):
    d = cytrain.TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="torch.set_num_threads(N) (default: torch's default, all cores)")
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="E", help=f"default: {d.epochs}")
    p.add_argument("--limit", type=int, metavar="N",
                   help="train on the first N training images only (as `cyconv train --limit`)")
    p.add_argument("--seed", type=int, default=d.seed, metavar="S", help=f"default: {d.seed}")
    p.add_argument("--data", metavar="DIR", help="MNIST directory (default: $CYCONV_DATA, else "
                   "~/.cache/cyconv/mnist)")
    p.add_argument("--eval-batch-size", type=int, default=1000, metavar="N",
                   help="test-set batch size (default: 1000, as cyconv's train())")
    return p.parse_args(argv)


def config_from(args):
    """cyconv's default recipe with the command line's epochs, limit and seed (validated by TrainConfig)."""
    return cytrain.TrainConfig(epochs=args.epochs, limit=args.limit, seed=args.seed)


def load_data(args, limit):
    mnist = data.ensure_mnist(data.resolve_data_dir(args.data), download=False)
    train_images, train_labels = mnist.train_images, mnist.train_labels
    if limit is not None:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    return (data.to_float32(train_images), np.asarray(train_labels, np.int64),
            data.to_float32(mnist.test_images), np.asarray(mnist.test_labels, np.int64))


def build_model(config):
    """torch LeNet-5 holding exactly the initial weights `cyconv train` starts from."""
    if config.model != "lenet5":
        raise SystemExit(f"torch_train_mnist: only lenet5 is mirrored, TrainConfig says {config.model!r}")
    cy_model = models.lenet5(rng=np.random.default_rng(config.seed))
    model = bench_e2e.torch_model(torch, bench_e2e.describe(cy_model))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in cy_model.state_dict().items()})
    return model


def schedule(config, steps_per_epoch):
    """step -> lr; the cosine schedule over the whole run, as cyconv's train() (other schedules: no)."""
    if config.schedule != "cosine":
        raise SystemExit(f"torch_train_mnist: only the cosine schedule is mirrored, got {config.schedule!r}")
    total = config.epochs * steps_per_epoch
    return lambda step: optim.cosine_lr(step, total, config.lr, warmup_steps=config.warmup_steps)


def train_epoch(model, opt, x, y, config, epoch, lr_at):
    n, bs = len(y), config.batch_size
    steps = -(-n // bs)
    order = cytrain._epoch_order(config.seed, epoch, n)
    loss_sum, correct = 0.0, 0
    model.train()
    started = time.perf_counter()
    for i in range(steps):
        index = order[i * bs:(i + 1) * bs]
        xb, yb = torch.from_numpy(x[index]), torch.from_numpy(y[index])
        lr = lr_at(epoch * steps + i)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss became {loss_value} at epoch {epoch + 1}, step {i + 1}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += loss_value * len(index)
        correct += int((logits.argmax(dim=1) == yb).sum())
    elapsed = time.perf_counter() - started
    return {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
            "epoch_time_s": elapsed, "images_per_s": n / elapsed, "lr": lr, "steps": (epoch + 1) * steps}


def evaluate(model, x, y, batch_size):
    started = time.perf_counter()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + batch_size]))
                            for i in range(0, len(x), batch_size)])
    model.train()
    accuracy = float((logits.argmax(dim=1).numpy() == y).mean())
    return {"test_acc": accuracy, "eval_time_s": time.perf_counter() - started}


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = config_from(args)
    train_x, train_y, test_x, test_y = load_data(args, config.limit)
    model = build_model(config)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    n = len(train_y)
    steps_per_epoch = -(-n // config.batch_size)
    lr_at = schedule(config, steps_per_epoch)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), cyconv "
          f"{cyconv.__version__} recipe, Python {platform.python_version()}; "
          f"`{' '.join(['python'] + sys.argv)}`")
    # cyconv train's first line, word for word, then which engine ran it
    print(f"training {config.model} on {n} images ({steps_per_epoch} steps/epoch, batch "
          f"{config.batch_size}), testing on {len(test_y)}; {threads} thread{'s' if threads != 1 else ''} "
          "[torch eager]")
    for epoch in range(config.epochs):
        stats = train_epoch(model, opt, train_x, train_y, config, epoch, lr_at)
        stats.update(evaluate(model, test_x, test_y, args.eval_batch_size))
        print(f"{cytrain._epoch_line(stats, config.epochs)}  eval {stats['eval_time_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
