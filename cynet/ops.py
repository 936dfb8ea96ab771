"""Stateless array ops over cynet's Cython kernels: one plain function per forward and per backward.

Every function validates its arrays (floating dtype, agreeing shapes and dtypes, a usable ``out=``), allocates the
output when none is given, resolves the thread count (:func:`cynet.kernel_threads`) and calls the kernel with the
GIL released. float32 and float64 run the compiled kernels; other floating dtypes (float16, longdouble) fall back to
:mod:`cynet.reference`, which has the same signatures, after the same checks (``out=`` included). Inputs may be
non-contiguous (copied once) or read-only; ``out`` may be the input itself for an in-place update. Scalar parameters
(Leaky ReLU's ``negative_slope``, ELU's ``alpha``) are real numbers, not bools, finite in the input's dtype.

Each backward takes the cheapest tensor saved by the forward:

=========================  ================  ==========================================
op                         backward needs    derivative
=========================  ================  ==========================================
sigmoid                    output y          y (1 - y)
tanh                       output y          1 - y^2
relu                       output y (or x)   1[y > 0]
leaky_relu                 input x           1 if x > 0 else negative_slope
prelu                      input x           as leaky_relu per channel; dalpha = sum dout*x over x <= 0
elu                        output y          1 if y > 0 else y + alpha
selu                       output y          lambda if y > 0 else y + lambda*alpha
gelu                       input x           Phi(x) + x phi(x)   (or its tanh-form counterpart)
silu                       input x           s (1 + x (1 - s)),  s = sigmoid(x)
maxout                     winning indices   1 for the winning piece, 0 for the others
=========================  ================  ==========================================
"""
import math
import numbers

import numpy as np

from cynet import reference
from cynet._kernels import load as _load_kernels
from cynet._threading import NS_EXP, NS_GELU, NS_PRELU_BACKWARD, NS_STREAM, kernel_threads, stream_stores
from cynet._validation import (KERNEL_DTYPES, apart_from, as_float_array, describe, output, refuse_masked,
                               same_layout, separate_outputs)

__all__ = list(reference.__all__)

_act = _load_kernels("activations")
_maxout = _load_kernels("maxout")
_A = _act.Activation

SELU_SCALE = reference.SELU_SCALE
SELU_ALPHA = reference.SELU_ALPHA

# PReLU's dalpha is summed over this many fixed chunks of the leading axis (at most), whatever the thread count.
_PRELU_REDUCTION_CHUNKS = 64
# In the (M, C) layout each chunk owns a float64 row of C partial sums that it zeroes, updates once per row and that
# is finally added to the others: chunks of at least this many rows keep that under a tenth of the data moved
# ((256, 4096) float32, 2 threads: 0.60 ms with 64 chunks of 4 rows, 0.34 ms with 16 of 16).
_PRELU_ROWS_PER_CHUNK = 16


def _ns_per_element(code, backward):
    """Cost class of an elementwise kernel for kernel_threads: the forwards that evaluate exp/expm1/tanh and the
    backwards that evaluate the function again from x; the rest only stream memory."""
    if code in (_A.GELU_ERF, _A.GELU_TANH):
        return NS_GELU
    if code == _A.SILU or (not backward and code in (_A.SIGMOID, _A.TANH, _A.ELU, _A.SELU)):
        return NS_EXP
    return NS_STREAM


# _ns_per_element of every code, indexed by the code (activations.pyx numbers them 0, 1, ...): an op's call pays an
# index, not the enum's comparisons (0.8 us a call).
_NS_FORWARD = tuple(_ns_per_element(code, False) for code in sorted(_A))
_NS_BACKWARD = tuple(_ns_per_element(code, True) for code in sorted(_A))


def _streams(ns_per_element, out):
    """Non-temporal stores for a large output of a kernel that only streams memory (measured, (4096, 4096) float32,
    two threads: ReLU forward 6.9 -> 5.7 ms, ReLU backward 9.3 -> 8.3 ms); the kernels that evaluate exp or erf were
    3-10 % slower through the store buffer, so they keep plain stores."""
    return ns_per_element == NS_STREAM and stream_stores(out.nbytes)


def _forward(op, code, x, out, param, fallback, parameter=None):
    """y = f(x) by the kernel, or by ``fallback(x, y, param)`` (the reference) for the other floating dtypes; out= is
    checked first either way. ``parameter(op, param, dtype)``, if given, checks the op's scalar parameter for x's
    dtype and returns it as the kernel or the reference takes it."""
    x = as_float_array(op, "x", x)
    y = output(op, out, x.shape, x.dtype)
    (x,) = apart_from(y, x)
    if parameter is not None:
        param = parameter(op, param, x.dtype)
    if x.dtype not in KERNEL_DTYPES:
        return fallback(x, y, param)
    ns = _NS_FORWARD[code]
    _act.elementwise_forward(code, x.reshape(-1), y.reshape(-1), float(param), _streams(ns, y),
                             kernel_threads(x.size, ns))
    return y


def _backward(op, code, dout, saved, saved_name, out, param, fallback, parameter=None):
    """dx by the kernel, or by ``fallback(dout, saved, dx, param)``; as :func:`_forward`."""
    dout = as_float_array(op, "dout", dout)
    saved = as_float_array(op, saved_name, saved)
    same_layout(op, ("dout", saved_name), (dout, saved))
    dx = output(op, out, dout.shape, dout.dtype)
    dout, saved = apart_from(dx, dout, saved)
    if parameter is not None:
        param = parameter(op, param, dout.dtype)
    if dout.dtype not in KERNEL_DTYPES:
        return fallback(dout, saved, dx, param)
    ns = _NS_BACKWARD[code]
    _act.elementwise_backward(code, dout.reshape(-1), saved.reshape(-1), dx.reshape(-1), float(param),
                              _streams(ns, dx), kernel_threads(dout.size, ns))
    return dx


def _real_number(op, name, value):
    """``value`` if it is a real number and not a bool (``True`` as a slope is a mistake); a TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number{', not a bool' if isinstance(value, bool) else ''}, "
                        f"got {value!r}")
    return value


def _as_float_or_inf(value):
    """``float(value)``, or inf for an int beyond float64's range (float() raises OverflowError there)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


# A float64 at least this large in magnitude rounds to inf in the kernel's dtype (float32: its largest value plus half
# an ulp, which rounds to even, i.e. up); the kernels take the parameter as a double and round it to their dtype.
_ROUNDS_TO_INF = {np.dtype(np.float32): 2.0 ** 128 - 2.0 ** 103, np.dtype(np.float64): math.inf}


def _finite_in(op, name, value, dtype):
    """The real number ``value`` (see _real_number) as the kernels (a float) or the reference (a scalar of ``dtype``)
    take it for an input of ``dtype``; a ValueError unless it is finite there: NaN, inf, and a finite value that
    becomes inf in ``dtype`` (1e39 for float32, 1e5 for float16), which would turn 0 * slope into NaN."""
    limit = _ROUNDS_TO_INF.get(dtype)
    if limit is not None:
        as_float = _as_float_or_inf(value)
        if abs(as_float) < limit:
            return as_float
    else:
        try:
            with np.errstate(over="ignore"):
                in_dtype = dtype.type(value)
        except (OverflowError, ValueError):  # an int of more than 4300 digits (NumPy converts ints via str)
            in_dtype = dtype.type(math.inf)
        if np.isfinite(in_dtype):
            return in_dtype
    try:
        finite = isinstance(value, numbers.Integral) or bool(np.isfinite(np.longdouble(value)))
    except (TypeError, ValueError, OverflowError):
        finite = True
    if finite:
        raise ValueError(f"{op}: {name} must be finite in {dtype}, the input's dtype (largest value "
                         f"{np.finfo(dtype).max!s}), got {_shown(value)}")
    raise ValueError(f"{op}: {name} must be finite, got {value!s}")


def _shown(value):
    """``str(value)``, or a description of an int too long to show (10**5000 cannot even be printed)."""
    if isinstance(value, numbers.Integral) and abs(value) > 10 ** 30:
        return f"an int of {int(value).bit_length()} bits"
    return str(value)


def _finite_number(op, name, value):
    """``float(value)`` for a real number (not a bool) finite in float64: the check where no input dtype is known yet
    (the layers' constructors); the ops check their parameters again for the input's dtype (:func:`_finite_in`)."""
    _real_number(op, name, value)
    as_float = _as_float_or_inf(value)
    if not math.isfinite(as_float):
        raise ValueError(f"{op}: {name} must be finite, got {_shown(value)}")
    return as_float


def _slope(op, value, dtype):
    return _finite_in(op, "negative_slope", value, dtype)


# --- sigmoid / tanh --------------------------------------------------------------------------------------------------
def sigmoid_forward(x, *, out=None):
    r"""Logistic sigmoid, :math:`y = \sigma(x) = 1 / (1 + e^{-x})`, never overflowing for large :math:`|x|`.

    Args:
        x (array_like): input, float32 or float64 (other floating dtypes use the NumPy reference).
        out (ndarray, optional): receives y; same shape and dtype as x, C-contiguous; may be x itself.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.sigmoid_forward(np.array([0.0, 2.0], np.float32)).round(6)   # within 3 ulp of 1 / (1 + e^-x)
        array([0.5     , 0.880797], dtype=float32)
    """
    return _forward("sigmoid_forward", _A.SIGMOID, x, out, 0.0,
                    lambda x, out, _: reference.sigmoid_forward(x, out=out))


def sigmoid_backward(dout, y, *, out=None):
    r"""Gradient of the sigmoid from its output: :math:`dx = dout \cdot y (1 - y)`.

    Args:
        dout (array_like): gradient of the loss with respect to y.
        y (array_like): the forward's output, same shape and dtype as dout.
        out (ndarray, optional): receives dx.

    Shape: dout, y and dx share one shape.
    """
    return _backward("sigmoid_backward", _A.SIGMOID, dout, y, "y", out, 0.0,
                     lambda dout, y, out, _: reference.sigmoid_backward(dout, y, out=out))


def tanh_forward(x, *, out=None):
    r"""Hyperbolic tangent, :math:`y = \tanh x`, accurate near 0 and exactly :math:`\pm 1` for large :math:`|x|`.

    Args:
        x (array_like): input, float32 or float64.
        out (ndarray, optional): receives y.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.tanh_forward(np.array([0.0, 100.0]))
        array([0., 1.])
    """
    return _forward("tanh_forward", _A.TANH, x, out, 0.0, lambda x, out, _: reference.tanh_forward(x, out=out))


def tanh_backward(dout, y, *, out=None):
    r"""Gradient of tanh from its output: :math:`dx = dout \cdot (1 - y^2)`.

    Shape: dout, y and dx share one shape.
    """
    return _backward("tanh_backward", _A.TANH, dout, y, "y", out, 0.0,
                     lambda dout, y, out, _: reference.tanh_backward(dout, y, out=out))


# --- ReLU family -----------------------------------------------------------------------------------------------------
def relu_forward(x, *, out=None):
    r"""Rectified linear unit, :math:`y = \max(x, 0)` (NaN propagates).

    Args:
        x (array_like): input, float32 or float64.
        out (ndarray, optional): receives y; may be x for an in-place ReLU.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.relu_forward(np.array([-1.0, 2.0], np.float32))
        array([0., 2.], dtype=float32)
    """
    return _forward("relu_forward", _A.RELU, x, out, 0.0, lambda x, out, _: reference.relu_forward(x, out=out))


def relu_backward(dout, y, *, out=None):
    r"""Gradient of ReLU: :math:`dx = dout \cdot 1[y > 0]`. Since :math:`y > 0 \iff x > 0`, the input works too.

    Shape: dout, y and dx share one shape.
    """
    return _backward("relu_backward", _A.RELU, dout, y, "y", out, 0.0,
                     lambda dout, y, out, _: reference.relu_backward(dout, y, out=out))


def leaky_relu_forward(x, negative_slope=0.01, *, out=None):
    r"""Leaky ReLU, :math:`y = x` if :math:`x > 0` else :math:`\text{negative\_slope} \cdot x`.

    Args:
        x (array_like): input, float32 or float64.
        negative_slope (float): slope for negative inputs, finite in x's dtype (not a bool). Default: 0.01.
        out (ndarray, optional): receives y.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.leaky_relu_forward(np.array([-2.0, 3.0]), negative_slope=0.1)
        array([-0.2,  3. ])
    """
    slope = _real_number("leaky_relu_forward", "negative_slope", negative_slope)
    return _forward("leaky_relu_forward", _A.LEAKY_RELU, x, out, slope,
                    lambda x, out, slope: reference.leaky_relu_forward(x, slope, out=out), _slope)


def leaky_relu_backward(dout, x, negative_slope=0.01, *, out=None):
    r"""Gradient of Leaky ReLU from its input: :math:`dx = dout` if :math:`x > 0` else
    :math:`\text{negative\_slope} \cdot dout`.

    Shape: dout, x and dx share one shape.
    """
    slope = _real_number("leaky_relu_backward", "negative_slope", negative_slope)
    return _backward("leaky_relu_backward", _A.LEAKY_RELU, dout, x, "x", out, slope,
                     lambda dout, x, out, slope: reference.leaky_relu_backward(dout, x, slope, out=out), _slope)


# --- PReLU -----------------------------------------------------------------------------------------------------------
def _prelu_inputs(op, x, alpha):
    """Validate PReLU's x and alpha; return x, alpha (as x's dtype, contiguous, 1-D) and the kernel layout."""
    x = as_float_array(op, "x", x)
    refuse_masked(op, "alpha", alpha)
    alpha_in = np.asarray(alpha)
    if alpha_in.dtype.kind != "f":
        raise TypeError(f"{op}: alpha must be floating-point, got {describe(alpha_in)}")
    alpha_flat = _alpha_in_dtype(op, alpha_in, x.dtype)
    if alpha_flat.size == 1:
        layout = "shared"
    elif x.ndim >= 2 and alpha_flat.size == x.shape[1]:
        layout = "rows" if x.ndim == 2 else "planes"
    else:
        raise ValueError(f"{op}: alpha must hold 1 value (shared) or one per channel of axis 1 of x; got alpha of "
                         f"shape {tuple(alpha_in.shape)} for x of shape {tuple(x.shape)}")
    return x, alpha_in, alpha_flat, layout


def _alpha_in_dtype(op, alpha_in, dtype):
    """PReLU's alpha as a contiguous 1-D array of x's ``dtype``; a ValueError where the cast would turn a finite
    value into inf (1e39 for float32). (NaN and inf given as alpha propagate as the formula says.)"""
    if alpha_in.dtype.itemsize > dtype.itemsize:  # a narrowing cast
        limit = _ROUNDS_TO_INF.get(dtype)
        # one value for a kernel dtype, the usual case (a Python float for float32 x), checked in 0.1 us
        if limit is None or alpha_in.size != 1 or not abs(float(alpha_in.item())) < limit:
            with np.errstate(over="ignore"):
                alpha_flat = np.ascontiguousarray(alpha_in, dtype=dtype).reshape(-1)
            overflowed = np.isinf(alpha_flat) & np.isfinite(alpha_in.reshape(-1))
            if overflowed.any():
                raise ValueError(f"{op}: alpha must be finite in {dtype}, x's dtype (largest value "
                                 f"{np.finfo(dtype).max!s}), got {alpha_in.reshape(-1)[overflowed][0]!s} in a "
                                 f"{describe(alpha_in)}")
            return alpha_flat
    return np.ascontiguousarray(alpha_in, dtype=dtype).reshape(-1)


def _prelu_planes_view(a, layout):
    """(P, C, S) view of x-shaped ``a``: the channel axis in the middle (C = 1 for a shared alpha)."""
    if layout == "shared":
        lead = a.shape[0] if a.ndim >= 1 and a.shape[0] > 0 else 1
        return a.reshape(lead, 1, -1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def prelu_forward(x, alpha, *, out=None):
    r"""Parametric ReLU (He et al., 2015): :math:`y = x` if :math:`x > 0` else :math:`\alpha_c x`.

    Args:
        x (array_like): input, float32 or float64.
        alpha (array_like): one slope shared by all elements (shape () or (1,)), or one per channel of axis 1
            (shape (C,) with C = x.shape[1]); floating, cast to x's dtype (a finite value that would become inf
            there is a ValueError).
        out (ndarray, optional): receives y.

    Shape: x is (N, C, *) for per-channel slopes, anything for a shared one; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> x = np.array([[-1.0, -1.0], [2.0, -4.0]], np.float32)
        >>> cynet.ops.prelu_forward(x, np.array([0.25, 0.5], np.float32))
        array([[-0.25, -0.5 ],
               [ 2.  , -2.  ]], dtype=float32)
    """
    op = "prelu_forward"
    x, _, alpha_flat, layout = _prelu_inputs(op, x, alpha)
    y = output(op, out, x.shape, x.dtype)
    x, alpha_flat = apart_from(y, x, alpha_flat)
    if x.dtype not in KERNEL_DTYPES:
        return reference.prelu_forward(x, alpha_flat, out=y)
    if x.size:
        if layout == "rows":
            _act.prelu_forward_rows(x, alpha_flat, y, stream_stores(y.nbytes), kernel_threads(x.size))
        else:
            _act.prelu_forward_planes(_prelu_planes_view(x, layout), alpha_flat, _prelu_planes_view(y, layout),
                                      stream_stores(y.nbytes), kernel_threads(x.size))
    return y


def prelu_backward(dout, x, alpha, *, out=None, alpha_grad_out=None):
    r"""Gradients of PReLU: :math:`dx = dout` if :math:`x > 0` else :math:`\alpha_c \, dout`, and
    :math:`d\alpha_c = \sum_{i \in c} dout_i \min(x_i, 0)`.

    dalpha is accumulated in float64 over fixed chunks added in a fixed order: bit-identical for any thread count.

    Args:
        dout (array_like): gradient with respect to y.
        x (array_like): the forward's input.
        alpha (array_like): the slopes used in the forward.
        out (ndarray, optional): receives dx.
        alpha_grad_out (ndarray, optional): receives dalpha (alpha's shape, x's dtype).

    Returns:
        (dx, dalpha): dx has x's shape, dalpha has alpha's shape.
    """
    op = "prelu_backward"
    x, alpha_in, alpha_flat, layout = _prelu_inputs(op, x, alpha)
    dout = as_float_array(op, "dout", dout)
    same_layout(op, ("dout", "x"), (dout, x))
    dx = output(op, out, x.shape, x.dtype)
    dalpha = output(op, alpha_grad_out, alpha_in.shape, x.dtype, name="alpha_grad_out")
    separate_outputs(op, dx, dalpha, ("out", "alpha_grad_out"))
    dout, x, alpha_flat = apart_from(dx, dout, x, alpha_flat)
    if x.dtype not in KERNEL_DTYPES:
        return reference.prelu_backward(dout, x, alpha_flat.reshape(alpha_in.shape), out=dx, alpha_grad_out=dalpha)
    dalpha_flat = dalpha.reshape(-1)
    if x.size == 0:
        dalpha_flat[...] = 0
        return dx, dalpha
    if layout == "rows":
        views = (dout, x, dx)
    else:
        views = tuple(_prelu_planes_view(a, layout) for a in (dout, x, dx))
    leading = views[1].shape[0]
    if layout == "rows":
        chunks = min(max(1, leading // _PRELU_ROWS_PER_CHUNK), _PRELU_REDUCTION_CHUNKS)
    else:
        chunks = min(leading, _PRELU_REDUCTION_CHUNKS)
    partials = np.empty((chunks, alpha_flat.size), dtype=np.float64)
    if layout == "rows":
        _act.prelu_backward_rows(*views[:2], alpha_flat, views[2], partials, dalpha_flat, stream_stores(dx.nbytes),
                                 kernel_threads(x.size, NS_PRELU_BACKWARD))
    else:
        _act.prelu_backward_planes(*views[:2], alpha_flat, views[2], partials, dalpha_flat,
                                   kernel_threads(x.size, NS_PRELU_BACKWARD))
    return dx, dalpha


# --- exponential linear units ----------------------------------------------------------------------------------------
def _elu_alpha(op, alpha, dtype=None):
    """ELU's alpha, finite and >= 0: as a float (:func:`_finite_number`) when no input dtype is given (nn.ELU's
    constructor), else as the kernel or the reference takes it for an input of ``dtype`` (:func:`_finite_in`)."""
    value = _finite_number(op, "alpha", alpha) if dtype is None else _finite_in(op, "alpha", alpha, dtype)
    if alpha < 0:  # the value given: -1e-300 is refused although it rounds to -0 in float32
        raise ValueError(f"{op}: alpha must be >= 0 (the backward reads the sign of the output), got {alpha!s}")
    return value


def elu_forward(x, alpha=1.0, *, out=None):
    r"""Exponential linear unit (Clevert et al., 2015): :math:`y = x` if :math:`x > 0` else
    :math:`\alpha (e^x - 1)`, with :math:`e^x - 1` evaluated without cancellation near 0.

    Args:
        x (array_like): input, float32 or float64.
        alpha (float): saturation value for negative inputs, >= 0 and finite in x's dtype. Default: 1.0.
        out (ndarray, optional): receives y.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.elu_forward(np.array([-50.0, 1.5]))
        array([-1. ,  1.5])
    """
    alpha = _real_number("elu_forward", "alpha", alpha)
    return _forward("elu_forward", _A.ELU, x, out, alpha,
                    lambda x, out, alpha: reference.elu_forward(x, alpha, out=out), _elu_alpha)


def elu_backward(dout, y, alpha=1.0, *, out=None):
    r"""Gradient of ELU from its output: :math:`dx = dout` if :math:`y > 0` else :math:`dout \cdot (y + \alpha)`.

    Shape: dout, y and dx share one shape.
    """
    alpha = _real_number("elu_backward", "alpha", alpha)
    return _backward("elu_backward", _A.ELU, dout, y, "y", out, alpha,
                     lambda dout, y, out, alpha: reference.elu_backward(dout, y, alpha, out=out), _elu_alpha)


def selu_forward(x, *, out=None):
    r"""Scaled ELU (Klambauer et al., 2017): :math:`y = \lambda x` if :math:`x > 0` else
    :math:`\lambda \alpha (e^x - 1)`, with :math:`\lambda \approx 1.0507`, :math:`\alpha \approx 1.6733`.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.selu_forward(np.array([1.0]))
        array([1.05070099])
    """
    return _forward("selu_forward", _A.SELU, x, out, 0.0, lambda x, out, _: reference.selu_forward(x, out=out))


def selu_backward(dout, y, *, out=None):
    r"""Gradient of SELU from its output: :math:`dx = \lambda\,dout` if :math:`y > 0` else
    :math:`dout \cdot (y + \lambda \alpha)`.

    Shape: dout, y and dx share one shape.
    """
    return _backward("selu_backward", _A.SELU, dout, y, "y", out, 0.0,
                     lambda dout, y, out, _: reference.selu_backward(dout, y, out=out))


# --- GELU and SiLU ---------------------------------------------------------------------------------------------------
def _gelu_code(op, approximate):
    if approximate == "none":
        return _A.GELU_ERF
    if approximate == "tanh":
        return _A.GELU_TANH
    raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_forward(x, approximate="none", *, out=None):
    r"""Gaussian error linear unit (Hendrycks & Gimpel, 2016).

    .. math::
        \text{none:}\quad y = x\,\Phi(x) = \tfrac12 x \,\operatorname{erfc}(-x/\sqrt2) \qquad
        \text{tanh:}\quad y = \tfrac12 x \left(1 + \tanh\!\big(\sqrt{2/\pi}\,(x + 0.044715 x^3)\big)\right)

    Args:
        x (array_like): input, float32 or float64. Other floating dtypes use the NumPy reference, which evaluates
            GELU in float64 and rounds once for float16, and in long double for long double (see
            :mod:`cynet.reference`).
        approximate (str): ``'none'`` (exact, erf form) or ``'tanh'``. Default: ``'none'``.
        out (ndarray, optional): receives y.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.gelu_forward(np.array([0.0, 1.0]))
        array([0.        , 0.84134475])
    """
    code = _gelu_code("gelu_forward", approximate)
    return _forward("gelu_forward", code, x, out, 0.0,
                    lambda x, out, _: reference.gelu_forward(x, approximate, out=out))


def gelu_backward(dout, x, approximate="none", *, out=None):
    r"""Gradient of GELU from its input: :math:`dx = dout \cdot (\Phi(x) + x \varphi(x))` (erf form), or the
    derivative of the tanh form.

    Shape: dout, x and dx share one shape.
    """
    code = _gelu_code("gelu_backward", approximate)
    return _backward("gelu_backward", code, dout, x, "x", out, 0.0,
                     lambda dout, x, out, _: reference.gelu_backward(dout, x, approximate, out=out))


def silu_forward(x, *, out=None):
    r"""SiLU / Swish (Ramachandran et al., 2017; Elfwing et al., 2018): :math:`y = x\,\sigma(x)`.

    Accuracy: float32 within 4 ulp of the float64 result for :math:`|x| \le 10` (3.65 at most), and a few ulp down
    to :math:`x \approx -87`; below that :math:`\sigma(x) \approx e^x` is itself subnormal and the product keeps
    only its absolute accuracy (x = -90: 6 ulp; x = -100, a subnormal result: 45 of its ulp; from x = -104 on -0.0,
    where the exact result, -7e-44 at -104, is a few steps of the smallest subnormal from 0). float64 likewise below
    x = -708.

    Shape: any; y has x's shape.

    Example:
        >>> import numpy as np, cynet
        >>> cynet.ops.silu_forward(np.array([0.0, 1.0]))
        array([0.        , 0.73105858])
    """
    return _forward("silu_forward", _A.SILU, x, out, 0.0, lambda x, out, _: reference.silu_forward(x, out=out))


def silu_backward(dout, x, *, out=None):
    r"""Gradient of SiLU from its input: :math:`dx = dout \cdot \sigma(x) (1 + x (1 - \sigma(x)))`.

    Shape: dout, x and dx share one shape.
    """
    return _backward("silu_backward", _A.SILU, dout, x, "x", out, 0.0,
                     lambda dout, x, out, _: reference.silu_backward(dout, x, out=out))


# --- Maxout ----------------------------------------------------------------------------------------------------------
def _maxout_pieces(op, pieces):
    if isinstance(pieces, bool) or not isinstance(pieces, (int, np.integer)):
        raise TypeError(f"{op}: pieces must be an int, got {pieces!r}")
    if pieces < 1:
        raise ValueError(f"{op}: pieces must be >= 1, got {pieces}")
    return int(pieces)


def maxout_forward(x, pieces, *, out=None, indices_out=None):
    r"""Maxout (Goodfellow et al., 2013): each of D units outputs the largest of its k pieces.

    .. math:: y_{m,j} = \max_{p < k} x_{m,\,p D + j}

    Piece layout (piece-major): along the last axis, x holds k blocks of D values; block p is piece p of every unit.
    A linear layer feeding maxout orders its k*D output columns the same way. Ties go to the lowest piece index; a
    NaN piece wins (NaN propagates), as ``np.argmax`` would choose.

    Args:
        x (array_like): input, float32 or float64, last axis of length D*k.
        pieces (int): k, the pieces per unit.
        out (ndarray, optional): receives y.
        indices_out (ndarray, optional): receives the winning piece indices (int32).

    Shape: x (*, D*k) -> y (*, D) and indices (*, D), int32 in [0, k).

    Returns:
        (y, indices)

    Example:
        >>> import numpy as np, cynet
        >>> y, idx = cynet.ops.maxout_forward(np.array([[1.0, 5.0, 3.0, 2.0]], np.float32), pieces=2)
        >>> y, idx
        (array([[3., 5.]], dtype=float32), array([[1, 0]], dtype=int32))
    """
    op = "maxout_forward"
    k = _maxout_pieces(op, pieces)
    x = as_float_array(op, "x", x)
    if x.ndim == 0 or x.shape[-1] % k:
        raise ValueError(f"{op}: the last axis of x must hold D*pieces values; got x of shape {tuple(x.shape)} "
                         f"with pieces={k}")
    units = x.shape[-1] // k
    out_shape = x.shape[:-1] + (units,)
    y = output(op, out, out_shape, x.dtype)
    indices = output(op, indices_out, out_shape, np.dtype(np.int32), name="indices_out")
    separate_outputs(op, y, indices, ("out", "indices_out"))
    (x,) = apart_from(y, x)
    (x,) = apart_from(indices, x)
    if x.dtype not in KERNEL_DTYPES:
        return reference.maxout_forward(x, k, out=y, indices_out=indices)
    if x.size:
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        _maxout.maxout_forward(x.reshape(rows, k, units), y.reshape(rows, units), indices.reshape(rows, units),
                               stream_stores(y.nbytes + indices.nbytes), kernel_threads(x.size))
    return y, indices


def maxout_backward(dout, indices, pieces, *, out=None):
    r"""Gradient of maxout: the gradient reaches only the winning piece of each unit,
    :math:`dx_{m,\,pD+j} = dout_{m,j}` if :math:`p = \text{indices}_{m,j}` else 0.

    Args:
        dout (array_like): gradient with respect to y, shape (*, D).
        indices (array_like): the forward's winning indices, integer, dout's shape, values in [0, pieces).
        pieces (int): k.
        out (ndarray, optional): receives dx.

    Raises:
        ValueError: an index outside [0, pieces). int32 indices are checked by the kernel as it reads them, so `out`
            may then already hold part of a result.

    Shape: dout (*, D), indices (*, D) -> dx (*, D*k).
    """
    op = "maxout_backward"
    k = _maxout_pieces(op, pieces)
    dout = as_float_array(op, "dout", dout)
    refuse_masked(op, "indices", indices)
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array, got {describe(indices)}")
    if indices.shape != dout.shape:
        raise ValueError(f"{op}: dout and indices must have the same shape, got {describe(dout)} and "
                         f"{describe(indices)}")
    if dout.ndim == 0:
        raise ValueError(f"{op}: dout must have at least one axis, got {describe(dout)}")
    out_shape = dout.shape[:-1] + (dout.shape[-1] * k,)
    # int32 indices (maxout_forward's) are range-checked by the kernel, row by row as it reads them; any other type is
    # checked here, before the conversion to int32 could wrap a value into range.
    if (indices.dtype != np.int32 or dout.dtype not in KERNEL_DTYPES) and indices.size:
        _check_maxout_indices(op, indices, k)
    dx = output(op, out, out_shape, dout.dtype)
    dout, indices = apart_from(dx, dout, indices)
    if dout.dtype not in KERNEL_DTYPES:
        return reference.maxout_backward(dout, indices, k, out=dx)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    if dx.size:
        units = dout.shape[-1]
        rows = int(np.prod(dout.shape[:-1], dtype=np.int64))
        out_of_range = _maxout.maxout_backward(dout.reshape(rows, units), indices.reshape(rows, units),
                                               dx.reshape(rows, k, units), stream_stores(dx.nbytes),
                                               kernel_threads(dx.size))
        if out_of_range:
            _check_maxout_indices(op, indices, k)
    return dx


def _check_maxout_indices(op, indices, k):
    if indices.min() < 0 or indices.max() >= k:
        raise ValueError(f"{op}: indices must lie in [0, {k}), got values in [{indices.min()}, {indices.max()}]")
