"""Batch-norm kernels: cynet against a NumPy reference, PyTorch's CPU kernels and the memory-bandwidth floor.

One pytest-benchmark group per (direction, shape, threads), named ``batchnorm/direction/shape/tN``; inside it the
implementations (the test id ends with the name, ``benchmark.extra_info["impl"]`` holds it):

- ``cynet``:  ``batch_norm_forward(x, gamma, beta, eps, out=y)`` (training mode: batch statistics) and
              ``batch_norm_backward(dout, x, gamma, mean, inv_std, out=dx)`` of :mod:`cynet.nn.normalization`;
- ``numpy``:  the textbook NumPy version below (statistics with ``mean``/``var``, then the affine map; the compact
              backward), writing the same output buffer;
- ``torch``:  ``torch.native_batch_norm`` / ``aten.native_batch_norm_backward`` (the kernels autograd runs); they
              allocate their outputs (``torch_differs``); skipped without torch;
- ``limit``:  ``np.copyto(out, x)``: reading and writing x's bytes once, single-threaded. The forward must read x
              (at least once) and write y; the backward reads dout and x and writes dx, 1.5 copies at the very best.

Shapes: (256, 4096) and (4096, 4096) for BatchNorm1d, (128, 64, 32, 32) for BatchNorm2d, float32.

Run:  python -m pytest bench/test_bench_normalization.py --benchmark-only -q
"""
from dataclasses import dataclass

import numpy as np
import pytest

from cynet.nn.normalization import batch_norm_backward, batch_norm_forward

SHAPES = [(256, 4096), (4096, 4096), (128, 64, 32, 32)]
THREADS = [1, 2]
IMPLS = ["cynet", "numpy", "torch", "limit"]
EPS = 1e-5
DTYPE = np.float32
TOLERANCE = {"cynet": (1e-4, 1e-4), "numpy": (1e-4, 1e-4), "torch": (1e-3, 1e-3)}


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _pshape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


def numpy_forward(x, gamma, beta, eps, out):
    """The NumPy reference: mean and biased variance, then y = (x - mean) * (gamma / std) + beta into ``out``."""
    axes, s = _axes(x), _pshape(x)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    np.subtract(x, mean.reshape(s), out=out)
    out *= (gamma * inv_std).reshape(s)
    out += beta.reshape(s)
    return out, mean, inv_std


def numpy_backward(dout, x, gamma, mean, inv_std, out):
    """dx = (gamma r / n) (n dout - sum(dout) - x_hat sum(dout x_hat)) into ``out``; returns (dx, dgamma, dbeta)."""
    axes, s = _axes(x), _pshape(x)
    n = x.size // x.shape[1]
    x_hat = (x - mean.reshape(s)) * inv_std.reshape(s)
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    np.multiply(x_hat, dgamma.reshape(s), out=out)
    np.subtract(n * dout, out, out=out)
    out -= dbeta.reshape(s)
    out *= (gamma * inv_std / n).reshape(s)
    return out, dgamma, dbeta


class Buffers:
    """Inputs, a shared output buffer and the saved statistics of one shape (allocated and touched once)."""

    def __init__(self, shape):
        rng = np.random.default_rng(0)
        C = shape[1]
        self.shape = shape
        self.x = (rng.standard_normal(shape, dtype=DTYPE) * 2 + 0.5).astype(DTYPE)
        self.dout = rng.standard_normal(shape, dtype=DTYPE)
        self.out = np.empty(shape, DTYPE)
        self.out.fill(0)
        self.gamma = rng.uniform(0.5, 1.5, C).astype(DTYPE)
        self.beta = rng.standard_normal(C).astype(DTYPE)
        x64 = self.x.astype(np.float64)
        self.mean = x64.mean(axis=_axes(self.x))
        self.inv_std = 1.0 / np.sqrt(x64.var(axis=_axes(self.x)) + EPS)
        self.expected = {}

    def reference(self, direction):
        if direction not in self.expected:
            out = np.empty(self.shape, np.float64)
            x64, g64 = self.x.astype(np.float64), self.gamma.astype(np.float64)
            if direction == "forward":
                self.expected[direction] = numpy_forward(x64, g64, self.beta.astype(np.float64), EPS, out)[0]
            else:
                self.expected[direction] = numpy_backward(self.dout.astype(np.float64), x64, g64, self.mean,
                                                          self.inv_std, out)[0]
        return self.expected[direction]


_pool = {}


def buffers(shape):
    if shape not in _pool:
        _pool.clear()  # keep one shape: the 4096x4096 set is a few hundred MB
        _pool[shape] = Buffers(shape)
    return _pool[shape]


@dataclass(frozen=True)
class Case:
    direction: str
    shape: tuple
    threads: int
    impl: str

    @property
    def shape_id(self):
        return "x".join(map(str, self.shape))

    @property
    def id(self):
        return f"batchnorm-{self.direction}-{self.shape_id}-t{self.threads}-{self.impl}"

    @property
    def group(self):
        return f"batchnorm/{self.direction}/{self.shape_id}/t{self.threads}"


CASES = [Case(d, shape, t, impl) for shape in SHAPES for d in ("forward", "backward") for t in THREADS
         for impl in IMPLS]


def _make(case, b, torch):
    """A zero-argument callable with every argument bound, and a note for extra_info."""
    mean32, inv32 = b.mean.astype(DTYPE), b.inv_std.astype(DTYPE)
    if case.impl == "cynet":
        if case.direction == "forward":
            return (lambda: batch_norm_forward(b.x, b.gamma, b.beta, EPS, out=b.out)[0]), ""
        return (lambda: batch_norm_backward(b.dout, b.x, b.gamma, b.mean, b.inv_std, out=b.out)[0]), ""
    if case.impl == "numpy":
        if case.direction == "forward":
            return (lambda: numpy_forward(b.x, b.gamma, b.beta, EPS, b.out)[0]), ""
        return (lambda: numpy_backward(b.dout, b.x, b.gamma, mean32, inv32, b.out)[0]), ""
    if case.impl == "torch":
        x, dout = torch.from_numpy(b.x), torch.from_numpy(b.dout)
        w, bias = torch.from_numpy(b.gamma), torch.from_numpy(b.beta)
        if case.direction == "forward":
            f = torch.native_batch_norm
            return (lambda: f(x, w, bias, None, None, True, 0.1, EPS)[0]), "torch.native_batch_norm (allocates y)"
        _, save_mean, save_invstd = torch.native_batch_norm(x, w, bias, None, None, True, 0.1, EPS)
        g = torch.ops.aten.native_batch_norm_backward
        return ((lambda: g(dout, x, w, None, None, save_mean, save_invstd, True, EPS, [True, True, True])[0]),
                "aten.native_batch_norm_backward (allocates dx)")
    return (lambda: np.copyto(b.out, b.x)), "np.copyto(out, x): one read and one write of x's bytes"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_batchnorm(case, benchmark, use_threads, timing, request):
    benchmark.group = case.group
    benchmark.extra_info.update(op="batchnorm", direction=case.direction, shape=case.shape_id,
                                threads=case.threads, impl=case.impl)
    torch = request.getfixturevalue("torch_module") if case.impl == "torch" else None
    b = buffers(case.shape)
    fn, note = _make(case, b, torch)
    if note:
        benchmark.extra_info["note"] = note
    if case.impl == "torch":
        benchmark.extra_info["torch_differs"] = True
    with use_threads(case.threads):
        if case.impl != "limit":
            result = fn()
            result = result.numpy() if hasattr(result, "numpy") and not isinstance(result, np.ndarray) else result
            rtol, atol = TOLERANCE[case.impl]
            np.testing.assert_allclose(result, b.reference(case.direction), rtol=rtol, atol=atol,
                                       err_msg=case.id)
        timing.run(benchmark, fn)
