"""Softmax cross-entropy, forward and backward together: cynet against a NumPy implementation and PyTorch.

One pytest-benchmark group per (shape, threads), named ``softmax_ce/shape/tN``; inside it the implementations (the
test id ends with the name, ``benchmark.extra_info["impl"]`` holds it):

- ``cynet``: ``SoftmaxCrossEntropy().forward(scores, y)`` then ``backward()``: one fused kernel call (the gradient is
  written during the forward) plus label validation and the allocation of dscores;
- ``numpy``: the vectorised NumPy version a CS231n student writes (max-subtract, exp, sum, log, then
  ``probs[range(N), y] -= 1``; ``/= N``), in float32 like the input, single-threaded whatever the setting;
- ``torch``: ``F.cross_entropy(x, y)`` then ``torch.autograd.grad(loss, x)`` (log-softmax + NLL forward, their
  backward), on the group's thread count; skipped without torch;
- ``limit``: the bytes any implementation must move, the scores read and an (N, C) gradient written: ``np.copyto``
  into a preallocated array, one thread; ``limit_torch``: the same copy through torch on the group's threads (skipped
  without torch). The arrays (at most 16 MB) stay in cache, where ordinary stores are the faster floor, so there is no
  streaming one.

Each call computes the mean loss and the full (N, C) gradient from the same float32 scores and int64 labels. Before
anything is timed, each implementation's loss and gradient are compared with a float64 NumPy reference, so a broken
kernel (or a wrong torch mapping) is never timed.

Run:  python -m pytest bench/test_bench_losses.py --benchmark-only --benchmark-json=bench/results/losses.json
"""
from dataclasses import dataclass

import numpy as np
import pytest

from cynet.nn.loss import SoftmaxCrossEntropy
from settings import bench_threads, memory_pass

SHAPES = [(256, 10), (4096, 1000)]
THREADS = bench_threads()
IMPLS = ["cynet", "numpy", "torch", "limit", "limit_torch"]
SEED = 0
SCALE = 3.0           # scores ~ N(0, 3^2): a spread of probabilities, as after some training


# --- the NumPy implementation and the float64 oracle ------------------------------------------------------------------
def numpy_softmax_cross_entropy(scores, y):
    """(mean loss, dscores) in the dtype of ``scores``: CS231n's vectorised softmax loss."""
    n = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(sums[:, 0]) - shifted[np.arange(n), y]))
    dscores = exp / sums
    dscores[np.arange(n), y] -= 1
    dscores /= n
    return loss, dscores


def reference(scores, y):
    """The float64 oracle: (mean loss, dscores)."""
    return numpy_softmax_cross_entropy(scores.astype(np.float64), y)


# --- cases ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    shape: tuple
    threads: int
    impl: str

    @property
    def shape_id(self):
        return f"{self.shape[0]}x{self.shape[1]}"

    @property
    def id(self):
        return f"softmax_ce-{self.shape_id}-t{self.threads}-{self.impl}"

    @property
    def group(self):
        return f"softmax_ce/{self.shape_id}/t{self.threads}"


CASES = [Case(shape, threads, impl) for shape in SHAPES for threads in THREADS for impl in IMPLS]


class Problem:
    """Scores, labels and the float64 reference of one shape, made once."""

    _cache = {}

    def __init__(self, shape):
        rng = np.random.default_rng(SEED)
        self.scores = (SCALE * rng.standard_normal(shape)).astype(np.float32)
        self.y = rng.integers(0, shape[1], size=shape[0])
        self.expected = reference(self.scores, self.y)

    @classmethod
    def get(cls, shape):
        if shape not in cls._cache:
            cls._cache.clear()          # keep one shape's arrays alive at a time
            cls._cache[shape] = cls(shape)
        return cls._cache[shape]


def _make(case, problem, torch):
    scores, y = problem.scores, problem.y
    if case.impl.startswith("limit"):
        return memory_pass("copy", [scores], np.zeros_like(scores), torch if case.impl == "limit_torch" else None)
    if case.impl == "cynet":
        loss = SoftmaxCrossEntropy()

        def call():
            return loss.forward(scores, y), loss.backward()

        return call
    if case.impl == "numpy":
        return lambda: numpy_softmax_cross_entropy(scores, y)
    x = torch.from_numpy(scores).requires_grad_()
    yt = torch.from_numpy(y)
    cross_entropy, grad = torch.nn.functional.cross_entropy, torch.autograd.grad

    def call():
        value = cross_entropy(x, yt)
        (dscores,) = grad(value, x)
        return value.item(), dscores

    return call


def _check(case, result, expected):
    value, dscores = result
    want_value, want_grad = expected
    dscores = dscores.numpy() if hasattr(dscores, "numpy") and not isinstance(dscores, np.ndarray) else dscores
    assert dscores.shape == want_grad.shape and dscores.dtype == np.float32, case.id
    assert value == pytest.approx(want_value, rel=1e-5), f"{case.id}: loss {value} against {want_value}"
    np.testing.assert_allclose(dscores, want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max(),
                               err_msg=f"{case.id}: dscores")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_softmax_cross_entropy(case, benchmark, use_threads, timing, request):
    benchmark.group = case.group
    benchmark.extra_info.update(op="softmax_ce", direction="forward+backward", shape=case.shape_id,
                                threads=case.threads, impl=case.impl)
    torch = request.getfixturevalue("torch_module") if case.impl in ("torch", "limit_torch") else None
    problem = Problem.get(case.shape)
    fn = _make(case, problem, torch)
    with use_threads(case.threads):
        if not case.impl.startswith("limit"):
            _check(case, fn(), problem.expected)
        timing.run(benchmark, fn)
