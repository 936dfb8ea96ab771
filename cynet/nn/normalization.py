r"""Normalisation layers over fused Cython kernels: BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm, and the batch-norm
tools :func:`recompute_batchnorm_statistics` and :func:`fold_batchnorm`.

Every layer computes :math:`\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}` and :math:`y = \gamma \hat x + \beta`; they
differ in the axes :math:`\mu` and :math:`\sigma^2` (biased) are taken over. The kernels (``cynet._kernels``'s
``normalization`` family) do the statistics in one pass of shifted float64 sums and write y in a second pass; they
save only the per-feature mean and inverse standard deviation (not :math:`\hat x`). The backward uses the compact form

.. math:: dx = \frac{\gamma\, r}{n}\Big(n\, dout - \sum dout - \hat x \sum dout\,\hat x\Big), \quad
          d\gamma = \sum dout\,\hat x, \quad d\beta = \sum dout,

(:math:`r = 1/\sqrt{\sigma^2+\epsilon}`, sums over the n values sharing a statistic): one pass for the two sums, one
for dx. Results do not depend on the thread count.

The array functions (``batch_norm_forward``, ``batch_norm_backward``, ``channel_affine``, ``row_norm_forward``,
``row_norm_backward``) validate, allocate and call the kernels: a wrong argument is a TypeError or ValueError naming
the function and the shapes. The modules own parameters, buffers and caches, and call the functions' unchecked twins
(their inputs checked on entry, their parameter arrays on the way).
"""
import copy
import math
import numbers
import sys

import numpy as np

from cynet._kernels import load
from cynet._threading import NS_NORM, NS_NORM_FORWARD, kernel_threads, stream_stores
from cynet._validation import (KERNEL_DTYPES, apart_from, as_float_array, describe, dtype_remedy, float_dtype, native,
                               output, positive_int, same_layout)
from cynet.nn import _reuse as reuse
from cynet.nn.conv import Conv2d
from cynet.nn.layers import Linear
from cynet.nn.module import Module, Parameter, Sequential, _fusable
from cynet.nn.residual import Residual

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "recompute_batchnorm_statistics",
           "fold_batchnorm", "batch_norm_forward", "batch_norm_backward", "channel_affine", "row_norm_forward",
           "row_norm_backward"]

# Row chunks of LayerNorm/GroupNorm's backward reduction (dgamma, dbeta): a function of the shape only.
_ROW_CHUNKS = 16
_ROW_CHUNK_MIN_ELEMENTS = 32768
_FLOAT64 = np.dtype(np.float64)


def _kernels():
    return load("normalization")


def _planes(x):
    """(N, C, *) as a (N, C, S) view (S = 1 for (N, C))."""
    n, c = x.shape[0], x.shape[1]
    if x.ndim == 2:
        return x.reshape(n, c, 1)
    return x.reshape(n, c, -1) if n and c else x.reshape(n, c, math.prod(x.shape[2:]))   # (-1: ambiguous when empty)


# --- argument checks of the array functions --------------------------------------------------------------------------
# The kernels take C-contiguous float32/float64 arrays of agreeing lengths and index them without bounds checks: every
# public array function checks its arguments first, so that a wrong one is a TypeError/ValueError naming the function
# and the shapes, never a read or write out of bounds. An argument that is already right is returned as it is after a
# few attribute reads; the conversions (lists, strided arrays: copied) and the error messages are off that path
# (_kernel_array, _vector_slow, _converted).

_ONLY_KERNEL_DTYPES = "float32 or float64 (the only dtypes of these kernel-level functions)"


def _channels_input(fn, x):
    """x of the batch-norm functions: (N, C) or (N, C, *), float32/float64, C-contiguous."""
    if type(x) is np.ndarray and x.ndim >= 2 and x.dtype in KERNEL_DTYPES and x.flags.c_contiguous:
        return x
    x = _kernel_array(fn, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must have shape (N, C) or (N, C, *), got {describe(x)}")
    return x


def _rows_input(fn, x3):
    """x3 of the row-norm functions: (M, Cg, S), float32/float64, C-contiguous."""
    if type(x3) is np.ndarray and x3.ndim == 3 and x3.dtype in KERNEL_DTYPES and x3.flags.c_contiguous:
        return x3
    x3 = _kernel_array(fn, "x3", x3)
    if x3.ndim != 3:
        raise ValueError(f"{fn}: x3 must have shape (M, Cg, S) (3-D), got {describe(x3)}")
    return x3


def _kernel_array(fn, name, a):
    """``a`` as a C-contiguous float32/float64 ndarray: a list, a strided array or another byte order is converted
    (copied, by as_float_array), any other dtype is a TypeError."""
    a = as_float_array(fn, name, a)
    if a.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{fn}: {name} must be {_ONLY_KERNEL_DTYPES}, got {describe(a)}")
    return a


def _vector(fn, name, v, n, dtype, what, ref):
    """``v`` as a C-contiguous 1-D array of ``n`` values of ``dtype``. ``what``: the values, for the error, with
    ``{ref}`` for the array the length comes from."""
    if type(v) is np.ndarray and v.dtype is dtype and v.shape == (n,) and v.flags.c_contiguous:
        return v
    return _vector_slow(fn, name, v, n, dtype, what, ref)


def _vector_slow(fn, name, v, n, dtype, what, ref):
    v = _converted(fn, name, v, dtype)
    if v.dtype != dtype:
        raise TypeError(f"{fn}: {name} must be a {np.dtype(dtype)} array ({what.format(ref=describe(ref))}), got "
                        f"{describe(v)}")
    if v.shape != (n,):
        raise ValueError(f"{fn}: {name} must have shape ({n},) ({what.format(ref=describe(ref))}), got "
                         f"{describe(v)}")
    return v


def _converted(fn, name, a, dtype):
    """``a`` as a C-contiguous floating ndarray; an array-like that is not an ndarray (a list: it has no dtype of its
    own) is converted to ``dtype`` when its values are real numbers."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
        if a.dtype.kind in "iuf":
            a = a.astype(dtype)
    return as_float_array(fn, name, a)


def _like(fn, name, a, ref, ref_name):
    """``a`` (dout) as a C-contiguous array of ``ref``'s shape and dtype."""
    if type(a) is np.ndarray and a.dtype is ref.dtype and a.shape == ref.shape and a.flags.c_contiguous:
        return a
    a = _converted(fn, name, a, ref.dtype)
    same_layout(fn, (ref_name, name), (ref, a))
    return a


def _eps(fn, eps):
    """eps as a float, finite and >= 0."""
    if type(eps) is float and 0.0 <= eps < math.inf:
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: eps must be a real number, got {eps!r}")
    value = float(eps)
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{fn}: eps must be finite and >= 0, got {eps!r}")
    return value


def _groups(fn, groups, x3, gamma):
    """groups (G) of the row-norm functions: a positive int dividing M (the rows are sample-major, row m normalised
    with gamma's values of group m % G), gamma of G * Cg values. Returns (G, gamma as a vector of x3's dtype)."""
    if type(groups) is not int or not 0 < groups <= sys.maxsize:
        groups = positive_int(fn, "groups", groups)
        if groups > sys.maxsize:
            raise ValueError(f"{fn}: groups must be at most {sys.maxsize}, got {groups}")
    M, Cg = x3.shape[0], x3.shape[1]
    if M % groups:
        raise ValueError(f"{fn}: groups ({groups}) must divide the rows of x3 (M = N * groups), got "
                         f"{describe(x3)}")
    n = groups * Cg
    if not (type(gamma) is np.ndarray and gamma.dtype is x3.dtype and gamma.shape == (n,) and gamma.flags.c_contiguous):
        gamma = _vector_slow(fn, "gamma", gamma, n, x3.dtype, f"groups * Cg = {groups} * {Cg} values for x3, a {{ref}}",
                             x3)
    return groups, gamma


# what the vectors hold, in the errors ({ref}: the array their length comes from)
_PER_CHANNEL = "one value per channel of x, a {ref}"
_PER_PARAMETER = "the layer's parameter size, flattened; input: a {ref}"
_STATS_PER_CHANNEL = "one per channel of x, a {ref}, as batch_norm_forward returns them"
_STATS_PER_ROW = "one per row of x3, a {ref}, as row_norm_forward returns them"


# --- array functions -------------------------------------------------------------------------------------------------
# Each public function checks its arguments and calls its unchecked twin (_bn_forward, ...), which allocates and runs
# the kernel. The modules call the twins directly: x, dout and the statistics they pass are theirs, checked when they
# came in or made by the kernels; only their parameter and buffer arrays, which a user may replace by hand, are checked
# on the way (_vector, a few attribute reads).
def batch_norm_forward(x, gamma, beta, eps, *, out=None, relu=False):
    r"""Training-mode batch norm of x (N, C) or (N, C, *) with batch statistics per channel.

    Returns ``(y, mean, var, inv_std)``: y like x (written into ``out`` when given); mean, biased var and
    :math:`1/\sqrt{var+\epsilon}` as float64 arrays of length C (NaN where x has no values). x is float32 or float64
    (a strided x is copied), gamma and beta of x's dtype and length C, eps finite and >= 0; anything else raises
    TypeError or ValueError. ``relu``: y = ReLU(batch norm) in the same pass, the values cynet's ReLU would give.
    """
    fn = "batch_norm_forward"
    x = _channels_input(fn, x)
    C = x.shape[1]
    gamma = _vector(fn, "gamma", gamma, C, x.dtype, _PER_CHANNEL, x)
    beta = _vector(fn, "beta", beta, C, x.dtype, _PER_CHANNEL, x)
    y = output(fn, out, x.shape, x.dtype)
    x, gamma, beta = apart_from(y, x, gamma, beta)
    return _bn_forward(x, gamma, beta, _eps(fn, eps), y, bool(relu))


def _bn_forward(x, gamma, beta, eps, y, relu):
    """batch_norm_forward on checked arguments, y the output."""
    k = _kernels()
    C = x.shape[1]
    mean = np.empty(C)
    var = np.empty(C)
    inv_std = np.empty(C)
    if x.size == 0:                                         # (the kernels return at once)
        mean[:] = var[:] = inv_std[:] = np.nan
    if x.ndim == 2:
        width, chunks = k.rows_plan(x.shape[0], C, x.itemsize)
        partials = np.empty((2 * max(chunks, 1), C))      # scratch: float64 sums, coefficients of the output pass
        coef = np.empty((3, C), x.dtype)
        k.bn_rows_forward(x, gamma, beta, eps, y, mean, var, inv_std, width, partials, coef,
                          stream_stores(y.nbytes), kernel_threads(x.size, NS_NORM_FORWARD), relu)
    else:
        planes, n_threads = _planes(x), kernel_threads(x.size, NS_NORM_FORWARD)
        k.bn_planes_forward(planes, gamma, beta, eps, _planes(y), mean, var, inv_std,
                            _plane_scratch(k, planes, n_threads), stream_stores(y.nbytes), n_threads, relu)
    return y, mean, var, inv_std


def _plane_scratch(k, planes, n_threads):
    """The planes kernels' per-thread float64 accumulators: (n_threads, 2 * block width), the width from the shape."""
    return np.empty((n_threads, 2 * k.plane_block_width(planes.shape[2])))


def batch_norm_backward(dout, x, gamma, mean, inv_std, *, input_grad=True, out=None, relu_beta=None):
    """Backward of :func:`batch_norm_forward`: ``(dx or None, dgamma, dbeta)``, the last two float64.

    dout has x's shape and dtype; gamma (and relu_beta) x's dtype and length C; mean and inv_std float64 of length C
    (as the forward returns them). dx is written into ``out`` when given. With ``input_grad=False`` the kernel runs
    only its reduction pass (dx is never written). ``relu_beta``: the forward ran with ``relu=True`` and this beta;
    dout is then the gradient of the ReLU's output, masked here as the ReLU's backward would mask it."""
    fn = "batch_norm_backward"
    x = _channels_input(fn, x)
    dout = _like(fn, "dout", dout, x, "x")
    C = x.shape[1]
    gamma = _vector(fn, "gamma", gamma, C, x.dtype, _PER_CHANNEL, x)
    mean = _vector(fn, "mean", mean, C, _FLOAT64, _STATS_PER_CHANNEL, x)
    inv_std = _vector(fn, "inv_std", inv_std, C, _FLOAT64, _STATS_PER_CHANNEL, x)
    if relu_beta is not None:
        relu_beta = _vector(fn, "relu_beta", relu_beta, C, x.dtype, _PER_CHANNEL, x)
    dx = output(fn, out, x.shape, x.dtype) if input_grad else None
    dout, x, gamma, mean, inv_std, relu_beta = apart_from(dx, dout, x, gamma, mean, inv_std, relu_beta)
    return _bn_backward(dout, x, gamma, mean, inv_std, dx, relu_beta)


def _bn_backward(dout, x, gamma, mean, inv_std, dx, relu_beta):
    """batch_norm_backward on checked arguments; ``dx`` the output, None for input_grad=False."""
    k = _kernels()
    C = x.shape[1]
    input_grad = dx is not None
    if not input_grad:                  # the kernel gets a one-row stand-in for dx that it never writes
        dx = np.empty((1,) + x.shape[1:], x.dtype)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    if x.size == 0:                                         # (the kernels return at once)
        dgamma[:] = dbeta[:] = 0
    if x.ndim == 2:
        width, chunks = k.rows_plan(x.shape[0], C, x.itemsize)
        partials = np.empty((2 * max(chunks, 1), C))
        coef = np.empty((4 if relu_beta is None else 5, C), x.dtype)
        k.bn_rows_backward(dout, x, gamma, mean, inv_std, dx, dgamma, dbeta, input_grad, width, partials,
                           coef, stream_stores(dx.nbytes), kernel_threads(x.size, NS_NORM), relu_beta)
    else:
        planes, n_threads = _planes(x), kernel_threads(x.size, NS_NORM)
        k.bn_planes_backward(_planes(dout), planes, gamma, mean, inv_std, _planes(dx), dgamma, dbeta,
                             input_grad, _plane_scratch(k, planes, n_threads), stream_stores(dx.nbytes),
                             n_threads, relu_beta)
    return (dx if input_grad else None), dgamma, dbeta


def channel_affine(x, center, scale, shift, *, out=None):
    """One pass ``y = (x - center_c) * scale_c + shift_c`` over x (N, C) or (N, C, *), float32 or float64;
    center, scale and shift of x's dtype and length C. y is written into ``out`` when given."""
    fn = "channel_affine"
    x = _channels_input(fn, x)
    C = x.shape[1]
    center = _vector(fn, "center", center, C, x.dtype, _PER_CHANNEL, x)
    scale = _vector(fn, "scale", scale, C, x.dtype, _PER_CHANNEL, x)
    shift = _vector(fn, "shift", shift, C, x.dtype, _PER_CHANNEL, x)
    y = output(fn, out, x.shape, x.dtype)
    x, center, scale, shift = apart_from(y, x, center, scale, shift)
    return _channel_affine(x, center, scale, shift, y)


def _channel_affine(x, center, scale, shift, y):
    """channel_affine on checked arguments, y the output."""
    _kernels().channel_affine(_planes(x), center, scale, shift, _planes(y), kernel_threads(x.size))
    return y


def row_norm_forward(x3, groups, gamma, beta, eps, *, out=None):
    """LayerNorm/GroupNorm forward on x3 (M, Cg, S): ``(y3, mean, inv_std)`` with float64 per-row statistics (NaN for
    rows without values); y3 is written into ``out`` when given.

    Row m is normalised over its Cg * S values and scaled with gamma[g * Cg + c] (c its channel, g = m % groups):
    M = N * groups rows, sample-major (GroupNorm's (N, C, *) seen as (N * G, C / G, S); LayerNorm's (*, D) as
    (M, D, 1) with groups = 1). x3 is float32 or float64, groups a positive int dividing M, gamma and beta of x3's
    dtype and length groups * Cg, eps finite and >= 0; anything else raises TypeError or ValueError."""
    fn = "row_norm_forward"
    x3 = _rows_input(fn, x3)
    groups, gamma = _groups(fn, groups, x3, gamma)
    beta = _vector(fn, "beta", beta, gamma.shape[0], x3.dtype, "groups * Cg values, as gamma, for x3, a {ref}", x3)
    y3 = output(fn, out, x3.shape, x3.dtype)
    x3, gamma, beta = apart_from(y3, x3, gamma, beta)
    return _row_norm_forward(x3, groups, gamma, beta, _eps(fn, eps), y3)


def _row_norm_forward(x3, groups, gamma, beta, eps, y3):
    """row_norm_forward on checked arguments, y3 the output."""
    M = x3.shape[0]
    mean = np.empty(M)
    inv_std = np.empty(M)
    if x3.size == 0:                                        # (the kernel returns at once)
        mean[:] = inv_std[:] = np.nan
    _kernels().row_norm_forward(x3, groups, gamma, beta, eps, y3, mean, inv_std, stream_stores(y3.nbytes),
                                kernel_threads(x3.size, NS_NORM_FORWARD))
    return y3, mean, inv_std


def _row_chunks(x3):
    M = x3.shape[0]
    if x3.size < _ROW_CHUNK_MIN_ELEMENTS:
        return 1
    return max(1, min(M, _ROW_CHUNKS))


def row_norm_backward(dout3, x3, groups, gamma, mean, inv_std, *, input_grad=True, out=None):
    """Backward of :func:`row_norm_forward`: ``(dx3 or None, dgamma, dbeta)``, the last two float64 of gamma's
    length; dx3 is written into ``out`` when given. dout3 has x3's shape and dtype, groups and gamma as in the
    forward, mean and inv_std float64 of length M (as the forward returns them)."""
    fn = "row_norm_backward"
    x3 = _rows_input(fn, x3)
    dout3 = _like(fn, "dout3", dout3, x3, "x3")
    groups, gamma = _groups(fn, groups, x3, gamma)
    M = x3.shape[0]
    mean = _vector(fn, "mean", mean, M, _FLOAT64, _STATS_PER_ROW, x3)
    inv_std = _vector(fn, "inv_std", inv_std, M, _FLOAT64, _STATS_PER_ROW, x3)
    dx3 = output(fn, out, x3.shape, x3.dtype) if input_grad else None
    dout3, x3, gamma, mean, inv_std = apart_from(dx3, dout3, x3, gamma, mean, inv_std)
    return _row_norm_backward(dout3, x3, groups, gamma, mean, inv_std, dx3)


def _row_norm_backward(dout3, x3, groups, gamma, mean, inv_std, dx3):
    """row_norm_backward on checked arguments; ``dx3`` the output, None for input_grad=False."""
    input_grad = dx3 is not None
    if not input_grad:              # the kernel gets a one-row stand-in for dx that it never writes (as batch norm's)
        dx3 = np.empty((1,) + x3.shape[1:], x3.dtype)
    P = gamma.shape[0]
    partials = np.empty((_row_chunks(x3), 2, P))
    dgamma = np.empty(P)
    dbeta = np.empty(P)
    _kernels().row_norm_backward(dout3, x3, groups, gamma, mean, inv_std, dx3, partials, dgamma, dbeta,
                                 input_grad, input_grad and stream_stores(dx3.nbytes),
                                 kernel_threads(x3.size, NS_NORM))
    return (dx3 if input_grad else None), dgamma, dbeta


# --- shared checks ---------------------------------------------------------------------------------------------------
def _positive_float(layer, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not (0 < float(value) < math.inf):
        raise ValueError(f"{layer}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _reset_affine(norm):
    """A norm's weight back to ones and its bias to zeros, in place (twins sharing them see it), if it has them."""
    if norm.weight is not None:
        norm.weight.data[...] = 1
    if norm.bias is not None:
        norm.bias.data[...] = 0


def _accumulate(param, value):
    """Add a float64 gradient into a parameter (cast to its dtype)."""
    if param is not None and param.requires_grad:
        param.accumulate(value.astype(param.data.dtype, copy=False))


# --- batch norm ------------------------------------------------------------------------------------------------------
def normalization_parameters(model):
    """The ids of the gains and shifts of every normalisation layer in ``model`` (BatchNorm, LayerNorm, GroupNorm),
    whatever their shape: the parameters weight decay and penalties leave alone (a LayerNorm over (3, 4) has a 2-d
    gain and shift, which a rule by dimension alone would take for a weight matrix)."""
    return {id(param) for module in model.modules() if isinstance(module, (_BatchNorm, _RowNorm))
            for param in module.parameters()}


@_fusable
class _BatchNorm(Module):
    """Shared implementation of BatchNorm1d/2d; subclasses give the accepted input ranks."""

    _ranks = ()
    _shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = positive_int(name, "num_features", num_features)
        self.eps = _positive_float(name, "eps", eps)
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0 <= float(momentum) <= 1):        # (a string "0.5" too)
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dtype = float_dtype(name, dtype)
        self._dtype_no_state = dtype
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, dtype))
            self.bias = Parameter(np.zeros(C, dtype))
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype))
            self.register_buffer("running_var", np.ones(C, dtype))
            self.register_buffer("num_batches_tracked", np.zeros(1, np.int64))
            self._set_buffer("num_batches_tracked", np.array(0, dtype=np.int64))   # 0-d, as in PyTorch
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None
        self._frozen_box = [False]  # the frozen flag in a list that shared_copy twins share, as their statistics
        self._cache = None
        self._pooled = None         # _PooledMoments while recompute_batchnorm_statistics runs
        self._recomputed_at = None  # num_batches_tracked when recompute_batchnorm_statistics last wrote the statistics

    # --- freezing: a frozen batch norm normalises with its running statistics and updates nothing ---------------
    def _set_frozen_state(self, frozen):
        self._frozen_stats = bool(frozen)      # what `frozen` reads without affine parameters

    @property
    def _frozen_stats(self):
        return self._frozen_box[0]

    @_frozen_stats.setter
    def _frozen_stats(self, frozen):
        # one flag for shared_copy twins (their running statistics are one pair of arrays): freezing the network
        # that holds one stops the other's updates too, as shared affine parameters do through requires_grad
        self._frozen_box[0] = bool(frozen)

    def _twin_shared(self):
        return [self._frozen_box]

    @property
    def frozen(self):
        """True after :meth:`freeze` (or when every parameter has ``requires_grad=False``)."""
        if self._parameters:
            if self._modules:
                return super().frozen
            return not any(p.requires_grad for p in self._parameters.values())   # every forward asks: no tree walk
        return self._frozen_stats

    def reset_running_stats(self):
        """Running mean 0, running variance 1, no batch tracked."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0
        self._recomputed_at = None

    def reset_parameters(self):
        """PyTorch's name: :meth:`reset_running_stats`, and weight back to ones and bias to zeros (in place)."""
        self.reset_running_stats()
        _reset_affine(self)

    def _state_loaded(self):
        self._recomputed_at = None      # loaded statistics are not the recomputed ones

    def _params(self, x):
        """gamma and beta for x: the parameters (checked: replaced by hand, they would reach the kernels), or ones and
        zeros."""
        C = self.num_features
        if self.affine:
            return (_vector(self, "weight", self.weight.data, C, x.dtype, _PER_CHANNEL, x),
                    _vector(self, "bias", self.bias.data, C, x.dtype, _PER_CHANNEL, x))
        return np.ones(C, x.dtype), np.zeros(C, x.dtype)

    def _check_input(self, x):
        x = native(x)
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input of shape {self._shape_text} with C = {self.num_features}, "
                             f"got {describe(x)}")
        dtype = self._dtype()
        if x.dtype != dtype:
            raise TypeError(f"{self!r}: input must have the layer's dtype {dtype}, got {describe(x)} "
                            f"({dtype_remedy(x.dtype)})")
        return np.ascontiguousarray(x)

    def _dtype(self):
        if self.affine:
            return self.weight.data.dtype
        if self.track_running_stats:
            return self.running_mean.dtype
        return self._dtype_no_state

    def _cast_state(self, dtype):
        self._dtype_no_state = dtype          # the dtype without parameters or running statistics to tell it

    @property
    def _uses_batch_stats(self):
        """Batch statistics in training mode (unless frozen), and always without running statistics."""
        if not self.track_running_stats:
            return True
        return self.training and not self.frozen

    def forward(self, x):
        x = self._check_input(x)
        gamma, beta = self._params(x)
        if self._uses_batch_stats:
            return self._batch_forward(x, gamma, beta, relu=False)
        C = self.num_features
        running_mean = _vector(self, "running_mean", self.running_mean, C, x.dtype, _PER_CHANNEL, x)
        running_var = np.asarray(self.running_var)
        if running_var.shape != (C,):
            raise ValueError(f"{self!r}: running_var must have shape ({C},), got {describe(running_var)}")
        inv_std = 1.0 / np.sqrt(running_var.astype(np.float64) + self.eps)
        scale = (gamma * inv_std).astype(x.dtype)
        y = _channel_affine(x, running_mean, scale, beta, reuse.like(x))
        self._cache = ("running", x, running_mean.astype(np.float64), inv_std, scale)
        return y

    def _batch_forward(self, x, gamma, beta, relu):
        # batch statistics (training, or no running statistics in either mode) need more than one value per channel:
        # the variance of one is 0 and every output beta (PyTorch raises too)
        values = x.size // self.num_features
        if values <= 1:
            when = ("when training" if self.training else
                    "to normalise with batch statistics (in eval mode too with track_running_stats=False)")
            raise ValueError(f"{self!r}: expected more than 1 value per channel {when}, got input of shape "
                             f"{tuple(x.shape)} ({values} value{'s' if values != 1 else ''} per channel)")
        y, mean, var, inv_std = _bn_forward(x, gamma, beta, self.eps, reuse.like(x), relu)
        if self.training and self.track_running_stats and not self.frozen:
            self._update_running_stats(mean, var, values)
        # with relu, the backward masks dout as the ReLU's backward would, from x and the forward's beta
        self._cache = ("batch", x, mean, inv_std, beta if relu else None)
        return y

    def forward_relu(self, x):
        """``ReLU()(self(x))`` in one pass over x, or None where that does not apply (evaluation with running
        statistics): what :class:`~cynet.nn.Sequential` runs for a batch norm followed by a ReLU.
        The backward then takes the gradient of the ReLU's output and applies the ReLU's mask itself, recomputed from
        x: the same bits as the two layers, without the ReLU's two passes over the activations (the CIFAR CNN's
        training step 161 -> 154 ms on two threads, 297-301 -> 280 ms on one)."""
        if not self._uses_batch_stats:
            return None
        x = self._check_input(x)
        gamma, beta = self._params(x)
        return self._batch_forward(x, gamma, beta, relu=True)

    def _update_running_stats(self, mean, var, n):
        C = mean.shape[0]
        running = (self.running_mean, self.running_var)
        if not all(type(a) is np.ndarray and a.shape == (C,) and a.dtype == running[0].dtype
                   and a.dtype in KERNEL_DTYPES and a.flags.c_contiguous and a.flags.writeable for a in running):
            raise ValueError(f"{self!r}: running_mean and running_var must be writable C-contiguous float32 or "
                             f"float64 arrays of shape ({C},) and one dtype (were they replaced by hand?), got "
                             f"{describe(np.asarray(running[0]))} and {describe(np.asarray(running[1]))}")
        self.num_batches_tracked[...] += 1
        pooled = getattr(self, "_pooled", None)
        if pooled is not None:                  # recompute_batchnorm_statistics: moments over the whole data set
            pooled.add(mean, var, n)
            return
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # (1 - factor) * running_mean + factor * mean, and the same for var * n / (n - 1): NumPy's bits, one call
        _kernels().bn_update_running_stats(self.running_mean, self.running_var, mean, var, factor, n / (n - 1))

    def backward(self, dout, *, input_grad=True):
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward called before forward (nothing cached)")
        mode, x, mean, inv_std, *rest = self._cache
        dout = native(dout)
        if dout.shape != x.shape or dout.dtype != x.dtype:
            raise ValueError(f"{self!r}: dout must be a {x.dtype} array of shape {tuple(x.shape)}, got "
                             f"{describe(dout)}")
        dout = np.ascontiguousarray(dout)
        learns = self.affine and (self.weight.requires_grad or self.bias.requires_grad)
        if mode == "batch":
            gamma, _ = self._params(x)
            dx, dgamma, dbeta = _bn_backward(dout, x, gamma, mean, inv_std, reuse.like(x) if input_grad else None,
                                             rest[0])
            if learns:
                _accumulate(self.weight, dgamma)
                _accumulate(self.bias, dbeta)
            return dx
        # running statistics: y = (x - mean) * scale + beta is affine in x
        (scale,) = rest
        if learns:
            axes = (0,) + tuple(range(2, x.ndim))
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
            _accumulate(self.weight, np.sum(dout * x_hat, axis=axes, dtype=np.float64))
            _accumulate(self.bias, np.sum(dout, axis=axes, dtype=np.float64))
        if not input_grad:
            return None
        zero = np.zeros(self.num_features, x.dtype)
        return _channel_affine(dout, zero, scale, zero, reuse.like(dout))

    def extra_repr(self):
        text = (f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")
        if not self._parameters and self.frozen:
            text += ", frozen"
        return text


_BatchNorm._dtype_no_state = np.dtype(np.float32)


class BatchNorm1d(_BatchNorm):
    r"""Batch normalisation over the batch axis (Ioffe & Szegedy, 2015), per feature of (N, C) or (N, C, L) input.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training mode mean and (biased) variance are taken over the batch (and L) for each feature, and the running
    estimates move towards them: ``running = (1 - momentum) * running + momentum * batch``, the variance unbiased
    (times n/(n-1)); with ``momentum=None`` they are the cumulative average over the batches seen. In eval mode the
    running estimates are used: one pass ``y = (x - running_mean) * scale + beta`` with
    ``scale = gamma / sqrt(running_var + eps)``. Without running statistics (``track_running_stats=False``) batch
    statistics are used in both modes.

    Training needs more than one value per feature (N > 1): a batch of one raises ValueError (its variance would be
    0 and every output beta).

    **Frozen** (``freeze()``, or ``requires_grad=False`` on both parameters): the layer behaves as in eval mode even
    in training mode: it normalises with the running statistics, does not update them, and its backward gives dx
    only (no gradient for weight and bias). The usual choice when fine-tuning with small batches. Its repr shows
    ``frozen``.

    Args:
        num_features (int): C.
        eps (float): added to the variance. Default 1e-5.
        momentum (float or None): weight of the new batch in the running statistics; None for the cumulative
            average. Default 0.1.
        affine (bool): learn gamma (``weight``, ones) and beta (``bias``, zeros). Default True.
        track_running_stats (bool): keep ``running_mean``, ``running_var`` and ``num_batches_tracked`` buffers.
            Default True.
        dtype: keyword-only (PyTorch's parameter in its place is ``device``); float32 (default) or float64.

    Shape:
        x (N, C) or (N, C, L) -> y of the same shape; weight, bias, running_mean, running_var (C,).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> bn = nn.BatchNorm1d(3)
        >>> y = bn(np.arange(12, dtype=np.float32).reshape(4, 3))
        >>> np.round(y[:, 0], 3)
        array([-1.342, -0.447,  0.447,  1.342], dtype=float32)
    """

    _ranks = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    r"""Spatial batch normalisation: :class:`BatchNorm1d` per channel of (N, C, H, W), statistics over N, H and W.

    .. math:: y_{nchw} = \frac{x_{nchw} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} \gamma_c + \beta_c

    Training needs more than one value per channel (N*H*W > 1). Freezing, running statistics and eval mode as in
    :class:`BatchNorm1d`.

    Args:
        num_features (int): C.
        eps (float): Default 1e-5.  momentum (float or None): Default 0.1.  affine (bool): Default True.
        track_running_stats (bool): Default True.
        dtype: keyword-only (PyTorch's parameter in its place is ``device``); float32 (default) or float64.

    Shape:
        x (N, C, H, W) -> y (N, C, H, W); weight, bias, running_mean, running_var (C,).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> bn = nn.BatchNorm2d(16)
        >>> bn(np.random.default_rng(0).standard_normal((8, 16, 5, 5), dtype=np.float32)).shape
        (8, 16, 5, 5)
    """

    _ranks = (4,)
    _shape_text = "(N, C, H, W)"


# --- per-sample norms ------------------------------------------------------------------------------------------------
class _RowNorm(Module):
    """LayerNorm and GroupNorm: statistics per row of a (M, Cg, S) view; subclasses give the view."""

    def _view(self, x):
        raise NotImplementedError

    def reset_parameters(self):
        """PyTorch's name: weight back to ones and bias to zeros (in place), where the layer has them."""
        _reset_affine(self)

    def _affine_arrays(self, x):
        """gamma and beta as vectors for x: the parameters (checked: replaced by hand, they would reach the kernels),
        or ones and zeros."""
        P = self._param_size
        if self.weight is None:
            return np.ones(P, x.dtype), np.zeros(P, x.dtype)
        gamma = _vector(self, "weight", self.weight.data.reshape(-1), P, x.dtype, _PER_PARAMETER, x)
        if self.bias is None:                                               # bias=False: a gain only
            return gamma, np.zeros(P, x.dtype)
        return gamma, _vector(self, "bias", self.bias.data.reshape(-1), P, x.dtype, _PER_PARAMETER, x)

    def _dtype(self):
        return self.weight.data.dtype if self.weight is not None else self._dtype_no_state

    def _cast_state(self, dtype):
        self._dtype_no_state = dtype          # the dtype without parameters or running statistics to tell it

    def _check_dtype(self, x):
        dtype = self._dtype()
        if x.dtype != dtype:
            raise TypeError(f"{self!r}: input must have the layer's dtype {dtype}, got {describe(x)} "
                            f"({dtype_remedy(x.dtype)})")

    def forward(self, x):
        x = np.ascontiguousarray(native(x))
        x3, groups = self._view(x)
        self._check_dtype(x)
        gamma, beta = self._affine_arrays(x)
        y3, mean, inv_std = _row_norm_forward(x3, groups, gamma, beta, self.eps, reuse.like(x3))
        self._cache = (x, x3, groups, mean, inv_std)
        return y3.reshape(x.shape)

    def backward(self, dout, *, input_grad=True):
        if getattr(self, "_cache", None) is None:
            raise RuntimeError(f"{self!r}: backward called before forward (nothing cached)")
        x, x3, groups, mean, inv_std = self._cache
        dout = native(dout)
        if dout.shape != x.shape or dout.dtype != x.dtype:
            raise ValueError(f"{self!r}: dout must be a {x.dtype} array of shape {tuple(x.shape)}, got "
                             f"{describe(dout)}")
        dout3 = np.ascontiguousarray(dout).reshape(x3.shape)
        gamma, _ = self._affine_arrays(x)
        dx3, dgamma, dbeta = _row_norm_backward(dout3, x3, groups, gamma, mean, inv_std,
                                                reuse.like(x3) if input_grad else None)
        if self.weight is not None:
            _accumulate(self.weight, dgamma.reshape(self.weight.data.shape))
            if self.bias is not None:
                _accumulate(self.bias, dbeta.reshape(self.bias.data.shape))
        return None if dx3 is None else dx3.reshape(x.shape)


_RowNorm._dtype_no_state = np.dtype(np.float32)


class LayerNorm(_RowNorm):
    r"""Layer normalisation (Ba et al., 2016): each sample normalised over its trailing ``normalized_shape`` axes.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    with mean and biased variance over the last ``len(normalized_shape)`` axes of each sample; gamma and beta have
    ``normalized_shape`` (one value per normalised element). Identical in training and eval mode.

    Args:
        normalized_shape (int or tuple): the trailing shape normalised over.
        eps (float): added to the variance. Default 1e-5.
        elementwise_affine (bool): learn ``weight`` (ones) and ``bias`` (zeros). Default True.
        bias (bool): with ``elementwise_affine``, False learns the gain ``weight`` only (no ``bias``; PyTorch's
            fourth argument). Default True.
        dtype: keyword-only (PyTorch's parameter in its place is ``device``); float32 (default) or float64.

    Shape:
        x (*, *normalized_shape) -> y of the same shape.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> ln = nn.LayerNorm(4)
        >>> np.round(ln(np.array([[1, 2, 3, 4]], np.float32)), 3)
        array([[-1.342, -0.447,  0.447,  1.342]], dtype=float32)
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, dtype=np.float32):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        try:
            shape = tuple(normalized_shape)
        except TypeError:               # a float, a bool, None: not a shape (PyTorch's error would not say which)
            raise TypeError(f"LayerNorm: normalized_shape must be a positive int or a tuple/list of them, got "
                            f"{normalized_shape!r}") from None
        for n in shape:
            positive_int("LayerNorm", "normalized_shape", n)
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.normalized_shape = tuple(int(n) for n in shape)
        self.eps = _positive_float("LayerNorm", "eps", eps)
        self.elementwise_affine = bool(elementwise_affine)
        dtype = float_dtype("LayerNorm", dtype)
        self._dtype_no_state = dtype
        self._param_size = int(np.prod(self.normalized_shape))
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype))
            self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if bias else None
        else:
            self.weight = None
            self.bias = None
        self._cache = None

    def _view(self, x):
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(f"{self!r}: expected input of shape (*, {', '.join(map(str, self.normalized_shape))}), "
                             f"got {describe(x)}")
        return x.reshape(-1, self._param_size, 1), 1

    def extra_repr(self):
        text = f"{self.normalized_shape}, eps={self.eps:g}, elementwise_affine={self.elementwise_affine}"
        return text + (", bias=False" if self.weight is not None and self.bias is None else "")


class GroupNorm(_RowNorm):
    r"""Group normalisation (Wu & He, 2018): the C channels of each sample split into ``num_groups`` groups, each
    normalised over its channels and spatial positions.

    .. math:: y_{nc\ldots} = \frac{x_{nc\ldots} - \mu_{ng}}{\sqrt{\sigma_{ng}^2 + \epsilon}} \gamma_c + \beta_c,
              \quad g = \lfloor c / (C/G) \rfloor

    gamma and beta are per channel. ``num_groups = num_channels`` is **InstanceNorm** (each channel of each sample
    normalised over its spatial positions, affine per channel); ``num_groups = 1`` normalises each sample over all
    of (C, H, W) like LayerNorm but with per-channel gamma and beta. Identical in training and eval mode.

    Args:
        num_groups (int): G, dividing num_channels.
        num_channels (int): C.
        eps (float): added to the variance. Default 1e-5.
        affine (bool): learn ``weight`` (ones) and ``bias`` (zeros) of shape (C,). Default True.
        bias (bool): keyword-only, as in PyTorch; with ``affine``, False learns the gain ``weight`` only. Default True.
        dtype: keyword-only (PyTorch's parameter in its place is ``device``); float32 (default) or float64.

    Shape:
        x (N, C, *) -> y of the same shape.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> gn = nn.GroupNorm(2, 4)
        >>> gn(np.ones((3, 4, 5, 5), np.float32)).shape
        (3, 4, 5, 5)
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, bias=True, dtype=np.float32):
        super().__init__()
        self.num_groups = positive_int("GroupNorm", "num_groups", num_groups)
        self.num_channels = positive_int("GroupNorm", "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({self.num_channels}) must be divisible by num_groups "
                             f"({self.num_groups})")
        self.eps = _positive_float("GroupNorm", "eps", eps)
        self.affine = bool(affine)
        dtype = float_dtype("GroupNorm", dtype)
        self._dtype_no_state = dtype
        self._param_size = self.num_channels
        if self.affine:
            self.weight = Parameter(np.ones(self.num_channels, dtype))
            self.bias = Parameter(np.zeros(self.num_channels, dtype)) if bias else None
        else:
            self.weight = None
            self.bias = None
        self._cache = None

    def _view(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.num_channels}, *), got {describe(x)}")
        G = self.num_groups
        S = int(np.prod(x.shape[2:], dtype=np.int64))
        return x.reshape(x.shape[0] * G, self.num_channels // G, S), G

    def extra_repr(self):
        text = f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}, affine={self.affine}"
        return text + (", bias=False" if self.weight is not None and self.bias is None else "")


# --- batch-norm tools ------------------------------------------------------------------------------------------------
def _batch_slices(n, batch_size, join_single=True):
    """Consecutive batches covering [0, n); with ``join_single``, a last batch of one sample joins the one before
    (batch norm cannot train on it)."""
    bounds = list(range(0, n, batch_size)) + [n]
    if join_single and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class _PooledMoments:
    """Per-channel count, mean and sum of squared deviations of batches merged one by one, in float64 (Chan et al.'s
    pairwise update: exact, whatever the sizes of the batches and the offset of the data)."""

    def __init__(self, order=None):
        self.n, self.mean, self.m2 = 0, None, None
        self._order = order         # a list shared by the pools of one pass: each appends itself on its first batch

    def add(self, mean, var, n):
        """Merge a batch of ``n`` values per channel with (biased) variance ``var`` about ``mean``."""
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        if self.mean is None:
            if self._order is not None:
                self._order.append(self)
            self.n, self.mean, self.m2 = n, mean.copy(), var * n
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += var * n + delta * delta * (self.n * n / total)
        self.n = total

    def write(self, bn):
        """Running mean and unbiased variance of everything merged, into ``bn``'s buffers (in their dtype)."""
        if self.mean is not None:
            bn.running_mean[...] = self.mean
            bn.running_var[...] = self.m2 / (self.n - 1)
            bn._recomputed_at = int(bn.num_batches_tracked)     # nothing of the initial 0 and 1 left in them


def recompute_batchnorm_statistics(model, x, batch_size=256):
    """Reset and re-estimate the running statistics of every batch norm in ``model`` over the data set ``x``.

    Each batch-norm layer (frozen ones too) gets the mean and the unbiased variance of everything it receives over
    the batches, every value counted once (a last batch of 2 weighs what its 2 samples do, not what a full batch
    does: PyTorch's ``momentum=None`` averages the batches' statistics with equal weights), with the rest of the model
    in eval mode (dropout off). The batch norms are done one after the other in the order the data reach them, one
    pass over ``x`` each: a batch norm's input is taken with the ones before it normalising with their NEW running
    statistics (eval mode), as the model will run in evaluation (PyTorch's ``update_bn`` normalises them with batch
    statistics instead, which leaves a later batch norm's statistics off by the batches' noise). So these are
    exactly the statistics of each batch norm's input over ``x`` in eval mode, what
    :func:`cynet.diagnostics.check_batchnorm` measures, whatever ``batch_size``; the price is one forward pass over
    ``x`` per batch norm. (Not exact for :meth:`~cynet.nn.Module.shared_copy` twins with another batch norm between
    them: the second twin's input depends on the statistics being computed; they are pooled from one pass.) Useful
    after training with small or unrepresentative batches, or after changing weights. The modes (train / eval),
    momenta and frozen states of all modules are restored afterwards; parameters are not touched.

    Args:
        model (Module): the model (called as ``model(batch)``).
        x (ndarray): the data, samples along the first axis.
        batch_size (int): samples per forward pass. Default 256. A last batch of a single sample is merged into the
            previous one.

    Returns:
        Module: the model.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
        >>> _ = recompute_batchnorm_statistics(model, np.ones((10, 5), np.float32), batch_size=4)
        >>> int(model[1].num_batches_tracked)
        3
    """
    batch_size = positive_int("recompute_batchnorm_statistics", "batch_size", batch_size)
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"recompute_batchnorm_statistics: need at least 2 samples, got {describe(x)}")
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(bn, bn.momentum, bn._frozen_stats) for bn in norms]
    frozen_params = [(p, p.requires_grad) for bn in norms for p in bn.parameters()]
    with model.modes_restored():
        _recompute_statistics(model, x, batch_size, norms, saved, frozen_params)
    return model


def _recompute_statistics(model, x, batch_size, norms, saved, frozen_params):
    """recompute_batchnorm_statistics's passes; the momenta, frozen states and requires_grad flags come back, and so
    do the trained running statistics when a pass fails (a wrong dtype, a batch of one sample: they were reset)."""
    trained = [(bn, [np.array(a, copy=True) for a in (bn.running_mean, bn.running_var, bn.num_batches_tracked)])
               for bn in norms]
    finished = False
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn._frozen_stats = False
            for p in bn.parameters():
                p.requires_grad = True
        # one group per running-statistics array (shared_copy twins pool both branches' inputs), in the order the
        # data reach them: each pass completes the first group reached, the ones before it in eval mode with their
        # new statistics, the ones not done yet normalising with batch statistics (their own input is retaken later)
        pending = {}
        for bn in norms:
            pending.setdefault(id(bn.running_mean), []).append(bn)
        slices = _batch_slices(x.shape[0], batch_size)
        while pending:
            order, pools = [], {}
            for key, group in pending.items():
                pools[key] = _PooledMoments(order)
                for bn in group:
                    bn.reset_running_stats()
                    bn._pooled = pools[key]
                    object.__setattr__(bn, "training", True)
            for s in slices:
                model(x[s])
            if not order:
                break                   # the data reach none of them: they keep the reset statistics
            key = next(key for key, pool in pools.items() if pool is order[0])
            for bn in pending.pop(key):
                pools[key].write(bn)
                bn._pooled = None
                object.__setattr__(bn, "training", False)
        finished = True
    finally:
        if not finished:
            for bn, arrays in trained:        # in place: shared_copy twins share these arrays
                for target, value in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), arrays):
                    target[...] = value
        for bn, momentum, frozen in saved:
            bn.momentum = momentum
            bn._frozen_stats = frozen
            bn._cache = None
            bn._pooled = None
        for p, requires_grad in frozen_params:
            p.requires_grad = requires_grad


def fold_batchnorm(model):
    r"""A new :class:`~cynet.nn.Sequential` for inference, each BatchNorm1d directly after a Linear, and each
    BatchNorm2d directly after a Conv2d, folded into that layer, also inside nested Sequentials and the branches of
    :class:`~cynet.nn.Residual` blocks.

    With :math:`s = \gamma / \sqrt{\text{running\_var} + \epsilon}` per output feature (channel), the pair computes
    :math:`(xW^T + b - \mu)s + \beta` (for a convolution, the same per channel), which is one layer with

    .. math:: W'_f = W_f\, s_f, \qquad b' = (b - \mu) s + \beta

    (:math:`W_f` the weights of output f: a row of a Linear's, a filter of a Conv2d's; a layer without bias gets
    one). Folded weights are computed in float64 and stored in the layer's dtype. Batch norms without running
    statistics, or not preceded by such a layer, are copied unchanged. The result is in eval mode; its outputs equal
    the original model's in eval mode (to rounding). The original model is not modified.

    Args:
        model (Sequential): the trained model (its layers are scanned, nested Sequentials and residual branches too).

    Returns:
        Sequential: deep copies of the layers, with the folds applied, in eval mode.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU())
        >>> folded = fold_batchnorm(model)
        >>> [type(m).__name__ for m in folded]
        ['Linear', 'ReLU']
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"fold_batchnorm: expected a Sequential, got {type(model).__name__}")
    layers = list(model)
    out = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if ((type(layer) is Linear and isinstance(nxt, BatchNorm1d) and nxt.num_features == layer.out_features)
                or (type(layer) is Conv2d and isinstance(nxt, BatchNorm2d)
                    and nxt.num_features == layer.out_channels)) and nxt.track_running_stats:
            out.append(_fold(layer, nxt))
            i += 2
        else:
            out.append(_folded(layer))
            i += 1
    return Sequential(*out).eval()


def _folded(module):
    """``module`` with the batch norms inside it folded: nested Sequentials and the branches of a Residual block are
    scanned as the top level is; any other module is deep-copied."""
    if isinstance(module, Sequential):
        return fold_batchnorm(module)
    if isinstance(module, Residual):
        return Residual(_folded(module.body), None if module.shortcut is None else _folded(module.shortcut))
    return copy.deepcopy(module)


def _fold(layer, bn):
    """A copy of ``layer`` (Linear or Conv2d) with the batch norm that follows it folded in (fold_batchnorm)."""
    weight = layer.weight.data
    dtype, features = weight.dtype, weight.shape[0]
    scale = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    beta = np.zeros(bn.num_features)
    if bn.affine:
        scale = scale * bn.weight.data.astype(np.float64)
        beta = bn.bias.data.astype(np.float64)
    b = layer.bias.data.astype(np.float64) if layer.bias is not None else np.zeros(features)
    caches = {key: None for key in ("_x", "_cols", "_cols_chunk", "_dcols", "_dw_t", "_product", "_input_shape")
              if key in layer.__dict__}
    folded = copy.deepcopy(layer)
    folded.__dict__.update(caches)                  # no forward's cache (a convolution's column matrices) carried over
    per_feature = scale.reshape((features,) + (1,) * (weight.ndim - 1))
    folded.weight = Parameter((weight.astype(np.float64) * per_feature).astype(dtype),
                              requires_grad=layer.weight.requires_grad)
    folded.bias = Parameter(((b - bn.running_mean.astype(np.float64)) * scale + beta).astype(dtype))
    return folded
