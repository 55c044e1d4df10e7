"""Models that branch and merge (cyconv.graph): tracing, the runner's forward and backward (a value read
by several layers gets the sum of their gradients), nn.Graph, the merge layers Add and Concat against
their twins, the fusions as rewrites, the predictor on graphs, and the errors."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from cyconv import graph, nn
from conftest import DTYPES, KERNEL_TESTS, assert_close, distinct_array, random_array
from gradcheck import assert_grad, numerical_grad, projection

pytestmark = KERNEL_TESTS


class Residual(nn.Module):
    """The README's hand-written residual block."""

    def __init__(self, c, dtype=np.float64, rng=None):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype, rng=rng)
        self.bn1 = nn.BatchNorm2d(c, dtype=dtype)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype, rng=rng)
        self.bn2 = nn.BatchNorm2d(c, dtype=dtype)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + x)


class Net(nn.Module):
    def __init__(self, dtype=np.float64, rng=None):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, dtype=dtype, rng=rng)
        self.block = Residual(4, dtype, rng)
        self.side = nn.Conv2d(4, 2, 1, dtype=dtype, rng=rng)
        self.cat = nn.Concat()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 3, dtype=dtype, rng=rng))

    def forward(self, x):
        h = self.stem(x)
        h = self.block(h)
        return self.head(self.pool(self.cat(h, self.side(h))))


def rng_(seed=0):
    return np.random.default_rng(seed)


def test_trace_names_every_layer_and_reads_the_branches():
    net = Net(rng=rng_())
    tr = graph.trace(net)
    names = [n.name for n in tr.nodes]
    assert names == ["stem", "block.conv1", "block.bn1", "block.relu", "block.conv2", "block.bn2", "add",
                     "block.relu#1", "side", "cat", "pool", "head.0", "head.1"]
    assert tr.nodes[6].inputs == (6, 1)          # bn2's output + the block's input (the stem's output)
    assert tr.nodes[9].inputs == (8, 9)          # Concat of the block's output and the side branch
    assert tr.output == len(tr.nodes)
    assert graph.shapes(tr, (2, 4, 4))[-1] == (3,)
    assert not tr.is_chain() and graph.trace(nn.Sequential(nn.ReLU(), nn.Flatten())).is_chain()


def test_the_same_relu_twice_gets_two_nodes_and_follows_train_and_eval():
    net = Residual(2, rng=rng_())
    runner = graph.runner(net)
    relus = [s for s in runner.steps if any(isinstance(m, nn.ReLU) for m in s.layers)]
    assert len(relus) == 2
    net.eval()
    net(random_array(rng_(1), (2, 2, 4, 4), np.float64))
    assert all(not m.training for s in runner.steps for m in s.layers)


def model_loss(net, x, g):
    return lambda: float(np.sum(net(x) * g))


@pytest.mark.parametrize("make", [lambda: Net(rng=rng_(3)), lambda: Residual(3, rng=rng_(4))],
                         ids=["branch-concat", "residual"])
def test_gradients_of_a_branching_model_equal_finite_differences(make):
    net = make().train()
    shape = (2, 2, 4, 4) if isinstance(net, Net) else (2, 3, 4, 4)
    x = distinct_array(rng_(5), shape, np.float64)
    y = net(x)
    g = random_array(rng_(6), y.shape, np.float64)
    net.zero_grad()
    grad_x = net.backward(g, input_grad=True)
    # the input: the residual's input feeds two branches, so its gradient is a sum
    assert_grad(grad_x, projection(net, g), x)
    # every parameter, at a few elements each (BatchNorm in training mode normalises with the batch: the
    # loss is smooth in all of them)
    pick = rng_(7)
    for name, p in net.named_parameters():
        for index in {tuple(int(pick.integers(d)) for d in p.data.shape) for _ in range(4)}:
            def loss(value, p=p, index=index):
                saved = p.data[index]
                p.data[index] = value[0]
                try:
                    return float(np.sum(net(x) * g))
                finally:
                    p.data[index] = saved
            numeric = numerical_grad(loss, np.array([p.data[index]]))[0]
            np.testing.assert_allclose(p.grad[index], numeric, rtol=1e-6, atol=1e-7, err_msg=f"{name}{index}")


def test_backward_without_input_grad_skips_what_does_not_learn_and_returns_none():
    net = Net(rng=rng_(7))
    y = net(random_array(rng_(8), (2, 2, 4, 4), np.float64))
    assert net.backward(np.ones_like(y)) is None
    assert all(np.any(p.grad != 0) for p in net.parameters())


def test_graph_builder_equals_the_module():
    rng = rng_(9)
    block = Residual(3, rng=rng)
    g = nn.Graph()
    x = g.input()
    h = g.node("conv1", block.conv1, x)
    h = g.node("bn1", block.bn1, h)
    h = g.node("relu1", nn.ReLU(), h)
    h = g.node("conv2", block.conv2, h)
    h = g.node("bn2", block.bn2, h)
    h = g.node("add", nn.Add(), h, x)
    g.output(g.node("relu2", nn.ReLU(), h))
    assert list(g.state_dict()) == [k.replace("block.", "") for k in block.state_dict()]
    xs = random_array(rng_(10), (2, 3, 5, 5), np.float64)
    block.eval(), g.eval()
    np.testing.assert_array_equal(g(xs), block(xs))


def test_graph_builder_errors():
    g = nn.Graph()
    x = g.input()
    g.node("a", nn.ReLU(), x)
    with pytest.raises(ValueError, match="named 'a' exists"):
        g.node("a", nn.ReLU(), x)
    with pytest.raises(ValueError, match="reads no value"):
        g.node("b", nn.ReLU())
    with pytest.raises(TypeError, match="port of this graph"):
        g.node("c", nn.ReLU(), nn.Graph().input())
    with pytest.raises(ValueError, match="without spaces"):
        g.node("d e", nn.ReLU(), x)
    with pytest.raises(RuntimeError, match="no output set"):
        g(np.zeros((1, 2)))


def test_sharing_a_layer_with_parameters_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2, rng=rng_())

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(TypeError, match="'fc' .*called twice"):
        Twice()(np.zeros((1, 2), np.float32))


def test_a_forward_that_mixes_arrays_into_the_graph_is_refused():
    class Bad(nn.Module):
        def forward(self, x):
            return nn.Add()(x, np.zeros(3))

    with pytest.raises(TypeError, match="inside a traced forward every input must be a value"):
        Bad()(np.zeros((1, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_reference(dtype, relu):
    rng = rng_(11)
    a, b = distinct_array(rng, (3, 4, 5, 6), dtype), distinct_array(rng, (3, 4, 5, 6), dtype)
    assert_close(F.add(a, b, relu=relu), R.add(a, b, relu=relu), dtype)
    big_a, big_b = random_array(rng, (70000,), dtype), random_array(rng, (70000,), dtype)  # several blocks
    assert_close(F.add(big_a, big_b, relu=relu), R.add(big_a, big_b, relu=relu), dtype)
    nan = np.array([np.nan, -1, 1], dtype)
    assert np.isnan(F.add(nan, np.zeros(3, dtype), relu=relu)[0])


def test_add_and_concat_errors():
    with pytest.raises(ValueError, match=r"add\(\): a and b must have one shape"):
        F.add(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="add"):
        F.add(np.zeros(3), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"concat\(\): xs\[1\] has shape"):
        F.concat([np.zeros((1, 2, 3)), np.zeros((1, 2, 4))])
    with pytest.raises(ValueError, match="non-empty list"):
        F.concat([])
    with pytest.raises(ValueError, match="Add needs two or more inputs of one shape"):
        nn.Add().output_shape((2, 3), (2, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_matches_reference(dtype):
    rng = rng_(12)
    xs = [random_array(rng, (2, c, 3, 4), dtype) for c in (1, 3, 2)]
    np.testing.assert_array_equal(F.concat(xs), R.concat(xs))
    g = random_array(rng, (2, 6, 3, 4), dtype)
    for got, want in zip(F.concat_backward(g, [1, 3, 2]), R.concat_backward(g, [1, 3, 2])):
        np.testing.assert_array_equal(got, want)


def test_add_relu_is_fused_in_training_with_the_same_results():
    net, ref = Residual(3, rng=rng_(13)), Residual(3, rng=rng_(13))
    assert [s.layers for s in graph.runner(net).steps if len(s.layers) == 2][0][0] is not None
    kinds = [tuple(type(m).__name__ for m in s.layers) for s in graph.runner(net).steps]
    assert ("Add", "ReLU") in kinds
    x = distinct_array(rng_(14), (2, 3, 4, 4), np.float64)
    y = net(x)
    # the same layers one at a time, unfused
    h = ref.relu(ref.bn1(ref.conv1(x)))
    h2 = ref.bn2(ref.conv2(h))
    np.testing.assert_array_equal(y, F.relu(h2 + x))


def test_fold_batch_norms_is_a_rewrite_that_leaves_the_model_alone():
    net = Residual(3, rng=rng_(15)).eval()
    for bn in (net.bn1, net.bn2):
        bn.running_mean[...] = rng_(16).standard_normal(3)
        bn.running_var[...] = rng_(17).random(3) + 0.5
    before = {k: v.copy() for k, v in net.state_dict().items()}
    folded = graph.fold_batch_norms(graph.trace(net))
    assert [type(n.module).__name__ for n in folded.nodes] == ["Conv2d", "ReLU", "Conv2d", "Add", "ReLU"]
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, threads", [(1, 1), (1, 2), (3, 2), (5, 3)])
def test_predictor_runs_graphs(dtype, batch, threads, gemm_path):
    net = Net(dtype=dtype, rng=rng_(18))
    net.train()
    net(random_array(rng_(19), (8, 2, 4, 4), dtype))  # running statistics away from 0 and 1
    net.eval()
    x = random_array(rng_(20), (batch, 2, 4, 4), dtype)
    with cyconv.set_num_threads(threads):
        assert_close(cyconv.compile(net)(x), net(x), dtype)


def test_predictor_graph_with_nary_add_and_output_read_again():
    g = nn.Graph()
    x = g.input()
    a = g.node("a", nn.ReLU(), x)
    b = g.node("b", nn.Sigmoid(), x)
    s = g.node("sum", nn.Add(), a, b, x)       # three inputs
    t = g.node("tanh", nn.Tanh(), s)
    g.output(g.node("cat", nn.Concat(), t, s, x))
    xs = random_array(rng_(21), (4, 3, 2, 2), np.float32)
    assert_close(cyconv.compile(g)(xs), g.eval()(xs), np.float32)


def test_predictor_of_a_model_that_returns_its_input():
    g = nn.Graph()
    x = g.input()
    g.node("unused", nn.ReLU(), x)
    g.output(g.node("flat", nn.Flatten(), x))
    xs = random_array(rng_(22), (2, 3, 2), np.float32)
    np.testing.assert_array_equal(cyconv.compile(g)(xs), xs.reshape(2, 6))


def mobile_block(dtype, rng, stride, expand=2, c=4):
    """An inverted residual (MobileNetV2's) with grouped, depthwise and dilated convolutions, ReLU6 and
    Hardtanh, and a global average pool head."""
    g = nn.Graph()
    x = g.input()
    h = g.node("expand", nn.Conv2d(c, c * expand, 1, bias=False, dtype=dtype, rng=rng), x)
    h = g.node("bn0", nn.BatchNorm2d(c * expand, dtype=dtype), h)
    h = g.node("relu6", nn.ReLU6(), h)
    h = g.node("dw", nn.Conv2d(c * expand, c * expand, 3, stride=stride, padding=1, groups=c * expand,
                               dtype=dtype, rng=rng), h)
    h = g.node("clip", nn.Hardtanh(-0.5, 2.0), h)
    h = g.node("grouped", nn.Conv2d(c * expand, c, 3, padding=2, dilation=2, groups=2, dtype=dtype, rng=rng), h)
    h = g.node("pool", nn.MaxPool2d(2, 1), h)
    if stride == 1:
        pooled = g.node("skip_pool", nn.MaxPool2d(2, 1), x)
        h = g.node("add", nn.Add(), h, pooled)
    h = g.node("gap", nn.AdaptiveAvgPool2d(1), h)
    h = g.node("flat", nn.Flatten(), h)
    g.output(g.node("fc", nn.Linear(c, 3, dtype=dtype, rng=rng), h))
    return g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch, threads", [(1, 2), (4, 2), (3, 1)])
def test_predictor_runs_grouped_depthwise_dilated_and_pooled_heads(dtype, stride, batch, threads, gemm_path):
    net = mobile_block(dtype, rng_(23), stride)
    net.train()
    net(random_array(rng_(24), (8, 4, 9, 9), dtype))
    net.eval()
    x = random_array(rng_(25), (batch, 4, 9, 9), dtype)
    with cyconv.set_num_threads(threads):
        assert_close(cyconv.compile(net)(x), net(x), dtype)


def test_predictor_adaptive_pooling_to_more_than_one():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, rng=rng_(26)), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten())
    x = random_array(rng_(27), (2, 2, 7, 9), np.float32)
    assert_close(cyconv.compile(net.eval())(x), net(x), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, threads", [(1, 2), (3, 2), (2, 1)])
def test_predictor_runs_winograd_layers_with_filters_transformed_once(dtype, batch, threads):
    rng = rng_(28)
    net = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1, dtype=dtype, rng=rng),                            # auto: winograd4 (float32)
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False, dtype=dtype, rng=rng, algorithm="winograd2"),
        nn.BatchNorm2d(64, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),                      # folded, fused
        nn.Conv2d(64, 8, 5, padding=2, dtype=dtype, rng=rng, algorithm="winograd"),       # F(m, 5x5)
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.train()
    net(random_array(rng_(29), (4, 64, 16, 16), dtype))
    net.eval()
    x = random_array(rng_(30), (batch, 64, 16, 16), dtype)
    with cyconv.set_num_threads(threads):
        predictor = cyconv.compile(net)
        got = predictor(x)
    names = dict(predictor.algorithms)
    assert names["0"] == ("winograd4" if dtype == np.float32 else "im2col")
    assert names["2"] == "winograd2" and names["6"].startswith("winograd")
    want = net(x)
    # Winograd's float32 error (its tolerance table: tests/test_winograd.py) over the im2col path's
    np.testing.assert_allclose(got, want, rtol=0, atol=(1e-4 if dtype == np.float32 else 1e-10) * np.abs(want).max())
