"""Optimiser steps: cynet's fused kernels against NumPy, torch.optim and the memory-traffic floor.

One pytest-benchmark group per (rule, threads), named ``optim/rule/1200x3072/tN``, for SGD with momentum (0.9) and
Adam (default betas) on one float32 parameter of shape (1200, 3072), 3.7M elements (a CIFAR-10 first layer with 1200
hidden units). Inside a group, the implementations (the test id ends with the name, ``benchmark.extra_info["impl"]``
holds it):

- ``cynet``:  ``optimizer.step()`` of :mod:`cynet.optim`: one fused kernel call, one pass over p, g and the state;
- ``numpy``:  the same update written with in-place NumPy ufuncs (``out=`` into one preallocated scratch array, no
              allocation per step), as one writes it without kernels: several passes over memory;
- ``torch``:  ``torch.optim.SGD`` / ``torch.optim.Adam`` with ``fused=True`` (torch's fused CPU kernel, its fastest
              step; the default ``foreach=None`` is a per-tensor loop of ATen ops) where this torch has it, else the
              default, on tensors sharing the NumPy buffers; skipped without torch;
- ``limit_inplace``: the traffic of a fused step, in place: SGD-momentum reads p, g, b and writes p and b back
              into the lines it read (5 passes of the parameter's 14.7 MB), Adam reads p, g, m, v and writes p, m, v
              (7 passes); the floor adds g into 2 (3) parameter-sized rows in place (``settings.in_place_pass``) on
              the group's threads. (Before 2026-12-06 it was a copy of 2.5 / 3.5 parameter sizes between two arrays,
              whose ordinary stores read each line first: about twice the traffic, a floor too slow.)

Every implementation starts from the same parameter, gradient and (zero) state; before anything is timed, its first
step is compared with a float64 NumPy computation of that step, so a wrong update is never timed. Timed rounds then
keep stepping (the gradient is fixed; lr is small enough that nothing overflows).

Run:  python -m pytest bench/test_bench_optim.py --benchmark-only -q
"""
from dataclasses import dataclass

import numpy as np
import pytest

from cynet import nn, optim
from settings import bench_threads, in_place_pass

SHAPE = (1200, 3072)
THREADS = bench_threads()
RULES = ["sgd_momentum", "adam"]
IMPLS = ["cynet", "numpy", "torch", "limit_inplace"]
DTYPE = np.float32
LR, MOMENTUM, BETAS, EPS = 1e-3, 0.9, (0.9, 0.999), 1e-8
# arrays a fused step updates in place (p and its state), besides reading g: 2 + 1 read = 5 passes for SGD-momentum,
# 3 + 1 = 7 for Adam
UPDATED = {"sgd_momentum": 2, "adam": 3}


class Buffers:
    """The starting parameter and the gradient (allocated once), and the expected result of one step per rule."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.p0 = rng.standard_normal(SHAPE, dtype=DTYPE)
        self.g = rng.standard_normal(SHAPE, dtype=DTYPE)
        self._expected = {}

    def expected(self, rule):
        """p after one step from zero state, in float64."""
        if rule not in self._expected:
            p, g = self.p0.astype(np.float64), self.g.astype(np.float64)
            if rule == "sgd_momentum":
                self._expected[rule] = p - LR * g                      # the first step's buffer is g itself
            else:
                beta1, beta2 = BETAS
                m, v = (1 - beta1) * g, (1 - beta2) * g * g
                denom = np.sqrt(v) / np.sqrt(1 - beta2) + EPS
                self._expected[rule] = p - LR / (1 - beta1) * m / denom
        return self._expected[rule]


_buffers = []


def buffers():
    if not _buffers:
        _buffers.append(Buffers())
    return _buffers[0]


class NumpySGDMomentum:
    """PyTorch's SGD-momentum in in-place NumPy: b = g (first step) or b = mu * b + g; p -= lr * b."""

    def __init__(self, p, g):
        self.p, self.g = p, g
        self.b = np.empty_like(p)
        self.scratch = np.empty_like(p)
        self.first = True
        self.lr, self.mu = DTYPE(LR), DTYPE(MOMENTUM)

    def step(self):
        if self.first:
            np.copyto(self.b, self.g)
            self.first = False
        else:
            self.b *= self.mu
            self.b += self.g
        np.multiply(self.b, self.lr, out=self.scratch)
        self.p -= self.scratch


class NumpyAdam:
    """Adam in in-place NumPy (bias corrections in Python floats, arrays in float32, one scratch array)."""

    def __init__(self, p, g):
        self.p, self.g = p, g
        self.m, self.v = np.zeros_like(p), np.zeros_like(p)
        self.scratch = np.empty_like(p)
        self.t = 0

    def step(self):
        beta1, beta2 = BETAS
        self.t += 1
        s = self.scratch
        self.m *= DTYPE(beta1)
        np.multiply(self.g, DTYPE(1 - beta1), out=s)
        self.m += s
        self.v *= DTYPE(beta2)
        np.multiply(self.g, self.g, out=s)
        s *= DTYPE(1 - beta2)
        self.v += s
        np.sqrt(self.v, out=s)
        s /= DTYPE((1 - beta2 ** self.t) ** 0.5)
        s += DTYPE(EPS)
        np.divide(self.m, s, out=s)
        s *= DTYPE(-LR / (1 - beta1 ** self.t))
        self.p += s


@dataclass(frozen=True)
class Case:
    rule: str
    threads: int
    impl: str

    @property
    def shape_id(self):
        return "x".join(map(str, SHAPE))

    @property
    def id(self):
        return f"optim-{self.rule}-{self.shape_id}-t{self.threads}-{self.impl}"

    @property
    def group(self):
        return f"optim/{self.rule}/{self.shape_id}/t{self.threads}"


CASES = [Case(rule, t, impl) for rule in RULES for t in THREADS for impl in IMPLS]


def _make(case, b, torch):
    """``(step, parameter array, note)``: a zero-argument step with fresh state, and the array it updates."""
    if case.impl == "limit_inplace":
        rows = UPDATED[case.rule]
        targets = np.zeros((rows, b.p0.size), DTYPE)
        return in_place_pass(targets, b.g.reshape(-1), case.threads), None, (
            f"g added in place into {rows} parameter-sized rows on the group's threads: the {2 * rows + 1} passes of "
            f"a fused step")
    p = b.p0.copy()
    if case.impl == "cynet":
        param = nn.Parameter(p)
        param.grad = b.g
        opt = (optim.SGD([param], lr=LR, momentum=MOMENTUM) if case.rule == "sgd_momentum"
               else optim.Adam([param], lr=LR, betas=BETAS, eps=EPS))
        return opt.step, param.data, "one fused kernel call"
    if case.impl == "numpy":
        opt = NumpySGDMomentum(p, b.g) if case.rule == "sgd_momentum" else NumpyAdam(p, b.g)
        return opt.step, p, "in-place ufuncs, one scratch array"
    tp = torch.from_numpy(p).requires_grad_()
    tp.grad = torch.from_numpy(b.g)
    try:                                              # torch's fused CPU kernels (torch 2.4 and later)
        opt = (torch.optim.SGD([tp], lr=LR, momentum=MOMENTUM, fused=True) if case.rule == "sgd_momentum"
               else torch.optim.Adam([tp], lr=LR, betas=BETAS, eps=EPS, fused=True))
        return opt.step, p, "torch.optim with fused=True (one fused kernel per step)"
    except (RuntimeError, TypeError, ValueError):
        opt = (torch.optim.SGD([tp], lr=LR, momentum=MOMENTUM) if case.rule == "sgd_momentum"
               else torch.optim.Adam([tp], lr=LR, betas=BETAS, eps=EPS))
        return opt.step, p, "torch.optim default (foreach=None): this torch has no fused CPU step"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_optimizer_step(case, benchmark, use_threads, timing, request):
    benchmark.group = case.group
    benchmark.extra_info.update(op=f"optim_{case.rule}", direction="step", shape=case.shape_id,
                                threads=case.threads, impl=case.impl, elements=int(np.prod(SHAPE)))
    torch = request.getfixturevalue("torch_module") if case.impl == "torch" else None
    b = buffers()
    with use_threads(case.threads):
        step, p, note = _make(case, b, torch)
        benchmark.extra_info["note"] = note
        if p is not None:
            step()
            np.testing.assert_allclose(p, b.expected(case.rule), rtol=1e-5, atol=1e-6, err_msg=case.id)
        timing.run(benchmark, step)
