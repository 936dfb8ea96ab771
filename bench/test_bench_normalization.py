"""Normalisation kernels: cynet against a NumPy reference, PyTorch's CPU kernels and the memory-bandwidth floor.

One pytest-benchmark group per (op, direction, shape, threads), named ``op/direction/shape/tN`` with op one of
``batchnorm``, ``layernorm``, ``groupnorm``; inside it the implementations (the test id ends with the name,
``benchmark.extra_info["impl"]`` holds it):

- ``cynet``:  the array functions of :mod:`cynet.nn.normalization` that the modules call, into a preallocated
              ``out``: ``batch_norm_forward`` / ``batch_norm_backward`` (training mode: batch statistics),
              ``row_norm_forward`` / ``row_norm_backward`` (LayerNorm over the last axis; GroupNorm with 32 groups);
- ``numpy``:  the textbook NumPy versions below (statistics with ``mean``/``var``, then the affine map; the compact
              backward), writing the same output buffer;
- ``torch``:  the kernels autograd runs (``native_batch_norm``, ``native_layer_norm``, ``native_group_norm`` and
              their ``*_backward``); BatchNorm's forward writes into the preallocated buffer (the ``out=``
              overload has a kernel of its own), the others allocate their outputs (``torch_differs``, a note says
              so); skipped without torch;
- ``limit``:  one single-threaded NumPy pass over the same bytes as the op's input and output: the forward reads x and
              writes y, ``np.copyto(out, x)``; the backward reads dout and x and writes dx, ``np.add(dout, x, out=out)``
              (the convention of the activation benchmarks for two inputs and one output). BatchNorm's backward needs
              its two sums over every row before its first dx: at (4096, 4096), far beyond the cache, it reads dout
              and x twice, 5/3 of the limit's traffic at the very best;
- ``limit_torch``: the same byte pattern through torch on the group's thread count (``out.copy_(x)``,
              ``torch.add(dout, x, out=out)``): the floor for more than one thread, which one NumPy thread cannot show.
              report.py divides by the faster of the two floors. Skipped without torch.

Shapes, float32: BatchNorm1d (256, 4096) and (4096, 4096), BatchNorm2d (128, 64, 32, 32); LayerNorm (256, 4096)
and (4096, 4096) (normalised over the 4096 features of each row); GroupNorm (128, 64, 32, 32) with 32 groups.

The issue's target (BatchNorm within 1.5x the floor, faster than torch) is timed a second way by
``test_batchnorm_interleaved_with_the_floor``: per round one call of each floor (NumPy's, the streaming one, and
torch's when it is importable), one of torch's kernel, then one of cynet's, so that the medians of the per-round ratios
cynet / fastest floor and torch / cynet cancel the machine's drift (this VM's copy of 64 MB moved between 2.5 and 4.3
ms from run to run; groups ``batchnorm_interleaved/direction/shape/tN``). Each round also times the two-pass bound:
every input read once (``memory.count_nonzero``), then the streaming pass, which no batch norm out of cache can beat
(its statistics need every row before the first output); ``extra_info["ratio_to_bound_median"]``.

Run:  python -m pytest bench/test_bench_normalization.py --benchmark-only -q   (-k batchnorm, -k layernorm, ...)
"""
from dataclasses import dataclass

import numpy as np
import pytest

from cynet.nn.normalization import batch_norm_backward, batch_norm_forward, row_norm_backward, row_norm_forward
from settings import InterleavedRounds, bench_threads, memory_pass

OP_SHAPES = {"batchnorm": [(256, 4096), (4096, 4096), (128, 64, 32, 32)],
             "layernorm": [(256, 4096), (4096, 4096)],
             "groupnorm": [(128, 64, 32, 32)]}
GROUPS = 32
THREADS = bench_threads()
IMPLS = ["cynet", "numpy", "torch", "limit", "limit_torch", "limit_stream"]
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


def _row_view(op, x):
    """x as (N, G, Cg, S) with the statistics over axes 2 and 3, and the shape gamma takes in that view."""
    if op == "layernorm":
        return x.reshape(x.shape[0], 1, 1, -1), (1, 1, 1, -1)
    n, c = x.shape[:2]
    return x.reshape(n, GROUPS, c // GROUPS, -1), (1, GROUPS, c // GROUPS, 1)


def numpy_row_forward(xv, gamma, beta, eps, out):
    """LayerNorm/GroupNorm in NumPy on the (N, G, Cg, S) view: y = (x - mean) / std * gamma + beta into ``out``."""
    mean = xv.mean(axis=(2, 3), keepdims=True)
    inv_std = 1.0 / np.sqrt(xv.var(axis=(2, 3), keepdims=True) + eps)
    np.subtract(xv, mean, out=out)
    out *= inv_std
    out *= gamma
    out += beta
    return out


def numpy_row_backward(dout, xv, gamma, mean, inv_std, out):
    """``(dx, dgamma, dbeta)``: dx = (r / L) (L g - sum(g) - x_hat sum(g x_hat)), g = dout * gamma, sums over each
    row of L values, into ``out``; dgamma = sum(dout x_hat) and dbeta = sum(dout) over the axes gamma is broadcast
    along (all the work the kernels and torch do)."""
    n = xv.shape[2] * xv.shape[3]
    x_hat = (xv - mean) * inv_std
    param_axes = tuple(axis for axis, size in enumerate(gamma.shape) if size == 1)
    dgamma = (dout * x_hat).sum(axis=param_axes).reshape(-1)
    dbeta = dout.sum(axis=param_axes).reshape(-1)
    g = dout * gamma
    np.multiply(x_hat, (g * x_hat).sum(axis=(2, 3), keepdims=True), out=out)
    np.subtract(n * g, out, out=out)
    out -= g.sum(axis=(2, 3), keepdims=True)
    out *= inv_std / n
    return out, dgamma, dbeta


class Buffers:
    """Inputs, a shared output buffer and the saved statistics of one op and shape (allocated and touched once)."""

    def __init__(self, op, shape):
        rng = np.random.default_rng(0)
        P = shape[-1] if op == "layernorm" else shape[1]
        self.op, self.shape = op, shape
        self.x = (rng.standard_normal(shape, dtype=DTYPE) * 2 + 0.5).astype(DTYPE)
        self.dout = rng.standard_normal(shape, dtype=DTYPE)
        self.out = np.empty(shape, DTYPE)
        self.out.fill(0)
        self.gamma = rng.uniform(0.5, 1.5, P).astype(DTYPE)
        self.beta = rng.standard_normal(P).astype(DTYPE)
        x64 = self.x.astype(np.float64)
        if op == "batchnorm":
            self.mean = x64.mean(axis=_axes(self.x))
            self.inv_std = 1.0 / np.sqrt(x64.var(axis=_axes(self.x)) + EPS)
        else:
            xv, self.gamma_shape = _row_view(op, x64)
            self.mean = xv.mean(axis=(2, 3), keepdims=True)
            self.inv_std = 1.0 / np.sqrt(xv.var(axis=(2, 3), keepdims=True) + EPS)
            # the kernels' row view (M, Cg, S) and its per-row statistics (float64, M = N * G)
            self.groups = 1 if op == "layernorm" else GROUPS
            rows = xv.shape[0] * xv.shape[1]
            self.x3 = self.x.reshape(rows, -1, 1) if op == "layernorm" else self.x.reshape(rows, xv.shape[2], -1)
            self.dout3, self.out3 = self.dout.reshape(self.x3.shape), self.out.reshape(self.x3.shape)
            self.row_mean, self.row_inv_std = self.mean.reshape(-1), self.inv_std.reshape(-1)
        self.expected = {}

    def reference(self, direction):
        if direction not in self.expected:
            out = np.empty(self.shape, np.float64)
            x64, g64, b64 = self.x.astype(np.float64), self.gamma.astype(np.float64), self.beta.astype(np.float64)
            d64 = self.dout.astype(np.float64)
            if self.op == "batchnorm":
                if direction == "forward":
                    result = numpy_forward(x64, g64, b64, EPS, out)[0]
                else:
                    result = numpy_backward(d64, x64, g64, self.mean, self.inv_std, out)[0]
            else:
                xv, gs = _row_view(self.op, x64)
                outv = out.reshape(xv.shape)
                if direction == "forward":
                    numpy_row_forward(xv, g64.reshape(gs), b64.reshape(gs), EPS, outv)
                else:
                    numpy_row_backward(d64.reshape(xv.shape), xv, g64.reshape(gs), self.mean, self.inv_std, outv)
                result = out
            self.expected[direction] = result
        return self.expected[direction]


_pool = {}


def buffers(op, shape):
    if (op, shape) not in _pool:
        _pool.clear()  # keep one set: the 4096x4096 one is a few hundred MB
        _pool[(op, shape)] = Buffers(op, shape)
    return _pool[(op, shape)]


@dataclass(frozen=True)
class Case:
    op: str
    direction: str
    shape: tuple
    threads: int
    impl: str

    @property
    def shape_id(self):
        return "x".join(map(str, self.shape))

    @property
    def id(self):
        return f"{self.op}-{self.direction}-{self.shape_id}-t{self.threads}-{self.impl}"

    @property
    def group(self):
        return f"{self.op}/{self.direction}/{self.shape_id}/t{self.threads}"


CASES = [Case(op, d, shape, t, impl) for op, shapes in OP_SHAPES.items() for shape in shapes
         for d in ("forward", "backward") for t in THREADS for impl in IMPLS]


FLOOR_NOTES = {
    ("limit", "copy"): "np.copyto(out, x): x's bytes read once, y's written once",
    ("limit", "add"): "np.add(dout, x, out=out): two inputs read once, one written",
    ("limit_torch", "copy"): "out.copy_(x) on the group's threads",
    ("limit_torch", "add"): "torch.add(dout, x, out=out) on the group's threads",
    ("limit_stream", "copy"): "x copied to out with non-temporal stores on the group's threads",
    ("limit_stream", "add"): "dout + x into out with non-temporal stores on the group's threads",
}


def _make(case, b, torch):
    """A zero-argument callable with every argument bound, and a note for extra_info."""
    if case.impl.startswith("limit"):
        kind, inputs = ("copy", [b.x]) if case.direction == "forward" else ("add", [b.dout, b.x])
        if case.impl == "limit_stream":
            fn = memory_pass(kind, inputs, b.out, stream_threads=case.threads)
        else:
            fn = memory_pass(kind, inputs, b.out, torch if case.impl == "limit_torch" else None)
        return fn, FLOOR_NOTES[case.impl, kind]
    if case.op == "batchnorm":
        return _make_batchnorm(case, b, torch)
    return _make_row_norm(case, b, torch)


def _two_pass_bound(case, b):
    """The bound of a two-pass batch norm out of cache: every input read once (its statistics, memory.count_nonzero),
    then the streaming pass (the output pass): x then a streamed copy forward, dout and x then a streamed add
    backward, on the group's threads."""
    kind, inputs = ("copy", [b.x]) if case.direction == "forward" else ("add", [b.dout, b.x])
    return memory_pass(kind, inputs, b.out, stream_threads=case.threads, read_first=True)


def _make_batchnorm(case, b, torch):
    mean32, inv32 = b.mean.astype(DTYPE), b.inv_std.astype(DTYPE)
    if case.impl == "cynet":
        if case.direction == "forward":
            return (lambda: batch_norm_forward(b.x, b.gamma, b.beta, EPS, out=b.out)[0]), ""
        return (lambda: batch_norm_backward(b.dout, b.x, b.gamma, b.mean, b.inv_std, out=b.out)[0]), ""
    if case.impl == "numpy":
        if case.direction == "forward":
            return (lambda: numpy_forward(b.x, b.gamma, b.beta, EPS, b.out)[0]), ""
        return (lambda: numpy_backward(b.dout, b.x, b.gamma, mean32, inv32, b.out)[0]), ""
    x, dout = torch.from_numpy(b.x), torch.from_numpy(b.dout)
    w, bias = torch.from_numpy(b.gamma), torch.from_numpy(b.beta)
    if case.direction == "forward":
        # the out= overload has a kernel of its own: y into the preallocated buffer, as cynet and NumPy do
        f = torch.ops.aten.native_batch_norm.out
        y, save_mean = torch.from_numpy(b.out), torch.empty(b.gamma.shape, dtype=x.dtype)
        save_invstd = torch.empty_like(save_mean)
        return ((lambda: f(x, w, bias, None, None, True, 0.1, EPS, out=y, save_mean=save_mean,
                           save_invstd=save_invstd)[0]), "")
    _, save_mean, save_invstd = torch.native_batch_norm(x, w, bias, None, None, True, 0.1, EPS)
    g = torch.ops.aten.native_batch_norm_backward
    return ((lambda: g(dout, x, w, None, None, save_mean, save_invstd, True, EPS, [True, True, True])[0]),
            "aten.native_batch_norm_backward (allocates dx)")


def _make_row_norm(case, b, torch):
    if case.impl == "cynet":
        if case.direction == "forward":
            return (lambda: row_norm_forward(b.x3, b.groups, b.gamma, b.beta, EPS, out=b.out3)[0].reshape(b.shape)), \
                ""
        return (lambda: row_norm_backward(b.dout3, b.x3, b.groups, b.gamma, b.row_mean, b.row_inv_std,
                                          out=b.out3)[0].reshape(b.shape)), ""
    xv, gs = _row_view(case.op, b.x)
    if case.impl == "numpy":
        gamma, beta, outv = b.gamma.reshape(gs), b.beta.reshape(gs), b.out.reshape(xv.shape)
        mean32, inv32 = b.mean.astype(DTYPE), b.inv_std.astype(DTYPE)
        if case.direction == "forward":
            return (lambda: numpy_row_forward(xv, gamma, beta, EPS, outv).reshape(b.shape)), ""
        dout = b.dout.reshape(xv.shape)
        return (lambda: numpy_row_backward(dout, xv, gamma, mean32, inv32, outv)[0].reshape(b.shape)), ""
    x, dout = torch.from_numpy(b.x), torch.from_numpy(b.dout)
    w, bias = torch.from_numpy(b.gamma), torch.from_numpy(b.beta)
    if case.op == "layernorm":
        shape = [b.shape[-1]]
        if case.direction == "forward":
            return ((lambda: torch.native_layer_norm(x, shape, w, bias, EPS)[0]),
                    "torch.native_layer_norm (allocates y)")
        _, mean, rstd = torch.native_layer_norm(x, shape, w, bias, EPS)
        g = torch.ops.aten.native_layer_norm_backward
        return ((lambda: g(dout, x, shape, mean, rstd, w, bias, [True, True, True])[0]),
                "aten.native_layer_norm_backward (allocates dx)")
    n, c = b.shape[:2]
    hw = int(np.prod(b.shape[2:]))
    if case.direction == "forward":
        return ((lambda: torch.native_group_norm(x, w, bias, n, c, hw, GROUPS, EPS)[0]),
                "torch.native_group_norm (allocates y)")
    _, mean, rstd = torch.native_group_norm(x, w, bias, n, c, hw, GROUPS, EPS)
    g = torch.ops.aten.native_group_norm_backward
    return ((lambda: g(dout, x, mean, rstd, w, n, c, hw, GROUPS, [True, True, True])[0]),
            "aten.native_group_norm_backward (allocates dx)")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_normalization(case, benchmark, use_threads, timing, request):
    benchmark.group = case.group
    benchmark.extra_info.update(op=case.op, direction=case.direction, shape=case.shape_id,
                                threads=case.threads, impl=case.impl)
    torch = request.getfixturevalue("torch_module") if case.impl in ("torch", "limit_torch") else None
    b = buffers(case.op, case.shape)
    fn, note = _make(case, b, torch)
    if note:
        benchmark.extra_info["note"] = note
    if case.impl == "torch" and note:                 # the note says what it does more (an allocation)
        benchmark.extra_info["torch_differs"] = True
    with use_threads(case.threads):
        if not case.impl.startswith("limit"):
            result = fn()
            result = result.numpy() if hasattr(result, "numpy") and not isinstance(result, np.ndarray) else result
            rtol, atol = TOLERANCE[case.impl]
            np.testing.assert_allclose(result, b.reference(case.direction), rtol=rtol, atol=atol,
                                       err_msg=case.id)
        timing.run(benchmark, fn)


# --- the target condition, each BatchNorm in alternation with its floors and torch ------------------------------------
INTERLEAVED_ROUNDS = 15
INTERLEAVED_CASES = [Case("batchnorm", d, shape, t, "cynet") for shape in OP_SHAPES["batchnorm"]
                     for d in ("forward", "backward") for t in THREADS]


@pytest.mark.parametrize("case", INTERLEAVED_CASES, ids=[c.id.replace("-cynet", "") for c in INTERLEAVED_CASES])
def test_batchnorm_interleaved_with_the_floor(case, benchmark, use_threads, request):
    """cynet's batch norm in alternation with the floors and torch's kernel: per round one call of NumPy's floor, one
    of the streaming floor, one of torch's floor and one of torch's kernel (when torch is importable), then one of
    cynet. The median of the per-round ratios cynet / fastest floor is ``extra_info["ratio_to_floor_median"]``, that
    of torch / cynet ``extra_info["torch_over_cynet_median"]``."""
    benchmark.group = f"batchnorm_interleaved/{case.direction}/{case.shape_id}/t{case.threads}"
    try:
        torch = request.getfixturevalue("torch_module")
    except pytest.skip.Exception:
        torch = None
    b = buffers(case.op, case.shape)
    kernel = _make(case, b, torch)[0]
    rounds = InterleavedRounds([_make(Case(case.op, case.direction, case.shape, case.threads, impl), b, torch)[0]
                                for impl in ("limit", "limit_stream")], names=["np", "nt"],
                               bounds={"two-pass": _two_pass_bound(case, b)})
    if torch is not None:
        rounds.floors.append(_make(Case(case.op, case.direction, case.shape, case.threads, "limit_torch"), b,
                                   torch)[0])
        rounds.names.append("torch")
        rounds.torch_call = _make(Case(case.op, case.direction, case.shape, case.threads, "torch"), b, torch)[0]

    with use_threads(case.threads):
        rtol, atol = TOLERANCE["cynet"]
        np.testing.assert_allclose(kernel(), b.reference(case.direction), rtol=rtol, atol=atol, err_msg=case.id)
        rounds.warm_up()
        benchmark.pedantic(kernel, setup=rounds, rounds=INTERLEAVED_ROUNDS, iterations=1)
    rounds.record(benchmark, impl="cynet", threads=case.threads, kernel=case.op, direction=case.direction,
                  shape=case.shape_id)
