"""Non-temporal ("streaming") stores: the kernels that may write their output that way give the same bits either way,
for any alignment of the output, any length (partial cache lines at both ends), in place, and any thread count; and
the size threshold that chooses them (cynet.stream_stores, CYNET_STREAM_MIN_BYTES)."""
import time

import numpy as np
import pytest

import cynet
from cynet import ops, reference
from cynet._kernels import load
from cynet._threading import (DEFAULT_REFRESH_SECONDS, DEFAULT_STREAM_MIN_BYTES, reread_environment, stream_min_bytes,
                              stream_stores)
from cynet.nn.normalization import batch_norm_backward, batch_norm_forward, row_norm_backward, row_norm_forward

DTYPES = [np.float32, np.float64]
LENGTHS = [1, 15, 17, 1023, 1024 + 37, 5000, 70_001]


def _misaligned(shape, dtype, offset):
    """A C-contiguous array of ``shape`` starting ``offset`` items after an allocation's start (so not on a cache
    line when offset > 0)."""
    size = int(np.prod(shape))
    return np.empty(size + offset, dtype)[offset:].reshape(shape)


@pytest.fixture(autouse=True)
def _kernels_see_each_setting_at_once():
    """Kernel calls re-read CYNET_STREAM_MIN_BYTES every DEFAULT_REFRESH_SECONDS: each test starts and ends with a
    fresh reading, and _set_threshold makes the kernels see a change at once."""
    reread_environment()
    yield
    reread_environment()


def _set_threshold(monkeypatch, value):
    """CYNET_STREAM_MIN_BYTES = value (None: unset), seen by the next kernel call."""
    if value is None:
        monkeypatch.delenv("CYNET_STREAM_MIN_BYTES", raising=False)
    else:
        monkeypatch.setenv("CYNET_STREAM_MIN_BYTES", value)
    reread_environment()


def _same_bits_streamed_or_not(monkeypatch, output_bytes, run):
    """``run()`` with non-temporal stores always and never (CYNET_STREAM_MIN_BYTES), on 1 and 2 threads: asserts that
    the four runs return the same arrays bit for bit and returns the first run's."""
    results = []
    for threshold in ("0", str(2**62)):
        _set_threshold(monkeypatch, threshold)
        assert stream_stores(output_bytes) == (threshold == "0")
        for threads in (1, 2):
            with cynet.threads(threads):
                results.append(run())
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            np.testing.assert_array_equal(a, b)
    return results[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_elementwise_kernels_write_the_same_bits_with_streaming_stores(dtype, n, offset):
    act = load("activations")
    rng = np.random.default_rng(n + offset)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    dout = rng.standard_normal(n).astype(dtype)
    for op in act.Activation:
        for backward in (False, True):
            results = []
            for stream in (False, True):
                for threads in (1, 3):
                    out = _misaligned((n,), dtype, offset)
                    out[:] = np.nan  # every element must be written
                    if backward:
                        act.elementwise_backward(int(op), dout, x, out, 1.5, stream, threads)
                    else:
                        act.elementwise_forward(int(op), x, out, 1.5, stream, threads)
                    results.append(out)
            for other in results[1:]:
                np.testing.assert_array_equal(other, results[0], err_msg=f"{op.name} backward={backward}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_streaming_stores_in_place(dtype):
    act = load("activations")
    x = np.random.default_rng(0).standard_normal(4099).astype(dtype)
    expected = np.maximum(x, 0)
    act.elementwise_forward(int(act.Activation.RELU), x, x, 0.0, True, 2)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
# (N, D) with D a multiple of 16 take four rows at a time when streamed (row chunks for D < 128, column ranges
# above), with 1-3 rows left over
@pytest.mark.parametrize("shape", [(4099, 37), (2001, 1500), (4099, 64), (1030, 160), (7, 256), (5, 3, 7, 111),
                                   (9, 4, 33, 41)], ids=str)
@pytest.mark.parametrize("offset", [0, 3])
def test_batch_norm_writes_the_same_bits_with_streaming_stores(monkeypatch, dtype, shape, offset):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)

    def run():
        y, dx, relu_y, relu_dx = (_misaligned(shape, dtype, offset) for _ in range(4))
        y[...] = dx[...] = relu_y[...] = relu_dx[...] = np.nan
        _, mean, var, inv_std = batch_norm_forward(x, gamma, beta, 1e-5, out=y)
        _, dgamma, dbeta = batch_norm_backward(dout, x, gamma, mean, inv_std, out=dx)
        # fused with the ReLU after it (its own output passes, four rows at a time for (N, D) too)
        batch_norm_forward(x, gamma, beta, 1e-5, out=relu_y, relu=True)
        _, relu_dgamma, relu_dbeta = batch_norm_backward(dout, x, gamma, mean, inv_std, out=relu_dx, relu_beta=beta)
        return y, dx, mean, var, dgamma, dbeta, relu_y, relu_dx, relu_dgamma, relu_dbeta

    y = _same_bits_streamed_or_not(monkeypatch, x.nbytes, run)[0]
    # an independent check of the streamed forward: y = (x - mean) / sqrt(var + eps) * gamma + beta
    axes = (0,) + tuple(range(2, len(shape)))
    expand = (1, -1) + (1,) * (len(shape) - 2)
    mean64 = x.astype(np.float64).mean(axis=axes)
    var64 = x.astype(np.float64).var(axis=axes)
    reference = ((x - mean64.reshape(expand)) / np.sqrt(var64.reshape(expand) + 1e-5) * gamma.reshape(expand)
                 + beta.reshape(expand))
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, reference, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,groups", [((37, 1500, 1), 1), ((5, 4099, 1), 1), ((8, 100, 1), 2), ((6, 3, 333), 2),
                                         ((4, 2, 17), 4)],
                         ids=str)
@pytest.mark.parametrize("offset", [0, 3])
def test_layer_and_group_norm_write_the_same_bits_with_streaming_stores(monkeypatch, dtype, shape, groups, offset):
    # row_norm_* on (M, Cg, S): LayerNorm's rows (Cg features, S = 1) and GroupNorm's (row m holds channels
    # (m % groups) Cg ... of sample m // groups, S values each)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, groups * shape[1]).astype(dtype)
    beta = rng.standard_normal(groups * shape[1]).astype(dtype)

    def run():
        y = _misaligned(shape, dtype, offset)
        dx = _misaligned(shape, dtype, offset)
        y[...] = dx[...] = np.nan
        _, mean, inv_std = row_norm_forward(x, groups, gamma, beta, 1e-5, out=y)
        _, dgamma, dbeta = row_norm_backward(dout, x, groups, gamma, mean, inv_std, out=dx)
        return y, dx, mean, inv_std, dgamma, dbeta

    y = _same_bits_streamed_or_not(monkeypatch, x.nbytes, run)[0]
    # an independent check of the streamed forward, each row's statistics in float64
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=(1, 2), keepdims=True)
    var64 = x64.var(axis=(1, 2), keepdims=True)
    channel = np.arange(shape[0])[:, None] % groups * shape[1] + np.arange(shape[1])[None, :]
    reference_y = (x64 - mean64) / np.sqrt(var64 + 1e-5) * gamma[channel][..., None] + beta[channel][..., None]
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, reference_y, rtol=tolerance, atol=tolerance)


def test_the_threshold_is_32_mib_unless_set(monkeypatch):
    _set_threshold(monkeypatch, None)
    assert stream_min_bytes() == DEFAULT_STREAM_MIN_BYTES == 32 * 2**20
    assert not stream_stores(32 * 2**20 - 1)
    assert stream_stores(32 * 2**20)
    assert not stream_stores(0)
    _set_threshold(monkeypatch, "0")
    assert stream_stores(1) and not stream_stores(0)


def test_kernel_calls_see_a_changed_threshold_within_the_refresh_interval(monkeypatch):
    _set_threshold(monkeypatch, "0")
    assert stream_stores(1)
    monkeypatch.setenv("CYNET_STREAM_MIN_BYTES", str(2**40))     # without reread_environment()
    assert stream_min_bytes() == 2**40                            # read every time
    time.sleep(DEFAULT_REFRESH_SECONDS)
    assert not stream_stores(1)


@pytest.mark.parametrize("bad", ["-1", "1.5", "lots"])
def test_a_bad_threshold_is_refused(monkeypatch, bad):
    _set_threshold(monkeypatch, bad)
    with pytest.raises(ValueError, match="CYNET_STREAM_MIN_BYTES"):
        stream_stores(100)


def test_ops_stream_large_outputs_of_memory_bound_kernels_only(monkeypatch):
    # through cynet.ops with the threshold at 0: the answers stay the reference's
    _set_threshold(monkeypatch, "0")
    x = np.random.default_rng(2).standard_normal((300, 257)).astype(np.float32)
    np.testing.assert_array_equal(ops.relu_forward(x), np.maximum(x, 0))
    np.testing.assert_array_equal(ops.relu_backward(x, x), np.where(x > 0, x, 0))
    np.testing.assert_array_equal(ops.leaky_relu_forward(x, 0.1), np.where(x > 0, x, np.float32(0.1) * x))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
# (5, 1024): Maxout's two piece rows of dx share their offset in a line (its one-pass streamed form); the others not
@pytest.mark.parametrize("shape", [(37, 1500), (3, 2050), (1, 17), (5, 1024)], ids=str)
@pytest.mark.parametrize("offset", [0, 1])
def test_prelu_and_maxout_write_the_same_bits_with_streaming_stores(monkeypatch, dtype, shape, offset):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    alpha = rng.uniform(0.05, 0.5, shape[1]).astype(dtype)
    scores = rng.standard_normal((shape[0], 2 * shape[1])).astype(dtype)
    scores[0, :3] = np.nan                           # a NaN piece wins
    _, winners = ops.maxout_forward(scores, 2)
    planes = rng.standard_normal((2, shape[1], 3, 5)).astype(dtype)   # one slope per channel of axis 1

    def run():
        y, y_planes, dx = (_misaligned(a.shape, dtype, offset) for a in (x, planes, x))
        dscores = _misaligned(scores.shape, dtype, offset)
        maxed, won = _misaligned(shape, dtype, offset), _misaligned(shape, np.int32, offset)
        y[...] = y_planes[...] = dx[...] = dscores[...] = maxed[...] = np.nan
        won[...] = -1
        ops.prelu_forward(x, alpha, out=y)
        ops.prelu_forward(planes, alpha, out=y_planes)
        _, dalpha = ops.prelu_backward(dout, x, alpha, out=dx)
        ops.maxout_forward(scores, 2, out=maxed, indices_out=won)
        ops.maxout_backward(dout, winners, 2, out=dscores)
        return y, y_planes, dx, dalpha, maxed, won, dscores

    y, y_planes, dx, _, maxed, won, dscores = _same_bits_streamed_or_not(monkeypatch, x.nbytes, run)
    np.testing.assert_array_equal(y, reference.prelu_forward(x, alpha))
    np.testing.assert_array_equal(y_planes, reference.prelu_forward(planes, alpha))
    expected_dx, _ = reference.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(dx, expected_dx)
    expected_max, expected_won = reference.maxout_forward(scores, 2)
    np.testing.assert_array_equal(maxed, expected_max)
    np.testing.assert_array_equal(won, expected_won)
    np.testing.assert_array_equal(dscores, reference.maxout_backward(dout, winners, 2))


def test_stream_stores_is_public():
    assert cynet.stream_stores is stream_stores
    assert "stream_stores" in cynet.__all__
