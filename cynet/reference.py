"""NumPy reference implementation of every op in :mod:`cynet.ops`, with the same signatures.

Three roles: the oracle the tests compare the kernels with, the baseline the benchmarks measure against, and the
fallback :mod:`cynet.ops` uses for floating dtypes the kernels are not compiled for (float16, longdouble).

Written for clarity and numerical care, not speed: each function is the textbook formula in the input's dtype, in
the form that stays accurate at the extremes (a sigmoid that never overflows, ``expm1`` near zero, ``erfc`` in the
left tail of GELU). Validation is :mod:`cynet.ops`' job; these functions assume well-formed floating arrays.
"""
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
    alpha_arr = np.asarray(alpha, dtype=x.dtype)
    a = _prelu_alpha_view(x, alpha_arr)
    dx = _store(np.where(x > 0, dout, a * dout), out)
    # dalpha = sum of dout * min(x, 0): zero where x > 0, NaN where dout or x is NaN.
    contribution = dout.astype(np.float64) * np.minimum(x, 0).astype(np.float64)
    if alpha_arr.size == 1:
        dalpha = np.asarray(contribution.sum()).reshape(alpha_arr.shape)
    else:
        axes = (0,) + tuple(range(2, x.ndim))
        dalpha = contribution.sum(axis=axes).reshape(alpha_arr.shape)
    dalpha = _store(dalpha.astype(x.dtype), alpha_grad_out)
    return dx, dalpha


# --- exponential linear units ----------------------------------------------------------------------------------------
def elu_forward(x, alpha=1.0, *, out=None):
    a = _scalar(alpha, x.dtype)
    return _store(np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))), out)


def elu_backward(dout, y, alpha=1.0, *, out=None):
    a = _scalar(alpha, y.dtype)
    return _store(np.where(y > 0, dout, dout * (y + a)), out)


def selu_forward(x, *, out=None):
    scale = _scalar(SELU_SCALE, x.dtype)
    scale_alpha = _scalar(SELU_SCALE * SELU_ALPHA, x.dtype)
    return _store(np.where(x > 0, scale * x, scale_alpha * np.expm1(np.minimum(x, 0))), out)


def selu_backward(dout, y, *, out=None):
    scale = _scalar(SELU_SCALE, y.dtype)
    scale_alpha = _scalar(SELU_SCALE * SELU_ALPHA, y.dtype)
    return _store(np.where(y > 0, scale * dout, dout * (y + scale_alpha)), out)


# --- GELU and SiLU ---------------------------------------------------------------------------------------------------
def _gelu_check(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_forward(x, approximate="none", *, out=None):
    _gelu_check(approximate)
    xd = x.astype(np.float64)
    if approximate == "none":
        y = 0.5 * xd * _erfc(-xd / math.sqrt(2.0))  # x * Phi(x)
    else:
        u = _SQRT_2_OVER_PI * (xd + _GELU_TANH_CUBIC * xd ** 3)
        y = xd * _stable_sigmoid(2 * u)  # 0.5 x (1 + tanh u) == x sigmoid(2u)
    return _store(y.astype(x.dtype), out)


def gelu_backward(dout, x, approximate="none", *, out=None):
    _gelu_check(approximate)
    xd = x.astype(np.float64)
    if approximate == "none":
        cdf = 0.5 * _erfc(-xd / math.sqrt(2.0))
        pdf = np.exp(-0.5 * xd * xd) / math.sqrt(2.0 * math.pi)
        grad = cdf + xd * pdf
    else:
        s = _stable_sigmoid(2 * _SQRT_2_OVER_PI * (xd + _GELU_TANH_CUBIC * xd ** 3))
        grad = s + xd * s * (1 - s) * 2 * _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_CUBIC * xd * xd)
    return _store((dout * grad.astype(x.dtype)).astype(x.dtype), out)


def silu_forward(x, *, out=None):
    s = _stable_sigmoid(x)
    with np.errstate(invalid="ignore"):
        y = np.where(s == 0, x.dtype.type(-0.0), x * s)  # -0 where sigmoid underflows: the limit at -inf
    return _store(y, out)


def silu_backward(dout, x, *, out=None):
    s = _stable_sigmoid(x)
    return _store(dout * (s * (1 + x * (1 - s))), out)


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
