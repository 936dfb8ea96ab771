"""Activation kernels against the NumPy reference, PyTorch (when importable) and the memory-bandwidth floor.

One pytest-benchmark group per (op, direction, shape, threads); inside it four implementations:

- ``cynet``:  ``cynet.ops`` writing into a preallocated ``out=`` buffer;
- ``numpy``:  ``cynet.reference``, the same signature, also into ``out=``;
- ``torch``:  the matching ATen CPU kernel writing into a preallocated tensor (skipped without torch);
- ``limit``:  a plain memory pass over the same bytes: ``np.copyto(out, a)`` for one-in-one-out ops,
  ``np.add(a, b, out=c)`` for two-in-one-out ops (every backward; PReLU's is two-in-one-out plus a tiny dalpha).

Buffers are allocated and touched once per (shape, dtype): a fresh 64 MB array costs 30-50 ms of page faults here,
more than the kernels themselves. Before timing, each implementation's result is checked against the reference, so a
broken kernel is never timed. Run with ``python -m pytest bench --benchmark-only``; ``bench/report.py`` turns the JSON
into the ratio table of bench/README.md.
"""
import numpy as np
import pytest

import cynet
from cynet import ops, reference

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

SHAPES = [(256, 4096), (4096, 4096)]
THREADS = [1, 2]
IMPLS = ["cynet", "numpy", "torch", "limit"]
ALPHA_SLOPE = 0.25


class Buffers:
    """Inputs and outputs of one shape, allocated and touched once."""

    def __init__(self, shape):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(shape, dtype=np.float32)
        self.dout = rng.standard_normal(shape, dtype=np.float32)
        self.out = np.zeros(shape, np.float32)
        self.alpha = np.full(shape[1], ALPHA_SLOPE, np.float32)
        self.dalpha = np.zeros(shape[1], np.float32)
        units = shape[1] // 2
        self.maxout_y = np.zeros((shape[0], units), np.float32)
        self.maxout_idx = np.zeros((shape[0], units), np.int32)
        self.maxout_dout = rng.standard_normal((shape[0], units), dtype=np.float32)
        # the saved tensors a backward reads
        self.y = {name: fn(self.x) for name, fn in (("sigmoid", reference.sigmoid_forward),
                                                     ("tanh", reference.tanh_forward),
                                                     ("relu", reference.relu_forward),
                                                     ("elu", reference.elu_forward),
                                                     ("selu", reference.selu_forward))}
        ops.maxout_forward(self.x, 2, out=self.maxout_y, indices_out=self.maxout_idx)
        if torch is not None:
            self.tx, self.tdout, self.tout = (torch.from_numpy(a) for a in (self.x, self.dout, self.out))
            self.talpha = torch.from_numpy(self.alpha)
            self.ty = {k: torch.from_numpy(v) for k, v in self.y.items()}
            self.tmaxout_dout = torch.from_numpy(self.maxout_dout)
            self.tmaxout_idx = torch.from_numpy(self.maxout_idx.astype(np.int64))


_buffers = {}


def buffers(shape):
    if shape not in _buffers:
        _buffers.clear()  # keep one shape's buffers alive at a time (the large one is ~0.5 GB)
        _buffers[shape] = Buffers(shape)
    return _buffers[shape]


def _torch_prelu_backward(b):
    grad_x, _ = torch.ops.aten._prelu_kernel_backward(b.tdout, b.tx, b.talpha)
    return grad_x


# op id -> (kind, cynet call, numpy call, torch call or None); each call takes the Buffers and writes into b.out
# (maxout forward writes its own outputs). kind: "unary" (one in, one out) or "binary" (two in, one out).
CASES = {
    "sigmoid/forward": ("unary", lambda b: ops.sigmoid_forward(b.x, out=b.out),
                        lambda b: reference.sigmoid_forward(b.x, out=b.out),
                        lambda b: torch.sigmoid(b.tx, out=b.tout)),
    "sigmoid/backward": ("binary", lambda b: ops.sigmoid_backward(b.dout, b.y["sigmoid"], out=b.out),
                         lambda b: reference.sigmoid_backward(b.dout, b.y["sigmoid"], out=b.out),
                         lambda b: torch.ops.aten.sigmoid_backward.grad_input(b.tdout, b.ty["sigmoid"],
                                                                               grad_input=b.tout)),
    "tanh/forward": ("unary", lambda b: ops.tanh_forward(b.x, out=b.out),
                     lambda b: reference.tanh_forward(b.x, out=b.out),
                     lambda b: torch.tanh(b.tx, out=b.tout)),
    "tanh/backward": ("binary", lambda b: ops.tanh_backward(b.dout, b.y["tanh"], out=b.out),
                      lambda b: reference.tanh_backward(b.dout, b.y["tanh"], out=b.out),
                      lambda b: torch.ops.aten.tanh_backward.grad_input(b.tdout, b.ty["tanh"], grad_input=b.tout)),
    "relu/forward": ("unary", lambda b: ops.relu_forward(b.x, out=b.out),
                     lambda b: reference.relu_forward(b.x, out=b.out),
                     lambda b: torch.clamp_min(b.tx, 0, out=b.tout)),
    "relu/backward": ("binary", lambda b: ops.relu_backward(b.dout, b.y["relu"], out=b.out),
                      lambda b: reference.relu_backward(b.dout, b.y["relu"], out=b.out),
                      lambda b: torch.ops.aten.threshold_backward.grad_input(b.tdout, b.ty["relu"], 0,
                                                                             grad_input=b.tout)),
    "leaky_relu/forward": ("unary", lambda b: ops.leaky_relu_forward(b.x, 0.01, out=b.out),
                           lambda b: reference.leaky_relu_forward(b.x, 0.01, out=b.out),
                           lambda b: torch._C._nn.leaky_relu(b.tx, 0.01, out=b.tout)),
    "leaky_relu/backward": ("binary", lambda b: ops.leaky_relu_backward(b.dout, b.x, 0.01, out=b.out),
                            lambda b: reference.leaky_relu_backward(b.dout, b.x, 0.01, out=b.out),
                            lambda b: torch.ops.aten.leaky_relu_backward.grad_input(b.tdout, b.tx, 0.01, False,
                                                                                    grad_input=b.tout)),
    "prelu/forward": ("unary", lambda b: ops.prelu_forward(b.x, b.alpha, out=b.out),
                      lambda b: reference.prelu_forward(b.x, b.alpha, out=b.out),
                      lambda b: torch.ops.aten._prelu_kernel(b.tx, b.talpha)),
    "prelu/backward": ("binary", lambda b: ops.prelu_backward(b.dout, b.x, b.alpha, out=b.out,
                                                              alpha_grad_out=b.dalpha),
                       lambda b: reference.prelu_backward(b.dout, b.x, b.alpha, out=b.out, alpha_grad_out=b.dalpha),
                       _torch_prelu_backward),
    "elu/forward": ("unary", lambda b: ops.elu_forward(b.x, 1.0, out=b.out),
                    lambda b: reference.elu_forward(b.x, 1.0, out=b.out),
                    lambda b: torch._C._nn.elu(b.tx, out=b.tout)),
    "elu/backward": ("binary", lambda b: ops.elu_backward(b.dout, b.y["elu"], 1.0, out=b.out),
                     lambda b: reference.elu_backward(b.dout, b.y["elu"], 1.0, out=b.out),
                     lambda b: torch.ops.aten.elu_backward.grad_input(b.tdout, 1.0, 1, 1, True, b.ty["elu"],
                                                                      grad_input=b.tout)),
    "selu/forward": ("unary", lambda b: ops.selu_forward(b.x, out=b.out),
                     lambda b: reference.selu_forward(b.x, out=b.out),
                     lambda b: torch._C._nn.elu(b.tx, reference.SELU_ALPHA, reference.SELU_SCALE, 1.0,
                                                out=b.tout)),
    "selu/backward": ("binary", lambda b: ops.selu_backward(b.dout, b.y["selu"], out=b.out),
                      lambda b: reference.selu_backward(b.dout, b.y["selu"], out=b.out),
                      lambda b: torch.ops.aten.elu_backward.grad_input(
                          b.tdout, reference.SELU_ALPHA, reference.SELU_SCALE, 1.0, True, b.ty["selu"],
                          grad_input=b.tout)),
    "gelu/forward": ("unary", lambda b: ops.gelu_forward(b.x, out=b.out),
                     lambda b: reference.gelu_forward(b.x, out=b.out),
                     lambda b: torch._C._nn.gelu(b.tx, out=b.tout)),
    "gelu/backward": ("binary", lambda b: ops.gelu_backward(b.dout, b.x, out=b.out),
                      lambda b: reference.gelu_backward(b.dout, b.x, out=b.out),
                      lambda b: torch.ops.aten.gelu_backward.grad_input(b.tdout, b.tx, grad_input=b.tout)),
    "gelu_tanh/forward": ("unary", lambda b: ops.gelu_forward(b.x, "tanh", out=b.out),
                          lambda b: reference.gelu_forward(b.x, "tanh", out=b.out),
                          lambda b: torch._C._nn.gelu(b.tx, approximate="tanh", out=b.tout)),
    "gelu_tanh/backward": ("binary", lambda b: ops.gelu_backward(b.dout, b.x, "tanh", out=b.out),
                           lambda b: reference.gelu_backward(b.dout, b.x, "tanh", out=b.out),
                           lambda b: torch.ops.aten.gelu_backward.grad_input(b.tdout, b.tx, approximate="tanh",
                                                                             grad_input=b.tout)),
    "silu/forward": ("unary", lambda b: ops.silu_forward(b.x, out=b.out),
                     lambda b: reference.silu_forward(b.x, out=b.out),
                     lambda b: torch._C._nn.silu(b.tx, out=b.tout)),
    "silu/backward": ("binary", lambda b: ops.silu_backward(b.dout, b.x, out=b.out),
                      lambda b: reference.silu_backward(b.dout, b.x, out=b.out),
                      lambda b: torch.ops.aten.silu_backward.grad_input(b.tdout, b.tx, grad_input=b.tout)),
    # Maxout, 2 pieces: reads N*D*2 values, writes N*D values and N*D int32 indices; the floor is a copy of x.
    "maxout/forward": ("unary", lambda b: ops.maxout_forward(b.x, 2, out=b.maxout_y, indices_out=b.maxout_idx),
                       lambda b: reference.maxout_forward(b.x, 2, out=b.maxout_y, indices_out=b.maxout_idx),
                       lambda b: b.tx.view(b.tx.shape[0], 2, -1).max(dim=1)),
    # reads dout and indices (N*D each), writes dx (N*D*2): the floor is a copy of dx's bytes.
    "maxout/backward": ("unary", lambda b: ops.maxout_backward(b.maxout_dout, b.maxout_idx, 2, out=b.out),
                        lambda b: reference.maxout_backward(b.maxout_dout, b.maxout_idx, 2, out=b.out),
                        lambda b: b.tout.view(b.tout.shape[0], 2, -1).zero_().scatter_(
                            1, b.tmaxout_idx.unsqueeze(1), b.tmaxout_dout.unsqueeze(1))),
}


def _limit(kind, b):
    if kind == "unary":
        return lambda: np.copyto(b.out, b.x)
    return lambda: np.add(b.x, b.dout, out=b.out)


def _check(case, b):
    """The cynet result equals the reference's (to float32 rounding) before anything is timed."""
    _, fast, slow, _ = CASES[case]
    got = fast(b)
    got = np.array(got[0] if isinstance(got, tuple) else got, copy=True)
    want = slow(b)
    want = np.asarray(want[0] if isinstance(want, tuple) else want)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", list(CASES))
def test_activation(benchmark, case, shape, threads, impl):
    kind, fast, slow, torch_call = CASES[case]
    b = buffers(shape)
    benchmark.group = f"{case} {shape[0]}x{shape[1]} threads={threads}"
    benchmark.extra_info.update(case=case, shape=list(shape), threads=threads, impl=impl)
    if impl == "torch":
        if torch is None:
            pytest.skip("torch is not installed")
        torch.set_num_threads(threads)
        fn = lambda: torch_call(b)  # noqa: E731
    elif impl == "cynet":
        _check(case, b)
        fn = lambda: fast(b)  # noqa: E731
    elif impl == "numpy":
        fn = lambda: slow(b)  # noqa: E731
    else:
        fn = _limit(kind, b)
    with cynet.threads(threads):
        if impl == "numpy":  # the reference is slow: a few rounds say enough
            benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
        else:
            benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=2)
