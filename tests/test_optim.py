"""cyconv.optim: SGD against a hand-written PyTorch-semantics update, Adam and AdamW against PyTorch, in-place
updates, state dicts, argument validation, and the learning-rate schedules."""

import math
import tracemalloc

import numpy as np
import pytest

from conftest import DTYPES
from cyconv.nn import Parameter
from cyconv import optim
from cyconv.optim import SGD, cosine_lr, step_lr

SHAPES = [(3, 4), (5,), (2, 1, 3, 3)]


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def gradients(dtype, steps, seed=1):
    """steps lists of gradients, one per parameter."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def torch_sgd(data, grads, lr, momentum, weight_decay):
    """torch.optim.SGD (dampening 0, no Nesterov), written out for one parameter over several steps."""
    p, buf = data.copy(), None
    for grad in grads:
        g = grad + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = buf
        p = p - lr * g
    return p


def run(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        optimizer.step()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-2), (0.9, 1e-2)])
def test_sgd_matches_pytorch_semantics(momentum, weight_decay, dtype):
    params = make_params(dtype)
    start = [p.data.copy() for p in params]
    grads = gradients(dtype, 4)
    optimizer = SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    run(optimizer, params, grads)
    for i, (p, p0) in enumerate(zip(params, start)):
        want = torch_sgd(p0, [g[i] for g in grads], 0.1, momentum, weight_decay)
        assert p.data.dtype == dtype
        # Same operations in the same order and dtype: the same bits.
        np.testing.assert_array_equal(p.data, want)
    assert optimizer.step_count == 4


def test_lr_is_read_at_every_step():
    params = make_params(np.float64)
    p0 = params[0].data.copy()
    grads = gradients(np.float64, 2)
    optimizer = SGD(params, lr=0.1)
    run(optimizer, params, grads[:1])
    optimizer.lr = np.float64(0.01)  # e.g. from a schedule
    run(optimizer, params, grads[1:])
    np.testing.assert_allclose(params[0].data, p0 - 0.1 * grads[0][0] - 0.01 * grads[1][0], rtol=1e-15)


def test_float64_lr_keeps_float32_arithmetic():
    params = make_params(np.float32)
    twin = make_params(np.float32)
    grads = gradients(np.float32, 3)
    a = SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    b = SGD(twin, lr=0.1, momentum=0.9, weight_decay=1e-3)
    b.lr, b.momentum, b.weight_decay = np.float64(0.1), np.float64(0.9), np.float64(1e-3)
    run(a, params, grads)
    run(b, twin, grads)
    for p, q in zip(params, twin):
        np.testing.assert_array_equal(p.data, q.data)


def test_step_updates_in_place_without_allocating():
    params = [Parameter(np.ones(100_000)), Parameter(np.ones(1000))]
    optimizer = SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    arrays = [p.data for p in params]
    optimizer.step()  # creates the momentum buffers and the scratch array
    tracemalloc.start()
    try:
        optimizer.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000, peak  # a temporary the size of the big parameter would be 800,000 bytes
    assert all(p.data is a for p, a in zip(params, arrays))


def test_zero_grad_clears_in_place():
    params = make_params(np.float32)
    grads = [p.grad for p in params]
    for g in grads:
        g += 1
    SGD(params, lr=0.1).zero_grad()
    assert all(p.grad is g and not g.any() for p, g in zip(params, grads))


# ---------------------------------------------------------------------------
# state_dict


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_state_dict_round_trip_continues_identically(momentum, tmp_path):
    params = make_params(np.float32)
    grads = gradients(np.float32, 6)
    optimizer = SGD(params, lr=0.05, momentum=momentum, weight_decay=1e-3)
    run(optimizer, params, grads[:3])

    state = optimizer.state_dict()
    assert all(isinstance(v, (np.ndarray, np.generic)) for v in state.values())
    assert sorted(state) == sorted(["lr", "momentum", "weight_decay", "step"]
                                   + ([f"momentum_buffer.{i}" for i in range(3)] if momentum else []))
    np.savez(tmp_path / "optim.npz", **state)

    # A fresh optimizer with other hyperparameters, on a copy of the parameters.
    copies = [Parameter(p.data.copy()) for p in params]
    resumed = SGD(copies, lr=1.0)
    with np.load(tmp_path / "optim.npz", allow_pickle=False) as saved:
        resumed.load_state_dict(saved)
    assert (resumed.lr, resumed.momentum, resumed.weight_decay, resumed.step_count) == (0.05, momentum, 1e-3, 3)

    run(optimizer, params, grads[3:])
    run(resumed, copies, grads[3:])
    for p, q in zip(params, copies):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_holds_copies():
    params = make_params(np.float64)
    optimizer = SGD(params, lr=0.1, momentum=0.5)
    run(optimizer, params, gradients(np.float64, 1))
    state = optimizer.state_dict()
    state["momentum_buffer.0"][...] = 99.0
    assert not np.any(optimizer.state_dict()["momentum_buffer.0"] == 99.0)
    other = SGD(make_params(np.float64), lr=0.1, momentum=0.5)
    other.load_state_dict(state)
    state["momentum_buffer.0"][...] = 0.0
    assert np.all(other.state_dict()["momentum_buffer.0"] == 99.0)


def test_load_state_dict_rejects_a_mismatch():
    params = make_params(np.float64)
    optimizer = SGD(params, lr=0.1, momentum=0.9)
    run(optimizer, params, gradients(np.float64, 1))
    state = optimizer.state_dict()

    fewer = SGD(make_params(np.float64)[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"unexpected keys: momentum_buffer\.2 \(this optimizer has 2 parameters\)"):
        fewer.load_state_dict(state)

    other = SGD(make_params(np.float64), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum_buffer\.1 is float64 \(4,\), the parameter is float64 \(5,\)"):
        other.load_state_dict({**state, "momentum_buffer.1": np.zeros(4)})
    with pytest.raises(ValueError, match="missing keys: step"):
        other.load_state_dict({k: v for k, v in state.items() if k != "step"})
    with pytest.raises(ValueError, match=r"momentum buffers missing for some parameters: momentum_buffer\.0"):
        other.load_state_dict({k: v for k, v in state.items() if k != "momentum_buffer.0"})
    with pytest.raises(ValueError, match="no momentum buffers"):
        other.load_state_dict({k: v for k, v in state.items() if not k.startswith("momentum_buffer")})
    with pytest.raises(ValueError, match="momentum"):
        other.load_state_dict({**state, "momentum": np.float64(1.5)})
    assert other.step_count == 0 and other.state_dict().keys() == {"lr", "momentum", "weight_decay", "step"}


# ---------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-0.1), ValueError, "lr must be in"),
    (dict(lr=math.nan), ValueError, "lr must be in"),
    (dict(lr=math.inf), ValueError, "lr must be in"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
    (dict(lr=0.1, momentum=1.0), ValueError, "momentum must be in"),
    (dict(lr=0.1, momentum=-0.5), ValueError, "momentum must be in"),
    (dict(lr=0.1, weight_decay=-1e-4), ValueError, "weight_decay must be in"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        SGD(make_params(np.float32), **kwargs)


def test_sgd_rejects_bad_params():
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] must be a Parameter"):
        SGD([np.zeros(3)], lr=0.1)
    p = Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    assert SGD(iter([p]), lr=0.0).params == [p]  # any iterable; lr 0 is allowed


# ---------------------------------------------------------------------------
# Schedules


def test_cosine_lr():
    lrs = [cosine_lr(s, 10, 0.1, warmup_steps=2, min_lr=0.01) for s in range(13)]
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1])  # warmup reaches base_lr at its last step
    assert lrs[6] == pytest.approx((0.1 + 0.01) / 2)  # halfway through the decay
    assert lrs[10:] == pytest.approx([0.01] * 3)  # min_lr from total_steps on
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert [cosine_lr(s, 4, 1.0) for s in range(4)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    assert cosine_lr(0, 3, 0.1, warmup_steps=3) == pytest.approx(0.1 / 3)
    assert cosine_lr(3, 3, 0.1, warmup_steps=3) == 0.0


@pytest.mark.parametrize("args, kwargs, match", [
    ((-1, 10, 0.1), {}, "step"),
    ((0, 0, 0.1), {}, "total_steps"),
    ((0, 10, -0.1), {}, "base_lr"),
    ((0, 10, 0.1), dict(warmup_steps=11), "warmup_steps"),
    ((0, 10, 0.1), dict(min_lr=0.2), "min_lr"),
])
def test_cosine_lr_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cosine_lr(*args, **kwargs)


def test_step_lr():
    assert [step_lr(s, 3, 0.1, 1.0) for s in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="step_size"):
        step_lr(0, 0, 0.1, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        step_lr(0, 1, -0.1, 1.0)
    with pytest.raises(TypeError, match="step must be an int"):
        step_lr(1.5, 1, 0.1, 1.0)


# ---------------------------------------------------------------------------
# Adam and AdamW


@pytest.mark.parametrize("cls_name", ["Adam", "AdamW"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_matches_pytorch(cls_name, weight_decay):
    torch = pytest.importorskip("torch")
    params = make_params(np.float32)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
    grads = gradients(np.float32, 5)
    optimizer = getattr(optim, cls_name)(params, lr=1e-2, weight_decay=weight_decay)
    toptimizer = getattr(torch.optim, cls_name)(tparams, lr=1e-2, weight_decay=weight_decay)
    for step_grads in grads:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.from_numpy(g)
        toptimizer.step()
    run(optimizer, params, grads)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert optimizer.step_count == 5


def test_adamw_defaults_are_pytorchs():
    a, w = optim.Adam(make_params(np.float32)), optim.AdamW(make_params(np.float32))
    assert (a.lr, a.betas, a.eps, a.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (w.lr, w.betas, w.eps, w.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)


@pytest.mark.parametrize("cls_name", ["Adam", "AdamW"])
def test_adam_state_dict_round_trip_continues_identically(cls_name, tmp_path):
    cls = getattr(optim, cls_name)
    params = make_params(np.float32)
    grads = gradients(np.float32, 6)
    optimizer = cls(params, lr=3e-3, weight_decay=1e-3)
    run(optimizer, params, grads[:3])
    state = optimizer.state_dict()
    assert sorted(state) == sorted(["lr", "beta1", "beta2", "eps", "weight_decay", "step"]
                                   + [f"{k}.{i}" for i in range(3) for k in ("exp_avg", "exp_avg_sq")])
    np.savez(tmp_path / "optim.npz", **state)
    copies = [Parameter(p.data.copy()) for p in params]
    resumed = cls(copies, lr=1.0)
    with np.load(tmp_path / "optim.npz", allow_pickle=False) as saved:
        resumed.load_state_dict(saved)
    assert (resumed.lr, resumed.weight_decay, resumed.step_count) == (3e-3, 1e-3, 3)
    run(optimizer, params, grads[3:])
    run(resumed, copies, grads[3:])
    for p, q in zip(params, copies):
        np.testing.assert_array_equal(p.data, q.data)


def test_adam_load_state_dict_rejects_a_mismatch():
    params = make_params(np.float64)
    optimizer = optim.Adam(params)
    run(optimizer, params, gradients(np.float64, 1))
    state = optimizer.state_dict()
    other = optim.Adam(make_params(np.float64))
    with pytest.raises(ValueError, match=r"exp_avg\.1 is float64 \(4,\), the parameter is float64 \(5,\)"):
        other.load_state_dict({**state, "exp_avg.1": np.zeros(4)})
    with pytest.raises(ValueError, match=r"moments missing for some parameters: exp_avg_sq\.0"):
        other.load_state_dict({k: v for k, v in state.items() if k != "exp_avg_sq.0"})
    with pytest.raises(ValueError, match="no moment estimates"):
        other.load_state_dict({k: v for k, v in state.items() if not k.startswith("exp_avg")})
    with pytest.raises(ValueError, match="beta2"):
        other.load_state_dict({**state, "beta2": np.float64(1.0)})
    with pytest.raises(ValueError, match="unexpected keys: momentum_buffer.0"):
        other.load_state_dict({**state, "momentum_buffer.0": np.zeros(1)})
    assert other.step_count == 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-1e-3), ValueError, r"Adam\(\): lr must be in"),
    (dict(betas=(0.9,)), TypeError, r"Adam\(\): betas must be a pair"),
    (dict(betas=(0.9, 1.0)), ValueError, r"Adam\(\): betas\[1\] must be in"),
    (dict(eps=-1.0), ValueError, r"Adam\(\): eps must be in"),
    (dict(weight_decay=math.nan), ValueError, r"Adam\(\): weight_decay must be in"),
])
def test_adam_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        optim.Adam(make_params(np.float32), **kwargs)


def test_build_optimizer():
    params = make_params(np.float32)
    assert isinstance(optim.build_optimizer("sgd", params, lr=0.1, momentum=0.9), SGD)
    assert type(optim.build_optimizer("adam", params, lr=1e-3)) is optim.Adam
    w = optim.build_optimizer("adamw", params, lr=1e-3, weight_decay=0.05)
    assert type(w) is optim.AdamW and w.weight_decay == 0.05
    with pytest.raises(ValueError, match="build_optimizer\\(\\): name must be one of sgd, adam, adamw"):
        optim.build_optimizer("rmsprop", params, lr=1e-3)
