"""Data-parallel training over MPI: N processes (ranks), each holding the whole model and training on its
part of every global batch. Before each optimizer step the gradients are averaged over the ranks, so every
rank applies the same update, and N ranks with a global batch of B images follow the trajectory of one
process with batch B, to float rounding (a rank sums its convolution gradients over its own images only,
so the additions run in another order).

    from cyconv import distributed                        # run with: mpiexec -n 4 python train.py
    opt = distributed.DistributedSGD(model.parameters(), lr=0.04, momentum=0.9)   # was optim.SGD(...)
    for index in batches:                                   # the same global batches on every rank
        index = index[distributed.shard(len(index))]        # this rank's part of the batch
        ...                                                 # forward, zero_grad, backward, step: as before

DistributedSGD joins the MPI job (`init()`), refuses ranks that built different models, copies rank 0's
weights to every rank (`broadcast_parameters`), and its `step()` averages the gradients over the ranks
before updating. What travels per step: the gradients, one contiguous buffer per dtype (DistributedSGD keeps
every `Parameter.grad` as a slice of it, so nothing is copied), summed in place with the buffer method
Iallreduce, never as pickled objects; for LeNet-5, 1,256,080 floats (5 MB). `cyconv train --distributed`
is built on these (cyconv.train).

Without an MPI launcher, or without mpi4py, the world is this process alone (`world_size() == 1`) and all
of this does nothing. mpi4py (`pip install "cyconv[mpi]"`: mpi4py and MPICH) is imported here and nowhere
else in cyconv.

A failure in one rank ends every rank, rather than leaving the others waiting for it forever (MPICH's
mpiexec ends them when a rank is killed by a signal, but not when one exits with an error):
  - an exception that reaches sys.excepthook is printed with the rank's number, then MPI_Abort ends the job;
    `cyconv train` ends its one-line errors the same way (`abort`);
  - every collective call here waits at most `timeout` seconds (CYCONV_MPI_TIMEOUT, default 60) for the other
    ranks, then says which call it was and ends the job: a rank that hangs, or exits without aborting, cannot
    hang the others. The wait polls, so a Ctrl-C still gets through. Two waits may be longer: for a node's
    first rank loading the data (`first_on_each_node`; a failed load fails the node's other ranks at once)
    and for rank 0 writing a checkpoint (`barrier`, as `cyconv train` calls it), 30 minutes each;
  - ranks that disagree on what they train (model, data, settings) are found before training by comparing
    checksums (`check_same`) and refused with a SetupError, raised on every rank alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..layers.nn import Module, Parameter
from . import optim
from .optim import SGD, Adam, AdamW

__all__ = [
    "INSTALL_HINT",
    "SetupError",
    "RankFailed",
    "init",
    "is_initialized",
    "rank",
    "world_size",
    "shard",
    "broadcast_parameters",
    "broadcast_state",
    "broadcast_json",
    "allreduce_gradients",
    "sum_over_ranks",
    "check_same",
    "DistributedOptimizer",
    "DistributedSGD",
    "DistributedAdam",
    "DistributedAdamW",
    "build_optimizer",
    "threads_per_rank",
    "first_on_each_node",
    "barrier",
    "processes",
    "rank_prefix",
    "abort",
]

INSTALL_HINT = 'pip install "cyconv[mpi]"'
ENV_TIMEOUT = "CYCONV_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds; far above any wait of a healthy run (rank 0 writing a checkpoint)
SPIN_SECONDS = 0.05  # a collective's wait polls without pause this long (see _wait)
ABORT_GRACE = 0.5  # seconds between a rank's last words and MPI_Abort (see abort())
# How long the other ranks of a node wait while the first one loads the data, which may mean downloading it.
FIRST_ON_NODE_TIMEOUT = 30 * 60.0
# How long the other ranks wait while rank 0 writes a checkpoint (a large model, a slow shared disk).
WRITE_TIMEOUT = 30 * 60.0
# What MPI launchers set in every process they start: how a process knows it is one of several even when
# mpi4py cannot be imported (MPICH's and Intel MPI's hydra: PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE).
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_HOST_BYTES = 64  # host names are exchanged as fixed-size byte buffers


class SetupError(ValueError):
    """A distributed run cannot start as launched: the ranks disagree on the model, the data or the
    settings, or a batch does not split over the ranks. Raised alike on every rank before training, so it
    needs reporting once (`cyconv train` prints it from rank 0 only)."""


class RankFailed(RuntimeError):
    """Another rank failed at a point this one waits for it (the first rank of a node loading the data):
    raised at once on the waiting ranks, with that rank's error, instead of waiting out a timeout."""


@dataclass
class _World:
    MPI: object = None    # the mpi4py.MPI module; None in a world of one process without mpi4py
    comm: object = None   # a duplicate of COMM_WORLD, so these messages never meet the program's own
    local: object = None  # the ranks on this node (a shared-memory communicator)
    rank: int = 0
    size: int = 1
    timeout: float = DEFAULT_TIMEOUT
    processes: list = field(default_factory=list)  # (host, pid) of every rank, in rank order


_world: _World | None = None


# ---------------------------------------------------------------------------------------------------------
# Joining the job


def init(*, required: bool = False, timeout: float | None = None) -> int:
    """Join the MPI job this process was launched in (`mpiexec -n N ...`); return the number of ranks.

    Idempotent: after the first call, later ones return at once and their arguments are ignored.
    Without an MPI launcher the world is this process alone. So it is without mpi4py, unless
    required=True (as `cyconv train --distributed`), or the environment shows a launch of several
    processes (N copies training alone would each write the same files): then ImportError saying what to
    install. timeout: seconds a collective call waits for the other ranks before ending the job (default
    $CYCONV_MPI_TIMEOUT, else 60).
    """
    global _world
    if _world is not None:
        return _world.size
    timeout = _timeout(timeout)
    MPI = _import_mpi(required)
    if MPI is None:
        _world = _World(timeout=timeout, processes=[(socket.gethostname(), os.getpid())])
        return 1
    world = _World(MPI, MPI.COMM_WORLD, None, MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size(), timeout)
    _world = world
    if world.size > 1:
        sys.excepthook = _abort_on_uncaught_exception(sys.excepthook)
        # A guarded barrier first: Dup and Split_type block with no timeout, and must not wait on a rank
        # that never got here.
        _wait([MPI.COMM_WORLD.Ibarrier()], "starting up (every rank calling distributed.init)")
    world.comm = MPI.COMM_WORLD.Dup()
    world.local = world.comm.Split_type(MPI.COMM_TYPE_SHARED)
    world.processes = _exchange_processes(world)
    return world.size


def _timeout(timeout):
    source = "init(): timeout"
    if timeout is None:
        text = os.environ.get(ENV_TIMEOUT, "").strip()
        if not text:
            return DEFAULT_TIMEOUT
        source = f"${ENV_TIMEOUT}"
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"{source} must be a number of seconds > 0, got {text!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"{source} must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _import_mpi(required):
    try:
        from mpi4py import MPI
    except ImportError as e:  # not installed, or the MPI library it was built for cannot be loaded
        launched = [f"{v}={os.environ[v]}" for v in _LAUNCHER_SIZE_VARIABLES
                    if os.environ.get(v, "1").strip() not in ("", "0", "1")]
        if required or launched:
            why = f"this process was launched as one of several ({launched[0]}), but " if launched else ""
            raise ImportError(f"{why}distributed training needs mpi4py and an MPI library: {INSTALL_HINT} "
                              f"({e})") from None
        return None
    return MPI


def _exchange_processes(world):
    mine = np.zeros(_HOST_BYTES + 8, np.uint8)
    host = world.MPI.Get_processor_name().encode()[:_HOST_BYTES]
    mine[:len(host)] = np.frombuffer(host, np.uint8)
    mine[_HOST_BYTES:] = np.frombuffer(np.int64(os.getpid()).tobytes(), np.uint8)
    every = np.empty((world.size, mine.size), np.uint8)
    _wait([world.comm.Iallgather(mine, every)], "exchanging host names and PIDs")
    return [(bytes(row[:_HOST_BYTES]).rstrip(b"\0").decode(errors="replace"),
             int(np.frombuffer(row[_HOST_BYTES:].tobytes(), np.int64)[0])) for row in every]


def _initialized() -> _World:
    if _world is None:
        init()
    return _world


def is_initialized() -> bool:
    """Whether init() has run (it runs implicitly on the first call that needs the world)."""
    return _world is not None


def rank() -> int:
    """This process's rank, 0 to world_size() - 1 (calls init() if need be)."""
    return _initialized().rank


def world_size() -> int:
    """The number of ranks in the job, 1 without one (calls init() if need be)."""
    return _initialized().size


def processes() -> list:
    """[(host, PID)] of every rank, in rank order: launchers name a dead process by its PID."""
    return list(_initialized().processes)


def rank_prefix() -> str:
    """'rank R of N: ' in a job of several ranks, else '': what messages about one rank start with."""
    if _world is None or _world.size == 1:
        return ""
    return f"rank {_world.rank} of {_world.size}: "


# ---------------------------------------------------------------------------------------------------------
# Ending the job


def abort(message: str | None = None, status: int = 1):
    """End every rank of the job now with exit status `status`, after printing "cyconv: error: rank R of
    N: message" to stderr: a rank that fails alone must not simply exit, since the others would wait for
    it in their next collective call. With one process, raises SystemExit(status)."""
    if message is not None:
        print(f"cyconv: error: {rank_prefix()}{message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if _world is None or _world.size == 1:
        raise SystemExit(status)
    # What this process printed last is still on its way through the launcher (a pipe to its proxy, then
    # a socket): MPICH's mpiexec, ending the job at once, lost it in 1 of 4 timeouts here, and never with
    # this pause.
    try:
        time.sleep(ABORT_GRACE)
    except KeyboardInterrupt:  # a second Ctrl-C must not stop the job's end halfway
        pass
    _world.MPI.COMM_WORLD.Abort(status)


def _abort_on_uncaught_exception(previous):
    def hook(kind, value, traceback):
        print(f"cyconv: error: {rank_prefix()}uncaught {kind.__name__} (traceback below); ending every rank",
              file=sys.stderr, flush=True)
        previous(kind, value, traceback)
        abort(None, 130 if issubclass(kind, KeyboardInterrupt) else 1)
    return hook


def _wait(requests, what, timeout=None):
    """Wait for non-blocking MPI requests; after timeout (default the world's) seconds, end the job.
    Polls rather than blocking in MPI_Waitall, which a timeout could not interrupt, nor a Ctrl-C. MPI's
    own blocking wait spins on the same progress engine, so this costs no more; a wait that outlasts
    SPIN_SECONDS (a rank loading data or writing a checkpoint) then polls every millisecond, leaving the
    core to others. (Not from the start: each poll moves a transfer on, and a 5 MB allreduce polled every
    millisecond took twice as long.)"""
    MPI = _world.MPI
    if MPI.Request.Testall(requests):
        return
    timeout = _world.timeout if timeout is None else timeout
    started = time.monotonic()
    deadline = started + timeout
    while not MPI.Request.Testall(requests):
        now = time.monotonic()
        if now - started > SPIN_SECONDS:
            time.sleep(0.001)
        if now > deadline:
            abort(f"{what} did not complete within {timeout:g} s: another rank has stopped, or ended "
                  f"without ending the job; ending every rank (${ENV_TIMEOUT} sets the limit)")


# ---------------------------------------------------------------------------------------------------------
# Sharding and agreement


def shard(n: int, *, rank: int | None = None, size: int | None = None) -> slice:
    """This rank's part of n items (a global batch): contiguous, disjoint from the other ranks' parts,
    together all n; part sizes differ by at most one (the first n % size ranks have one more).

        >>> [shard(10, rank=r, size=3) for r in range(3)]
        [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"shard(): n must be an int >= 0, got {n!r}")
    if size is None:
        size = world_size()
    if rank is None:
        rank = _initialized().rank
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"shard(): size must be an int >= 1, got {size!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < size:
        raise ValueError(f"shard(): rank must be an int in [0, {size}), got {rank!r}")
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def check_same(what: str, *values) -> None:
    """Raise SetupError on every rank unless every rank passed the same values (NumPy arrays, compared by
    dtype, shape and bytes; str or bytes), naming the ranks that differ from rank 0. One SHA-256 digest
    per rank travels, not the values."""
    world = _initialized()
    if world.size == 1:
        return
    digest = hashlib.sha256()
    for value in values:
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes):
            digest.update(b"bytes %d:" % len(value) + value)
        else:
            array = np.ascontiguousarray(value)
            digest.update(f"array {array.dtype.str} {array.shape}:".encode())
            digest.update(memoryview(array).cast("B"))
    mine = np.frombuffer(digest.digest(), np.uint8)
    every = np.empty((world.size, mine.size), np.uint8)
    _wait([world.comm.Iallgather(mine, every)], f"comparing the {what} of the ranks")
    differ = [r for r in range(world.size) if not np.array_equal(every[r], every[0])]
    if differ:
        ranks = f"rank {differ[0]} differs" if len(differ) == 1 else \
            f"ranks {', '.join(map(str, differ))} differ"
        raise SetupError(f"the ranks hold different {what}: {ranks} from rank 0 (compared by SHA-256 "
                         "before training); every rank must train the same")


def first_on_each_node(load):
    """load() on one rank of each node, then (once it returned) on the node's other ranks; returns its
    value. Whatever load caches on the node's disk, a download say, is then fetched once per node.
    If load raises on the first rank, its exception goes on there, and the node's other ranks raise
    RankFailed with its message at once, rather than waiting for a load that will not come."""
    world = _initialized()
    if world.size == 1:
        return load()
    if world.local.Get_rank() != 0:
        failure = _from_first_on_node(world, None)
        if failure:
            raise RankFailed(f"first_on_each_node(): {failure}")
        return load()
    try:
        value = load()
    except BaseException as error:
        _from_first_on_node(world, f"rank {world.rank}, the first of this node, failed to load: "
                                   f"{type(error).__name__}: {error}")
        raise
    _from_first_on_node(world, "")
    return value


def _from_first_on_node(world, failure):
    """The first rank of the node sends failure ('' when its load succeeded); the others get it."""
    what = "waiting for the first rank of this node to load the data"
    timeout = max(world.timeout, FIRST_ON_NODE_TIMEOUT)
    text = failure.encode() if failure is not None else b""
    length = np.array(len(text), np.int64)
    _wait([world.local.Ibcast(length, 0)], what, timeout)
    if not length:
        return ""
    data = np.frombuffer(text, np.uint8).copy() if failure is not None else np.empty(int(length), np.uint8)
    _wait([world.local.Ibcast(data, 0)], what, timeout)
    return data.tobytes().decode(errors="replace")


def barrier(what: str, timeout: float | None = None) -> None:
    """Wait until every rank has called barrier(), at most timeout seconds (default the world's), then end
    the job saying what was awaited. For a wait that may legitimately outlast the collectives' timeout
    (rank 0 writing a checkpoint: `cyconv train` waits WRITE_TIMEOUT), so that the next collective does
    not count it."""
    world = _initialized()
    if world.size > 1:
        _wait([world.comm.Ibarrier()], what, timeout)


# ---------------------------------------------------------------------------------------------------------
# Broadcasts and reductions


def _parameters(model, fn):
    params = model.parameters() if isinstance(model, Module) else list(model)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{fn}(): model must be a Module or Parameters, got {type(p).__name__} at {i}")
    return params


def _check_root(root, fn):
    size = world_size()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ValueError(f"{fn}(): root must be a rank in [0, {size}), got {root!r}")
    return int(root)


def broadcast_parameters(model, root: int = 0) -> None:
    """Copy rank root's parameter values into every rank's model (a Module or a list of Parameters), in
    place. First checks that every rank has the same parameter shapes and dtypes (SetupError if not)."""
    params = _parameters(model, "broadcast_parameters")
    root = _check_root(root, "broadcast_parameters")
    world = _initialized()
    if world.size == 1:
        return
    check_same("models (parameter shapes and dtypes)",
               json.dumps([[list(p.data.shape), p.data.dtype.str] for p in params]))
    buffers = [p.data if p.data.flags.c_contiguous and p.data.flags.writeable else np.ascontiguousarray(p.data)
               for p in params]
    _wait([world.comm.Ibcast(b, root) for b in buffers], f"broadcasting the parameters from rank {root}")
    for p, b in zip(params, buffers):
        if b is not p.data:
            p.data[...] = b


def broadcast_json(value=None, root: int = 0):
    """Rank root's value (anything json.dumps takes) on every rank; the other ranks' value is ignored."""
    root = _check_root(root, "broadcast_json")
    world = _initialized()
    if world.size == 1:
        return value
    text = json.dumps(value).encode() if world.rank == root else b""
    length = np.array(len(text), np.int64)
    what = f"broadcasting settings from rank {root}"
    _wait([world.comm.Ibcast(length, root)], what)
    data = np.frombuffer(text, np.uint8).copy() if world.rank == root else np.empty(int(length), np.uint8)
    _wait([world.comm.Ibcast(data, root)], what)
    return json.loads(data.tobytes())


def broadcast_state(obj, root: int = 0) -> None:
    """Copy rank root's state into obj on every rank: obj has state_dict() of NumPy arrays and scalars and
    load_state_dict() (an optimizer's momentum buffers and step count, say)."""
    root = _check_root(root, "broadcast_state")
    world = _initialized()
    if world.size == 1:
        return
    state = {k: np.array(v) for k, v in obj.state_dict().items()} if world.rank == root else None
    layout = broadcast_json(None if state is None else {k: [a.dtype.str, list(a.shape)] for k, a in state.items()},
                            root)
    if state is None:
        state = {k: np.empty(shape, np.dtype(dtype)) for k, (dtype, shape) in layout.items()}
    _wait([world.comm.Ibcast(a, root) for a in state.values()], f"broadcasting the optimizer state from rank {root}")
    if world.rank != root:
        obj.load_state_dict(state)


def sum_over_ranks(values) -> np.ndarray:
    """The element-wise sum over the ranks of a few numbers (float64), on every rank: counts and totals."""
    total = np.array(values, np.float64)
    world = _initialized()
    if world.size > 1:
        _wait([world.comm.Iallreduce(world.MPI.IN_PLACE, total, world.MPI.SUM)], "summing statistics over the ranks")
    return total


class _Gradients:
    """The gradients of groups of parameters as contiguous buffers, one per group and dtype ("buckets"),
    averaged over the ranks in place.

    bind=True makes the buffers where the gradients live: each Parameter.grad becomes a slice of its
    bucket, so a backward writes straight into it. (A gradient assigned anew since is copied in and bound
    again.) bind=False copies the gradients in and the averages back out.
    """

    def __init__(self, groups, bind):
        self.bind = bind
        self.buckets = []  # (params, flat buffer, views of it shaped as the params)
        for group in groups:
            for dtype in dict.fromkeys(p.data.dtype for p in group):
                params = [p for p in group if p.data.dtype == dtype]
                flat = np.empty(sum(p.data.size for p in params), dtype)
                views, offset = [], 0
                for p in params:
                    views.append(flat[offset:offset + p.data.size].reshape(p.data.shape))
                    offset += p.data.size
                self.buckets.append((params, flat, views))
                if bind:
                    for p, view in zip(params, views):
                        view[...] = p.grad
                        p.grad = view
        self.requests = [None] * len(self.buckets)

    def start(self, i):
        """Start averaging bucket i: its gradients are final."""
        params, flat, views = self.buckets[i]
        for p, view in zip(params, views):
            grad = p.grad  # a gradient cleared lazily (Parameter.zero_grad) is filled with its zeros here
            if grad is not view:  # bind=False, or someone assigned p.grad since
                view[...] = grad
                if self.bind:
                    p.grad = view
        world = _world
        self.requests[i] = world.comm.Iallreduce(world.MPI.IN_PLACE, flat, world.MPI.SUM)

    def abandon(self):
        """Wait for the buckets started and not finished, and forget their sums."""
        started = [request for request in self.requests if request is not None]
        if started:
            _wait(started, "completing an allreduce of gradients that no step() finished")
            self.requests = [None] * len(self.buckets)

    def finish(self):
        """Start the buckets not started yet, wait for all, and divide the sums by the number of ranks."""
        for i, request in enumerate(self.requests):
            if request is None:
                self.start(i)
        _wait(self.requests, "averaging the gradients over the ranks (allreduce)")
        self.requests = [None] * len(self.buckets)
        size = _world.size
        for params, flat, views in self.buckets:
            np.divide(flat, size, out=flat)
            if not self.bind:
                for p, view in zip(params, views):
                    p.grad[...] = view


def allreduce_gradients(model) -> None:
    """Replace every parameter gradient of model (a Module or a list of Parameters) by its mean over the
    ranks, in place, as one buffer per dtype. Copies the gradients into the buffer and back; DistributedSGD
    keeps them there instead."""
    params = _parameters(model, "allreduce_gradients")
    if world_size() > 1 and params:
        _Gradients([params], bind=False).finish()


class DistributedOptimizer:
    """Put in front of an optimizer class (one with `params` and `step()`) to average every gradient over
    the ranks before each step, so that every rank applies the same update:
    `class DistributedSGD(DistributedOptimizer, SGD)`. Arguments, state and checkpoints stay the
    optimizer's; two keyword arguments are added:

    root (0): the constructor joins the MPI job (init()), refuses ranks whose models differ in shapes or
    dtypes (SetupError), and copies rank root's parameter values to every rank, as PyTorch's DDP does. From
    then on each Parameter.grad lives in one contiguous buffer per dtype, which the allreduce sums in place.

    buckets (None: one buffer per dtype): a list of lists of the parameters, each reduced as its own
    buffer, in the order their gradients become final; after a backward has written some,
    `gradients_ready(params)` starts their allreduce, which can then run while the rest of the backward
    does.

    The ranks' gradients count equally in the mean, which is the batch's mean gradient when the ranks'
    parts of the batch are the same size; a rank with a part of another size scales its loss gradient by
    its share, part size * ranks / batch size, first (as cyconv.train does for an uneven last batch).
    With one rank, the optimizer is the plain one.

    `allreduce_seconds`: the time step() has spent averaging so far, waiting for slower ranks included.
    """

    def __init__(self, params, *args, root=0, buckets=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        groups = self._groups(buckets)
        init()
        broadcast_parameters(self.params, root)
        self._gradients = _Gradients(groups, bind=True) if world_size() > 1 else None
        self.allreduce_seconds = 0.0

    def _groups(self, buckets):
        if buckets is None:
            return [self.params]
        groups = [list(group) for group in buckets]
        given = [id(p) for group in groups for p in group]
        if sorted(given) != sorted(id(p) for p in self.params):
            raise ValueError(f"{type(self).__name__}(): buckets must hold each of params exactly once, got "
                             f"{len(given)} parameters in buckets for {len(self.params)} params")
        return groups

    def gradients_ready(self, params) -> None:
        """The gradients of params are final: start the allreduce of every bucket made of them alone.
        From then on MPI writes into those gradients until step(), or zero_grad() when an exception came
        in between, has waited for it."""
        if self._gradients is None:
            return
        ready = {id(p) for p in params}
        for i, (bucket_params, _, _) in enumerate(self._gradients.buckets):
            if self._gradients.requests[i] is None and all(id(p) in ready for p in bucket_params):
                self._gradients.start(i)

    def zero_grad(self):
        """Clear every gradient. An allreduce that gradients_ready started and no step() finished (an
        exception came in between) is waited for first: MPI is still writing into those gradients, and
        the next step must start its own."""
        if self._gradients is not None:
            self._gradients.abandon()
        super().zero_grad()

    def step(self):
        """Average the gradients over the ranks, then take the optimizer's step."""
        if self._gradients is not None:
            started = time.perf_counter()
            self._gradients.finish()
            self.allreduce_seconds += time.perf_counter() - started
        super().step()


class DistributedSGD(DistributedOptimizer, SGD):
    """cyconv.optim.SGD (same arguments, state and checkpoints) averaging every gradient over the ranks
    before each step; `root` and `buckets` as in DistributedOptimizer.

        opt = DistributedSGD(model.parameters(), lr=0.04, momentum=0.9, weight_decay=5e-4)
    """


class DistributedAdam(DistributedOptimizer, Adam):
    """cyconv.optim.Adam averaging every gradient over the ranks before each step (see DistributedSGD)."""


class DistributedAdamW(DistributedOptimizer, AdamW):
    """cyconv.optim.AdamW averaging every gradient over the ranks before each step (see DistributedSGD)."""


_DISTRIBUTED = {"sgd": DistributedSGD, "adam": DistributedAdam, "adamw": DistributedAdamW}


def build_optimizer(name, params, *, lr, momentum=0.0, weight_decay=0.0, **kwargs):
    """cyconv.optim.build_optimizer's Distributed* twin: "sgd", "adam" or "adamw" (momentum is SGD's only);
    kwargs (root, buckets) go to DistributedOptimizer."""
    return optim.build_optimizer(name, params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                 classes=_DISTRIBUTED, **kwargs)


def threads_per_rank() -> int:
    """This rank's share of its node's cores: every CPU it may run on, counted 1/k when k ranks of the node
    may run there. Unbound ranks get the node's cores divided by its ranks; ranks bound to cores of
    their own (mpiexec -bind-to core) get those. At least 1."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = list(range(os.cpu_count() or 1))
    world = _initialized()
    if world.size == 1:
        return max(1, len(cpus))
    MPI = world.MPI
    width = np.array(max(cpus) + 1, np.int64)
    _wait([world.local.Iallreduce(MPI.IN_PLACE, width, MPI.MAX)], "counting the cores of this node")
    sharing = np.zeros(int(width), np.int64)
    sharing[cpus] = 1
    _wait([world.local.Iallreduce(MPI.IN_PLACE, sharing, MPI.SUM)], "counting the cores of this node")
    return max(1, int(sum(1 / sharing[c] for c in cpus) + 1e-9))
