"""An output that partly overlaps an input (``out=buf[:-1]`` for ``buf[1:]``) gives the answer computed from the
inputs as they were before the call (NumPy's ufunc semantics): the kernels' threads would otherwise read values the
call had already overwritten (a sigmoid gave errors of 0.2, a ReLU of 4.6). Exactly in place stays in place. Two
outputs of one call that share memory are refused. Oracle: the same call on copies."""
import numpy as np
import pytest

import cynet
from cynet import ops
from cynet.nn.normalization import batch_norm_backward, batch_norm_forward, row_norm_backward, row_norm_forward

N = 70_001          # above the parallel threshold: two threads split it
SHIFTS = [(1, 0), (0, 1), (0, 37), (37, 0)]    # (input offset, output offset) into one buffer

FORWARDS = {
    "sigmoid": ops.sigmoid_forward, "tanh": ops.tanh_forward, "relu": ops.relu_forward,
    "leaky_relu": lambda x, out=None: ops.leaky_relu_forward(x, 0.1, out=out),
    "elu": ops.elu_forward, "selu": ops.selu_forward, "gelu": ops.gelu_forward, "silu": ops.silu_forward,
}
BACKWARDS = {
    "sigmoid": ops.sigmoid_backward, "tanh": ops.tanh_backward, "relu": ops.relu_backward,
    "leaky_relu": lambda d, x, out=None: ops.leaky_relu_backward(d, x, 0.1, out=out),
    "elu": ops.elu_backward, "selu": ops.selu_backward, "gelu": ops.gelu_backward, "silu": ops.silu_backward,
}


def _buffer(dtype, seed=0, n=N + 64):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(FORWARDS))
@pytest.mark.parametrize("shift", SHIFTS, ids=str)
def test_elementwise_forward_over_a_shifted_output(name, shift, dtype):
    buf = _buffer(dtype)
    x, out = buf[shift[0]:shift[0] + N], buf[shift[1]:shift[1] + N]
    expected = FORWARDS[name](x.copy())
    with cynet.threads(2):
        result = FORWARDS[name](x, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", list(BACKWARDS))
@pytest.mark.parametrize("overlapping", ["dout", "saved"])
def test_elementwise_backward_over_a_shifted_output(name, overlapping):
    buf, other = _buffer(np.float32, 1), _buffer(np.float32, 2)[:N]
    if name in ("sigmoid", "tanh"):               # saved is the forward's output: keep it in range
        buf = np.tanh(buf) if name == "tanh" else 1 / (1 + np.exp(-buf))
    shifted, out = buf[1:N + 1], buf[:N]
    dout, saved = (shifted, other) if overlapping == "dout" else (other, shifted)
    expected = BACKWARDS[name](dout.copy(), saved.copy())
    with cynet.threads(2):
        BACKWARDS[name](dout, saved, out=out)
    np.testing.assert_array_equal(out, expected)


def test_exactly_in_place_stays_in_place():
    x = _buffer(np.float32)[:N]
    expected = ops.sigmoid_forward(x)
    assert ops.sigmoid_forward(x, out=x) is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("shape,alpha", [((500, 140), np.linspace(0.1, 0.3, 140)), ((50, 14, 10), 0.2)], ids=str)
def test_prelu_over_shifted_outputs(shape, alpha):
    size = int(np.prod(shape))
    buf = _buffer(np.float32, 3, size + 16)
    alpha = np.asarray(alpha, np.float32)
    x, out = buf[3:3 + size].reshape(shape), buf[:size].reshape(shape)
    expected = ops.prelu_forward(x.copy(), alpha)
    with cynet.threads(2):
        ops.prelu_forward(x, alpha, out=out)
    np.testing.assert_array_equal(out, expected)
    buf = _buffer(np.float32, 4, size + 16)
    dout, x = buf[5:5 + size].reshape(shape), _buffer(np.float32, 5, size).reshape(shape)
    expected_dx, expected_dalpha = ops.prelu_backward(dout.copy(), x, alpha)
    dx = buf[:size].reshape(shape)
    with cynet.threads(2):
        _, dalpha = ops.prelu_backward(dout, x, alpha, out=dx)
    np.testing.assert_array_equal(dx, expected_dx)
    np.testing.assert_array_equal(dalpha, expected_dalpha)
    with pytest.raises(ValueError, match="prelu_backward: out and alpha_grad_out share memory"):
        ops.prelu_backward(dout, x, np.full(shape[1], 0.2, np.float32), out=dx,
                           alpha_grad_out=dx.reshape(-1)[:shape[1]])


def test_maxout_over_overlapping_outputs():
    rows, units, k = 300, 64, 3
    buf = _buffer(np.float32, 6, rows * units * k + 64)
    x = buf[:rows * units * k].reshape(rows, units * k)
    y = buf[64:64 + rows * units].reshape(rows, units)       # inside x
    expected_y, expected_idx = ops.maxout_forward(x.copy(), k)
    with cynet.threads(2):
        _, idx = ops.maxout_forward(x, k, out=y)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(idx, expected_idx)
    buf = _buffer(np.float32, 7, rows * units * k + 64)
    dx = buf[:rows * units * k].reshape(rows, units * k)
    dout = buf[32:32 + rows * units].reshape(rows, units)    # inside dx
    expected_dx = ops.maxout_backward(dout.copy(), expected_idx, k)
    with cynet.threads(2):
        ops.maxout_backward(dout, expected_idx, k, out=dx)
    np.testing.assert_array_equal(dx, expected_dx)
    scores = _buffer(np.float32, 8, 2 * units * 4).reshape(4, 2 * units)
    shared = np.zeros(4 * units, np.float32)
    with pytest.raises(ValueError, match="maxout_forward: out and indices_out share memory"):
        ops.maxout_forward(scores, 2, out=shared.reshape(4, units), indices_out=shared.view(np.int32).reshape(4, units))


def test_normalization_over_shifted_outputs():
    n, c = 400, 96
    rng = np.random.default_rng(9)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    buf = rng.standard_normal(n * c + 8)
    x, out = buf[8:].reshape(n, c), buf[:n * c].reshape(n, c)
    expected, mean, _, inv_std = batch_norm_forward(x.copy(), gamma, beta, 1e-5)
    batch_norm_forward(x, gamma, beta, 1e-5, out=out)
    np.testing.assert_array_equal(out, expected)
    buf = rng.standard_normal(n * c + 8)
    x = rng.standard_normal((n, c))
    mean, inv_std = x.mean(axis=0), 1 / np.sqrt(x.var(axis=0) + 1e-5)
    dout, dx = buf[8:].reshape(n, c), buf[:n * c].reshape(n, c)
    expected = batch_norm_backward(dout.copy(), x, gamma, mean, inv_std)[0]
    batch_norm_backward(dout, x, gamma, mean, inv_std, out=dx)
    np.testing.assert_array_equal(dx, expected)
    buf = rng.standard_normal(n * c + 8)
    x3, y3 = buf[8:].reshape(n, c, 1), buf[:n * c].reshape(n, c, 1)
    expected, mean3, inv3 = row_norm_forward(x3.copy(), 1, gamma, beta, 1e-5)
    row_norm_forward(x3, 1, gamma, beta, 1e-5, out=y3)
    np.testing.assert_array_equal(y3, expected)
    buf = rng.standard_normal(n * c + 8)
    x3 = rng.standard_normal((n, c, 1))
    mean3, inv3 = row_norm_forward(x3, 1, gamma, beta, 1e-5)[1:]
    dout3, dx3 = buf[8:].reshape(n, c, 1), buf[:n * c].reshape(n, c, 1)
    expected = row_norm_backward(dout3.copy(), x3, 1, gamma, mean3, inv3)[0]
    row_norm_backward(dout3, x3, 1, gamma, mean3, inv3, out=dx3)
    np.testing.assert_array_equal(dx3, expected)
