"""Layers: Linear, the activation functions, Maxout, Dropout, Flatten and Identity.

Each module's ``forward`` calls :mod:`cynet.ops` (the Cython kernels) or BLAS and caches only what its backward
needs — the cheapest saved tensor of each op (the output for sigmoid/tanh/ReLU/ELU/SELU, the input otherwise).
``backward(dout, input_grad=True)`` returns dx and adds parameter gradients into ``param.grad``.
"""
import math

import numpy as np

from cynet import ops
from cynet._kernels import load
from cynet._random import resolve_generator
from cynet._threading import kernel_threads
from cynet._validation import KERNEL_DTYPES, describe, dtype_remedy, float_dtype, native, positive_int, refuse_masked
from cynet.nn import _reuse as reuse
from cynet.nn.module import Module, Parameter, _fusable, _refuse_overwriting_protected


def _inplace_flag(layer, inplace):
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"{layer}: inplace must be True or False, got {inplace!r}")
    return bool(inplace)


def _check_writeable_input(module, x):
    """An in-place activation's input: a writeable C-contiguous float32/float64 numpy array."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{module!r}: an in-place input must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        order = "" if x.dtype.isnative else (" in the machine's byte order (it is written in place, so it cannot be "
                                             "converted: pass x.astype(x.dtype.newbyteorder('=')))")
        raise TypeError(f"{module!r}: an in-place input must be float32 or float64{order}, got {describe(x)}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{module!r}: an in-place input must be C-contiguous, got a strided {describe(x)}")
    if not x.flags.writeable:
        raise ValueError(f"{module!r}: an in-place input must be writeable, got a read-only {describe(x)}")


def _check_float_input(module, x):
    """An activation's input as a floating-point ndarray in the machine's byte order (the error names the layer, not
    the op it calls); a masked array is refused (the op would ignore its mask)."""
    refuse_masked(repr(module), "input", x)
    a = native(x)
    if a.dtype.kind != "f":
        raise TypeError(f"{module!r}: input must be a floating-point array (float32 or float64), got {describe(a)}")
    return a


def _check_dout(module, dout, kept):
    """An elementwise layer's dout, in the machine's byte order: the dtype and shape of the forward's output
    (``kept``: its input or output); a masked array is refused, as the op refuses it."""
    refuse_masked(repr(module), "dout", dout)
    d = native(dout)
    if d.dtype != kept.dtype or d.shape != kept.shape:
        raise (TypeError if d.shape == kept.shape else ValueError)(
            f"{module!r}: dout must be a {kept.dtype} array of shape {kept.shape} (the forward's output), got "
            f"{describe(d)}")
    return d


def _reused_like(array):
    """A reused output of ``array``'s shape and dtype for an op's ``out=`` (None, letting the op allocate and
    validate, when ``array`` is not a float32/float64 ndarray)."""
    if isinstance(array, np.ndarray) and array.dtype in (np.float32, np.float64):
        return reuse.like(array)
    return None


def _add_bias_gradient(bias, dout, axis):
    """Write (first gradient since zero_grad) or add ``dout.sum(axis)`` into ``bias.grad``, unless it is frozen."""
    if bias is None or not bias.requires_grad:
        return
    grad, fresh = bias.grad_target()
    if fresh:
        np.sum(dout, axis=axis, out=grad)
    else:
        grad += dout.sum(axis=axis)


# Linear's bias, and the ReLU after it inside a Sequential, on the (N, M) product: one pass on the kernels' threads
# (_kernels.activations.bias_relu_rows / relu_bias_grad_rows: NumPy's y += b, cynet's ReLU, and NumPy's row-order
# column sum, bit for bit).
def _add_bias_relu(y, bias, relu):
    """y += bias (None: no bias) and, with ``relu``, y = max(y, 0), in place on Linear's fresh product y."""
    if bias is not None and not _kernel_vector(bias, y.dtype, y.shape[1]):
        y += bias                   # a bias array someone replaced (another dtype, a view): NumPy's add, as before
        bias = None
    if bias is None and not relu:
        return
    ops._act.bias_relu_rows(y, bias, relu, kernel_threads(y.size))


def _kernel_vector(array, dtype, length):
    """Whether ``array`` can go to the row kernels as a per-column vector: C-contiguous, ``dtype``, (length,)."""
    return array.dtype == dtype and array.shape == (length,) and array.flags.c_contiguous


def _add_row_bias_gradient(bias, dout):
    """Linear's bias gradient, ``dout.sum(0)`` written (first gradient since zero_grad) or added; on the kernels'
    threads where dout is C-contiguous (the same bits as NumPy's sum)."""
    if bias is None or not bias.requires_grad:
        return
    if not dout.flags.c_contiguous:
        _add_bias_gradient(bias, dout, 0)
        return
    _column_sums_into(bias, dout, None, None)


def _relu_and_bias_gradient(bias, dout, y):
    """The gradient of Linear's product under the ReLU whose output is y: dz = dout where y > 0, else 0 (cynet's
    ReLU backward), with the bias gradient (column sums of dz) taken in the same pass; returns dz."""
    dout = np.ascontiguousarray(dout)
    dz = reuse.empty(dout.shape, dout.dtype)
    if bias is None or not bias.requires_grad:
        return ops.relu_backward(dout, y, out=dz)
    _column_sums_into(bias, dout, y, dz)
    return dz


def _column_sums_into(bias, dout, y, dz):
    """Write (first gradient since zero_grad) or add into the bias gradient the column sums of dout (C-contiguous),
    or, given y, of dz = dout masked by y > 0, which the same pass writes."""
    grad, fresh = bias.grad_target()
    sums = grad if fresh and _kernel_vector(grad, dout.dtype, dout.shape[1]) else np.empty(dout.shape[1], dout.dtype)
    ops._act.relu_bias_grad_rows(dout, y, dz, sums, y is not None, kernel_threads(dout.size))
    if sums is not grad:
        if fresh:
            grad[...] = sums
        else:
            grad += sums


def _initial_parameters(module, weight_shape, fan_in, bias, init, dtype, generator):
    """Set ``module.init``, ``module.weight`` (drawn by the initialiser ``init``) and ``module.bias`` (zeros, or
    PyTorch's uniform +-1/sqrt(fan_in) with init "default"; None without bias): Linear's and Conv2d's parameters."""
    from cynet import init as initialisers

    rng = resolve_generator(generator)
    module.init = init if isinstance(init, str) else getattr(init, "__name__", "custom")
    weight = np.empty(weight_shape, dtype=dtype)
    initialisers.get_initializer(init)(weight, generator=rng)
    module.weight = Parameter(weight)
    if bias:
        b = np.zeros(weight_shape[0], dtype=dtype)
        if init == "default":
            initialisers.default_bias_(b, fan_in, generator=rng)
        module.bias = Parameter(b)
    else:
        module.bias = None


def _check_weight_dtype(module, x, dtype):
    """TypeError unless the weights are float32/float64 and the input ``x`` has their dtype."""
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"{module!r}: the weights are {dtype} (replaced by hand?); layers compute in float32 or "
                        f"float64: use .to(np.float32) or .to(np.float64)")
    if x.dtype != dtype:
        raise TypeError(f"{module!r}: input must have the weights' dtype {dtype}, got {describe(x)} "
                        f"({dtype_remedy(x.dtype)})")


def _cached(module, attribute):
    value = getattr(module, attribute, None)
    if value is None:
        raise RuntimeError(f"{module!r}: backward called before forward (nothing cached)")
    return value


# Values sampled from an array a module keeps for its backward, to notice that something overwrote it in between (an
# in-place activation called by hand on that array: Sequential refuses such a chain up front, but a hand-written loop
# or custom module has no such check, and torch's autograd refuses it with its version counters).
_FINGERPRINT_SAMPLES = 16
_fingerprint_positions = {}


def _fingerprint(a):
    """A copy of ``_FINGERPRINT_SAMPLES`` values of ``a`` at fixed, evenly spread flat positions (all when fewer): an
    in-place activation changes most values (ReLU every negative one), so a changed array almost surely shows."""
    n = a.size
    positions = _fingerprint_positions.get(n)
    if positions is None:
        positions = np.unique(np.linspace(0, max(n - 1, 0), _FINGERPRINT_SAMPLES).astype(np.intp)) if n else \
            np.empty(0, np.intp)
        if len(_fingerprint_positions) > 256:
            _fingerprint_positions.clear()
        _fingerprint_positions[n] = positions
    return a.flat[positions]


def _check_unchanged(module, kept, fingerprint, what):
    """Refuse a backward whose kept array was modified since the forward that kept it."""
    if fingerprint is not None and _fingerprint(kept).tobytes() != fingerprint.tobytes():      # bit for bit
        raise RuntimeError(
            f"{module!r}: the {what} its forward kept for the backward was modified since that forward (an in-place "
            f"operation, such as an in-place activation applied to it outside a Sequential, overwrote it), so the "
            f"gradient would be wrong. Use inplace=False there, or run the layers in a Sequential, which refuses "
            f"such a chain before it runs")


# --- Linear ----------------------------------------------------------------------------------------------------------
@_fusable
class Linear(Module):
    r"""Fully connected layer, :math:`y = x W^T + b`.

    One BLAS matrix product per pass (NumPy's ``matmul``, which threads through the BLAS that
    :func:`cynet.set_num_threads` limits): forward :math:`xW^T`; backward :math:`dW = dout^T x` written straight into
    the gradient buffer, :math:`db = \sum_n dout_n`, and :math:`dx = dout\,W` only when the input gradient is needed.
    The bias is added to the product, and its gradient summed, on the kernels' threads (NumPy's bits); inside a
    :class:`Sequential`, a Linear and a ReLU after it apply bias and ReLU in one pass (:meth:`forward_relu`).

    Args:
        in_features (int): D, the size of each input row.
        out_features (int): M, the size of each output row.
        bias (bool): learn an additive bias. Default True.
        init (str or callable): keyword-only, as everything after it (PyTorch's fourth positional parameter is
            ``device``). Weight initialisation, a name understood by :func:`cynet.init.get_initializer`
            ("default" — PyTorch's, uniform with bound :math:`1/\sqrt{D}` —, "he"/"kaiming_normal",
            "kaiming_uniform", "xavier"/"xavier_normal", "xavier_uniform", "normal" (std 0.01), "orthogonal",
            "zeros") or a callable ``f(weight, generator)``. The bias starts at zero, except with "default" where it
            is uniform in :math:`\pm 1/\sqrt{D}` as in PyTorch.
        dtype: keyword-only (PyTorch's parameter in its place is ``device``); float32 (default) or float64.
        generator: a seed or :class:`numpy.random.Generator` for the initial weights (default: the global one).

    Shape:
        x (N, D) -> y (N, M); weight (M, D), bias (M,).

    Example:
        >>> import numpy as np, cynet
        >>> from cynet import nn
        >>> layer = nn.Linear(3072, 100, init="he")
        >>> layer(np.ones((2, 3072), np.float32)).shape
        (2, 100)
    """

    def __init__(self, in_features, out_features, bias=True, *, init="default", dtype=np.float32, generator=None):
        super().__init__()
        self.in_features = positive_int("Linear", "in_features", in_features)
        self.out_features = positive_int("Linear", "out_features", out_features)
        _initial_parameters(self, (self.out_features, self.in_features), self.in_features, bias, init,
                            float_dtype("Linear", dtype), generator)
        self._x = None
        self._relu_y = None           # forward_relu's output, whose mask the backward applies

    def _check_input(self, x):
        x = native(x)
        w = self.weight.data
        if w.shape != (self.out_features, self.in_features):      # a tied or replaced weight of another layer's shape
            raise ValueError(f"{self!r}: its weight has shape {w.shape}, not ({self.out_features}, "
                             f"{self.in_features}): a weight tied from (or replaced by) a layer of another shape")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.in_features}), got {describe(x)}")
        _check_weight_dtype(self, x, w.dtype)
        return x

    def forward(self, x):
        return self._forward(x, relu=False)

    def forward_relu(self, x):
        """``ReLU()(self(x))`` with the bias and the ReLU applied in one pass over the product, in place and on the
        kernels' threads: what :class:`~cynet.nn.Sequential` runs for a Linear followed by a ReLU. The backward then
        takes the gradient of the ReLU's output and applies the ReLU's mask itself, in one pass with the bias
        gradient: the same bits as the two layers one by one, without NumPy's one-thread bias add and column sum and
        the ReLU's own two passes (the benchmark MLP's (256, 1024) activations on two threads: forward 107 -> 11 us,
        backward 68 -> 38 us, in cache)."""
        return self._forward(x, relu=True)

    def _forward(self, x, relu):
        x = self._check_input(x)
        y = np.matmul(x, self._forward_weight().T, out=reuse.empty((x.shape[0], self.out_features), x.dtype))
        _add_bias_relu(y, None if self.bias is None else self.bias.data, relu)
        self._x = x
        self._relu_y = y if relu else None
        return y

    def _forward_weight(self):
        """The weight matrix this forward pass uses (subclasses: a dropped one)."""
        return self.weight.data

    def _backward_weight(self):
        """The weight matrix the last forward used, for dx."""
        return self.weight.data

    def _weight_gradient(self, dout, x, grad, fresh):
        """Write (``fresh``) or add ``dout^T x`` into ``grad``."""
        if fresh:
            np.matmul(dout.T, x, out=grad)
        else:                       # (accumulating: tied weights, two backward passes) the product in a pooled array
            grad += np.matmul(dout.T, x, out=reuse.empty(grad.shape, grad.dtype))

    def backward(self, dout, *, input_grad=True):
        x = _cached(self, "_x")
        dout = native(dout)
        if dout.shape != (x.shape[0], self.out_features) or dout.dtype != x.dtype:
            raise ValueError(f"{self!r}: dout must be a {x.dtype} array of shape {(x.shape[0], self.out_features)}, "
                             f"got {describe(dout)}")
        if self._relu_y is not None:    # forward_relu: dout is the ReLU's output gradient
            dout = _relu_and_bias_gradient(self.bias, dout, self._relu_y)
        else:
            _add_row_bias_gradient(self.bias, dout)
        if self.weight.requires_grad:
            self._weight_gradient(dout, x, *self.weight.grad_target())
        if not input_grad:
            return None
        return np.matmul(dout, self._backward_weight(), out=reuse.empty(x.shape, x.dtype))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# --- elementwise activations -----------------------------------------------------------------------------------------
class _Elementwise(Module):
    """An activation over :mod:`cynet.ops`: subclasses name the op and which tensor its backward reads.

    With ``inplace=True`` (the subclasses whose backward can read the output: Sigmoid, Tanh, ReLU, LeakyReLU with a
    slope >= 0, ELU, SELU; GELU and SiLU need their input) forward writes y into x's array and returns it; see
    :class:`cynet.nn.Sequential` for the checks that keep this from overwriting an array something else still needs.
    Outside a Sequential, the backward notices when the array it kept (y, or x) was changed since the forward (16
    sampled values compared bit for bit) and raises instead of returning a wrong gradient.
    """

    _op = None            # ops.<_op>_forward / ops.<_op>_backward
    _saves = "y"          # "y": backward reads the output; "x": the input
    _kinked = False       # derivative jumps at 0: kink_state() reports the sign pattern
    _y_serves_backward = False   # _saves == "x", but y gives the backward the same answer (LeakyReLU, slope >= 0)

    def __init__(self, inplace=False):
        super().__init__()
        inplace = _inplace_flag(type(self).__name__, inplace)
        if inplace and self._saves != "y" and not self._y_serves_backward:
            raise ValueError(f"{type(self).__name__}: no in-place form: its backward reads its input x, which an "
                             f"in-place forward would overwrite")
        self.inplace = inplace
        self._saved = None
        self._saved_print = None

    def _args(self):
        return ()

    def _settings_repr(self):
        """The subclass's own settings for the repr ("" when it has none)."""
        return ""

    def extra_repr(self):
        return ", ".join(part for part in (self._settings_repr(), "inplace=True" if self.inplace else "") if part)

    def _overwrites_input(self):
        return self.inplace

    def forward(self, x):
        if self.inplace:
            _check_writeable_input(self, x)
            _refuse_overwriting_protected(self, x)
            # out=x; the backward reads y, which is x's array now (for LeakyReLU, y > 0 exactly where x > 0)
            y = getattr(ops, f"{self._op}_forward")(x, *self._args(), out=x)
            self._keep(y)
            return y
        x = _check_float_input(self, x)
        y = getattr(ops, f"{self._op}_forward")(x, *self._args(), out=_reused_like(x))
        self._keep(y if self._saves == "y" else x)
        return y

    def _keep(self, array):
        """Keep ``array`` for the backward, with its fingerprint (_check_unchanged)."""
        self._saved = array
        self._saved_print = _fingerprint(array)

    def backward(self, dout, *, input_grad=True):
        saved = _cached(self, "_saved")
        _check_unchanged(self, saved, self._saved_print, "output" if self._saves == "y" or self.inplace else "input")
        if not input_grad:
            return None
        dout = _check_dout(self, dout, saved)
        return getattr(ops, f"{self._op}_backward")(dout, saved, *self._args(), out=_reused_like(dout))

    def _check_kept_output(self):
        """The backward's refusal of a kept output modified since the forward, for a ReLU fused with the module before
        it (Sequential skips its backward: the other module applies the mask, from this very array for a Linear)."""
        _check_unchanged(self, _cached(self, "_saved"), self._saved_print, "output")

    def _adopt_output(self, y):
        """Take ``y`` as the output of a forward this module did not run (a ReLU computed inside the batch norm before
        it: :meth:`cynet.nn.BatchNorm2d.forward_relu`), so that its backward and kink state read it."""
        self._keep(y)

    def kink_state(self):
        """Boolean mask of the positive side of the last forward (where the derivative changes branch)."""
        if not self._kinked or self._saved is None:
            return None
        return self._saved > 0


class Sigmoid(_Elementwise):
    r"""Logistic sigmoid, :math:`y = 1/(1 + e^{-x})`; :math:`dy/dx = y(1-y)` (saturates: at most 1/4).

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.Sigmoid()(np.zeros(2, np.float32))
        array([0.5, 0.5], dtype=float32)

    Args:
        inplace (bool): write y into x's array (the backward reads y). Default False.
    """
    _op = "sigmoid"


class Tanh(_Elementwise):
    r"""Hyperbolic tangent, :math:`y = \tanh x`; :math:`dy/dx = 1 - y^2` (zero-centred, still saturates).

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.Tanh()(np.zeros(2, np.float32))
        array([0., 0.], dtype=float32)

    Args:
        inplace (bool): write y into x's array (the backward reads y). Default False.
    """
    _op = "tanh"


@_fusable
class ReLU(_Elementwise):
    r"""Rectified linear unit, :math:`y = \max(0, x)`; :math:`dy/dx = 1[x > 0]` (read from the output).

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.ReLU()(np.array([-1.0, 2.0], np.float32))
        array([0., 2.], dtype=float32)

    Args:
        inplace (bool): write y into x's array (no new array; the backward reads y). Default False.
    """
    _op = "relu"
    _kinked = True


class LeakyReLU(_Elementwise):
    r"""Leaky ReLU, :math:`y = x` if :math:`x > 0` else :math:`s\,x`.

    Args:
        negative_slope (float): s. Default 0.01.
        inplace (bool): write y into x's array; the backward then reads y, which has x's sign only for s >= 0 (a
            negative s with inplace=True is a ValueError). Default False.

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.LeakyReLU(0.1)(np.array([-1.0, 2.0], np.float32))
        array([-0.1,  2. ], dtype=float32)
    """
    _op = "leaky_relu"
    _saves = "x"
    _kinked = True
    _y_serves_backward = True

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__(inplace)
        self.negative_slope = ops._finite_number("LeakyReLU", "negative_slope", negative_slope)
        if self.inplace and self.negative_slope < 0:
            raise ValueError(f"LeakyReLU: inplace=True needs negative_slope >= 0 (the backward reads the sign of y, "
                             f"which a negative slope flips), got {self.negative_slope}")

    def _args(self):
        return (self.negative_slope,)

    def _settings_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(_Elementwise):
    r"""Exponential linear unit, :math:`y = x` if :math:`x > 0` else :math:`\alpha(e^x - 1)`; the backward reads y:
    :math:`dy/dx = 1` or :math:`y + \alpha`.

    Args:
        alpha (float): :math:`\alpha \ge 0`. Default 1.0.
        inplace (bool): write y into x's array (the backward reads y). Default False.

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.ELU()(np.array([0.0, 1.0], np.float32))
        array([0., 1.], dtype=float32)
    """
    _op = "elu"
    _kinked = True

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__(inplace)
        self.alpha = ops._elu_alpha("ELU", alpha)

    def _args(self):
        return (self.alpha,)

    def _settings_repr(self):
        return f"alpha={self.alpha}"


class SELU(_Elementwise):
    r"""Scaled ELU (Klambauer et al., 2017), :math:`y = \lambda x` if :math:`x > 0` else
    :math:`\lambda\alpha(e^x - 1)` with :math:`\lambda \approx 1.0507`, :math:`\alpha \approx 1.6733`.

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.SELU()(np.zeros(1, np.float32))
        array([0.], dtype=float32)

    Args:
        inplace (bool): write y into x's array (the backward reads y). Default False.
    """
    _op = "selu"
    _kinked = True


class GELU(_Elementwise):
    r"""Gaussian error linear unit, :math:`y = x\,\Phi(x)` (``approximate="none"``) or its tanh approximation
    :math:`\tfrac{x}{2}(1 + \tanh(\sqrt{2/\pi}(x + 0.044715x^3)))` (``approximate="tanh"``).

    Args:
        approximate (str): "none" (default) or "tanh".

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.GELU()(np.zeros(1, np.float32))
        array([0.], dtype=float32)
    """
    _op = "gelu"
    _saves = "x"

    def __init__(self, approximate="none"):
        super().__init__()
        ops._gelu_code("GELU", approximate)
        self.approximate = approximate

    def _args(self):
        return (self.approximate,)

    def _settings_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(_Elementwise):
    r"""SiLU / Swish, :math:`y = x\,\sigma(x)`; :math:`dy/dx = \sigma(x)(1 + x(1 - \sigma(x)))`.

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.SiLU()(np.zeros(1, np.float32))
        array([0.], dtype=float32)
    """
    _op = "silu"
    _saves = "x"


class PReLU(Module):
    r"""Parametric ReLU (He et al., 2015): :math:`y = x` if :math:`x > 0` else :math:`\alpha_c x`, with learnt
    slopes: one shared (``num_parameters=1``) or one per channel of axis 1.

    :math:`\partial L/\partial \alpha_c = \sum_{i \in c} dout_i \min(x_i, 0)`, summed in float64.

    Args:
        num_parameters (int): 1 or C, the size of axis 1 of the input. Default 1.
        init (float): initial slope. Default 0.25.
        dtype: keyword-only (PyTorch's parameter in its place is ``device``); float32 (default) or float64.

    Shape:
        x (N, C, *) -> same; alpha (num_parameters,).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.PReLU()(np.array([-4.0, 2.0], np.float32))
        array([-1.,  2.], dtype=float32)
    """

    def __init__(self, num_parameters=1, init=0.25, *, dtype=np.float32):
        super().__init__()
        self.num_parameters = positive_int("PReLU", "num_parameters", num_parameters)
        value = ops._finite_number("PReLU", "init", init)
        self.alpha = Parameter(np.full(self.num_parameters, value, dtype=float_dtype("PReLU", dtype)))
        self._x = None

    def forward(self, x):
        x = native(x)
        if x.dtype != self.alpha.data.dtype:
            raise TypeError(f"{self!r}: input must have alpha's dtype {self.alpha.data.dtype}, got {describe(x)}")
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise ValueError(f"{self!r}: expected input of shape (N, {self.num_parameters}, *) (one slope per channel "
                             f"of axis 1), got {describe(x)}")
        y = ops.prelu_forward(x, self.alpha.data, out=_reused_like(x))
        self._x = x
        return y

    def backward(self, dout, *, input_grad=True):
        x = _cached(self, "_x")
        dout = _check_dout(self, dout, x)
        dx, dalpha = ops.prelu_backward(dout, x, self.alpha.data, out=_reused_like(x) if input_grad else None)
        if self.alpha.requires_grad:
            self.alpha.accumulate(dalpha)
        return dx if input_grad else None

    def kink_state(self):
        return None if self._x is None else self._x > 0

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Maxout(Module):
    r"""Maxout unit (Goodfellow et al., 2013): k linear pieces per output unit, the largest one wins,
    :math:`y_j = \max_{p<k} (x W_p^T + b_p)_j`.

    It owns its pieces as one :class:`Linear` of ``out_features * pieces`` outputs in the piece-major layout of
    :func:`cynet.ops.maxout_forward` (column ``p*out_features + j`` is piece p of unit j). The gradient reaches only
    the winning piece (ties: the lowest piece index).

    Args:
        in_features (int): D.
        out_features (int): M, the number of maxout units.
        pieces (int): k >= 1. Default 2.
        bias (bool), init, dtype, generator: as for :class:`Linear`.

    Shape:
        x (N, D) -> y (N, M); ``linear.weight`` (k*M, D).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.Maxout(8, 4, pieces=3)(np.ones((2, 8), np.float32)).shape
        (2, 4)
    """

    def __init__(self, in_features, out_features, pieces=2, bias=True, *, init="default", dtype=np.float32,
                 generator=None):
        super().__init__()
        self.pieces = positive_int("Maxout", "pieces", pieces)
        self.out_features = positive_int("Maxout", "out_features", out_features)
        self.linear = Linear(in_features, self.out_features * self.pieces, bias=bias, init=init, dtype=dtype,
                             generator=generator)
        self._indices = None

    def forward(self, x):
        x = native(x)
        name = f"Maxout({self.extra_repr()})"      # named here, not by the inner Linear of pieces * out_features
        if x.ndim != 2 or x.shape[1] != self.linear.in_features:
            raise ValueError(f"{name}: expected input of shape (N, {self.linear.in_features}), got {describe(x)}")
        dtype = self.linear.weight.data.dtype
        if x.dtype != dtype:
            raise TypeError(f"{name}: input must have the weights' dtype {dtype}, got {describe(x)} "
                            f"({dtype_remedy(x.dtype)})")
        z = self.linear(x)
        shape = (z.shape[0], self.out_features)     # outputs and winners from the pool, as every layer's output
        y, self._indices = ops.maxout_forward(z, self.pieces, out=reuse.empty(shape, dtype),
                                              indices_out=reuse.empty(shape, np.int32))
        return y

    def backward(self, dout, *, input_grad=True):
        indices = _cached(self, "_indices")
        dout = native(dout)
        dtype = self.linear.weight.data.dtype
        if dout.shape != indices.shape or dout.dtype != dtype:     # named here, not by the inner Linear
            raise ValueError(f"Maxout({self.extra_repr()}): dout must be a {dtype} array of shape {indices.shape} "
                             f"(the forward's output), got {describe(dout)}")
        dz = ops.maxout_backward(dout, indices, self.pieces,
                                 out=reuse.empty((indices.shape[0], self.linear.out_features), dtype))
        return self.linear.backward(dz, input_grad=input_grad)

    def kink_state(self):
        return self._indices

    def extra_repr(self):
        return f"in_features={self.linear.in_features}, out_features={self.out_features}, pieces={self.pieces}"


class DropConnectLinear(Linear):
    r"""A fully connected layer with DropConnect (Wan et al., 2013): in training each *weight*, rather than each
    activation as in :class:`Dropout`, is dropped with probability p, the survivors scaled by :math:`1/(1-p)`.

    .. math::
        y = x \tilde W^T + b, \qquad \tilde W = W \odot M / (1 - p), \quad M_{kj} \sim \text{Bernoulli}(1 - p)

    One mask per forward pass, shared by the batch (the paper draws one per example, which costs a weight matrix per
    example); the bias is not dropped. Backward: :math:`dW = (dout^T x) \odot M / (1 - p)`,
    :math:`dx = dout\,\tilde W`. Evaluation uses :math:`W` itself (the inverted scaling makes its expectation
    :math:`\tilde W`'s; the paper's moment-matching inference is not done). ``reuse_mask = True`` keeps the last
    mask for the next passes (gradient checks set it).

    Args:
        in_features, out_features, bias, init, dtype: as :class:`Linear`.
        p (float): drop probability of each weight, in [0, 1). Default 0.5.
        generator: a seed or :class:`numpy.random.Generator` for the initial weights and then the masks (default:
            the global one).

    Shape:
        x (N, D) -> y (N, M); weight (M, D), bias (M,).

    Example:
        >>> import numpy as np, cynet
        >>> from cynet import nn
        >>> layer = nn.DropConnectLinear(100, 50, p=0.5, init="he", generator=0)
        >>> y = layer(np.ones((2, 100), np.float32))
        >>> kept = layer._mask != 0                            # this pass's surviving weights
        >>> bool(abs(kept.mean() - 0.5) < 0.02), sorted(set(layer._mask.ravel().tolist()))
        (True, [0.0, 2.0])
    """

    def __init__(self, in_features, out_features, bias=True, *, init="default", dtype=np.float32, generator=None,
                 p=0.5):
        generator = None if generator is None else resolve_generator(generator)
        super().__init__(in_features, out_features, bias=bias, init=init, dtype=dtype, generator=generator)
        p = ops._finite_number("DropConnectLinear", "p", p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropConnectLinear: p must lie in [0, 1), got {p}")
        self.p = p
        self.generator = generator
        self.reuse_mask = False
        self._mask = None           # keep-mask scaled by 1/(1-p), the weights' dtype; None when the weights are W
        self._dropped = None        # W * mask of the last training pass

    def _forward_weight(self):
        w = self.weight.data
        if not self.training or self.p == 0.0:
            self._mask = self._dropped = None
            return w
        if not (self.reuse_mask and self._mask is not None and self._mask.shape == w.shape):
            keep = resolve_generator(self.generator).random(w.shape, dtype=w.dtype) >= self.p
            self._mask = keep.astype(w.dtype)
            self._mask *= w.dtype.type(1.0 / (1.0 - self.p))
        self._dropped = np.multiply(w, self._mask)
        return self._dropped

    def _backward_weight(self):
        return self.weight.data if self._dropped is None else self._dropped

    def _cast_state(self, dtype):
        # a kept mask in the new dtype: the same weights dropped, scaled by 1/(1 - p) in that dtype (reuse_mask)
        if self._mask is not None and self._mask.dtype != dtype:
            self._mask = np.where(self._mask != 0, np.dtype(dtype).type(1.0 / (1.0 - self.p)), np.dtype(dtype).type(0))
        if self._dropped is not None and self._dropped.dtype != dtype:
            self._dropped = self._dropped.astype(dtype)

    def _weight_gradient(self, dout, x, grad, fresh):
        if self._mask is None:
            return super()._weight_gradient(dout, x, grad, fresh)
        masked = np.matmul(dout.T, x, out=reuse.empty(grad.shape, grad.dtype))     # (a pooled array, not a fresh one)
        masked *= self._mask
        if fresh:
            np.copyto(grad, masked)
        else:
            grad += masked

    def extra_repr(self):
        return f"{super().extra_repr()}, p={self.p}"


# --- Dropout, Flatten ------------------------------------------------------------------------------------------------
NS_DROPOUT = 0.7   # ns per element of the mask and product pass on one core (AMD Zen 4: AVX-512 0.73, AVX2 2.1)


def _dropout_mask(p, generator, shape, dtype, x=None, y=None, reuse=None):
    """A dropout mask of ``shape`` in ``dtype``: 1 / (1 - p) where kept, 0 elsewhere, keyed by one 64-bit draw from
    ``generator``; given x (C-contiguous, of the mask's shape) and y, also y = x * mask in the same pass (y may be x).
    ``reuse``: the previous mask, overwritten when it has the shape and dtype (no fresh 1 MB array per pass: freeing
    and allocating those made the heap shrink and fault its pages in again, 0.2 -> 0.4 ms per (256, 1024) pass)."""
    key = int(generator.integers(0, 2**64, dtype=np.uint64))
    threshold = round(p * 2.0**32)
    keep_none = p == 1.0 or threshold >= 2**32
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    kernel_dtype = dtype if dtype in KERNEL_DTYPES else np.dtype(np.float64)
    if reuse is not None and reuse.shape == shape and reuse.dtype == kernel_dtype and reuse.flags.c_contiguous:
        mask = reuse
    else:
        mask = np.empty(shape, kernel_dtype)
    load("dropout").dropout_mask(mask.reshape(-1), key, 0 if keep_none else threshold, keep_none, scale,
                                 kernel_threads(mask.size, NS_DROPOUT), None if x is None else x.reshape(-1),
                                 None if y is None else y.reshape(-1))
    return mask if mask.dtype == dtype else mask.astype(dtype)


class Dropout(Module):
    r"""Inverted dropout: in training, zero each element with probability p and scale the survivors by
    :math:`1/(1-p)`, so evaluation (an identity) needs no rescaling.

    .. math:: y = x \odot m / (1 - p), \quad m_i \sim \text{Bernoulli}(1 - p)

    Each mask is keyed by one 64-bit draw from ``generator`` (default: the global generator, reseeded by
    :func:`cynet.manual_seed`): element i is kept when word i of a counter-based generator (Philox4x32-10, keyed so,
    counter i // 4) is at least :math:`\mathrm{round}(p\,2^{32})`, computed on the kernels' threads in the pass that
    writes y (``cynet._kernels.dropout``): the same mask for any thread count. Setting ``reuse_mask = True`` makes the
    next forward passes reuse the last mask (gradient checks use it).

    In evaluation mode, and in training with p = 0, the forward returns x itself (no copy, unlike PyTorch's new
    tensor): an in-place module after it would write into x, which :class:`cynet.nn.Sequential` refuses when an
    earlier module still needs x.

    Args:
        p (float): drop probability in [0, 1]. Default 0.5.
        inplace (bool): in training, write y into x's array (the backward needs only the mask); see
            :class:`cynet.nn.Sequential` for what it checks first. Default False. Second, as PyTorch's.
        generator: keyword-only; a seed or :class:`numpy.random.Generator` (default: the global one). A
            ``copy.deepcopy`` of the layer (or of a model holding it) copies the generator's state, so the copy
            draws the same masks as the original from then on; give a copy its own (``copy.generator =
            numpy.random.default_rng(k)``) for independent masks.

    Shape: any -> same.

    Example:
        >>> import numpy as np, cynet
        >>> from cynet import nn
        >>> _ = cynet.manual_seed(0)
        >>> drop = nn.Dropout(0.5)
        >>> sorted(set(drop(np.ones(1000, np.float32)).tolist()))
        [0.0, 2.0]
        >>> drop.eval()(np.ones(2, np.float32))
        array([1., 1.], dtype=float32)
    """

    def __init__(self, p=0.5, inplace=False, *, generator=None):
        super().__init__()
        name = type(self).__name__
        p = ops._finite_number(name, "p", p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = None if generator is None else resolve_generator(generator)
        self.inplace = _inplace_flag(name, inplace)
        self.reuse_mask = False
        self._mask = None          # keep-mask scaled by 1/(1-p), in x's dtype; None in eval or when p == 0
        self._shape = None         # the shape and dtype of the last input (the backward's dout)
        self._dtype = None
        self._ran = False          # a forward has run (backward before it is an error, as for every module)

    def _mask_shape(self, x):
        """The shape of the mask drawn for x (broadcast against it): one draw per element."""
        return x.shape

    def _overwrites_input(self):
        return self.inplace and self.training and self.p > 0.0

    def forward(self, x):
        if self._overwrites_input():
            _check_writeable_input(self, x)
            _refuse_overwriting_protected(self, x)
        x = native(x)
        if x.dtype.kind != "f":
            raise TypeError(f"{self!r}: input must be floating point, got {describe(x)}")
        if not 0.0 <= self.p <= 1.0:             # (checked again: an attribute a user may set; p = 2 zeroed all)
            raise ValueError(f"{self!r}: p must lie in [0, 1], got {self.p!r}")
        self._ran = True
        self._shape, self._dtype = x.shape, x.dtype      # what the backward's dout must be, in every mode
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        shape = self._mask_shape(x)
        out = x if self.inplace else None
        if self.reuse_mask and self._mask is not None and self._mask.shape == shape and self._mask.dtype != x.dtype:
            # the same units kept, the mask in x's dtype (the backward takes dout in the output's dtype)
            scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
            self._mask = np.where(self._mask != 0, x.dtype.type(scale), x.dtype.type(0))
        if not (self.reuse_mask and self._mask is not None and self._mask.shape == shape):
            fused = shape == x.shape and x.dtype in KERNEL_DTYPES and x.flags.c_contiguous
            if fused and out is None:
                out = reuse.like(x)
            self._mask = _dropout_mask(self.p, resolve_generator(self.generator), shape, x.dtype,
                                       x if fused else None, out if fused else None, reuse=self._mask)
            if fused:
                return out
        return np.multiply(x, self._mask, out=out if out is not None else reuse.like(x))

    def backward(self, dout, *, input_grad=True):
        if not self._ran:
            raise RuntimeError(f"{self!r}: backward called before forward (nothing cached)")
        if not input_grad:
            return None
        dout = native(dout)
        # checked in eval mode and for p = 0 too, where dout is passed on: a (2, 5) dout for a (4, 3) input was
        if dout.shape != self._shape or dout.dtype != self._dtype:
            raise ValueError(f"{self!r}: dout must be a {self._dtype} array of shape {self._shape} (the "
                             f"forward's output), got {describe(dout)}")
        if self._mask is None:
            return dout
        return np.multiply(dout, self._mask, out=reuse.empty(dout.shape, dout.dtype))

    def extra_repr(self):
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")


class Flatten(Module):
    r"""Flatten the axes ``start_dim`` to ``end_dim`` into one, in C (row-major) order: (N, C, H, W) -> (N, C*H*W).

    With the default ``start_dim=1``, each example's entries are laid out one after the other:

    .. math:: y_{n,\, (c H + h) W + w} = x_{n, c, h, w}, \qquad dx = dout \text{ reshaped to the shape of } x

    Forward and backward are reshapes: views of a C-contiguous input, no copy, no arithmetic.

    Args:
        start_dim (int): first axis to flatten; negative counts from the last axis, as in PyTorch. Default 1.
        end_dim (int): last axis to flatten (included), at or after ``start_dim``; negative counts from the last
            axis. Default -1 (the last axis), as in PyTorch.

    Shape:
        x :math:`(d_0, \dots, d_{s-1}, d_s, \dots, d_e, d_{e+1}, \dots)` -> y :math:`(d_0, \dots, d_{s-1},
        d_s \cdots d_e, d_{e+1}, \dots)` with s = ``start_dim``, e = ``end_dim``; e.g. (N, C, H, W) -> (N, C*H*W)
        for the defaults, (N, C, H*W) for ``Flatten(2)``, (N*C, H, W) for ``Flatten(0, 1)``.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> nn.Flatten()(np.zeros((2, 3, 32, 32), np.float32)).shape
        (2, 3072)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Flatten: {name} must be an int, got {value!r}")
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._shape = None
        self._out_shape = None

    def forward(self, x):
        x = native(x)
        start = self.start_dim + x.ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + x.ndim if self.end_dim < 0 else self.end_dim
        if not 0 <= start < x.ndim:
            raise ValueError(f"{self!r}: start_dim {self.start_dim} is not an axis of the input ({describe(x)})")
        if not 0 <= end < x.ndim:
            raise ValueError(f"{self!r}: end_dim {self.end_dim} is not an axis of the input ({describe(x)})")
        if end < start:
            raise ValueError(f"{self!r}: end_dim {self.end_dim} comes before start_dim {self.start_dim} for an input "
                             f"of {x.ndim} axes ({describe(x)})")
        self._shape = x.shape
        # the flattened length spelt out: NumPy cannot infer -1 when a kept axis has length 0
        self._out_shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
        return x.reshape(self._out_shape)

    def backward(self, dout, *, input_grad=True):
        shape = _cached(self, "_shape")
        if not input_grad:
            return None
        dout = native(dout)
        # the output's shape, not only its size: a transposed dout ((D, N) for (N, D)) reshaped silently was a wrong dx
        if dout.shape != self._out_shape:
            raise ValueError(f"{self!r}: dout must have the forward's output shape {self._out_shape} (the input's "
                             f"{shape} flattened), got {describe(dout)}")
        return dout.reshape(shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    r"""The identity, :math:`y = x`, :math:`dx = dout`: a placeholder where a layer is switched off (an ablation, a
    BatchNorm replaced in an experiment), as ``torch.nn.Identity``. Any arguments are accepted and ignored.

    Forward returns x itself (no copy); an in-place module after it writes into x, which :class:`Sequential` checks
    as it does for any module that passes its input on.

    Shape: any -> same.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> x = np.ones(3, np.float32)
        >>> nn.Identity(54, unused="setting")(x) is x
        True
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, dout, *, input_grad=True):
        return dout if input_grad else None
