"""PReLU (shared and per-channel slopes, with dalpha) and Maxout against the reference, hand-computed values,
independent loop oracles and numerical gradients; thread invariance; errors."""
import numpy as np
import pytest

import cynet
from cynet import nn, ops, reference
from _helpers import numerical_gradient, numerical_gradient_elementwise, relative_error

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
THREADS = [1, 2, 4]


# --- PReLU -----------------------------------------------------------------------------------------------------------
# (x shape, alpha shape): a shared slope on any shape (alpha of shape (), (1,) or (1, 1)); per-channel slopes on axis 1
# of (N, C) ("rows" kernel) and of (N, C, ...) ("planes" kernel); empty, single element, around the 32768 threshold
PRELU_CASES = [
    ((0, 4), (4,)), ((0, 4), (1,)), ((1,), (1,)), ((1,), ()), ((3, 1), (1,)), ((7, 13), (1,)), ((7, 13), (13,)),
    ((7, 13), (1, 1)), ((257, 300), (300,)), ((33, 1001), (1,)), ((33, 1001), (1001,)), ((100_003,), ()),
    ((4, 3, 5, 6), (3,)), ((64, 8, 16, 16), (8,)), ((64, 8, 16, 16), ()), ((5, 2, 3), (2,)),
    ((2, 3, 4, 5, 6), (3,)), ((3, 7, 40, 40), (7,)),
]


def _prelu_inputs(x_shape, alpha_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    dout = rng.standard_normal(x_shape).astype(dtype)
    alpha = rng.uniform(0.05, 0.5, size=alpha_shape).astype(dtype)
    return x, dout, alpha


def _channel_axes(x, alpha):
    """Axes dalpha sums over: all of them for a shared slope, all but axis 1 for per-channel slopes."""
    return None if np.size(alpha) == 1 else (0,) + tuple(range(2, x.ndim))


def _assert_dalpha_close(dalpha, expected, dout, x, alpha, rtol):
    """Close to the reference within rtol, or within the worst-case error of two float64 sums of n terms in different
    orders, 2 n u sum|terms| (u = 2**-53): the sums may cancel."""
    terms = np.abs(dout.astype(np.float64) * np.minimum(x, 0).astype(np.float64))
    total = np.asarray(terms.sum(axis=_channel_axes(x, alpha))).reshape(np.shape(alpha))
    n = max(x.size // max(np.size(alpha), 1), 1)
    err = np.abs(dalpha.astype(np.float64) - expected.astype(np.float64))
    bound = rtol * np.abs(expected.astype(np.float64)) + 2 * n * 2.0 ** -53 * total
    assert np.all(err <= bound), (err, bound)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("x_shape,alpha_shape", PRELU_CASES, ids=str)
def test_prelu_matches_reference(x_shape, alpha_shape, dtype, threads):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, dtype)
    with cynet.threads(threads):
        y = ops.prelu_forward(x, alpha)
        dx, dalpha = ops.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(y, reference.prelu_forward(x, alpha))
    ref_dx, ref_dalpha = reference.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(dx, ref_dx)
    assert y.shape == dx.shape == x.shape and y.dtype == dx.dtype == dtype
    assert dalpha.shape == alpha.shape and dalpha.dtype == dtype
    _assert_dalpha_close(dalpha, ref_dalpha, dout, x, alpha, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("x_shape", [(6, 5), (4, 5, 3, 3), (2, 5, 7)], ids=str)
def test_per_channel_prelu_is_leaky_relu_per_channel(x_shape, dtype):
    # an oracle independent of the reference: channel c of PReLU is Leaky ReLU with slope alpha[c]
    x, dout, alpha = _prelu_inputs(x_shape, (x_shape[1],), dtype, seed=1)
    y = ops.prelu_forward(x, alpha)
    dx, dalpha = ops.prelu_backward(dout, x, alpha)
    for c in range(x_shape[1]):
        xc, gc = x[:, c], dout[:, c]
        np.testing.assert_array_equal(y[:, c], ops.leaky_relu_forward(xc, float(alpha[c])))
        np.testing.assert_array_equal(dx[:, c], ops.leaky_relu_backward(gc, xc, float(alpha[c])))
        expected = np.sum(gc.astype(np.float64) * np.where(xc > 0, 0, xc).astype(np.float64))
        np.testing.assert_allclose(dalpha[c], expected, rtol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("alpha", [0.25, np.float32(0.25), np.float64(0.25), np.array(0.25), np.array([0.25]),
                                   np.array([[0.25]])], ids=["float", "np.float32", "np.float64", "0-d", "(1,)",
                                                             "(1, 1)"])
@pytest.mark.parametrize("x_shape", [(10,), (6, 4), (3, 4, 5, 2)], ids=str)
def test_scalar_alpha_is_a_shared_slope(alpha, x_shape):
    x, dout, _ = _prelu_inputs(x_shape, (), np.float32, seed=2)
    y = ops.prelu_forward(x, alpha)
    dx, dalpha = ops.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(y, ops.leaky_relu_forward(x, 0.25))
    np.testing.assert_array_equal(dx, ops.leaky_relu_backward(dout, x, 0.25))
    assert dalpha.shape == np.shape(alpha) and dalpha.dtype == np.float32
    expected = np.sum(dout.astype(np.float64) * np.minimum(x, 0).astype(np.float64))
    np.testing.assert_allclose(dalpha.reshape(()), expected, rtol=1e-6)


def test_prelu_hand_computed():
    x = np.array([[-1.0, -1.0], [2.0, -4.0]], np.float32)
    alpha = np.array([0.25, 0.5], np.float32)
    np.testing.assert_array_equal(ops.prelu_forward(x, alpha), [[-0.25, -0.5], [2.0, -2.0]])
    dx, dalpha = ops.prelu_backward(np.ones_like(x), x, alpha)
    np.testing.assert_array_equal(dx, [[0.25, 0.5], [1.0, 0.5]])
    np.testing.assert_array_equal(dalpha, [-1.0, -5.0])  # per column: sum of min(x, 0)
    _, dalpha_shared = ops.prelu_backward(np.array([[2.0, 3.0], [5.0, 7.0]], np.float32), x, 0.25)
    assert dalpha_shared.shape == () and dalpha_shared == -2.0 - 3.0 - 28.0
    # NCHW: channel 1 of a (1, 2, 1, 2) input
    x4 = np.array([[[[-2.0, 4.0]], [[-8.0, -1.0]]]])
    np.testing.assert_array_equal(ops.prelu_forward(x4, np.array([0.5, 0.25])), [[[[-1.0, 4.0]], [[-2.0, -0.25]]]])
    np.testing.assert_array_equal(ops.prelu_backward(np.ones_like(x4), x4, np.array([0.5, 0.25]))[1], [-2.0, -9.0])


@pytest.mark.parametrize("x_shape,alpha_shape", [((5, 4), (4,)), ((5, 4), (1,)), ((5, 4), ()), ((3, 2, 3, 2), (2,)),
                                                 ((3, 2, 3, 2), ()), ((2, 3, 5), (3,))], ids=str)
def test_prelu_numerical_gradient_of_x_and_alpha(x_shape, alpha_shape):
    rng = np.random.default_rng(7)
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, np.float64, seed=7)
    while np.any(np.abs(x) < 1e-3):  # away from the kink
        x = np.where(np.abs(x) < 1e-3, rng.standard_normal(x.shape), x)
    dx, dalpha = ops.prelu_backward(dout, x, alpha)
    num_dx = numerical_gradient_elementwise(lambda v: ops.prelu_forward(v, alpha), x, dout)
    # dalpha: perturb one slope at a time, difference sum(prelu(x, alpha) * dout)
    num_dalpha = numerical_gradient(lambda a: ops.prelu_forward(x, a), alpha.copy(), dout)
    assert relative_error(dx, num_dx) < 1e-6
    assert relative_error(dalpha, num_dalpha) < 1e-6
    assert dalpha.shape == alpha.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("x_shape,alpha_shape", [((2048, 300), (300,)), ((64, 8, 40, 40), (8,)), ((2048, 300), (1,)),
                                                 ((64, 8, 40, 40), ()), ((3, 4, 100, 100), (4,)),
                                                 ((300_001,), ())], ids=str)
def test_prelu_dalpha_is_bit_identical_for_any_thread_count(x_shape, alpha_shape, dtype):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, dtype, seed=3)
    results = []
    for n in (1, 2, 3, 4):
        with cynet.threads(n):
            results.append((ops.prelu_forward(x, alpha),) + ops.prelu_backward(dout, x, alpha))
    for n, (y, dx, dalpha) in zip((2, 3, 4), results[1:]):
        assert np.array_equal(y, results[0][0]), f"y differs with {n} threads"
        assert np.array_equal(dx, results[0][1]), f"dx differs with {n} threads"
        assert np.array_equal(dalpha, results[0][2]), f"dalpha differs with {n} threads"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("x_shape,alpha_shape", [((6, 4), (4,)), ((3, 4, 2, 2), (4,)), ((7,), ())], ids=str)
def test_prelu_nan_and_inf_follow_the_reference(x_shape, alpha_shape, dtype):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, dtype, seed=4)
    flat_x, flat_g = x.reshape(-1), dout.reshape(-1)
    flat_x[:4] = [np.nan, -np.inf, np.inf, -0.0]
    flat_g[4:6] = [np.nan, np.inf]
    with np.errstate(invalid="ignore"):
        y = ops.prelu_forward(x, alpha)
        dx, dalpha = ops.prelu_backward(dout, x, alpha)
        ref_dx, ref_dalpha = reference.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(y, reference.prelu_forward(x, alpha))
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(np.isnan(dalpha), np.isnan(ref_dalpha))
    np.testing.assert_array_equal(np.isinf(dalpha), np.isinf(ref_dalpha))


def test_prelu_out_buffers_in_place_and_strided_inputs():
    x, dout, alpha = _prelu_inputs((12, 5), (5,), np.float32, seed=5)
    y_expected = ops.prelu_forward(x, alpha)
    dx_expected, dalpha_expected = ops.prelu_backward(dout, x, alpha)

    out = np.full_like(x, np.nan)
    assert ops.prelu_forward(x, alpha, out=out) is out
    np.testing.assert_array_equal(out, y_expected)
    dx_out, dalpha_out = np.full_like(x, np.nan), np.full(5, np.nan, np.float32)
    dx, dalpha = ops.prelu_backward(dout, x, alpha, out=dx_out, alpha_grad_out=dalpha_out)
    assert dx is dx_out and dalpha is dalpha_out
    np.testing.assert_array_equal(dx, dx_expected)
    np.testing.assert_array_equal(dalpha, dalpha_expected)

    inplace = x.copy()
    assert ops.prelu_forward(inplace, alpha, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, y_expected)

    ro = [a.copy() for a in (x, dout, alpha)]
    for a in ro:
        a.flags.writeable = False
    np.testing.assert_array_equal(ops.prelu_forward(ro[0], ro[2]), y_expected)
    np.testing.assert_array_equal(ops.prelu_backward(ro[1], ro[0], ro[2])[1], dalpha_expected)

    tall_x, tall_g = np.repeat(x, 2, axis=0), np.repeat(dout, 2, axis=0)
    np.testing.assert_array_equal(ops.prelu_forward(tall_x[::2], alpha), y_expected)
    dx, dalpha = ops.prelu_backward(tall_g[::2], tall_x[::2], alpha[::-1][::-1])
    np.testing.assert_array_equal(dx, dx_expected)
    np.testing.assert_array_equal(dalpha, dalpha_expected)
    np.testing.assert_array_equal(ops.prelu_forward(np.asfortranarray(x), alpha), y_expected)


# out=dout or out=x (in-place backward) gives the same dx and dalpha in every layout.


def _in_place_cases():
    for x_shape, alpha_shape, layout in [((12, 5), (5,), "rows"), ((12, 5), (1,), "shared"),
                                         ((4, 5, 3), (5,), "planes"), ((70, 500), (500,), "rows"),
                                         ((8, 5, 30, 30), (5,), "planes")]:
        for target in ("dout", "x"):
            yield pytest.param(x_shape, alpha_shape, target, id=f"{layout}-{x_shape}-out={target}")


@pytest.mark.parametrize("x_shape,alpha_shape,target", list(_in_place_cases()))
def test_prelu_backward_in_place(x_shape, alpha_shape, target):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, np.float32, seed=9)
    ref_dx, ref_dalpha = reference.prelu_backward(dout, x, alpha)
    dout, x = dout.copy(), x.copy()
    out = dout if target == "dout" else x
    dx, dalpha = ops.prelu_backward(dout, x, alpha, out=out)
    assert dx is out
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_allclose(dalpha, ref_dalpha, rtol=1e-5)


def test_prelu_backward_in_place_hand_computed():
    dout, x = np.array([[2.0, 2.0]]), np.array([[-1.0, -3.0]])
    dx, dalpha = ops.prelu_backward(dout, x, np.array([0.5, 0.25]), out=dout)
    np.testing.assert_array_equal(dx, [[1.0, 0.5]])
    np.testing.assert_array_equal(dalpha, [-2.0, -6.0])  # sum of dout * min(x, 0) per column


@pytest.mark.parametrize("target", ["x", "dout"])
@pytest.mark.parametrize("alpha_shape", [(), (4,)], ids=["shared", "per-channel"])
@pytest.mark.parametrize("backward, dtype", [(reference.prelu_backward, np.float64),
                                             (ops.prelu_backward, np.float16),       # ops fall back to the reference
                                             (ops.prelu_backward, np.longdouble)],
                         ids=["reference-float64", "ops-float16", "ops-longdouble"])
def test_prelu_backward_with_out_aliasing_an_input(backward, dtype, alpha_shape, target):
    # dalpha must be summed from the inputs, not from dx already written over one of them
    x, dout, alpha = _prelu_inputs((6, 4, 3), alpha_shape, dtype, seed=10)
    ref_dx, ref_dalpha = reference.prelu_backward(dout, x, alpha)
    out = dout if target == "dout" else x
    dx, dalpha = backward(dout, x, alpha, out=out)
    assert dx is out
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(dalpha, ref_dalpha)
    # hand-computed: dalpha = sum of dout * min(x, 0) per channel
    dout, x = np.array([[2.0, 2.0]], dtype), np.array([[-1.0, -3.0]], dtype)
    dx, dalpha = backward(dout, x, np.array([0.5, 0.25], dtype), out=x)
    np.testing.assert_array_equal(dx, [[1.0, 0.5]])
    np.testing.assert_array_equal(dalpha, [-2.0, -6.0])


def test_prelu_alpha_is_cast_to_the_dtype_of_x():
    x, dout, alpha = _prelu_inputs((9, 3), (3,), np.float32, seed=6)
    alpha64 = alpha.astype(np.float64) + 1e-9  # not representable in float32: rounded as the reference does
    y = ops.prelu_forward(x, alpha64)
    dx, dalpha = ops.prelu_backward(dout, x, alpha64)
    assert y.dtype == dx.dtype == dalpha.dtype == np.float32
    np.testing.assert_array_equal(y, reference.prelu_forward(x, alpha64))
    np.testing.assert_array_equal(dx, reference.prelu_backward(dout, x, alpha64)[0])


def test_prelu_float16_falls_back_to_the_reference():
    x, dout, alpha = _prelu_inputs((6, 4, 3), (4,), np.float16, seed=8)
    y = ops.prelu_forward(x, alpha)
    dx, dalpha = ops.prelu_backward(dout, x, alpha)
    assert y.dtype == dx.dtype == dalpha.dtype == np.float16
    np.testing.assert_array_equal(y, reference.prelu_forward(x, alpha))
    ref_dx, ref_dalpha = reference.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(dalpha, ref_dalpha)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant,
                    reason="long double is float64 here")
def test_prelu_longdouble_dalpha_is_summed_in_long_double():
    """Summed in float64, dalpha was NaN for x = -1e400, dout = 1e-400 (true -1: x overflowed to -inf), 0 for
    x = -1e-200, dout = 1e-200 (true -1e-400: the product underflowed) and float64-accurate only (1 + 2^-60)."""
    ld = np.longdouble
    x = np.array([[ld("-1e400"), ld("-1e-200"), ld(-1)]])
    dout = np.array([[ld("1e-400"), ld("1e-200"), 1 + ld(2) ** -60]])
    alpha = np.full(3, ld("0.25"))
    for prelu_backward in (ops.prelu_backward, reference.prelu_backward):
        dx, dalpha = prelu_backward(dout, x, alpha)
        assert dalpha.dtype == np.longdouble
        assert dalpha[0] == ld(-1) or abs(dalpha[0] + 1) <= 4 * np.finfo(ld).eps, dalpha
        assert abs(dalpha[1] / ld("-1e-400") - 1) <= 4 * np.finfo(ld).eps, dalpha
        assert dalpha[2] == -(1 + ld(2) ** -60), dalpha


@pytest.mark.parametrize("x_shape,alpha_shape", [((4, 3), (5,)), ((4, 3, 2, 2), (4,)), ((6,), (6,)), ((2, 3), (2,)),
                                                 ((4, 3), (3, 2))], ids=str)
def test_prelu_wrong_alpha_size_names_both_shapes(x_shape, alpha_shape):
    x = np.zeros(x_shape, np.float32)
    alpha = np.ones(alpha_shape, np.float32)
    pattern = rf"shape {tuple(alpha_shape)!s}.*shape {tuple(x_shape)!s}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"prelu_forward: alpha .*{pattern}"):
        ops.prelu_forward(x, alpha)
    with pytest.raises(ValueError, match=rf"prelu_backward: alpha .*{pattern}"):
        ops.prelu_backward(x, x, alpha)


# --- Maxout ----------------------------------------------------------------------------------------------------------
# (x shape, pieces): empty rows, D = 0, one unit, odd, above the threshold, 1-D, 3-D and 4-D, pieces = 1
MAXOUT_CASES = [((0, 6), 2), ((3, 0), 2), ((1, 2), 2), ((7, 12), 3), ((257, 600), 2), ((33, 1000), 4), ((2, 3, 10), 5),
                ((5, 7), 1), ((4, 3), 3), ((12,), 4), ((2, 3, 4, 12), 4), ((40_000, 2), 2), ((3, 65_536), 16)]


def _maxout_loop(x, pieces):
    """Oracle by the definition, one unit at a time: y[..., j] = max_p x[..., p*D + j], first maximum wins, NaN wins."""
    units = x.shape[-1] // pieces
    lead = x.shape[:-1]
    y = np.empty(lead + (units,), x.dtype)
    idx = np.empty(lead + (units,), np.int32)
    for m in np.ndindex(*lead):
        for j in range(units):
            best, winner = x[m + (j,)], 0
            for p in range(1, pieces):
                v = x[m + (p * units + j,)]
                if (v > best) or (np.isnan(v) and not np.isnan(best)):
                    best, winner = v, p
            y[m + (j,)], idx[m + (j,)] = best, winner
    return y, idx


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,pieces", MAXOUT_CASES, ids=str)
def test_maxout_matches_reference(shape, pieces, dtype, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape[:-1] + (shape[-1] // pieces,)).astype(dtype)
    with cynet.threads(threads):
        y, idx = ops.maxout_forward(x, pieces)
        dx = ops.maxout_backward(dout, idx, pieces)
    ref_y, ref_idx = reference.maxout_forward(x, pieces)
    assert y.shape == idx.shape == dout.shape and y.dtype == dtype and idx.dtype == np.int32
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(idx, ref_idx)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_array_equal(dx, reference.maxout_backward(dout, ref_idx, pieces))


@pytest.mark.parametrize("shape,pieces", [((3, 12), 3), ((2, 3, 8), 4), ((2, 2, 2, 6), 2), ((9,), 9)], ids=str)
def test_maxout_matches_the_definition_and_routes_gradients_to_winners(shape, pieces):
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, size=shape).astype(np.float64)  # small integers: many ties
    y, idx = ops.maxout_forward(x, pieces)
    loop_y, loop_idx = _maxout_loop(x, pieces)
    np.testing.assert_array_equal(y, loop_y)
    np.testing.assert_array_equal(idx, loop_idx)
    dout = rng.standard_normal(y.shape)
    dx = ops.maxout_backward(dout, idx, pieces)
    blocks = dx.reshape(shape[:-1] + (pieces, shape[-1] // pieces))
    np.testing.assert_array_equal(blocks.sum(axis=-2), dout)                       # all of dout arrives ...
    np.testing.assert_array_equal((blocks != 0).sum(axis=-2), (dout != 0) * 1)     # ... at one piece per unit ...
    np.testing.assert_array_equal(np.take_along_axis(blocks, idx[..., None, :].astype(np.intp), axis=-2)[..., 0, :],
                                  dout)                                            # ... the winner


def test_maxout_piece_layout_ties_and_nan():
    # piece-major: row [p0u0, p0u1, p1u0, p1u1]; unit 0 = max(1, 3), unit 1 = max(5, 2)
    y, idx = ops.maxout_forward(np.array([[1.0, 5.0, 3.0, 2.0]], np.float32), pieces=2)
    np.testing.assert_array_equal(y, [[3.0, 5.0]])
    np.testing.assert_array_equal(idx, [[1, 0]])
    # three pieces of two units: unit 0 = max(1, 4, 0) at piece 1, unit 1 = max(2, 3, 9) at piece 2
    y, idx = ops.maxout_forward(np.array([1.0, 2.0, 4.0, 3.0, 0.0, 9.0]), pieces=3)
    np.testing.assert_array_equal(y, [4.0, 9.0])
    np.testing.assert_array_equal(idx, [1, 2])
    # ties go to the lowest piece
    _, idx = ops.maxout_forward(np.array([[2.0, 7.0, 2.0, 7.0, 2.0, 1.0]]), pieces=3)
    np.testing.assert_array_equal(idx, [[0, 0]])
    _, idx = ops.maxout_forward(np.array([[1.0, 5.0, 5.0, 5.0]]), pieces=4)
    np.testing.assert_array_equal(idx, [[1]])
    y, idx = ops.maxout_forward(np.array([[-0.0, 0.0, 0.0, -0.0]]), pieces=2)  # -0 == 0: a tie
    np.testing.assert_array_equal(idx, [[0, 0]])
    np.testing.assert_array_equal(np.signbit(y), [[True, False]])
    # NaN wins (propagates): the first NaN piece is the winner, even against +inf
    y, idx = ops.maxout_forward(np.array([[1.0, np.nan, np.nan, 2.0, 3.0, np.nan]]), pieces=3)
    assert np.isnan(y).all()
    np.testing.assert_array_equal(idx, [[1, 0]])
    y, idx = ops.maxout_forward(np.array([np.inf, -np.inf, np.nan, -np.inf]), pieces=2)
    assert np.isnan(y[0]) and y[1] == -np.inf
    np.testing.assert_array_equal(idx, [1, 0])
    # two pieces (the kernel's one-pass case): both NaN -> piece 0; NaN only in piece 1 -> piece 1; float32 too
    for dtype in (np.float32, np.float64):
        y, idx = ops.maxout_forward(np.array([[np.nan, 1.0, np.nan, np.nan]], dtype), pieces=2)
        assert np.isnan(y).all()
        np.testing.assert_array_equal(idx, [[0, 1]])
    # the gradient goes to the winning piece only
    dx = ops.maxout_backward(np.array([[10.0, 20.0]]), np.array([[1, 0]]), pieces=2)
    np.testing.assert_array_equal(dx, [[0.0, 20.0, 10.0, 0.0]])


@pytest.mark.parametrize("shape,pieces", [((5, 12), 3), ((2, 3, 8), 2), ((4, 10), 5)], ids=str)
def test_maxout_numerical_gradient(shape, pieces):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape)
    units = shape[-1] // pieces

    def margin(v):  # winner's lead over the runner-up, smallest over all units
        s = np.sort(v.reshape(shape[:-1] + (pieces, units)), axis=-2)
        return np.min(s[..., -1, :] - s[..., -2, :])

    while margin(x) < 1e-3:  # redraw until no two pieces are within +-h of a tie
        x = rng.standard_normal(shape)
    y, idx = ops.maxout_forward(x, pieces)
    dout = rng.standard_normal(y.shape)
    dx = ops.maxout_backward(dout, idx, pieces)
    numeric = numerical_gradient(lambda v: ops.maxout_forward(v, pieces)[0], x.copy(), dout)
    assert relative_error(dx, numeric) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_maxout_pieces_1_is_the_identity(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((50, 700)).astype(dtype)
    y, idx = ops.maxout_forward(x, 1)
    np.testing.assert_array_equal(y, x)
    assert not idx.any()
    dout = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(ops.maxout_backward(dout, idx, 1), dout)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,pieces", [((3000, 240), 4), ((100_003, 2), 2), ((7, 3, 50_000), 5)], ids=str)
def test_maxout_thread_count_does_not_change_a_single_bit(shape, pieces, dtype):
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::997] = np.nan
    dout = rng.standard_normal(shape[:-1] + (shape[-1] // pieces,)).astype(dtype)
    results = []
    for n in (1, 2, 3, 4):
        with cynet.threads(n):
            y, idx = ops.maxout_forward(x, pieces)
            results.append((y, idx, ops.maxout_backward(dout, idx, pieces)))
    for n, (y, idx, dx) in zip((2, 3, 4), results[1:]):
        assert np.array_equal(y, results[0][0], equal_nan=True), f"y differs with {n} threads"
        assert np.array_equal(idx, results[0][1]), f"indices differ with {n} threads"
        assert np.array_equal(dx, results[0][2]), f"dx differs with {n} threads"


@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_maxout_backward_accepts_any_integer_indices(index_dtype):
    rng = np.random.default_rng(14)
    idx = rng.integers(0, 3, size=(6, 5)).astype(index_dtype)
    dout = rng.standard_normal((6, 5)).astype(np.float32)
    dx = ops.maxout_backward(dout, idx, 3)
    np.testing.assert_array_equal(dx, reference.maxout_backward(dout, idx.astype(np.int64), 3))


def test_maxout_out_buffers_and_strided_inputs():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    y_expected, idx_expected = ops.maxout_forward(x, 3)
    y_out, idx_out = np.full((8, 4), np.nan, np.float32), np.full((8, 4), -1, np.int32)
    y, idx = ops.maxout_forward(x, 3, out=y_out, indices_out=idx_out)
    assert y is y_out and idx is idx_out
    np.testing.assert_array_equal(y, y_expected)
    np.testing.assert_array_equal(idx, idx_expected)
    dout = rng.standard_normal((8, 4)).astype(np.float32)
    dx_out = np.full_like(x, np.nan)
    assert ops.maxout_backward(dout, idx, 3, out=dx_out) is dx_out
    np.testing.assert_array_equal(dx_out, reference.maxout_backward(dout, idx_expected, 3))

    wide = np.zeros((8, 24), np.float32)
    wide[:, ::2] = x
    y, idx = ops.maxout_forward(wide[:, ::2], 3)
    np.testing.assert_array_equal(y, y_expected)
    np.testing.assert_array_equal(idx, idx_expected)
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(ops.maxout_forward(ro, 3)[0], y_expected)
    np.testing.assert_array_equal(ops.maxout_backward(dout.T.copy().T, idx.astype(np.int64)[:, ::-1][:, ::-1], 3),
                                  reference.maxout_backward(dout, idx_expected, 3))


def test_maxout_float16_falls_back_to_the_reference():
    x = np.random.default_rng(16).standard_normal((5, 12)).astype(np.float16)
    y, idx = ops.maxout_forward(x, 4)
    ref_y, ref_idx = reference.maxout_forward(x, 4)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(idx, ref_idx)
    dout = np.ones(y.shape, np.float16)
    np.testing.assert_array_equal(ops.maxout_backward(dout, idx, 4), reference.maxout_backward(dout, ref_idx, 4))


def test_maxout_errors_name_the_op_and_the_shapes():
    with pytest.raises(ValueError, match=r"maxout_forward: the last axis of x must hold D\*pieces .*\(4, 5\).*"
                                         r"pieces=2"):
        ops.maxout_forward(np.zeros((4, 5), np.float32), 2)
    with pytest.raises(ValueError, match=r"maxout_forward: .*\(3, 7\).*pieces=4"):
        ops.maxout_forward(np.zeros((3, 7)), 4)
    with pytest.raises(ValueError, match=r"maxout_backward: indices must lie in \[0, 2\), got values in \[0, 2\]"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.array([[0, 2], [1, 0]]), 2)
    with pytest.raises(ValueError, match=r"maxout_backward: indices must lie in \[0, 2\), got values in \[-1, 1\]"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.array([[0, -1], [1, 0]]), 2)
    with pytest.raises(ValueError, match=r"maxout_backward: indices must lie in \[0, 3\)"):
        ops.maxout_backward(np.zeros(3), np.array([0, 1, 2 ** 40]), 3)
    with pytest.raises(ValueError, match=r"maxout_backward: dout and indices must have the same shape, got float32 "
                                         r"array of shape \(2, 2\) and int32 array of shape \(2, 3\)"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.int32), 2)


def test_maxout_backward_names_itself_for_a_wrong_dout():
    layer = nn.Maxout(6, 3, pieces=2, dtype=np.float64)
    layer(np.ones((4, 6)))
    with pytest.raises(ValueError, match=r"Maxout\(in_features=6, out_features=3, pieces=2\): dout must be a float64 "
                                         r"array of shape \(4, 3\)"):
        layer.backward(np.ones((4, 3), np.float32))
