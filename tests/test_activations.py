"""Every elementwise activation, forward and backward, against the NumPy reference, long-double truth and numerical
gradients; thread-count invariance, special values, layouts, the float16 fallback.

Tolerances (the figures behind them are measured in tests/test_vecmath.py):

- relu and leaky_relu forwards, and the backwards that are ``dout * (arithmetic on the saved tensor)`` (sigmoid, tanh,
  relu, leaky_relu, elu, selu): bit-identical to the reference.
- float32 transcendental forwards: within 4 ulp of the reference evaluated in float64, for |x| <= 20 (the matrix of
  dtypes x shapes x threads draws |x| <= 10; a dense grid covers [-20, 20]).
- float64 transcendental forwards: within 4 ulp of the long-double truth; GELU within 4 (1 + kappa) ulp, kappa the
  condition number |x f'(x) / f(x)| (about x^2 for the erf form, about |w| = |2c(x + 0.044715 x^3)| for the tanh
  form: one rounding of the argument of erfc / sigmoid, inevitable in float64, moves the result by kappa ulp).
- GELU and SiLU backwards: |dx - reference in float64| <= 4 eps |dout| (1 + |x|) (an absolute bound on the derivative's
  scale: the derivative has zeros, near which no relative bound holds).
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

import cynet
from cynet import nn, ops, reference
from _helpers import (BY_ID, ELEMENTWISE, EXTENDED, SPECIAL_VALUES, TRANSCENDENTAL, condition_number,
                      numerical_gradient, numerical_gradient_elementwise, relative_error, truth_derivative,
                      truth_forward, ulp_error)

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
# empty, empty 2-D, one element, odd, just below / at the 32768-element parallel threshold, above it, 4-D
SHAPES = [(0,), (0, 5), (1,), (7, 13), (32767,), (32768,), (33, 1001), (257, 300), (3, 4, 5, 6)]
THREADS = [1, 2, 4]

FORWARD_ULP = 4
BACKWARD_EPS = 4


def _inputs(shape, dtype, seed, scale=3.0):
    """x ~ N(0, 3^2) clipped to [-10, 10] (the dense-grid tests cover |x| <= 20), and dout ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(shape) * scale, -10, 10).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, dout


def _reference_f64(fn, *arrays, **kw):
    with np.errstate(all="ignore"):
        return fn(*(np.asarray(a, np.float64) for a in arrays), **kw)


def assert_forward_accurate(op, x, y):
    """y = op's forward at x, to the tolerance of the module docstring (finite, non-special x)."""
    dtype = x.dtype.type
    if op.exact_forward:
        np.testing.assert_array_equal(y, op.forward(x, module=reference))
        return
    if dtype == np.float32:
        err = ulp_error(y, _reference_f64(op.forward, x, module=reference), np.float32)
        bound = np.full(x.shape, float(FORWARD_ULP))
    elif EXTENDED:
        err = ulp_error(y, truth_forward(op, x), np.float64)
        bound = FORWARD_ULP * (1 + condition_number(op, x)) if op.name == "gelu" else np.full(x.shape, 4.0)
    else:  # no extended precision here: the float64 reference (itself a few ulp off) is the oracle
        err = ulp_error(y, op.forward(x, module=reference).astype(np.longdouble), np.float64)
        bound = 2 * FORWARD_ULP * (1 + (condition_number(op, x) if op.name == "gelu" else 0))
    bad = err > bound
    assert not bad.any(), (f"{op} {dtype.__name__}: {bad.sum()} of {x.size} beyond the bound; worst "
                           f"{err.max():.2f} ulp at x={x.reshape(-1)[np.argmax(err.reshape(-1))]!r}")


def assert_backward_accurate(op, dout, saved, dx):
    if op.exact_backward:
        np.testing.assert_array_equal(dx, op.backward(dout, saved, module=reference))
        return
    expected = _reference_f64(op.backward, dout, saved, module=reference)
    eps = np.finfo(dx.dtype).eps
    tol = BACKWARD_EPS * eps * np.abs(dout.astype(np.float64)) * (1 + np.abs(saved.astype(np.float64)))
    err = np.abs(dx - expected)
    bad = err > tol
    assert not bad.any(), (f"{op}: {bad.sum()} entries beyond {BACKWARD_EPS} eps |dout| (1 + |x|); worst at "
                           f"x={saved.reshape(-1)[np.argmax((err - tol).reshape(-1))]!r}")


# --- against the reference -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_matches_reference(op, dtype, shape, threads):
    x, _ = _inputs(shape, dtype, seed=0)
    with cynet.threads(threads):
        y = op.forward(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
    assert_forward_accurate(op, x, y)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_matches_reference(op, dtype, shape, threads):
    x, dout = _inputs(shape, dtype, seed=1)
    saved = op.saved_tensor(x, op.forward(x))
    with cynet.threads(threads):
        dx = op.backward(dout, saved)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert_backward_accurate(op, dout, saved, dx)


# Float32 GELU near underflow: Phi(x) (erf form) / sigma(w) (tanh form) is subnormal for x < -12.9 / -10.0. It used to
# be rounded to float32 before the multiplication by x, which cost up to 8.4 ulp (x = -13.105, erf form) and 5.8 ulp
# (x = -10.58, tanh form) in y; the kernels now multiply in double and round once. Asserted here over |x| <= 20.
@pytest.mark.parametrize("op", TRANSCENDENTAL, ids=[spec.id for spec in TRANSCENDENTAL])
def test_float32_forward_within_4_ulp_on_a_dense_grid_of_abs_x_up_to_20(op):
    x = np.linspace(-20, 20, 400_001).astype(np.float32)
    err = ulp_error(op.forward(x), _reference_f64(op.forward, x, module=reference), np.float32)
    worst = np.argmax(err)
    assert err.max() <= FORWARD_ULP, f"{op}: {err.max():.2f} ulp at x={x[worst]!r}"


# --- numerical gradients ---------------------------------------------------------------------------------------------
def test_backward_matches_numerical_gradient(op):
    rng = np.random.default_rng(2)
    x = rng.uniform(-6, 6, size=(6, 50))
    while op.kinked and np.any(np.abs(x) < 1e-3):  # the centred difference must not straddle the kink at 0
        x = np.where(np.abs(x) < 1e-3, rng.uniform(-6, 6, size=x.shape), x)
    dout = rng.standard_normal(x.shape)
    dx = op.backward(dout, op.saved_tensor(x, op.forward(x)))
    numeric = numerical_gradient_elementwise(lambda v: op.forward(v), x, dout, h=1e-5)
    assert relative_error(dx, numeric) < 1e-6


def test_backward_matches_numerical_gradient_one_entry_at_a_time(op):
    # the CS231n recipe on a small block: perturb one entry, difference the whole sum(f(x) * dout)
    rng = np.random.default_rng(12)
    x = rng.uniform(-3, 3, size=(4, 5))
    while op.kinked and np.any(np.abs(x) < 1e-3):
        x = np.where(np.abs(x) < 1e-3, rng.uniform(-3, 3, size=x.shape), x)
    dout = rng.standard_normal(x.shape)
    dx = op.backward(dout, op.saved_tensor(x, op.forward(x)))
    numeric = numerical_gradient(lambda v: op.forward(v), x.copy(), dout, h=1e-5)
    assert relative_error(dx, numeric) < 1e-6


# --- threads ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thread_count_does_not_change_a_single_bit(op, dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(300_001) * 6).astype(dtype)
    x[::9973] = np.nan
    x[5::10007] = np.inf
    x[7::10009] = -np.inf
    dout = rng.standard_normal(x.size).astype(dtype)
    results = []
    with np.errstate(invalid="ignore"):
        for n in (1, 2, 3, 4):
            with cynet.threads(n):
                y = op.forward(x)
                results.append((y, op.backward(dout, op.saved_tensor(x, y))))
    for n, (y, dx) in zip((2, 3, 4), results[1:]):
        assert np.array_equal(y, results[0][0], equal_nan=True), f"forward differs with {n} threads"
        assert np.array_equal(dx, results[0][1], equal_nan=True), f"backward differs with {n} threads"


@pytest.mark.parametrize("size", [32767, 32768, 32769, 3 * 32768 + 17, 100_003])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_parallel_chunks_write_every_element_once(op, size, threads):
    # `out` starts as NaN: an element no chunk writes stays NaN; one written from the wrong offset differs in value
    x = np.linspace(-7, 7, size, dtype=np.float32)
    dout = np.cos(np.arange(size, dtype=np.float32))
    y = np.full(size, np.nan, np.float32)
    dx = np.full(size, np.nan, np.float32)
    with cynet.threads(threads):
        op.forward(x, out=y)
        op.backward(dout, op.saved_tensor(x, y), out=dx)
    with cynet.threads(1):
        np.testing.assert_array_equal(y, op.forward(x))
        np.testing.assert_array_equal(dx, op.backward(dout, op.saved_tensor(x, y)))
    assert_forward_accurate(op, x, y)


# --- special values --------------------------------------------------------------------------------------------------
def _special(dtype):
    with np.errstate(over="ignore"):
        return np.array(SPECIAL_VALUES, dtype=dtype)


def _assert_same_specials(actual, expected):
    """Same NaN positions, same infinities (with their sign) at the same positions."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected), err_msg="inf positions differ")
    inf = np.isinf(expected)
    np.testing.assert_array_equal(actual[inf], expected[inf], err_msg="infinities differ in sign")


def assert_forward_agrees_on_any_values(op, x):
    """Forward at arbitrary inputs (inf, NaN, huge, subnormal): the reference's NaNs and infinities, bit-equal results
    for the exact ops, and finite results within 4 (1 + kappa) ulp: far in the tails the functions are
    ill-conditioned, and each rounding of an intermediate of the same size costs kappa/2 ulp."""
    dtype = x.dtype.type
    with np.errstate(all="ignore"):
        y = op.forward(x)
        if op.exact_forward:
            assert np.array_equal(y, op.forward(x, module=reference), equal_nan=True)
            return
        expected = _reference_f64(op.forward, x, module=reference)
        _assert_same_specials(y, expected.astype(dtype))
        finite = np.isfinite(expected.astype(dtype))
        truth = truth_forward(op, x) if dtype == np.float64 and EXTENDED else expected
        err = ulp_error(y[finite], truth[finite], dtype)
        # (the condition number is inf/inf = NaN at x = +-inf where the result is finite: no allowance there)
        bound = FORWARD_ULP * (1 + np.nan_to_num(condition_number(op, x[finite]), nan=0.0))
    assert np.all(err <= bound), list(zip(x[finite][err > bound], y[finite][err > bound], err[err > bound]))


def assert_backward_agrees_on_any_values(op, dout, saved):
    """Backward at arbitrary dout and saved tensors: bit-equal for the exact ones; the reference's NaNs and infinities
    and |dx - reference| <= 4 eps |dout| (1 + |x|) for GELU and SiLU."""
    dtype = dout.dtype.type
    with np.errstate(all="ignore"):
        dx = op.backward(dout, saved)
        if op.exact_backward:
            assert np.array_equal(dx, op.backward(dout, saved, module=reference), equal_nan=True)
            return
        expected = _reference_f64(op.backward, dout, saved, module=reference)
        _assert_same_specials(dx, expected.astype(dtype))
        finite = np.isfinite(expected.astype(dtype))
        tol = (BACKWARD_EPS * np.finfo(dtype).eps * np.abs(dout.astype(np.float64))
               * (1 + np.abs(saved.astype(np.float64))) + np.finfo(dtype).smallest_subnormal)  # + underflow
        err = np.abs(dx - expected)
    assert np.all(err[finite] <= tol[finite]), list(zip(dout[finite][err[finite] > tol[finite]],
                                                        saved[finite][err[finite] > tol[finite]]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_special_values_forward(op, dtype):
    assert_forward_agrees_on_any_values(op, _special(dtype))


# float32 gelu_backward(approximate='tanh') at x = -inf used to return -inf (the reference and the float64 kernel: NaN,
# x * 0 with the gate exactly 0): the float32 gate, then evaluated in double, clamped its argument at -700 and returned
# exp(-700) = 1e-304 for every smaller one. It returns exactly 0 there now (sigmoid(-700) is 0 in float32 anyway).
def _special_backward_cases():
    for spec in ELEMENTWISE:
        for dtype, dtype_id in zip(DTYPES, DTYPE_IDS):
            yield pytest.param(spec, dtype, id=f"{spec.id}-{dtype_id}")


@pytest.mark.parametrize("op,dtype", list(_special_backward_cases()))
def test_special_values_backward(op, dtype):
    x = _special(dtype)
    with np.errstate(all="ignore"):
        saved = op.saved_tensor(x, op.forward(x))
    assert_backward_agrees_on_any_values(op, np.ones_like(x), saved)
    assert_backward_agrees_on_any_values(op, np.roll(x, 3), saved)  # special gradients too


def _any_floats(dtype, shape):
    """Arrays of any values of `dtype`: NaN, infinities, subnormals, huge and tiny magnitudes, signed zeros."""
    width = 32 if dtype == np.float32 else 64
    return arrays(dtype, shape, elements=st.floats(width=width, allow_nan=True, allow_infinity=True,
                                                   allow_subnormal=True))


@given(data=st.data())
def test_property_forward_on_any_values(data):
    op = data.draw(st.sampled_from(ELEMENTWISE), label="op")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    x = data.draw(_any_floats(dtype, st.integers(0, 40)), label="x")
    assert_forward_agrees_on_any_values(op, x)


@given(data=st.data())
def test_property_backward_on_any_values(data):
    op = data.draw(st.sampled_from(ELEMENTWISE), label="op")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(st.integers(0, 40), label="n")
    dout = data.draw(_any_floats(dtype, n), label="dout")
    saved = data.draw(_any_floats(dtype, n), label=op.saved)
    assert_backward_agrees_on_any_values(op, dout, saved)


# silu_forward(-inf) is -0.0, its limit (not -inf * 0 = NaN): kernels and reference alike.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", [
    BY_ID["silu"], BY_ID["sigmoid"],
    BY_ID["tanh"], BY_ID["elu-1.3"], BY_ID["selu"]], ids=["silu", "sigmoid", "tanh", "elu", "selu"])
def test_no_nan_for_non_nan_input(op, dtype):
    fi = np.finfo(dtype)
    magnitudes = np.concatenate([[0.0, fi.smallest_subnormal, fi.tiny, fi.max, np.inf],
                                 np.geomspace(1e-40, float(fi.max) / 2, 2001)])
    x = np.concatenate([magnitudes, -magnitudes]).astype(dtype)
    y = op.forward(x)
    assert not np.isnan(y).any(), x[np.isnan(y)]


# tanh_forward(-0.0) is -0.0, as in NumPy, C99 and IEEE 754.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", ELEMENTWISE, ids=[spec.id for spec in ELEMENTWISE])
def test_signed_zero_matches_the_reference(op, dtype):
    x = np.array([0.0, -0.0], dtype)
    np.testing.assert_array_equal(np.signbit(op.forward(x)), np.signbit(op.forward(x, module=reference)))


def test_saturating_values_are_exact():
    x = np.array([-1e30, -200.0, 50.0, 100.0, 1e30], np.float32)
    np.testing.assert_array_equal(ops.tanh_forward(x), [-1, -1, 1, 1, 1])
    np.testing.assert_array_equal(ops.sigmoid_forward(x), [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ops.elu_forward(x[:2], alpha=2.0), [-2, -2])
    np.testing.assert_array_equal(ops.selu_forward(np.array([-1e30])), [-reference.SELU_SCALE * reference.SELU_ALPHA])


def test_hand_computed_values():
    np.testing.assert_allclose(ops.sigmoid_forward(np.array([0.0, np.log(3.0)])), [0.5, 0.75], rtol=1e-15)
    np.testing.assert_allclose(ops.tanh_forward(np.array([np.log(2.0)])), [0.6], rtol=1e-15)  # (4-1)/(4+1)
    np.testing.assert_allclose(ops.elu_forward(np.array([-np.log(2.0)]), alpha=2.0), [-1.0], rtol=1e-15)
    np.testing.assert_allclose(ops.selu_forward(np.array([2.0])), [2 * 1.0507009873554805], rtol=1e-15)
    np.testing.assert_allclose(ops.silu_forward(np.array([np.log(3.0)])), [0.75 * np.log(3.0)], rtol=1e-15)
    # Phi(1) = 0.841344746068542948585232545632 (tables); GELU(1) = Phi(1)
    np.testing.assert_allclose(ops.gelu_forward(np.array([1.0])), [0.8413447460685429], rtol=1e-15)
    np.testing.assert_allclose(ops.gelu_forward(np.array([1.0], np.float32)), [0.84134475], rtol=1e-7)
    # tanh form at 1: 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.8411919906082767048...
    np.testing.assert_allclose(ops.gelu_forward(np.array([1.0]), approximate="tanh"), [0.8411919906082767],
                               rtol=1e-14)
    # derivatives: sigmoid'(0) = 1/4, tanh'(0) = 1, GELU'(0) = 1/2, SiLU'(0) = 1/2, ELU'(x<=0) = y + alpha
    np.testing.assert_array_equal(ops.sigmoid_backward(np.array([2.0]), np.array([0.5])), [0.5])
    np.testing.assert_array_equal(ops.tanh_backward(np.array([3.0]), np.array([0.0])), [3.0])
    np.testing.assert_allclose(ops.gelu_backward(np.array([1.0]), np.array([0.0])), [0.5], rtol=1e-15)
    np.testing.assert_allclose(ops.silu_backward(np.array([1.0]), np.array([0.0])), [0.5], rtol=1e-15)
    np.testing.assert_array_equal(ops.elu_backward(np.array([2.0]), np.array([-0.5]), alpha=1.5), [2.0])
    np.testing.assert_array_equal(ops.leaky_relu_backward(np.array([2.0, 2.0]), np.array([-1.0, 0.0]),
                                                          negative_slope=0.25), [0.5, 0.5])
    np.testing.assert_array_equal(ops.relu_backward(np.array([2.0, 2.0, 2.0]), np.array([0.0, 1.0, -0.0])),
                                  [0.0, 2.0, 0.0])


# --- parameters ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.0, 1.5, -0.5, np.float32(0.3), 2])
def test_leaky_relu_slope_reaches_the_kernel(slope, dtype):
    x, dout = _inputs((50_000,), dtype, seed=4)
    with cynet.threads(2):
        y = ops.leaky_relu_forward(x, negative_slope=slope)
        dx = ops.leaky_relu_backward(dout, x, negative_slope=slope)
    np.testing.assert_array_equal(y, reference.leaky_relu_forward(x, slope))
    np.testing.assert_array_equal(dx, reference.leaky_relu_backward(dout, x, slope))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.5, np.float64(1.7)])
def test_elu_alpha_reaches_the_kernel(alpha, dtype):
    x, dout = _inputs((50_000,), dtype, seed=5)
    with cynet.threads(2):
        y = ops.elu_forward(x, alpha=alpha)
        dx = ops.elu_backward(dout, y, alpha=alpha)
    expected = _reference_f64(reference.elu_forward, x, alpha=alpha)
    err = ulp_error(y, expected, dtype)
    assert err.max() <= (FORWARD_ULP if dtype == np.float32 else 8)  # float64 vs the float64 reference: 4 + 4
    np.testing.assert_array_equal(dx, reference.elu_backward(dout, y, alpha))


def test_defaults_are_the_documented_ones():
    x, dout = _inputs((100,), np.float64, seed=6)
    np.testing.assert_array_equal(ops.leaky_relu_forward(x), ops.leaky_relu_forward(x, 0.01))
    np.testing.assert_array_equal(ops.leaky_relu_backward(dout, x), ops.leaky_relu_backward(dout, x, 0.01))
    np.testing.assert_array_equal(ops.elu_forward(x), ops.elu_forward(x, 1.0))
    np.testing.assert_array_equal(ops.gelu_forward(x), ops.gelu_forward(x, "none"))
    np.testing.assert_array_equal(ops.gelu_backward(dout, x), ops.gelu_backward(dout, x, "none"))
    assert not np.array_equal(ops.gelu_forward(x, "tanh"), ops.gelu_forward(x, "none"))


# --- out=, in place, read-only and strided inputs -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_out_in_place_readonly_and_strided(op, dtype):
    x, dout = _inputs((40, 30), dtype, seed=7)
    y_expected = op.forward(x)
    saved = op.saved_tensor(x, y_expected)
    dx_expected = op.backward(dout, saved)
    assert_forward_accurate(op, x, y_expected)

    out = np.full_like(x, np.nan)
    assert op.forward(x, out=out) is out
    np.testing.assert_array_equal(out, y_expected)
    out = np.full_like(x, np.nan)
    assert op.backward(dout, saved, out=out) is out
    np.testing.assert_array_equal(out, dx_expected)

    inplace = x.copy()
    assert op.forward(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, y_expected)
    g, s = dout.copy(), saved.copy()
    assert op.backward(g, s, out=g) is g
    np.testing.assert_array_equal(g, dx_expected)
    g, s = dout.copy(), saved.copy()
    assert op.backward(g, s, out=s) is s
    np.testing.assert_array_equal(s, dx_expected)

    ro_x, ro_g, ro_s = x.copy(), dout.copy(), saved.copy()
    for a in (ro_x, ro_g, ro_s):
        a.flags.writeable = False
    np.testing.assert_array_equal(op.forward(ro_x), y_expected)
    np.testing.assert_array_equal(op.backward(ro_g, ro_s), dx_expected)

    # strided views: every other column, the transpose, Fortran order, reversed
    wide = np.zeros((40, 60), dtype)
    wide[:, ::2] = x
    wide_g, wide_s = np.zeros_like(wide), np.zeros_like(wide)
    wide_g[:, ::2], wide_s[:, ::2] = dout, saved
    np.testing.assert_array_equal(op.forward(wide[:, ::2]), y_expected)
    np.testing.assert_array_equal(op.backward(wide_g[:, ::2], wide_s[:, ::2]), dx_expected)
    np.testing.assert_array_equal(op.forward(np.ascontiguousarray(x.T).T), y_expected)
    np.testing.assert_array_equal(op.forward(x.T), y_expected.T)
    np.testing.assert_array_equal(op.backward(dout.T, saved.T), dx_expected.T)
    np.testing.assert_array_equal(op.forward(np.asfortranarray(x)), y_expected)
    np.testing.assert_array_equal(op.forward(x[::-1, ::-1]), y_expected[::-1, ::-1])


def test_list_input(op):
    values = [[-2.5, -0.5, 0.0], [0.25, 1.0, 3.0]]
    as_array = np.array(values)
    y = op.forward(values)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == (2, 3)
    np.testing.assert_array_equal(y, op.forward(as_array))
    assert_forward_accurate(op, as_array, y)
    dout = [[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]]
    saved = op.saved_tensor(as_array, y).tolist()
    np.testing.assert_array_equal(op.backward(dout, saved), op.backward(np.array(dout), np.array(saved)))


def test_scalar_input_values(op):
    for scalar in (0.75, np.float32(-1.5), np.array(2.0), np.float64(-0.25)):
        y0 = op.forward(scalar)
        assert y0.dtype == np.asarray(scalar).dtype and y0.size == 1
        np.testing.assert_array_equal(y0.reshape(()), op.forward(np.asarray(scalar).reshape(1))[0])


# 0-d input (np.float32(2.0), np.array(2.0), a Python float) keeps its () shape, and a 0-d out= is accepted.
def test_zero_d_input_keeps_its_shape(op):
    x = np.array(0.75)
    y = op.forward(x)
    assert y.shape == op.forward(x, module=reference).shape == ()
    assert op.backward(np.array(1.0), op.saved_tensor(x, y)).shape == ()
    out = np.empty(())
    assert op.forward(x, out=out) is out


def test_byte_swapped_input_gives_the_same_values(op):
    x, _ = _inputs((64,), np.float32, seed=8)
    swapped = x.astype(x.dtype.newbyteorder())
    y = op.forward(swapped)
    assert_forward_accurate(op, x, np.asarray(y, np.float32))


# --- fallback dtypes -------------------------------------------------------------------------------------------------
def test_float16_falls_back_to_the_reference(op):
    x = np.linspace(-8, 8, 2001).astype(np.float16)
    dout = np.cos(np.arange(x.size)).astype(np.float16)
    y = op.forward(x)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, op.forward(x, module=reference))
    # and the fallback is accurate for float16: within 4 ulp of the float64 reference (measured <= 2.5)
    assert ulp_error(y, _reference_f64(op.forward, x, module=reference), np.float16).max() <= 4
    saved = op.saved_tensor(x, y)
    dx = op.backward(dout, saved)
    assert dx.dtype == np.float16
    np.testing.assert_array_equal(dx, op.backward(dout, saved, module=reference))
    out = np.empty_like(x)
    assert op.forward(x, out=out) is out
    np.testing.assert_array_equal(out, y)


def test_float16_silu_is_accurate_over_every_float16():
    """Every finite float16: SiLU and its gradient within 1 ulp of the float64 formula rounded to float16. Evaluated in
    float16, x sigmoid(x) was 6.2 ulp off at x = -12.16 (sigmoid(-12) = 6.1e-6 is a float16 subnormal) and the
    gradient 760 ulp off at x = -1.28 (1 + x (1 - s) cancels near the derivative's root)."""
    x = np.arange(65536, dtype=np.uint16).view(np.float16)
    x = x[np.isfinite(x)]
    xd = x.astype(np.float64)
    e = np.exp(-np.abs(xd))
    s = np.where(xd >= 0, 1 / (1 + e), e / (1 + e))
    truths = {"forward": xd * s, "backward": s * (1 + xd * (1 - s))}
    got = {"forward": ops.silu_forward(x), "backward": ops.silu_backward(np.ones_like(x), x)}
    for name, truth in truths.items():
        assert got[name].dtype == np.float16
        assert ulp_error(got[name], truth, np.float16).max() <= 1, name


def test_longdouble_falls_back_to_the_reference(op):
    x = np.linspace(-6, 6, 101).astype(np.longdouble)
    y = op.forward(x)
    assert y.dtype == np.longdouble
    np.testing.assert_array_equal(y, op.forward(x, module=reference))


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant,
                    reason="long double is float64 here")
def test_longdouble_selu_uses_long_double_constants():
    """lambda and lambda alpha to 32 digits, not rounded to float64 first (2470 ulp off at x = -0.0089)."""
    ld = np.longdouble
    scale, scale_alpha = ld("1.0507009873554804934193349852946"), ld("1.7580993408473768599402175208123")
    x = np.array([ld("-0.0089073546386104398426"), ld(1), ld(-1)])
    truth = np.where(x > 0, scale * x, scale_alpha * np.expm1(x))
    y = ops.selu_forward(x)
    assert y.dtype == np.longdouble
    assert ulp_error(y, truth).max() <= 3
    dx = ops.selu_backward(np.ones_like(x), y)
    assert dx[1] == scale
    assert ulp_error(dx[[0, 2]], (scale_alpha * np.exp(x))[[0, 2]]).max() <= 4


# Long double GELU, evaluated in long double (cynet.reference._erfc_wide), not in float64 and rounded: exact values from
# mpmath (300 bits) as (x, x Phi(x), Phi(x) + x phi(x), and the condition numbers |x f'/f| of both, at least 1).
_LD_1_AND_A_BIT = np.longdouble(1) + np.longdouble(2) ** -60  # 1 in float64
_LD_GELU_TRUTH = [
    (_LD_1_AND_A_BIT, "8.413447460685429495248589e-1", "1.083315470587686298592939", 1.288, 1),
    (-_LD_1_AND_A_BIT, "-1.586552539314570513425028e-1", "-8.331547058768629859293889e-2", 1, 2.904),
    ("0.5", "3.457312306370065518188523e-1", "8.674951246561628425250448e-1", 1.255, 1),
    ("-3.5", "-8.142017766243376272247406e-4", "-2.821760353624635193254249e-3", 12.13, 11.1),
    ("3", "2.995950305905109716420045", "1.011945647204183927000155", 1.013, 1),
    ("-10", "-7.619853024160526065973343e-23", "-7.6184000964648140856793e-22", 99.98, 98.98),
    ("-60", "-7.425438171860390984393264e-783", "-4.45526221652862288186298e-781", 3600, 3599),   # 0 in float64
    ("-120", "-4.793030673383282764307282e-3128", "-5.75163675260429948738358e-3126", 1.44e4, 1.44e4),
]
needs_extended = pytest.mark.skipif(not EXTENDED, reason="long double is not x87 extended precision here")


@needs_extended
def test_longdouble_gelu_is_evaluated_in_long_double():
    # within 4 long-double eps times the condition number of mpmath's values (measured: 2.5); in float64 the first
    # two would be ~1e-17 off (x rounded to +-1), and -60, -120 would give -0
    eps = float(np.finfo(np.longdouble).eps)
    for x_value, y_text, g_text, kappa_y, kappa_g in _LD_GELU_TRUTH:
        x = np.array([np.longdouble(x_value)])
        y_true, g_true = np.longdouble(y_text), np.longdouble(g_text)
        y = ops.gelu_forward(x)
        dx = ops.gelu_backward(np.ones_like(x), x)
        assert y.dtype == dx.dtype == np.longdouble
        assert float(abs((y[0] - y_true) / y_true)) <= 4 * eps * kappa_y, (x_value, y[0], y_true)
        assert float(abs((dx[0] - g_true) / g_true)) <= 4 * eps * kappa_g, (x_value, dx[0], g_true)


@needs_extended
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_longdouble_gelu_beyond_the_range_of_float64(approximate):
    # computed in float64, 1e400 became inf (-> inf), -1e400 -inf (-> NaN) and -1e-400 -0 (-> -0)
    ld = np.longdouble
    x = np.array([ld("1e400"), ld("-1e-400"), ld("-1e400"), ld("1e-400"), ld("1e4000"), ld("-1e4000")])
    y = ops.gelu_forward(x, approximate)
    np.testing.assert_array_equal(y, [ld("1e400"), ld("-1e-400") / 2, 0, ld("1e-400") / 2, ld("1e4000"), 0])
    assert np.signbit(y[2]) and np.signbit(y[5])                # -0: the limit of x Phi(x) from the left
    dx = ops.gelu_backward(np.ones_like(x), x, approximate)
    np.testing.assert_array_equal(dx, [1, 0.5, 0, 0.5, 1, 0])


@needs_extended
def test_longdouble_gelu_tanh_backward_keeps_the_gate_slope_where_the_gate_rounds_to_one():
    # the long-double tanh form took sigma(w) (1 - sigma(w)) from the rounded sigma(w), exactly 1 in long double from
    # x = 7.3 on: at x = 7.665 dx was 1, 6.2 long-double eps (1 + |x|) below mpmath's derivative (60 digits)
    x = np.array([np.longdouble("7.665")])
    dx = ops.gelu_backward(np.ones_like(x), x, approximate="tanh")
    truth = np.longdouble("1.000000000000000005812757")
    assert float(abs(dx[0] - truth)) <= BACKWARD_EPS * float(np.finfo(np.longdouble).eps) * (1 + 7.665), dx[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_elu_and_selu_keep_the_sign_of_a_negative_zero(dtype):
    """alpha (e^x - 1) at x = -0 is -0 (expm1(-0) = -0, torch gives -0); the kernels and the reference gave +0 for
    float32/float64 (the vectorised expm1 and np.minimum(-0, 0) drop the sign) and -0 for float16."""
    x = np.array([-0.0, 0.0, -1e-30, 1e-30], dtype)
    for y in (ops.elu_forward(x, alpha=1.0), ops.elu_forward(x, alpha=0.5), ops.selu_forward(x),
              reference.elu_forward(x, 1.0), reference.selu_forward(x)):
        assert list(np.signbit(y)) == [True, False, True, False]
        assert y.dtype == dtype


def test_an_output_that_is_a_matrix_or_a_masked_array_and_masked_parameters_are_refused_by_name():
    x = np.ones((1, 4), np.float32)
    for out in (np.asmatrix(np.empty((1, 4), np.float32)), np.ma.masked_array(np.empty((1, 4), np.float32))):
        with pytest.raises(TypeError, match=f"^sigmoid_forward: out must be a plain numpy.ndarray, got a "
                                            f"{type(out).__name__}"):
            ops.sigmoid_forward(x, out=out)
    alpha = np.ma.masked_array(np.full(4, 0.25, np.float32), mask=[False, True, False, False])
    with pytest.raises(TypeError, match="^prelu_forward: alpha is a masked array"):
        ops.prelu_forward(np.ones((2, 4), np.float32), alpha)
    indices = np.ma.masked_array(np.zeros((2, 2), np.int32), mask=[[True, False], [False, False]])
    with pytest.raises(TypeError, match="^maxout_backward: indices is a masked array"):
        ops.maxout_backward(np.ones((2, 2), np.float32), indices, 2)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_at_infinity_is_nan_in_every_dtype(approximate):
    # long double's tanh form gave the limits 1 and 0 where every other dtype (and its erf form) gives NaN
    for dtype in (np.float16, np.float32, np.float64, np.longdouble):
        x = np.array([np.inf, -np.inf], dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            dx = cynet.ops.gelu_backward(np.ones_like(x), x, approximate=approximate)
        assert np.isnan(dx).all(), (dtype, approximate, dx)


# float64 gelu_backward(approximate='tanh') (the kernel and the reference alike) took the gate's slope
# sigma(w) (1 - sigma(w)) from the rounded sigma(w), which is exactly 1 from x = 4.9 on, while the term it multiplies,
# x sigma (1 - sigma) 2c (1 + 3k x^2), is still several eps there: dx was 5.4 eps |dout| (1 + |x|) off at x = 7.09,
# beyond BACKWARD_EPS (the float32 kernel, which takes e / (1 + e)^2 with e = exp(-|w|), met it). The oracle: the
# long-double derivative (its own cancellation is 2048 times smaller).
@pytest.mark.parametrize("module", [ops, reference], ids=["kernel", "reference"])
def test_float64_gelu_tanh_backward_keeps_the_gate_slope_where_the_gate_rounds_to_one(module):
    x = np.linspace(-12, 12, 240_001)
    dout = np.random.default_rng(41).standard_normal(x.size)
    dx = module.gelu_backward(dout, x, approximate="tanh")
    truth = dout.astype(np.longdouble) * truth_derivative(BY_ID["gelu-tanh"], x)
    err = (np.abs(dx - truth) / (np.finfo(np.float64).eps * np.abs(dout) * (1 + np.abs(x)))).astype(np.float64)
    assert err.max() <= BACKWARD_EPS, (x[np.argmax(err)], err.max())


# The activation layers passed their input and dout straight to cynet.ops, so a user's mistake came back naming an op
# the user never called ("relu_forward: x must be a floating-point array", "gelu_backward: dout and x must have the
# same shape"), and PReLU(3) given 5 channels named prelu_forward's alpha; the layer itself is named now.
@pytest.mark.parametrize("layer", [nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU,
                                   lambda: nn.PReLU(3)], ids=lambda f: getattr(f, "__name__", "PReLU"))
def test_activation_layer_errors_name_the_layer_not_the_op(layer):
    module = layer()
    name = type(module).__name__
    if name != "PReLU":
        with pytest.raises(TypeError, match=rf"^{name}\(.*\): input must be a floating-point array .*got int64 array "
                                            r"of shape \(2, 3\)"):
            module.forward(np.ones((2, 3), np.int64))
    module.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=rf"^{name}\(.*\): dout must be a float32 array of shape \(2, 3\) \(the "
                                         r"forward's output\), got float32 array of shape \(3, 2\)"):
        module.backward(np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match=rf"^{name}\(.*\): dout must be a float32 array of shape \(2, 3\).*got float64"):
        module.backward(np.ones((2, 3), np.float64))


def test_prelu_per_channel_refuses_another_channel_count_naming_the_layer():
    with pytest.raises(ValueError, match=r"^PReLU\(num_parameters=3\): expected input of shape \(N, 3, \*\).*got "
                                         r"float32 array of shape \(2, 5\)"):
        nn.PReLU(3).forward(np.ones((2, 5), np.float32))
