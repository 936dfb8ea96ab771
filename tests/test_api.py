"""Validation errors, thread control, configuration, and the SIMD variants of the kernels."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cynet
from cynet import ops
from cynet._kernels import available_isas, load
from _helpers import ELEMENTWISE, ELEMENTWISE_IDS, backward_pair, forward_pair


# --- validation ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.arange(6).reshape(2, 3), np.ones((2, 3), bool), np.ones((2, 3), np.complex64),
                                 [[1, 2, 3]]], ids=["int64", "bool", "complex", "int-list"])
@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_non_floating_input_is_a_type_error_naming_the_op(name, kw, saved, kinked, exact, bad):
    fwd, _ = forward_pair(name)
    bwd, _ = backward_pair(name)
    dtype = np.asarray(bad).dtype
    with pytest.raises(TypeError, match=rf"{name}_forward: x must be a floating-point array.*{dtype}"):
        fwd(bad, **kw)
    with pytest.raises(TypeError, match=rf"{name}_backward: dout must be a floating-point array"):
        bwd(bad, np.ones((2, 3)), **kw)


@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_backward_shape_and_dtype_mismatch(name, kw, saved, kinked, exact):
    bwd, _ = backward_pair(name)
    with pytest.raises(ValueError, match=rf"{name}_backward: dout and {saved} must have the same shape, got "
                                         r"float32 array of shape \(3,\) and float32 array of shape \(4,\)"):
        bwd(np.ones(3, np.float32), np.ones(4, np.float32), **kw)
    with pytest.raises(TypeError, match=rf"{name}_backward: dout and {saved} must have the same dtype"):
        bwd(np.ones(3, np.float32), np.ones(3, np.float64), **kw)


def test_bad_out_buffers_are_refused_not_replaced():
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"relu_forward: out must have shape \(4, 6\), got float32 array of shape"):
        ops.relu_forward(x, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match=r"relu_forward: out must have dtype float32, got float64"):
        ops.relu_forward(x, out=np.empty((4, 6), np.float64))
    with pytest.raises(ValueError, match=r"relu_forward: out must be C-contiguous"):
        ops.relu_forward(x, out=np.empty((4, 12), np.float32)[:, ::2])
    readonly = np.empty((4, 6), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"relu_forward: out is read-only"):
        ops.relu_forward(x, out=readonly)
    with pytest.raises(TypeError, match=r"relu_forward: out must be a numpy.ndarray"):
        ops.relu_forward(x, out=[0.0] * 24)
    with pytest.raises(TypeError, match=r"maxout_forward: indices_out must have dtype int32"):
        ops.maxout_forward(x, 2, indices_out=np.empty((4, 3), np.int64))


def test_bad_parameters():
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"gelu_forward: approximate must be 'none' or 'tanh', got 'erf'"):
        ops.gelu_forward(x, approximate="erf")
    with pytest.raises(ValueError, match=r"elu_forward: alpha must be >= 0"):
        ops.elu_forward(x, alpha=-1.0)
    with pytest.raises(ValueError, match=r"leaky_relu_forward: negative_slope must be finite"):
        ops.leaky_relu_forward(x, negative_slope=float("nan"))
    with pytest.raises(TypeError, match=r"leaky_relu_backward: negative_slope must be a real number"):
        ops.leaky_relu_backward(x, x, negative_slope="0.1")


# --- threads ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                     ("2", TypeError)])
def test_set_num_threads_validates(bad, exc):
    with pytest.raises(exc, match="number of threads"):
        cynet.set_num_threads(bad)
    with pytest.raises(exc, match="number of threads"):
        with cynet.threads(bad):
            pass


def test_set_and_reset_num_threads():
    default = cynet.get_num_threads()
    try:
        cynet.set_num_threads(3)
        assert cynet.get_num_threads() == 3
        with cynet.threads(1):
            assert cynet.get_num_threads() == 1
        assert cynet.get_num_threads() == 3
    finally:
        cynet.set_num_threads(None)
    assert cynet.get_num_threads() == default


def test_threads_context_restores_on_exception_and_limits_blas():
    from threadpoolctl import threadpool_info

    before = cynet.get_num_threads()
    with pytest.raises(RuntimeError):
        with cynet.threads(1):
            assert cynet.get_num_threads() == 1
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            assert all(n == 1 for n in blas)
            raise RuntimeError("boom")
    assert cynet.get_num_threads() == before


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=True)


def test_omp_num_threads_is_honoured():
    assert _run("import cynet; print(cynet.get_num_threads())", OMP_NUM_THREADS="3").stdout.strip() == "3"
    expected = str(cynet.available_cpus())
    assert _run("import cynet; print(cynet.get_num_threads())").stdout.strip() == expected


def test_available_cpus_respects_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity mask on this platform")
    assert 1 <= cynet.available_cpus() <= len(os.sched_getaffinity(0))


def test_python_m_cynet_prints_the_configuration():
    out = subprocess.run([sys.executable, "-m", "cynet"], capture_output=True, text=True, check=True).stdout
    assert f"cynet {cynet.__version__}" in out
    assert "OpenMP kernels" in out and "threads" in out and "BLAS" in out and "SIMD kernels" in out


# --- SIMD variants -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_every_simd_variant_gives_bit_identical_results(dtype):
    isas = available_isas("activations")
    if len(isas) < 2:
        pytest.skip(f"only {isas} built/supported here")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(50_003) * 8, [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, 1e-40,
                                                           800.0, -800.0]]).astype(dtype)
    dout = rng.standard_normal(x.size).astype(dtype)
    modules = {isa: load("activations", isa) for isa in isas}
    for code in modules["baseline"].Activation:
        results = {}
        for isa, module in modules.items():
            y, dx = np.empty_like(x), np.empty_like(x)
            module.elementwise_forward(int(code), x, y, 0.3, 2)
            module.elementwise_backward(int(code), dout, x, dx, 0.3, 2)
            results[isa] = (y, dx)
        for isa in isas:
            assert np.array_equal(results[isa][0], results["baseline"][0], equal_nan=True), (code, isa)
            assert np.array_equal(results[isa][1], results["baseline"][1], equal_nan=True), (code, isa)


def test_cynet_isa_caps_the_variant():
    out = _run("from cynet._kernels import selected_isa; print(selected_isa())", CYNET_ISA="baseline")
    assert out.stdout.strip() == "baseline"
