"""Kernel benchmarks at the course's LeNet-5 layer shapes (batch 64, float32):
cyconv vs its NumPy reference vs PyTorch (rows skipped when torch is absent);
the layers of deeper CNNs at the shapes of lenet5_classic (average pooling,
sigmoid, tanh) and small_cnn on 64x64x3 images (batch norm, training mode); and
one Adam step over LeNet-5's parameters against torch.optim.Adam (foreach).
Convolutions also run as "cyconv-blas" (cyconv with its GEMMs on OpenBLAS instead
of its own kernel for the tier), and ReLU + max pooling as "cyconv-unfused" (the
two ops one after the other instead of relu_max_pool2d). --isa picks the tier
(conftest.py).

Each layer is timed forward alone ("fwd", PyTorch under no_grad) and forward +
backward as a training step runs it ("fwd+bwd"; conv1 computes no input
gradient, as the first layer of a network). Groups are named <op>-<layer>;
report.py turns the JSON into RESULTS.md's table.
"""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R

BATCH = 64
CONV = {  # layer: (x shape, weight shape, padding, needs grad_x)
    "conv1": ((BATCH, 1, 28, 28), (20, 1, 5, 5), 2, False),
    "conv2": ((BATCH, 20, 14, 14), (50, 20, 5, 5), 2, True),
}
ACT = {"1": (BATCH, 20, 28, 28), "2": (BATCH, 50, 14, 14)}  # pool/relu inputs
IMPLS = ["cyconv", "reference", "torch"]
PHASES = ["fwd", "fwd+bwd"]


def _setup(benchmark, group, impl, phase, threads):
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, phase=phase, threads=threads,
                                openmp=cyconv.openmp_enabled())
    if impl == "torch":
        return pytest.importorskip("torch")
    return R if impl == "reference" else F


@pytest.fixture
def gemm_path(request):
    """cyconv-blas runs with the convolutions' GEMMs on BLAS; restored afterwards."""
    from cyconv import _kernels

    impl = request.node.callspec.params["impl"]
    previous = _kernels.set_own_gemm(impl == "cyconv")
    yield
    _kernels.set_own_gemm(previous)


def _torch_step(torch, phase, forward, inputs, grad):
    """A PyTorch forward (no_grad) or forward + backward on leaf tensors."""
    if phase == "fwd":
        def step():
            with torch.no_grad():
                forward()
    else:
        def step():
            for t in inputs:
                t.grad = None
            forward().backward(grad)
    return step


def _torch_pool_step(torch, phase, x, relu):
    """PyTorch's 2x2 max pooling of x (after a ReLU if relu), as a benchmark step."""
    tx = torch.from_numpy(x).requires_grad_()
    gy = torch.ones(x.shape[:2] + (x.shape[2] // 2, x.shape[3] // 2))
    return _torch_step(torch, phase, lambda: torch.nn.functional.max_pool2d(torch.relu(tx) if relu else tx, 2),
                       (tx,), gy)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", CONV)
@pytest.mark.parametrize("impl", ["cyconv", "cyconv-blas"] + IMPLS[1:])
def test_conv2d(benchmark, impl, layer, phase, threads, gemm_path):
    mod = _setup(benchmark, f"conv2d-{layer}", impl, phase, threads)
    xs, ws, pad, grad_input = CONV[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32) * np.float32(0.1)
    b = np.zeros(ws[0], np.float32)
    gy = np.ones((BATCH, ws[0], xs[2], xs[3]), np.float32)
    if impl == "torch":
        tx = mod.from_numpy(x).requires_grad_(grad_input)
        tw, tb = mod.from_numpy(w).requires_grad_(), mod.from_numpy(b).requires_grad_()
        step = _torch_step(mod, phase, lambda: mod.nn.functional.conv2d(tx, tw, tb, padding=pad),
                           (tx, tw, tb), mod.from_numpy(gy))
    else:
        def step():
            mod.conv2d(x, w, b, padding=pad)
            if phase == "fwd+bwd":
                mod.conv2d_backward(gy, x, w, padding=pad, grad_input=grad_input)
    benchmark(step)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", ACT)
@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool2d(benchmark, impl, layer, phase, threads):
    mod = _setup(benchmark, f"max_pool2d-pool{layer}", impl, phase, threads)
    x = np.random.default_rng(0).standard_normal(ACT[layer], dtype=np.float32)
    if impl == "torch":
        step = _torch_pool_step(mod, phase, x, relu=False)
    else:
        def step():
            y, ind = mod.max_pool2d(x, 2, return_indices=True)
            if phase == "fwd+bwd":
                mod.max_pool2d_backward(y, ind, x.shape)
    benchmark(step)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", ACT)
@pytest.mark.parametrize("impl", IMPLS)
def test_relu(benchmark, impl, layer, phase, threads):
    mod = _setup(benchmark, f"relu-relu{layer}", impl, phase, threads)
    x = np.random.default_rng(0).standard_normal(ACT[layer], dtype=np.float32)
    if impl == "torch":
        tx = mod.from_numpy(x).requires_grad_()
        step = _torch_step(mod, phase, lambda: mod.relu(tx), (tx,), mod.ones(x.shape))
    else:
        def step():
            y = mod.relu(x)
            if phase == "fwd+bwd":
                mod.relu_backward(y, x)
    benchmark(step)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", ACT)
@pytest.mark.parametrize("impl", ["cyconv", "cyconv-unfused"] + IMPLS[1:])
def test_relu_max_pool2d(benchmark, impl, layer, phase, threads):
    mod = _setup(benchmark, f"relu+max_pool2d-{layer}", impl, phase, threads)
    x = np.random.default_rng(0).standard_normal(ACT[layer], dtype=np.float32)
    if impl == "torch":
        step = _torch_pool_step(mod, phase, x, relu=True)
    elif impl == "cyconv":
        def step():
            y, ind = F.relu_max_pool2d(x, 2, return_indices=True)
            if phase == "fwd+bwd":
                F.relu_max_pool2d_backward(y, y, ind, x.shape)
    else:  # the two ops one after the other
        def step():
            r = mod.relu(x)
            y, ind = mod.max_pool2d(r, 2, return_indices=True)
            if phase == "fwd+bwd":
                mod.relu_backward(mod.max_pool2d_backward(y, ind, x.shape), r)
    benchmark(step)


# lenet5_classic's activations (after conv1 and conv2) and small_cnn's convolution outputs, batch 64
CLASSIC = {"1": (BATCH, 6, 28, 28), "2": (BATCH, 16, 10, 10)}
SMALL_CNN = {"1": (BATCH, 16, 64, 64), "2": (BATCH, 32, 32, 32), "3": (BATCH, 64, 16, 16)}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", CLASSIC)
@pytest.mark.parametrize("impl", IMPLS)
def test_avg_pool2d(benchmark, impl, layer, phase, threads):
    mod = _setup(benchmark, f"avg_pool2d-classic{layer}", impl, phase, threads)
    x = np.random.default_rng(0).standard_normal(CLASSIC[layer], dtype=np.float32)
    if impl == "torch":
        tx = mod.from_numpy(x).requires_grad_()
        gy = mod.ones(x.shape[:2] + (x.shape[2] // 2, x.shape[3] // 2))
        step = _torch_step(mod, phase, lambda: mod.nn.functional.avg_pool2d(tx, 2), (tx,), gy)
    else:
        def step():
            y = mod.avg_pool2d(x, 2)
            if phase == "fwd+bwd":
                mod.avg_pool2d_backward(y, x.shape, 2)
    benchmark(step)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", CLASSIC)
@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
@pytest.mark.parametrize("impl", IMPLS)
def test_saturating(benchmark, impl, op, layer, phase, threads):
    mod = _setup(benchmark, f"{op}-classic{layer}", impl, phase, threads)
    x = np.random.default_rng(0).standard_normal(CLASSIC[layer], dtype=np.float32)
    if impl == "torch":
        tx = mod.from_numpy(x).requires_grad_()
        step = _torch_step(mod, phase, lambda: getattr(mod, op)(tx), (tx,), mod.ones(x.shape))
    else:
        forward, backward = getattr(mod, op), getattr(mod, f"{op}_backward")

        def step():
            y = forward(x)
            if phase == "fwd+bwd":
                backward(y, y)
    benchmark(step)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", SMALL_CNN)
@pytest.mark.parametrize("impl", IMPLS)
def test_batch_norm(benchmark, impl, layer, phase, threads):
    """Training mode: batch statistics, running averages updated, and the backward through them."""
    mod = _setup(benchmark, f"batch_norm-small_cnn{layer}", impl, phase, threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SMALL_CNN[layer], dtype=np.float32)
    C = x.shape[1]
    if impl == "torch":
        bn = mod.nn.BatchNorm2d(C)
        tx = mod.from_numpy(x).requires_grad_()
        step = _torch_step(mod, phase, lambda: bn(tx), (tx, bn.weight, bn.bias), mod.ones(x.shape))
    else:
        weight, bias = np.ones(C, np.float32), np.zeros(C, np.float32)
        running_mean, running_var = np.zeros(C, np.float32), np.ones(C, np.float32)
        grad = np.ones_like(x)

        def step():
            y, mean, invstd = mod.batch_norm(x, running_mean, running_var, weight, bias, True, return_stats=True)
            if phase == "fwd+bwd":
                mod.batch_norm_backward(grad, x, weight, mean, invstd, True)
    benchmark(step)


@pytest.mark.parametrize("impl", IMPLS)
def test_adam_step(benchmark, impl, threads):
    """One Adam step over LeNet-5's 1.26 M parameters (10 arrays), gradients given."""
    mod = _setup(benchmark, "adam-lenet5", impl, "step", threads)
    from cyconv import models, optim

    params = models.lenet5(rng=np.random.default_rng(0)).parameters()
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(p.data.shape, dtype=np.float32) for p in params]
    if impl == "torch":
        tparams = [mod.nn.Parameter(mod.from_numpy(p.data.copy())) for p in params]
        for tp, g in zip(tparams, grads):
            tp.grad = mod.from_numpy(g)
        step = mod.optim.Adam(tparams, lr=1e-3, foreach=True).step
    elif impl == "cyconv":
        for p, g in zip(params, grads):
            p.grad = g
        step = optim.Adam(params, lr=1e-3).step
    else:
        state = [(p.data.copy(), g, np.zeros_like(g), np.zeros_like(g)) for p, g in zip(params, grads)]
        count = [0]

        def step():
            count[0] += 1
            for p, g, m, v in state:
                mod.adam_update(p, g, m, v, count[0])
    benchmark(step)


# MobileNetV2's depthwise 3x3 layers (C, H, W, stride), padding 1, at batch 1 (inference) and 32
# MobileNetV2's depthwise layers (issue 20's list): (C, H, W, stride)
DEPTHWISE = {"32x112s1": (32, 112, 112, 1), "96x112s2": (96, 112, 112, 2), "144x56s1": (144, 56, 56, 1),
             "144x56s2": (144, 56, 56, 2), "192x28s1": (192, 28, 28, 1), "384x14s1": (384, 14, 14, 1),
             "576x14s1": (576, 14, 14, 1), "576x14s2": (576, 14, 14, 2), "960x7s1": (960, 7, 7, 1)}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("layer", DEPTHWISE)
@pytest.mark.parametrize("impl", ["cyconv", "cyconv-im2col"] + IMPLS[1:])
def test_depthwise_conv2d(benchmark, impl, layer, batch, phase, threads):
    """Depthwise 3x3 (groups == channels) on its per-plane kernel. "cyconv-im2col" is what a model
    had to do before groups existed: one plain conv2d (im2col + GEMM) per channel (batch 1 only)."""
    mod = _setup(benchmark, f"depthwise_conv2d-{layer}-b{batch}", impl, phase, threads)
    C, H, W, s = DEPTHWISE[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
    w = rng.standard_normal((C, 1, 3, 3), dtype=np.float32)
    b = np.zeros(C, np.float32)
    gy = np.ones((batch, C, (H - 1) // s + 1, (W - 1) // s + 1), np.float32)
    if impl == "torch":
        tx = mod.from_numpy(x).requires_grad_()
        tw, tb = mod.from_numpy(w).requires_grad_(), mod.from_numpy(b).requires_grad_()
        step = _torch_step(mod, phase, lambda: mod.nn.functional.conv2d(tx, tw, tb, stride=s, padding=1, groups=C),
                           (tx, tw, tb), mod.from_numpy(gy))
    elif impl == "cyconv-im2col":
        if batch > 1:
            pytest.skip("the im2col baseline is timed at batch 1 only (it is C plain convolutions)")
        planes = [np.ascontiguousarray(x[:, c:c + 1]) for c in range(C)]

        def step():
            for c in range(C):
                F.conv2d(planes[c], w[c:c + 1], b[c:c + 1], stride=s, padding=1)
                if phase == "fwd+bwd":
                    F.conv2d_backward(gy[:, c:c + 1], planes[c], w[c:c + 1], stride=s, padding=1)
    else:
        def step():
            mod.conv2d(x, w, b, stride=s, padding=1, groups=C)
            if phase == "fwd+bwd":
                mod.conv2d_backward(gy, x, w, stride=s, padding=1, groups=C)
    benchmark(step)


# 3x3 stride-1 layers of ResNet-18 (224x224 input) at batch 1 and 32, ResNet-20 (32x32) at batch 64,
# and LeNet-5's conv2 (5x5) at batch 64: (batch, C = O, H = W, kernel).
ALGO_LAYERS = {
    **{f"r18-{c}x{h}-b{n}": (n, c, h, 3) for c, h in ((64, 56), (128, 28), (256, 14), (512, 7)) for n in (1, 32)},
    **{f"r20-{c}x{h}-b64": (64, c, h, 3) for c, h in ((16, 32), (32, 16), (64, 8))},
    "lenet-conv2-b64": (64, 20, 14, 5),
}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("layer", ALGO_LAYERS)
@pytest.mark.parametrize("impl", ["cyconv-im2col", "cyconv-winograd", "cyconv-auto", "cyconv-measure", "torch"])
def test_conv2d_algorithm(benchmark, impl, layer, phase, threads):
    """One convolution per algorithm ("cyconv-winograd": the tile conv_algorithm picks, F(4x4) if it
    picks im2col; fwd+bwd: the input gradient by the same algorithm, the weight gradient im2col's;
    "cyconv-measure": the measured choice, timed before the benchmark starts, its pick in extra_info)."""
    mod = _setup(benchmark, f"conv2d-algorithm-{layer}", impl, phase, threads)
    N, C, H, r = ALGO_LAYERS[layer]
    O = 50 if r == 5 else C
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = (rng.standard_normal((O, C, r, r)) / np.sqrt(C * r * r)).astype(np.float32)
    b = np.zeros(O, np.float32)
    gy = np.ones((N, O, H, H), np.float32)
    if impl == "torch":
        tx = mod.from_numpy(x).requires_grad_()
        tw, tb = mod.from_numpy(w).requires_grad_(), mod.from_numpy(b).requires_grad_()
        step = _torch_step(mod, phase, lambda: mod.nn.functional.conv2d(tx, tw, tb, padding=r // 2), (tx, tw, tb),
                           mod.from_numpy(gy))
    else:
        algorithm = impl.split("-")[1]
        if algorithm == "winograd":
            chosen = F.conv_algorithm(C, O, H, H, r, r, 1, r // 2, batch=N)
            algorithm = chosen if chosen.startswith("winograd") else ("winograd2" if r == 5 else "winograd4")

        def step():
            F.conv2d(x, w, b, padding=r // 2, algorithm=algorithm)
            if phase == "fwd+bwd":
                F.conv2d_backward(gy, x, w, padding=r // 2, algorithm=algorithm)
        benchmark.extra_info["algorithm"] = _measured(step) if algorithm == "measure" else algorithm
    benchmark(step)


def _measured(step):
    """Run step once, on an empty cache of measured choices, so that its algorithm="measure" calls time
    their candidates outside the benchmark; what they chose, "forward / backward"."""
    F._measured.clear()
    step()
    chosen = {k[0]: a for k, (a, _) in F.measured_conv_algorithms().items()}
    return " / ".join(chosen[d] for d in ("forward", "backward") if d in chosen)


# The layers algorithm="direct" (csrc/direct.c) is for: ResNet-18's stem, strided 1x1 shortcuts and
# 3x3 stride-2 layers (224x224 input): (C, O, H = W, kernel, stride, padding); forward only (the
# gradients are im2col's).
DIRECT_LAYERS = {"stem-7x7s2": (3, 64, 224, 7, 2, 3), "1x1s2-64x56": (64, 128, 56, 1, 2, 0),
                 "1x1s2-256x14": (256, 512, 14, 1, 2, 0), "3x3s2-64x56": (64, 128, 56, 3, 2, 1)}


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("layer", DIRECT_LAYERS)
@pytest.mark.parametrize("impl", ["cyconv-im2col", "cyconv-direct", "cyconv-measure", "torch"])
def test_conv2d_direct(benchmark, impl, layer, batch, threads):
    mod = _setup(benchmark, f"conv2d-direct-{layer}-b{batch}", impl, "fwd", threads)
    C, O, H, k, s, p = DIRECT_LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
    w = (rng.standard_normal((O, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    if impl == "torch":
        tx, tw = mod.from_numpy(x), mod.from_numpy(w)
        step = _torch_step(mod, "fwd", lambda: mod.nn.functional.conv2d(tx, tw, None, s, p), (tx, tw), None)
    else:
        algorithm = impl.split("-")[1]

        def step():
            F.conv2d(x, w, None, s, p, algorithm=algorithm)
        benchmark.extra_info["algorithm"] = _measured(step) if algorithm == "measure" else algorithm
    benchmark(step)
