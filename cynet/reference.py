"""NumPy reference implementation of every op in :mod:`cynet.ops`, with the same signatures.

Three roles: the oracle the tests compare the kernels with, the baseline the benchmarks measure against, and the
fallback :mod:`cynet.ops` uses for floating dtypes the kernels are not compiled for (float16, longdouble).

Written for clarity and numerical care, not speed: each function is the textbook formula in the input's dtype, in
the form that stays accurate at the extremes (a sigmoid that never overflows, ``expm1`` near zero, ``erfc`` in the
left tail of GELU). float16 SiLU (forward and backward) is evaluated in float32 and rounded once: its subnormal
sigmoid and a cancellation near the derivative's root cost it up to 760 ulp in float16 itself. One more exception,
GELU: NumPy has no erf, so for float16, float32 and float64 inputs GELU is evaluated
in float64 (erfc from SciPy when installed, else libm's ``math.erfc``) and rounded once to the input's dtype. For a
long double wider than float64 (x87 extended precision on x86-64 Linux) it is evaluated in long double, with this
module's own erfc (:func:`_erfc_wide`, relative error below 3e-19): measured against mpmath, the erf form's forward and
backward are within 2.5 eps times the condition number |x f'(x) / f(x)| (about x^2 in the left tail), and huge or tiny
long doubles beyond float64's range come out right (x Phi(x) = 1e400 at 1e400, -5e-401 at -1e-400, -0 at -1e400).
Where long double is float64 (Windows, macOS on ARM), it takes the float64 path. Validation is :mod:`cynet.ops`' job;
these functions assume well-formed floating arrays and usable ``out`` buffers.
"""
import functools
import math

import numpy as np

__all__ = [
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward", "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward", "prelu_forward", "prelu_backward", "elu_forward", "elu_backward",
    "selu_forward", "selu_backward", "gelu_forward", "gelu_backward", "silu_forward", "silu_backward",
    "maxout_forward", "maxout_backward", "SELU_SCALE", "SELU_ALPHA",
]

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def _erfc(z):
    """erfc in float64: SciPy's vectorised one when installed (imported on first use: it is slow to import),
    else libm's math.erfc element by element."""
    try:
        from scipy.special import erfc
    except ImportError:  # pragma: no cover - depends on the environment
        z = np.asarray(z, dtype=np.float64)
        return np.asarray(np.frompyfunc(math.erfc, 1, 1)(z), dtype=np.float64)  # 0-d input gives a Python float
    return erfc(z)


# --- erfc in long double ----------------------------------------------------------------------------------------------
# Taylor expansion about anchors b_j = j/16 (0 <= b_j <= 32):
#     integral_{b-d}^{b} exp(-t^2) dt = exp(-b^2) * sum_k H_k(b) d^(k+1) / (k+1)!     (H_k: Hermite polynomials)
# erfc(b_j) is the sum of these integrals over [b_{i-1}, b_i] for all i > j, added from the top (all terms positive:
# no cancellation; erfc(32) ~ 1e-447 is dropped), and erfc(z) = erfc(b_j) + the integral over [z, b_j] with b_j the
# anchor just above z; beyond |z| = 31 the asymptotic series (8 terms: truncation below 1e-20) with exp(-z^2) from
# z^2 split exactly. 40 terms make the Taylor truncation negligible (2 b d <= 4). Checked against mpmath (200 bits) in
# x87 extended precision (64-bit mantissa) on 8001 points of [-6, 110]: relative error below 3e-19 (2.75 eps) wherever
# erfc is a normal long double (|z| < 106.5; beyond, it underflows gradually to 0). A wider long double (IEEE quad,
# 113 bits) gets about that accuracy, not its own. (tests/_helpers.py uses it as the long-double oracle of the
# float32/float64 kernels, which do not use it; tests/test_vecmath.py checks it against mpmath's values.)
_ERFC_STEP_INV = 16
_ERFC_LAST_ANCHOR = 32
_ERFC_TERMS = 40
_ERFC_NEAR = 31          # the anchors' expansion up to |z| = 31, the asymptotic series beyond
_ERFC_UNDERFLOW = 107    # erfc(107) ~ 1e-4975 underflows even in long double
_PI_DIGITS = "3.14159265358979323846264338327950288419716939937510"


@functools.lru_cache(maxsize=None)
def _erfc_tables(dtype):
    """(anchors, Taylor coefficients (terms, anchors), 2/sqrt(pi) exp(-b^2), erfc at the anchors) in ``dtype``."""
    one = dtype.type(1)
    anchors = np.arange(_ERFC_LAST_ANCHOR * _ERFC_STEP_INV + 1, dtype=dtype) / _ERFC_STEP_INV
    h = np.empty((_ERFC_TERMS,) + anchors.shape, dtype)
    h[0] = one
    h[1] = 2 * anchors
    for k in range(1, _ERFC_TERMS - 1):
        h[k + 1] = 2 * anchors * h[k] - 2 * k * h[k - 1]
    coef = h / np.cumprod(np.arange(1, _ERFC_TERMS + 1, dtype=dtype))[:, None]  # H_k(b) / (k+1)!
    scale = 2 / np.sqrt(dtype.type(_PI_DIGITS)) * np.exp(-anchors * anchors)
    tables = (anchors, coef, scale, None)
    steps = _erfc_below_anchor(tables, np.arange(1, anchors.size), np.full(anchors.size - 1, one / _ERFC_STEP_INV))
    at_anchors = np.concatenate([np.cumsum(steps[::-1])[::-1], np.zeros(1, dtype)])
    return anchors, coef, scale, at_anchors


def _erfc_below_anchor(tables, j, d):
    """2/sqrt(pi) * integral over [b_j - d, b_j] of exp(-t^2), 0 <= d <= 1/16."""
    _, coef, scale, _ = tables
    s = coef[-1][j]
    for k in range(_ERFC_TERMS - 2, -1, -1):
        s = s * d + coef[k][j]
    return scale[j] * s * d


def _erfc_wide(z):
    """erfc of the long double array ``z``, in its dtype (relative error below 3e-19 on x87 extended precision)."""
    z = np.asarray(z)
    dtype = z.dtype
    tables = _erfc_tables(dtype)
    anchors, _, _, at_anchors = tables
    az = np.abs(z.reshape(-1))
    e = np.empty_like(az)
    near = az <= _ERFC_NEAR
    a = az[near]
    j = np.ceil(a * _ERFC_STEP_INV).astype(np.intp)
    e[near] = at_anchors[j] + _erfc_below_anchor(tables, j, anchors[j] - a)
    far = az[~near]
    with np.errstate(invalid="ignore"):
        zf = np.where(far < _ERFC_UNDERFLOW, far, dtype.type(_ERFC_UNDERFLOW))
        hi = np.round(zf * 2 ** 20) / 2 ** 20  # at most 27 significant bits: hi * hi is exact
        lo = zf - hi
        inv = 1 / (2 * zf * zf)
        series, term = np.ones_like(zf), np.ones_like(zf)
        for k in range(1, 9):
            term = -term * (2 * k - 1) * inv
            series += term
        with np.errstate(under="ignore"):
            e_far = np.exp(-hi * hi) * np.exp(-lo * (2 * hi + lo)) / (zf * np.sqrt(dtype.type(_PI_DIGITS))) * series
    e[~near] = np.where(far < _ERFC_UNDERFLOW, e_far, np.where(np.isnan(far), far, dtype.type(0)))
    # near 0, 1 - 2z/sqrt(pi) (the next term, 2z^3 / (3 sqrt(pi)), is below 2^-96): the anchors' sum is 1 within an
    # ulp, not exactly, and x Phi(x) should be exactly x / 2 for a tiny x
    tiny = az < 2.0 ** -32
    e[tiny] = 1 - az[tiny] * (2 / np.sqrt(dtype.type(_PI_DIGITS)))
    return np.where(z < 0, 2 - e.reshape(z.shape), e.reshape(z.shape))


def _wider_than_float64(dtype):
    """Whether ``dtype`` carries more precision than float64 (long double on x86-64 Linux; not where it is float64)."""
    return np.finfo(dtype).nmant > np.finfo(np.float64).nmant


def _store(result, out):
    """Return ``result`` cast to its own dtype, written into ``out`` when one is given."""
    if out is None:
        return result
    out[...] = result
    return out


def _scalar(value, dtype):
    return np.asarray(value, dtype=dtype)[()]


def _stable_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


# --- sigmoid / tanh --------------------------------------------------------------------------------------------------
def sigmoid_forward(x, *, out=None):
    return _store(_stable_sigmoid(x), out)


def sigmoid_backward(dout, y, *, out=None):
    return _store(dout * (y * (1 - y)), out)


def tanh_forward(x, *, out=None):
    return _store(np.tanh(x), out)


def tanh_backward(dout, y, *, out=None):
    return _store(dout * (1 - y * y), out)


# --- ReLU family -----------------------------------------------------------------------------------------------------
def relu_forward(x, *, out=None):
    return _store(np.where(x < 0, x.dtype.type(0), x), out)


def relu_backward(dout, y, *, out=None):
    return _store(np.where(y > 0, dout, dout.dtype.type(0)), out)


def leaky_relu_forward(x, negative_slope=0.01, *, out=None):
    return _store(np.where(x > 0, x, _scalar(negative_slope, x.dtype) * x), out)


def leaky_relu_backward(dout, x, negative_slope=0.01, *, out=None):
    return _store(np.where(x > 0, dout, _scalar(negative_slope, dout.dtype) * dout), out)


def _prelu_alpha_view(x, alpha):
    alpha = np.asarray(alpha, dtype=x.dtype)
    if alpha.size == 1:
        return alpha.reshape(())
    return alpha.reshape((1, alpha.size) + (1,) * (x.ndim - 2))


def prelu_forward(x, alpha, *, out=None):
    a = _prelu_alpha_view(x, alpha)
    return _store(np.where(x > 0, x, a * x), out)


def prelu_backward(dout, x, alpha, *, out=None, alpha_grad_out=None):
    """Both results are computed before either is stored: ``out`` may be ``x`` or ``dout`` (and ``alpha_grad_out``
    alpha)."""
    alpha_arr = np.asarray(alpha, dtype=x.dtype)
    a = _prelu_alpha_view(x, alpha_arr)
    dx = np.where(x > 0, dout, a * dout)
    # dalpha = sum of dout * min(x, 0): zero where x > 0, NaN where dout or x is NaN. Summed in float64, or in long
    # double for a long double wider than it (a float64 cast overflowed x = -1e400 to -inf: NaN for dout = 1e-400)
    acc = np.promote_types(x.dtype, np.float64)
    contribution = dout.astype(acc) * np.minimum(x, 0).astype(acc)
    if alpha_arr.size == 1:
        dalpha = np.asarray(contribution.sum()).reshape(alpha_arr.shape)
    else:
        axes = (0,) + tuple(range(2, x.ndim))
        dalpha = contribution.sum(axis=axes).reshape(alpha_arr.shape)
    return _store(dx, out), _store(dalpha.astype(x.dtype), alpha_grad_out)


# --- exponential linear units ----------------------------------------------------------------------------------------
def elu_forward(x, alpha=1.0, *, out=None):
    a = _scalar(alpha, x.dtype)
    return _store(np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), out)      # -0 stays -0, as a expm1(-0)


def elu_backward(dout, y, alpha=1.0, *, out=None):
    a = _scalar(alpha, y.dtype)
    return _store(np.where(y > 0, dout, dout * (y + a)), out)


_SELU_SCALE_DIGITS = "1.0507009873554804934193349852946"
_SELU_SCALE_ALPHA_DIGITS = "1.7580993408473768599402175208123"   # the product of the two 32-digit constants


def _selu_constants(dtype):
    """lambda and lambda alpha in ``dtype``: from their digits for a long double wider than float64 (the float64
    constants were 2470 of its ulp off), the float64 values rounded otherwise (as the kernels)."""
    if _wider_than_float64(dtype):
        return dtype.type(_SELU_SCALE_DIGITS), dtype.type(_SELU_SCALE_ALPHA_DIGITS)
    return _scalar(SELU_SCALE, dtype), _scalar(SELU_SCALE * SELU_ALPHA, dtype)


def selu_forward(x, *, out=None):
    scale, scale_alpha = _selu_constants(x.dtype)
    return _store(np.where(x >= 0, scale * x, scale_alpha * np.expm1(np.minimum(x, 0))), out)   # -0 stays -0


def selu_backward(dout, y, *, out=None):
    scale, scale_alpha = _selu_constants(y.dtype)
    return _store(np.where(y > 0, scale * dout, dout * (y + scale_alpha)), out)


# --- GELU and SiLU ---------------------------------------------------------------------------------------------------
def _gelu_check(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@functools.lru_cache(maxsize=None)
def _gelu_constants(dtype):
    """sqrt(2), sqrt(2/pi), the tanh form's cubic coefficient and 1/sqrt(2 pi), in ``dtype``."""
    pi = dtype.type(_PI_DIGITS)
    return np.sqrt(dtype.type(2)), np.sqrt(2 / pi), dtype.type(str(_GELU_TANH_CUBIC)), 1 / np.sqrt(2 * pi)


def _normal_pdf_wide(x):
    """exp(-x^2 / 2) / sqrt(2 pi) in x's (long double) dtype, with x^2 split exactly (hi^2 + lo (2 hi + lo)): a
    rounded x^2 would cost exp a relative error of x^2/2 eps (1e-15 at |x| = 150, where it underflows)."""
    inv_sqrt_2pi = _gelu_constants(x.dtype)[3]
    ax = np.minimum(np.abs(x), x.dtype.type(160))   # exp(-160^2 / 2) underflows even in long double
    hi = np.round(ax * 2 ** 20) / 2 ** 20            # at most 28 significant bits: hi * hi is exact
    lo = ax - hi
    with np.errstate(under="ignore"):
        return np.exp(-(hi * hi) / 2) * np.exp(-(lo * (2 * hi + lo)) / 2) * inv_sqrt_2pi


def _gelu_forward_wide(x, approximate):
    sqrt2, sqrt_2_over_pi, cubic, _ = _gelu_constants(x.dtype)
    if approximate == "none":
        return x * (_erfc_wide(-x / sqrt2) / 2)  # x * Phi(x); x * 1 (not x * 2 / 2) for large x: no overflow
    with np.errstate(over="ignore"):  # x^3 beyond 1e4932 is inf, and the sigmoid of inf its limit
        return x * _stable_sigmoid(2 * (sqrt_2_over_pi * (x + cubic * x ** 3)))


def _gelu_backward_wide(dout, x, approximate):
    sqrt2, sqrt_2_over_pi, cubic, _ = _gelu_constants(x.dtype)
    if approximate == "none":
        grad = _erfc_wide(-x / sqrt2) / 2 + x * _normal_pdf_wide(x)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # in the branch np.where drops
            w = 2 * (sqrt_2_over_pi * (x + cubic * x ** 3))
            s = _stable_sigmoid(w)
            e = np.exp(-np.abs(w))
            slope = e / ((1 + e) * (1 + e))  # s (1 - s), which is 0 once s rounds to 1 (x > 7.3) while this is not
            # s (1 - s) = 0: the second term is 0 (not 0 * inf = NaN once x^2 overflows, |x| > 1e2466)
            grad = np.where(slope == 0, s, s + x * slope * 2 * sqrt_2_over_pi * (1 + 3 * cubic * x * x))
            # x = +-inf: NaN as every other dtype's (inf * 0 in the slope term), not the limits 1 and 0
            grad = np.where(np.isinf(x), np.nan, grad)
    return dout * grad


def gelu_forward(x, approximate="none", *, out=None):
    """GELU in float64 for inputs up to float64 (rounded once to their dtype), in the input's dtype for a long double
    wider than float64 (with :func:`_erfc_wide`): see the module docstring."""
    _gelu_check(approximate)
    if _wider_than_float64(x.dtype):
        return _store(_gelu_forward_wide(x, approximate), out)
    xd = x.astype(np.float64)
    if approximate == "none":
        y = 0.5 * xd * _erfc(-xd / math.sqrt(2.0))  # x * Phi(x)
    else:
        u = _SQRT_2_OVER_PI * (xd + _GELU_TANH_CUBIC * xd ** 3)
        y = xd * _stable_sigmoid(2 * u)  # 0.5 x (1 + tanh u) == x sigmoid(2u)
    return _store(y.astype(x.dtype), out)


def gelu_backward(dout, x, approximate="none", *, out=None):
    """The gradient of :func:`gelu_forward`, in the same working precision."""
    _gelu_check(approximate)
    if _wider_than_float64(x.dtype):
        return _store(_gelu_backward_wide(dout, x, approximate), out)
    xd = x.astype(np.float64)
    if approximate == "none":
        cdf = 0.5 * _erfc(-xd / math.sqrt(2.0))
        with np.errstate(over="ignore"):      # x^2 overflows past 1.3e154: exp(-inf) = 0, the pdf's limit
            pdf = np.exp(-0.5 * xd * xd) / math.sqrt(2.0 * math.pi)
        grad = cdf + xd * pdf
    else:
        # x clamped to +-40 inside the gate and the polynomial: beyond, the gate is exactly 0 or 1 and its slope
        # exactly 0 (unclamped, x^2 overflows past 1.3e154 and 0 * inf gave NaN for a finite x)
        # The gate's slope s (1 - s) as e / (1 + e)^2, e = exp(-|w|): 1 - s from a rounded s is 0 where s rounds to 1
        # (x > 4.9), and the term it drops is up to 5.4 eps (1 + |x|) (x = 7.09).
        xc = np.clip(xd, -40.0, 40.0)
        w = 2 * _SQRT_2_OVER_PI * (xc + _GELU_TANH_CUBIC * xc ** 3)
        s = _stable_sigmoid(w)
        e = np.exp(-np.abs(w))
        grad = s + xd * (e / ((1 + e) * (1 + e))) * 2 * _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_CUBIC * xc * xc)
    return _store((dout * grad.astype(x.dtype)).astype(x.dtype), out)


def _silu_working(x):
    """x in SiLU's working dtype: float32 for float16, whose subnormals start at 6.1e-5 (sigmoid(-12) = 6.1e-6 kept
    2 digits, so x sigmoid(x) = -6.3e-5 at -12.16 was 6.2 ulp off) and whose 1 + x (1 - s) cancels near the
    derivative's root at -1.278 (760 ulp off); the input's own dtype otherwise."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def silu_forward(x, *, out=None):
    """x sigmoid(x); float16 is evaluated in float32 and rounded once (see :func:`_silu_working`)."""
    xw = _silu_working(x)
    s = _stable_sigmoid(xw)
    with np.errstate(invalid="ignore"):
        y = np.where(s == 0, xw.dtype.type(-0.0), xw * s)  # -0 where sigmoid underflows: the limit at -inf
    return _store(y.astype(x.dtype, copy=False), out)


def silu_backward(dout, x, *, out=None):
    """dout s (1 + x (1 - s)); float16 in float32, rounded once, as :func:`silu_forward`."""
    xw = _silu_working(x)
    s = _stable_sigmoid(xw)
    return _store((dout.astype(xw.dtype, copy=False) * (s * (1 + xw * (1 - s)))).astype(x.dtype, copy=False), out)


# --- Maxout ----------------------------------------------------------------------------------------------------------
def maxout_forward(x, pieces, *, out=None, indices_out=None):
    """Piece-major layout: along the last axis, x holds [piece 0 of units 0..D-1, piece 1 of units 0..D-1, ...]."""
    lead = x.shape[:-1]
    units = x.shape[-1] // pieces
    xr = x.reshape(lead + (pieces, units))
    idx = np.argmax(xr, axis=-2)  # first maximum wins; NaN counts as the maximum, as np.max propagates it
    y = np.take_along_axis(xr, idx[..., None, :], axis=-2)[..., 0, :]
    return _store(y, out), _store(idx.astype(np.int32), indices_out)


def maxout_backward(dout, indices, pieces, *, out=None):
    lead = dout.shape[:-1]
    units = dout.shape[-1]
    dx = np.zeros(lead + (pieces, units), dtype=dout.dtype)
    np.put_along_axis(dx, indices.astype(np.intp)[..., None, :], dout[..., None, :], axis=-2)
    return _store(dx.reshape(lead + (pieces * units,)), out)
