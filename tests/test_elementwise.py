"""Every elementwise activation, forward and backward, against the NumPy reference and numerical gradients."""
import numpy as np
import pytest

import cynet
from _helpers import (ELEMENTWISE, ELEMENTWISE_IDS, assert_close_ulp, backward_pair, forward_pair,
                      numerical_gradient, relative_error)

# empty, one element, odd, below and above the parallel threshold (32768 elements), 4-D
SHAPES = [(0,), (0, 5), (1,), (7, 13), (33, 1001), (257, 300), (3, 4, 5, 6)]
DTYPES = [np.float32, np.float64]
THREADS = [1, 2, 4]

# Bounds measured over dense grids (tests/test_vecmath.py records the figures); the forwards with a formula that is
# pure arithmetic are compared for exact equality.
FORWARD_MAX_ULP = {np.float32: 4, np.float64: 4}
GELU_F64_MAX_ULP = 80  # float64 GELU for |x| <= 5, measured 66 (erf form) and 42 (tanh form)


def _saved(name, kw, x, y):
    spec = {n: s for n, _, s, _, _ in ELEMENTWISE}
    return x if spec[name] == "x" else y


def _inputs(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_forward_matches_reference(name, kw, saved, kinked, exact, dtype, shape, threads):
    fwd, ref = forward_pair(name)
    x, _ = _inputs(shape, dtype)
    with cynet.threads(threads):
        y = fwd(x, **kw)
    assert y.shape == x.shape and y.dtype == x.dtype
    if exact:
        np.testing.assert_array_equal(y, ref(x, **kw))
    elif name == "gelu" and dtype == np.float64:
        # The left tail is ill-conditioned: an error of one ulp in the rounded argument of erfc (or of the cubic)
        # moves the result by about x^2 ulp, in the reference as in the kernel. Allow that, and no more.
        expected = ref(x, **kw)
        rtol = (GELU_F64_MAX_ULP + x.astype(np.float64) ** 2) * np.finfo(dtype).eps
        assert np.all(np.abs(y - expected) <= rtol * np.abs(expected) + 1e-300)
    else:
        assert_close_ulp(y, ref(x.astype(np.float64), **kw), dtype, FORWARD_MAX_ULP[dtype],
                         abs_floor=np.finfo(dtype).tiny)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_backward_matches_reference(name, kw, saved, kinked, exact, dtype, shape, threads):
    fwd, _ = forward_pair(name)
    bwd, ref = backward_pair(name)
    x, dout = _inputs(shape, dtype, seed=1)
    y = fwd(x, **kw)
    s = _saved(name, kw, x, y)
    with cynet.threads(threads):
        dx = bwd(dout, s, **kw)
    if name in ("gelu", "silu"):
        # transcendental derivative: compare with the float64 truth, absolute tolerance on the derivative's scale
        # (the derivative is O(1); rounding of the cubic's / erfc's argument adds about x^2 ulp in the tails)
        expected = ref(dout.astype(np.float64), s.astype(np.float64), **kw)
        tol = 8 * np.finfo(dtype).eps * np.maximum(1.0, np.abs(dout)) * (1 + s.astype(np.float64) ** 2)
        assert np.all(np.abs(dx - expected) <= tol)
    else:
        # dout * (pure arithmetic on the saved tensor): the same operations as the reference, bit for bit
        np.testing.assert_array_equal(dx, ref(dout, s, **kw))


@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_backward_matches_numerical_gradient(name, kw, saved, kinked, exact):
    fwd, _ = forward_pair(name)
    bwd, _ = backward_pair(name)
    rng = np.random.default_rng(2)
    x = rng.uniform(-4, 4, size=(6, 7))
    if kinked:  # keep away from the kink at 0: the centred difference straddles it otherwise
        x = np.where(np.abs(x) < 1e-2, 0.5, x)
    dout = rng.standard_normal(x.shape)
    y = fwd(x, **kw)
    dx = bwd(dout, _saved(name, kw, x, y), **kw)
    numeric = numerical_gradient(lambda v: fwd(v, **kw), x.copy(), dout)
    assert relative_error(dx, numeric) < 1e-6


@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_thread_count_does_not_change_bits(name, kw, saved, kinked, exact, dtype):
    fwd, _ = forward_pair(name)
    bwd, _ = backward_pair(name)
    x, dout = _inputs((300_001,), dtype, seed=3)
    results = []
    for n in (1, 2, 3, 4):
        with cynet.threads(n):
            y = fwd(x, **kw)
            results.append((y, bwd(dout, _saved(name, kw, x, y), **kw)))
    for y, dx in results[1:]:
        assert np.array_equal(y, results[0][0], equal_nan=True)
        assert np.array_equal(dx, results[0][1], equal_nan=True)


SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 88.0, -88.0, 90.0, -90.0,
           700.0, -700.0, 750.0, -750.0, 20.0, -20.0]


@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_special_values_give_the_reference_answer(name, kw, saved, kinked, exact, dtype):
    fwd, ref = forward_pair(name)
    with np.errstate(all="ignore"):
        x = np.array(SPECIAL, dtype=dtype)
        y = fwd(x, **kw)
        expected = ref(x.astype(np.float64), **kw).astype(dtype)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(y[~finite], expected[~finite])
    # GELU's left tail: about x^2 ulp from the rounding of erfc's / the cubic's argument (see the forward test)
    conditioning = 1 + x.astype(np.float64) ** 2 if name == "gelu" else 1.0
    with np.errstate(invalid="ignore"):  # inf - inf outside `finite`
        err = np.abs(y.astype(np.float64) - expected)[finite]
    bound = (8 * np.finfo(dtype).eps * conditioning * np.abs(expected.astype(np.float64)))[finite]
    assert np.all(err <= bound + 4 * np.finfo(dtype).smallest_subnormal), (x[finite], y[finite], expected[finite])
    if name in ("sigmoid", "tanh", "elu", "selu"):
        # no overflow to NaN for large |x|: NaN only where the input is NaN
        np.testing.assert_array_equal(np.isnan(y), np.isnan(x))


def test_saturating_values_are_exact():
    x = np.array([-1e30, -200.0, 100.0, 1e30], np.float32)
    np.testing.assert_array_equal(cynet.ops.tanh_forward(x), [-1, -1, 1, 1])
    np.testing.assert_array_equal(cynet.ops.sigmoid_forward(x), [0, 0, 1, 1])
    np.testing.assert_array_equal(cynet.ops.elu_forward(x[:2], alpha=2.0), [-2, -2])


def test_hand_computed_values():
    ops = cynet.ops
    np.testing.assert_allclose(ops.sigmoid_forward(np.array([0.0, np.log(3.0)])), [0.5, 0.75], rtol=1e-15)
    np.testing.assert_allclose(ops.tanh_forward(np.array([np.log(2.0)])), [0.6], rtol=1e-15)
    np.testing.assert_allclose(ops.elu_forward(np.array([-np.log(2.0)]), alpha=2.0), [-1.0], rtol=1e-15)
    np.testing.assert_allclose(ops.gelu_forward(np.array([1.0])), [0.8413447460685429], rtol=1e-15)
    np.testing.assert_allclose(ops.silu_forward(np.array([np.log(3.0)])), [0.75 * np.log(3.0)], rtol=1e-15)
    np.testing.assert_allclose(ops.selu_forward(np.array([2.0])), [2 * 1.0507009873554805], rtol=1e-15)


@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_out_in_place_readonly_and_noncontiguous(name, kw, saved, kinked, exact):
    fwd, _ = forward_pair(name)
    x, _ = _inputs((40, 30), np.float32, seed=4)
    expected = fwd(x, **kw)

    out = np.empty_like(x)
    assert fwd(x, out=out, **kw) is out
    np.testing.assert_array_equal(out, expected)

    inplace = x.copy()
    assert fwd(inplace, out=inplace, **kw) is inplace
    np.testing.assert_array_equal(inplace, expected)

    readonly = x.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(fwd(readonly, **kw), expected)

    wide = np.zeros((40, 60), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(fwd(wide[:, ::2], **kw), expected)
    np.testing.assert_array_equal(fwd(np.asfortranarray(x), **kw), expected)
    np.testing.assert_array_equal(fwd(x.tolist(), **kw).astype(np.float32), fwd(x.astype(np.float64), **kw)
                                  .astype(np.float32))


@pytest.mark.parametrize("name,kw,saved,kinked,exact", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_float16_falls_back_to_the_reference(name, kw, saved, kinked, exact):
    fwd, ref = forward_pair(name)
    bwd, ref_bwd = backward_pair(name)
    x, dout = _inputs((5, 9), np.float16, seed=5, scale=2.0)
    y = fwd(x, **kw)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, ref(x, **kw))
    s = _saved(name, kw, x, y)
    np.testing.assert_array_equal(bwd(dout, s, **kw), ref_bwd(dout, s, **kw))
