"""ISA tiers: choosing, forcing and reporting which instruction set the kernels run with.

That every kernel gives the reference's answer on every tier is the kernel tests' job
(each runs once per tier this CPU supports, through the `isa` fixture in conftest.py)."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cyconv
import cyconv.kernels.isa as isa
import cyconv._kernels as _kernels
import cyconv.functional as F

ALL_TIERS = ["avx512", "avx2", "generic"]


def test_supported_tiers_are_best_first_and_include_generic():
    supported = cyconv.supported_isas()
    assert supported[-1] == "generic"
    assert supported == [t for t in ALL_TIERS if t in supported]


def test_default_tier_is_the_best_supported():
    # The test session may have been started with CYCONV_ISA; a fresh process without it picks the best.
    env = {k: v for k, v in os.environ.items() if k != "CYCONV_ISA"}
    out = subprocess.run([sys.executable, "-c", "import cyconv; print(cyconv.get_isa())"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == cyconv.supported_isas()[0]


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_set_isa_applies_at_once_and_restores_as_context_manager(tier):
    if tier not in cyconv.supported_isas():
        pytest.skip(f"this CPU cannot run {tier}")  # test_unsupported_tier_is_refused covers it
    before = cyconv.get_isa()
    with cyconv.set_isa(tier):
        assert cyconv.get_isa() == tier
        assert cyconv.build_info()["isa"] == tier
    assert cyconv.get_isa() == before
    restore = cyconv.set_isa(tier)
    try:
        assert cyconv.get_isa() == tier
    finally:
        restore.__exit__(None, None, None)
    assert cyconv.get_isa() == before


def test_set_isa_restores_after_exception():
    before = cyconv.get_isa()
    with pytest.raises(RuntimeError, match="inside"):
        with cyconv.set_isa("generic"):
            raise RuntimeError("inside")
    assert cyconv.get_isa() == before


def test_set_isa_refuses_another_thread_while_a_block_is_open():
    # The tier is process-wide: a second thread switching it inside another's block would run that block's
    # kernels on its tier, and the two exits would restore in the wrong order.
    before = cyconv.get_isa()
    others = [t for t in cyconv.supported_isas() if t != before]
    if not others:
        pytest.skip("this CPU runs one tier")
    opened, done, seen = threading.Event(), threading.Event(), []

    def holder():
        with cyconv.set_isa(others[0]):
            opened.set()
            done.wait(10)
            seen.append(cyconv.get_isa())

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert opened.wait(10)
        for switch in [lambda: cyconv.set_isa(before), lambda: cyconv.set_isa(before).__enter__()]:
            with pytest.raises(RuntimeError, match=r"set_isa\(\): the ISA tier is process-wide and another "
                                                   r"thread has a `with cyconv.set_isa\(...\)` block open"):
                switch()
    finally:
        done.set()
        t.join()
    assert seen == [others[0]]
    assert cyconv.get_isa() == before
    with cyconv.set_isa(others[0]):  # once closed, any thread may switch
        assert cyconv.get_isa() == others[0]
    assert cyconv.get_isa() == before


@pytest.mark.parametrize("name, error, match", [
    ("sse4", ValueError, "unknown ISA tier 'sse4'"),
    ("AVX2", ValueError, "unknown ISA tier 'AVX2'"),
    (2, TypeError, "the tier must be a str, one of avx512, avx2, generic; got 2"),
    (None, TypeError, "the tier must be a str, one of avx512, avx2, generic; got None"),
])
def test_set_isa_rejects_bad_names(name, error, match):
    before = cyconv.get_isa()
    with pytest.raises(error, match=r"set_isa\(\): " + match):
        cyconv.set_isa(name)
    assert cyconv.get_isa() == before


def test_unsupported_tier_is_refused_naming_the_best(monkeypatch):
    # As on a CPU with AVX2 but no AVX-512 (this one may have both).
    monkeypatch.setattr(isa, "supported_isas", lambda: ["avx2", "generic"])
    before = cyconv.get_isa()
    with pytest.raises(ValueError, match=r"set_isa\(\): this CPU cannot run the avx512 tier; its best tier "
                                         r"is avx2 \(supported: avx2, generic\)"):
        cyconv.set_isa("avx512")
    assert cyconv.get_isa() == before


def test_c_layer_refuses_an_unsupported_tier_too():
    before = _kernels.get_isa()
    assert _kernels.set_isa(99) is False
    assert _kernels.set_isa(-1) is False
    assert _kernels.get_isa() == before
    for number, name in enumerate(isa.TIERS):
        assert _kernels.isa_supported(number) == (name in cyconv.supported_isas())


def run_python(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "CYCONV_ISA"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_environment_variable_picks_the_tier_at_import(tier):
    out = run_python("import cyconv; print(cyconv.get_isa())", CYCONV_ISA=tier)
    if tier in cyconv.supported_isas():
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == tier
    else:
        assert out.returncode != 0
        assert f"CYCONV_ISA: this CPU cannot run the {tier} tier; its best tier is" in out.stderr


def test_environment_variable_with_an_unknown_tier_fails_the_import():
    out = run_python("import cyconv", CYCONV_ISA="neon")
    assert out.returncode != 0
    assert "CYCONV_ISA: unknown ISA tier 'neon'; the tiers are avx512, avx2, generic" in out.stderr


def test_build_info_reports_the_build():
    info = cyconv.build_info()
    assert info["isa"] == cyconv.get_isa()
    assert info["isa_supported"] == cyconv.supported_isas()
    assert info["openmp"] is cyconv.openmp_enabled()
    assert info["threads"] == cyconv.get_num_threads()
    assert info["gemm"] == {"float32": "own" if _kernels.own_gemm_enabled() else "blas", "float64": "blas"}
    assert info["compiler"].split()[0] in ("gcc", "clang", "msvc")
    assert isinstance(info["blas"], str) and info["blas"]


def test_build_info_follows_the_gemm_switch():
    previous = _kernels.set_own_gemm(False)
    try:
        assert cyconv.build_info()["gemm"]["float32"] == "blas"
    finally:
        _kernels.set_own_gemm(previous)


def test_tiers_agree_on_lenet_training_step():
    # One LeNet-5 forward and backward on every supported tier: the same network to float32
    # rounding (the sums run in other orders, so not bit for bit).
    rng = np.random.default_rng(0)
    model = cyconv.models.lenet5(rng=rng)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    results = {}
    for tier in cyconv.supported_isas():
        with cyconv.set_isa(tier):
            model.zero_grad()
            loss, grad = F.softmax_cross_entropy(model(x), y)
            model.backward(grad)
            results[tier] = (loss, [p.grad.copy() for p in model.parameters()])
    best_loss, best_grads = results[cyconv.supported_isas()[0]]
    for tier, (loss, grads) in results.items():
        assert loss == pytest.approx(best_loss, rel=1e-5), tier
        for got, want in zip(grads, best_grads):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * np.abs(want).max(), err_msg=tier)
