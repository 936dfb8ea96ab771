r"""Weight initialisers with the names and semantics of ``torch.nn.init``.

Every function fills its argument *in place* and returns it. The argument is a :class:`~cynet.nn.Parameter` (its
``data`` is filled) or a floating-point :class:`numpy.ndarray`. Random values are drawn in float64 from
``generator`` (``None``: the global generator that :func:`cynet.manual_seed` reseeds; an int: a fresh generator
seeded with it; or a :class:`numpy.random.Generator`) and then cast to the array's dtype, so float32 and float64
weights drawn from the same seed agree up to rounding.

Why the scale matters (CS231n, "Training Neural Networks I"): with weights too small the activations of a deep net
shrink towards zero layer after layer, too large and tanh/sigmoid units saturate; in both cases the gradients vanish.
The variance-preserving rules keep :math:`\mathrm{Var}(y) \approx \mathrm{Var}(x)` through a layer
:math:`y = W x`:

- Xavier/Glorot (tanh, linear units): :math:`\text{std} = g \sqrt{2 / (\text{fan\_in} + \text{fan\_out})}`;
- Kaiming/He (ReLU units, half of whose inputs are zeroed): :math:`\text{std} = g / \sqrt{\text{fan}}` with
  :math:`g = \sqrt 2`;
- orthogonal (deep and recurrent nets): :math:`W W^T = g^2 I` (or :math:`W^T W`);
- data-driven, :func:`lsuv_` (Mishkin & Matas): orthonormal weights scaled, layer after layer, until each layer's
  output on a batch of real inputs has unit variance, whatever the nonlinearities.

A uniform distribution :math:`U(-b, b)` has std :math:`b / \sqrt 3`, so the ``*_uniform_`` variants use
:math:`b = \sqrt 3 \cdot \text{std}`.

Weights follow PyTorch's layout ``(out_features, in_features, *receptive_field)``:
:func:`fan_in_and_fan_out` gives ``fan_in = in_features * receptive`` and ``fan_out = out_features * receptive``.

Example:
    >>> import numpy as np, cynet
    >>> from cynet import init
    >>> w = np.empty((256, 512), np.float32)
    >>> _ = cynet.manual_seed(0)
    >>> _ = init.kaiming_normal_(w, nonlinearity="relu")
    >>> round(float(w.std() * np.sqrt(512 / 2)), 1)
    1.0
"""
import collections
import math
import numbers

import numpy as np

from cynet._random import resolve_generator
from cynet._validation import describe

__all__ = [
    "calculate_gain", "fan_in_and_fan_out", "zeros_", "ones_", "constant_", "normal_", "uniform_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "default_bias_",
    "get_initializer", "INITIALIZERS", "lsuv_", "LSUVReport", "LSUVLayer",
]

_LINEAR_FNS = ("linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "sigmoid")
_NONLINEARITIES = _LINEAR_FNS + ("tanh", "relu", "leaky_relu", "selu")


# --- helpers ---------------------------------------------------------------------------------------------------------
def _array(fn, tensor):
    """The ndarray behind ``tensor`` (a Parameter's ``data`` or the array itself); TypeError otherwise."""
    array = tensor if isinstance(tensor, np.ndarray) else getattr(tensor, "data", None)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"cynet.init.{fn}: expected a Parameter or a numpy.ndarray, got {type(tensor).__name__}")
    if array.dtype.kind != "f":
        raise TypeError(f"cynet.init.{fn}: the array must be floating point (float32 or float64), "
                        f"got {describe(array)}")
    if not array.flags.writeable:
        raise ValueError(f"cynet.init.{fn}: the array is read-only ({describe(array)})")
    return array


def _real(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"cynet.init.{fn}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cynet.init.{fn}: {name} must be finite, got {value}")
    return value


def _fill(array, values):
    """Write float64 ``values`` into ``array`` (cast to its dtype)."""
    array[...] = values.astype(array.dtype, copy=False)


def _normal(fn, tensor, mean, std, generator):
    array = _array(fn, tensor)
    mean = _real(fn, "mean", mean)
    std = _real(fn, "std", std)
    if std < 0:
        raise ValueError(f"cynet.init.{fn}: std must be non-negative, got {std}")
    rng = resolve_generator(generator)
    _fill(array, rng.standard_normal(array.shape) * std + mean)
    return tensor


def _uniform(fn, tensor, low, high, generator):
    array = _array(fn, tensor)
    low = _real(fn, "low", low)
    high = _real(fn, "high", high)
    if low > high:
        raise ValueError(f"cynet.init.{fn}: low must be <= high, got low={low}, high={high}")
    rng = resolve_generator(generator)
    _fill(array, rng.uniform(low, high, size=array.shape))
    return tensor


# --- gain and fans ---------------------------------------------------------------------------------------------------
def calculate_gain(nonlinearity, param=None):
    r"""The recommended gain :math:`g` for a nonlinearity (the factor that keeps the activations' variance stable).

    ===================  ================================================
    nonlinearity         gain
    ===================  ================================================
    linear / identity    1 (also the conv names, as in PyTorch)
    sigmoid              1
    tanh                 5/3
    relu                 :math:`\sqrt 2`
    leaky_relu           :math:`\sqrt{2 / (1 + \text{negative\_slope}^2)}`
    selu                 3/4
    ===================  ================================================

    Args:
        nonlinearity (str): one of the names above.
        param (float, optional): the negative slope of ``leaky_relu``. Default 0.01.

    Returns:
        float: the gain.

    Raises:
        ValueError: unknown nonlinearity, or a slope that is not a number.

    Example:
        >>> from cynet import init
        >>> init.calculate_gain("leaky_relu", 0.2)  # sqrt(2 / 1.04)
        1.3867504905630728
    """
    if nonlinearity in _LINEAR_FNS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, numbers.Real) and math.isfinite(param):
            slope = float(param)
        else:
            raise ValueError(f"cynet.init.calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"cynet.init.calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
                     f"{', '.join(_NONLINEARITIES)}")


def fan_in_and_fan_out(tensor):
    """``(fan_in, fan_out)`` of a weight of shape ``(out_features, in_features, *receptive_field)``.

    :math:`\\text{fan\\_in} = \\text{in\\_features} \\cdot r` and :math:`\\text{fan\\_out} = \\text{out\\_features}
    \\cdot r`, with :math:`r` the product of the receptive-field sizes (1 for a Linear weight).

    Args:
        tensor (Parameter or ndarray): at least 2-d.

    Raises:
        ValueError: fewer than 2 dimensions (the fans of a bias or a scalar are undefined, as in PyTorch).

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> init.fan_in_and_fan_out(np.empty((64, 3, 5, 5)))   # a conv weight: 3*25 in, 64*25 out
        (75, 1600)
    """
    return _fans("fan_in_and_fan_out", tensor)


def _fans(fn, tensor):
    """fan_in_and_fan_out for the function ``fn`` of cynet.init (named in its errors)."""
    array = _array(fn, tensor)
    if array.ndim < 2:
        raise ValueError(f"cynet.init.{fn}: fan in and fan out can not be computed for a tensor with fewer than 2 "
                         f"dimensions, got {describe(array)}")
    receptive = int(np.prod(array.shape[2:], dtype=np.int64)) if array.ndim > 2 else 1
    return array.shape[1] * receptive, array.shape[0] * receptive


def _fan(fn, tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"cynet.init.{fn}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(fn, tensor)
    return fan_in if mode == "fan_in" else fan_out


# --- constant fills --------------------------------------------------------------------------------------------------
def constant_(tensor, value):
    """Fill with ``value``.

    Args:
        tensor (Parameter or ndarray): filled in place.
        value (float): the constant.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> init.constant_(np.empty(3), 0.5)
        array([0.5, 0.5, 0.5])
    """
    array = _array("constant_", tensor)
    array[...] = _real("constant_", "value", value)
    return tensor


def zeros_(tensor):
    """Fill with 0 (``constant_(tensor, 0)``). Fine for biases; for weights it makes every unit of a layer compute
    the same thing and receive the same gradient, so they never become different ("symmetry breaking" fails)."""
    array = _array("zeros_", tensor)
    array[...] = 0
    return tensor


def ones_(tensor):
    """Fill with 1 (``constant_(tensor, 1)``), e.g. a batch-norm scale."""
    array = _array("ones_", tensor)
    array[...] = 1
    return tensor


# --- plain random fills ----------------------------------------------------------------------------------------------
def normal_(tensor, mean=0.0, std=1.0, generator=None):
    r"""Fill with draws from :math:`\mathcal N(\text{mean}, \text{std}^2)`.

    Args:
        tensor (Parameter or ndarray): filled in place.
        mean (float): Default 0.
        std (float): non-negative. Default 1.
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.normal_(np.empty((100, 100)), std=0.01, generator=0)   # "small random numbers"
        >>> bool(abs(w.std() - 0.01) < 1e-3)
        True
    """
    return _normal("normal_", tensor, mean, std, generator)


def uniform_(tensor, low=0.0, high=1.0, generator=None):
    r"""Fill with draws from :math:`U(\text{low}, \text{high})`.

    Args:
        tensor (Parameter or ndarray): filled in place.
        low (float): Default 0.
        high (float): at least ``low``. Default 1.
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.uniform_(np.empty(1000), -2, 2, generator=0)
        >>> bool(w.min() >= -2 and w.max() < 2)
        True
    """
    return _uniform("uniform_", tensor, low, high, generator)


# --- variance-scaling initialisers -----------------------------------------------------------------------------------
def xavier_uniform_(tensor, gain=1.0, generator=None):
    r"""Glorot/Xavier uniform: :math:`U(-b, b)` with
    :math:`b = g \sqrt{6 / (\text{fan\_in} + \text{fan\_out})}` (std :math:`g \sqrt{2 / (\text{fan\_in} +
    \text{fan\_out})}`).

    Args:
        tensor (Parameter or ndarray): at least 2-d, filled in place.
        gain (float): Default 1 (see :func:`calculate_gain`).
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.xavier_uniform_(np.empty((300, 300)), generator=0)
        >>> bool(np.abs(w).max() <= 0.1)    # b = sqrt(6 / 600)
        True
    """
    fan_in, fan_out = _fans("xavier_uniform_", tensor)
    gain = _real("xavier_uniform_", "gain", gain)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    bound = math.sqrt(3.0) * std
    return _uniform("xavier_uniform_", tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    r"""Glorot/Xavier normal: :math:`\mathcal N(0, \text{std}^2)` with
    :math:`\text{std} = g \sqrt{2 / (\text{fan\_in} + \text{fan\_out})}`.

    Args:
        tensor (Parameter or ndarray): at least 2-d, filled in place.
        gain (float): Default 1 (see :func:`calculate_gain`).
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.xavier_normal_(np.empty((400, 400)), generator=0)
        >>> bool(abs(w.std() / np.sqrt(2 / 800) - 1) < 0.02)
        True
    """
    fan_in, fan_out = _fans("xavier_normal_", tensor)
    gain = _real("xavier_normal_", "gain", gain)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    return _normal("xavier_normal_", tensor, 0.0, std, generator)


def _kaiming_std(fn, tensor, a, mode, nonlinearity):
    fan = _fan(fn, tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan) if fan else 0.0


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    r"""He/Kaiming uniform: :math:`U(-b, b)` with :math:`b = g \sqrt{3 / \text{fan}}`, :math:`g` =
    ``calculate_gain(nonlinearity, a)``.

    ``a=sqrt(5)`` (with the default leaky_relu) gives :math:`b = 1/\sqrt{\text{fan\_in}}`: PyTorch's default for
    ``nn.Linear`` (``init="default"`` here).

    Args:
        tensor (Parameter or ndarray): at least 2-d, filled in place.
        a (float): negative slope of the leaky_relu that follows. Default 0.
        mode (str): ``"fan_in"`` (keeps the forward variance, default) or ``"fan_out"`` (keeps the backward one).
        nonlinearity (str): ``"relu"`` or ``"leaky_relu"`` (default) are the intended ones.
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.kaiming_uniform_(np.empty((10, 400)), nonlinearity="relu", generator=0)
        >>> bool(np.abs(w).max() <= np.sqrt(6 / 400))
        True
    """
    if _array("kaiming_uniform_", tensor).size == 0:
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std("kaiming_uniform_", tensor, a, mode, nonlinearity)
    return _uniform("kaiming_uniform_", tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    r"""He/Kaiming normal: :math:`\mathcal N(0, \text{std}^2)` with :math:`\text{std} = g / \sqrt{\text{fan}}`,
    :math:`g` = ``calculate_gain(nonlinearity, a)``; with ReLU, :math:`\text{std} = \sqrt{2 / \text{fan\_in}}`
    (He et al., 2015: half of a ReLU's inputs are zeroed, so the variance needs the factor 2).

    Args:
        tensor (Parameter or ndarray): at least 2-d, filled in place.
        a (float): negative slope of the leaky_relu that follows. Default 0.
        mode (str): ``"fan_in"`` (default) or ``"fan_out"``.
        nonlinearity (str): ``"relu"`` or ``"leaky_relu"`` (default) are the intended ones.
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.kaiming_normal_(np.empty((400, 200)), nonlinearity="relu", generator=0)
        >>> bool(abs(w.std() / np.sqrt(2 / 200) - 1) < 0.02)
        True
    """
    if _array("kaiming_normal_", tensor).size == 0:
        return tensor
    std = _kaiming_std("kaiming_normal_", tensor, a, mode, nonlinearity)
    return _normal("kaiming_normal_", tensor, 0.0, std, generator)


def orthogonal_(tensor, gain=1.0, generator=None):
    r"""A (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2013), as ``torch.nn.init.orthogonal_``.

    The weight is viewed as a ``rows x cols`` matrix (rows = first axis, cols = the product of the others). A
    Gaussian matrix is factored :math:`A = QR` (transposed first when rows < cols) and :math:`Q` is multiplied by
    :math:`\mathrm{sign}(\mathrm{diag}(R))` so the result is uniformly distributed over the orthogonal matrices.
    Then :math:`W W^T = g^2 I` when rows <= cols, :math:`W^T W = g^2 I` otherwise.

    Args:
        tensor (Parameter or ndarray): at least 2-d, filled in place.
        gain (float): Default 1.
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Raises:
        ValueError: fewer than 2 dimensions.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.orthogonal_(np.empty((3, 5)), generator=0)
        >>> np.allclose(w @ w.T, np.eye(3))
        True
    """
    array = _array("orthogonal_", tensor)
    if array.ndim < 2:
        raise ValueError(f"cynet.init.orthogonal_: only tensors with 2 or more dimensions are supported, "
                         f"got {describe(array)}")
    gain = _real("orthogonal_", "gain", gain)
    if array.size == 0:
        return tensor
    rows = array.shape[0]
    cols = array.size // rows
    flat = resolve_generator(generator).standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))       # column j times sign(R_jj): makes the factorisation unique
    if rows < cols:
        q = q.T
    _fill(array, (q * gain).reshape(array.shape))
    return tensor


def default_bias_(bias, fan_in, generator=None):
    r"""PyTorch's default ``nn.Linear`` bias: :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})`
    (zeros when ``fan_in`` is 0).

    Args:
        bias (Parameter or ndarray): filled in place.
        fan_in (int): the layer's ``in_features`` (times the receptive field for a convolution).
        generator: ``None`` (the global generator), an int seed or a :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> b = init.default_bias_(np.empty(100), fan_in=25, generator=0)
        >>> bool(np.abs(b).max() <= 0.2)
        True
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, numbers.Integral) or fan_in < 0:
        raise ValueError(f"cynet.init.default_bias_: fan_in must be a non-negative int, got {fan_in!r}")
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return _uniform("default_bias_", bias, -bound, bound, generator)


# --- names for modules' init= argument -------------------------------------------------------------------------------
def _zeros(w, generator=None):
    return zeros_(w)


def _small_normal(w, generator=None):
    return normal_(w, 0.0, 0.01, generator=generator)


def _xavier_uniform(w, generator=None):
    return xavier_uniform_(w, generator=generator)


def _xavier_normal(w, generator=None):
    return xavier_normal_(w, generator=generator)


def _kaiming_uniform_relu(w, generator=None):
    return kaiming_uniform_(w, nonlinearity="relu", generator=generator)


def _kaiming_normal_relu(w, generator=None):
    return kaiming_normal_(w, nonlinearity="relu", generator=generator)


def _orthogonal(w, generator=None):
    return orthogonal_(w, generator=generator)


def _pytorch_default(w, generator=None):
    return kaiming_uniform_(w, a=math.sqrt(5), generator=generator)


#: The names :func:`get_initializer` understands, and what each one does to a weight.
INITIALIZERS = {
    "default": _pytorch_default,           # PyTorch's nn.Linear: kaiming_uniform_(a=sqrt(5)), U(+-1/sqrt(fan_in))
    "zeros": _zeros,                       # symmetric: every unit of the layer stays identical
    "normal": _small_normal,               # "small random numbers": N(0, 0.01^2)
    "xavier_uniform": _xavier_uniform,
    "xavier_normal": _xavier_normal,
    "xavier": _xavier_normal,
    "kaiming_uniform": _kaiming_uniform_relu,
    "kaiming_normal": _kaiming_normal_relu,
    "he": _kaiming_normal_relu,
    "orthogonal": _orthogonal,
}


def get_initializer(spec):
    r"""The weight initialiser named by ``spec``, as a callable ``init(weight, generator=None)`` (modules' ``init=``).

    =====================  =======================================================
    name                   weight
    =====================  =======================================================
    ``"default"``          PyTorch's Linear default, ``kaiming_uniform_(a=sqrt(5))``
    ``"zeros"``            all zeros (a lecture counter-example)
    ``"normal"``           :math:`\mathcal N(0, 0.01^2)`, "small random numbers"
    ``"xavier_uniform"``   :func:`xavier_uniform_`
    ``"xavier_normal"``    :func:`xavier_normal_`; alias ``"xavier"``
    ``"kaiming_uniform"``  :func:`kaiming_uniform_` with ``nonlinearity="relu"``
    ``"kaiming_normal"``   :func:`kaiming_normal_` with ``nonlinearity="relu"``; alias ``"he"``
    ``"orthogonal"``       :func:`orthogonal_`
    =====================  =======================================================

    Args:
        spec (str or callable): a name above, or ``f(weight_array, generator)`` that fills the float ndarray it is
            given in place (``generator`` is a :class:`numpy.random.Generator`).

    Returns:
        callable: ``init(weight, generator=None)`` filling a Parameter or ndarray in place and returning it.

    Raises:
        ValueError: unknown name. TypeError: neither a string nor a callable.

    Example:
        >>> import numpy as np
        >>> from cynet import init
        >>> w = init.get_initializer("he")(np.empty((50, 200)), generator=0)
        >>> bool(abs(w.std() / np.sqrt(2 / 200) - 1) < 0.05)
        True
    """
    if isinstance(spec, str):
        try:
            return INITIALIZERS[spec]
        except KeyError:
            raise ValueError(f"cynet.init.get_initializer: unknown initialiser {spec!r}; expected one of "
                             f"{', '.join(repr(k) for k in INITIALIZERS)} or a callable f(weight, generator)") from None
    if callable(spec):
        def custom(w, generator=None):
            spec(_array("get_initializer", w), resolve_generator(generator))
            return w

        custom.__name__ = getattr(spec, "__name__", "custom")
        return custom
    raise TypeError(f"cynet.init.get_initializer: expected an initialiser name or a callable, got {spec!r}")


# --- data-driven: layer-sequential unit-variance initialisation -------------------------------------------------------
LSUVLayer = collections.namedtuple("LSUVLayer", "name kind std_before std_after scale iterations")
LSUVLayer.__doc__ = "One layer's record from :func:`lsuv_`: ``(name, kind, std_before, std_after, scale, iterations)``."


class LSUVReport(list):
    """The layers :func:`lsuv_` scaled, in forward order (a list of :class:`LSUVLayer`), printable as a table."""

    def __str__(self):
        lines = [f"{'layer':<12} {'kind':<8} {'std before':>11} {'std after':>10} {'scale':>10} {'iterations':>10}"]
        for r in self:
            lines.append(f"{r.name:<12} {r.kind:<8} {r.std_before:>11.4g} {r.std_after:>10.4g} {r.scale:>10.4g} "
                         f"{r.iterations:>10}")
        return "\n".join(lines)


def _output(model, x, layer_name, layer):
    """``(std, output)``: ``layer``'s output (float64) in a forward pass of ``x`` through ``model``, and its std."""
    from cynet.diagnostics.init_lab import recording

    outputs = []
    with recording([(layer_name, layer)], outputs):
        model.forward(x)
    output = np.asarray(outputs[-1][2], dtype=np.float64)
    std = float(np.std(output))
    if not math.isfinite(std) or std == 0:
        raise ValueError(f"lsuv_: the output of layer {layer_name!r} ({type(layer).__name__}) has std {std} on this "
                         f"batch: nothing to scale (constant input or dead units)")
    return std, output


def lsuv_(model, x, *, target_std=1.0, tol=0.02, max_iter=10, orthogonal=True, generator=None):
    r"""Layer-sequential unit-variance (LSUV) initialisation (Mishkin & Matas, "All you need is a good init", 2016):
    the data-driven initialisation the lecture lists after Xavier and He.

    Every layer with a weight matrix (Linear, Maxout: a ``weight`` of two or more dimensions), in forward order:
    optionally re-drawn orthonormal (:func:`orthogonal_`), then scaled by ``target_std / std`` where ``std`` is the
    standard deviation of its output on the batch ``x``, repeated until that std is within ``tol`` (relative) of
    ``target_std`` or ``max_iter`` scalings were made. Each layer is measured after the layers before it are done,
    so every layer's output on this batch ends with unit variance whatever the nonlinearities in between: unlike the
    closed-form rules, the scale comes from the data. A weight tied between layers (one :class:`Parameter`, e.g. a
    :meth:`~cynet.nn.Module.shared_copy`) is set up for the first layer using it only: scaling it again for a later
    one would undo the first's unit variance. The forward passes run in evaluation mode (no dropout;
    batch norm with its running statistics), and every module's mode is restored afterwards. Biases are left as they
    are: the measured std includes them, so with inputs of a small scale a layer may need several scalings.

    .. math:: W_\ell \leftarrow W_\ell \cdot \frac{\sigma^*}{\operatorname{std}(y_\ell(x))}

    Args:
        model (Module): the model (modified in place).
        x (ndarray): a batch of inputs of the model's dtype (a few hundred examples).
        target_std (float): :math:`\sigma^*` > 0. Default 1.
        tol (float): relative tolerance on the std, > 0. Default 0.02.
        max_iter (int): most scalings per layer, >= 1. Default 10.
        orthogonal (bool): orthonormal weights first, as in the paper. Default True.
        generator: seed or Generator for the orthonormal draw (default: the global one).

    Returns:
        LSUVReport: per layer its name, kind, output std with the weights it had (its inputs already scaled) and
        after, the total scale applied after the orthonormal draw, and the number of scalings.

    Raises:
        ValueError: no layer with a weight matrix, invalid settings, or a layer whose output has zero or non-finite
            std on ``x`` (nothing to scale: constant input or dead units).

    Example:
        >>> import numpy as np, cynet
        >>> from cynet import init, nn
        >>> _ = cynet.manual_seed(0)
        >>> model = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(64, 64, init="normal"), nn.Tanh())])
        >>> x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
        >>> report = init.lsuv_(model, x)
        >>> [round(r.std_after, 1) for r in report]
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    from cynet.nn.module import Module, Parameter

    name = "lsuv_"
    if not isinstance(model, Module):
        raise TypeError(f"{name}: model must be a cynet.nn.Module, got {type(model).__name__}")
    target_std = _real(name, "target_std", target_std)
    tol = _real(name, "tol", tol)
    if target_std <= 0 or tol <= 0:
        raise ValueError(f"{name}: target_std and tol must be > 0, got {target_std} and {tol}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"{name}: max_iter must be an int >= 1, got {max_iter!r}")
    from cynet.nn.normalization import normalization_parameters
    gains = normalization_parameters(model)        # a LayerNorm over (C, D) has a 2-d gain: not a weight matrix
    layers, seen = [], set(gains)      # a tied weight is set up by the first layer using it, and left alone after
    for layer_name, m in model.named_modules():
        if isinstance(getattr(m, "weight", None), Parameter) and m.weight.data.ndim >= 2 and id(m.weight) not in seen:
            seen.add(id(m.weight))
            layers.append((layer_name or type(m).__name__, m))
    if not layers:
        raise ValueError(f"{name}: {type(model).__name__} has no layer with a weight matrix to initialise")
    rng = resolve_generator(generator)
    report = LSUVReport()
    with model.modes_restored():
        model.eval()
        for layer_name, layer in layers:
            weight = layer.weight.data
            if not orthogonal and not np.any(weight):
                raise ValueError(f"{name}: layer {layer_name!r} ({type(layer).__name__}) has all-zero weights: "
                                 f"scaling cannot change its output (orthogonal=True draws new weights first)")
            std, output = _output(model, x, layer_name, layer)
            before = std
            if orthogonal:
                orthogonal_(weight, generator=rng)
                std, output = _output(model, x, layer_name, layer)
            total, iterations, start = 1.0, 0, weight.copy()
            while abs(std / target_std - 1) > tol and iterations < max_iter:
                factor = target_std / std
                weight *= weight.dtype.type(factor)
                total *= factor
                iterations += 1
                previous, (std, new) = std, _output(model, x, layer_name, layer)
                # the weights do not move the output (a zero batch: only the bias is left): scaling them by the
                # factor changed no value. (Not "the std changed less than the factor": with a bias the std moves
                # less than in proportion, e.g. 0.083 -> 0.53 for a factor of 12 on inputs of std 0.05, and the
                # next scalings still reach the target.)
                moved = float(np.std(new - output))
                output = new
                if abs(factor - 1) > 1e-3 and moved <= 1e-6 * abs(factor - 1) * previous:
                    weight[...] = start
                    raise ValueError(f"{name}: the output of layer {layer_name!r} ({type(layer).__name__}) does not "
                                     f"change with its weights on this batch (std {previous:.6g}, then {std:.6g} after "
                                     f"scaling them by {factor:.4g}): constant input? Pass a batch of real data")
            report.append(LSUVLayer(layer_name, type(layer).__name__, before, std, total, iterations))
    return report
