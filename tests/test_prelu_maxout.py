"""PReLU (shared and per-channel slopes, with dalpha) and Maxout against the reference and numerical gradients."""
import numpy as np
import pytest

import cynet
from cynet import ops, reference
from _helpers import numerical_gradient, relative_error

DTYPES = [np.float32, np.float64]

# (x shape, alpha shape): shared slope on any shape, per-channel on axis 1 of (N, C) and (N, C, H, W)
PRELU_CASES = [
    ((0, 4), (1,)), ((1,), (1,)), ((7, 13), (1,)), ((7, 13), (13,)), ((257, 300), (300,)), ((33, 1001), (1,)),
    ((4, 3, 5, 6), (3,)), ((64, 8, 16, 16), (8,)), ((64, 8, 16, 16), ()), ((5, 2, 3), (2,)),
]


def _prelu_inputs(x_shape, alpha_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    dout = rng.standard_normal(x_shape).astype(dtype)
    alpha = rng.uniform(0.05, 0.5, size=alpha_shape).astype(dtype)
    return x, dout, alpha


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("x_shape,alpha_shape", PRELU_CASES, ids=str)
def test_prelu_matches_reference(x_shape, alpha_shape, dtype, threads):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, dtype)
    with cynet.threads(threads):
        y = ops.prelu_forward(x, alpha)
        dx, dalpha = ops.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(y, reference.prelu_forward(x, alpha))
    ref_dx, ref_dalpha = reference.prelu_backward(dout, x, alpha)
    np.testing.assert_array_equal(dx, ref_dx)
    assert dalpha.shape == alpha.shape and dalpha.dtype == dtype
    # both sum in float64, in different orders
    np.testing.assert_allclose(dalpha, ref_dalpha, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-12)


def test_prelu_hand_computed():
    x = np.array([[-1.0, -1.0], [2.0, -4.0]], np.float32)
    alpha = np.array([0.25, 0.5], np.float32)
    np.testing.assert_array_equal(ops.prelu_forward(x, alpha), [[-0.25, -0.5], [2.0, -2.0]])
    dx, dalpha = ops.prelu_backward(np.ones_like(x), x, alpha)
    np.testing.assert_array_equal(dx, [[0.25, 0.5], [1.0, 0.5]])
    np.testing.assert_array_equal(dalpha, [-1.0, -5.0])  # sums of min(x, 0) per column
    _, dalpha_shared = ops.prelu_backward(np.ones_like(x), x, 0.25)
    assert dalpha_shared.shape == () and dalpha_shared == -6.0


@pytest.mark.parametrize("x_shape,alpha_shape", [((5, 4), (4,)), ((5, 4), (1,)), ((3, 2, 3, 2), (2,))], ids=str)
def test_prelu_numerical_gradient_of_x_and_alpha(x_shape, alpha_shape):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, np.float64, seed=7)
    x = np.where(np.abs(x) < 1e-2, 0.3, x)  # away from the kink
    dx, dalpha = ops.prelu_backward(dout, x, alpha)
    num_dx = numerical_gradient(lambda v: ops.prelu_forward(v, alpha), x.copy(), dout)
    num_dalpha = numerical_gradient(lambda a: ops.prelu_forward(x, a), alpha.copy(), dout)
    assert relative_error(dx, num_dx) < 1e-6
    assert relative_error(dalpha, num_dalpha) < 1e-6


@pytest.mark.parametrize("x_shape,alpha_shape", [((2048, 300), (300,)), ((64, 8, 40, 40), (8,)),
                                                 ((2048, 300), (1,))], ids=str)
def test_prelu_dalpha_is_bit_identical_for_any_thread_count(x_shape, alpha_shape):
    x, dout, alpha = _prelu_inputs(x_shape, alpha_shape, np.float32, seed=3)
    results = []
    for n in (1, 2, 3, 4):
        with cynet.threads(n):
            results.append(ops.prelu_backward(dout, x, alpha))
    for dx, dalpha in results[1:]:
        assert np.array_equal(dx, results[0][0])
        assert np.array_equal(dalpha, results[0][1])


def test_prelu_errors_name_the_shapes():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"prelu_forward: alpha .* shape \(5,\) .* shape \(4, 3\)"):
        ops.prelu_forward(x, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"prelu_forward"):
        ops.prelu_forward(np.zeros(6, np.float32), np.ones(6, np.float32))  # no channel axis on 1-D input
    with pytest.raises(TypeError, match=r"prelu_forward: alpha must be floating"):
        ops.prelu_forward(x, np.ones(3, np.int64))
    with pytest.raises(ValueError, match=r"prelu_backward: dout and x must have the same shape"):
        ops.prelu_backward(np.zeros((4, 2), np.float32), x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"alpha_grad_out must have shape \(3,\)"):
        ops.prelu_backward(x, x, np.ones(3, np.float32), alpha_grad_out=np.empty(2, np.float32))


# --- Maxout ----------------------------------------------------------------------------------------------------------
MAXOUT_CASES = [((0, 6), 2), ((1, 2), 2), ((7, 12), 3), ((257, 600), 2), ((33, 1000), 4), ((2, 3, 10), 5),
                ((5, 7), 1), ((4, 3), 3)]


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape,pieces", MAXOUT_CASES, ids=str)
def test_maxout_matches_reference(shape, pieces, dtype, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    with cynet.threads(threads):
        y, idx = ops.maxout_forward(x, pieces)
        dout = rng.standard_normal(y.shape).astype(dtype)
        dx = ops.maxout_backward(dout, idx, pieces)
    ref_y, ref_idx = reference.maxout_forward(x, pieces)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(idx, ref_idx)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(dx, reference.maxout_backward(dout, ref_idx, pieces))
    if pieces == 1:
        np.testing.assert_array_equal(y, x)


def test_maxout_piece_layout_ties_and_nan():
    # piece-major: row [p0u0, p0u1, p1u0, p1u1]; unit 0 = max(1, 3), unit 1 = max(5, 2)
    y, idx = ops.maxout_forward(np.array([[1.0, 5.0, 3.0, 2.0]], np.float32), pieces=2)
    np.testing.assert_array_equal(y, [[3.0, 5.0]])
    np.testing.assert_array_equal(idx, [[1, 0]])
    # ties go to the lowest piece
    _, idx = ops.maxout_forward(np.array([[2.0, 7.0, 2.0, 7.0, 2.0, 1.0]]), pieces=3)
    np.testing.assert_array_equal(idx, [[0, 0]])
    # NaN wins (propagates), the first NaN piece is the winner
    y, idx = ops.maxout_forward(np.array([[1.0, np.nan, np.nan, 2.0, 3.0, np.nan]]), pieces=3)
    assert np.isnan(y[0, 0]) and np.isnan(y[0, 1])
    np.testing.assert_array_equal(idx, [[1, 0]])
    dx = ops.maxout_backward(np.array([[10.0, 20.0]]), np.array([[1, 0]]), pieces=2)
    np.testing.assert_array_equal(dx, [[0.0, 20.0, 10.0, 0.0]])


def test_maxout_numerical_gradient():
    rng = np.random.default_rng(11)
    pieces, units = 3, 4
    x = rng.standard_normal((5, pieces * units))
    # redraw rows until every unit's winner leads its runner-up by a clear margin (no tie within +-h)
    for _ in range(100):
        sorted_pieces = np.sort(x.reshape(5, pieces, units), axis=1)
        if np.min(sorted_pieces[:, -1] - sorted_pieces[:, -2]) > 1e-3:
            break
        x = rng.standard_normal(x.shape)
    y, idx = ops.maxout_forward(x, pieces)
    dout = rng.standard_normal(y.shape)
    dx = ops.maxout_backward(dout, idx, pieces)
    numeric = numerical_gradient(lambda v: ops.maxout_forward(v, pieces)[0], x.copy(), dout)
    assert relative_error(dx, numeric) < 1e-6


def test_maxout_errors():
    with pytest.raises(ValueError, match=r"maxout_forward: the last axis of x must hold D\*pieces .*\(4, 5\)"):
        ops.maxout_forward(np.zeros((4, 5), np.float32), 2)
    with pytest.raises(ValueError, match=r"pieces must be >= 1"):
        ops.maxout_forward(np.zeros((4, 4), np.float32), 0)
    with pytest.raises(TypeError, match=r"pieces must be an int"):
        ops.maxout_forward(np.zeros((4, 4), np.float32), 2.0)
    with pytest.raises(ValueError, match=r"maxout_backward: indices must lie in \[0, 2\)"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.array([[0, 2], [1, 0]]), 2)
    with pytest.raises(ValueError, match=r"maxout_backward: indices must lie in"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.array([[0, -1], [1, 0]]), 2)
    with pytest.raises(TypeError, match=r"maxout_backward: indices must be an integer array"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match=r"maxout_backward: dout and indices must have the same shape"):
        ops.maxout_backward(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.int32), 2)
    with pytest.raises(TypeError, match=r"maxout_forward: x must be a floating-point array .* int64"):
        ops.maxout_forward(np.zeros((2, 4), np.int64), 2)
