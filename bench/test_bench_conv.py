"""Conv2d and MaxPool2d, forward + backward: cynet against a NumPy im2col reference and PyTorch (when importable).

One pytest-benchmark group per layer and thread count (``conv/<shape>/tN``, ``maxpool/<shape>/tN``); each call is
one forward and one backward pass (dx included), float32:

- ``conv/c3-32``:  (128, 3, 32, 32) -> 32 filters 3x3, padding 1 (a CIFAR-10 net's first layer);
- ``conv/c32-64``: (128, 32, 16, 16) -> 64 filters 3x3, padding 1 (its second, after a 2x2 pooling);
- ``maxpool/c32``: (128, 32, 32, 32), 2x2 windows, stride 2;
- ``augment/crop``, ``augment/flip``: the CIFAR-10 example's augmentation of a (256, 3, 32, 32) float32 batch,
  ``RandomCrop(32, padding=2)`` and ``RandomHorizontalFlip()`` (``cynet``: their kernels) against the NumPy
  formulations they replaced (``numpy``: a zero-padded copy and a four-axis fancy gather; a copy and a fancy-indexed
  assignment), from the same seed, so the same windows and flips;
- ``augment/standardize``: the example's ``Standardize(per="channel")`` of a uint8 batch into float32 against its
  NumPy formulation (the same values) and a conversion of the batch;
- ``cnn_step``: one training step (forward, loss, backward, SGD with momentum) of ``examples/train_cifar10.py
  --model cnn``'s net, three conv 3x3 - batch norm - ReLU - max pool 2x2 blocks (32, 64, 128 filters) and a Linear
  classifier, on a batch of 256 CIFAR-shaped images: cynet against the same net in torch, and cynet with its large
  outputs fresh arrays every pass (``cynet_fresh``: the reuse of cynet.nn._reuse off, as ``CYNET_REUSE_ARRAYS=0``).

Implementations: ``cynet`` (the module), ``numpy`` (im2col with ``sliding_window_view`` and ``tensordot``, col2im by
``np.add.at``-free slice sums over the kernel offsets: what a careful NumPy user writes) and ``torch``
(``torch.nn.functional`` with autograd; oneDNN on x86). Before timing, each implementation's output and input
gradient are checked against cynet's.

Run:  python -m pytest bench/test_bench_conv.py --benchmark-only --benchmark-json=bench/results/conv.json
      python bench/report.py bench/results/conv.json
"""
import numpy as np
import pytest

from cynet import nn
from settings import bench_threads, memory_pass

THREADS = bench_threads()
CONVS = {"c3-32": ((128, 3, 32, 32), 32), "c32-64": ((128, 32, 16, 16), 64)}
POOL = (128, 32, 32, 32)


def numpy_conv(x, w, b, dout):
    """(y, dx, dw, db) of a 3x3 padding-1 stride-1 convolution in NumPy: im2col by a sliding-window view."""
    f, c, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))    # (N, C, H, W, kh, kw)
    y = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2) + b[None, :, None, None]
    dw = np.tensordot(dout, windows, axes=([0, 2, 3], [0, 2, 3]))
    db = dout.sum(axis=(0, 2, 3))
    dxp = np.zeros_like(xp)
    h, wd = x.shape[2:]
    for a in range(kh):
        for e in range(kw):
            dxp[:, :, a:a + h, e:e + wd] += np.tensordot(dout, w[:, :, a, e], axes=([1], [0])).transpose(0, 3, 1, 2)
    return y, dxp[:, :, 1:-1, 1:-1], dw, db


def numpy_pool(x, dout):
    """(y, dx) of 2x2 stride-2 max pooling: a reshape to windows, the first maximum of each."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    first = windows.argmax(axis=-1)
    y = np.take_along_axis(windows, first[..., None], -1)[..., 0]
    dwin = np.zeros_like(windows)
    np.put_along_axis(dwin, first[..., None], dout[..., None], -1)
    dx = dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
    return y, dx


def _runner(impl, layer, x, dout, torch_module):
    """A zero-argument call doing one forward and one backward pass, and its (y, dx) for the check."""
    if impl == "cynet":
        def run():
            y = layer(x)
            return y, layer.backward(dout)
    elif impl == "numpy":
        if isinstance(layer, nn.Conv2d):
            def run():
                y, dx, _, _ = numpy_conv(x, layer.weight.data, layer.bias.data, dout)
                return y, dx
        else:
            def run():
                return numpy_pool(x, dout)
    else:
        torch = torch_module
        tx = torch.tensor(x, requires_grad=True)
        tdout = torch.tensor(dout)
        if isinstance(layer, nn.Conv2d):
            tw = torch.tensor(layer.weight.data, requires_grad=True)
            tb = torch.tensor(layer.bias.data, requires_grad=True)
            forward = lambda: torch.nn.functional.conv2d(tx, tw, tb, padding=layer.padding)   # noqa: E731
        else:
            forward = lambda: torch.nn.functional.max_pool2d(tx, 2)                          # noqa: E731

        def run():
            tx.grad = None
            y = forward()
            y.backward(tdout)
            return y.detach().numpy(), tx.grad.numpy()
    return run


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "numpy", "torch"])
@pytest.mark.parametrize("name", [*CONVS, "pool"])
def test_conv_and_pool(benchmark, timing, use_threads, request, name, impl, threads):
    rng = np.random.default_rng(0)
    if name == "pool":
        shape, layer = POOL, nn.MaxPool2d(2)
        benchmark.group = f"maxpool/c{POOL[1]}/t{threads}"
    else:
        shape, filters = CONVS[name]
        layer = nn.Conv2d(shape[1], filters, 3, padding=1, init="he", generator=0)
        benchmark.group = f"conv/{name}/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, shape=list(shape))
    x = rng.standard_normal(shape, dtype=np.float32)
    out_shape = layer(x).shape
    dout = rng.standard_normal(out_shape, dtype=np.float32)
    torch_module = request.getfixturevalue("torch_module") if impl == "torch" else None
    run = _runner(impl, layer, x, dout, torch_module)
    with use_threads(threads):
        y, dx = run()
        y_ref, dx_ref = _runner("cynet", layer, x, dout, None)()
        np.testing.assert_allclose(y, y_ref, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-3, atol=1e-3)
        timing.run(benchmark, run)


AUGMENT_BATCH = (256, 3, 32, 32)
AUGMENT_PADDING = 2


def numpy_crop(xb, rng, padding=AUGMENT_PADDING):
    """RandomCrop in NumPy: pad with zeros, draw each image's offset (rows, then columns), gather the windows."""
    n, c, h, w = xb.shape
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), xb.dtype)
    padded[:, :, padding:padding + h, padding:padding + w] = xb
    dy = rng.integers(0, 2 * padding + 1, size=n)
    dx = rng.integers(0, 2 * padding + 1, size=n)
    rows = (dy[:, None] + np.arange(h))[:, None, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, None, :]
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def numpy_flip(xb, rng, p=0.5):
    """RandomHorizontalFlip in NumPy: a copy, then the drawn images reversed along their last axis."""
    flip = rng.random(len(xb)) < p
    out = np.array(xb, copy=True)
    out[flip] = xb[flip, :, :, ::-1]
    return out


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "numpy", "limit"])
@pytest.mark.parametrize("name", ["crop", "flip"])
def test_augmentation(benchmark, timing, use_threads, name, impl, threads):
    """``limit``: a one-thread copy of the batch into a preallocated output, the bytes any augmentation moves."""
    from cynet.data import RandomCrop, RandomHorizontalFlip

    benchmark.group = f"augment/{name}/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, shape=list(AUGMENT_BATCH))
    xb = np.random.default_rng(0).standard_normal(AUGMENT_BATCH, dtype=np.float32)
    cynet_op = RandomCrop(32, padding=AUGMENT_PADDING) if name == "crop" else RandomHorizontalFlip()
    with use_threads(threads):
        if impl == "limit":
            timing.run(benchmark, memory_pass("copy", [xb], np.zeros_like(xb)))
            return
        op = cynet_op if impl == "cynet" else (numpy_crop if name == "crop" else numpy_flip)
        np.testing.assert_array_equal(op(xb, np.random.default_rng(1)), cynet_op(xb, np.random.default_rng(1)))
        rng = np.random.default_rng(2)
        timing.run(benchmark, lambda: op(xb, rng))


def numpy_standardize(xb, mean, scale):
    """Per-channel standardisation in NumPy, into float32: subtract, then divide (Standardize's NumPy path)."""
    x3 = xb.reshape(xb.shape[0], xb.shape[1], -1)
    out = np.empty(x3.shape, np.float32)
    np.subtract(x3, mean[:, None].astype(np.float32), out=out, casting="unsafe")
    out /= scale[:, None].astype(np.float32)
    return out.reshape(xb.shape)


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "numpy", "limit"])
def test_standardize_batch(benchmark, timing, use_threads, impl, threads):
    """The CIFAR-10 example's ``Standardize(per="channel")`` of a uint8 (256, 3, 32, 32) batch into float32:
    ``cynet`` (its kernel), ``numpy`` (the formulation it replaced; the same values, checked) and ``limit``
    (a one-thread conversion of the batch to float32: the bytes it must read and write)."""
    from cynet.data import Standardize

    benchmark.group = f"augment/standardize/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, shape=list(AUGMENT_BATCH))
    xb = np.random.default_rng(0).integers(0, 256, AUGMENT_BATCH).astype(np.uint8)
    st = Standardize(per="channel").fit(xb)
    out = np.empty(AUGMENT_BATCH, np.float32)
    with use_threads(threads):
        np.testing.assert_array_equal(st.transform(xb), numpy_standardize(xb, st.mean_, st.scale_))
        if impl == "cynet":
            run = lambda: st.transform(xb)                                               # noqa: E731
        elif impl == "numpy":
            run = lambda: numpy_standardize(xb, st.mean_, st.scale_)                     # noqa: E731
        else:
            run = lambda: np.copyto(out, xb, casting="unsafe")                            # noqa: E731
        timing.run(benchmark, run)


def _cynet_cnn():
    layers, channels = [], 3
    for i, width in enumerate((32, 64, 128)):
        layers += [nn.Conv2d(channels, width, 3, padding=1, init="he", generator=i), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10, generator=3))


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "cynet_fresh", "torch"])
def test_cnn_training_step(benchmark, timing, use_threads, request, monkeypatch, impl, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    benchmark.group = f"cnn_step/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, batch=256)
    if impl.startswith("cynet"):
        from cynet.nn import SoftmaxCrossEntropy, _reuse
        from cynet.optim import SGD

        if impl == "cynet_fresh":                 # every output a fresh array, as CYNET_REUSE_ARRAYS=0 makes them
            monkeypatch.setattr(_reuse, "ENABLED", False)

        model, loss = _cynet_cnn(), SoftmaxCrossEntropy()
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)

        def run():
            optimizer.zero_grad()
            loss.forward(model.forward(x), y)
            model.backward(loss.backward(), input_grad=False)
            optimizer.step()
    else:
        torch = request.getfixturevalue("torch_module")
        blocks = []
        for cin, cout in ((3, 32), (32, 64), (64, 128)):
            blocks += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout),
                       torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2)]
        model = torch.nn.Sequential(*blocks, torch.nn.Flatten(), torch.nn.Linear(2048, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def run():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(tx), ty).backward()
            optimizer.step()
    with use_threads(threads):
        timing.run(benchmark, run)
