"""cyconv.optim: SGD, Adam and AdamW, and learning-rate schedules.

`SGD` follows torch.optim.SGD exactly (no dampening, no Nesterov):

    g = grad + weight_decay * p
    buf = g                      on the first step
    buf = momentum * buf + g     afterwards
    p -= lr * buf                (lr * g when momentum == 0)

`Adam` and `AdamW` follow torch.optim.Adam and AdamW (no amsgrad): Adam adds weight_decay * p to
the gradient, AdamW decays p by lr * weight_decay before the step (see functional.adam_update).

Each update runs in place, one compiled pass over each parameter (`functional.sgd_update`,
`functional.adam_update`); per step nothing is allocated but, once, the optimiser's state.

The schedules are pure functions of the step number; a training loop sets
`optimizer.lr = cosine_lr(step, ...)` before each `optimizer.step()`.
"""

import math

import numpy as np

from ..layers import functional as F
from ..layers.nn import Parameter

__all__ = ["SGD", "Adam", "AdamW", "OPTIMIZERS", "build_optimizer", "cosine_lr", "step_lr"]


def _real(value, name, fn, low, high=math.inf, high_open=False):
    """A finite real number in [low, high] (or [low, high) with high_open), as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}(): {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not (low <= value and (value < high if high_open else value <= high)):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{fn}(): {name} must be in [{low}, {high}{bracket}, got {value}")
    return value


def _step_count(value, name, fn, low):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}(): {name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{fn}(): {name} must be >= {low}, got {value}")
    return int(value)


def _parameters(params, cls):
    params = list(params)
    if not params:
        raise ValueError(f"{cls}(): params is an empty list")
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{cls}(): params[{i}] must be a Parameter, got {type(p).__name__}")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{cls}(): params holds the same Parameter more than once")
    return params


class SGD:
    """SGD with optional momentum and L2 weight decay, PyTorch's semantics (see the module docstring).

    params: an iterable of `Parameter` (e.g. `model.parameters()`), read in order;
    `lr` is a plain attribute a schedule may change between steps.

    Example:
        >>> opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        >>> opt.zero_grad(); model.backward(grad_logits); opt.step()
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        self.params = _parameters(params, "SGD")
        self.lr = _real(lr, "lr", "SGD", 0.0)
        self.momentum = _real(momentum, "momentum", "SGD", 0.0, 1.0, high_open=True)
        self.weight_decay = _real(weight_decay, "weight_decay", "SGD", 0.0)
        self.step_count = 0
        self._momentum_buffers = None  # created by the first step, as in PyTorch

    def zero_grad(self):
        """Set every parameter gradient to zero, in place."""
        for p in self.params:
            p.zero_grad()

    def step(self):
        """Update every parameter once from its current .grad."""
        lr, momentum, weight_decay = self.lr, self.momentum, self.weight_decay
        first = self._momentum_buffers is None
        if momentum and first:
            self._momentum_buffers = [np.empty_like(p.data) for p in self.params]
        for i, p in enumerate(self.params):
            buf = self._momentum_buffers[i] if momentum else None
            F.sgd_update(p.data, p.grad, buf, lr, momentum, weight_decay, first_step=first)
        self.step_count += 1

    def state_dict(self):
        """Hyperparameters, step count and momentum buffers as NumPy scalars and array copies
        (savable with np.savez, loadable with allow_pickle=False)."""
        state = {
            "lr": np.float64(self.lr),
            "momentum": np.float64(self.momentum),
            "weight_decay": np.float64(self.weight_decay),
            "step": np.int64(self.step_count),
        }
        if self._momentum_buffers is not None:
            for i, buf in enumerate(self._momentum_buffers):
                state[f"momentum_buffer.{i}"] = buf.copy()
        return state

    def load_state_dict(self, state):
        """Restore what state_dict() returned: hyperparameters, step count, momentum buffers (copied).

        ValueError when keys are missing or unknown, or the buffers do not match the
        parameters in count, shape or dtype; nothing changes unless everything matches.
        """
        fn = "SGD.load_state_dict"
        required = ("lr", "momentum", "weight_decay", "step")
        keys = list(state.keys())
        missing = [k for k in required if k not in state]
        buffer_keys = [f"momentum_buffer.{i}" for i in range(len(self.params))]
        unexpected = [k for k in keys if k not in required and k not in buffer_keys]
        present = [k for k in buffer_keys if k in state]
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)} (this optimizer has {len(self.params)} parameters)")
        if present and len(present) != len(buffer_keys):
            absent = [k for k in buffer_keys if k not in state]
            problems.append(f"momentum buffers missing for some parameters: {', '.join(absent)}")
        buffers = []
        for k, p in zip(buffer_keys, self.params):
            if k not in state:
                continue
            buf = np.asarray(state[k])
            if buf.shape != p.data.shape or buf.dtype != p.data.dtype:
                problems.append(f"{k} is {buf.dtype} {buf.shape}, the parameter is {p.data.dtype} {p.data.shape}")
            buffers.append(buf)
        if problems:
            raise ValueError(f"{fn}(): " + "; ".join(problems))

        lr = _real(np.asarray(state["lr"]).item(), "lr", fn, 0.0)
        momentum = _real(np.asarray(state["momentum"]).item(), "momentum", fn, 0.0, 1.0, high_open=True)
        weight_decay = _real(np.asarray(state["weight_decay"]).item(), "weight_decay", fn, 0.0)
        step = _step_count(np.asarray(state["step"]).item(), "step", fn, 0)
        if buffers and not momentum:
            raise ValueError(f"{fn}(): momentum buffers given but momentum is 0")
        if momentum and step > 0 and not buffers:
            raise ValueError(f"{fn}(): momentum is {momentum} and step is {step}, but no momentum buffers are given")
        self.lr, self.momentum, self.weight_decay, self.step_count = lr, momentum, weight_decay, step
        self._momentum_buffers = [b.copy() for b in buffers] if buffers else None

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"{len(self.params)} parameters)")


class Adam:
    """Adam (Kingma and Ba, 2015), PyTorch's semantics (torch.optim.Adam, amsgrad=False):
    weight_decay is an L2 term added to the gradient. AdamW below decouples it.

    params: an iterable of `Parameter`, read in order; `lr` is a plain attribute a schedule may
    change between steps. The state (exp_avg and exp_avg_sq per parameter, made by the first
    step, and the step count) is in state_dict(), so a checkpoint resumes the same trajectory.

    Example:
        >>> opt = Adam(model.parameters(), lr=1e-3)
        >>> opt.zero_grad(); model.backward(grad_logits); opt.step()
    """

    _decoupled = False
    _default_weight_decay = 0.0

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=None):
        cls = type(self).__name__
        self.params = _parameters(params, cls)
        self.lr = _real(lr, "lr", cls, 0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"{cls}(): betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_real(b, f"betas[{i}]", cls, 0.0, 1.0, high_open=True) for i, b in enumerate(betas))
        self.eps = _real(eps, "eps", cls, 0.0)
        self.weight_decay = _real(self._default_weight_decay if weight_decay is None else weight_decay,
                                  "weight_decay", cls, 0.0)
        self.step_count = 0
        self._moments = None  # [(exp_avg, exp_avg_sq)] per parameter, zeros at the first step

    def zero_grad(self):
        """Set every parameter gradient to zero, in place."""
        for p in self.params:
            p.zero_grad()

    def step(self):
        """Update every parameter once from its current .grad."""
        if self._moments is None:
            self._moments = [(np.zeros_like(p.data), np.zeros_like(p.data)) for p in self.params]
        self.step_count += 1
        for p, (m, v) in zip(self.params, self._moments):
            F.adam_update(p.data, p.grad, m, v, self.step_count, self.lr, self.betas, self.eps, self.weight_decay,
                          self._decoupled)

    def state_dict(self):
        """Hyperparameters, step count and moment estimates as NumPy scalars and array copies."""
        state = {"lr": np.float64(self.lr), "beta1": np.float64(self.betas[0]),
                 "beta2": np.float64(self.betas[1]), "eps": np.float64(self.eps),
                 "weight_decay": np.float64(self.weight_decay), "step": np.int64(self.step_count)}
        for i, (m, v) in enumerate(self._moments or ()):
            state[f"exp_avg.{i}"], state[f"exp_avg_sq.{i}"] = m.copy(), v.copy()
        return state

    def load_state_dict(self, state):
        """Restore what state_dict() returned (copied). ValueError when keys are missing or unknown,
        or the moments do not match the parameters; nothing changes unless everything matches."""
        fn = f"{type(self).__name__}.load_state_dict"
        required = ("lr", "beta1", "beta2", "eps", "weight_decay", "step")
        moment_keys = [f"{kind}.{i}" for i in range(len(self.params)) for kind in ("exp_avg", "exp_avg_sq")]
        problems = []
        missing = [k for k in required if k not in state]
        unexpected = [k for k in state if k not in required and k not in moment_keys]
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)} (this optimizer has {len(self.params)} "
                            "parameters)")
        present = [k for k in moment_keys if k in state]
        if present and len(present) != len(moment_keys):
            problems.append(f"moments missing for some parameters: "
                            f"{', '.join(k for k in moment_keys if k not in state)}")
        for k in present:
            a, p = np.asarray(state[k]), self.params[int(k.rsplit('.', 1)[1])]
            if a.shape != p.data.shape or a.dtype != p.data.dtype:
                problems.append(f"{k} is {a.dtype} {a.shape}, the parameter is {p.data.dtype} {p.data.shape}")
        if problems:
            raise ValueError(f"{fn}(): " + "; ".join(problems))
        lr = _real(np.asarray(state["lr"]).item(), "lr", fn, 0.0)
        betas = tuple(_real(np.asarray(state[k]).item(), k, fn, 0.0, 1.0, high_open=True) for k in ("beta1", "beta2"))
        eps = _real(np.asarray(state["eps"]).item(), "eps", fn, 0.0)
        weight_decay = _real(np.asarray(state["weight_decay"]).item(), "weight_decay", fn, 0.0)
        step = _step_count(np.asarray(state["step"]).item(), "step", fn, 0)
        if step > 0 and not present:
            raise ValueError(f"{fn}(): step is {step}, but no moment estimates are given")
        self.lr, self.betas, self.eps, self.weight_decay, self.step_count = lr, betas, eps, weight_decay, step
        self._moments = [(np.array(state[f"exp_avg.{i}"]), np.array(state[f"exp_avg_sq.{i}"]))
                         for i in range(len(self.params))] if present else None

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, {len(self.params)} parameters)")


class AdamW(Adam):
    """AdamW (Loshchilov and Hutter, 2019), PyTorch's semantics (torch.optim.AdamW): the weight
    decay is decoupled from the gradient, p *= 1 - lr * weight_decay before each Adam step; its
    default is 0.01, as in PyTorch."""

    _decoupled = True
    _default_weight_decay = 1e-2


# The optimisers the command line trains with and a checkpoint names.
OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(name, params, *, lr, momentum=0.0, weight_decay=0.0, classes=None, **kwargs):
    """The optimiser `name` ("sgd", "adam", "adamw") over params; momentum is SGD's only.
    classes: {name: class} to build from instead (cyconv.distributed passes its Distributed* twins),
    which take kwargs besides."""
    classes = classes or {"sgd": SGD, "adam": Adam, "adamw": AdamW}
    if name not in OPTIMIZERS:
        raise ValueError(f"build_optimizer(): name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if name == "sgd":
        kwargs["momentum"] = momentum
    return classes[name](params, lr=lr, weight_decay=weight_decay, **kwargs)


# ---------------------------------------------------------------------------
# Learning-rate schedules

def cosine_lr(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Linear warmup, then a half cosine from base_lr down to min_lr.

    step < warmup_steps:   base_lr * (step + 1) / warmup_steps   (the first step is not wasted at lr 0;
                                                                  step warmup_steps - 1 reaches base_lr)
    after:                 min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2,
                           t = (step - warmup_steps) / (total_steps - warmup_steps), clamped to 1,
    so lr is base_lr at step == warmup_steps and min_lr from step == total_steps on.

    Example:
        >>> [round(cosine_lr(s, 10, 0.1, warmup_steps=2), 4) for s in (0, 1, 2, 6, 10)]
        [0.05, 0.1, 0.1, 0.05, 0.0]
    """
    fn = "cosine_lr"
    step = _step_count(step, "step", fn, 0)
    total_steps = _step_count(total_steps, "total_steps", fn, 1)
    warmup_steps = _step_count(warmup_steps, "warmup_steps", fn, 0)
    base_lr = _real(base_lr, "base_lr", fn, 0.0)
    min_lr = _real(min_lr, "min_lr", fn, 0.0, base_lr)
    if warmup_steps > total_steps:
        raise ValueError(f"{fn}(): warmup_steps ({warmup_steps}) must be <= total_steps ({total_steps})")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    t = 1.0 if decay_steps == 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def step_lr(step, step_size, gamma, base_lr):
    """base_lr * gamma ** (step // step_size): multiply by gamma every step_size steps
    (torch.optim.lr_scheduler.StepLR).

    Example:
        >>> [step_lr(s, 2, 0.5, 0.1) for s in (0, 1, 2, 4)]
        [0.1, 0.1, 0.05, 0.025]
    """
    fn = "step_lr"
    step = _step_count(step, "step", fn, 0)
    step_size = _step_count(step_size, "step_size", fn, 1)
    gamma = _real(gamma, "gamma", fn, 0.0)
    base_lr = _real(base_lr, "base_lr", fn, 0.0)
    return base_lr * gamma ** (step // step_size)
