"""What tests/test_distributed.py runs under `mpiexec -n N python tests/distributed_worker.py SCENARIO ...`
(and, for reference runs, as one plain process). Not a test module: pytest does not collect it.

    cli ARGS...      `cyconv train ARGS` (cyconv.cli.main), with the faults and differences below injected
    loop             a training loop written against the library, as README shows it: DistributedSGD and
                     distributed.shard; every rank saves its final weights
    api              the collective functions of cyconv.distributed, checked against what every rank knows
    first-on-node    distributed.first_on_each_node with a load that fails on the node's first rank: every
                     rank writes down the exception it got

A failed check raises, so the rank's exit status and stderr say what went wrong.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import cyconv
import cyconv.functional
from cyconv import _files, distributed, models
from cyconv.data import MNIST, load_mnist, to_float32

# The recipe the library-loop runs follow (TrainConfig's defaults).
LR, MOMENTUM, WEIGHT_DECAY = 0.04, 0.9, 5e-4
ADAM_LR = 1e-3


def save_weights(directory, model, name=None):
    """model's state as DIR/rank<R>.npz (or DIR/<name>.npz)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    np.savez(Path(directory) / f"{name or f'rank{distributed.rank()}'}.npz", **model.state_dict())


# ---------------------------------------------------------------------------------------------------------
# cli: `cyconv train` with faults


def inject_fault(kind, step, stamp):
    """On this rank, at its step-th training step (its step-th loss), fail in the way `kind` says, after
    writing time.time() to the file stamp."""
    original = cyconv.functional.softmax_cross_entropy
    calls = 0

    def faulty(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == step:
            Path(stamp).write_text(repr(time.time()))
            if kind == "value-error":  # an error `cyconv train` reports in one line
                raise ValueError(f"injected fault at step {step}")
            if kind == "runtime-error":  # an error nothing catches: sys.excepthook's
                raise RuntimeError(f"injected fault at step {step}")
            if kind == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "sigint":  # Ctrl-C on this rank alone (a terminal of its own, or `kill -INT PID`)
                os.kill(os.getpid(), signal.SIGINT)
            if kind == "sigstop":  # hangs: only the other ranks' timeout can end the job
                os.kill(os.getpid(), signal.SIGSTOP)
            if kind == "exit":  # leaves without ending the job, as a careless script would (MPI_Finalize and all)
                sys.exit(0)
        return original(*args, **kwargs)

    cyconv.functional.softmax_cross_entropy = faulty


def record_writes(directory):
    """Log every atomic_write of this rank (each point it passes) to DIR/writes-rank<R>.txt."""
    log = Path(directory) / f"writes-rank{distributed.rank()}.txt"
    log.write_text("")

    def pause(point, path):
        with open(log, "a") as f:
            f.write(f"{point} {path}\n")
    _files._test_pause = pause


def kill_while_writing_checkpoint(nth):
    """SIGKILL this rank when its nth checkpoint is written to its temp file but not yet renamed."""
    seen = 0
    previous = _files._test_pause

    def pause(point, path):
        nonlocal seen
        if previous is not None:
            previous(point, path)
        if point == "written" and Path(path).name == "checkpoint.npz":
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    _files._test_pause = pause


def slow_checkpoint_write(seconds):
    """Rank 0's first checkpoint write takes `seconds` longer (a large model, a slow disk)."""
    previous = _files._test_pause
    slowed = False

    def pause(point, path):
        nonlocal slowed
        if previous is not None:
            previous(point, path)
        if point == "written" and Path(path).name == "checkpoint.npz" and not slowed:
            slowed = True
            time.sleep(seconds)
    _files._test_pause = pause


def run_cli(args, argv):
    from cyconv import cli, train as train_module

    distributed.init()
    here = distributed.rank()
    if args.log_writes:
        record_writes(args.log_writes)
    if args.kill_writing is not None and here == 0:
        kill_while_writing_checkpoint(args.kill_writing)
    if args.slow_write is not None and here == 0:
        slow_checkpoint_write(args.slow_write)
    if args.fault is not None and here == args.fault_rank:
        inject_fault(args.fault, args.fault_step, args.fault_stamp)
    if here == args.differ_rank:
        if args.differ == "data":  # one pixel of one training image
            load = cli._load_mnist

            def load_other(cli_args):
                mnist = load(cli_args)
                images = mnist.train_images.copy()
                images[7, 14, 14] ^= 0xFF
                return MNIST(images, *mnist[1:])
            cli._load_mnist = load_other
        elif args.differ == "model":  # same settings, another network (11 classes)
            train_module.build_model_for = lambda name, **kwargs: models.lenet5(num_classes=11, rng=kwargs["rng"])
        elif args.differ == "settings":
            argv = [*argv, "--lr", "0.05"]
    if args.dump:
        train = train_module.train

        def train_and_dump(*a, **k):
            result = train(*a, **k)
            save_weights(args.dump, result.model)
            return result
        cli.train = train_and_dump
    return cli.main(argv)


# ---------------------------------------------------------------------------------------------------------
# loop: the library, as README shows it


def run_loop(args):
    dtype = np.dtype(args.dtype)
    mnist = load_mnist(args.data)
    x = to_float32(mnist.train_images[:args.limit]).astype(dtype)
    y = mnist.train_labels[:args.limit].astype(np.int64)
    distributed.init()
    cyconv.set_num_threads(distributed.threads_per_rank())
    # Each rank starts from other weights: DistributedSGD must give every rank rank 0's (seed 0's).
    model = models.lenet5(dtype=dtype, rng=np.random.default_rng(distributed.rank()))
    if args.overlap:  # backward in two parts, the classifier's allreduce started before the features' backward
        features, classifier = model[:7], model[7:]
        buckets = [classifier.parameters(), features.parameters()]
    else:
        buckets = None
    lr = LR if args.optimizer == "sgd" else ADAM_LR
    opt = distributed.build_optimizer(args.optimizer, model.parameters(), lr=lr, momentum=MOMENTUM,
                                      weight_decay=WEIGHT_DECAY, buckets=buckets)
    order = np.random.default_rng(1).permutation(len(y))
    for step in range(args.steps):
        index = order[step * args.batch_size:(step + 1) * args.batch_size]
        index = index[distributed.shard(len(index))]
        logits = classifier(features(x[index])) if args.overlap else model(x[index])
        loss, grad = cyconv.functional.softmax_cross_entropy(logits, y[index])
        opt.zero_grad()
        if args.overlap:
            grad = classifier.backward(grad, input_grad=True)
            opt.gradients_ready(classifier.parameters())
            if step == args.fail_step:  # every rank gives up this step, its allreduce in flight
                try:
                    raise RuntimeError("injected between gradients_ready and step")
                except RuntimeError:
                    # What a loop may do on giving up a step: count it over the ranks. This collective also
                    # moves MPI's progress engine, which completes the allreduce in flight.
                    distributed.sum_over_ranks([1])
                    continue
            features.backward(grad)
        else:
            model.backward(grad)
        opt.step()
    save_weights(args.out, model, args.name)
    return 0


# ---------------------------------------------------------------------------------------------------------
# api: the collectives, each rank checking what it gets against what it can compute itself


def run_api(args):
    size = distributed.init()
    me = distributed.rank()
    assert size == args.expect_size, (size, args.expect_size)
    assert distributed.world_size() == size and distributed.init() == size  # idempotent

    # shard: this rank's part, the same as computing every part
    parts = [distributed.shard(10, rank=r, size=size) for r in range(size)]
    assert distributed.shard(10) == parts[me]

    # broadcast_parameters: rank 0's values everywhere, in place
    model = models.lenet5(rng=np.random.default_rng(me))
    arrays = [p.data for p in model.parameters()]
    distributed.broadcast_parameters(model)
    want = models.lenet5(rng=np.random.default_rng(0)).state_dict()
    for (name, value), array in zip(model.state_dict().items(), arrays):
        np.testing.assert_array_equal(value, want[name], err_msg=name)
    assert all(p.data is a for p, a in zip(model.parameters(), arrays)), "parameters were replaced, not filled"

    # allreduce_gradients: the mean over ranks, in place; a lazily cleared gradient counts as zeros
    params = model.parameters()
    for i, p in enumerate(params):
        p.grad[...] = (me + 1) * (i + 1)
    params[0].zero_grad()
    grads = [p.grad for p in params[1:]]
    distributed.allreduce_gradients(model)
    mean_of_ranks = sum(r + 1 for r in range(size)) / size
    np.testing.assert_array_equal(params[0].grad, 0)
    for i, (p, g) in enumerate(zip(params[1:], grads), start=1):
        assert p.grad is g, "allreduce_gradients replaced a gradient array"
        np.testing.assert_allclose(p.grad, mean_of_ranks * (i + 1), rtol=1e-6)

    # broadcast_state: an optimizer's momentum and step count, from rank 0
    opt = cyconv.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(me + 1):  # a different number of steps on every rank
        opt.step()
    distributed.broadcast_state(opt)
    assert opt.step_count == 1, opt.step_count

    # broadcast_json and sum_over_ranks
    assert distributed.broadcast_json({"epoch": 3, "metrics": [1.5]} if me == 0 else "ignored") == \
        {"epoch": 3, "metrics": [1.5]}
    np.testing.assert_array_equal(distributed.sum_over_ranks([1, me]), [size, sum(range(size))])

    # check_same: the same values pass; a rank that differs is named, on every rank
    distributed.check_same("things", np.arange(5), "text")
    if size > 1:
        try:
            distributed.check_same("things", np.arange(5) + (me == size - 1), "text")
        except distributed.SetupError as e:
            assert f"rank {size - 1} differs from rank 0" in str(e), str(e)
        else:
            raise AssertionError("check_same() let a different rank through")

    print(f"api ok on rank {me} of {size}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# first-on-node: the first rank's load fails


def run_first_on_node(args):
    distributed.init()
    started = time.monotonic()

    def load():
        raise ValueError("injected load failure")
    try:
        distributed.first_on_each_node(load)
    except Exception as e:
        Path(args.out, f"rank{distributed.rank()}.txt").write_text(
            f"{type(e).__name__}: {e}\n{time.monotonic() - started:.1f} s")
    return 0


def main(argv):
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="scenario", required=True)
    p = commands.add_parser("cli")
    p.add_argument("--fault", choices=["value-error", "runtime-error", "sigkill", "sigint", "sigstop", "exit"])
    p.add_argument("--fault-rank", type=int, default=1)
    p.add_argument("--fault-step", type=int, default=3)
    p.add_argument("--fault-stamp", default=os.devnull, metavar="FILE", help="gets time.time() at the fault")
    p.add_argument("--differ", choices=["data", "model", "settings"])
    p.add_argument("--differ-rank", type=int, default=1)
    p.add_argument("--kill-writing", type=int, metavar="NTH", help="SIGKILL rank 0 inside its NTH checkpoint write")
    p.add_argument("--log-writes", metavar="DIR")
    p.add_argument("--slow-write", type=float, metavar="SECONDS", help="rank 0's first checkpoint write takes longer")
    p.add_argument("--dump", metavar="DIR", help="every rank saves its final weights there")
    p = commands.add_parser("loop")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--limit", type=int, default=1280)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--overlap", action="store_true")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    p.add_argument("--fail-step", type=int, help="with --overlap: an exception after gradients_ready, caught")
    p = commands.add_parser("first-on-node")
    p.add_argument("--out", required=True, help="every rank writes the exception it got to DIR/rank<R>.txt")
    p = commands.add_parser("api")
    p.add_argument("--expect-size", type=int, required=True)
    # Everything after "--" is the cyconv command line of the cli scenario.
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.scenario == "cli":
        return run_cli(args, rest)
    if args.scenario == "first-on-node":
        return run_first_on_node(args)
    return run_loop(args) if args.scenario == "loop" else run_api(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
