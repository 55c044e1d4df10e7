"""cyconv.onnx: export is a valid ONNX model that ONNX Runtime runs to cyconv's outputs; load takes the
graphs cyconv runs (hand-built ones, and PyTorch's own export when torch is installed), refuses the
others naming node, op type and reason, and refuses malformed files clearly and without huge
allocations; export -> load is exact."""

import math
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="cyconv.onnx's tests need the onnx package (in cyconv[test])")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is these tests' oracle (in cyconv[test])")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cyconv  # noqa: E402
import cyconv.onnx as conx  # noqa: E402
from cyconv import models, nn  # noqa: E402
from conftest import random_array  # noqa: E402


def rng(seed=0):
    return np.random.default_rng(seed)


def run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def batch_norm(cls, channels, dtype, g):
    layer = cls(channels, eps=1e-3, momentum=0.2, dtype=dtype)
    for a in (layer.running_mean, layer.weight.data, layer.bias.data):
        a[...] = g.standard_normal(channels)
    layer.running_var[...] = g.random(channels) + 0.5
    return layer


def every_layer(dtype=np.float32):
    g = rng(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=dtype, rng=g), batch_norm(nn.BatchNorm2d, 4, dtype, g), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 5, (3, 2), stride=(1, 2), padding=(1, 0), dtype=dtype, rng=g), nn.Tanh(),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Conv2d(5, 6, 1, dtype=dtype, rng=g, bias=False),
        nn.Sigmoid(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.25, rng=g), nn.Linear(12, 7, dtype=dtype, rng=g),
        batch_norm(nn.BatchNorm1d, 7, dtype, g), nn.ReLU(), nn.Linear(7, 5, dtype=dtype, rng=g),
        nn.LogSoftmax(dim=1)).eval()


# ---------------------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_export_runs_in_onnxruntime_as_in_cyconv(tmp_path, dtype):
    model = every_layer(dtype)
    path = tmp_path / "every.onnx"
    conx.export(model, path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["input"] and proto.graph.output[0].name == "logits"
    if dtype == np.float64:  # ONNX Runtime's CPU provider has no double Conv: checked valid, and loaded back
        x = random_array(rng(1), (2, 2, 8, 8), dtype)
        np.testing.assert_allclose(conx.load(path)(x.astype(np.float32)), model(x), rtol=1e-5, atol=1e-6)
        return
    for batch in (1, 3):  # the batch dimension is dynamic
        x = random_array(rng(batch), (batch, 2, 8, 8), dtype)
        np.testing.assert_allclose(run_ort(path, x), model(x), rtol=1e-5, atol=1e-6)


def test_export_then_load_is_exact(tmp_path):
    model = models.lenet5(rng=rng(2)).eval()
    path = tmp_path / "lenet5.onnx"
    conx.export(model, path, input_shape=(1, 28, 28))
    loaded = conx.load(path)
    assert [type(m) for m in loaded] == [type(m) for m in model]
    for (name, p), (name2, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert name == name2
        np.testing.assert_array_equal(p.data, q.data)
    x = random_array(rng(3), (4, 1, 28, 28), np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_every_layer_round_trip(tmp_path):
    model = every_layer()
    path = tmp_path / "every.onnx"
    conx.export(model, path)
    x = random_array(rng(4), (3, 2, 8, 8), np.float32)
    loaded = conx.load(path).eval()
    assert [type(m) for m in loaded] == [type(m) for m in model]
    np.testing.assert_array_equal(loaded(x), model(x))
    for a, b in zip(loaded, model):
        if isinstance(a, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert (a.eps, a.momentum) == pytest.approx((b.eps, b.momentum))
            np.testing.assert_array_equal(a.running_var, b.running_var)
        if isinstance(a, nn.Dropout):
            assert a.p == b.p


def test_batch_norm_without_running_statistics_has_no_onnx_form(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng()), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(TypeError, match="no running statistics"):
        conx.export(model, tmp_path / "bn.onnx")


def test_export_writes_atomically_and_refuses_what_it_cannot_write(tmp_path):
    class Mine(nn.Module):  # a layer of its own (a backward): nothing in ONNX says what it computes
        def forward(self, x):
            return x

        def backward(self, grad_output, *, input_grad=True):
            return grad_output

    path = tmp_path / "m.onnx"
    with pytest.raises(TypeError, match="no ONNX form for Mine \\(layer '1'\\)"):
        conx.export(nn.Sequential(nn.Linear(2, 2, rng=rng()), Mine()), path)
    with pytest.raises(ValueError, match="input_shape"):
        conx.export(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, rng=rng())), path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_mlp_export_with_input_shape(tmp_path):
    model = models.mlp(hidden=16, rng=rng(5)).eval()
    path = tmp_path / "mlp.onnx"
    conx.export(model, path, input_shape=(1, 28, 28))
    x = random_array(rng(6), (2, 1, 28, 28), np.float32)
    np.testing.assert_allclose(run_ort(path, x), model(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# load: hand-built graphs of every supported form


def make_model(nodes, initializers, in_dims, out_name="y", opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


W = random_array(rng(7), (3, 2, 3, 3), np.float32)
B = random_array(rng(8), (3,), np.float32)


@pytest.mark.parametrize("attrs", [
    dict(auto_pad="VALID"), dict(auto_pad="SAME_UPPER"), dict(pads=[1, 0, 1, 0], strides=[2, 1]), dict(),
], ids=["valid", "same-upper", "pads-strides", "defaults"])
def test_conv_forms(tmp_path, attrs):
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"w": W, "b": B},
                       [None, 2, 7, 6])
    path = save(tmp_path, model)
    x = random_array(rng(9), (2, 2, 7, 6), np.float32)
    np.testing.assert_allclose(conx.load(path)(x), run_ort(path, x), rtol=1e-5, atol=1e-6)


def test_matmul_add_gemm_transb0_reshape_dropout_identity_softmax(tmp_path):
    w1 = random_array(rng(10), (12, 5), np.float32)   # MatMul's (in, out)
    b1 = random_array(rng(11), (5,), np.float32)
    w2 = random_array(rng(12), (5, 4), np.float32)   # Gemm with transB 0: (in, out)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Dropout", ["a"], ["d"]), helper.make_node("Identity", ["d"], ["i"]),
             helper.make_node("Gemm", ["i", "w2"], ["g"], transB=0), helper.make_node("Softmax", ["g"], ["y"])]
    model = make_model(nodes, {"shape": np.array([0, -1], np.int64), "w1": w1, "b1": b1, "w2": w2},
                       [None, 3, 2, 2])
    path = save(tmp_path, model)
    x = random_array(rng(13), (3, 3, 2, 2), np.float32)
    kept = conx.load(path)
    assert type(kept[-1]) is nn.Softmax
    np.testing.assert_allclose(kept(x), run_ort(path, x), rtol=1e-5, atol=1e-6)
    dropped = conx.load(path, final_softmax="drop")
    assert type(dropped[-1]) is nn.Linear
    np.testing.assert_allclose(cyconv.functional.softmax(dropped(x)), run_ort(path, x), rtol=1e-5, atol=1e-6)


def test_batch_normalization_after_conv_and_after_gemm(tmp_path):
    g = rng(20)
    c1 = {f"{k}1": v for k, v in zip(("s", "b", "m"), g.standard_normal((3, 3)).astype(np.float32))}
    c1["v1"] = (g.random(3) + 0.5).astype(np.float32)
    c2 = {f"{k}2": v for k, v in zip(("s", "b", "m"), g.standard_normal((3, 4)).astype(np.float32))}
    c2["v2"] = (g.random(4) + 0.5).astype(np.float32)
    w2 = random_array(g, (4, 3 * 5 * 4), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s1", "b1", "m1", "v1"], ["n1"], epsilon=1e-3),
             helper.make_node("Flatten", ["n1"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["l"], transB=1),
             helper.make_node("BatchNormalization", ["l", "s2", "b2", "m2", "v2"], ["y"], momentum=0.8)]
    path = save(tmp_path, make_model(nodes, {"w": W, "b": B, "w2": w2, **c1, **c2}, [None, 2, 7, 6]))
    model = conx.load(path)
    assert [type(m) for m in model] == [nn.Conv2d, nn.BatchNorm2d, nn.Flatten, nn.Linear, nn.BatchNorm1d]
    assert model[1].eps == pytest.approx(1e-3) and model[4].momentum == pytest.approx(0.2)
    x = random_array(rng(21), (2, 2, 7, 6), np.float32)
    np.testing.assert_allclose(model.eval()(x), run_ort(path, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cyconv.compile(model)(x), run_ort(path, x), rtol=1e-5, atol=1e-5)


def test_batch_normalization_refusals(tmp_path):
    stats = {k: np.ones(2, np.float32) for k in ("s", "b", "m", "v")}
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1, name="bn")
    with pytest.raises(conx.UnsupportedModelError, match=r"node bn \(BatchNormalization\): training_mode 1"):
        conx.load(save(tmp_path, make_model([bn], stats, [None, 2, 4, 4])))
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    with pytest.raises(conx.UnsupportedModelError, match=r"cannot tell whether its input is \(N, C\)"):
        conx.load(save(tmp_path, make_model([bn], stats, None)))
    with pytest.raises(conx.InvalidModelError, match=r"negative variance"):
        conx.load(save(tmp_path, make_model([bn], {**stats, "v": -np.ones(2, np.float32)}, [None, 2, 4, 4])))
    with pytest.raises(conx.InvalidModelError, match=r"must all have shape \(2,\)"):
        conx.load(save(tmp_path, make_model([bn], {**stats, "m": np.ones(3, np.float32)}, [None, 2, 4, 4])))


@pytest.mark.parametrize("op, attrs, cls", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), nn.MaxPool2d),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2]), nn.AvgPool2d),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), nn.AvgPool2d),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), nn.AvgPool2d),  # ONNX's default: exclude pad
    ("Sigmoid", {}, nn.Sigmoid), ("Tanh", {}, nn.Tanh), ("Relu", {}, nn.ReLU),
], ids=["maxpool", "avgpool", "avgpool-incl", "avgpool-excl", "sigmoid", "tanh", "relu"])
def test_single_ops(tmp_path, op, attrs, cls):
    path = save(tmp_path, make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {}, [None, 2, 7, 7]))
    layer = conx.load(path)[0]
    assert type(layer) is cls
    x = random_array(rng(14), (2, 2, 7, 7), np.float32)
    np.testing.assert_allclose(conx.load(path)(x), run_ort(path, x), rtol=1e-5, atol=1e-6)


def test_a_pytorch_model_loads_and_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: its export cannot be checked here")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(20, 50, 5, padding=2), torch.nn.BatchNorm2d(50), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(2450, 500), torch.nn.BatchNorm1d(500),
        torch.nn.ReLU(), torch.nn.Linear(500, 10))
    # A few training steps, so the weights are trained ones, not the initial draw.
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    data = torch.randn(32, 1, 28, 28)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(data), torch.randint(0, 10, (32,))).backward()
        opt.step()
    net.eval()
    path = tmp_path / "torch_lenet.onnx"
    x = torch.randn(1, 1, 28, 28)
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter; the default one needs onnxscript
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    model = conx.load(path)
    batch = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        want = net(batch).numpy()
    np.testing.assert_allclose(model(batch.numpy()), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cyconv.compile(model)(batch.numpy()), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# load: refused graphs and files


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 0, 0])], {"w": W}, r"\(Conv\): pads \[1, 0, 0, 0\]"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER")], {"w": W}, r"auto_pad SAME_LOWER"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], {"w": W},
     r"auto_pad SAME_UPPER \(with strides \[2, 2\]"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1)], {}, r"\(MaxPool\): ceil_mode 1"),
    ([helper.make_node("Concat", ["x", "x"], ["y"], axis=2, name="cat")], {}, r"node cat \(Concat\): axis 2"),
    ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"])],
     {"c": np.ones(2, np.float32)}, r"node #1 \(Add\): adds a constant to 'r'"),
    ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["a"]),
      helper.make_node("Mul", ["a", "a"], ["y"])], {}, r"node #2 \(Mul\): computes on 'a'"),
    ([helper.make_node("Erf", ["x"], ["y"])], {}, r"\(Erf\): op type not supported"),
    ([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], {},
     r"\(Softmax\): only as the graph's last node"),
    ([helper.make_node("Gemm", ["x", "w"], ["y"], alpha=2.0)], {"w": np.ones((2, 2), np.float32)},
     r"\(Gemm\): alpha 2.0"),
    ([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([2, -1, 3], np.int64)},
     r"\(Reshape\): shape \[2, -1, 3\]"),
    ([helper.make_node("Conv", ["x", "x"], ["y"])], {}, r"\(Conv\): input 'x' must be a constant"),
    ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"lo": np.float32(-np.inf), "hi": np.float32(1)},
     r"\(Clip\): bounds \(-inf, 1.0\)"),
    ([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2])], {}, r"\(ReduceMean\): axes \[1, 2\]"),
], ids=["asymmetric-pads", "same-lower", "same-upper-strided", "ceil-mode", "concat-axis",
        "add-constant", "mul-of-values", "unknown-op", "softmax-in-the-middle", "gemm-alpha", "reshape",
        "weight-not-constant", "clip-bounds", "reduce-mean-axes"])
def test_unsupported_graphs_are_refused_naming_node_op_and_reason(tmp_path, nodes, inits, match):
    path = save(tmp_path, make_model(nodes, inits, [None, 2, 6, 6]))
    with pytest.raises(conx.UnsupportedModelError, match=match):
        conx.load(path)


def test_errors_are_value_errors():
    assert issubclass(conx.UnsupportedModelError, ValueError) and issubclass(conx.InvalidModelError, ValueError)


def valid_bytes(tmp_path):
    path = tmp_path / "valid.onnx"
    conx.export(models.lenet5(rng=rng()).eval(), path)
    return path.read_bytes()


@pytest.mark.parametrize("make", [
    lambda b: b"", lambda b: b"not an onnx model at all\n" * 10, lambda b: bytes(range(256)) * 8,
    lambda b: b[: len(b) // 2], lambda b: b[: len(b) - 7],
], ids=["empty", "text", "binary-noise", "half", "truncated-tail"])
def test_malformed_files_are_refused_clearly(tmp_path, make):
    path = tmp_path / "bad.onnx"
    path.write_bytes(make(valid_bytes(tmp_path)))
    with pytest.raises(conx.InvalidModelError, match=r"bad.onnx: "):
        conx.load(path)


def test_an_initializer_claiming_more_than_it_holds_is_refused_without_allocating_it(tmp_path):
    # dims claiming 4e9 floats (16 GB) backed by 8 bytes: refused from the counts, never materialised.
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1000, 1000, 1000, 4], raw_data=b"\0" * 8)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = save(tmp_path, model)
    tracemalloc.start()
    try:
        with pytest.raises(conx.InvalidModelError, match=r"initializer 'w' claims dims \[1000, 1000, 1000, 4\] "
                                                         r"\(4000000000 values\) but holds 2"):
            conx.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        conx.load(tmp_path / "nowhere.onnx")
    with pytest.raises(conx.InvalidModelError, match="is a directory"):
        conx.load(tmp_path)


def test_bad_final_softmax_flag(tmp_path):
    with pytest.raises(ValueError, match="final_softmax must be 'keep' or 'drop'"):
        conx.load(tmp_path / "x.onnx", final_softmax="yes")


def test_without_the_onnx_package_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'cyconv\[onnx\]'"):
        conx.export(models.lenet5(rng=rng()), tmp_path / "m.onnx")
    with pytest.raises(ImportError, match=r"pip install 'cyconv\[onnx\]'"):
        conx.load(tmp_path / "m.onnx")
    assert math.isfinite(1.0)  # cyconv itself still imports and runs without onnx
    assert cyconv.compile(models.lenet5(rng=rng()))(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------------------
# load: graphs that branch and merge, from PyTorch's exporters (tests/torch_models.py)

TORCH_MODELS = {  # name -> (builder of tests/torch_models.py, one image's shape)
    "resnet18": (lambda tm: tm.resnet18(), (3, 64, 64)),  # fully convolutional + global pool: 64x64 is enough
    "mobilenet_v2_0.25": (lambda tm: tm.mobilenet_v2(width_mult=0.25), (3, 64, 64)),
    "mobilenet_v2": (lambda tm: tm.mobilenet_v2(), (3, 64, 64)),
    "resnet20": (lambda tm: tm.resnet20(), (3, 32, 32)),
}


def torch_models():
    pytest.importorskip("torch", reason="PyTorch is not installed: its exports cannot be checked here")
    import torch_models as tm

    return tm


def torch_export(tmp_path, name, *, opset, fold, dynamo):
    """The model `name`, seeded, with BatchNorm statistics that are not the identity, exported in eval mode."""
    tm = torch_models()  # skips without torch
    import torch

    build, shape = TORCH_MODELS[name]
    torch.manual_seed(0)
    net = build(tm)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.5, 0.5, generator=g)
    net.eval()
    path = tmp_path / f"{name}-{opset}-{fold}-{dynamo}.onnx"
    x = torch.randn(1, *shape)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=opset, external_data=False,
                              input_names=["input"], output_names=["logits"], do_constant_folding=fold,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, do_constant_folding=fold,
                              training=torch.onnx.TrainingMode.EVAL, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path, shape


def assert_matches_ort(path, model, shape, batch=2):
    x = random_array(rng(30), (batch, *shape), np.float32)
    want = run_ort(path, x)
    got = model(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    return np.abs(got - want).max()


def test_torch_models_have_torchvisions_parameter_counts():
    tm = torch_models()
    assert tm.count_parameters(tm.resnet18()) == 11_689_512
    assert tm.count_parameters(tm.mobilenet_v2()) == 3_504_872
    assert tm.count_parameters(tm.resnet20()) == 272_474
    names = dict(tm.mobilenet_v2().named_parameters())
    assert {"features.0.0.weight", "features.0.1.weight", "features.1.conv.0.0.weight", "features.2.conv.0.0.weight",
            "features.18.0.weight", "classifier.1.weight"} <= set(names)
    assert {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var"} <= set(tm.resnet18().state_dict())


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2_0.25", "resnet20"])
def test_torchscript_exports_load_and_match_onnxruntime(tmp_path, name, opset, fold):
    path, shape = torch_export(tmp_path, name, opset=opset, fold=fold, dynamo=False)
    model = conx.load(path)
    assert type(model) is nn.Graph
    assert_matches_ort(path, model, shape)
    keys = set(model.state_dict())
    first = "features.0.0.weight" if name.startswith("mobilenet") else "conv1.weight"
    assert first in keys  # PyTorch's module paths name the layers
    if not fold:  # BatchNorm kept: the state_dict is PyTorch's, layer for layer
        import torch_models as tm

        assert keys == set(TORCH_MODELS[name][0](tm).state_dict())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2_0.25", "resnet20"])
def test_dynamo_exports_load_and_match_onnxruntime(tmp_path, name):
    path, shape = torch_export(tmp_path, name, opset=18, fold=True, dynamo=True)
    assert_matches_ort(path, conx.load(path), shape, batch=3)


def test_mobilenet_v2_full_width(tmp_path):
    path, shape = torch_export(tmp_path, "mobilenet_v2", opset=17, fold=True, dynamo=False)
    assert_matches_ort(path, conx.load(path), shape, batch=1)


# ---------------------------------------------------------------------------------------------------------
# load: graphs as older exporters wrote them (the ONNX model zoo's classic networks)


def old_style(nodes, initializers, in_dims, opset, inputs_too=True):
    """IR 3: every initializer is listed among the graph inputs too."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)]
    if inputs_too:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    return model


def zoo_net(legacy):
    """Conv (weight transposed and bias unsqueezed by constant subgraphs) -> BatchNormalization (scale from
    ConstantOfShape) -> Clip(0, inf) -> a branch: Sum of two convolutions -> GlobalAveragePool -> Reshape
    (0, -1) -> Gemm (weight transposed). legacy: opset 6 (BatchNormalization is_test, Gemm broadcast, a
    Constant in place of ConstantOfShape), which ONNX Runtime no longer runs; else opset 9."""
    g = rng(40)
    f = lambda *shape: g.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = {"wt": f(2, 4, 3, 3), "b2": f(1, 4), "shift": f(4), "mean": f(4), "var": g.random(4).astype(np.float32) + 0.5,
             "w3": f(4, 4, 1, 1), "w4": f(4, 4, 3, 3), "shape": np.array([0, -1], np.int64), "wg": f(5, 4),
             "cg": f(5)}
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0, 2, 3]),
             helper.make_node("Squeeze", ["b2"], ["b"], axes=[0]),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv")]
    bn = dict(epsilon=1e-3)
    if legacy:
        nodes.append(helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(
            np.full(4, 1.5, np.float32))))
        bn.update(is_test=1, spatial=1)
    else:
        inits["n"] = np.array([4], np.int64)
        nodes.append(helper.make_node("ConstantOfShape", ["n"], ["scale"], value=numpy_helper.from_array(
            np.array([1.5], np.float32))))
    nodes += [helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n1"], **bn),
              helper.make_node("Clip", ["n1"], ["r"], min=0.0),
              helper.make_node("Conv", ["r", "w3"], ["a"], kernel_shape=[1, 1]),
              helper.make_node("Conv", ["r", "w4"], ["b3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Sum", ["a", "b3", "r"], ["s"]),
              helper.make_node("GlobalAveragePool", ["s"], ["p"]),
              helper.make_node("Reshape", ["p", "shape"], ["flat"]),
              helper.make_node("Transpose", ["wg"], ["wgt"], perm=[1, 0]),
              helper.make_node("Gemm", ["flat", "wgt", "cg"], ["y"], **({"broadcast": 1} if legacy else {}))]
    return nodes, inits


def test_an_old_style_graph_loads_and_matches_onnxruntime(tmp_path):
    nodes, inits = zoo_net(legacy=False)
    path = save(tmp_path, old_style(nodes, inits, [1, 2, 6, 6], opset=9))
    model = conx.load(path)
    assert type(model) is nn.Graph
    assert_matches_ort(path, model, (2, 6, 6), batch=1)
    # The same network as opset 6 wrote it: loads to the same model.
    nodes, inits = zoo_net(legacy=True)
    legacy = conx.load(save(tmp_path, old_style(nodes, inits, [1, 2, 6, 6], opset=6), "legacy.onnx"))
    x = random_array(rng(41), (1, 2, 6, 6), np.float32)
    np.testing.assert_allclose(legacy(x), model(x), rtol=1e-6, atol=1e-6)


def test_conv_bias_as_a_separate_add_and_matmul_add(tmp_path):
    g = rng(42)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Add", ["c", "cb"], ["ca"]),  # a per-channel (C, 1, 1) constant
             helper.make_node("Relu", ["ca"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "wm"], ["m"]), helper.make_node("Add", ["bm", "m"], ["y"])]
    inits = {"w": W, "cb": g.standard_normal((3, 1, 1)).astype(np.float32),
             "wm": g.standard_normal((3 * 4 * 4, 5)).astype(np.float32), "bm": g.standard_normal(5).astype(np.float32)}
    path = save(tmp_path, old_style(nodes, inits, [None, 2, 6, 6], opset=7))
    model = conx.load(path)
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert model[0].bias is not None and model[3].bias is not None
    assert_matches_ort(path, model, (2, 6, 6))


def test_reduce_mean_keepdims_0_feeding_a_gemm(tmp_path):
    for opset, axes in ((13, {"axes": [2, 3]}), (18, {})):
        inputs = ["x", "axes"] if opset >= 18 else ["x"]
        nodes = [helper.make_node("ReduceMean", inputs, ["m"], keepdims=0, **axes),
                 helper.make_node("Gemm", ["m", "w"], ["y"], transB=1)]
        inits = {"w": random_array(rng(43), (4, 2), np.float32)}
        if opset >= 18:
            inits["axes"] = np.array([-1, -2], np.int64)
        path = save(tmp_path, make_model(nodes, inits, [None, 2, 5, 5], opset=opset))
        assert_matches_ort(path, conx.load(path), (2, 5, 5))


def test_clip_forms(tmp_path):
    for bounds, cls in (((0, 6), "ReLU6"), ((-1, 2), "Hardtanh"), ((0, None), "ReLU")):
        inputs = ["x", "lo"] + (["hi"] if bounds[1] is not None else [])
        inits = {"lo": np.float32(bounds[0]), **({"hi": np.float32(bounds[1])} if bounds[1] is not None else {})}
        path = save(tmp_path, make_model([helper.make_node("Clip", inputs, ["y"])], inits, [None, 2, 4, 4]))
        model = conx.load(path)
        assert type(model[0]).__name__ == cls
        assert_matches_ort(path, model, (2, 4, 4))


# ---------------------------------------------------------------------------------------------------------
# load: graphs that are not DAGs cyconv runs, each refused naming the node


def relu(a, b, name):
    return helper.make_node("Relu", [a], [b], name=name)


@pytest.mark.parametrize("nodes, error, match", [
    ([relu("x", "a", "first"), relu("b", "y", "second"), relu("y", "b", "third")], conx.InvalidModelError,
     r"node second \(Relu\): is on a cycle: second -> third -> second"),
    ([relu("a", "y", "late"), relu("x", "a", "early")], conx.InvalidModelError,
     r"node late \(Relu\): reads 'a' before node early \(Relu\) produces it"),
    ([relu("x", "a", "one"), relu("nowhere", "y", "two")], conx.InvalidModelError,
     r"node two \(Relu\): reads 'nowhere', which no node produces"),
    ([relu("x", "y", "one"), helper.make_node("Relu", ["x"], [], name="mute")], conx.InvalidModelError,
     r"node mute \(Relu\): has no outputs"),
    ([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
      helper.make_node("Add", ["p", "x"], ["y"], name="merge")], conx.UnsupportedModelError,
     r"node merge \(Add\): adds values of shapes \(2, 3, 3\) and \(2, 6, 6\)"),
    ([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
      helper.make_node("Concat", ["p", "x"], ["y"], axis=1, name="join")], conx.InvalidModelError,
     r"node join \(Concat\): inputs of shapes \(2, 3, 3\) and \(2, 6, 6\)"),
    ([helper.make_node("softmax", ["x"], ["y"], name="s")], conx.UnsupportedModelError,
     r"node s \(softmax\): op type not supported"),
    ([helper.make_node("_init__", ["x"], ["y"], name="i")], conx.UnsupportedModelError,
     r"node i \(_init__\): op type not supported"),
    ([helper.make_node("Conv", ["x"], ["y"], name="c")], conx.InvalidModelError,
     r"node c \(Conv\): has inputs \['x'\]; Conv takes 2 to 3"),
], ids=["cycle", "used-before-produced", "never-produced", "no-outputs", "add-shapes", "concat-shapes",
        "op-softmax", "op-init", "too-few-inputs"])
def test_graphs_that_are_not_runnable_dags_are_refused_naming_the_node(tmp_path, nodes, error, match):
    with pytest.raises(error, match=match):
        conx.load(save(tmp_path, make_model(nodes, {}, [None, 2, 6, 6])))


def test_several_graph_outputs_are_refused_naming_the_nodes(tmp_path):
    graph = helper.make_graph([relu("x", "a", "one"), relu("a", "b", "two")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(conx.UnsupportedModelError, match=r"2 outputs \['a', 'b'\] \(from node one \(Relu\), "
                                                         r"node two \(Relu\)\)"):
        conx.load(save(tmp_path, model))


# ---------------------------------------------------------------------------------------------------------
# export: models that branch and merge


class Residual(nn.Module):
    """A torchvision-style basic block: a forward, `y + x`, one ReLU called twice."""

    def __init__(self, c, g):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False, rng=g), batch_norm(nn.BatchNorm2d, c,
                                                                                          np.float32, g)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, rng=g)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.conv2(y) + x)


class Net(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, rng=g)
        self.block = Residual(4, g)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3, rng=g))

    def forward(self, x):
        return self.head(self.pool(self.block(self.stem(x))))


def graph_model(g):
    m = nn.Graph()
    x = m.input()
    a = m.node("a", nn.Conv2d(2, 3, 3, padding=1, rng=g), x)
    b = m.node("b", nn.Conv2d(2, 3, 1, rng=g), x)
    s = m.node("sum", nn.Add(), a, b, m.node("c", nn.Conv2d(2, 3, 3, padding=1, rng=g), x))
    cat = m.node("cat", nn.Concat(), s, m.node("id", nn.Identity(), a))
    m.output(m.node("tanh", nn.Tanh(), m.node("avg", nn.AvgPool2d(2), cat)))
    return m.eval()


@pytest.mark.parametrize("make", [lambda: Net(rng(50)).eval(), lambda: graph_model(rng(51))],
                         ids=["module-with-forward", "nn-graph"])
@pytest.mark.parametrize("input_shape", [None, (2, 8, 8)], ids=["dynamic", "fixed"])
def test_export_of_graphs_runs_in_onnxruntime_and_loads_back(tmp_path, make, input_shape):
    model = make()
    path = tmp_path / "graph.onnx"
    conx.export(model, path, input_shape=input_shape)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    names = {n.name for n in proto.graph.node}
    assert names >= ({"block.conv1", "add", "block.relu#1"} if isinstance(model, Net) else {"sum", "cat", "id"})
    x = random_array(rng(52), (3, 2, 8, 8), np.float32)
    want = model(x)
    np.testing.assert_allclose(run_ort(path, x), want, rtol=1e-5, atol=1e-5)
    loaded = conx.load(path)
    np.testing.assert_allclose(loaded(x), want, rtol=1e-6, atol=1e-6)
    params = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert params <= set(loaded.state_dict())  # the layers keep their names


def test_export_of_relu6_hardtanh_global_pool_grouped_conv(tmp_path):
    g = rng(53)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, rng=g), nn.ReLU6(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, rng=g), nn.Hardtanh(-0.5, 0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3, rng=g)).eval()
    path = tmp_path / "m.onnx"
    conx.export(model, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = random_array(rng(54), (2, 4, 9, 9), np.float32)
    np.testing.assert_allclose(run_ort(path, x), model(x), rtol=1e-5, atol=1e-5)
    loaded = conx.load(path)
    assert [type(m) for m in loaded] == [type(m) for m in model]
    np.testing.assert_array_equal(loaded(x), model(x))


@pytest.mark.parametrize("make, shape", [(lambda g: models.resnet20(rng=g), (3, 32, 32)),
                                         (lambda g: models.resnet18(10, rng=g), (3, 64, 64)),
                                         (lambda g: models.mobilenet_v2(10, 0.25, rng=g), (3, 64, 64))],
                         ids=["resnet20", "resnet18", "mobilenet_v2"])
def test_cyconv_models_export_run_in_onnxruntime_load_back_and_compile(tmp_path, make, shape):
    model = make(rng(55))
    model.train()
    model(random_array(rng(56), (4,) + shape, np.float32))  # running statistics that are not 0 and 1
    model.eval()
    path = tmp_path / "m.onnx"
    conx.export(model, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = random_array(rng(57), (2,) + shape, np.float32)
    want = model(x)
    scale = np.abs(want).max()
    np.testing.assert_allclose(run_ort(path, x), want, rtol=0, atol=1e-4 * scale)
    loaded = conx.load(path)
    assert set(model.state_dict()) <= set(loaded.state_dict())  # torchvision's names, kept
    np.testing.assert_allclose(loaded(x), want, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(cyconv.compile(loaded)(x), want, rtol=0, atol=1e-4 * scale)
