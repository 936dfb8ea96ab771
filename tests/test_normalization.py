"""Normalisation layers: BatchNorm1d/2d, LayerNorm, GroupNorm and the batch-norm tools.

Oracles: a NumPy reference written here (float64 two-pass statistics), float64 centred differences
(:func:`cynet.gradcheck.check_module`), and ``torch.nn.functional`` when torch is importable.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cynet
from cynet import nn
from cynet.gradcheck import check_module
from cynet.nn.normalization import (BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm, batch_norm_backward,
                                    batch_norm_forward, channel_affine, fold_batchnorm, recompute_batchnorm_statistics,
                                    row_norm_backward, row_norm_forward)
from _helpers import MethodCalls

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}

# (N, D) and (N, C, H, W) shapes: C = 1, odd sizes, below and above the kernels' parallel threshold (32768 elements).
# (N, D): BatchNorm1d splits x with D >= 128 into column ranges (one per thread), narrower x into row chunks.
SHAPES_1D = [(2, 1), (7, 5), (3, 33), (300, 257), (40, 1000), (1100, 129), (2500, 70)]
SHAPES_2D = [(2, 1, 1, 3), (3, 5, 7, 9), (2, 1, 130, 130), (16, 8, 33, 17)]


# --- NumPy reference --------------------------------------------------------------------------------------------------
def ref_norm(x, axes, gamma, beta, eps, gamma_shape):
    """y, mean, biased var with the statistics over ``axes`` (two-pass, float64)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps) * gamma.astype(np.float64).reshape(gamma_shape) \
        + beta.astype(np.float64).reshape(gamma_shape)
    return y, mean, var


def bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def bn_param_shape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


def ref_bn_train(x, gamma, beta, eps=1e-5):
    y, mean, var = ref_norm(x, bn_axes(x), gamma, beta, eps, bn_param_shape(x))
    return y, mean.reshape(-1), var.reshape(-1)


def ref_bn_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    s = bn_param_shape(x)
    return ((x.astype(np.float64) - running_mean.reshape(s)) / np.sqrt(running_var.astype(np.float64).reshape(s) + eps)
            * gamma.reshape(s) + beta.reshape(s))


def ref_bn_backward(dout, x, gamma, eps=1e-5):
    """dx, dgamma, dbeta of training-mode batch norm, from the textbook (uncompacted) chain rule."""
    axes, s = bn_axes(x), bn_param_shape(x)
    x, dout = x.astype(np.float64), dout.astype(np.float64)
    n = x.size // x.shape[1]
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    x_hat = xc * inv
    dx_hat = dout * gamma.reshape(s)
    dvar = np.sum(dx_hat * xc * -0.5 * inv ** 3, axis=axes, keepdims=True)
    dmu = np.sum(-dx_hat * inv, axis=axes, keepdims=True) + dvar * np.mean(-2 * xc, axis=axes, keepdims=True)
    dx = dx_hat * inv + dvar * 2 * xc / n + dmu / n
    return dx, np.sum(dout * x_hat, axis=axes), np.sum(dout, axis=axes)


def make_bn(cls, C, dtype, rng, **kw):
    bn = cls(C, dtype=dtype, **kw)
    if bn.affine:
        bn.weight.data[...] = rng.uniform(0.5, 1.5, C)
        bn.bias.data[...] = rng.standard_normal(C)
    return bn


def randn(rng, shape, dtype, loc=0.0, scale=1.0):
    return (rng.standard_normal(shape) * scale + loc).astype(dtype)


# --- batch norm against the reference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_1D + SHAPES_2D + [(5, 3, 4)], ids=str)
def test_batchnorm_train_forward_backward_and_running_stats(shape, dtype, rng):
    cls = BatchNorm1d if len(shape) in (2, 3) else BatchNorm2d
    C = shape[1]
    bn = make_bn(cls, C, dtype, rng)
    rm = np.zeros(C)
    rv = np.ones(C)
    n = int(np.prod(shape)) // C
    for step in range(3):
        x = randn(rng, shape, dtype, loc=step - 1.0, scale=2.0)
        y = bn(x)
        want, mean, var = ref_bn_train(x, bn.weight.data, bn.bias.data)
        assert y.dtype == dtype and y.shape == shape
        np.testing.assert_allclose(y, want, **TOL[dtype])
        rm = 0.9 * rm + 0.1 * mean
        rv = 0.9 * rv + 0.1 * var * n / (n - 1)
    np.testing.assert_allclose(bn.running_mean, rm, **TOL[dtype])
    np.testing.assert_allclose(bn.running_var, rv, **TOL[dtype])
    assert bn.running_mean.dtype == dtype and int(bn.num_batches_tracked) == 3

    dout = randn(rng, shape, dtype)
    bn.zero_grad()
    dx = bn.backward(dout)
    dx_ref, dg_ref, db_ref = ref_bn_backward(dout, x, bn.weight.data)
    tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, np.sqrt(n) / 10)) if dtype == np.float32 else TOL[dtype]
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(bn.weight.grad, dg_ref, **tol)
    np.testing.assert_allclose(bn.bias.grad, db_ref, **tol)

    bn.eval()
    x = randn(rng, shape, dtype)
    np.testing.assert_allclose(bn(x), ref_bn_eval(x, bn.weight.data, bn.bias.data, bn.running_mean,
                                                  bn.running_var), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.37, None], ids=["0.1", "0.37", "cumulative"])
def test_running_statistics_are_numpys_update_bit_for_bit(dtype, momentum, rng):
    # the update of the running statistics, (1 - f) running + f batch (the variance unbiased), as NumPy evaluates
    # the expressions with f a Python float: (1 - f) running in the running arrays' dtype, the rest in float64
    C, n = 37, 6
    bn = BatchNorm1d(C, momentum=momentum, dtype=dtype)
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = rng.uniform(0.5, 2.0, C)
    want_mean, want_var = bn.running_mean.copy(), bn.running_var.copy()
    for batches in range(1, 4):
        x = randn(rng, (n, C), dtype, loc=3.0, scale=0.5)
        bn(x)
        _, mean, var, _ = batch_norm_forward(x, bn.weight.data, bn.bias.data, bn.eps)   # the batch's statistics
        np.testing.assert_allclose(var, x.astype(np.float64).var(0), rtol=1e-12)
        f = momentum if momentum is not None else 1.0 / batches
        want_mean[...] = (1 - f) * want_mean + f * mean
        want_var[...] = (1 - f) * want_var + f * (var * (n / (n - 1)))
        np.testing.assert_array_equal(bn.running_mean, want_mean)
        np.testing.assert_array_equal(bn.running_var, want_var)


@pytest.mark.parametrize("shape", [(500, 3), (3000, 100)], ids=["column-blocks", "row-chunks"])
def test_batchnorm_statistics_are_numerically_safe(shape, rng):
    # mean 1e4, std 1e-2: E[x^2] - E[x]^2 in float32 (or even unshifted float64 sums) would lose every digit
    n, d = shape
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    bn = BatchNorm1d(d, momentum=1.0)        # running statistics = this batch's (float32)
    y = bn(x)
    want, mean, var = ref_bn_train(x, np.ones(d), np.zeros(d))
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-7)
    np.testing.assert_allclose(bn.running_var, var * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-3)


def test_batchnorm_accumulates_gradients_and_input_grad_false(rng):
    x = randn(rng, (9, 4), np.float64)
    dout = randn(rng, (9, 4), np.float64)
    bn = make_bn(BatchNorm1d, 4, np.float64, rng)
    bn(x)
    dx = bn.backward(dout)
    g1 = bn.weight.grad.copy()
    assert bn.backward(dout, input_grad=False) is None
    np.testing.assert_allclose(bn.weight.grad, 2 * g1, rtol=1e-14)
    _, dg, db = ref_bn_backward(dout, x, bn.weight.data)
    np.testing.assert_allclose(bn.bias.grad, 2 * db, rtol=1e-12, atol=1e-12)
    assert dx.shape == x.shape


# --- gradient checks (float64 centred differences) --------------------------------------------------------------------
GRADCHECK_CASES = [
    ("bn1d", lambda: BatchNorm1d(5), (6, 5)),
    ("bn1d-C1", lambda: BatchNorm1d(1), (4, 1)),
    ("bn1d-NCL", lambda: BatchNorm1d(3), (4, 3, 5)),
    ("bn1d-row-chunks", lambda: BatchNorm1d(60), (700, 60)),           # tall x: the row-chunk plan
    ("bn1d-no-affine", lambda: BatchNorm1d(4, affine=False), (5, 4)),
    ("bn1d-no-tracking-eval", lambda: BatchNorm1d(4, track_running_stats=False).eval(), (5, 4)),
    ("bn2d", lambda: BatchNorm2d(3), (2, 3, 4, 5)),
    ("bn2d-plane-runs", lambda: BatchNorm2d(2), (2, 2, 16, 16)),          # planes of 256: summed a plane at a time
    ("bn2d-eval", lambda: BatchNorm2d(3).eval(), (2, 3, 4, 5)),
    ("layernorm", lambda: LayerNorm(7), (3, 7)),
    ("layernorm-2d-shape", lambda: LayerNorm((3, 4)), (2, 5, 3, 4)),
    ("layernorm-no-affine", lambda: LayerNorm(6, elementwise_affine=False), (4, 6)),
    ("groupnorm", lambda: GroupNorm(2, 6), (3, 6, 4, 3)),
    ("groupnorm-1group", lambda: GroupNorm(1, 4), (2, 4, 5)),
    ("instancenorm", lambda: GroupNorm(4, 4), (2, 4, 3, 3)),
    ("groupnorm-NC", lambda: GroupNorm(2, 6, affine=False), (4, 6)),
]


@pytest.mark.parametrize("make,shape", [c[1:] for c in GRADCHECK_CASES], ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck(make, shape, rng):
    module = make()
    for p in module.parameters():  # non-trivial gamma and beta
        p.data[...] = rng.uniform(0.5, 1.5, p.data.shape) if p is module.weight else rng.standard_normal(p.data.shape)
    if getattr(module, "track_running_stats", False):
        module.running_mean[...] = rng.standard_normal(module.running_mean.shape)
        module.running_var[...] = rng.uniform(0.5, 2.0, module.running_var.shape)
    x = rng.standard_normal(shape) * 1.5 + 0.3
    report = check_module(module, x, num_checks=12)
    assert report.passed, str(report)
    assert report.max_error < 1e-6
    names = {a.name for a in report.arrays}
    assert "input" in names
    if module.parameters():
        assert {"weight", "bias"} <= names


# --- thread-count invariance -----------------------------------------------------------------------------------------
THREAD_CASES = [
    ("bn1d", lambda d: BatchNorm1d(1000, dtype=d), (70, 1000)),
    ("bn1d-narrow", lambda d: BatchNorm1d(40, dtype=d), (2000, 40)),
    ("bn1d-tall", lambda d: BatchNorm1d(300, dtype=d), (3000, 300)),
    ("bn1d-odd-ranges", lambda d: BatchNorm1d(515, dtype=d), (90, 515)),   # ranges of 160, 176, 179 columns at 3
    # coefficient rows of >= 24 KB on one thread (four rows at a time into the outputs), < 24 KB per range at 2 and 3
    ("bn1d-four-rows", lambda d: BatchNorm1d(2048, dtype=d), (38, 2048)),
    ("bn2d", lambda d: BatchNorm2d(8, dtype=d), (8, 8, 31, 33)),         # planes of >= 256: a plane at a time
    ("bn2d-long-planes", lambda d: BatchNorm2d(8, dtype=d), (4, 8, 40, 30)),
    ("bn2d-columns", lambda d: BatchNorm2d(16, dtype=d), (64, 16, 8, 12)),  # planes of 96: the column sweeps
    ("layernorm", lambda d: LayerNorm(300, dtype=d), (200, 300)),
    ("groupnorm", lambda d: GroupNorm(4, 16, dtype=d), (8, 16, 20, 21)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make,shape", [c[1:] for c in THREAD_CASES], ids=[c[0] for c in THREAD_CASES])
def test_thread_count_invariance(make, shape, dtype, rng):
    x = randn(rng, shape, dtype, loc=0.5)
    dout = randn(rng, shape, dtype)
    results = []
    for n in (1, 2, 3):
        module = make(dtype)
        for p in module.parameters():
            p.data[...] = np.linspace(0.5, 1.5, p.data.size).reshape(p.data.shape)
        with cynet.threads(n):
            y = module(x)
            dx = module.backward(dout)
            state = [b.copy() for b in module.buffers()]
            grads = [p.grad.copy() for p in module.parameters()]
            module.eval()
            y_eval = module(x)
        results.append([y, dx, y_eval] + state + grads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# --- against torch ---------------------------------------------------------------------------------------------------
def _torch_grads(fn, x, weight, bias, dout):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True)
    yt = fn(xt, wt, bt)
    yt.backward(torch.tensor(dout))
    return yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _assert_matches_torch(module, x, dout, fn, dtype):
    y = module(x)
    module.zero_grad()
    dx = module.backward(dout)
    yt, dxt, dwt, dbt = _torch_grads(fn, x, module.weight.data, module.bias.data, dout)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, yt, **tol)
    np.testing.assert_allclose(dx, dxt, **tol)
    np.testing.assert_allclose(module.weight.grad, dwt, **tol)
    np.testing.assert_allclose(module.bias.grad, dbt, **tol)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 5), (300, 257), (4, 3, 6), (3, 5, 7, 9), (16, 8, 33, 17)], ids=str)
def test_batchnorm_matches_torch(shape, dtype, rng):
    cls = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    C = shape[1]
    bn = make_bn(cls, C, dtype, rng)
    rm = torch.zeros(C, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    rv = torch.ones_like(rm)
    x = randn(rng, shape, dtype, loc=1.0, scale=2.0)
    dout = randn(rng, shape, dtype)
    _assert_matches_torch(bn, x, dout, lambda xt, w, b: F.batch_norm(xt, rm, rv, w, b, training=True), dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, rm.numpy(), **tol)
    np.testing.assert_allclose(bn.running_var, rv.numpy(), **tol)
    bn.eval()
    _assert_matches_torch(bn, x, dout, lambda xt, w, b: F.batch_norm(xt, rm, rv, w, b, training=False), dtype)


@pytest.mark.parametrize("make, shape", [(lambda: LayerNorm(3072), (128, 3072)),
                                         (lambda: GroupNorm(2, 4), (128, 4, 24, 32))], ids=["layernorm", "groupnorm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_row_norm_backward_without_input_grad_allocates_no_input_sized_array(make, shape, dtype):
    """A LayerNorm/GroupNorm first in a network (backward with input_grad=False) handed the kernel a never-written
    stand-in for dx of the input's full size, every step (1.57 MB for (128, 3072) float32); a one-row one as batch
    norm's. dgamma and dbeta are the bits of the input_grad=True pass."""
    import tracemalloc
    rng = np.random.default_rng(0)
    x, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    norm = make()
    if dtype == np.float64:
        norm.double()
    norm(x)
    norm.backward(dout)
    expected = norm.weight.grad.copy(), norm.bias.grad.copy()
    norm.zero_grad()
    norm.backward(dout, input_grad=False)                       # warm-up
    norm.zero_grad()
    tracemalloc.start()
    try:
        assert norm.backward(dout, input_grad=False) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the budget: the one-row stand-in, the kernel's float64 scratch (chunks, 2, P), dgamma and dbeta, 16 KiB slack
    from cynet.nn.normalization import _ROW_CHUNKS
    P = norm.weight.data.size
    budget = x.nbytes // shape[0] + _ROW_CHUNKS * 2 * P * 8 + 2 * P * 8 + (16 << 10)
    assert peak < budget, f"backward(input_grad=False) allocated {peak} bytes (budget {budget}, input {x.nbytes})"
    np.testing.assert_array_equal(norm.weight.grad, expected[0])
    np.testing.assert_array_equal(norm.bias.grad, expected[1])


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized_shape,shape", [(5, (3, 5)), (300, (200, 300)), ((4, 6), (2, 3, 4, 6))], ids=str)
def test_layernorm_matches_torch(normalized_shape, shape, dtype, rng):
    ln = LayerNorm(normalized_shape, dtype=dtype)
    ln.weight.data[...] = rng.uniform(0.5, 1.5, ln.weight.data.shape)
    ln.bias.data[...] = rng.standard_normal(ln.bias.data.shape)
    x = randn(rng, shape, dtype, loc=-2.0, scale=3.0)
    dout = randn(rng, shape, dtype)
    ns = ln.normalized_shape
    _assert_matches_torch(ln, x, dout, lambda xt, w, b: F.layer_norm(xt, ns, w, b, 1e-5), dtype)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,shape", [(1, (3, 4, 5, 5)), (2, (2, 6, 7)), (6, (4, 6, 9, 8)), (4, (8, 16, 20, 21)),
                                          (3, (5, 6))], ids=str)
def test_groupnorm_matches_torch(groups, shape, dtype, rng):
    gn = GroupNorm(groups, shape[1], dtype=dtype)
    gn.weight.data[...] = rng.uniform(0.5, 1.5, shape[1])
    gn.bias.data[...] = rng.standard_normal(shape[1])
    x = randn(rng, shape, dtype, loc=1.0, scale=2.0)
    dout = randn(rng, shape, dtype)
    _assert_matches_torch(gn, x, dout, lambda xt, w, b: F.group_norm(xt, groups, w, b, 1e-5), dtype)


def test_row_norms_against_reference(rng):
    x = rng.standard_normal((4, 6, 5))
    gn = GroupNorm(3, 6, dtype=np.float64)
    gn.weight.data[...] = rng.uniform(0.5, 1.5, 6)
    xg = x.reshape(4, 3, 10)
    mean = xg.mean(axis=2, keepdims=True)
    want = ((xg - mean) / np.sqrt(xg.var(axis=2, keepdims=True) + 1e-5)).reshape(x.shape) \
        * gn.weight.data[None, :, None]
    np.testing.assert_allclose(gn(x), want, rtol=1e-12, atol=1e-12)
    ln = LayerNorm((6, 5), elementwise_affine=False, dtype=np.float64)
    want, _, _ = ref_norm(x, (1, 2), np.ones(1), np.zeros(1), 1e-5, (1,))
    np.testing.assert_allclose(ln(x), want, rtol=1e-12, atol=1e-12)
    assert ln.parameters() == [] and gn(x).shape == x.shape


def test_row_norm_functions_write_into_out(rng):
    # GroupNorm's row view (N * G, C / G, H * W), float32: the same bits with and without out=, out returned
    x3 = rng.standard_normal((8, 3, 10)).astype(np.float32)
    dout3 = rng.standard_normal(x3.shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    y_fresh, mean, inv_std = row_norm_forward(x3, 2, gamma, beta, 1e-5)
    out = np.empty_like(x3)
    y, _, _ = row_norm_forward(x3, 2, gamma, beta, 1e-5, out=out)
    assert y is out and np.array_equal(y, y_fresh)
    dx_fresh, dgamma, dbeta = row_norm_backward(dout3, x3, 2, gamma, mean, inv_std)
    out = np.empty_like(x3)
    dx, dgamma2, dbeta2 = row_norm_backward(dout3, x3, 2, gamma, mean, inv_std, out=out)
    assert dx is out and np.array_equal(dx, dx_fresh)
    assert np.array_equal(dgamma, dgamma2) and np.array_equal(dbeta, dbeta2)
    with pytest.raises(ValueError, match=r"row_norm_forward: out must have shape \(8, 3, 10\)"):
        row_norm_forward(x3, 2, gamma, beta, 1e-5, out=np.empty((8, 30), np.float32))
    with pytest.raises(TypeError, match="row_norm_backward: out must have dtype float32"):
        row_norm_backward(dout3, x3, 2, gamma, mean, inv_std, out=np.empty(x3.shape))


# --- safety -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (1, 4)), (BatchNorm1d, (1, 4, 1)), (BatchNorm2d, (1, 3, 1, 1))])
def test_one_value_per_channel_raises_when_training(cls, shape):
    bn = cls(shape[1])
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*more than 1 value per channel.*{shape[0]}, {shape[1]}"):
        bn(np.ones(shape, np.float32))
    assert int(bn.num_batches_tracked) == 0 and np.all(bn.running_var == 1)
    bn.eval()
    assert np.all(np.isfinite(bn(np.ones(shape, np.float32))))


def test_batchnorm2d_single_sample_with_spatial_extent_trains(rng):
    bn = BatchNorm2d(3)
    y = bn(randn(rng, (1, 3, 2, 2), np.float32))
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("how", ["freeze", "requires_grad"])
def test_frozen_batchnorm_uses_and_keeps_running_stats(how, rng):
    bn = make_bn(BatchNorm1d, 4, np.float64, rng)
    bn(randn(rng, (16, 4), np.float64, loc=3.0))
    if how == "freeze":
        bn.freeze()
    else:
        bn.weight.requires_grad = False
        bn.bias.requires_grad = False
    assert bn.frozen and bn.training and "frozen" in repr(bn)
    state = bn.state_dict()
    x = randn(rng, (10, 4), np.float64)
    y = bn(x)
    np.testing.assert_allclose(y, ref_bn_eval(x, bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var),
                               rtol=1e-12, atol=1e-12)
    dout = randn(rng, (10, 4), np.float64)
    bn.zero_grad()
    dx = bn.backward(dout)
    np.testing.assert_allclose(dx, dout * bn.weight.data / np.sqrt(bn.running_var + bn.eps), rtol=1e-12)
    assert not bn.weight.grad.any() and not bn.bias.grad.any()
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    # a frozen batch norm works with a single sample
    assert np.all(np.isfinite(bn(x[:1])))
    bn.unfreeze()
    assert not bn.frozen and "frozen" not in repr(bn)
    bn(x)
    assert int(bn.num_batches_tracked) == 2


def test_frozen_batchnorm_without_affine(rng):
    bn = BatchNorm1d(3, affine=False).freeze()
    assert bn.frozen and "frozen" in repr(bn)
    bn(randn(rng, (5, 3), np.float32))
    assert int(bn.num_batches_tracked) == 0


def _bn_model(rng, dtype=np.float64):
    model = nn.Sequential(nn.Linear(6, 5, generator=1, dtype=dtype), BatchNorm1d(5, dtype=dtype), nn.ReLU(),
                          nn.Linear(5, 4, generator=2, dtype=dtype), BatchNorm1d(4, dtype=dtype))
    for bn in (model[1], model[4]):
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.bias.data[...] = rng.standard_normal(bn.num_features)
    return model


def test_recompute_batchnorm_statistics(rng):
    model = _bn_model(rng)
    x = rng.standard_normal((101, 6)) + 2.0
    for i in range(3):                      # some training steps with momentum 0.1
        model(x[i * 10:(i + 1) * 10])
    model[4].freeze()
    model[2].eval()                         # a mixed mode to restore
    recompute_batchnorm_statistics(model, x, batch_size=25)
    # batches 0:25, 25:50, 50:75, 75:101 (the last sample joins the last batch); the first batch norm's input does
    # not depend on the batches: its statistics are those of its input over the whole data set, whatever the batches
    h = x @ model[0].weight.data.T + model[0].bias.data
    first = model[1]
    np.testing.assert_allclose(first.running_mean, h.mean(0), rtol=1e-12)
    np.testing.assert_allclose(first.running_var, h.var(0, ddof=1), rtol=1e-12)
    assert int(first.num_batches_tracked) == 4 and int(model[4].num_batches_tracked) == 4
    # the second one's input passes through the first normalising with its NEW running statistics (eval mode, as the
    # model will run): it was normalised with each batch's statistics, which left its statistics off by the batches'
    # noise (3.9% of the mean, 4.1% of the variance on a 40-sample set in batches of 8)
    normalised = (h - first.running_mean) / np.sqrt(first.running_var + first.eps) * first.weight.data + first.bias.data
    z = np.maximum(normalised, 0) @ model[3].weight.data.T + model[3].bias.data
    second = model[4]
    np.testing.assert_allclose(second.running_mean, z.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(second.running_var, z.var(0, ddof=1), rtol=1e-10)
    assert model[4].frozen and model[4].momentum == 0.1 and first.momentum == 0.1
    assert model.training and model[1].training and not model[2].training
    # one batch covering all data: exactly the data set's statistics
    recompute_batchnorm_statistics(model, x, batch_size=1000)
    np.testing.assert_allclose(first.running_mean, h.mean(0), rtol=1e-12)
    np.testing.assert_allclose(first.running_var, h.var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("bad_call, error", [
    (lambda model, x: recompute_batchnorm_statistics(model, x.astype(np.float64), batch_size=4), TypeError),
    (lambda model, x: recompute_batchnorm_statistics(model, x, batch_size=1), ValueError),   # one sample per batch
])
def test_a_failed_recompute_leaves_the_trained_running_statistics(bad_call, error, rng):
    # the statistics were reset before the first batch and never put back: an input mistake wiped the trained ones
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    x = (rng.standard_normal((12, 5)) + 1.0).astype(np.float32)
    for i in range(3):
        model(x[4 * i:4 * i + 4])
    bn = model[1]
    before = [np.array(a, copy=True) for a in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    assert int(before[2]) == 3 and not np.allclose(before[0], 0)
    with pytest.raises(error):
        bad_call(model, x)
    for array, saved in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), before):
        np.testing.assert_array_equal(array, saved)
    assert bn.momentum == 0.1 and model.training


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fold_batchnorm_matches_eval_model(dtype, tol, rng):
    model = _bn_model(rng, dtype)
    model[3].bias = None                    # a Linear without bias folds too
    for _ in range(4):
        model(randn(rng, (32, 6), dtype, loc=1.0))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert [type(m).__name__ for m in folded] == ["Linear", "ReLU", "Linear"]
    assert not folded.training and model.training
    x = randn(rng, (20, 6), dtype)
    y_folded = folded(x)
    y = model.eval()(x)
    assert y_folded.dtype == dtype
    np.testing.assert_allclose(y_folded, y, rtol=tol, atol=tol)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert model[3].bias is None and len(model) == 5


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_fold_batchnorm_folds_convolutions_too(dtype, tol, rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, generator=0), BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 5, 3, stride=2, bias=False, generator=1), BatchNorm2d(5)).to(dtype)
    for m in (model[1], model[4]):                          # non-trivial affine parameters
        m.weight.data[...] = rng.uniform(0.5, 2.0, m.num_features)
        m.bias.data[...] = rng.standard_normal(m.num_features)
    for _ in range(4):
        model(randn(rng, (8, 3, 9, 9), dtype, loc=1.0))
    folded = fold_batchnorm(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "ReLU", "Conv2d"]
    assert folded[2].bias is not None and model[3].bias is None
    assert folded[0]._cols is None                          # no column matrix copied from the training forward
    x = randn(rng, (6, 3, 9, 9), dtype)
    np.testing.assert_allclose(folded(x), model.eval()(x), rtol=tol, atol=tol)


def test_fold_batchnorm_leaves_unfoldable_layers():
    model = nn.Sequential(BatchNorm1d(3), nn.Linear(3, 3), nn.ReLU(), BatchNorm1d(3, track_running_stats=False))
    folded = fold_batchnorm(model)
    assert [type(m).__name__ for m in folded] == ["BatchNorm1d", "Linear", "ReLU", "BatchNorm1d"]
    assert folded[0] is not model[0]
    with pytest.raises(TypeError, match="fold_batchnorm"):
        fold_batchnorm(BatchNorm1d(3))


# --- state, modes, options --------------------------------------------------------------------------------------------
def test_state_dict_round_trip(rng):
    bn = make_bn(BatchNorm2d, 3, np.float32, rng)
    for _ in range(2):
        bn(randn(rng, (4, 3, 5, 5), np.float32, loc=2.0))
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert state["num_batches_tracked"].shape == () and state["num_batches_tracked"].dtype == np.int64
    fresh = BatchNorm2d(3)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    x = randn(rng, (2, 3, 5, 5), np.float32)
    np.testing.assert_array_equal(fresh.eval()(x), bn.eval()(x))
    assert list(BatchNorm1d(3, track_running_stats=False).state_dict()) == ["weight", "bias"]
    assert list(BatchNorm1d(3, affine=False).state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_eval_versus_train(rng):
    bn = make_bn(BatchNorm1d, 3, np.float64, rng)
    x = randn(rng, (8, 3), np.float64, loc=5.0)
    y_train = bn(x)
    bn.eval()
    before = bn.state_dict()
    y_eval = bn(x)
    assert not np.allclose(y_train, y_eval)
    np.testing.assert_allclose(y_eval, ref_bn_eval(x, bn.weight.data, bn.bias.data, bn.running_mean,
                                                   bn.running_var), rtol=1e-12)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    # without running statistics, batch statistics in both modes
    nt = BatchNorm1d(3, track_running_stats=False, dtype=np.float64).eval()
    np.testing.assert_allclose(nt(x), ref_bn_train(x, np.ones(3), np.zeros(3))[0], rtol=1e-12, atol=1e-12)
    assert nt.running_mean is None


def test_affine_false_and_momentum_none(rng):
    bn = BatchNorm1d(4, affine=False, momentum=None, dtype=np.float64)
    assert bn.parameters() == [] and bn.weight is None
    xs = [randn(rng, (6, 4), np.float64, loc=i) for i in range(3)]
    for x in xs:
        np.testing.assert_allclose(bn(x), ref_bn_train(x, np.ones(4), np.zeros(4))[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], 0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([x.var(0, ddof=1) for x in xs], 0), rtol=1e-12)
    assert bn.backward(randn(rng, (6, 4), np.float64)).shape == (6, 4)


def test_to_float64_and_non_contiguous_input(rng):
    bn = BatchNorm2d(3).to(np.float64)
    x = rng.standard_normal((4, 5, 6, 3)).transpose(0, 3, 1, 2)     # (4, 3, 5, 6), strided
    y = bn(x)
    np.testing.assert_allclose(y, ref_bn_train(x, np.ones(3), np.zeros(3))[0], rtol=1e-12, atol=1e-12)
    assert bn.running_var.dtype == np.float64


def test_errors_name_layer_and_shapes():
    with pytest.raises(ValueError, match=r"BatchNorm1d.*\(N, C\).*C = 4.*shape \(2, 3\)"):
        BatchNorm1d(4)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*shape \(2, 3\)"):
        BatchNorm2d(3)(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"BatchNorm1d.*float32.*float64"):
        BatchNorm1d(3)(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\*, 5\).*shape \(2, 4\)"):
        LayerNorm(5)(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"GroupNorm.*divisible"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm.*\(N, 6, \*\).*shape \(2, 4\)"):
        GroupNorm(3, 6)(np.ones((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNorm1d(3).backward(np.ones((2, 3), np.float32))
    bn = BatchNorm1d(3)
    bn(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d.*dout.*\(2, 3\).*shape \(3, 3\)"):
        bn.backward(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm1d(3, momentum=2.0)


@pytest.mark.parametrize("normalized_shape", [3.0, None, True], ids=repr)
def test_layernorm_refuses_a_normalized_shape_that_is_not_a_shape(normalized_shape):
    """A float, None or a bool is neither an int nor a sequence of them: a TypeError naming LayerNorm and the value
    (it was Python's bare "'float' object is not iterable")."""
    with pytest.raises(TypeError, match=rf"LayerNorm: normalized_shape .*got {normalized_shape!r}"):
        LayerNorm(normalized_shape)


@needs_torch
@pytest.mark.parametrize("make", [lambda m: m.BatchNorm1d(3), lambda m: m.BatchNorm2d(3, momentum=None),
                                  lambda m: m.LayerNorm((2, 3)), lambda m: m.GroupNorm(1, 3),
                                  lambda m: m.BatchNorm1d(3, affine=False), lambda m: m.LayerNorm(3, 1e-5, False)],
                         ids=["bn1d", "bn2d", "ln", "gn", "bn1d-no-affine", "ln-no-affine"])
def test_reset_parameters_as_torch(make, rng):
    """reset_parameters (PyTorch's name; it was an AttributeError): the running statistics reset, weight ones and
    bias zeros, the state then equal to a fresh torch twin's."""
    norm = make(nn)
    for param in norm.parameters():
        param.data[...] = rng.standard_normal(param.data.shape)
    if getattr(norm, "track_running_stats", False):
        norm.train()
        for _ in range(2):
            norm(rng.standard_normal((4, 3) + ((5, 5) if isinstance(norm, BatchNorm2d) else ())).astype(np.float32))
    norm.reset_parameters()
    want = make(torch.nn).state_dict()
    got = norm.state_dict()
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key].numpy(), err_msg=key)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make,shape", [(lambda m, d: m.LayerNorm(5, 1e-5, True, False, **d), (3, 5)),
                                        (lambda m, d: m.LayerNorm((2, 3), bias=False, **d), (4, 2, 3)),
                                        (lambda m, d: m.GroupNorm(2, 4, bias=False, **d), (3, 4, 5))],
                         ids=["ln-positional", "ln-2d", "gn"])
def test_row_norms_without_bias_as_torch(make, shape, dtype, rng):
    """bias=False (PyTorch's LayerNorm's fourth argument, GroupNorm's keyword; it was a TypeError): a gain only, no
    bias parameter or state_dict key; outputs and gradients as torch's twin, loaded from its state_dict."""
    norm = make(nn, dict(dtype=dtype))
    twin = make(torch.nn, dict(dtype=torch.float64))
    assert norm.bias is None and [k for k, _ in norm.named_parameters()] == ["weight"]
    assert repr(norm).endswith(", bias=False)")
    with torch.no_grad():
        twin.weight.uniform_(0.5, 1.5)
    norm.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    assert list(norm.state_dict()) == list(twin.state_dict())
    x = randn(rng, shape, dtype, loc=1.0, scale=2.0)
    dout = randn(rng, shape, dtype)
    y = norm(x)
    dx = norm.backward(dout)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    twin(xt).backward(torch.tensor(dout.astype(np.float64)))
    tol = TOL[dtype]
    np.testing.assert_allclose(y, twin(xt).detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(norm.weight.grad, twin.weight.grad.numpy(), rtol=1e-4 if dtype == np.float32 else 1e-11,
                               atol=1e-4 if dtype == np.float32 else 1e-11)


def test_reprs():
    assert repr(BatchNorm2d(8)) == "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(LayerNorm((2, 3))) == "LayerNorm((2, 3), eps=1e-05, elementwise_affine=True)"
    assert repr(GroupNorm(2, 4, affine=False)) == "GroupNorm(2, 4, eps=1e-05, affine=False)"


def test_rows_kernels_refuse_a_coefficient_scratch_of_the_wrong_shape():
    """The private kernels write coef's rows without bounds checks inside: its shape is checked on entry."""
    from cynet._kernels import load
    k = load("normalization")
    x = np.ones((8, 5), np.float32)
    gamma, beta, stats = np.ones(5, np.float32), np.zeros(5, np.float32), [np.empty(5) for _ in range(3)]
    width, chunks = k.rows_plan(8, 5, 4)
    partials = np.empty((2 * max(chunks, 1), 5))
    with pytest.raises(ValueError, match=r"coef must have shape \(3, 5\), got \(2, 5\)"):
        k.bn_rows_forward(x, gamma, beta, 1e-5, np.empty_like(x), *stats, width, partials,
                          np.empty((2, 5), np.float32), False, 1)
    with pytest.raises(ValueError, match=r"coef must have shape \(4, 5\), got \(3, 5\)"):
        k.bn_rows_backward(x, x, gamma, stats[0], stats[2], np.empty_like(x), np.empty(5), np.empty(5), True, width,
                           partials, np.empty((3, 5), np.float32), False, 1)


# --- batch norm fused with the ReLU after it ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(8, 3, 20, 20), (16, 5, 8, 8), (4, 7, 17, 19), (2, 3, 1, 300), (5, 4, 3),
                                   (64, 32, 16, 16), (64, 40), (33, 5), (300, 256), (7, 130), (130, 1030),
                                   (37, 2048)])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_with_relu_gives_the_bits_of_batch_norm_then_relu(rng, dtype, shape, threads):
    # relu=True forward and the relu_beta backward against batch_norm_forward -> ops.relu_forward and
    # ops.relu_backward -> batch_norm_backward: planes of >= 256 values (sums a plane at a time) and fewer (the
    # column sums), (N, D) in row chunks (D < 128) and column ranges, with rows left over by the sweeps of four, a
    # NaN, the mask applied to an already masked gradient too (idempotent)
    from cynet import ops
    from cynet.nn.normalization import batch_norm_backward, batch_norm_forward

    x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
    x.flat[5] = np.nan
    dout = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    with cynet.threads(threads):
        y, mean, _, inv_std = batch_norm_forward(x, gamma, beta, 1e-5)
        relu_y = ops.relu_forward(y)
        masked = ops.relu_backward(dout, relu_y)
        want = batch_norm_backward(masked, x, gamma, mean, inv_std)
        fused_y, fused_mean, _, fused_inv = batch_norm_forward(x, gamma, beta, 1e-5, relu=True)
        got = batch_norm_backward(dout, x, gamma, fused_mean, fused_inv, relu_beta=beta)
        again = batch_norm_backward(masked, x, gamma, fused_mean, fused_inv, relu_beta=beta)
        sums_only = batch_norm_backward(dout, x, gamma, fused_mean, fused_inv, relu_beta=beta, input_grad=False)
    assert np.any(relu_y == 0) and np.any(relu_y > 0)
    np.testing.assert_array_equal(fused_y, relu_y)
    for result in (got, again):
        for a, b in zip(result, want):
            np.testing.assert_array_equal(a, b)
    assert sums_only[0] is None
    np.testing.assert_array_equal(sums_only[1], want[1])
    np.testing.assert_array_equal(sums_only[2], want[2])


@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 3)])
def test_batch_norm_with_relu_refuses_a_beta_of_the_wrong_length(shape):
    from cynet.nn.normalization import batch_norm_backward, batch_norm_forward

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _, mean, _, inv_std = batch_norm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), 1e-5)
    with pytest.raises(ValueError, match=r"batch_norm_backward: relu_beta must have shape \(3,\).*got float32 array of "
                                         r"shape \(2,\)"):
        batch_norm_backward(x, x, np.ones(3, np.float32), mean, inv_std, relu_beta=np.zeros(2, np.float32))


def _conv_bn_relu_net(inplace, dtype=np.float32, channels=6):
    # no conv bias: the batch norm after it cancels it, and its gradient, zero up to rounding, fails any gradient check
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False, init="he", generator=1, dtype=dtype),
                         nn.BatchNorm2d(channels, dtype=dtype), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(channels * 25, 4, generator=2, dtype=dtype))


@pytest.mark.parametrize("inplace", [False, True])
def test_sequential_fuses_batch_norm_and_relu_with_the_same_bits(rng, monkeypatch, inplace):
    # the same forward, gradients, running statistics and ReLU kink state as the two layers one by one
    # (FUSE_BATCHNORM_RELU off); fused, the ReLU's forward and backward do not run
    import cynet.nn.module as module_file

    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    dout = rng.standard_normal((8, 4)).astype(np.float32)
    results = {}
    for fuse in (False, True):
        monkeypatch.setattr(module_file, "FUSE_BATCHNORM_RELU", fuse)
        net = _conv_bn_relu_net(inplace)
        forwards = MethodCalls(monkeypatch, net[2], "forward")
        backwards = MethodCalls(monkeypatch, net[2], "backward")
        outputs = [net(x), net(x)]
        dx = net.backward(dout)
        results[fuse] = (outputs, dx, [p.grad.copy() for p in net.parameters()], net[1].running_mean.copy(),
                         net[1].running_var.copy(), net[2].kink_state())
        assert (forwards.count, backwards.count) == ((0, 0) if fuse else (2, 1))
        monkeypatch.undo()
    plain, fused = results[False], results[True]
    for a, b in zip(plain[0], fused[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain[1], fused[1])
    for a, b in zip(plain[2], fused[2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain[3:], fused[3:]):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_and_relu_run_one_by_one_where_fusing_does_not_apply(rng, monkeypatch):
    # evaluation mode (running statistics) and a shadowed forward (a monitor's wrapper) run the ReLU itself, with
    # the right answers; (N, C) input is fused as (N, C, *) is
    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    net = _conv_bn_relu_net(False)
    calls = MethodCalls(monkeypatch, net[2], "forward")
    net(x)
    assert calls.count == 0
    net.eval()
    want = np.maximum(net[1](net[0](x)), 0)
    net(x)
    assert calls.count == 1
    np.testing.assert_array_equal(net[2]._saved, want)
    net.train()
    seen = []
    net[2].forward = lambda value: seen.append(value) or nn.ReLU.forward(net[2], value)
    net(x)
    assert calls.count == 2 and len(seen) == 1
    del net[2].forward
    flat = nn.Sequential(nn.Linear(5, 4, generator=0), nn.BatchNorm1d(4), nn.ReLU())
    flat_calls = MethodCalls(monkeypatch, flat[2], "forward")
    y = flat(rng.standard_normal((6, 5)).astype(np.float32))
    assert flat_calls.count == 0 and np.all(y >= 0)
    flat.eval()
    y = flat(rng.standard_normal((6, 5)).astype(np.float32))
    assert flat_calls.count == 1 and np.all(y >= 0)


def _mlp_bn_relu_net(inplace, dtype=np.float32):
    return nn.Sequential(nn.Linear(12, 40, init="he", generator=1, dtype=dtype), nn.BatchNorm1d(40, dtype=dtype),
                         nn.ReLU(inplace=inplace), nn.Linear(40, 130, init="he", generator=2, dtype=dtype),
                         nn.BatchNorm1d(130, dtype=dtype), nn.ReLU(inplace=inplace),
                         nn.Linear(130, 4, generator=3, dtype=dtype))


@pytest.mark.parametrize("inplace", [False, True])
def test_sequential_fuses_batch_norm_1d_and_relu_with_the_same_bits(rng, monkeypatch, inplace):
    # the CS231n MLP's Linear -> BatchNorm1d -> ReLU: the same forward, gradients, running statistics and kink state
    # as the layers one by one; widths 40 (row chunks) and 130 (column ranges)
    import cynet.nn.module as module_file

    x = rng.standard_normal((70, 12)).astype(np.float32)
    dout = rng.standard_normal((70, 4)).astype(np.float32)
    results = {}
    for fuse in (False, True):
        monkeypatch.setattr(module_file, "FUSE_BATCHNORM_RELU", fuse)
        net = _mlp_bn_relu_net(inplace)
        calls = MethodCalls(monkeypatch, net[2], "forward")          # ReLU.forward: both ReLUs' calls
        outputs = [net(x), net(x)]
        dx = net.backward(dout)
        results[fuse] = (outputs, dx, [p.grad.copy() for p in net.parameters()],
                         [b.copy() for b in net.buffers()], net[2].kink_state(), net[5].kink_state())
        assert calls.count == (0 if fuse else 4)
        monkeypatch.undo()
    plain, fused = results[False], results[True]
    for a, b in zip(plain[0] + [plain[1]] + plain[2] + plain[3], fused[0] + [fused[1]] + fused[2] + fused[3]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain[4:], fused[4:]):
        np.testing.assert_array_equal(a, b)


def test_fused_batch_norm_1d_and_relu_pass_the_gradient_check(rng):
    report = check_module(_mlp_bn_relu_net(False, np.float64), rng.standard_normal((16, 12)), num_checks=8)
    assert report.passed, report


def test_fused_batch_norm_and_relu_pass_the_gradient_check(rng):
    net = _conv_bn_relu_net(True, np.float64, channels=3)
    report = check_module(net, rng.standard_normal((4, 3, 10, 10)), num_checks=8)
    assert report.passed, report


@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_1d_in_place_gives_the_bits_of_a_fresh_output(rng, relu):
    # (40, 2048) float32 on one thread takes four rows at a time into a fresh output; written over x (forward) or
    # over dout (backward) it goes row by row instead (the four-row pass assumes its outputs overlap nothing it reads)
    from cynet.nn.normalization import batch_norm_backward, batch_norm_forward

    x = rng.standard_normal((40, 2048)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 2048).astype(np.float32), rng.standard_normal(2048).astype(np.float32)
    with cynet.threads(1):
        want, mean, _, inv_std = batch_norm_forward(x, gamma, beta, 1e-5, relu=relu)
        want_dx = batch_norm_backward(dout, x, gamma, mean, inv_std, relu_beta=beta if relu else None)[0]
        over_x = x.copy()
        assert batch_norm_forward(over_x, gamma, beta, 1e-5, out=over_x, relu=relu)[0] is over_x
        over_dout = dout.copy()
        dx = batch_norm_backward(over_dout, x, gamma, mean, inv_std, out=over_dout,
                                 relu_beta=beta if relu else None)[0]
    np.testing.assert_array_equal(over_x, want)
    assert dx is over_dout
    np.testing.assert_array_equal(dx, want_dx)


def test_a_batch_norm_subclass_with_its_own_forward_is_not_fused(rng):
    # forward_relu computes _BatchNorm's forward: a subclass that changes forward runs its own, then the ReLU
    class Shifted(BatchNorm1d):
        def forward(self, x):
            return super().forward(x) - 1.0

    model = nn.Sequential(Shifted(5), nn.ReLU())
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = model(x)
    plain = BatchNorm1d(5)
    np.testing.assert_array_equal(y, np.maximum(plain(x) - 1.0, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_every_simd_variant_gives_identical_bits(rng, monkeypatch, dtype):
    # The statistics' and gradients' sums run in eight float64 lanes: one AVX-512 vector, eight scalars the compiler
    # vectorises elsewhere; the order of every addition is fixed by the lanes, so every variant must agree to the bit
    # (BatchNorm1d's column ranges and row chunks, the planes of BatchNorm2d, with and without the fused ReLU,
    # LayerNorm, GroupNorm; forward, dx, dgamma, dbeta, running statistics).
    from cynet._kernels import available_isas, load
    import cynet.nn.normalization as norm

    isas = available_isas("normalization")
    if len(isas) < 2:
        pytest.skip(f"only {isas} built/supported here")
    cases = [(lambda: BatchNorm1d(300), (64, 300)), (lambda: BatchNorm1d(70), (2500, 70)),
             (lambda: BatchNorm2d(8), (16, 8, 33, 17)), (lambda: LayerNorm(257), (40, 257)),
             (lambda: GroupNorm(4, 8), (6, 8, 13, 11))]
    inputs = [(rng.standard_normal(shape) * 3 + 1).astype(dtype) for _, shape in cases]
    douts = [rng.standard_normal(shape).astype(dtype) for _, shape in cases]
    results = {}
    for isa in isas:
        monkeypatch.setattr(norm, "_kernels", lambda isa=isa: load("normalization", isa))
        got = []
        for (make, _), x, dout in zip(cases, inputs, douts):
            for relu in ((False, True) if isinstance(make(), (BatchNorm1d, BatchNorm2d)) else (False,)):
                layer = make().to(dtype)
                y = (layer.forward_relu(x) if relu else layer(x)).copy()
                dx = layer.backward(dout).copy()
                got.append((y, dx, layer.weight.grad.copy(), layer.bias.grad.copy(),
                            *[b.copy() for b in layer.buffers()]))
        results[isa] = got
    for isa in isas:
        for case, (got, base) in enumerate(zip(results[isa], results["baseline"])):
            for a, b in zip(got, base):
                assert np.array_equal(a, b, equal_nan=True), (isa, case)


# --- argument checks of the array functions ---------------------------------------------------------------------------
# The kernels index without bounds checks: every wrong argument must be a TypeError/ValueError naming the function and
# the shapes, raised before any kernel runs (a QA run found segfaults, SIGFPE and silent garbage).
F32 = np.float32


def _bn_case(shape=(6, 5), dtype=F32):
    """x, gamma, beta, dout and the forward's mean, inv_std for the batch-norm functions."""
    r = np.random.default_rng(1)
    x = r.standard_normal(shape).astype(dtype)
    gamma, beta = r.uniform(0.5, 1.5, shape[1]).astype(dtype), r.standard_normal(shape[1]).astype(dtype)
    _, mean, _, inv_std = batch_norm_forward(x, gamma, beta, 1e-5)
    return x, gamma, beta, r.standard_normal(shape).astype(dtype), mean, inv_std


def _row_case(shape=(8, 3, 4), groups=2, dtype=F32):
    """x3, groups, gamma, beta, dout3 and the forward's mean, inv_std for the row-norm functions."""
    r = np.random.default_rng(2)
    x3 = r.standard_normal(shape).astype(dtype)
    P = groups * shape[1]
    gamma, beta = r.uniform(0.5, 1.5, P).astype(dtype), r.standard_normal(P).astype(dtype)
    _, mean, inv_std = row_norm_forward(x3, groups, gamma, beta, 1e-5)
    return x3, groups, gamma, beta, r.standard_normal(shape).astype(dtype), mean, inv_std


def _bad_bn_calls():
    x, g, b, d, m, i = _bn_case()
    x3, x3_groups, g3, b3, d3, m3, i3 = _row_case()
    one = np.ones(1, F32)
    return [
        # the QA reproducers, scaled down (they raise before any kernel call)
        ("bn-forward-gamma-too-short", lambda: batch_norm_forward(np.ones((4, 4000), F32), one, one, 1e-5),
         ValueError, r"batch_norm_forward: gamma must have shape \(4000,\).*\(4, 4000\).*got float32 array of "
                     r"shape \(1,\)"),
        ("channel-affine-too-short", lambda: channel_affine(np.ones((4, 4000), F32), one, one, one),
         ValueError, r"channel_affine: center must have shape \(4000,\)"),
        ("bn-backward-dout-too-short", lambda: batch_norm_backward(np.ones((1, 5), F32), x, g, m, i),
         ValueError, r"batch_norm_backward: x and dout must have the same shape.*\(6, 5\).*\(1, 5\)"),
        ("row-backward-dout-too-short", lambda: row_norm_backward(np.ones((1, 3, 4), F32), x3, 2, g3, m3, i3),
         ValueError, r"row_norm_backward: x3 and dout3 must have the same shape.*\(8, 3, 4\).*\(1, 3, 4\)"),
        ("row-forward-groups-0", lambda: row_norm_forward(np.ones((64, 16, 8), F32), 0, np.ones(16, F32),
                                                          np.ones(16, F32), 1e-5),
         ValueError, "row_norm_forward: groups must be a positive int, got 0"),
        # the silent garbage: statistics too short, gamma for the wrong number of groups, gamma empty
        ("bn-backward-mean-too-short", lambda: batch_norm_backward(d, x, g, m[:2], i),
         ValueError, r"batch_norm_backward: mean must have shape \(5,\).*got float64 array of shape \(2,\)"),
        ("bn-backward-inv-std-too-short", lambda: batch_norm_backward(d, x, g, m, i[:4]),
         ValueError, r"batch_norm_backward: inv_std must have shape \(5,\)"),
        ("row-backward-mean-too-short", lambda: row_norm_backward(d3, x3, 2, g3, m3[:3], i3),
         ValueError, r"row_norm_backward: mean must have shape \(8,\).*per row of x3"),
        ("row-backward-inv-std-too-short", lambda: row_norm_backward(d3, x3, 2, g3, m3, i3[:7]),
         ValueError, r"row_norm_backward: inv_std must have shape \(8,\)"),
        ("row-forward-gamma-for-fewer-groups", lambda: row_norm_forward(np.ones((64, 16, 8), F32), 4,
                                                                        np.ones(32, F32), np.ones(32, F32), 1e-5),
         ValueError, r"row_norm_forward: gamma must have shape \(64,\) \(groups \* Cg = 4 \* 16 values.*got float32 "
                     r"array of shape \(32,\)"),
        ("row-forward-beta-too-short", lambda: row_norm_forward(x3, 2, g3, b3[:5], 1e-5),
         ValueError, r"row_norm_forward: beta must have shape \(6,\)"),
        ("row-backward-gamma-too-long", lambda: row_norm_backward(d3, x3, 1, g3, m3, i3),
         ValueError, r"row_norm_backward: gamma must have shape \(3,\)"),
        ("bn-forward-gamma-empty", lambda: batch_norm_forward(x, g[:0], b, 1e-5),
         ValueError, r"batch_norm_forward: gamma must have shape \(5,\).*got float32 array of shape \(0,\)"),
        ("bn-forward-beta-2d", lambda: batch_norm_forward(x, g, b[None], 1e-5),
         ValueError, r"batch_norm_forward: beta must have shape \(5,\)"),
        ("bn-backward-relu-beta-too-short", lambda: batch_norm_backward(d, x, g, m, i, relu_beta=b[:1]),
         ValueError, r"batch_norm_backward: relu_beta must have shape \(5,\)"),
        ("channel-affine-shift-too-long", lambda: channel_affine(x, g, g, np.ones(6, F32)),
         ValueError, r"channel_affine: shift must have shape \(5,\)"),
        # groups: a positive int dividing the rows
        ("row-forward-groups-negative", lambda: row_norm_forward(x3, -2, g3, b3, 1e-5),
         ValueError, "row_norm_forward: groups must be a positive int, got -2"),
        ("row-forward-groups-float", lambda: row_norm_forward(x3, 2.0, g3, b3, 1e-5),
         ValueError, "row_norm_forward: groups must be a positive int, got 2.0"),
        ("row-forward-groups-bool", lambda: row_norm_forward(x3, True, g3[:3], b3[:3], 1e-5),
         ValueError, "row_norm_forward: groups must be a positive int, got True"),
        ("row-forward-groups-not-dividing-rows", lambda: row_norm_forward(x3, 3, np.ones(9, F32), np.ones(9, F32),
                                                                          1e-5),
         ValueError, r"row_norm_forward: groups \(3\) must divide the rows of x3.*\(8, 3, 4\)"),
        ("row-backward-groups-0", lambda: row_norm_backward(d3, x3, 0, g3, m3, i3),
         ValueError, "row_norm_backward: groups must be a positive int, got 0"),
        # dtypes
        ("bn-forward-float16", lambda: batch_norm_forward(x.astype(np.float16), g, b, 1e-5),
         TypeError, r"batch_norm_forward: x must be float32 or float64.*got float16 array of shape \(6, 5\)"),
        ("row-forward-float16", lambda: row_norm_forward(x3.astype(np.float16), 2, g3, b3, 1e-5),
         TypeError, "row_norm_forward: x3 must be float32 or float64.*got float16"),
        ("channel-affine-int", lambda: channel_affine(np.ones((4, 5), np.int64), g, g, g),
         TypeError, r"channel_affine: x must be a floating-point array.*got int64 array of shape \(4, 5\)"),
        ("bn-forward-int-list", lambda: batch_norm_forward([[1, 2], [3, 4]], g[:2], b[:2], 1e-5),
         TypeError, "batch_norm_forward: x must be a floating-point array.*int64"),
        ("bn-forward-complex", lambda: batch_norm_forward(x.astype(np.complex64), g, b, 1e-5),
         TypeError, "batch_norm_forward: x must be a floating-point array.*complex64"),
        ("bn-forward-float64-gamma", lambda: batch_norm_forward(x, g.astype(np.float64), b, 1e-5),
         TypeError, r"batch_norm_forward: gamma must be a float32 array.*got float64 array of shape \(5,\)"),
        ("bn-forward-int-beta", lambda: batch_norm_forward(x, g, np.zeros(5, np.int32), 1e-5),
         TypeError, "batch_norm_forward: beta must be a floating-point array.*int32"),
        ("row-forward-float64-beta", lambda: row_norm_forward(x3, 2, g3, b3.astype(np.float64), 1e-5),
         TypeError, "row_norm_forward: beta must be a float32 array"),
        ("bn-backward-float32-mean", lambda: batch_norm_backward(d, x, g, m.astype(F32), i),
         TypeError, "batch_norm_backward: mean must be a float64 array.*got float32"),
        ("row-backward-float32-inv-std", lambda: row_norm_backward(d3, x3, 2, g3, m3, i3.astype(F32)),
         TypeError, "row_norm_backward: inv_std must be a float64 array"),
        ("bn-backward-float64-dout", lambda: batch_norm_backward(d.astype(np.float64), x, g, m, i),
         TypeError, "batch_norm_backward: x and dout must have the same dtype.*float32.*float64"),
        ("row-backward-float64-dout", lambda: row_norm_backward(d3.astype(np.float64), x3, 2, g3, m3, i3),
         TypeError, "row_norm_backward: x3 and dout3 must have the same dtype"),
        ("bn-backward-relu-beta-float64", lambda: batch_norm_backward(d, x, g, m, i, relu_beta=b.astype(np.float64)),
         TypeError, "batch_norm_backward: relu_beta must be a float32 array"),
        ("bn-forward-gamma-none", lambda: batch_norm_forward(x, None, b, 1e-5),
         TypeError, "batch_norm_forward: gamma must be a floating-point array"),
        # ranks
        ("bn-forward-1d", lambda: batch_norm_forward(g, g, b, 1e-5),
         ValueError, r"batch_norm_forward: x must have shape \(N, C\) or \(N, C, \*\), got float32 array of "
                     r"shape \(5,\)"),
        ("bn-forward-0d", lambda: batch_norm_forward(np.float32(1), g, b, 1e-5),
         ValueError, r"batch_norm_forward: x must have shape \(N, C\).*shape \(\)"),
        ("bn-backward-1d", lambda: batch_norm_backward(g, g, g, m, i),
         ValueError, r"batch_norm_backward: x must have shape \(N, C\)"),
        ("channel-affine-0d", lambda: channel_affine(np.float64(2.0), g, g, g),
         ValueError, r"channel_affine: x must have shape \(N, C\)"),
        ("row-forward-2d", lambda: row_norm_forward(x, 1, g, b, 1e-5),
         ValueError, r"row_norm_forward: x3 must have shape \(M, Cg, S\) \(3-D\), got float32 array of "
                     r"shape \(6, 5\)"),
        ("row-forward-4d", lambda: row_norm_forward(x3[..., None], 2, g3, b3, 1e-5),
         ValueError, r"row_norm_forward: x3 must have shape \(M, Cg, S\)"),
        ("row-backward-1d", lambda: row_norm_backward(g3, g3, 1, g3, m3, i3),
         ValueError, r"row_norm_backward: x3 must have shape \(M, Cg, S\)"),
        # eps
        ("bn-forward-eps-nan", lambda: batch_norm_forward(x, g, b, float("nan")),
         ValueError, "batch_norm_forward: eps must be finite and >= 0, got nan"),
        ("bn-forward-eps-negative", lambda: batch_norm_forward(x, g, b, -1e-5),
         ValueError, "batch_norm_forward: eps must be finite and >= 0"),
        ("row-forward-eps-inf", lambda: row_norm_forward(x3, 2, g3, b3, np.inf),
         ValueError, "row_norm_forward: eps must be finite and >= 0, got inf"),
        ("row-forward-eps-string", lambda: row_norm_forward(x3, 2, g3, b3, "1e-5"),
         TypeError, "row_norm_forward: eps must be a real number, got '1e-5'"),
        ("bn-forward-eps-none", lambda: batch_norm_forward(x, g, b, None),
         TypeError, "batch_norm_forward: eps must be a real number, got None"),
        # out= (checked by _validation.output)
        ("channel-affine-out-strided", lambda: channel_affine(x, g, g, b, out=np.empty((5, 6), F32).T),
         ValueError, "channel_affine: out must be C-contiguous"),
        ("row-forward-out-wrong-dtype", lambda: row_norm_forward(x3, 2, g3, b3, 1e-5, out=np.empty(x3.shape)),
         TypeError, "row_norm_forward: out must have dtype float32"),
    ]


@pytest.mark.parametrize("call,error,pattern", [case[1:] for case in _bad_bn_calls()],
                         ids=[case[0] for case in _bad_bn_calls()])
def test_array_functions_refuse_bad_arguments_with_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_out_must_be_writable():
    x, g, b, d, m, i = _bn_case()
    out = np.empty_like(x)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="batch_norm_backward: out is read-only"):
        batch_norm_backward(d, x, g, m, i, out=out)
    with pytest.raises(ValueError, match="batch_norm_forward: out is read-only"):
        batch_norm_forward(x, g, b, 1e-5, out=out)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 5), (4, 5, 6), (3, 5, 4, 2)])
def test_batch_norm_functions_accept_strided_arrays_with_the_same_result(dtype, shape):
    # x, dout, gamma and the statistics non-contiguous: copied, the bits of the contiguous call
    x, g, b, d, m, i = _bn_case(shape, dtype)

    def strided(a):
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        view = big[..., ::2]
        assert not view.flags.c_contiguous and np.array_equal(view, a)
        return view
    want = batch_norm_forward(x, g, b, 1e-5)
    got = batch_norm_forward(strided(x), strided(g), strided(b), 1e-5)
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)
    want = batch_norm_backward(d, x, g, m, i, relu_beta=b)
    got = batch_norm_backward(strided(d), strided(x), strided(g), strided(m), strided(i), relu_beta=strided(b))
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(channel_affine(strided(x), strided(m.astype(dtype)), strided(g), strided(b)),
                                  channel_affine(x, m.astype(dtype), g, b))
    # a transposed (Fortran-ordered) x too
    xt = np.asfortranarray(x)
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(batch_norm_forward(xt, g, b, 1e-5)[0], batch_norm_forward(x, g, b, 1e-5)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_row_norm_functions_accept_strided_arrays_with_the_same_result(dtype):
    x3, groups, g, b, d3, m, i = _row_case((6, 4, 5), 3, dtype)
    x3_strided = np.ascontiguousarray(x3.transpose(0, 2, 1)).transpose(0, 2, 1)
    d3_strided = np.ascontiguousarray(d3.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not x3_strided.flags.c_contiguous and np.array_equal(x3_strided, x3)
    want = row_norm_forward(x3, groups, g, b, 1e-5)
    got = row_norm_forward(x3_strided, groups, np.repeat(g, 2)[::2], np.repeat(b, 2)[::2], 1e-5)
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)
    want = row_norm_backward(d3, x3, groups, g, m, i)
    got = row_norm_backward(d3_strided, x3_strided, groups, np.repeat(g, 2)[::2], np.repeat(m, 2)[::2],
                            np.repeat(i, 2)[::2])
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)


def test_array_functions_accept_lists():
    x = [[1.0, 2.0, 0.5], [3.0, 5.0, -1.0], [0.0, 1.0, 2.0]]
    xa = np.array(x)
    want = batch_norm_forward(xa, np.ones(3), np.zeros(3), 1e-5)
    got = batch_norm_forward(x, [1, 1, 1], [0.0, 0.0, 0.0], 1e-5)
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)
    # per-channel lists take x's dtype (a list has none of its own)
    x32 = xa.astype(F32)
    np.testing.assert_array_equal(batch_norm_forward(x32, [1.0, 1.0, 1.0], [0, 0, 0], 1e-5)[0],
                                  batch_norm_forward(x32, np.ones(3, F32), np.zeros(3, F32), 1e-5)[0])
    _, mean, _, inv_std = want
    np.testing.assert_array_equal(batch_norm_backward(x, x, [1.0] * 3, list(mean), list(inv_std))[0],
                                  batch_norm_backward(xa, xa, np.ones(3), mean, inv_std)[0])
    np.testing.assert_array_equal(channel_affine(x, [0.0] * 3, [2.0] * 3, [1.0] * 3), xa * 2 + 1)
    x3 = [[[1.0], [2.0], [4.0]], [[0.0], [1.0], [5.0]]]
    y3, m3, i3 = row_norm_forward(x3, 1, [1.0] * 3, [0.0] * 3, 1e-5)
    np.testing.assert_array_equal(y3, row_norm_forward(np.array(x3), 1, np.ones(3), np.zeros(3), 1e-5)[0])
    assert row_norm_backward(x3, x3, 1, [1.0] * 3, list(m3), list(i3))[0].shape == (2, 3, 1)


def test_read_only_and_big_endian_arguments_work():
    x, g, b, d, m, i = _bn_case((5, 4))
    want = batch_norm_forward(x, g, b, 1e-5)
    for a in (x, g, b):
        a.setflags(write=False)
    for a, c in zip(batch_norm_forward(x, g, b, 1e-5), want):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(batch_norm_forward(x.astype(">f4"), g.astype(">f4"), b, 1e-5), want):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0), (0, 0), (2, 0, 5)])
def test_batch_norm_functions_on_empty_input(shape):
    # nothing to normalise: an empty y, NaN statistics (the mean of no values), zero parameter gradients
    x = np.ones(shape, F32)
    C = shape[1]
    y, mean, var, inv_std = batch_norm_forward(x, np.ones(C, F32), np.zeros(C, F32), 1e-5)
    assert y.shape == shape and mean.shape == var.shape == inv_std.shape == (C,)
    assert np.all(np.isnan(mean)) and np.all(np.isnan(var)) and np.all(np.isnan(inv_std))
    dx, dgamma, dbeta = batch_norm_backward(x, x, np.ones(C, F32), np.zeros(C), np.ones(C))
    assert dx.shape == shape and np.array_equal(dgamma, np.zeros(C)) and np.array_equal(dbeta, np.zeros(C))
    assert channel_affine(x, np.zeros(C, F32), np.ones(C, F32), np.zeros(C, F32)).shape == shape


@pytest.mark.parametrize("shape,groups", [((0, 3, 4), 2), ((4, 3, 0), 2), ((0, 0, 1), 1)])
def test_row_norm_functions_on_empty_input(shape, groups):
    x3 = np.ones(shape, F32)
    P = groups * shape[1]
    y3, mean, inv_std = row_norm_forward(x3, groups, np.ones(P, F32), np.zeros(P, F32), 1e-5)
    assert y3.shape == shape and mean.shape == inv_std.shape == (shape[0],) and np.all(np.isnan(mean))
    dx3, dgamma, dbeta = row_norm_backward(x3, x3, groups, np.ones(P, F32), mean, inv_std)
    assert dx3.shape == shape and np.array_equal(dgamma, np.zeros(P)) and np.array_equal(dbeta, np.zeros(P))


def test_eps_zero_and_numpy_scalars_are_accepted():
    x, g, b, _, _, _ = _bn_case()
    want = batch_norm_forward(x, g, b, 1e-5)[0]
    np.testing.assert_array_equal(batch_norm_forward(x, g, b, np.float32(1e-5))[0],
                                  batch_norm_forward(x, g, b, float(np.float32(1e-5)))[0])
    np.testing.assert_array_equal(batch_norm_forward(x, g, b, np.float64(1e-5))[0], want)
    assert np.all(np.isfinite(batch_norm_forward(x, g, b, 0)[0]))
    x3, groups, g3, b3, _, _, _ = _row_case()
    np.testing.assert_array_equal(row_norm_forward(x3, np.int64(groups), g3, b3, 1e-5)[0],
                                  row_norm_forward(x3, groups, g3, b3, 1e-5)[0])


def test_the_qa_reproducers_raise_in_a_subprocess():
    # The calls that crashed the interpreter (SIGSEGV, SIGFPE), at sizes where an unchecked kernel would read or write
    # far out of bounds: each must raise ValueError, and the process must exit normally.
    code = textwrap.dedent("""
        import numpy as np
        from cynet.nn import normalization as N
        def expect_value_error(f):
            try:
                f()
            except ValueError as e:
                print("ValueError:", e)
            else:
                raise SystemExit("no error")
        x = np.random.rand(4, 400000).astype(np.float32); g = np.ones(1, np.float32)
        expect_value_error(lambda: N.batch_norm_forward(x, g, g, 1e-5))
        expect_value_error(lambda: N.channel_affine(x, g, g, g))
        x = np.random.rand(2000, 1000).astype(np.float32); g = np.ones(1000, np.float32)
        y, m, v, i = N.batch_norm_forward(x, g, g*0, 1e-5)
        expect_value_error(lambda: N.batch_norm_backward(np.ones((1, 1000), np.float32), x, g, m, i))
        x3 = np.random.rand(2000, 1000, 1).astype(np.float32); y3, m3, i3 = N.row_norm_forward(x3, 1, g, g*0, 1e-5)
        expect_value_error(lambda: N.row_norm_backward(np.ones((1, 1000, 1), np.float32), x3, 1, g, m3, i3))
        expect_value_error(lambda: N.row_norm_forward(np.random.rand(64, 16, 8).astype(np.float32), 0,
                                                      np.ones(16, np.float32), np.ones(16, np.float32), 1e-5))
        print("survived")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[-1] == "survived" and sum(line.startswith("ValueError:") for line in lines) == 5


# --- batch statistics need more than one value per channel, also in eval mode without running statistics -------------
@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (1, 4)), (BatchNorm1d, (1, 4, 1)), (BatchNorm2d, (1, 3, 1, 1)),
                                       (BatchNorm1d, (0, 4)), (BatchNorm2d, (0, 3, 2, 2))])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "fused-relu"])
def test_eval_without_running_stats_raises_on_one_value_per_channel(cls, shape, relu):
    # eval mode without running statistics normalises with batch statistics, as training does: one value per channel
    # would give beta everywhere (PyTorch raises "Expected more than 1 value per channel when training" too)
    bn = cls(shape[1], track_running_stats=False).eval()
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*more than 1 value per channel to normalise with batch "
                                         rf"statistics.*track_running_stats=False.*\({shape[0]}, {shape[1]}"):
        bn.forward_relu(x) if relu else bn(x)
    # with two values per channel it normalises; with running statistics one value is fine in eval mode
    two = np.arange(2 * int(np.prod(shape[1:])), dtype=np.float32).reshape((2,) + shape[1:])
    assert np.all(np.isfinite(bn(two)))
    tracked = cls(shape[1]).eval()
    assert tracked(np.ones((1,) + shape[1:], np.float32)).shape == (1,) + shape[1:]


# --- the modules check the parameter and buffer arrays they hand to the kernels ---------------------------------------
def test_modules_refuse_parameters_replaced_by_hand():
    x = np.ones((3, 4), np.float32)
    bn = BatchNorm1d(4)
    bn.weight.data = np.ones(1, np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4.*weight must have shape \(4,\).*shape \(1,\)"):
        bn(x)
    bn = BatchNorm1d(4)
    bn(x)
    bn.weight.data = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4.*weight must have shape \(4,\)"):
        bn.backward(x)
    bn = BatchNorm1d(4)
    bn.bias.data = np.zeros(4)
    with pytest.raises(TypeError, match=r"BatchNorm1d\(4.*bias must be a float32 array.*float64"):
        bn.forward_relu(x)
    bn = BatchNorm2d(4).eval()
    bn.running_mean = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4.*running_mean must have shape \(4,\)"):
        bn(np.ones((2, 4, 3, 3), np.float32))
    bn = BatchNorm1d(4).eval()
    bn.running_var = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4.*running_var must have shape \(4,\)"):
        bn(x)
    ln = LayerNorm((2, 4))
    ln.weight.data = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"LayerNorm\(\(2, 4\).*weight must have shape \(8,\)"):
        ln(np.ones((3, 2, 4), np.float32))
    gn = GroupNorm(2, 4)
    gn.bias.data = np.zeros(4)
    with pytest.raises(TypeError, match=r"GroupNorm\(2, 4.*bias must be a float32 array"):
        gn(np.ones((3, 4, 5), np.float32))


def test_eval_mode_with_running_var_replaced_by_a_list_is_a_clear_error():
    bn = BatchNorm1d(3)
    bn.eval()
    with pytest.raises(TypeError, match="cannot assign list to buffer 'running_var'"):
        bn.running_var = [1.0, 1.0]                     # refused where it happens
    bn.running_var = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        bn(np.ones((4, 3), np.float32))
    object.__setattr__(bn, "running_var", [1.0, 1.0])  # past the assignment check: the forward still refuses it
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        bn(np.ones((4, 3), np.float32))


@pytest.mark.parametrize("make", [lambda: BatchNorm1d(3), lambda: LayerNorm(3)], ids=["batchnorm", "layernorm"])
def test_a_non_float_input_to_a_norm_names_a_remedy_that_works(make):
    with pytest.raises(TypeError, match="float32 or float64"):     # not '.to(int64)', which .to refuses
        make()(np.ones((4, 3), np.int64))
    with pytest.raises(TypeError, match=r"\.to\(float64\)"):
        make()(np.ones((4, 3), np.float64))


def test_the_running_statistics_kernel_refuses_arrays_of_different_lengths():
    from cynet._kernels import load

    k = load("normalization")
    with pytest.raises(ValueError, match="must have one length, got 3, 2, 3, 3"):
        k.bn_update_running_stats(np.zeros(3, np.float32), np.ones(2, np.float32), np.zeros(3), np.ones(3), 0.1, 1.0)


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm1d(4, affine=False, track_running_stats=False),
                                  lambda: nn.LayerNorm(4, elementwise_affine=False)])
def test_a_norm_without_state_takes_the_dtype_of_its_container(make):
    """A norm with neither parameters nor running statistics remembers its dtype apart: a cast of the model around it
    must reach it too (found by QA: Sequential(...).double() left it expecting float32)."""
    model = nn.Sequential(nn.Linear(3, 4, generator=0), make()).double()
    x = np.random.default_rng(0).standard_normal((5, 3))
    y = model(x)
    assert y.dtype == np.float64
    model.float()
    assert model(x.astype(np.float32)).dtype == np.float32


def test_recomputed_statistics_of_shared_copy_twins_pool_both_branches():
    """Each twin pooled its own branch and the last one written won: the shared running mean was branch b's alone."""
    rng = np.random.default_rng(0)
    first = BatchNorm1d(3, dtype=np.float64)
    second = first.shared_copy()

    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = first, second

        def forward(self, x):
            return self.a(x[:, :3]) + self.b(x[:, 3:])

    x = np.concatenate([rng.standard_normal((40, 3)), rng.standard_normal((40, 3)) * 2 + 3], axis=1)
    recompute_batchnorm_statistics(Siamese(), x, batch_size=16)
    both = np.concatenate([x[:, :3], x[:, 3:]])
    np.testing.assert_allclose(first.running_mean, both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(first.running_var, both.var(0, ddof=1), rtol=1e-12)
    assert first.running_mean is second.running_mean


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_feature_holding_a_nan_has_a_nan_variance_as_numpy_and_torch(dtype, rng):
    # the clamp of a negative rounding (v > 0 else 0) turned NaN into 0: running_var looked healthy
    x = rng.standard_normal((6, 3)).astype(dtype)
    x[2, 0] = np.nan
    x[4, 1] = np.inf
    _, mean, var, inv_std = batch_norm_forward(x, np.ones(3, dtype), np.zeros(3, dtype), 1e-5)
    with np.errstate(invalid="ignore"):
        want = x.astype(np.float64).var(axis=0)                    # NumPy: nan, nan, finite
    np.testing.assert_array_equal(np.isnan(var), np.isnan(want))
    assert np.isnan(inv_std[:2]).all() and np.isfinite(var[2]) and np.isclose(var[2], want[2], rtol=1e-6)
    bn = BatchNorm1d(3, dtype=dtype)
    bn(x)
    assert np.isnan(bn.running_var[:2]).all() and np.isfinite(bn.running_var[2])   # torch: nan, nan, finite


@pytest.mark.parametrize("momentum", ["0.5", "abc", True, 1.5, -0.1, float("nan")])
def test_batch_norm_momentum_must_be_a_number_in_the_unit_interval(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\] or None"):
        BatchNorm1d(3, momentum=momentum)
    assert BatchNorm1d(3, momentum=np.float32(0.5)).momentum == 0.5 and BatchNorm1d(3, momentum=None).momentum is None


@pytest.mark.parametrize("affine", [True, False])
def test_freezing_a_network_freezes_its_shared_copy_twins_batch_norm_too(affine, rng):
    # with affine the twins share gamma/beta and so requires_grad; without, the frozen flag was each instance's own
    # and the twin kept updating the running statistics they share
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=affine))
    twin = net.shared_copy()
    net.freeze()
    assert twin[1].frozen
    before = net[1].running_mean.copy()
    twin(rng.standard_normal((8, 3)).astype(np.float32))
    np.testing.assert_array_equal(net[1].running_mean, before)
    import copy
    independent = copy.deepcopy(net)                          # a plain copy has a flag of its own
    independent.unfreeze()
    assert not independent[1].frozen and net[1].frozen


def test_recompute_batchnorm_statistics_in_series_inside_a_residual_block(rng):
    # every batch norm gets the statistics of its input over the data in eval mode (the ones before it with their new
    # statistics), whatever the batch size: the second of two BatchNorm2d was off by the batches' noise
    conv = lambda: nn.Conv2d(2, 2, 3, padding=1, dtype=np.float64)
    model = nn.Sequential(nn.Residual(nn.Sequential(conv(), BatchNorm2d(2, dtype=np.float64), nn.ReLU(), conv(),
                                                    BatchNorm2d(2, dtype=np.float64))),
                          BatchNorm2d(2, dtype=np.float64))
    x = rng.standard_normal((13, 2, 4, 4)) * 2 + 1
    recompute_batchnorm_statistics(model, x, batch_size=4)
    model.eval()
    body = model[0].body
    h = x
    for bn, layers in ((body[1], [body[0]]), (body[4], [body[1], body[2], body[3]]), (model[1], [body[4]])):
        for layer in layers:
            h = layer(h)
        if bn is model[1]:
            h = h + x
        np.testing.assert_allclose(bn.running_mean, h.mean((0, 2, 3)), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.running_var, h.var((0, 2, 3), ddof=1), rtol=1e-10)
        assert int(bn.num_batches_tracked) == 3
