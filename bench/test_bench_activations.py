"""Activation kernels: cynet against the NumPy reference, PyTorch's CPU kernels and the memory-bandwidth floor.

One pytest-benchmark group per (op, direction, shape, threads), named ``op/direction/shape/tN``; inside it the
implementations (the test id ends with the name, ``benchmark.extra_info["impl"]`` holds it):

- ``cynet``:       ``cynet.ops.<op>_<direction>(..., out=buffer)``;
- ``numpy``:       ``cynet.reference.<op>_<direction>(..., out=buffer)``, the same signature;
- ``torch``:       the ATen CPU kernel torch itself runs for the op, writing into a preallocated tensor where an
                   ``out=`` overload exists (see ``note`` in extra_info where it does not); skipped without torch;
- ``limit``:       NumPy moving the same bytes: ``np.copyto(out, a)`` for one-in-one-out ops, ``np.add(a, b, out=c)``
                   for two-in-one-out ops (every backward); single-threaded whatever the thread setting;
- ``limit_torch``: the same byte pattern through torch (``out.copy_(a)``, ``torch.add(a, b, out=c)``) on the
                   group's thread count: the floor for 2 threads, which one NumPy thread cannot show;
- ``limit_stream``: the same byte pattern with non-temporal stores (``cynet._kernels.memory``) on the group's thread
                   count: the floor out of cache, where the ordinary stores of the other two read each written line
                   first (cynet streams outputs of 32 MiB or more). report.py takes the fastest of the three.

Every implementation reads the same input arrays and writes the same output buffers (torch through
``torch.from_numpy`` views), allocated and touched once per shape. Before anything is timed, the result of each
implementation is compared with the reference, so a broken kernel (or a wrong torch mapping) is never timed.

The target condition, (4096, 4096) on 2 threads, is timed a second way by
``test_activation_interleaved_with_the_floor``: one cynet call, one call of each floor (NumPy's, the streaming one,
torch's when importable) and one of torch's kernel per round, so that the machine's drift (the floor of one op moves by
20-40% between groups on the development VM) cancels out of the per-round ratios cynet / fastest floor and torch /
cynet;
report.py prints their medians (groups ``interleaved/op/direction/4096x4096/t2``).

Run:  python -m pytest bench --benchmark-only --benchmark-json=bench/results/run.json
      python bench/report.py bench/results/run.json
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest

from cynet import ops, reference
from settings import InterleavedRounds, bench_threads, memory_pass

try:  # optional, as in conftest.py: the interleaved floors use torch's when it is importable
    import torch
except ImportError:
    torch = None

SHAPES = [(256, 4096), (4096, 4096)]
THREADS = bench_threads()
IMPLS = ["cynet", "numpy", "torch", "limit", "limit_torch", "limit_stream"]
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
MAXOUT_PIECES = 2

# cynet and the reference agree to a few float32 ulp (tests/ holds the exact bounds); torch's own approximations
# (GELU, tanh backward) differ from the reference by up to ~1e-6 absolute. Reductions (PReLU's dalpha, a sum over
# the rows) get a looser bound for torch, which accumulates in float32.
TOLERANCE = {"cynet": (1e-5, 1e-5), "numpy": (1e-5, 1e-5), "torch": (1e-4, 1e-5)}
REDUCTION_TOLERANCE = {"cynet": (1e-5, 1e-5), "numpy": (1e-5, 1e-5), "torch": (1e-3, 1e-3)}


class TorchUnavailable(Exception):
    """This torch has no such kernel (or not with this signature): the torch benchmark is skipped."""


@dataclass(frozen=True)
class Op:
    """One op in one direction. Each ``make_*`` takes the Buffers (and torch) and returns a zero-argument callable
    whose arguments are all bound, so the timed call is only the call."""
    label: str
    direction: str
    make_cynet: Callable
    make_numpy: Callable
    make_torch: Optional[Callable]
    expected: Callable                 # Buffers -> tuple of reference results
    floor: str                         # "copy" (one in, one out) or "add" (two in, one out)
    floor_arrays: Callable             # Buffers -> (inputs..., output) moving the op's bytes
    floor_note: str
    reduced_outputs: tuple = ()        # indices of outputs that are reductions (looser torch tolerance)
    torch_note: str = ""
    extra: dict = field(default_factory=dict)


# --- elementwise ops --------------------------------------------------------------------------------------------------
# label, name in cynet.ops / cynet.reference, keyword arguments, tensor the backward reads ("x" or the output "y")
ELEMENTWISE = [
    ("sigmoid", "sigmoid", {}, "y"),
    ("tanh", "tanh", {}, "y"),
    ("relu", "relu", {}, "y"),
    ("leaky_relu", "leaky_relu", {"negative_slope": LEAKY_SLOPE}, "x"),
    ("elu", "elu", {"alpha": ELU_ALPHA}, "y"),
    ("selu", "selu", {}, "y"),
    ("gelu_erf", "gelu", {"approximate": "none"}, "x"),
    ("gelu_tanh", "gelu", {"approximate": "tanh"}, "x"),
    ("silu", "silu", {}, "x"),
]


def _torch_forward(label, torch, x, out):
    """The torch kernel of ``label`` writing into ``out``; ``(call, note)``. Torch builders return ``(call, note)``
    or ``(call, note, differs)``, differs=True where torch's path does more work than cynet's (see the report)."""
    nn, sa, ss = torch._C._nn, reference.SELU_ALPHA, reference.SELU_SCALE
    if label == "sigmoid":
        f = torch.sigmoid
        return (lambda: f(x, out=out)), ""
    if label == "tanh":
        f = torch.tanh
        return (lambda: f(x, out=out)), ""
    if label == "relu":
        f = torch.clamp_min
        return (lambda: f(x, 0, out=out)), "torch.relu has no out=: torch.clamp_min(x, 0, out=y)"
    if label == "leaky_relu":
        f = nn.leaky_relu
        return (lambda: f(x, LEAKY_SLOPE, out=out)), ""
    if label == "elu":
        f = nn.elu
        return (lambda: f(x, ELU_ALPHA, out=out)), ""
    if label == "selu":
        f = nn.elu  # torch.selu(x) is at::elu(x, SELU_ALPHA, SELU_SCALE) and has no out=
        return (lambda: f(x, sa, ss, 1.0, out=out)), "torch.selu has no out=: its kernel, elu(x, alpha, scale, out=y)"
    if label in ("gelu_erf", "gelu_tanh"):
        f, approximate = nn.gelu, "none" if label == "gelu_erf" else "tanh"
        return (lambda: f(x, approximate=approximate, out=out)), ""
    if label == "silu":
        f = nn.silu
        return (lambda: f(x, out=out)), ""
    raise TorchUnavailable(label)


def _torch_backward(label, torch, dout, saved, out):
    """The torch backward kernel of ``label`` (what autograd calls) from the same saved tensor as cynet."""
    aten, sa, ss = torch.ops.aten, reference.SELU_ALPHA, reference.SELU_SCALE
    if label == "sigmoid":
        f = aten.sigmoid_backward.grad_input
        return (lambda: f(dout, saved, grad_input=out)), ""
    if label == "tanh":
        f = aten.tanh_backward.grad_input
        return (lambda: f(dout, saved, grad_input=out)), ""
    if label == "relu":
        f = aten.threshold_backward.grad_input
        return (lambda: f(dout, saved, 0, grad_input=out)), "threshold_backward(dout, y, 0)"
    if label == "leaky_relu":
        f = aten.leaky_relu_backward.grad_input
        return (lambda: f(dout, saved, LEAKY_SLOPE, False, grad_input=out)), ""
    if label == "elu":
        f = aten.elu_backward.grad_input
        return ((lambda: f(dout, ELU_ALPHA, 1, 1, True, saved, grad_input=out)),
                "elu_backward from y (is_result=True); autograd's out-of-place ELU recomputes exp(x)")
    if label == "selu":
        f = aten.elu_backward.grad_input
        return ((lambda: f(dout, sa, ss, 1, True, saved, grad_input=out)),
                "elu_backward(alpha, scale) from y (is_result=True); autograd's selu recomputes exp(x)")
    if label in ("gelu_erf", "gelu_tanh"):
        f, approximate = aten.gelu_backward.grad_input, "none" if label == "gelu_erf" else "tanh"
        return (lambda: f(dout, saved, approximate=approximate, grad_input=out)), ""
    if label == "silu":
        f = aten.silu_backward.grad_input
        return (lambda: f(dout, saved, grad_input=out)), ""
    raise TorchUnavailable(label)


def _elementwise_ops():
    result = []
    for label, name, kw, saved_kind in ELEMENTWISE:
        fwd_fast, fwd_ref = getattr(ops, f"{name}_forward"), getattr(reference, f"{name}_forward")
        bwd_fast, bwd_ref = getattr(ops, f"{name}_backward"), getattr(reference, f"{name}_backward")

        def saved(b, fwd_ref=fwd_ref, kw=kw, saved_kind=saved_kind, label=label):
            if saved_kind == "x":
                return b.x
            return b.saved(label, lambda b: fwd_ref(b.x, **kw))

        result.append(Op(
            label, "forward",
            make_cynet=lambda b, f=fwd_fast, kw=kw: (lambda x=b.x, out=b.out: f(x, **kw, out=out)),
            make_numpy=lambda b, f=fwd_ref, kw=kw: (lambda x=b.x, out=b.out: f(x, **kw, out=out)),
            make_torch=lambda b, torch, label=label: _torch_forward(label, torch, b.t(b.x), b.t(b.out)),
            expected=lambda b, f=fwd_ref, kw=kw: (f(b.x, **kw),),
            floor="copy", floor_arrays=lambda b: (b.x, b.out),
            floor_note="np.copyto(out, x): reads x, writes out",
        ))
        result.append(Op(
            label, "backward",
            make_cynet=lambda b, f=bwd_fast, kw=kw, saved=saved: (
                lambda d=b.dout, s=saved(b), out=b.out: f(d, s, **kw, out=out)),
            make_numpy=lambda b, f=bwd_ref, kw=kw, saved=saved: (
                lambda d=b.dout, s=saved(b), out=b.out: f(d, s, **kw, out=out)),
            make_torch=lambda b, torch, label=label, saved=saved: _torch_backward(
                label, torch, b.t(b.dout), b.t(saved(b)), b.t(b.out)),
            expected=lambda b, f=bwd_ref, kw=kw, saved=saved: (f(b.dout, saved(b), **kw),),
            floor="add", floor_arrays=lambda b, saved=saved: (b.dout, saved(b), b.out),
            floor_note=f"np.add(dout, {saved_kind}, out=dx): reads two arrays, writes one",
        ))
    return result


# --- PReLU (one slope per channel, alpha of shape (D,)) ---------------------------------------------------------------
def _torch_prelu_forward(b, torch):
    f, x, alpha = torch._prelu_kernel, b.t(b.x), b.t(b.alpha)
    return ((lambda: f(x, alpha)), "torch._prelu_kernel has no out=: allocates y on every call (page faults at 64 MB)",
            True)


def _torch_prelu_backward(b, torch):
    f, dout, x, alpha = torch.ops.aten._prelu_kernel_backward, b.t(b.dout), b.t(b.x), b.t(b.alpha)

    def call():
        dx, dalpha_full = f(dout, x, alpha)  # dalpha_full is x-shaped: autograd then sums it to alpha's shape
        return dx, dalpha_full.sum(0)

    return call, ("_prelu_kernel_backward allocates dx and an x-shaped dalpha, then .sum(0) to (D,) "
                  "(as autograd does): more bytes than cynet"), True


PRELU = [
    Op("prelu", "forward",
       make_cynet=lambda b: (lambda x=b.x, a=b.alpha, out=b.out: ops.prelu_forward(x, a, out=out)),
       make_numpy=lambda b: (lambda x=b.x, a=b.alpha, out=b.out: reference.prelu_forward(x, a, out=out)),
       make_torch=_torch_prelu_forward,
       expected=lambda b: (reference.prelu_forward(b.x, b.alpha),),
       floor="copy", floor_arrays=lambda b: (b.x, b.out),
       floor_note="np.copyto(out, x): reads x, writes out (alpha's D values are negligible)"),
    Op("prelu", "backward",
       make_cynet=lambda b: (lambda d=b.dout, x=b.x, a=b.alpha, out=b.out, da=b.dalpha: ops.prelu_backward(
           d, x, a, out=out, alpha_grad_out=da)),
       make_numpy=lambda b: (lambda d=b.dout, x=b.x, a=b.alpha, out=b.out, da=b.dalpha: reference.prelu_backward(
           d, x, a, out=out, alpha_grad_out=da)),
       make_torch=_torch_prelu_backward,
       expected=lambda b: reference.prelu_backward(b.dout, b.x, b.alpha),
       floor="add", floor_arrays=lambda b: (b.dout, b.x, b.out),
       floor_note="np.add(dout, x, out=dx): reads dout and x, writes dx (dalpha's D values are negligible)",
       reduced_outputs=(1,)),
]


# --- Maxout, 2 pieces: x (N, 2D) -> y (N, D), indices (N, D) int32 ----------------------------------------------------
def _torch_maxout_forward(b, torch):
    rows, cols = b.shape
    f = torch.max
    x3 = b.t(b.x).view(rows, MAXOUT_PIECES, cols // MAXOUT_PIECES)
    y = b.t(b.half_out)
    idx = b.t_owned("maxout_idx64", lambda b: torch.zeros(b.half_idx.shape, dtype=torch.int64))
    return ((lambda: f(x3, dim=1, out=(y, idx))),
            "x.view(N,2,D).max(dim=1, out=(y, idx)); torch's indices are int64 (cynet's int32)", True)


def _torch_maxout_backward(b, torch):
    rows, cols = b.shape
    units = cols // MAXOUT_PIECES
    dx_flat = b.t(b.out)
    dx3 = dx_flat.view(rows, MAXOUT_PIECES, units)
    idx = b.t_owned("maxout_idx64_saved", lambda b: torch.from_numpy(
        b.saved("maxout", _maxout_saved)[1].astype(np.int64)).unsqueeze(1))
    dout = b.t(b.half_dout).unsqueeze(1)

    def call():
        dx_flat.zero_()  # autograd: zeros(x.shape).scatter_(dim, indices, grad), here into the preallocated dx
        dx3.scatter_(1, idx, dout)
        return dx_flat

    return call, "dx.zero_() then dx.view(N,2,D).scatter_(1, idx, dout): two passes over dx, as autograd's", True


def _maxout_saved(b):
    """The forward's (y, indices), as the backward reads them."""
    return reference.maxout_forward(b.x, MAXOUT_PIECES)


MAXOUT = [
    Op("maxout", "forward",
       make_cynet=lambda b: (lambda x=b.x, y=b.half_out, i=b.half_idx: ops.maxout_forward(
           x, MAXOUT_PIECES, out=y, indices_out=i)),
       make_numpy=lambda b: (lambda x=b.x, y=b.half_out, i=b.half_idx: reference.maxout_forward(
           x, MAXOUT_PIECES, out=y, indices_out=i)),
       make_torch=_torch_maxout_forward,
       expected=lambda b: b.saved("maxout", _maxout_saved),
       floor="copy", floor_arrays=lambda b: (b.x, b.out),
       floor_note=("np.copyto(out, x): reads x (N*2D floats) and writes N*2D floats, as maxout reads x and writes "
                   "y (N*D floats) + indices (N*D int32)")),
    Op("maxout", "backward",
       make_cynet=lambda b: (lambda d=b.half_dout, i=b.saved("maxout", _maxout_saved)[1], out=b.out:
                             ops.maxout_backward(d, i, MAXOUT_PIECES, out=out)),
       make_numpy=lambda b: (lambda d=b.half_dout, i=b.saved("maxout", _maxout_saved)[1], out=b.out:
                             reference.maxout_backward(d, i, MAXOUT_PIECES, out=out)),
       make_torch=_torch_maxout_backward,
       expected=lambda b: (reference.maxout_backward(b.half_dout, b.saved("maxout", _maxout_saved)[1],
                                                     MAXOUT_PIECES),),
       floor="copy", floor_arrays=lambda b: (b.x, b.out),
       floor_note=("np.copyto(dx, x): reads and writes N*2D floats, as maxout's backward reads dout (N*D floats) "
                   "+ indices (N*D int32) and writes dx (N*2D floats)")),
]

OPS = _elementwise_ops() + PRELU + MAXOUT


# --- cases, in run order: shape, op, direction, threads, implementation -----------------------------------------------
@dataclass(frozen=True)
class Case:
    op: Op
    shape: tuple
    threads: int
    impl: str

    @property
    def shape_id(self):
        return f"{self.shape[0]}x{self.shape[1]}"

    @property
    def id(self):
        return f"{self.op.label}-{self.op.direction}-{self.shape_id}-t{self.threads}-{self.impl}"

    @property
    def group(self):
        return f"{self.op.label}/{self.op.direction}/{self.shape_id}/t{self.threads}"


CASES = [Case(op, shape, threads, impl)
         for shape in SHAPES for op in OPS for threads in THREADS for impl in IMPLS]


# --- the pieces of one benchmark --------------------------------------------------------------------------------------
def _as_arrays(result):
    """An op's result (array, tensor, or tuple of them) as a tuple of NumPy arrays."""
    if isinstance(result, (tuple, list)):
        return tuple(a for r in result for a in _as_arrays(r))
    if hasattr(result, "numpy") and not isinstance(result, np.ndarray):
        return (result.numpy(),)
    return (np.asarray(result),)


def _check(case, result, expected):
    """The implementation's result equals the reference's within tolerance (indices exactly)."""
    got = _as_arrays(result)
    assert len(got) == len(expected), f"{case.id}: {len(got)} outputs, the reference has {len(expected)}"
    for k, (g, want) in enumerate(zip(got, expected)):
        assert g.shape == want.shape, f"{case.id}: output {k} has shape {g.shape}, reference {want.shape}"
        if want.dtype.kind in "iu":
            np.testing.assert_array_equal(g, want, err_msg=f"{case.id}: output {k} (indices)")
        else:
            rtol, atol = (REDUCTION_TOLERANCE if k in case.op.reduced_outputs else TOLERANCE)[case.impl]
            np.testing.assert_allclose(g, want, rtol=rtol, atol=atol, err_msg=f"{case.id}: output {k}")


def _floor_call(case, b, torch):
    *inputs, out = case.op.floor_arrays(b)
    if case.impl == "limit":
        return memory_pass(case.op.floor, inputs, out), case.op.floor_note
    if case.impl == "limit_stream":
        fn = memory_pass(case.op.floor, inputs, out, stream_threads=case.threads)
        return fn, f"{case.op.floor} with non-temporal stores on the group's threads (cynet._kernels.memory)"
    fn = memory_pass(case.op.floor, inputs, out, torch, to_torch=b.t)
    if case.op.floor == "copy":
        return fn, case.op.floor_note.replace("np.copyto(out, x)", "out.copy_(x)").replace("np.copyto(dx, x)",
                                                                                            "dx.copy_(x)")
    return fn, "torch.add(a, b, out=c) on the group's threads"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_activation(case, benchmark, buffer_pool, use_threads, timing, request):
    benchmark.group = case.group
    benchmark.extra_info.update(op=case.op.label, direction=case.op.direction, shape=case.shape_id,
                                threads=case.threads, impl=case.impl)
    torch = request.getfixturevalue("torch_module") if case.impl in ("torch", "limit_torch") else None
    b = buffer_pool.get(case.shape)

    note = ""
    if case.impl == "cynet":
        fn = case.op.make_cynet(b)
    elif case.impl == "numpy":
        fn = case.op.make_numpy(b)
    elif case.impl == "torch":
        try:
            fn, note, *differs = case.op.make_torch(b, torch)
        except (AttributeError, TorchUnavailable) as exc:
            pytest.skip(f"torch {torch.__version__} has no kernel for {case.group}: {exc}")
        # True where torch's path does more (or other) work than cynet's: it allocates, or moves more bytes
        benchmark.extra_info["torch_differs"] = bool(differs and differs[0])
    else:
        fn, note = _floor_call(case, b, torch)
    if note:
        benchmark.extra_info["note"] = note

    with use_threads(case.threads):
        if not case.impl.startswith("limit"):
            try:
                result = fn()
            except (RuntimeError, TypeError) as exc:
                if case.impl != "torch":
                    raise
                pytest.skip(f"torch {torch.__version__} cannot run {case.group} this way: {exc}")
            _check(case, result, b.expected((case.op.label, case.op.direction), case.op.expected))
        timing.run(benchmark, fn)


# --- the target condition, each kernel in alternation with its floor --------------------------------------------------
INTERLEAVED_SHAPE = (4096, 4096)
INTERLEAVED_THREADS = 2
INTERLEAVED_ROUNDS = 15


@pytest.mark.parametrize("op", OPS, ids=[f"{op.label}-{op.direction}" for op in OPS])
def test_activation_interleaved_with_the_floor(op, benchmark, buffer_pool, use_threads):
    """cynet's kernel, the floors and torch's kernel in alternation at the target's shape and thread count: per round
    one call of the NumPy floor, one of the streaming floor, one of torch's floor and one of torch's kernel (when torch
    is importable), then one of cynet. The per-round ratio cynet / fastest floor has its median in
    ``extra_info["ratio_to_floor_median"]``, the per-round ratio torch's kernel / cynet in
    ``extra_info["torch_over_cynet_median"]`` (the issue's "never slower than PyTorch", with the machine's drift
    cancelled as for the floor)."""
    shape, threads = INTERLEAVED_SHAPE, INTERLEAVED_THREADS
    benchmark.group = f"interleaved/{op.label}/{op.direction}/{shape[0]}x{shape[1]}/t{threads}"
    b = buffer_pool.get(shape)
    case = Case(op, shape, threads, "cynet")
    kernel = op.make_cynet(b)
    rounds = InterleavedRounds([_floor_call(Case(op, shape, threads, impl), b, None)[0]
                                for impl in ("limit", "limit_stream")], names=["np", "nt"])
    if torch is not None:
        rounds.floors.append(_floor_call(Case(op, shape, threads, "limit_torch"), b, torch)[0])
        rounds.names.append("torch")
        try:
            rounds.torch_call = op.make_torch(b, torch)[0]
        except (AttributeError, TorchUnavailable):
            rounds.torch_call = None

    with use_threads(threads):
        _check(case, kernel(), b.expected((op.label, op.direction), op.expected))
        if rounds.torch_call is not None:
            try:
                torch_result = rounds.torch_call()
            except (RuntimeError, TypeError):                    # as test_activation: torch cannot run it this way
                rounds.torch_call = None
            else:
                _check(Case(op, shape, threads, "torch"), torch_result,
                       b.expected((op.label, op.direction), op.expected))
        rounds.warm_up()
        benchmark.pedantic(kernel, setup=rounds, rounds=INTERLEAVED_ROUNDS, iterations=1)
    rounds.record(benchmark, impl="cynet", threads=threads, kernel=op.label, direction=op.direction)
