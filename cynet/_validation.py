"""Input and output checks shared by every op: clear errors that name the op and the shapes, never a crash.

The kernels accept exactly one thing: C-contiguous float32 or float64 arrays of agreeing shapes, outputs writable.
These helpers turn everything a user may pass into that, or raise:

- a non-floating dtype (int, bool, complex, object) is a ``TypeError``;
- mismatched shapes are a ``ValueError``; mismatched dtypes between arrays of one call are a ``TypeError``;
- non-contiguous or read-only inputs are accepted (non-contiguous ones are copied once);
- ``out=`` must already be right (shape, dtype, C-contiguous, writable): it is never silently replaced. It may be an
  input itself (in place), and it may overlap an input otherwise: that input is then copied first (:func:`apart_from`),
  so the result is NumPy's, not whatever the threads' order of reads and writes would give.
"""
import math
import numbers
import os

import numpy as np

KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(a):
    """``float32 array of shape (2, 3)``: how errors show an array."""
    return f"{a.dtype} array of shape {tuple(a.shape)}"


def dtype_remedy(input_dtype):
    """How to fix an input whose dtype differs from a model's: the hint that ends such a TypeError."""
    if np.dtype(input_dtype) in KERNEL_DTYPES:
        return f"convert the data, or the model with .to({np.dtype(input_dtype)})"
    return "convert the data to the model's dtype: models compute in float32 or float64"


def float_dtype(owner, dtype):
    """``np.dtype(dtype)`` if the kernels compile it (float32, float64); a TypeError naming ``owner`` otherwise."""
    dtype = np.dtype(dtype)
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"{owner}: dtype must be float32 or float64, got {dtype}")
    return dtype


def positive_int(owner, name, value):
    """``int(value)`` for an integer >= 1 (not a bool); a ValueError naming ``owner`` and ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


OFF_VALUES = ("0", "false", "no", "off")


def switched_off(variable):
    """Whether the on/off environment variable ``variable`` (on when unset) says off: 0, false, no or off, in any
    case and with spaces around (what every CYNET_* switch reads)."""
    return os.environ.get(variable, "").strip().lower() in OFF_VALUES


def refuse_masked(op, name, a):
    """TypeError for a masked array, whose mask no kernel would honour."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{op}: {name} is a masked array; the mask would be ignored: pass a.filled(value) or "
                        f"a.data explicitly")


def native(a):
    """``a`` as an ndarray in the machine's byte order: big-endian data (a file written on another machine) becomes a
    C-contiguous copy of the same values in the native dtype (``>f4`` -> ``float32``), anything else is returned as
    ``np.asarray`` gives it. The modules and losses take their inputs through it, so that a ``>f4`` batch is the
    float32 batch it holds (the kernels read native floats, and a layer's checks compare dtypes with ``==``, which a
    byte order fails)."""
    a = np.asarray(a)
    if a.dtype.isnative:
        return a
    return a.astype(a.dtype.newbyteorder("="), order="C")


def as_float_array(op, name, a):
    """``a`` as a C-contiguous floating ndarray in the machine's byte order (copying only when it is not);
    TypeError otherwise (also for a masked array, whose mask no kernel would honour)."""
    refuse_masked(op, name, a)
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a floating-point array (float32 or float64), got {describe(a)}")
    if not a.dtype.isnative:
        return native(a)    # big-endian data: the kernels read native floats
    # (np.ascontiguousarray would turn a 0-d array into shape (1,); 0-d arrays are always contiguous)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def check_probabilities(owner, y):
    """Raise ValueError naming ``owner`` unless every entry of the float array ``y`` is finite and >= 0 (target
    probabilities; rows need not sum to 1, as in PyTorch)."""
    finite = np.isfinite(y)
    if not np.all(finite) or np.any(y < 0):
        # the range of the finite values (np.nanmin warned "All-NaN slice" for targets that hold no number at all)
        values = y[finite]
        shown = f"values in [{values.min()}, {values.max()}]" if values.size else "no finite value"
        raise ValueError(f"{owner}: target probabilities must be finite and >= 0, got {shown}"
                         + (" and non-finite ones" if values.size < y.size else ""))


def same_layout(op, names, arrays):
    """Check that all arrays share the first one's shape and dtype."""
    first = arrays[0]
    for name, a in zip(names[1:], arrays[1:]):
        if a.dtype != first.dtype:
            raise TypeError(f"{op}: {names[0]} and {name} must have the same dtype, got {describe(first)} and "
                            f"{describe(a)}")
        if a.shape != first.shape:
            raise ValueError(f"{op}: {names[0]} and {name} must have the same shape, got {describe(first)} and "
                             f"{describe(a)}")


def output(op, out, shape, dtype, name="out"):
    """A fresh array of ``shape``/``dtype``, or ``out`` after checking it can receive the result."""
    shape = tuple(shape)
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    if isinstance(out, (np.matrix, np.ma.MaskedArray)):      # 2-d only / a mask the kernels would not keep
        raise TypeError(f"{op}: {name} must be a plain numpy.ndarray, got a {type(out).__name__} of shape "
                        f"{out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {np.dtype(dtype)}, got {describe(out)}")
    if out.shape != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {describe(out)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous, got a strided {describe(out)}")
    if not out.flags.writeable:
        raise ValueError(f"{op}: {name} is read-only ({describe(out)})")
    return out


def _same_memory(a, b):
    """Whether a and b are the same elements in the same order (in-place use of an output)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides and a.dtype.itemsize == b.dtype.itemsize)


def apart_from(out, *arrays):
    """``arrays`` with each one that overlaps ``out`` without being exactly it replaced by a copy.

    The kernels compute in place (``out`` is an input) but not over a partial overlap (``out=x[:-1]`` for
    ``x[1:]``), where the threads would read values already overwritten; NumPy's ufuncs copy such an input first, and
    so does this. ``out`` None (no output to write) returns ``arrays`` unchanged. A tuple, one entry per array.

    Example:
        >>> import numpy as np
        >>> x = np.arange(5.0)
        >>> shifted, = apart_from(x[:-1], x[1:])
        >>> shifted is x[1:], np.shares_memory(shifted, x)
        (False, False)
    """
    if out is None:
        return arrays
    return tuple(a.copy() if (isinstance(a, np.ndarray) and np.may_share_memory(out, a)
                              and not _same_memory(out, a)) else a for a in arrays)


def separate_outputs(op, first, second, names=("out", "second output")):
    """Refuse two outputs of one call that share memory (each would overwrite the other's values)."""
    if first is not None and second is not None and np.may_share_memory(first, second):
        raise ValueError(f"{op}: {names[0]} and {names[1]} share memory ({describe(first)} and {describe(second)}); "
                         f"pass separate arrays")


def check_finite(owner, name, array, before="training"):
    """Raise ValueError when a floating (or complex) ``array`` holds NaN or inf, naming ``owner``, the count and the
    first row: data like that trains to a NaN loss, which would pass for a learning rate far too large (the divergence
    guard's advice) or a weight scale far too large. ``before``: what the data is for, in the message's advice."""
    if array.dtype.kind not in "fc":
        return
    # fast path without a boolean copy of x: NaN/inf always reach the sum (a float64 sum of finite float32 values
    # cannot overflow; a float64 one that does falls through to the exact count)
    if array.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(np.sum(array, dtype=np.float64))
        if math.isfinite(total):
            return
    bad = ~np.isfinite(array)
    count = int(np.count_nonzero(bad))
    if count:
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{owner}: {name} holds {count} NaN/inf value{'s' if count > 1 else ''} (first in row {row}); "
                         f"remove or impute them before {before}")


def saved_scalar(value):
    """A scalar of a state dict as its Python value: a 0-d array (how ``np.savez``/``np.load`` hand a scalar back) or
    a NumPy scalar; anything else (arrays of more dimensions, Python values) as it is."""
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return value.item()
    return value


def is_real(value):
    """Whether ``value`` is a real number: a Python int or float or a NumPy integer or floating scalar (bools not;
    NaN and inf are, for the caller's range check to refuse)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_count(value):
    """Whether ``value`` is an int >= 0 (NumPy integers included, bools not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 0
