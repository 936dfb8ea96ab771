"""One training epoch of a CIFAR-sized MLP: cynet against a NumPy reference loop, PyTorch and the bare-GEMM floor.

The model of the lecture's assignment, 3072-1024-ReLU-512-ReLU-10 (``mlp``), and the same with batch normalisation
after each hidden Linear (``mlp_bn``: 3072-1024-BN-ReLU-512-BN-ReLU-10), softmax cross-entropy, SGD with momentum
0.9, one epoch over 10,000 CIFAR-shaped float32 samples in mini-batches of 256 (39 full batches and one of 16),
shuffled. One pytest-benchmark group per model and thread count (``epoch/mlp/tN``, ``epoch/mlp_bn/tN``); the
implementations:

- ``cynet``:       ``cynet.train.Trainer(...).fit(x, y, epochs=1)`` without a progress bar — what a user runs;
- ``cynet_loop``:  the same loop written by hand over cynet's modules, loss and optimiser (no trainer bookkeeping);
- ``numpy``:       the CS231n-style loop in plain NumPy (matmul, maximum, softmax, momentum update);
- ``torch``:       ``torch.nn.Sequential`` + ``F.cross_entropy`` + ``torch.optim.SGD`` (skipped without torch);
- ``floor``:       only the matrix products an epoch must do (3 forward, 3 weight-gradient and 2 input-gradient
                   products per batch, into preallocated outputs): no implementation can be faster. The same
                   floor serves both models (batch norm adds no matrix product).

The issue's target: cynet's epoch within 1.1x the floor and never slower than torch.

``bias_relu/<direction>/256xW/tN``: the hidden Linears' passes besides the product (bias add with the ReLU after
it; the ReLU's mask with the bias gradient), the kernels against NumPy's formulation and a memory pass of the same
bytes.

Run:  python -m pytest bench/test_bench_training.py --benchmark-only --benchmark-json=bench/results/training.json
"""

import numpy as np
import pytest

from cynet import kernel_threads, nn, ops
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Trainer
from settings import InterleavedRounds, bench_threads, memory_pass

try:  # optional, as in conftest.py: the interleaved rounds time torch's epoch too when it is importable
    import torch
except ImportError:
    torch = None

SAMPLES = 10_000
BATCH = 256
SIZES = (3072, 1024, 512, 10)
LR = 1e-3
MOMENTUM = 0.9
THREADS = bench_threads()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], SAMPLES)
    return x, y


def _batches(rng):
    order = rng.permutation(SAMPLES)
    return [order[i:i + BATCH] for i in range(0, SAMPLES, BATCH)]


MODELS = ["mlp", "mlp_bn"]
BN_EPS = 1e-5


def _cynet_model(batchnorm=False, seed=0):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-2], SIZES[1:-1])):
        layers += [nn.Linear(fan_in, fan_out, init="he", generator=seed + i)]
        layers += [nn.BatchNorm1d(fan_out, eps=BN_EPS)] if batchnorm else []
        layers += [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(SIZES[-2], SIZES[-1], init="he", generator=seed + 2))


def _numpy_bn_forward(h, gamma, beta):
    mean = h.mean(axis=0)
    inv_std = 1.0 / np.sqrt(h.var(axis=0) + BN_EPS)
    xhat = (h - mean) * inv_std
    return xhat * gamma + beta, (xhat, inv_std)


def _numpy_bn_backward(dout, gamma, cache):
    """The compact batch-norm backward: dx = gamma*inv_std/N * (N*dout - sum(dout) - xhat*sum(dout*xhat))."""
    xhat, inv_std = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std / len(dout)) * (len(dout) * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def _numpy_bn_epoch(x, y, params, velocity, rng):
    """The loop with batch norm after each hidden Linear (training-mode statistics), in plain NumPy."""
    w1, b1, g1, be1, w2, b2, g2, be2, w3, b3 = params
    for idx in _batches(rng):
        xb, yb = x[idx], y[idx]
        n = len(idx)
        z1, c1 = _numpy_bn_forward(xb @ w1.T + b1, g1, be1)
        h1 = np.maximum(z1, 0)
        z2, c2 = _numpy_bn_forward(h1 @ w2.T + b2, g2, be2)
        h2 = np.maximum(z2, 0)
        s = h2 @ w3.T + b3
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), yb] -= 1
        ds = p / n
        grads = [None] * 10
        grads[8], grads[9] = ds.T @ h2, ds.sum(0)
        da2, grads[6], grads[7] = _numpy_bn_backward((ds @ w3) * (h2 > 0), g2, c2)
        grads[4], grads[5] = da2.T @ h1, da2.sum(0)
        da1, grads[2], grads[3] = _numpy_bn_backward((da2 @ w2) * (h1 > 0), g1, c1)
        grads[0], grads[1] = da1.T @ xb, da1.sum(0)
        for param, v, g in zip(params, velocity, grads):
            v *= MOMENTUM
            v += g
            param -= LR * v


def _numpy_epoch(x, y, params, velocity, rng):
    """The assignment's loop in plain NumPy: forward, softmax loss, backward, momentum update."""
    w1, b1, w2, b2, w3, b3 = params
    for idx in _batches(rng):
        xb, yb = x[idx], y[idx]
        n = len(idx)
        h1 = np.maximum(xb @ w1.T + b1, 0)
        h2 = np.maximum(h1 @ w2.T + b2, 0)
        s = h2 @ w3.T + b3
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), yb] -= 1
        ds = p / n
        grads = [None] * 6
        grads[4], grads[5] = ds.T @ h2, ds.sum(0)
        dh2 = (ds @ w3) * (h2 > 0)
        grads[2], grads[3] = dh2.T @ h1, dh2.sum(0)
        dh1 = (dh2 @ w2) * (h1 > 0)
        grads[0], grads[1] = dh1.T @ xb, dh1.sum(0)
        for param, v, g in zip(params, velocity, grads):
            v *= MOMENTUM
            v += g
            param -= LR * v


def _cynet_trainer(batchnorm):
    """What a user runs: the model, softmax cross-entropy and SGD with momentum in a Trainer, no progress bar."""
    model = _cynet_model(batchnorm)
    return Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=LR, momentum=MOMENTUM), progress=False)


def _floor_buffers():
    """Weights, activations and gradients of the floor's matrix products, allocated and written once."""
    gen = np.random.default_rng(2)
    w = [gen.standard_normal((SIZES[i + 1], SIZES[i]), dtype=np.float32) * 0.01 for i in range(3)]
    acts = [np.zeros((BATCH, n), np.float32) for n in SIZES[1:]]
    grads = [np.zeros_like(a) for a in w]
    dacts = [np.zeros((BATCH, n), np.float32) for n in SIZES[1:3]]
    return (*w, *acts, *grads, *dacts)


def _floor_epoch(x, buffers):
    """Only the matrix products of one epoch, same shapes and order, into preallocated outputs."""
    w1, w2, w3, h1, h2, s, dw1, dw2, dw3, dh1, dh2 = buffers
    for start in range(0, SAMPLES, BATCH):
        xb = x[start:start + BATCH]
        n = xb.shape[0]
        np.matmul(xb, w1.T, out=h1[:n])
        np.matmul(h1[:n], w2.T, out=h2[:n])
        np.matmul(h2[:n], w3.T, out=s[:n])
        np.matmul(s[:n].T, h2[:n], out=dw3)
        np.matmul(s[:n], w3, out=dh2[:n])
        np.matmul(dh2[:n].T, h1[:n], out=dw2)
        np.matmul(dh2[:n], w2, out=dh1[:n])
        np.matmul(dh1[:n].T, xb, out=dw1)


def _torch_epoch(batchnorm, x, y, rng):
    """The same model, loss and update in torch (nn.Sequential, F.cross_entropy, optim.SGD): a function running one
    epoch over x, y, shuffled by ``rng``."""
    torch.manual_seed(0)
    norm = (lambda n: [torch.nn.BatchNorm1d(n, eps=BN_EPS)]) if batchnorm else (lambda n: [])
    model = torch.nn.Sequential(torch.nn.Linear(3072, 1024), *norm(1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 512), *norm(512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def run():
        for idx in _batches(rng):
            t_idx = torch.from_numpy(idx)
            optimizer.zero_grad()
            out = torch.nn.functional.cross_entropy(model(tx[t_idx]), ty[t_idx])
            out.backward()
            optimizer.step()

    return run


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "cynet_loop", "numpy", "torch", "floor"])
@pytest.mark.parametrize("model_name", MODELS)
def test_epoch(benchmark, timing, use_threads, data, model_name, impl, threads):
    x, y = data
    batchnorm = model_name == "mlp_bn"
    benchmark.group = f"epoch/{model_name}/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, samples=SAMPLES, batch=BATCH, model=model_name)
    rng = np.random.default_rng(1)
    if impl == "cynet":
        trainer = _cynet_trainer(batchnorm)
        epochs = iter(range(1, 10_000))

        def run():
            trainer.fit(x, y, epochs=next(epochs), batch_size=BATCH)
    elif impl == "cynet_loop":
        model = _cynet_model(batchnorm)
        loss = SoftmaxCrossEntropy()
        optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def run():
            for idx in _batches(rng):
                optimizer.zero_grad()
                loss(model(x[idx]), y[idx])
                model.backward(loss.backward(), input_grad=False)
                optimizer.step()
    elif impl == "numpy":
        model = _cynet_model(batchnorm)
        params = [p.data.copy() for p in model.parameters()]
        velocity = [np.zeros_like(p) for p in params]
        epoch = _numpy_bn_epoch if batchnorm else _numpy_epoch

        def run():
            epoch(x, y, params, velocity, rng)
    elif impl == "torch":
        pytest.importorskip("torch")
        run = _torch_epoch(batchnorm, x, y, rng)
    else:
        buffers = _floor_buffers()

        def run():
            _floor_epoch(x, buffers)

    with use_threads(threads):
        timing.run(benchmark, run)


INTERLEAVED_ROUNDS = 7


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("model_name", MODELS)
def test_epoch_interleaved_with_the_floor(benchmark, use_threads, data, model_name, threads):
    """The Trainer's epoch, the bare-GEMM floor and (when importable) torch's epoch in alternation, one of each per
    round, so that the machine's drift (5-20 % between benchmarks a minute apart on the 2-vCPU development VM: the
    floor itself moved that much between the two groups of one run) cancels out of the per-round ratios cynet / floor
    and torch / cynet, whose medians go to ``extra_info["ratio_to_floor_median"]`` and
    ``extra_info["torch_over_cynet_median"]`` (report.py prints them)."""
    x, y = data
    benchmark.group = f"epoch_interleaved/{model_name}/t{threads}"
    trainer = _cynet_trainer(model_name == "mlp_bn")
    epochs = iter(range(1, 10_000))
    buffers = _floor_buffers()
    torch_run = _torch_epoch(model_name == "mlp_bn", x, y, np.random.default_rng(1)) if torch is not None else None
    rounds = InterleavedRounds([lambda: _floor_epoch(x, buffers)], torch_run)

    def run():
        trainer.fit(x, y, epochs=next(epochs), batch_size=BATCH)

    with use_threads(threads):
        run()
        rounds.warm_up()
        benchmark.pedantic(run, setup=rounds, rounds=INTERLEAVED_ROUNDS, iterations=1)
    rounds.record(benchmark, impl="cynet", threads=threads, samples=SAMPLES, batch=BATCH, model=model_name)


# --- the Linear layers' passes besides the product -------------------------------------------------------------------
# Inside the epoch each hidden Linear adds its bias and applies the ReLU after it in one pass over the product
# (forward), and masks the ReLU's gradient while summing the bias gradient in one pass (backward): the kernels
# bias_relu_rows and relu_bias_grad_rows, called as Linear calls them. Against the NumPy the reference loop runs
# (``y += b`` then ``np.maximum``; ``dout * (y > 0)`` then the column sums) and the memory floor of the same bytes
# (forward: y read and written, a copy; backward: dout and y read, dz written, an add). A regression here once cost
# the epoch 2.4%: the backward's masked load was a branch on y's sign, 1239 us per (256, 1024) call instead of 42.
BIAS_WIDTHS = SIZES[1:3]


def _bias_relu_arrays(width):
    rng = np.random.default_rng(3)
    product = rng.standard_normal((BATCH, width), dtype=np.float32)
    bias = rng.standard_normal(width, dtype=np.float32) * np.float32(0.1)
    dout = rng.standard_normal((BATCH, width), dtype=np.float32)
    y = np.maximum(product + bias, 0)
    return product, bias, dout, y


def _bias_relu_call(impl, direction, product, bias, dout, y, out, db):
    """A zero-argument call of one implementation; forward works in place on ``out`` (a copy of the product)."""
    act = ops._act
    if direction == "forward":
        if impl == "cynet":
            return lambda: act.bias_relu_rows(out, bias, True, kernel_threads(out.size))
        if impl == "numpy":
            def numpy_forward():
                out.__iadd__(bias)
                np.maximum(out, 0, out=out)
            return numpy_forward
        return memory_pass("copy", [product], out)
    if impl == "cynet":
        return lambda: act.relu_bias_grad_rows(dout, y, out, db, True, kernel_threads(dout.size))
    if impl == "numpy":
        def numpy_backward():
            np.multiply(dout, y > 0, out=out)
            np.sum(out, axis=0, out=db)
        return numpy_backward
    return memory_pass("add", [dout, y], out)


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "numpy", "limit"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("width", BIAS_WIDTHS)
def test_linear_bias_relu(benchmark, timing, use_threads, width, direction, impl, threads):
    product, bias, dout, y = _bias_relu_arrays(width)
    benchmark.group = f"bias_relu/{direction}/{BATCH}x{width}/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, shape=[BATCH, width])
    out = np.empty_like(product)
    db = np.empty(width, np.float32)
    run = _bias_relu_call(impl, direction, product, bias, dout, y, out, db)
    with use_threads(threads):
        if impl != "limit":                      # checked once, from the product, against NumPy's bits
            np.copyto(out, product)
            run()
            if direction == "forward":
                np.testing.assert_array_equal(out, y)
            else:
                np.testing.assert_array_equal(out, dout * (y > 0))
                np.testing.assert_array_equal(db, (dout * (y > 0)).sum(axis=0))
        np.copyto(out, product)
        timing.run(benchmark, run)


# --- dropout ---------------------------------------------------------------------------------------------------------
# The CIFAR-10 example's Dropout(0.2) after each hidden layer: the mask (Philox4x32-10 words on the kernels' threads,
# cynet._kernels.dropout) and the product in one pass, against NumPy's formulation (a uniform draw per element from
# a Generator, the comparison, the scaled product: what cynet did before) and a copy of the same bytes.
DROPOUT_P = 0.2


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("impl", ["cynet", "numpy", "limit"])
@pytest.mark.parametrize("width", BIAS_WIDTHS)
def test_dropout_forward(benchmark, timing, use_threads, width, impl, threads):
    x = np.random.default_rng(4).standard_normal((BATCH, width), dtype=np.float32)
    benchmark.group = f"dropout/forward/{BATCH}x{width}/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, shape=[BATCH, width], p=DROPOUT_P)
    out = np.empty_like(x)
    scale = np.float32(1 / (1 - DROPOUT_P))
    if impl == "cynet":
        layer = nn.Dropout(DROPOUT_P, generator=0)
        run = lambda: layer(x)                                                              # noqa: E731
    elif impl == "numpy":
        rng = np.random.default_rng(0)

        def run():
            mask = (rng.random(x.shape, dtype=np.float32) >= DROPOUT_P).astype(np.float32)
            mask *= scale
            return np.multiply(x, mask, out=out)
    else:
        # the layer reads x and writes y and its scaled keep-mask (x's dtype): 3 arrays' bytes, an add's
        run = memory_pass("add", [x, np.ones_like(x)], out)
    with use_threads(threads):
        if impl != "limit":                   # inverted dropout: each value 0 or x / (1 - p), about 1 - p kept
            y = run()
            kept = y != 0
            np.testing.assert_array_equal(y[kept], x[kept] * scale)
            assert abs(kept.mean() - (1 - DROPOUT_P)) < 0.01
        timing.run(benchmark, run)
