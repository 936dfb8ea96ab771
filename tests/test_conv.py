"""Conv2d and MaxPool2d: forward and backward against a direct NumPy implementation (loops over the kernel), the
numerical gradient, torch.nn.functional (float64), thread-count invariance, validation, and a small CNN that trains.
"""
import threading

import numpy as np
import pytest

import cynet
from cynet import gradcheck, nn, optim
from cynet.train import Trainer

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")

# (C, F, kernel, stride, padding, H, W)
CONFIGS = [
    (3, 4, 3, 1, 1, 7, 6),
    (2, 5, (3, 2), 2, 0, 9, 8),
    (4, 3, 5, 3, 2, 11, 10),
    (1, 2, 1, 1, 0, 4, 4),
    (2, 3, 4, 2, 1, 8, 8),
]
IDS = [f"C{c[0]}F{c[1]}k{c[2]}s{c[3]}p{c[4]}" for c in CONFIGS]


def _padded(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def _reference_conv(x, w, b, s, p):
    """y[n, f, i, j] = b[f] + sum_{c, a, b'} w[f, c, a, b'] x_pad[n, c, i s + a, j s + b'], a sum per kernel offset."""
    xp = _padded(x, p)
    f, _, kh, kw = w.shape
    oh = (xp.shape[2] - kh) // s + 1
    ow = (xp.shape[3] - kw) // s + 1
    y = np.zeros((x.shape[0], f, oh, ow)) + b[None, :, None, None]
    for a in range(kh):
        for c in range(kw):
            window = xp[:, :, a:a + s * (oh - 1) + 1:s, c:c + s * (ow - 1) + 1:s]          # (N, C, OH, OW)
            y += np.einsum("nchw,fc->nfhw", window, w[:, :, a, c])
    return y


def _reference_conv_backward(x, w, dout, s, p):
    """(dx, dw, db) of _reference_conv, as the same per-offset sums transposed."""
    xp = _padded(x, p)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    _, _, kh, kw = w.shape
    oh, ow = dout.shape[2:]
    for a in range(kh):
        for c in range(kw):
            rows, cols = slice(a, a + s * (oh - 1) + 1, s), slice(c, c + s * (ow - 1) + 1, s)
            dw[:, :, a, c] = np.einsum("nfhw,nchw->fc", dout, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nfhw,fc->nchw", dout, w[:, :, a, c])
    h, wd = x.shape[2:]
    return dxp[:, :, p:p + h, p:p + wd], dw, dout.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_conv_matches_the_direct_sums(rng, config, dtype, tol):
    c, f, k, s, p, h, w = config
    conv = nn.Conv2d(c, f, k, stride=s, padding=p, dtype=dtype, generator=1)
    x = rng.standard_normal((3, c, h, w)).astype(dtype)
    y = conv(x)
    wt, b = conv.weight.data.astype(np.float64), conv.bias.data.astype(np.float64)
    expected = _reference_conv(x.astype(np.float64), wt, b, s, p)
    assert y.shape == expected.shape and y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = conv.backward(dout)
    rdx, rdw, rdb = _reference_conv_backward(x.astype(np.float64), wt, dout.astype(np.float64), s, p)
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(conv.weight.grad, rdw, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(conv.bias.grad, rdb, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=IDS[:3])
def test_conv_gradient_check(rng, config):
    c, f, k, s, p, h, w = config
    conv = nn.Conv2d(c, f, k, stride=s, padding=p, dtype=np.float64, generator=2)
    report = gradcheck.check_module(conv, rng.standard_normal((2, c, h, w)))
    assert report.passed and report.max_error < 1e-7, str(report)


@needs_torch
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_conv_and_pool_match_torch(rng, config):
    c, f, k, s, p, h, w = config
    conv = nn.Conv2d(c, f, k, stride=s, padding=p, dtype=np.float64, generator=3)
    x = rng.standard_normal((2, c, h, w))
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(conv.weight.data, requires_grad=True)
    tb = torch.tensor(conv.bias.data, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
    y = conv(x)
    dout = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dout))
    dx = conv.backward(dout)
    for mine, theirs in ((y, ty), (dx, tx.grad), (conv.weight.grad, tw.grad), (conv.bias.grad, tb.grad)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-12)
    kernel = k if isinstance(k, int) else 2
    pad = min(p, kernel // 2)
    pool = nn.MaxPool2d(kernel, stride=s, padding=pad)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, kernel, stride=s, padding=pad)
    y = pool(x)
    dout = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dout))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(pool.backward(dout), tx.grad.numpy(), rtol=1e-15, atol=1e-15)


def _reference_pool(x, k, s, p):
    """Max over each window of x padded with -inf; the gradient to the first maximum of each window."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    oh, ow = (xp.shape[2] - k) // s + 1, (xp.shape[3] - k) // s + 1
    y = np.empty(x.shape[:2] + (oh, ow))
    where = np.empty(y.shape + (2,), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * s:i * s + k, j * s:j * s + k].reshape(x.shape[:2] + (-1,))
            first = np.argmax(window, axis=-1)
            y[:, :, i, j] = np.take_along_axis(window, first[..., None], -1)[..., 0]
            where[:, :, i, j, 0] = i * s + first // k - p
            where[:, :, i, j, 1] = j * s + first % k - p
    return y, where


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_max_pool_against_the_windows(rng, k, s, p):
    x = rng.standard_normal((2, 3, 7, 8))
    x[0, 0, :2, :2] = 1.5                                   # a tie: the first maximum in row-major order wins
    pool = nn.MaxPool2d(k, stride=s, padding=p)
    y = pool(x)
    expected, where = _reference_pool(x, k, s, p)
    np.testing.assert_array_equal(y, expected)
    dout = rng.standard_normal(y.shape)
    dx = pool.backward(dout)
    reference = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*y.shape):
        reference[n, c, where[n, c, i, j, 0], where[n, c, i, j, 1]] += dout[n, c, i, j]   # overlaps add up
    np.testing.assert_allclose(dx, reference, rtol=1e-15, atol=1e-15)
    report = gradcheck.check_module(nn.MaxPool2d(k, stride=s, padding=p), rng.standard_normal((2, 2, 6, 6)))
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 9, 6), (2, 2, 30, 30), (1, 2, 301, 4), (2, 3, 16, 16),
                                   (2, 3, 7, 9), (2, 2, 6, 34), (1, 2, 4, 1100)])
def test_two_by_two_max_pool_settles_ties_and_nans_as_the_row_major_scan(rng, dtype, shape):
    # values from {0, 1, 2} give ties in every arrangement of a window, and a few NaNs (alone, paired, first or not);
    # the oracle is NumPy's argmax over each window in row-major order (first maximum, first NaN). Even widths under
    # 32 (but 16) take the narrow form, in blocks of rows (the (301, 4) planes: two blocks and an odd last row); 16,
    # odd widths and 34 the row form; the widest shape has more output columns than the 2x2 form takes on its stack,
    # so it checks the generic path the same way.
    x = rng.integers(0, 3, shape).astype(dtype)
    x[rng.random(shape) < 0.05] = np.nan
    pool = nn.MaxPool2d(2)
    y = pool(x)
    expected, where = _reference_pool(x.astype(np.float64), 2, 2, 0)
    np.testing.assert_array_equal(y, expected.astype(dtype))
    flat = where[..., 0] * shape[3] + where[..., 1]
    np.testing.assert_array_equal(pool._idx, flat)
    assert np.isnan(y).any() and (np.isnan(y) == np.isnan(expected)).all()


def test_max_pool_propagates_nan_and_keeps_float32():
    x = np.zeros((1, 1, 2, 4), np.float32)
    x[0, 0, 1, 0] = np.nan
    y = nn.MaxPool2d(2)(x)
    assert y.dtype == np.float32 and np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 0


def test_results_do_not_depend_on_the_thread_count(rng):
    x = rng.standard_normal((16, 8, 20, 20)).astype(np.float32)
    outputs = []
    for n in (1, 2, 4):
        with cynet.threads(n):
            conv = nn.Conv2d(8, 6, 3, padding=1, generator=4)
            pool = nn.MaxPool2d(3, stride=2, padding=1)
            y = conv(x)
            dx = conv.backward(np.ones_like(y))
            z = pool(x)
            dz = pool.backward(np.ones_like(z))
            outputs.append((y, dx, z, dz))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            assert np.array_equal(a, b)


def test_two_python_threads_running_one_conv_forward_get_their_own_outputs(rng):
    # a server predicting from several threads with one model: the layer's scratch buffers were shared by the two
    # forwards, and each got the other's columns and products (wrong outputs in ~all rounds, no error)
    conv = nn.Conv2d(3, 8, 3, padding=1, generator=0).eval()
    xs = [rng.standard_normal((32, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    expected = [conv(x).copy() for x in xs]
    barrier, wrong = threading.Barrier(2), [0, 0]

    def predict(i):
        for _ in range(50):
            barrier.wait()
            wrong[i] += not np.array_equal(conv(xs[i]), expected[i])

    workers = [threading.Thread(target=predict, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert wrong == [0, 0]
    y = conv.train()(xs[0])       # a training pass after them still finds its columns for the backward
    dx = conv.backward(np.ones_like(y))
    twin = nn.Conv2d(3, 8, 3, padding=1, generator=0)
    assert np.array_equal(y, twin(xs[0])) and np.array_equal(dx, twin.backward(np.ones_like(y)))
    assert np.array_equal(conv.weight.grad, twin.weight.grad)


def test_gradients_accumulate_frozen_weights_and_no_input_grad(rng):
    conv = nn.Conv2d(2, 3, 3, dtype=np.float64, generator=5)
    x = rng.standard_normal((2, 2, 5, 5))
    dout = np.ones((2, 3, 3, 3))
    conv(x)
    assert conv.backward(dout, input_grad=False) is None
    once = conv.weight.grad.copy()
    conv(x)
    conv.backward(dout, input_grad=False)
    np.testing.assert_allclose(conv.weight.grad, 2 * once, rtol=1e-15)
    conv.zero_grad()
    conv.weight.requires_grad = False
    conv(x)
    conv.backward(dout)
    assert not np.any(conv.weight.grad) and np.any(conv.bias.grad)


@pytest.mark.parametrize("make,x,error,message", [
    (lambda: nn.Conv2d(3, 4, 3), np.zeros((2, 2, 5, 5), np.float32), ValueError, r"expected input of shape \(N, 3"),
    (lambda: nn.Conv2d(3, 4, 3), np.zeros((2, 3, 5), np.float32), ValueError, "expected input of shape"),
    (lambda: nn.Conv2d(3, 4, 5), np.zeros((2, 3, 4, 4), np.float32), ValueError, "smaller than the kernel"),
    (lambda: nn.Conv2d(3, 4, 3), np.zeros((2, 3, 5, 5)), TypeError, "must have the weights' dtype float32"),
    (lambda: nn.MaxPool2d(2), np.zeros((2, 3, 5)), ValueError, r"expected input of shape \(N, C, H, W\)"),
    (lambda: nn.MaxPool2d(2), np.zeros((2, 3, 4, 4), np.int64), TypeError, "float32 or float64"),
])
def test_input_validation(make, x, error, message):
    with pytest.raises(error, match=message):
        make()(x)


@pytest.mark.parametrize("make,message", [
    (lambda: nn.Conv2d(0, 4, 3), "in_channels must be a positive int"),
    (lambda: nn.Conv2d(3, 4, 0), "kernel_size must be an int >= 1"),
    (lambda: nn.Conv2d(3, 4, 3, stride=(1, 2)), "stride must be the same along both axes"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), "padding must be an int >= 0"),
    (lambda: nn.MaxPool2d(2, padding=2), "padding must be at most half the kernel size"),
    (lambda: nn.MaxPool2d((2, 3)), "the default stride"),
])
def test_setting_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_reprs_and_backward_before_forward():
    assert repr(nn.Conv2d(3, 8, 3, padding=1)) == \
        "Conv2d(3, 8, kernel_size=(3, 3), stride=1, padding=1, bias=True)"
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2), stride=2, padding=0)"
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))


def test_a_small_cnn_with_batch_norm_learns_the_cifar_subset():
    from cynet.data import load_cifar10_subset

    data = load_cifar10_subset()
    x = (data.x_train[:256].astype(np.float32) / 255 - 0.5).astype(np.float32)
    y = data.y_train[:256]
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, init="he"), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1, init="he"), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 10, init="normal"))
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                      progress=False)
    history = trainer.fit(x, y, epochs=8, batch_size=32)
    assert history["loss"][0] == pytest.approx(np.log(10), abs=0.3)
    assert history["train_acc"][-1] > 0.5 > history["train_acc"][0]
    assert cynet.summary(model, (3, 32, 32)).total_params == sum(p.data.size for p in model.parameters())


# --- average pooling --------------------------------------------------------------------------------------------------
def _reference_avg_pool(x, k, s, p, include_pad):
    """Mean of each window of x (zero padding), divided by the padded or the clipped window size, and its backward
    operator as an explicit (outputs x inputs) weight matrix per plane."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    weights = np.zeros((oh * ow, h * w))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - p, j * s - p
            r1, c1 = min(r0 + k, h + p), min(c0 + k, w + p)
            rows, cols = range(max(r0, 0), min(r1, h)), range(max(c0, 0), min(c1, w))
            size = (r1 - r0) * (c1 - c0) if include_pad else len(rows) * len(cols)
            for r in rows:
                for q in cols:
                    weights[i * ow + j, r * w + q] = 1.0 / size
    y = (x.reshape(n, c, h * w) @ weights.T).reshape(n, c, oh, ow)
    return y, weights


@pytest.mark.parametrize("k,s,p,include_pad",
                         [(2, 2, 0, True), (3, 2, 1, True), (3, 2, 1, False), (3, 1, 1, False)])
def test_avg_pool_against_the_windows(rng, k, s, p, include_pad):
    x = rng.standard_normal((2, 3, 7, 9))
    pool = nn.AvgPool2d(k, stride=s, padding=p, count_include_pad=include_pad)
    y = pool(x)
    expected, weights = _reference_avg_pool(x, k, s, p, include_pad)
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-15)
    dout = rng.standard_normal(y.shape)
    dx = pool.backward(dout)
    np.testing.assert_allclose(dx, (dout.reshape(2, 3, -1) @ weights).reshape(x.shape), rtol=1e-14, atol=1e-15)
    assert pool(x.astype(np.float32)).dtype == np.float32
    report = gradcheck.check_module(nn.AvgPool2d(k, stride=s, padding=p, count_include_pad=include_pad),
                                    rng.standard_normal((2, 2, 7, 9)))
    assert report.passed and report.max_error < 1e-7, str(report)


@pytest.mark.parametrize("size", [1, 2, 3, (4, 5), (5, 2)])
def test_adaptive_avg_pool_windows_and_global_pooling(rng, size):
    x = rng.standard_normal((2, 3, 7, 9))
    pool = nn.AdaptiveAvgPool2d(size)
    y = pool(x)
    oh, ow = (size, size) if isinstance(size, int) else size
    assert y.shape == (2, 3, oh, ow)
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * 7 // oh, -(-(i + 1) * 7 // oh))
            cols = slice(j * 9 // ow, -(-(j + 1) * 9 // ow))
            np.testing.assert_allclose(y[:, :, i, j], x[:, :, rows, cols].mean(axis=(2, 3)), rtol=1e-13, atol=1e-15)
    report = gradcheck.check_module(nn.AdaptiveAvgPool2d(size), rng.standard_normal((2, 2, 7, 9)))
    assert report.passed and report.max_error < 1e-7, str(report)


@needs_torch
@pytest.mark.parametrize("k,s,p,include_pad",
                         [(2, 2, 0, True), (3, 2, 1, True), (3, 2, 1, False), ((3, 2), 2, 1, True)])
def test_avg_pools_match_torch(rng, k, s, p, include_pad):
    x = rng.standard_normal((2, 3, 7, 9))
    for ours, theirs in ((nn.AvgPool2d(k, stride=s, padding=p, count_include_pad=include_pad),
                          lambda t: torch.nn.functional.avg_pool2d(t, k, stride=s, padding=p,
                                                                   count_include_pad=include_pad)),
                         (nn.AdaptiveAvgPool2d((3, 4)), lambda t: torch.nn.functional.adaptive_avg_pool2d(t, (3, 4)))):
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        y = ours(x)
        dout = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(dout))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(ours.backward(dout), tx.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_avg_pools_thread_invariance_validation_and_repr(rng):
    x = rng.standard_normal((16, 8, 20, 20)).astype(np.float32)
    results = []
    for n in (1, 2, 4):
        with cynet.threads(n):
            pools = [nn.AvgPool2d(3, stride=2, padding=1), nn.AdaptiveAvgPool2d((6, 7))]
            results.append([(pool(x), pool.backward(np.ones_like(pool(x)))) for pool in pools])
    for other in results[1:]:
        for (y0, d0), (y1, d1) in zip(results[0], other):
            assert np.array_equal(y0, y1) and np.array_equal(d0, d1)
    with pytest.raises(ValueError, match="padding must be at most half the kernel size"):
        nn.AvgPool2d(2, padding=2)
    with pytest.raises(TypeError, match="count_include_pad must be True or False"):
        nn.AvgPool2d(2, count_include_pad="yes")
    with pytest.raises(ValueError, match="output_size must be an int >= 1"):
        nn.AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.AvgPool2d(5)(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\)"):
        nn.AdaptiveAvgPool2d(1)(np.zeros((3, 3)))
    assert repr(nn.AvgPool2d(2)) == "AvgPool2d(kernel_size=(2, 2), stride=2, padding=0)"
    assert repr(nn.AvgPool2d(3, 1, 1, count_include_pad=False)) == \
        "AvgPool2d(kernel_size=(3, 3), stride=1, padding=1, count_include_pad=False)"
    assert repr(nn.AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=(1, 1))"


def test_the_kernels_refuse_inconsistent_arrays():
    """The checks in front of the loops: a wrong buffer is an error, never an out-of-bounds write."""
    from cynet.nn.conv import _k

    k = _k()
    x = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"im2col: the columns must be \(27, 18\)"):
        k.im2col(x, 3, 3, 1, 0, np.zeros((27, 17)), 1)
    with pytest.raises(ValueError, match=r"col2im: the columns must be \(27, 18\)"):
        k.col2im(np.zeros((26, 18)), 3, 3, 1, 0, x, 1)
    with pytest.raises(ValueError, match=r"maxpool_forward: y and idx must be \(2, 3, 2, 2\)"):
        k.maxpool_forward(x, 2, 2, 2, 0, np.zeros((2, 3, 2, 2)), np.zeros((2, 3, 2, 3), np.int64), 1)
    with pytest.raises(ValueError, match="maxpool_backward: dout, idx and dx disagree in shape"):
        k.maxpool_backward(np.zeros((2, 3, 2, 2)), np.zeros((2, 3, 2, 3), np.int64), x, 1)
    rows = (np.array([0, 2]), np.array([2, 4]), np.ones(2) / 2)
    windows = (rows[0], rows[1], rows[0], rows[1], rows[2], rows[2])
    with pytest.raises(ValueError, match=r"avgpool_forward: y must be \(2, 3, 2, 2\)"):
        k.avgpool_forward(x, *windows, np.zeros((2, 3, 2, 3)), 1)
    with pytest.raises(ValueError, match=r"avgpool_backward: dout must be \(2, 3, 2, 2\)"):
        k.avgpool_backward(np.zeros((2, 3, 3, 2)), *windows, x, 1)
    with pytest.raises(ValueError, match=r"row window 1 \[2, 6\) outside \[0, 5\]"):
        k.avgpool_forward(x, rows[0], np.array([2, 6]), *windows[2:], np.zeros((2, 3, 2, 2)), 1)
    with pytest.raises(ValueError, match="window arrays of different lengths"):
        k.avgpool_forward(x, rows[0], rows[1], rows[0], rows[1], rows[2], np.ones(3), np.zeros((2, 3, 2, 2)), 1)
    with pytest.raises(ValueError, match=r"to_images: src must be \(3, 8\) \(and bias \(3,\)\) for y \(2, 3, 4\), got "
                                         r"\(3, 7\)"):
        k.to_images(np.zeros((3, 7)), np.zeros(3), True, np.zeros((2, 3, 4)), 1)
    with pytest.raises(ValueError, match="to_images: src must be"):
        k.to_images(np.zeros((3, 8)), np.zeros(2), True, np.zeros((2, 3, 4)), 1)
    with pytest.raises(ValueError, match=r"to_columns: dst must be \(3, 8\) for src \(2, 3, 4\), got \(3, 9\)"):
        k.to_columns(np.zeros((2, 3, 4)), np.zeros((3, 9)), 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_layout_kernels_against_numpy_transposes(rng, threads):
    from cynet.nn.conv import _k

    product, bias = rng.standard_normal((5, 3 * 7)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    y = np.empty((3, 5, 7), np.float32)
    _k().to_images(product, bias, True, y, threads)
    np.testing.assert_array_equal(y, (product + bias[:, None]).reshape(5, 3, 7).transpose(1, 0, 2))
    _k().to_images(product, bias[:0], False, y, threads)
    np.testing.assert_array_equal(y, product.reshape(5, 3, 7).transpose(1, 0, 2))
    columns = np.empty((5, 21), np.float32)
    _k().to_columns(y, columns, threads)
    np.testing.assert_array_equal(columns, product)


@pytest.mark.parametrize("chunk_images", [1, 2, 3])
def test_conv_in_chunks_matches_the_direct_sums_and_rebuilds_only_the_stale_columns(rng, monkeypatch, chunk_images):
    # CHUNK_BYTES set for 1, 2 or 3 images of a batch of 7 (a short last chunk): the same sums as the direct
    # reference, and the backward rebuilds the columns of every chunk but the last, which the forward left in place
    import cynet.nn.conv as conv_module

    conv = nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64, generator=2)
    x = rng.standard_normal((7, 3, 5, 6))
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", conv.weight.data[0].size * 30 * 8 * chunk_images)
    calls = []
    original = conv._im2col
    monkeypatch.setattr(conv, "_im2col", lambda xs, cols: (calls.append(len(xs)), original(xs, cols)))
    y = conv(x)
    chunks = -(-7 // chunk_images)
    assert len(calls) == chunks and calls[-1] == 7 - chunk_images * (chunks - 1)
    wt, b = conv.weight.data, conv.bias.data
    np.testing.assert_allclose(y, _reference_conv(x, wt, b, 1, 1), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    for repeat in range(2):                 # a second backward rebuilds every chunk, with the same sums
        calls.clear()
        conv.zero_grad()
        dx = conv.backward(dout)
        assert len(calls) == chunks - 1 + repeat
        rdx, rdw, rdb = _reference_conv_backward(x, wt, dout, 1, 1)
        np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(conv.weight.grad, rdw, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(conv.bias.grad, rdb, rtol=1e-12, atol=1e-12)
    conv.weight.requires_grad = False         # frozen: no columns needed, dx still right
    calls.clear()
    np.testing.assert_allclose(conv.backward(dout), rdx, rtol=1e-12, atol=1e-12)
    assert calls == []


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-14)], ids=["float32", "float64"])
@pytest.mark.parametrize("m,p,t", [(32, 27, 3000), (5, 7, 1000), (4, 4, 16), (1, 1, 3), (9, 13, 2049),
                                   (6, 30, 2 * 1024 + 17), (3, 2, 0), (0, 3, 50)])
def test_row_products_match_numpy_with_the_same_bits_for_every_thread_count_and_simd_variant(rng, dtype, tol, m, p, t):
    # out = A B^T and the row sums of A in float64, by the kernel Conv2d uses for small weight gradients: tiles of
    # 4 x 4, 2 x 2 or 1 x 2 outputs by SIMD variant, dealt to threads, only group sums whose order T alone fixes
    from cynet._kernels import available_isas, load

    a, b = rng.standard_normal((m, t)).astype(dtype), rng.standard_normal((p, t)).astype(dtype)
    want, want_sums = a.astype(np.float64) @ b.astype(np.float64).T, a.astype(np.float64).sum(axis=1)
    results = []
    for isa in available_isas("conv"):
        for threads in (1, 2, 3, 4):
            out, sums = np.full((m, p), np.nan), np.full(m, np.nan)
            load("conv", isa).row_products(a, b, out, sums, True, threads)
            results.append((isa, threads, out, sums))
    _, _, out, sums = results[0]
    np.testing.assert_allclose(out, want, rtol=0, atol=tol * max(1.0, np.sqrt(t)) * 4)
    np.testing.assert_allclose(sums, want_sums, rtol=0, atol=tol * max(1.0, np.sqrt(t)) * 4)
    for isa, threads, other, other_sums in results[1:]:
        assert np.array_equal(other, out) and np.array_equal(other_sums, sums), (isa, threads)


def test_row_products_refuse_inconsistent_arrays_and_leave_the_sums_alone_without_them():
    from cynet.nn.conv import _k

    a, b = np.ones((3, 20), np.float32), np.ones((2, 20), np.float32)
    with pytest.raises(ValueError, match=r"row_products: A \(3, 20\) and B \(2, 20\) need out \(3, 2\)"):
        _k().row_products(a, b, np.zeros((2, 3)), np.zeros(3), True, 1)
    with pytest.raises(ValueError, match="need out"):
        _k().row_products(a, np.ones((2, 19), np.float32), np.zeros((3, 2)), np.zeros(3), True, 1)
    with pytest.raises(ValueError, match=r"and row_sums \(3,\)"):
        _k().row_products(a, b, np.zeros((3, 2)), np.zeros(2), True, 1)
    out, sums = np.zeros((3, 2)), np.full(3, 7.0)
    _k().row_products(a, b, out, sums, False, 2)
    assert np.array_equal(out, np.full((3, 2), 20.0)) and np.array_equal(sums, np.full(3, 7.0))


class _KernelSpy:
    """The conv kernels, counting calls of one of them."""

    def __init__(self, kernels, name):
        self.kernels, self.name, self.calls = kernels, name, 0

    def __getattr__(self, attr):
        self.calls += attr == self.name
        return getattr(self.kernels, attr)


@pytest.mark.parametrize("bias_grad", [True, False])
def test_small_weight_gradients_by_row_products_match_the_blas_path(rng, monkeypatch, bias_grad):
    # a first layer's shapes (3 -> 8 filters of 3 x 3: F K / (F + K) = 6.4) take the row-products path chunk by
    # chunk (three chunks here); the same gradients as the BLAS product and NumPy sum, accumulated over two backward
    # passes, with the bias frozen or not; a frozen weight needs neither
    import cynet.nn.conv as conv_module

    x = rng.standard_normal((7, 3, 10, 9)).astype(np.float32)
    dout = rng.standard_normal((7, 8, 10, 9)).astype(np.float32)
    grads = {}
    for ratio in (0, conv_module.SMALL_GRADIENT_RATIO):
        monkeypatch.setattr(conv_module, "SMALL_GRADIENT_RATIO", ratio)
        monkeypatch.setattr(conv_module, "CHUNK_BYTES", 27 * 90 * 4 * 3)
        spy = _KernelSpy(conv_module._k(), "row_products")
        monkeypatch.setattr(conv_module, "_kernels", spy)
        conv = nn.Conv2d(3, 8, 3, padding=1, init="he", generator=3)
        conv.bias.requires_grad = bias_grad
        for _ in range(2):
            conv(x)
            conv.backward(dout, input_grad=False)
        assert spy.calls == (6 if ratio else 0)
        grads[ratio] = (conv.weight.grad.copy(), conv.bias.grad.copy())
        conv.zero_grad()
        conv.weight.requires_grad = False
        conv(x)
        conv.backward(dout, input_grad=False)
        assert spy.calls == (6 if ratio else 0) and not np.any(conv.weight.grad)
        assert np.any(conv.bias.grad) == bias_grad
    (w_blas, b_blas), (w_rows, b_rows) = grads[0], grads[conv_module.SMALL_GRADIENT_RATIO]
    np.testing.assert_allclose(w_rows, w_blas, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(b_rows, b_blas, rtol=1e-5, atol=1e-4)
    _, rdw, rdb = _reference_conv_backward(x.astype(np.float64), conv.weight.data.astype(np.float64),
                                           dout.astype(np.float64), 1, 1)
    np.testing.assert_allclose(w_rows, 2 * rdw, rtol=1e-5, atol=1e-4)
    assert not bias_grad or np.allclose(b_rows, 2 * rdb, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("c,h,w,kh,kw,stride,pad", [
    (3, 8, 8, 3, 3, 1, 1), (2, 5, 7, 3, 3, 1, 1), (2, 1, 1, 3, 3, 1, 1), (1, 2, 9, 3, 3, 1, 1), (2, 6, 4, 5, 5, 1, 2),
    (3, 4, 5, 1, 1, 1, 0), (2, 7, 6, 4, 3, 1, 1), (2, 3, 3, 5, 5, 1, 2), (2, 6, 6, 3, 3, 1, 0), (2, 7, 8, 3, 3, 2, 1),
    (1, 1, 5, 1, 3, 1, 1)])
def test_im2col_against_numpy_windows(rng, dtype, c, h, w, kh, kw, stride, pad):
    # stride 1 with OW == W (the 'same' padding) takes the shifted-copy form, the rest the row-by-row form: both the
    # columns a zero-padded sliding window gives, for planes smaller than the kernel too
    from cynet.nn.conv import _k

    n = 3
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    want = np.empty((c * kh * kw, n * oh * ow), dtype)
    for ci in range(c):
        for a in range(kh):
            for b in range(kw):
                window = padded[:, ci, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride]
                want[(ci * kh + a) * kw + b] = window.reshape(-1)
    for threads in (1, 2):
        cols = np.full(want.shape, np.nan, dtype)
        _k().im2col(x, kh, kw, stride, pad, cols, threads)
        np.testing.assert_array_equal(cols, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("c,h,w,kh,kw,stride,pad", [
    (3, 8, 8, 3, 3, 1, 1), (2, 5, 7, 3, 3, 1, 1), (2, 1, 1, 3, 3, 1, 1), (2, 6, 4, 5, 5, 1, 2), (3, 4, 5, 1, 1, 1, 0),
    (2, 7, 6, 4, 3, 1, 1), (2, 3, 3, 5, 5, 1, 2), (2, 6, 6, 3, 3, 1, 0), (2, 7, 8, 3, 3, 2, 1)])
def test_col2im_adds_the_columns_back_tap_by_tap(rng, dtype, c, h, w, kh, kw, stride, pad):
    # the adjoint of im2col: each kernel offset's columns added into the padded image in offset order, the padding's
    # share dropped; the same bits as that NumPy loop (stride 1 with OW == W takes the shifted-run form, which zeroes
    # the padding's entries of its scratch columns first), non-finite values in the padding's share included
    from cynet.nn.conv import _k

    n = 3
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    dcols = rng.standard_normal((c * kh * kw, n * oh * ow)).astype(dtype)
    want = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype)
    for ci in range(c):
        for a in range(kh):
            for b in range(kw):
                rows, cols = slice(a, a + stride * (oh - 1) + 1, stride), slice(b, b + stride * (ow - 1) + 1, stride)
                want[:, ci, rows, cols] += dcols[(ci * kh + a) * kw + b].reshape(n, oh, ow)
    want = want[:, :, pad:pad + h, pad:pad + w]
    if pad:               # a gradient that lands in the padding (a row above, a column left of it) never reaches dx
        dcols.reshape(c * kh * kw, n, oh, ow)[0, :, 0, 0] = np.inf
        dcols.reshape(c * kh * kw, n, oh, ow)[kw * (kh // 2), :, oh // 2, 0] = np.nan
    for threads in (1, 2):
        dx = np.zeros((n, c, h, w), dtype)
        _k().col2im(dcols.copy(), kh, kw, stride, pad, dx, threads)
        np.testing.assert_array_equal(dx, want)


def test_pooling_refuses_windows_without_values():
    with pytest.raises(ValueError, match="every window must hold at least one value"):
        nn.AdaptiveAvgPool2d(1)(np.ones((1, 2, 0, 0), np.float32))   # (it returned NaN)


def test_conv_refuses_weights_and_bias_replaced_by_arrays_it_cannot_use():
    x = np.ones((1, 3, 5, 5), np.float32)
    conv = nn.Conv2d(3, 4, 3)
    conv.weight.data = np.ones((4, 27), np.float32)        # forward ran, the backward failed to broadcast
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 3, 3, 3\)"):
        conv(x)
    conv = nn.Conv2d(3, 4, 3)
    conv.bias.data = np.ones(4)                            # a kernel's 'Buffer dtype mismatch'
    with pytest.raises(TypeError, match=r"bias must be a float32 array of shape \(4,\)"):
        conv(x)
    conv = nn.Conv2d(3, 4, 3)
    expected = conv(x).copy()
    conv.bias.data = conv.bias.data.repeat(2)[::2]         # strided: taken as a contiguous copy
    np.testing.assert_array_equal(conv(x), expected)
    conv.weight.data = conv.weight.data.astype(np.float16)
    with pytest.raises(TypeError, match="layers compute in float32 or float64"):
        conv(x.astype(np.float16))


@pytest.mark.parametrize("shape", [(1, 1, 0, 4), (2, 3, 4, 0), (2, 3, 0, 0)])
def test_max_pooling_refuses_empty_images_instead_of_reading_outside_them(shape):
    # with padding every window of an empty image lies in the padding: the kernel took x's first value (memory outside
    # an empty view, e.g. 42s from the array it was cut from); torch refuses such input, as AvgPool2d does
    big = np.full((2, 3, 4, 4), 42.0, np.float32)
    x = big[:shape[0], :shape[1], :shape[2], :shape[3]]
    for layer in (nn.MaxPool2d(2, stride=1, padding=1), nn.MaxPool2d(2)):
        with pytest.raises(ValueError, match="empty images"):
            layer(x)
    from cynet._kernels import conv
    y = np.zeros((shape[0], shape[1], 1 + shape[2], 1 + shape[3]), np.float32)
    with pytest.raises(ValueError, match="empty images"):
        conv.maxpool_forward(np.ascontiguousarray(x), 2, 2, 1, 1, y, np.zeros(y.shape, np.int64), 1)


def test_conv2d_refuses_empty_images_as_max_pooling_does():
    # (1, 3, 0, 4) with padding 1 gave a (1, 2, 2, 6) output of bias values; torch refuses it, as MaxPool2d does
    conv = nn.Conv2d(3, 2, 1, padding=1)
    with pytest.raises(ValueError, match=r"Conv2d\(.*\): the images must hold at least one pixel, got an input of "
                                         r"shape \(1, 3, 0, 4\) \(empty images\)"):
        conv(np.zeros((1, 3, 0, 4), np.float32))
    assert conv(np.zeros((0, 3, 2, 2), np.float32)).shape == (0, 2, 4, 4)      # an empty batch is still fine
