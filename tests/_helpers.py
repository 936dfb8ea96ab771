"""Shared test helpers: the table of elementwise ops, error measures, gradient checks and high-accuracy oracles.

Plain functions and data, imported by the test modules as ``from _helpers import ...``. (They are not in
``conftest.py`` because ``from conftest import ...`` resolves to whichever ``conftest`` was imported first, which
breaks ``pytest tests bench``; ``conftest.py`` holds the pytest wiring: the ``op`` parametrisation and fixtures.)

Oracles, from the most to the least independent:

- hand-computed values (in the tests themselves);
- :func:`truth_forward`: the forward evaluated in ``np.longdouble`` (x87 extended precision, 64-bit mantissa, on
  x86-64) from textbook formulas, with erfc from :func:`erfc_ld` (no SciPy, no mpmath);
- :mod:`cynet.reference`: the NumPy implementation, evaluated in float64 for float32 inputs;
- :func:`numerical_gradient`: centred differences of the forward, for every backward.
"""
from dataclasses import dataclass, field

import numpy as np

from cynet import ops, reference

LD = np.longdouble
EXTENDED = np.finfo(LD).nmant >= 63  # x87 extended precision: the float64 oracles below are ~2**-11 ulp accurate


# --- the elementwise ops ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpSpec:
    """One elementwise activation as the tests see it.

    name: the stem of ``<name>_forward`` / ``<name>_backward``; kw: keyword parameters of both; saved: the tensor the
    backward takes ("x" or "y"); kinked: not differentiable at 0 (gradient checks keep away from it); exact_forward:
    the forward is arithmetic on the input (compared bit for bit with the reference); exact_backward: the backward is
    ``dout * (arithmetic on the saved tensor)``, the same operations as the reference, so also bit for bit.
    """

    name: str
    kw: dict = field(default_factory=dict)
    saved: str = "x"
    kinked: bool = False
    exact_forward: bool = False
    exact_backward: bool = False

    @property
    def id(self):
        return f"{self.name}-{next(iter(self.kw.values()))}" if self.kw else self.name

    @property
    def transcendental(self):
        return not self.exact_forward

    def forward(self, x, module=ops, **extra):
        return getattr(module, f"{self.name}_forward")(x, **self.kw, **extra)

    def backward(self, dout, saved, module=ops, **extra):
        return getattr(module, f"{self.name}_backward")(dout, saved, **self.kw, **extra)

    def saved_tensor(self, x, y):
        return x if self.saved == "x" else y

    def __repr__(self):
        return self.id


ELEMENTWISE = [
    OpSpec("sigmoid", saved="y", exact_backward=True),
    OpSpec("tanh", saved="y", exact_backward=True),
    OpSpec("relu", saved="y", kinked=True, exact_forward=True, exact_backward=True),
    OpSpec("leaky_relu", {"negative_slope": 0.1}, saved="x", kinked=True, exact_forward=True, exact_backward=True),
    OpSpec("elu", {"alpha": 1.3}, saved="y", kinked=True, exact_backward=True),
    OpSpec("selu", saved="y", kinked=True, exact_backward=True),
    OpSpec("gelu", {"approximate": "none"}, saved="x"),
    OpSpec("gelu", {"approximate": "tanh"}, saved="x"),
    OpSpec("silu", saved="x"),
]
BY_ID = {spec.id: spec for spec in ELEMENTWISE}
TRANSCENDENTAL = [spec for spec in ELEMENTWISE if spec.transcendental]

# The special values every op must handle like the reference (1e-40 is a float32 subnormal).
SPECIAL_VALUES = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-40, -1e-40, 88.0, -88.0, 90.0, -90.0, 700.0,
                  -700.0, 750.0, -750.0, 20.0, -20.0, 1.0, -1.0]


# --- error measures --------------------------------------------------------------------------------------------------
def ulp(truth, dtype):
    """The unit in the last place of ``dtype`` at the exact value ``truth`` (float64 or longdouble array):
    ``2**(floor(log2|truth|) - mantissa bits)``, and the subnormal spacing below the normal range (and at 0)."""
    fi = np.finfo(dtype)
    truth = np.abs(np.asarray(truth))
    _, exponent = np.frexp(truth)  # truth = m * 2**exponent, 0.5 <= m < 1
    exponent = np.where(truth == 0, fi.minexp + 1, np.maximum(exponent, fi.minexp + 1))
    return np.ldexp(np.ones_like(truth), exponent - 1 - fi.nmant)


def ulp_error(actual, truth, dtype=None):
    """|actual - truth| in ulps of ``dtype`` (default: actual's dtype) at ``truth``, elementwise (finite entries).

    ``truth`` should be more precise than ``dtype``: float64 for a float32 result, longdouble for a float64 one.
    """
    actual = np.asarray(actual)
    truth = np.asarray(truth)
    if truth.dtype.itemsize < np.dtype(np.float64).itemsize:
        truth = truth.astype(np.float64)
    dtype = actual.dtype if dtype is None else dtype
    return (np.abs(actual.astype(truth.dtype) - truth) / ulp(truth, dtype)).astype(np.float64)


def relative_error(a, b):
    """max over entries of |a - b| / max(|a|, |b|), with 0/0 counted as 0 (the CS231n measure, per entry)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(denom == 0, 0.0, np.abs(a - b) / denom)
    return float(rel.max()) if rel.size else 0.0


def numerical_gradient_elementwise(f, x, dout, h=1e-5):
    """Centred difference of ``sum(f(x) * dout)`` for an elementwise ``f``: its Jacobian is diagonal, so perturbing
    every entry at once gives each entry's derivative, ``(f(x + h) - f(x - h)) / 2h * dout``, without the rounding
    noise of a large sum (eps * sum|f * dout| / h) that would swamp small derivatives."""
    return (f(x + h) - f(x - h)) / (2 * h) * dout


def numerical_gradient(f, x, dout, h=1e-5):
    """Centred difference of ``sum(f(x) * dout)`` with respect to every entry of ``x`` (float64), one at a time.

    ``x`` is perturbed in place and restored; pass a copy if ``f`` keeps a reference to it.
    """
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(x) * dout)
        flat[i] = old - h
        minus = np.sum(f(x) * dout)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


# --- high-accuracy oracles in long double ----------------------------------------------------------------------------
_PI = LD("3.14159265358979323846264338327950288")
_SQRT2 = np.sqrt(LD(2))
_SQRT_2_OVER_PI = np.sqrt(LD(2) / _PI)
_GELU_CUBIC = LD("0.044715")
_SELU_SCALE = LD("1.0507009873554804934193349852946")
_SELU_ALPHA = LD("1.6732632423543772848170429916717")


def erfc_ld(z):
    """erfc in long double, relative error below 3e-19 (no SciPy, no mpmath): the reference module's expansion about
    anchors (its derivation there), itself checked against mpmath's values in tests/test_vecmath.py and
    tests/test_activations.py; the kernels under test do not use it."""
    return reference._erfc_wide(np.asarray(z, LD))


def _sigmoid_ld(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def truth_forward(spec, x):
    """The forward of ``spec`` at the (exact) floating inputs ``x``, in long double, from textbook formulas."""
    x = np.asarray(x).astype(LD)
    kw = spec.kw
    with np.errstate(over="ignore", invalid="ignore"):
        if spec.name == "sigmoid":
            return _sigmoid_ld(x)
        if spec.name == "tanh":
            return np.tanh(x)
        if spec.name == "relu":
            return np.where(x > 0, x, LD(0))
        if spec.name == "leaky_relu":
            return np.where(x > 0, x, LD(kw["negative_slope"]) * x)
        if spec.name == "elu":
            return np.where(x > 0, x, LD(kw["alpha"]) * np.expm1(np.minimum(x, 0)))
        if spec.name == "selu":
            return np.where(x > 0, _SELU_SCALE * x, _SELU_SCALE * _SELU_ALPHA * np.expm1(np.minimum(x, 0)))
        if spec.name == "silu":
            s = _sigmoid_ld(x)
            return np.where(s == 0, LD(-0.0), x * s)  # the limit -0 at -inf
        if spec.name == "gelu" and kw["approximate"] == "none":
            return x * erfc_ld(-x / _SQRT2) / 2
        if spec.name == "gelu":
            return x * _sigmoid_ld(2 * _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x ** 3))
    raise ValueError(spec)


def truth_derivative(spec, x):
    """d/dx of the forward of ``spec`` at ``x``, in long double (0 at the kinks' right-hand side convention)."""
    x = np.asarray(x).astype(LD)
    kw = spec.kw
    with np.errstate(over="ignore", invalid="ignore"):
        if spec.name == "sigmoid":
            s = _sigmoid_ld(x)
            return s * (1 - s)
        if spec.name == "tanh":
            t = np.tanh(x)
            return 1 - t * t
        if spec.name == "relu":
            return np.where(x > 0, LD(1), LD(0))
        if spec.name == "leaky_relu":
            return np.where(x > 0, LD(1), LD(kw["negative_slope"]))
        if spec.name == "elu":
            return np.where(x > 0, LD(1), LD(kw["alpha"]) * np.exp(np.minimum(x, 0)))
        if spec.name == "selu":
            return np.where(x > 0, _SELU_SCALE, _SELU_SCALE * _SELU_ALPHA * np.exp(np.minimum(x, 0)))
        if spec.name == "silu":
            s = _sigmoid_ld(x)
            return s * (1 + x * (1 - s))
        if spec.name == "gelu" and kw["approximate"] == "none":
            return erfc_ld(-x / _SQRT2) / 2 + x * np.exp(-x * x / 2) / np.sqrt(2 * _PI)
        if spec.name == "gelu":
            s = _sigmoid_ld(2 * _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x ** 3))
            return s + x * s * (1 - s) * 2 * _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
    raise ValueError(spec)


def condition_number(spec, x):
    """|x f'(x) / f(x)|: how much a relative change of the input (or of an intermediate of the same size, such as a
    rounded argument of exp/erfc) is magnified in the result. 0 where it is undefined (f = 0, x = 0, non-finite)."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        kappa = np.abs(x.astype(LD) * truth_derivative(spec, x) / truth_forward(spec, x))
    return np.where(np.isfinite(kappa), kappa, 0).astype(np.float64)


def assert_resumes_exactly(make_trainer, x, y, path, reference, *, epochs, first_epochs=1, batch_size=16):
    """A trainer fitted for ``first_epochs``, saved to ``path`` with :func:`cynet.checkpoint.save_trainer`, loaded into
    a fresh ``make_trainer()`` and fitted on to ``epochs`` ends with exactly the weights of ``reference``, a trainer
    fitted straight to ``epochs``."""
    from cynet import checkpoint

    first = make_trainer()
    first.fit(x, y, epochs=first_epochs, batch_size=batch_size)
    checkpoint.save_trainer(path, first)
    resumed = make_trainer()
    checkpoint.load_trainer(path, resumed)
    resumed.fit(x, y, epochs=epochs, batch_size=batch_size)
    for p, q in zip(resumed.model.parameters(), reference.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


class MethodCalls:
    """Counts the calls of one method of one module's class, patched on the class for the test (an instance
    attribute would shadow it, which Sequential's fusions treat as a monitor's wrapper). Sequential does not fuse a
    class whose method was patched after it was built (``_fusion_methods``): the counting method is registered there
    as the class's own, so that fused passes still fuse and their count shows that the method did not run."""

    def __init__(self, monkeypatch, module, name):
        cls = type(module)
        self.count, original = 0, getattr(cls, name)

        def counting(this, *args, **kwargs):
            self.count += 1
            return original(this, *args, **kwargs)

        monkeypatch.setattr(cls, name, counting)
        if "_fusion_methods" in vars(cls):
            monkeypatch.setattr(cls, "_fusion_methods", (cls.forward, cls.backward))


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC 2011) in NumPy, from the specification: ``counter`` four arrays of uint32
    values, ``key`` two ints; returns the four output words as uint64 arrays (values < 2^32). The test oracle of
    cynet's dropout masks (tests check it against the Random123 known-answer vectors)."""
    mask32 = np.uint64(0xFFFFFFFF)
    x0, x1, x2, x3 = (np.asarray(c, np.uint64) & mask32 for c in counter)
    k0, k1 = np.uint64(key[0] & 0xFFFFFFFF), np.uint64(key[1] & 0xFFFFFFFF)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask32, (k1 + np.uint64(0xBB67AE85)) & mask32
        p0, p1 = np.uint64(0xD2511F53) * x0, np.uint64(0xCD9E8D57) * x2
        x0, x1, x2, x3 = ((p1 >> np.uint64(32)) ^ x1 ^ k0) & mask32, p1 & mask32, \
            ((p0 >> np.uint64(32)) ^ x3 ^ k1) & mask32, p0 & mask32
    return x0, x1, x2, x3


def dropout_keep(key, n, p):
    """The keep decisions of n elements of a cynet dropout mask keyed by ``key``: word i % 4 of Philox4x32-10 at
    counter (i // 4 low word, high word, 0, 0) and key (key low word, high word), kept when >= round(p 2^32)."""
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    words = philox4x32_10((blocks, blocks >> np.uint64(32), np.zeros_like(blocks), np.zeros_like(blocks)),
                          (key & 0xFFFFFFFF, key >> 32))
    return np.stack(words, axis=1).reshape(-1)[:n] >= round(p * 2**32)
