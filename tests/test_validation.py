"""Every validation error of cynet.ops: the right exception type, a message naming the op and the offending array's
dtype and shape, raised before anything is written (one exception: int32 Maxout indices are range-checked by the
kernel as it reads them)."""
import re

import numpy as np
import pytest

from cynet import ops, reference
from cynet._kernels import load
from _helpers import ELEMENTWISE

# The kernels' dtypes, and the ones that fall back to cynet.reference after the same checks.
ALL_FLOAT_DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64"),
                    pytest.param(np.float16, id="float16"), pytest.param(np.longdouble, id="longdouble")]
FALLBACK_DTYPES = [pytest.param(np.float16, id="float16"), pytest.param(np.longdouble, id="longdouble")]

BAD_DTYPES = [
    pytest.param(np.arange(6).reshape(2, 3), id="int64"),
    pytest.param(np.ones((2, 3), np.int32), id="int32"),
    pytest.param(np.ones((2, 3), np.uint8), id="uint8"),
    pytest.param(np.ones((2, 3), bool), id="bool"),
    pytest.param(np.ones((2, 3), np.complex64), id="complex64"),
    pytest.param(np.ones((2, 3), np.complex128), id="complex128"),
    pytest.param(np.full((2, 3), "a"), id="str"),
    pytest.param(np.full((2, 3), None, dtype=object), id="object"),
    pytest.param([[1, 2, 3], [4, 5, 6]], id="int-list"),
    pytest.param([[True, False, True], [True, True, True]], id="bool-list"),
]


def _shape_text(shape):
    return re.escape(str(tuple(shape)))


# --- dtypes ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_DTYPES)
def test_non_floating_input_is_a_type_error_naming_the_op(op, bad):
    dtype = np.asarray(bad).dtype
    good = np.ones((2, 3))
    described = rf"got {re.escape(str(dtype))} array of shape \(2, 3\)"
    with pytest.raises(TypeError, match=rf"^{op.name}_forward: x must be a floating-point array .*{described}"):
        op.forward(bad)
    with pytest.raises(TypeError, match=rf"^{op.name}_backward: dout must be a floating-point array .*{described}"):
        op.backward(bad, good)
    with pytest.raises(TypeError, match=rf"^{op.name}_backward: {op.saved} must be a floating-point array .*"
                                        rf"{described}"):
        op.backward(good, bad)


@pytest.mark.parametrize("bad", BAD_DTYPES)
def test_prelu_and_maxout_refuse_non_floating_input(bad):
    described = r"got .* array of shape \(2, 3\)"
    with pytest.raises(TypeError, match=rf"^prelu_forward: x must be a floating-point array .*{described}"):
        ops.prelu_forward(bad, 0.25)
    with pytest.raises(TypeError, match=rf"^prelu_backward: (dout|x) must be a floating-point array .*{described}"):
        ops.prelu_backward(bad, bad, 0.25)
    with pytest.raises(TypeError, match=rf"^prelu_backward: dout must be a floating-point array .*{described}"):
        ops.prelu_backward(bad, np.ones((2, 3)), 0.25)
    with pytest.raises(TypeError, match=rf"^maxout_forward: x must be a floating-point array .*{described}"):
        ops.maxout_forward(bad, 3)
    with pytest.raises(TypeError, match=rf"^maxout_backward: dout must be a floating-point array .*{described}"):
        ops.maxout_backward(bad, np.zeros((2, 3), np.int32), 2)


@pytest.mark.parametrize("alpha", [np.ones(3, np.int64), np.array(1), 1, True, np.ones(3, bool),
                                   np.ones(3, np.complex64)],
                         ids=["int64", "0-d int", "int", "bool", "bool-array", "complex"])
def test_prelu_alpha_must_be_floating(alpha):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match=r"^prelu_forward: alpha must be floating-point, got .* array of shape"):
        ops.prelu_forward(x, alpha)
    with pytest.raises(TypeError, match=r"^prelu_backward: alpha must be floating-point"):
        ops.prelu_backward(x, x, alpha)


# --- shapes and dtypes of the backward's pair ------------------------------------------------------------------------
@pytest.mark.parametrize("dout_shape,saved_shape", [((3,), (4,)), ((2, 3), (3, 2)), ((2, 3), (6,)), ((0,), (1,)),
                                                    ((1, 5), (5,))], ids=str)
def test_backward_shape_mismatch_names_both_shapes(op, dout_shape, saved_shape):
    dout, saved = np.ones(dout_shape, np.float32), np.ones(saved_shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{op.name}_backward: dout and {op.saved} must have the same shape, got "
                                         rf"float32 array of shape {_shape_text(dout_shape)} and float32 array of "
                                         rf"shape {_shape_text(saved_shape)}"):
        op.backward(dout, saved)


def test_backward_dtype_mismatch_names_both_dtypes(op):
    with pytest.raises(TypeError, match=rf"^{op.name}_backward: dout and {op.saved} must have the same dtype, got "
                                        r"float32 array of shape \(3,\) and float64 array of shape \(3,\)"):
        op.backward(np.ones(3, np.float32), np.ones(3, np.float64))
    with pytest.raises(TypeError, match=rf"^{op.name}_backward: dout and {op.saved} must have the same dtype"):
        op.backward(np.ones(3, np.float16), np.ones(3, np.float32))


def test_prelu_shape_and_dtype_mismatch():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"^prelu_backward: dout and x must have the same shape, got float32 array of "
                                         r"shape \(4, 2\) and float32 array of shape \(4, 3\)"):
        ops.prelu_backward(np.zeros((4, 2), np.float32), x, np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"^prelu_backward: dout and x must have the same dtype, got float64"):
        ops.prelu_backward(np.zeros((4, 3)), x, np.ones(3, np.float32))


# --- out= ------------------------------------------------------------------------------------------------------------
def _bad_outs(shape, dtype):
    """(out, exception, message pattern) for every way an out= buffer can be unusable."""
    other = np.float64 if dtype == np.float32 else np.float32
    wrong_shape = shape[:-1] + (shape[-1] + 1,)
    readonly = np.zeros(shape, dtype)
    readonly.flags.writeable = False
    strided = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2]
    return [
        (np.zeros(wrong_shape, dtype), ValueError,
         rf"out must have shape {_shape_text(shape)}, got {np.dtype(dtype)} array of shape {_shape_text(wrong_shape)}"),
        (np.zeros(shape[::-1] if len(shape) > 1 and shape[0] != shape[-1] else wrong_shape, dtype), ValueError,
         rf"out must have shape {_shape_text(shape)}"),
        (np.zeros(shape, other), TypeError,
         rf"out must have dtype {np.dtype(dtype)}, got {np.dtype(other)} array of shape {_shape_text(shape)}"),
        (strided, ValueError, rf"out must be C-contiguous, got a strided {np.dtype(dtype)} array of shape "
                              rf"{_shape_text(shape)}"),
        (np.asfortranarray(np.zeros(shape, dtype)) if len(shape) > 1 else strided, ValueError,
         r"out must be C-contiguous"),
        (readonly, ValueError, rf"out is read-only \({np.dtype(dtype)} array of shape {_shape_text(shape)}\)"),
        (np.zeros(shape, dtype).tolist(), TypeError, r"out must be a numpy.ndarray, got list"),
        (np.zeros(shape, np.int32), TypeError,
         rf"out must have dtype {np.dtype(dtype)}, got int32 array of shape {_shape_text(shape)}"),
        # a larger array the result would broadcast into
        (np.zeros((2,) + shape, dtype), ValueError,
         rf"out must have shape {_shape_text(shape)}, got {np.dtype(dtype)} array of shape "
         rf"{_shape_text((2,) + shape)}"),
    ]


# float16 and longdouble included: they fall back to the reference, after the same checks of out=.
@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES)
def test_bad_out_is_refused_and_left_untouched(op, dtype):
    shape = (4, 6)
    x = np.linspace(-3, 3, 24, dtype=dtype).reshape(shape)
    for out, exc, pattern in _bad_outs(shape, dtype):
        before = np.array(out, copy=True)
        with pytest.raises(exc, match=rf"^{op.name}_forward: {pattern}"):
            op.forward(x, out=out)
        with pytest.raises(exc, match=rf"^{op.name}_backward: {pattern}"):
            op.backward(x, x, out=out)
        np.testing.assert_array_equal(np.asarray(out), before)


@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES)
def test_bad_out_buffers_of_prelu_and_maxout(dtype):
    x = np.ones((4, 6), dtype)
    alpha = np.full(6, 0.25, dtype)
    name = np.dtype(dtype).name
    for out, exc, pattern in _bad_outs((4, 6), dtype):
        before = np.array(out, copy=True)
        with pytest.raises(exc, match=rf"^prelu_forward: {pattern}"):
            ops.prelu_forward(x, alpha, out=out)
        with pytest.raises(exc, match=rf"^prelu_backward: {pattern}"):
            ops.prelu_backward(x, x, alpha, out=out)
        with pytest.raises(exc, match=rf"^maxout_backward: {pattern}"):
            ops.maxout_backward(np.ones((4, 3), dtype), np.zeros((4, 3), np.int32), 2, out=out)
        np.testing.assert_array_equal(np.asarray(out), before)
    for out, exc, pattern in _bad_outs((4, 3), dtype):
        with pytest.raises(exc, match=rf"^maxout_forward: {pattern}"):
            ops.maxout_forward(x, 2, out=out)
    for out, exc, pattern in _bad_outs((6,), dtype):
        with pytest.raises(exc, match=rf"^prelu_backward: {pattern.replace('out ', 'alpha_grad_out ', 1)}"):
            ops.prelu_backward(x, x, alpha, alpha_grad_out=out)
    with pytest.raises(TypeError, match=rf"^prelu_backward: alpha_grad_out must have dtype {name}, got int64 array "
                                        r"of shape \(6,\)"):
        ops.prelu_backward(x, x, alpha, alpha_grad_out=np.empty(6, np.int64))
    with pytest.raises(TypeError, match=r"^maxout_forward: indices_out must have dtype int32, got int64 array of shape "
                                        r"\(4, 3\)"):
        ops.maxout_forward(x, 2, indices_out=np.empty((4, 3), np.int64))
    with pytest.raises(ValueError, match=r"^maxout_forward: indices_out must have shape \(4, 3\), got int32 array of "
                                         r"shape \(4, 2\)"):
        ops.maxout_forward(x, 2, indices_out=np.empty((4, 2), np.int32))
    with pytest.raises(ValueError, match=r"^maxout_forward: indices_out must be C-contiguous"):
        ops.maxout_forward(x, 2, indices_out=np.empty((4, 6), np.int32)[:, ::2])
    with pytest.raises(ValueError, match=rf"^prelu_backward: alpha_grad_out must have shape \(\), got {name} array of "
                                         r"shape \(1,\)"):
        ops.prelu_backward(x, x, np.asarray(0.25, dtype), alpha_grad_out=np.empty(1, dtype))


@pytest.mark.parametrize("dtype", FALLBACK_DTYPES)
def test_fallback_dtypes_refuse_the_outs_the_kernels_refuse(dtype):
    # QA's cases: before the fallback checked out=, these were accepted (int32: truncated; a larger array: broadcast
    # into; a strided view: written through) or failed inside NumPy (a list)
    x = np.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"^sigmoid_forward: out must have dtype {name}, got int32 array"):
        ops.sigmoid_forward(x, out=np.empty((3, 4), np.int32))
    with pytest.raises(ValueError, match=r"^sigmoid_forward: out must have shape \(3, 4\), got .* \(2, 3, 4\)"):
        ops.sigmoid_forward(x, out=np.empty((2, 3, 4), dtype))
    with pytest.raises(ValueError, match=r"^sigmoid_forward: out must be C-contiguous"):
        ops.sigmoid_forward(x, out=np.empty((3, 8), dtype)[:, ::2])
    with pytest.raises(TypeError, match=r"^relu_backward: out must be a numpy.ndarray, got list"):
        ops.relu_backward(x, x, out=[0] * 12)
    with pytest.raises(TypeError, match=rf"^prelu_backward: alpha_grad_out must have dtype {name}, got int64"):
        ops.prelu_backward(x, x, np.full(4, 0.25, dtype), alpha_grad_out=np.empty(4, np.int64))
    with pytest.raises(TypeError, match=rf"^maxout_backward: out must have dtype {name}, got float64"):
        ops.maxout_backward(np.ones((3, 2), dtype), np.zeros((3, 2), np.int8), 2, out=np.empty((3, 4)))
    # a good out is filled and returned, as on the kernels' path
    out = np.empty((3, 4), dtype)
    assert ops.sigmoid_forward(x, out=out) is out
    np.testing.assert_array_equal(out, reference.sigmoid_forward(x))
    dx, dalpha = np.empty((3, 4), dtype), np.empty(4, dtype)
    got = ops.prelu_backward(x, x, np.full(4, 0.25, dtype), out=dx, alpha_grad_out=dalpha)
    assert got[0] is dx and got[1] is dalpha
    y, idx = np.empty((3, 2), dtype), np.empty((3, 2), np.int32)
    got = ops.maxout_forward(x, 2, out=y, indices_out=idx)
    assert got[0] is y and got[1] is idx


@pytest.mark.parametrize("dtype", FALLBACK_DTYPES)
def test_fallback_results_have_the_input_dtype_and_shape_even_zero_d(op, dtype):
    x = np.asarray(0.5, dtype)
    y = op.forward(x)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == ()
    dx = op.backward(x, op.saved_tensor(x, y))
    assert isinstance(dx, np.ndarray) and dx.dtype == dtype and dx.shape == ()


# --- op parameters ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("approximate", ["erf", "Tanh", "", None, True, 0])
def test_gelu_approximate_must_be_none_or_tanh(approximate):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=rf"^gelu_forward: approximate must be 'none' or 'tanh', got "
                                         rf"{re.escape(repr(approximate))}"):
        ops.gelu_forward(x, approximate=approximate)
    with pytest.raises(ValueError, match=r"^gelu_backward: approximate must be 'none' or 'tanh'"):
        ops.gelu_backward(x, x, approximate=approximate)


@pytest.mark.parametrize("value,exc,message", [
    (float("nan"), ValueError, "must be finite, got nan"), (float("inf"), ValueError, "must be finite, got inf"),
    (-np.inf, ValueError, "must be finite, got -inf"), ("0.1", TypeError, "must be a real number, got '0.1'"),
    (None, TypeError, "must be a real number, got None"), (1j, TypeError, "must be a real number"),
    (np.array([0.1, 0.2]), TypeError, "must be a real number")], ids=str)
def test_leaky_relu_slope_and_elu_alpha_must_be_finite_numbers(value, exc, message):
    x = np.ones(3, np.float32)
    for call, name in [(lambda: ops.leaky_relu_forward(x, negative_slope=value), "leaky_relu_forward: negative_slope"),
                       (lambda: ops.leaky_relu_backward(x, x, negative_slope=value),
                        "leaky_relu_backward: negative_slope"),
                       (lambda: ops.elu_forward(x, alpha=value), "elu_forward: alpha"),
                       (lambda: ops.elu_backward(x, x, alpha=value), "elu_backward: alpha")]:
        with pytest.raises(exc, match=rf"^{name} {re.escape(message)}"):
            call()


def _value_id(value):
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, np.ndarray):
        return f"{value.dtype}-array{value.shape}"
    if isinstance(value, int) and abs(value) > 10 ** 30:  # repr(10 ** 5000) raises
        return f"int-of-{value.bit_length()}-bits"
    numpy = "np." if type(value).__module__ == "numpy" else ""
    return f"{numpy}{type(value).__name__}({value!s})"


def _parameter_calls(x, value):
    """(call, message prefix) for each op with a scalar parameter: Leaky ReLU's negative_slope, ELU's alpha."""
    return [(lambda: ops.leaky_relu_forward(x, negative_slope=value), "leaky_relu_forward: negative_slope"),
            (lambda: ops.leaky_relu_backward(x, x, negative_slope=value), "leaky_relu_backward: negative_slope"),
            (lambda: ops.elu_forward(x, alpha=value), "elu_forward: alpha"),
            (lambda: ops.elu_backward(x, x, alpha=value), "elu_backward: alpha")]


@pytest.mark.parametrize("dtype,value", [
    (np.float32, 1e39), (np.float32, -1e39), (np.float32, 2.0 ** 128 - 2.0 ** 103), (np.float32, 10 ** 39),
    (np.float32, np.float64(3.5e38)), (np.float16, 1e5), (np.float16, 65520.0), (np.float64, 10 ** 400),
    (np.float64, np.longdouble("1e400")), (np.longdouble, 10 ** 5000)], ids=_value_id)
def test_slope_and_alpha_must_be_finite_in_the_input_dtype(dtype, value):
    # finite as numbers, but inf in x's dtype: with x = 0 the op would give 0 * inf = NaN
    x = np.zeros(3, dtype)
    for call, name in _parameter_calls(x, value):
        with pytest.raises(ValueError, match=rf"^{name} must be finite in {np.dtype(dtype).name}, the input's dtype"):
            call()


@pytest.mark.parametrize("dtype,value", [
    (np.float32, 3.4028235e38), (np.float32, 2.0 ** 128 - 2.0 ** 103 - 2.0 ** 75), (np.float16, 65519.0),
    (np.float64, 1.7976931348623157e308), (np.float64, 10 ** 300), (np.longdouble, np.longdouble("1e400")),
    (np.longdouble, 10 ** 400)], ids=_value_id)
def test_the_largest_parameters_finite_in_the_input_dtype_are_accepted(dtype, value):
    x = np.array([-1.0, 0.0, 2.0], dtype)
    in_dtype = np.asarray(value, dtype=dtype)[()] if not isinstance(value, int) else dtype(value)
    assert np.isfinite(in_dtype)
    # (errstate: the NumPy reference of the fallback dtypes evaluates slope * x for x > 0 too, where it may overflow)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(ops.leaky_relu_forward(x, value), [-in_dtype, 0, 2])
        np.testing.assert_array_equal(ops.leaky_relu_backward(np.ones(3, dtype), x, value), [in_dtype, in_dtype, 1])
        assert not np.isnan(ops.elu_forward(x, value)).any()
        assert not np.isnan(ops.elu_backward(np.ones(3, dtype), x, value)).any()


@pytest.mark.parametrize("value", [True, False, np.True_, np.bool_(False)], ids=_value_id)
@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES)
def test_slope_and_alpha_must_not_be_bools(value, dtype):
    x = np.ones(3, dtype)
    for call, name in _parameter_calls(x, value):
        with pytest.raises(TypeError, match=rf"^{name} must be a real number"):
            call()


@pytest.mark.parametrize("alpha,dtype", [(1e39, np.float32), (np.full(6, 1e39), np.float32), (1e5, np.float16),
                                         (np.longdouble("1e400"), np.float64)], ids=_value_id)
def test_prelu_alpha_must_stay_finite_in_the_input_dtype(alpha, dtype):
    x = np.zeros((4, 6), dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"^prelu_forward: alpha must be finite in {name}, x's dtype"):
        ops.prelu_forward(x, alpha)
    with pytest.raises(ValueError, match=rf"^prelu_backward: alpha must be finite in {name}, x's dtype"):
        ops.prelu_backward(x, x, alpha)


def test_prelu_nan_or_inf_alpha_propagates_as_given():
    # only a cast that creates an inf is refused; a non-finite alpha given as such follows the formula
    x = np.array([[-1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(ops.prelu_forward(x, np.array([np.nan, np.inf])), [[np.nan, 2.0]])
    np.testing.assert_array_equal(ops.prelu_forward(x, np.float32(np.inf)), [[-np.inf, 2.0]])


@pytest.mark.parametrize("alpha", [-1.0, -1e-300, -np.float32(2)])
def test_elu_alpha_must_not_be_negative(alpha):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"^elu_forward: alpha must be >= 0 .*got -"):
        ops.elu_forward(x, alpha=alpha)
    with pytest.raises(ValueError, match=r"^elu_backward: alpha must be >= 0"):
        ops.elu_backward(x, x, alpha=alpha)


# --- maxout ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pieces,exc,message", [
    (0, ValueError, "pieces must be >= 1, got 0"), (-2, ValueError, "pieces must be >= 1, got -2"),
    (2.0, TypeError, "pieces must be an int, got 2.0"), (True, TypeError, "pieces must be an int, got True"),
    ("2", TypeError, "pieces must be an int, got '2'"), (None, TypeError, "pieces must be an int, got None")], ids=str)
def test_maxout_pieces_must_be_a_positive_int(pieces, exc, message):
    with pytest.raises(exc, match=rf"^maxout_forward: {re.escape(message)}"):
        ops.maxout_forward(np.zeros((4, 4), np.float32), pieces)
    with pytest.raises(exc, match=rf"^maxout_backward: {re.escape(message)}"):
        ops.maxout_backward(np.zeros((4, 2), np.float32), np.zeros((4, 2), np.int32), pieces)


def test_maxout_numpy_integer_pieces_are_accepted():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y, idx = ops.maxout_forward(x, np.int64(2))
    np.testing.assert_array_equal(y, [[2, 3], [6, 7]])
    np.testing.assert_array_equal(ops.maxout_backward(np.ones((2, 2), np.float32), idx, np.int8(2)),
                                  [[0, 0, 1, 1], [0, 0, 1, 1]])


@pytest.mark.parametrize("indices", [np.zeros((2, 2)), np.zeros((2, 2), bool), np.zeros((2, 2), np.complex64)],
                         ids=["float64", "bool", "complex"])
def test_maxout_indices_must_be_integers(indices):
    with pytest.raises(TypeError, match=r"^maxout_backward: indices must be an integer array, got .* array of shape "
                                        r"\(2, 2\)"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), indices, 2)


def test_maxout_checks_run_before_any_write():
    # indices of a type other than int32 are checked in Python, before the kernel writes anything
    out = np.full((2, 4), 7.0, np.float32)
    with pytest.raises(ValueError, match=r"indices must lie in"):
        ops.maxout_backward(np.ones((2, 2), np.float32), np.array([[0, 5], [0, 0]], np.int64), 2, out=out)
    np.testing.assert_array_equal(out, 7.0)


@pytest.mark.parametrize("bad", [2, -1, 2 ** 31 - 1, -2 ** 31])
def test_maxout_int32_indices_out_of_range_raise_from_the_kernel_check(bad):
    # int32 indices (maxout_forward's type) are counted out of range by the kernel as it reads them; the error names
    # the range, as the Python check does
    indices = np.zeros((300, 128), np.int32)
    indices[-1, -1] = bad
    with pytest.raises(ValueError, match=rf"maxout_backward: indices must lie in \[0, 2\), got values in "
                                         rf"\[{min(bad, 0)}, {max(bad, 0)}\]"):
        ops.maxout_backward(np.ones((300, 128), np.float32), indices, 2)


@pytest.mark.parametrize("n_threads", [1, 2, 4])
def test_maxout_kernel_counts_every_out_of_range_index_in_every_chunk(n_threads):
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 3, size=(257, 300)).astype(np.int32)
    flat = indices.reshape(-1)
    positions = rng.choice(flat.size, size=37, replace=False)
    flat[positions] = rng.choice([-2 ** 31, -1, 3, 4, 2 ** 31 - 1], size=positions.size)
    flat[[0, flat.size - 1]] = [3, -1]                      # the first and the last value too
    expected = int(np.count_nonzero((indices < 0) | (indices >= 3)))
    dx = np.empty((257, 3, 300), np.float32)
    kernel = load("maxout", None)
    assert kernel.maxout_backward(np.ones((257, 300), np.float32), indices, dx, False, n_threads) == expected
    assert kernel.maxout_backward(np.ones((257, 300), np.float32), np.zeros_like(indices), dx, False,
                                  n_threads) == 0


# A 0-d x or dout is refused with a message showing its () shape.
def test_maxout_zero_d_input_is_a_value_error():
    with pytest.raises(ValueError, match=r"^maxout_forward: .*shape \(\)"):
        ops.maxout_forward(np.array(2.0), 1)
    with pytest.raises(ValueError, match=r"^maxout_backward: dout must have at least one axis, got float64 array of "
                                         r"shape \(\)"):
        ops.maxout_backward(np.array(1.0), np.array(0), 1)


def test_every_elementwise_op_is_covered():
    names = {f"{spec.name}_{direction}" for spec in ELEMENTWISE for direction in ("forward", "backward")}
    public = {name for name in ops.__all__ if name.endswith(("_forward", "_backward"))}
    assert public - names == {"prelu_forward", "prelu_backward", "maxout_forward", "maxout_backward"}


def test_a_masked_array_is_refused_rather_than_its_mask_ignored():
    with pytest.raises(TypeError, match="masked array; the mask would be ignored"):
        ops.relu_forward(np.ma.array([1.0, -1.0], mask=[False, True]))


@pytest.mark.parametrize("op", ["sigmoid_forward", "relu_forward", "tanh_forward"])
def test_big_endian_input_gives_the_native_kernels_bits(op):
    x = np.linspace(-3, 3, 1001).astype(np.float32)
    swapped = x.astype(">f4")
    np.testing.assert_array_equal(getattr(ops, op)(swapped), getattr(ops, op)(x))
    assert getattr(ops, op)(swapped).dtype == np.float32


def test_a_transposed_big_endian_array_becomes_c_contiguous_native():
    from cynet._validation import as_float_array

    x = np.arange(6, dtype=">f8").reshape(2, 3).T
    converted = as_float_array("op", "x", x)
    assert converted.flags.c_contiguous and converted.dtype == np.float64
    np.testing.assert_array_equal(converted, x)
