"""cynet.nn: the module contract (parameters, state, modes, freezing) and every layer against independent oracles.

Oracles: NumPy formulas written here, centred-difference numerical gradients in float64 (own helper, independent of
cynet.gradcheck), and torch.nn when torch is importable.
"""
import math
import re

import numpy as np
import pytest

import cynet
from cynet import nn
from cynet.gradcheck import check_module
from _helpers import dropout_keep, philox4x32_10

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def numerical_grad(f, a, h=1e-5):
    """Centred-difference gradient of the scalar f() with respect to every entry of a (modified in place)."""
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def rel_err(a, b):
    """Normwise relative error (entrywise errors of tiny entries are dominated by the difference's rounding)."""
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


# --- Parameter and Module --------------------------------------------------------------------------------------------
def test_parameter_grad_is_lazily_zeroed_and_accumulates():
    p = nn.Parameter(np.ones((2, 3), np.float32))
    assert p.grad.dtype == np.float32 and not p.grad.any()
    p.accumulate(np.full((2, 3), 2.0, np.float32))
    p.accumulate(np.full((2, 3), 3.0, np.float32))
    np.testing.assert_array_equal(p.grad, 5.0)
    p.zero_grad()
    buffer, fresh = p.grad_target()      # nothing touched the gradient since zero_grad: the writer overwrites
    assert fresh and buffer is p._grad
    buffer[...] = 7.0
    _, fresh = p.grad_target()
    assert not fresh
    np.testing.assert_array_equal(p.grad, 7.0)
    p.zero_grad()
    np.testing.assert_array_equal(p.grad, 0.0)   # a read zero-fills the buffer ...
    _, fresh = p.grad_target()
    assert not fresh                             # ... and counts as a write: the next contribution adds to it


def test_writes_through_grad_after_zero_grad_are_kept():
    p = nn.Parameter(np.zeros(3))
    p.grad = np.ones(3)
    p.zero_grad()
    g = p.grad
    g += 5
    np.testing.assert_array_equal(p.grad, [5.0, 5.0, 5.0])
    np.add(p.grad, 2, out=p.grad)
    np.testing.assert_array_equal(p.grad, [7.0, 7.0, 7.0])
    p.accumulate(np.array([1.0, 2.0, 3.0]))      # a module's contribution adds to what was written
    np.testing.assert_array_equal(p.grad, [8.0, 9.0, 10.0])
    p.zero_grad()
    p.grad[1] = 4.0                              # item assignment on a freshly zeroed gradient
    np.testing.assert_array_equal(p.grad, [0.0, 4.0, 0.0])


class FeatureScale(nn.Module):
    """y = x * w per feature, written the naive way: the backward adds into ``w.grad`` through the property."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(np.linspace(0.5, 1.5, d))

    def forward(self, x):
        self._x = x
        return x * self.w.data

    def backward(self, dout, *, input_grad=True):
        self.w.grad[...] += (dout * self._x).sum(axis=0)
        return dout * self.w.data if input_grad else None


def test_custom_module_adding_into_grad_in_place_after_zero_grad(rng):
    """A module that does ``self.w.grad[...] += ...`` gets the true gradient, after zero_grad, alone or next to
    layers that overwrite their freshly zeroed buffers, and an optimiser step uses it."""
    model = nn.Sequential(nn.Linear(4, 3, dtype=np.float64, generator=0), FeatureScale(3))
    x, dout = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    scale = model[1]
    z = x @ model[0].weight.data.T + model[0].bias.data
    expected = (dout * z).sum(axis=0)                                       # dL/dw for L = sum(dout * y)
    for _ in range(2):                                                      # the second pass after a zero_grad
        model.zero_grad()
        model(x)
        model.backward(dout)
        np.testing.assert_allclose(scale.w.grad, expected, rtol=1e-12)
    model(x)
    model.backward(dout)                                                    # no zero_grad: accumulates
    np.testing.assert_allclose(scale.w.grad, 2 * expected, rtol=1e-12)

    def loss():
        return float(np.sum(model(x) * dout))
    np.testing.assert_allclose(numerical_grad(loss, scale.w.data), expected, rtol=1e-7)   # the oracle's oracle

    model.zero_grad()
    w = scale.w.data.copy()
    model(x)
    model.backward(dout)
    cynet.optim.SGD(model.parameters(), lr=0.1).step()
    np.testing.assert_allclose(scale.w.data, w - 0.1 * expected, rtol=1e-12)


def test_parameter_rejects_integer_data():
    with pytest.raises(TypeError, match="Parameter"):
        nn.Parameter(np.arange(3))


def mlp(dtype=np.float32, seed=0):
    return nn.Sequential(nn.Linear(5, 4, dtype=dtype, generator=seed), nn.ReLU(),
                         nn.Linear(4, 3, dtype=dtype, generator=seed + 1))


def test_named_parameters_state_dict_and_strict_loading():
    model = mlp()
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    state = model.state_dict()
    other = mlp(seed=7)
    assert not np.array_equal(other[0].weight.data, model[0].weight.data)
    weight_before = other[0].weight.data
    assert other.load_state_dict(state) == ([], [])
    np.testing.assert_array_equal(other[0].weight.data, model[0].weight.data)
    assert other[0].weight.data is weight_before  # loaded in place: optimisers keep their references

    missing = {k: v for k, v in state.items() if k != "2.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['2.bias'\]"):
        other.load_state_dict(missing)
    extra = dict(state, **{"9.weight": np.zeros(1)})
    with pytest.raises(KeyError, match=r"unexpected keys \['9.weight'\]"):
        other.load_state_dict(extra)
    assert other.load_state_dict(extra, strict=False) == ([], ["9.weight"])
    # PyTorch's field names (torch: result.missing_keys / result.unexpected_keys; cynet's plain tuple had neither)
    result = other.load_state_dict({k: v for k, v in extra.items() if k != "2.bias"}, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == (["2.bias"], ["9.weight"])
    bad = dict(state, **{"0.weight": np.zeros((3, 5), np.float32)})
    with pytest.raises(ValueError, match=r"0.weight: expected shape \(4, 5\), got \(3, 5\)"):
        other.load_state_dict(bad)


def test_state_dict_returns_copies():
    model = mlp()
    state = model.state_dict()
    state["0.weight"][...] = 0
    assert model[0].weight.data.any()


def tied_mlp(seed=0):
    """Linear(4, 4) -> Tanh -> Linear(4, 4) whose two layers share one weight Parameter (float64)."""
    model = nn.Sequential(nn.Linear(4, 4, dtype=np.float64, generator=seed), nn.Tanh(),
                          nn.Linear(4, 4, dtype=np.float64, generator=seed + 1))
    model[2].weight = model[0].weight
    return model


def test_tied_weights_are_listed_once_under_the_first_name():
    model = tied_mlp()
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.bias"]
    assert len(model.parameters()) == 3 and model.parameters()[0] is model[2].weight
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.bias"]
    other = tied_mlp(seed=5)
    other.load_state_dict(model.state_dict())
    assert other[2].weight is other[0].weight
    np.testing.assert_array_equal(other[2].weight.data, model[0].weight.data)

    class Twice(nn.Module):                       # one module instance under two names
        def __init__(self):
            super().__init__()
            self.a = nn.BatchNorm1d(3)
            self.b = self.a

    twice = Twice()
    assert [n for n, _ in twice.named_modules()] == ["", "a"]
    assert [n for n, _ in twice.named_parameters()] == ["a.weight", "a.bias"]
    assert [n for n, _ in twice.named_buffers()] == ["a.running_mean", "a.running_var", "a.num_batches_tracked"]


def test_tied_weight_gradient_is_the_sum_of_both_uses_and_one_step_works(rng):
    model = tied_mlp()
    w, b0, b2 = model[0].weight.data.copy(), model[0].bias.data.copy(), model[2].bias.data.copy()
    x, dout = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    model.zero_grad()
    model(x)
    model.backward(dout)

    # by hand: out = h W^T + b2 with h = tanh(x W^T + b0), for L = sum(dout * out)
    h = np.tanh(x @ w.T + b0)
    second_use = dout.T @ h
    first_use = ((dout @ w) * (1 - h ** 2)).T @ x
    np.testing.assert_allclose(model[0].weight.grad, first_use + second_use, rtol=1e-12, atol=1e-14)
    assert model[2].weight.grad is model[0].weight.grad

    def loss():
        return float(np.sum(model(x) * dout))
    numeric = numerical_grad(loss, model[0].weight.data)   # moves the shared entry: both uses see it
    assert rel_err(model[0].weight.grad, numeric) < 1e-8
    assert rel_err(first_use, numeric) > 1e-2 and rel_err(second_use, numeric) > 1e-2   # neither use alone

    opt = cynet.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    np.testing.assert_allclose(model[0].weight.data, w - 0.1 * (first_use + second_use), rtol=1e-12)
    assert model[2].weight.data is model[0].weight.data
    np.testing.assert_allclose(model[2].bias.data, b2 - 0.1 * dout.sum(axis=0), rtol=1e-12)


def test_train_eval_propagate_and_repr():
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    model.eval()
    assert not model.training and not model[1].training
    model.train()
    assert model[1].training
    text = repr(model)
    assert "(0): Linear(in_features=3, out_features=2, bias=True)" in text and "(1): Dropout(p=0.5)" in text


def test_freezing_blocks_gradients_and_shows_in_repr(rng):
    model = mlp()
    model[0].freeze()
    assert "frozen" in repr(model[0]) and model[0].frozen and not model.frozen
    x = rng.standard_normal((6, 5)).astype(np.float32)
    model.zero_grad()
    model(x)
    model.backward(np.ones((6, 3), np.float32))
    assert not model[0].weight.grad.any() and not model[0].bias.grad.any()
    assert model[2].weight.grad.any()
    model[0].unfreeze()
    assert "frozen" not in repr(model[0])


def test_to_float64_casts_parameters_and_keeps_values():
    model = mlp()
    w32 = model[0].weight.data.copy()
    model.to(np.float64)
    assert model[0].weight.data.dtype == np.float64 and model[0].weight.grad.dtype == np.float64
    np.testing.assert_array_equal(model[0].weight.data, w32.astype(np.float64))
    with pytest.raises(TypeError):
        model.to(np.int32)


def test_sequential_rejects_non_modules_and_indexes():
    with pytest.raises(TypeError, match="argument 1"):
        nn.Sequential(nn.ReLU(), "relu")
    model = mlp()
    assert len(model) == 3 and isinstance(model[-1], nn.Linear)
    assert isinstance(model[:2], nn.Sequential) and len(model[:2]) == 2
    # model[3] on a 3-layer model: the message was the bare "list index out of range"
    for index in (3, -4):
        with pytest.raises(IndexError, match=rf"Sequential: index {index} is out of range for its 3 modules "
                                             r"\(valid: -3 to 2\)"):
            model[index]
    with pytest.raises(IndexError, match=r"ModuleList: index 0 is out of range for its 0 modules"):
        nn.ModuleList()[0]


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.ReLU().backward(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="Linear"):
        nn.Linear(2, 2).backward(np.ones((1, 2), np.float32))


# --- Linear ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_numpy(dtype, rng):
    layer = nn.Linear(7, 5, dtype=dtype, generator=3)
    x = rng.standard_normal((9, 7)).astype(dtype)
    w, b = layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (9, 5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, x @ w.T + b, rtol=tol, atol=tol)
    dout = rng.standard_normal((9, 5)).astype(dtype)
    layer.zero_grad()
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, dout @ w, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.weight.grad, dout.T.astype(np.float64) @ x, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.bias.grad, dout.sum(0, dtype=np.float64), rtol=tol, atol=tol)


def test_linear_gradients_accumulate_until_zero_grad(rng):
    layer = nn.Linear(4, 3, dtype=np.float64)
    x = rng.standard_normal((5, 4))
    dout = rng.standard_normal((5, 3))
    layer.zero_grad()
    layer(x)
    layer.backward(dout)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.backward(dout)
    np.testing.assert_allclose(layer.weight.grad, 2 * once[0])
    np.testing.assert_allclose(layer.bias.grad, 2 * once[1])
    layer.zero_grad()
    layer.backward(dout)
    np.testing.assert_allclose(layer.weight.grad, once[0])


def test_linear_skips_input_gradient_when_not_needed(rng):
    model = mlp(np.float64)
    x = rng.standard_normal((3, 5))
    model(x)
    assert model.backward(np.ones((3, 3)), input_grad=False) is None
    assert model[0].weight.grad.any()


def test_linear_validates_shape_and_dtype():
    layer = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\), got float32 array of shape \(2, 5\)"):
        layer(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="float32"):
        layer(np.zeros((2, 4), np.float64))
    layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="dout"):
        layer.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        nn.Linear(0, 3)


def test_linear_accepts_strided_input(rng):
    layer = nn.Linear(4, 3, dtype=np.float64)
    big = rng.standard_normal((6, 8))
    x = big[::2, ::2]
    np.testing.assert_allclose(layer(x), layer(np.ascontiguousarray(x)), rtol=1e-14)


def test_linear_without_bias(rng):
    layer = nn.Linear(4, 3, bias=False, dtype=np.float64)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    x = rng.standard_normal((2, 4))
    np.testing.assert_allclose(layer(x), x @ layer.weight.data.T)


@pytest.mark.parametrize("init, std", [("he", math.sqrt(2 / 400)), ("xavier", math.sqrt(2 / 600)), ("normal", 0.01)])
def test_linear_init_choice_sets_the_weight_scale(init, std):
    layer = nn.Linear(400, 200, init=init, generator=0)
    assert abs(layer.weight.data.std() / std - 1) < 0.05
    assert not layer.bias.data.any()


def test_linear_default_init_is_pytorchs():
    layer = nn.Linear(400, 300, generator=0)
    bound = 1 / math.sqrt(400)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.95 * bound
    assert np.abs(layer.bias.data).max() <= bound and layer.bias.data.std() > 0.5 * bound / math.sqrt(3)


def test_seeded_construction_is_reproducible():
    cynet.manual_seed(5)
    a = nn.Linear(6, 4)
    cynet.manual_seed(5)
    b = nn.Linear(6, 4)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)


# --- numerical gradients of every layer (float64) ---------------------------------------------------------------------
def _layers():
    return [
        ("linear", lambda: nn.Linear(6, 4, dtype=np.float64, generator=1)),
        ("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh), ("relu", nn.ReLU), ("leaky_relu", lambda: nn.LeakyReLU(0.1)),
        ("prelu_shared", lambda: nn.PReLU(1, init=0.3, dtype=np.float64)),
        ("prelu_channels", lambda: nn.PReLU(6, init=0.2, dtype=np.float64)),
        ("elu", lambda: nn.ELU(0.7)), ("selu", nn.SELU), ("gelu", nn.GELU), ("gelu_tanh", lambda: nn.GELU("tanh")),
        ("silu", nn.SiLU), ("maxout", lambda: nn.Maxout(6, 3, pieces=3, dtype=np.float64, generator=2)),
        ("flatten", nn.Flatten),
    ]


@pytest.mark.parametrize("name, make", _layers(), ids=[n for n, _ in _layers()])
def test_every_layer_backward_matches_numerical_gradient(name, make, rng):
    layer = make()
    x = rng.standard_normal((5, 6))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kinks at 0
    y = layer(x)
    dout = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dout)

    def loss():
        return float(np.sum(layer(x) * dout))

    assert rel_err(dx, numerical_grad(loss, x)) < 1e-7
    for pname, param in layer.named_parameters():
        assert rel_err(param.grad, numerical_grad(loss, param.data)) < 1e-7, pname


def test_kink_state_reports_the_branch_pattern():
    relu = nn.ReLU()
    relu(np.array([-1.0, 2.0, 0.0]))
    np.testing.assert_array_equal(relu.kink_state(), [False, True, False])
    maxout = nn.Maxout(2, 1, pieces=2, dtype=np.float64)
    maxout(np.ones((3, 2)))
    assert maxout.kink_state().shape == (3, 1)
    assert nn.Tanh().kink_state() is None


# --- torch -----------------------------------------------------------------------------------------------------------
@needs_torch
def test_linear_and_prelu_match_torch(rng):
    x = rng.standard_normal((8, 6))
    dout = rng.standard_normal((8, 4))
    layer = nn.Linear(6, 4, dtype=np.float64)
    prelu = nn.PReLU(4, init=0.1, dtype=np.float64)
    t_layer = torch.nn.Linear(6, 4).double()
    t_prelu = torch.nn.PReLU(4, init=0.1).double()
    with torch.no_grad():
        t_layer.weight.copy_(torch.from_numpy(layer.weight.data))
        t_layer.bias.copy_(torch.from_numpy(layer.bias.data))
        t_prelu.weight.copy_(torch.from_numpy(prelu.alpha.data))  # torch made its 0.1 in float32
    tx = torch.from_numpy(x).requires_grad_()
    ty = t_prelu(t_layer(tx))
    ty.backward(torch.from_numpy(dout))
    y = prelu(layer(x))
    dx = layer.backward(prelu.backward(dout))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.weight.grad, t_layer.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, t_layer.bias.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(prelu.alpha.grad, t_prelu.weight.grad.numpy(), rtol=1e-12)


# --- Dropout, Flatten ------------------------------------------------------------------------------------------------
def test_dropout_is_inverted_seeded_and_identity_in_eval():
    x = np.ones((200, 500), np.float32)
    cynet.manual_seed(1)
    drop = nn.Dropout(0.3)
    y = drop(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    dx = drop.backward(np.full_like(x, 2.0))
    np.testing.assert_allclose(dx, 2 * y)
    cynet.manual_seed(1)
    np.testing.assert_array_equal(nn.Dropout(0.3)(x), y)
    drop.eval()
    assert drop(x) is x


def test_dropout_reuse_mask_and_edge_probabilities(rng):
    x = rng.standard_normal((4, 50)).astype(np.float32)
    drop = nn.Dropout(0.5, generator=0)
    first = drop(x)
    drop.reuse_mask = True
    np.testing.assert_array_equal(drop(x), first)
    drop.reuse_mask = False
    assert not np.array_equal(drop(x), first)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    np.testing.assert_array_equal(nn.Dropout(1.0)(x), np.zeros_like(x))
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)


@pytest.mark.parametrize("counter,key,words", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))])
def test_the_philox_oracle_gives_the_random123_known_answers(counter, key, words):
    got = philox4x32_10([np.array([c], np.uint64) for c in counter], key)
    assert tuple(int(w[0]) for w in got) == words


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 7), (256, 1024), (5, 4, 33)])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_masks_are_philox_words_keyed_by_one_generator_draw(dtype, shape, p):
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    key = int(np.random.default_rng(11).integers(0, 2**64, dtype=np.uint64))
    keep = dropout_keep(key, x.size, p).reshape(shape)
    scale = dtype(1 / (1 - p))
    want = np.multiply(x, keep.astype(dtype) * scale)
    for threads in (1, 2, 3):
        with cynet.threads(threads):
            drop = nn.Dropout(p, generator=11)
            y = drop(x)
            np.testing.assert_array_equal(y, want)
            np.testing.assert_array_equal(drop.backward(np.ones_like(x)), keep.astype(dtype) * scale)
    inplace = x.copy()
    assert nn.Dropout(p, generator=11, inplace=True)(inplace) is inplace
    np.testing.assert_array_equal(inplace, want)
    strided = np.asfortranarray(x)                  # not C-contiguous: the mask, then NumPy's product
    np.testing.assert_array_equal(nn.Dropout(p, generator=11)(strided), want)


def test_the_dropout_kernel_refuses_x_without_y_and_lengths_unlike_the_masks():
    from cynet._kernels import load

    kernel, mask = load("dropout"), np.empty(8, np.float32)
    with pytest.raises(ValueError, match="x and y must both be given, with the mask's length 8"):
        kernel.dropout_mask(mask, 1, 0, False, 1.0, 1, np.ones(8, np.float32), None)
    with pytest.raises(ValueError, match="mask's length 8"):
        kernel.dropout_mask(mask, 1, 0, False, 1.0, 1, np.ones(7, np.float32), np.ones(7, np.float32))


def test_dropout_keeps_one_minus_p_and_draws_a_new_key_each_pass():
    x = np.ones(400_000, np.float32)
    drop = nn.Dropout(0.3, generator=0)
    first, second = drop(x) != 0, drop(x) != 0
    for kept in (first, second):
        assert abs(kept.mean() - 0.7) < 4 * np.sqrt(0.21 / x.size)
    assert abs((first & second).mean() - 0.49) < 4 * np.sqrt(0.49 * 0.51 / x.size)   # independent passes


def test_module_list_extend_appends_nothing_when_an_item_is_not_a_module():
    # the ReLU before the 3 was appended and the error named ModuleList.append, a call the user never made
    layers = nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=r"ModuleList.extend: not a Module: 3"):
        layers.extend([nn.ReLU(), 3])
    assert len(layers) == 1 and list(layers.state_dict()) == ["0.weight", "0.bias"]
    layers.extend(m for m in [nn.ReLU(), nn.Linear(2, 1)])          # any iterable, a generator too
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert list(layers.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_flatten_round_trip():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flat = nn.Flatten()
    y = flat(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(flat.backward(y), x)


def test_flatten_backward_refuses_a_dout_of_another_shape_with_the_outputs_size():
    # a (12, 2) dout for a (2, 12) output (a transposed gradient) was reshaped into dx without a word: a wrong dx,
    # where Linear and ReLU refuse a dout of the wrong shape
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    flat = nn.Flatten()
    flat(x)
    with pytest.raises(ValueError, match=r"dout must have the forward's output shape \(2, 12\)"):
        flat.backward(np.ones((12, 2)))
    dout = np.arange(24, dtype=np.float64).reshape(12, 2).T        # the right shape, not C-contiguous
    np.testing.assert_array_equal(flat.backward(dout), np.ascontiguousarray(dout).reshape(2, 3, 4))


@pytest.mark.parametrize("shape, start_dim, want", [
    ((0, 3, 4, 4), 1, (0, 48)),           # an empty batch (NumPy cannot infer -1 there)
    ((2, 0, 3, 4), 2, (2, 0, 12)),
    ((2, 3, 4), -1, (2, 3, 4)),           # negative axes as in PyTorch
    ((2, 3, 4), -2, (2, 12)),
    ((2, 3, 4), 0, (24,)),
    ((2, 3, 4), 2, (2, 3, 4)),
])
def test_flatten_shapes_match_numpy_reshape(shape, start_dim, want):
    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    flat = nn.Flatten(start_dim)
    y = flat(x)
    assert y.shape == want
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))
    np.testing.assert_array_equal(flat.backward(y), x)


@pytest.mark.parametrize("shape, start_dim", [((2, 3, 4), 3), ((2, 3, 4), -4), ((5,), 1), ((), 0)])
def test_flatten_refuses_a_start_dim_that_is_not_an_axis(shape, start_dim):
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(start_dim)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape, start_dim, end_dim, want", [
    ((2, 3, 4, 5), 1, -1, (2, 60)),
    ((2, 3, 4, 5), 2, -1, (2, 3, 20)),       # (N, C, H*W)
    ((2, 3, 4, 5), 0, 1, (6, 4, 5)),         # (N*C, H, W)
    ((2, 3, 4, 5), 1, 2, (2, 12, 5)),
    ((2, 3, 4, 5), -3, -2, (2, 12, 5)),
    ((2, 3, 4, 5), 2, 2, (2, 3, 4, 5)),      # one axis: unchanged
    ((2, 0, 4, 5), 1, 2, (2, 0, 5)),
])
def test_flatten_end_dim_as_pytorch(shape, start_dim, end_dim, want):
    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    flat = nn.Flatten(start_dim, end_dim)
    y = flat(x)
    assert y.shape == want                   # hand-worked shapes; torch.flatten below where installed
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))
    np.testing.assert_array_equal(flat.backward(y), x)
    try:
        import torch
    except ImportError:
        return
    assert tuple(torch.nn.Flatten(start_dim, end_dim)(torch.from_numpy(x)).shape) == want


@pytest.mark.parametrize("start_dim, end_dim, message", [(1, 4, "end_dim 4 is not an axis"),
                                                         (2, 1, "end_dim 1 comes before start_dim 2"),
                                                         (-1, -2, "end_dim -2 comes before start_dim -1")])
def test_flatten_refuses_an_end_dim_it_cannot_use(start_dim, end_dim, message):
    with pytest.raises(ValueError, match=message):
        nn.Flatten(start_dim, end_dim)(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="end_dim must be an int"):
        nn.Flatten(1, 2.0)


@pytest.mark.parametrize("start_dim", [1.7, True, "1"])
def test_flatten_start_dim_must_be_an_int(start_dim):
    with pytest.raises(TypeError, match="start_dim must be an int"):
        nn.Flatten(start_dim)


def test_sequential_refuses_an_instance_it_already_holds():
    # run twice in one pass, the module's first backward would read its second forward's values
    tanh, linear = nn.Tanh(), nn.Linear(4, 4)
    builds = [lambda: nn.Sequential(nn.Linear(4, 4), tanh, nn.Linear(4, 4), tanh),
              lambda: nn.Sequential(linear, nn.Tanh(), linear),
              lambda: nn.Sequential(tanh, nn.Sequential(nn.Linear(4, 4), tanh)),
              lambda: nn.Sequential(nn.Linear(4, 4), tanh).append(tanh),
              lambda: nn.Sequential(tanh, nn.Linear(4, 4)).insert(0, tanh)]
    for build in builds:
        with pytest.raises(ValueError, match="already in this Sequential"):
            build()
    model = nn.Sequential(nn.Linear(4, 4), tanh)
    model.insert(0, nn.Linear(4, 4))          # renaming the layers is no second use
    model.pop(0)
    setattr(model, "1", tanh)                 # nor putting a layer back in its own place
    assert len(model) == 2 and model[1] is tanh
    # a refused insert or extend leaves the model as it was
    layers = list(model)
    for refused in (lambda: model.insert(1, model[0]), lambda: model.extend([nn.ReLU(), tanh])):
        with pytest.raises(ValueError, match="already in this Sequential"):
            refused()
        assert list(model) == layers
    # a nested Sequential changed after it was put in: found before the next forward
    inner = nn.Sequential(nn.Tanh())
    outer = nn.Sequential(linear, inner)
    inner.append(linear)
    with pytest.raises(ValueError, match=r"layer '1.1' \(Linear\) is already in this Sequential as layer '0'"):
        outer(np.ones((2, 4), np.float32))


def test_a_parameter_shared_by_two_layers_gets_both_gradients(rng):
    # the supported way to tie weights: two instances, one Parameter
    first, second = nn.Linear(4, 4, dtype=np.float64), nn.Linear(4, 4, dtype=np.float64)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second)
    report = check_module(model, rng.standard_normal((3, 4)), num_checks=40)
    assert report.passed and report.max_error < 1e-7


@pytest.mark.parametrize("affine", [True, False])
def test_freezing_a_container_freezes_its_batch_norms_statistics_too(affine, rng):
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, affine=affine))
    model.freeze()
    model(rng.standard_normal((4, 3)).astype(np.float32))
    bn = model[1]
    assert model.frozen and bn.frozen and int(bn.num_batches_tracked) == 0
    np.testing.assert_array_equal(bn.running_mean, 0)
    model.unfreeze()
    model(rng.standard_normal((4, 3)).astype(np.float32))
    assert not bn.frozen and int(bn.num_batches_tracked) == 1


def test_dropout_backward_before_any_forward_is_an_error():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.Dropout(0.3).backward(np.ones(3, np.float32))


@pytest.mark.parametrize("dtype, hint", [(np.float64, r"\.to\(float64\)"), (np.int64, "float32 or float64"),
                                         (np.float16, "float32 or float64")])
def test_a_wrong_input_dtype_names_a_remedy_that_works(dtype, hint):
    with pytest.raises(TypeError, match=hint):
        nn.Linear(3, 2)(np.ones((2, 3), dtype))


def test_apply_visits_every_module_children_first_and_returns_the_model():
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(nn.Linear(3, 4), inner, nn.Linear(4, 2))
    visited = []
    assert model.apply(visited.append) is model
    assert visited == [model[0], inner[0], inner[1], inner, model[2], model]

    def zero_linear(m):
        if isinstance(m, nn.Linear):
            cynet.init.zeros_(m.weight)
            cynet.init.constant_(m.bias, 0.5)
    model.apply(zero_linear)
    y = model(np.ones((2, 3), np.float32))
    assert np.array_equal(y, np.full((2, 2), 0.5, np.float32))      # hand value: zero weights, bias 0.5


def test_identity_passes_x_and_dout_through():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    identity = nn.Identity(128, affine=False)
    assert identity(x) is x
    assert identity.backward(x) is x and identity.backward(x, input_grad=False) is None
    assert list(identity.parameters()) == [] and repr(identity) == "Identity()"
    cynet.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    cynet.manual_seed(0)
    ablated = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Identity(), nn.Linear(4, 2))
    assert np.array_equal(plain(x), ablated(x))
    dout = np.ones((2, 2), np.float32)
    assert np.array_equal(plain.backward(dout), ablated.backward(dout))


def test_sequential_list_operations_renumber_the_modules():
    a, b, c, d = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh()
    model = nn.Sequential(a, b)
    model.extend([c])
    assert [name for name, _ in model.named_children()] == ["0", "1", "2"] and model[2] is c
    model.insert(1, d)
    assert list(model) == [a, d, b, c]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert model.insert(-1, nn.Identity()) is model and isinstance(model[3], nn.Identity) and model[4] is c
    assert model.pop(3).__class__ is nn.Identity
    assert model.pop() is c and list(model) == [a, d, b]
    del model[0]
    assert list(model) == [d, b] and [name for name, _ in model.named_children()] == ["0", "1"]
    assert not hasattr(model, "2")
    with pytest.raises(TypeError, match="not a Module"):
        model.insert(0, "relu")
    with pytest.raises(IndexError):
        nn.Sequential().pop()
    with pytest.raises(TypeError, match="index must be an int"):
        model.insert(1.0, nn.ReLU())


def test_sequential_item_assignment_replaces_a_layer_in_place():
    # PyTorch's transfer-learning idiom: model[-1] = nn.Linear(...) swaps the head, name and place kept
    a, b, head = nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)
    model = nn.Sequential(a, b, head)
    new_head = nn.Linear(3, 5)
    model[-1] = new_head
    assert list(model) == [a, b, new_head] and model[2] is new_head
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model.state_dict()["2.weight"].shape == (5, 3)
    assert model(np.ones((2, 4), np.float32)).shape == (2, 5)
    model[np.int64(1)] = nn.Tanh()
    assert isinstance(model[1], nn.Tanh) and len(model) == 3
    named = nn.Sequential({"fc": nn.Linear(4, 3), "act": nn.ReLU()})
    named[0] = nn.Linear(4, 6)
    assert [n for n, _ in named.named_children()] == ["fc", "act"] and named.fc.out_features == 6
    listed = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    listed[0] = nn.Sigmoid()
    assert isinstance(listed[0], nn.Sigmoid) and len(listed) == 2
    with pytest.raises(IndexError, match="out of range"):
        model[3] = nn.ReLU()
    with pytest.raises(TypeError, match="only a Module"):
        model[0] = "relu"
    with pytest.raises(TypeError, match="int index"):
        model[0:1] = nn.ReLU()
    with pytest.raises(ValueError, match="already in this Sequential"):
        model[1] = a                            # a second use of one instance
    assert list(model)[0] is a and len(model) == 3


def test_state_dict_lists_each_modules_parameters_then_its_buffers_as_pytorch():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2)))
    want = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
            "2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias", "2.1.running_mean", "2.1.running_var",
            "2.1.num_batches_tracked"]
    assert list(model.state_dict()) == want
    try:
        import torch
    except ImportError:
        return
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                               torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)))
    assert list(twin.state_dict()) == want


def test_sequential_from_an_ordered_dict_names_its_layers():
    from collections import OrderedDict
    cynet.manual_seed(0)
    named = nn.Sequential(OrderedDict([("fc1", nn.Linear(4, 3)), ("act", nn.ReLU()), ("fc2", nn.Linear(3, 2))]))
    cynet.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert named.fc1 is named[0] and [n for n, _ in named.named_children()] == ["fc1", "act", "fc2"]
    assert list(named.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert np.array_equal(named(x), plain(x))
    for bad in ("a.b", "", "forward", "append", 3):
        with pytest.raises(ValueError, match="layer names"):
            nn.Sequential({bad: nn.ReLU()})


def test_module_list_registers_its_modules_for_a_custom_forward():
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Tanh()])
            self.layers.append(nn.Linear(4, 2))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

        def backward(self, dout, *, input_grad=True):
            for layer in reversed(list(self.layers)):
                dout = layer.backward(dout)
            return dout

    cynet.manual_seed(1)
    tower = Tower()
    cynet.manual_seed(1)
    chain = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    assert [n for n, _ in tower.named_parameters()] == ["layers.0.weight", "layers.0.bias", "layers.2.weight",
                                                          "layers.2.bias"]
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    assert np.array_equal(tower(x), chain(x))
    dout = np.ones((3, 2), np.float32)
    assert np.array_equal(tower.backward(dout), chain.backward(dout))
    assert tower.eval().layers[1].training is False
    assert isinstance(tower.layers[:2], nn.ModuleList) and len(tower.layers[:2]) == 2
    tower.layers.insert(0, nn.Identity())
    assert isinstance(tower.layers[0], nn.Identity) and len(tower.layers) == 4
    with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
        tower.layers(x)
    with pytest.raises(TypeError, match="not a Module"):
        nn.ModuleList([nn.ReLU(), "relu"])


def test_replacing_a_parameters_data_gives_it_a_gradient_of_the_new_shape():
    # the penalties write the gradient by the data's size: a stale smaller buffer was written out of bounds
    model = nn.Linear(3, 2)
    model.weight.data = np.full((40, 30), -2.0, np.float32)
    assert model.weight.grad.shape == (40, 30) and not model.weight.grad.any()
    nn.L2Penalty(0.1).backward(model)
    np.testing.assert_allclose(model.weight.grad, -0.2)
    nn.L1Penalty(0.5).backward(model)
    np.testing.assert_allclose(model.weight.grad, -0.7)
    model.weight.data = np.ones((40, 30), np.float16)             # no kernel for float16: NumPy, same values
    assert nn.L1Penalty(0.5)(model) == 600.0
    model.zero_grad()
    nn.L2Penalty(0.1).backward(model)
    assert model.weight.grad.dtype == np.float16
    np.testing.assert_allclose(model.weight.grad, 0.1, rtol=1e-3)


@pytest.mark.parametrize("replace", ["short", "long", "float64", "list", "strided", "read-only"])
def test_running_statistics_replaced_by_hand_are_refused_before_any_write(replace, rng):
    bn = nn.BatchNorm1d(64)
    bad = {"short": np.ones(1, np.float32), "long": np.ones(10**6, np.float32), "float64": np.ones(64),
           "list": [1.0] * 64, "strided": np.ones(128, np.float32)[::2],
           "read-only": np.ones(64, np.float32)}[replace]
    if replace == "read-only":
        bad.setflags(write=False)
    if replace == "list":                   # not an array: refused when assigned, the buffer stays as it was
        with pytest.raises(TypeError, match="cannot assign list to buffer 'running_var'"):
            bn.running_var = bad
        assert dict(bn.named_buffers())["running_var"] is bn.running_var
        object.__setattr__(bn, "running_var", bad)      # past the check: the forward still refuses it
    else:
        bn.running_var = bad
    with pytest.raises(ValueError, match="running_mean and running_var must be writable C-contiguous"):
        bn(rng.standard_normal((8, 64)).astype(np.float32))
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("p", [2.0, -1.0, float("nan")])
def test_dropout_refuses_a_drop_probability_set_outside_0_1(p):
    drop = nn.Dropout(0.5)
    drop.p = p
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        drop(np.ones(8, np.float32))


def test_a_custom_modules_alias_of_its_own_part_is_not_a_second_use():
    # self.head = self.layers[0]: one instance under two names inside one layer, run once by that layer's forward
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, 3), nn.Tanh()])
            self.head = self.layers[0]

        def forward(self, x):
            return self.layers[1](self.head(x))

        def backward(self, dout, *, input_grad=True):
            return self.head.backward(self.layers[1].backward(dout), input_grad=input_grad)

    block = Aliased()
    model = nn.Sequential(block, nn.Linear(3, 2))
    assert model(np.ones((2, 3), np.float32)).shape == (2, 2)
    with pytest.raises(ValueError, match="already in this Sequential"):
        nn.Sequential(block, block.head)                  # the same Linear in two layers


def test_pytorch_names_numel_double_float_to_cpu_and_nn_init():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    assert model[0].weight.numel() == 6 == model[0].weight.size
    assert model.double() is model and model[0].weight.dtype == np.float64 and model[0].bias.grad.dtype == np.float64
    assert model.float() is model and model[0].weight.dtype == np.float32
    assert model.to("cpu") is model and model[0].weight.dtype == np.float32
    import cynet.init

    assert nn.init is cynet.init


def test_a_hand_written_module_as_the_readme_shows_it_checks_out_and_a_missing_backward_says_how():
    class Scale(nn.Module):
        def __init__(self, features):
            super().__init__()
            self.a = nn.Parameter(np.ones(features, np.float32))

        def forward(self, x):
            self.x = x
            return x * self.a.data

        def backward(self, dout, *, input_grad=True):
            self.a.grad += (dout * self.x).sum(axis=0)
            return dout * self.a.data if input_grad else None

    from cynet import gradcheck

    x = np.random.default_rng(0).standard_normal((16, 8))
    assert gradcheck.check_module(nn.Sequential(nn.Linear(8, 4), Scale(4), nn.Tanh()), x).passed
    assert gradcheck.check_module(nn.Sequential(Scale(8), nn.Linear(8, 4)), x).passed        # as the first layer

    class NoBackward(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match=r"backward\(self, dout, \*, input_grad=True\).*param.grad"):
        NoBackward().backward(np.ones(3))


def test_a_none_gradient_is_refused_with_what_differs_from_pytorch():
    """``p.grad = None`` failed with "grad must have shape (3,), got object array of shape ()", and
    ``zero_grad(set_to_none=True)`` (PyTorch's default since 2.0) with an unexpected-keyword TypeError."""
    from cynet import optim

    layer = nn.Linear(3, 2)
    param = layer.weight
    with pytest.raises(TypeError, match="grad cannot be None in cynet .*requires_grad=False to keep it still"):
        param.grad = None
    for owner, call in (("Parameter", param.zero_grad), ("Linear", layer.zero_grad),
                        ("SGD", optim.SGD(layer.parameters(), lr=0.1).zero_grad)):
        with pytest.raises(ValueError, match=f"^{owner}.zero_grad: set_to_none=True is not supported"):
            call(set_to_none=True)
        call(set_to_none=False)
    assert np.all(param.grad == 0)


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.MaxPool2d(2), (2, 4, 6, 6)), (lambda: nn.AvgPool2d(2), (2, 4, 6, 6)),
    (lambda: nn.AdaptiveAvgPool2d(1), (2, 4, 6, 6)), (lambda: nn.Dropout(0.5), (2, 4, 6, 6)),
    (lambda: nn.Conv2d(4, 2, 3), (2, 4, 6, 6)), (lambda: nn.BatchNorm2d(4), (2, 4, 6, 6)),
], ids=["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Conv2d", "BatchNorm2d"])
def test_a_dout_of_another_dtype_is_refused_by_every_layer_naming_it(make, shape):
    """The pools and Dropout took a float64 dout on a float32 layer and handed float64 back to the float32 layers
    before them; the convolution and the norms refused it."""
    layer = make()
    y = layer(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with pytest.raises(ValueError, match=rf"^{type(layer).__name__}\(.*dout must be a float32 array of shape"):
        layer.backward(np.ones(y.shape, np.float64))
    assert layer.backward(np.ones(y.shape, np.float32)).dtype == np.float32


def test_maxout_names_itself_in_input_errors_not_its_inner_linear():
    layer = nn.Maxout(4, 2, pieces=3)
    with pytest.raises(ValueError, match=r"^Maxout\(in_features=4, out_features=2, pieces=3\): expected input of "
                                         r"shape \(N, 4\), got float32 array of shape \(2, 3\)"):
        layer(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"^Maxout\(in_features=4, out_features=2, pieces=3\): input must have the "
                                        r"weights' dtype float32"):
        layer(np.ones((2, 4), np.float64))


# --- registration, modes and loading, as PyTorch's (QA round of 2026-12-06) -------------------------------------------
def test_a_replaced_child_or_parameter_keeps_its_place():
    """``m.fc1 = nn.Linear(...)`` moved fc1 to the end of the registry: the Sequential then computed
    fc1(fc2(relu(x))), and a replaced weight moved after the bias in parameters() and state_dict()."""
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 4, generator=0), act=nn.ReLU(),
                                      fc2=nn.Linear(4, 4, generator=1)))
    model.fc1 = nn.Linear(4, 4, generator=2)
    assert [name for name, _ in model.named_children()] == ["fc1", "act", "fc2"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    w1, b1, w2, b2 = (p.data.astype(np.float64) for p in model.parameters())
    np.testing.assert_allclose(model(x), np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, rtol=1e-5, atol=1e-6)
    positional = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    setattr(positional, "0", nn.Linear(2, 2))
    assert [name for name, _ in positional.named_children()] == ["0", "1", "2"]
    layer = nn.Linear(3, 2)
    layer.weight = nn.Parameter(np.zeros((2, 3), np.float32))
    assert list(layer.state_dict()) == ["weight", "bias"] and layer.parameters()[0] is layer.weight


def test_an_array_assigned_to_a_buffer_stays_a_buffer_and_a_parameter_name_refuses_an_array():
    class RunningMean(nn.Module):            # what a CS231n student writes
        def __init__(self):
            super().__init__()
            self.register_buffer("running_mean", np.zeros(3, np.float32))

        def forward(self, x):
            self.running_mean = 0.9 * self.running_mean + 0.1 * x.mean(axis=0)
            return x - self.running_mean

    module = RunningMean()
    module(np.ones((4, 3), np.float32))
    assert list(module.state_dict()) == ["running_mean"]
    np.testing.assert_allclose(module.state_dict()["running_mean"], 0.1)
    assert module.double().running_mean.dtype == np.float64           # still cast as a buffer
    bn = nn.BatchNorm1d(3)
    bn.running_mean = np.full(3, 5.0, np.float32)
    assert "running_mean" in bn.state_dict() and bn.state_dict()["running_mean"][0] == 5.0
    layer = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"cannot assign ndarray to parameter 'weight' .*weight\.data\[\.\.\.\]"):
        layer.weight = np.zeros((2, 3), np.float32)
    assert isinstance(layer.weight, nn.Parameter) and len(layer.parameters()) == 2
    with pytest.raises(KeyError, match="'weight' is already a parameter"):
        layer.register_buffer("weight", np.zeros(3, np.float32))
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"cannot assign ndarray to child module '0' \(a Module or None expected\)"):
        setattr(model, "0", np.zeros(3))
    with pytest.raises(KeyError, match="'0' is already a child module"):
        model.register_buffer("0", np.zeros(3))
    assert isinstance(model[0], nn.Linear)
    layer.bias = None                                                  # None still unregisters
    assert [name for name, _ in layer.named_parameters()] == ["weight"]


def test_a_childs_own_train_override_is_obeyed_when_a_parent_switches():
    class FrozenStatistics(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(x)

        def train(self, mode=True):
            super().train(mode)
            self.bn.eval()                   # keep the running statistics as they are
            return self

    model = nn.Sequential(FrozenStatistics(), nn.Linear(3, 2))
    model.eval()
    model.train()
    assert model.training and model[1].training and model[0].training and not model[0].bn.training
    model(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    assert np.all(model[0].bn.running_mean == 0)


def test_a_load_that_fails_on_a_value_changes_nothing_and_names_the_key():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = {key: value.copy() for key, value in model.state_dict().items()}
    good = {key: np.full_like(value, 7) for key, value in before.items()}
    for key, bad in (("1.num_batches_tracked", None), ("1.bias", np.array(["a", "b"])),
                     ("1.num_batches_tracked", np.array(np.nan))):
        with pytest.raises(ValueError, match=rf"nothing loaded: {re.escape(key)}: expected numbers"):
            model.load_state_dict({**good, key: bad})
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value, before[name])
    model.load_state_dict(good)
    assert int(model[1].num_batches_tracked) == 7


def test_children_list_an_aliased_child_once_and_apply_visits_it_once():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, 2)
            self.alias = self.encoder

        def forward(self, x):
            return self.encoder(x)

    module = Aliased()
    assert [name for name, _ in module.named_children()] == ["encoder"] and len(list(module.children())) == 1
    visits = []
    module.apply(lambda m: visits.append(type(m).__name__))
    assert visits == ["Linear", "Aliased"]


def test_layer_names_that_would_hide_the_registries_are_refused_and_to_takes_kernel_dtypes_only():
    from collections import OrderedDict

    for name in ("training", "_modules", "_parameters", "_buffers", "forward"):
        with pytest.raises(ValueError, match="do not hide an attribute"):
            nn.Sequential(OrderedDict([(name, nn.Tanh())]))
    for dtype in (np.float16, np.longdouble, np.int32):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            nn.Linear(2, 2).to(dtype)


def test_train_and_eval_reach_every_module_of_a_graph_with_a_cycle_once_per_path():
    """train() recursing through children without a guard ran into RecursionError when a child holds its parent."""
    class Child(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x)

    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.child = Child()
            self.child.owner = self                      # a reference back up: a cycle of registered modules

        def forward(self, x):
            return self.child(x)

    parent = Parent()
    parent.eval()
    assert not parent.training and not parent.child.training and not parent.child.drop.training
    parent.train()
    assert all(module.training for module in parent.modules())


def test_a_reused_dropout_mask_follows_the_inputs_dtype():
    # a float32 pass, then reuse_mask for a float64 pass: the float32 mask made a float64 output whose backward
    # refused float64 dout ("dout must be a float32 array ... (the forward's output)")
    drop = nn.Dropout(0.5, generator=0)
    x32 = np.ones((4, 6), np.float32)
    y32 = drop(x32)
    drop.reuse_mask = True
    y64 = drop(x32.astype(np.float64))
    assert y64.dtype == np.float64
    np.testing.assert_array_equal(y64 != 0, y32 != 0)               # the same units kept
    np.testing.assert_array_equal(y64[y64 != 0], 2.0)                # scaled by 1 / (1 - p) in float64
    dx = drop.backward(np.ones((4, 6)))
    np.testing.assert_array_equal(dx, y64)


def test_register_buffer_keeps_a_0d_shape_and_refuses_names_pytorch_refuses():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("steps", np.array(0))     # np.ascontiguousarray made it (1,)
    counter = Counter()
    assert counter.steps.shape == () and counter.state_dict()["steps"].shape == ()
    counter.load_state_dict({"steps": np.array(7)})
    assert int(counter.steps) == 7
    counter.steps = counter.steps + 1                       # a NumPy scalar: kept as the 0-d buffer
    assert isinstance(counter.steps, np.ndarray) and counter.steps.shape == () and int(counter.steps) == 8
    assert list(counter.state_dict()) == ["steps"]
    for bad in ("training", "forward", "a.b", ""):      # the mode flag, a method, dotted, empty: PyTorch's KeyError
        with pytest.raises(KeyError):
            nn.ReLU().register_buffer(bad, np.zeros(3))
    with pytest.raises(TypeError, match="got None"):
        nn.ReLU().register_buffer("stat", None)
    with pytest.raises(TypeError, match="the name must be a string"):
        nn.ReLU().register_buffer(3, np.zeros(2))


def test_a_buffer_set_to_none_takes_an_array_as_a_buffer_again():
    # PyTorch keeps the name registered; cynet made the array a plain attribute, which dropped out of the state dict
    module = nn.ReLU()
    module.register_buffer("stat", np.zeros(2))
    module.stat = None
    assert "stat" not in module.state_dict()
    module.stat = np.ones(2)
    assert list(module.state_dict()) == ["stat"]
    module.stat = nn.Parameter(np.zeros(2))                  # a Parameter there ends it: no buffer comes back
    module.stat = None
    module.stat = np.ones(2)
    assert "stat" not in module.state_dict()


def test_a_buffer_set_to_none_can_be_registered_again_as_pytorch():
    # torch.nn.BatchNorm1d(2): running_mean = None, then register_buffer("running_mean", ...) registers it again;
    # cynet raised KeyError "'running_mean' is already an attribute of BatchNorm1d"
    bn = nn.BatchNorm1d(2)
    bn.running_mean = None
    assert "running_mean" not in bn.state_dict()
    restored = bn.register_buffer("running_mean", np.full(2, 3.0, np.float32))
    assert bn.running_mean is restored
    np.testing.assert_array_equal(bn.state_dict()["running_mean"], [3.0, 3.0])
    with pytest.raises(KeyError, match="already an attribute"):      # a plain attribute set to None is not a buffer
        plain = nn.ReLU()
        plain.stat = None
        plain.register_buffer("stat", np.zeros(2))


def test_train_refuses_a_mode_that_is_not_a_bool_as_pytorch():
    # torch: model.train("False") raises ValueError; cynet took bool("False") == True and stayed in training mode
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.eval()
    for bad in ("False", "eval", 0, None):
        with pytest.raises(TypeError, match=r"Sequential.train: mode must be True or False"):
            model.train(bad)
    assert [m.training for m in model.modules()] == [False, False, False]     # nothing switched
    assert model.train(np.bool_(True)) is model and all(m.training for m in model.modules())


def test_slicing_a_sequential_keeps_the_layer_names_as_pytorch():
    from collections import OrderedDict
    named = nn.Sequential(OrderedDict([("fc1", nn.Linear(4, 3)), ("act", nn.ReLU()), ("fc2", nn.Linear(3, 2))]))
    tail = named[1:]
    assert [n for n, _ in tail.named_children()] == ["act", "fc2"] and tail.fc2 is named.fc2
    assert list(tail.state_dict()) == ["fc2.weight", "fc2.bias"]
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert list(plain[1:].state_dict()) == ["2.weight", "2.bias"]   # torch: the same keys
    head = plain[1:]
    head.append(nn.Tanh())                                   # "2" is taken: the next free number
    assert [n for n, _ in head.named_children()] == ["1", "2", "3"]
    listed = nn.ModuleList([nn.ReLU(), nn.Tanh(), nn.Sigmoid()])
    assert [n for n, _ in listed[1:].named_children()] == ["0", "1"]   # ModuleList renumbers, as torch's


def test_a_module_running_twice_inside_its_own_forward_is_refused_at_backward():
    # super().forward() twice (or a forward calling itself) passed through uncounted: the cache kept the second run
    # and the weight gradient was silently wrong
    class TwiceLinear(nn.Linear):
        def forward(self, x):
            return super().forward(super().forward(x))

    layer = TwiceLinear(4, 4, generator=0, dtype=np.float64)
    layer(np.ones((2, 4)))
    with pytest.raises(RuntimeError, match="ran 2 times"):
        layer.backward(np.ones((2, 4)))

    class Once(nn.Linear):                                    # super() once: one run, no refusal
        def forward(self, x):
            return super().forward(x) * 2.0

    once = Once(4, 4, generator=0, dtype=np.float64)
    once(np.ones((2, 4)))
    once.backward(np.ones((2, 4)))


def test_a_forward_that_raised_is_no_run_and_a_retry_in_the_pass_is_fine():
    class Retrying(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3, generator=0)

        def forward(self, x):
            try:
                return self.fc(x)                             # float64 input: refused before running
            except TypeError:
                return self.fc(x.astype(np.float32))

        def backward(self, dout, *, input_grad=True):
            return self.fc.backward(dout, input_grad=input_grad)

    model = Retrying()
    model(np.ones((2, 4)))
    model.backward(np.ones((2, 3), np.float32))               # was "an instance that ran 2 times"


def test_a_tied_weight_of_another_shape_is_named_by_the_layer():
    a, b = nn.Linear(4, 5), nn.Linear(5, 4)
    b.weight = a.weight
    with pytest.raises(ValueError, match=r"its weight has shape \(5, 4\), not \(4, 5\): a weight tied from"):
        b(np.ones((2, 5), np.float32))


# load_state_dict(None) failed deep inside with Python's "argument of type 'NoneType' is not iterable"; to("cuda") with
# NumPy's "data type 'cuda' not understood"; and to(None) cast the whole model to float64 (np.dtype(None)) silently.
def test_load_state_dict_and_to_refuse_what_is_not_a_state_or_a_dtype_naming_the_call():
    model = nn.Sequential(nn.Linear(4, 3))
    for bad in (None, [("0.weight", np.zeros((3, 4)))]):
        with pytest.raises(TypeError, match=r"^Sequential.load_state_dict: expected a dict of arrays .*got "
                                            + type(bad).__name__):
            model.load_state_dict(bad)
    for bad in ("cuda", None):
        with pytest.raises(TypeError, match=rf"^Sequential.to: dtype must be float32 or float64.*got {bad!r}: cynet "
                                            r"runs on the CPU only"):
            model.to(bad)
    assert model[0].weight.data.dtype == np.float32


# to('float') cast a model to float64 (NumPy's reading of 'float') while .float() casts it to float32 (PyTorch's
# torch.float too): the same word, two dtypes, one of them silent.
def test_to_refuses_the_ambiguous_name_float_and_keeps_float32_and_float64():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    for bad in ("float", "Float"):
        with pytest.raises(TypeError, match=r"^Sequential.to: dtype 'float' is ambiguous .*np.float32 or np.float64"):
            model.to(bad)
    assert model[0].weight.data.dtype == np.float32 and model[1].running_mean.dtype == np.float32
    assert model.to("float64")[0].weight.data.dtype == np.float64
    assert model.float()[0].weight.data.dtype == np.float32
    assert model.to("double")[1].running_var.dtype == np.float64


# ---- torch-style positional calls: the same meaning as in torch, or a TypeError (never a silent other meaning)

@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(3, 16, 3, 1, 1, 2),                  # torch: dilation=2 (was bias=2)
    lambda: nn.Conv2d(3, 16, 3, 1, 1, 1, 1, False),        # torch: dilation, groups, bias=False
    lambda: nn.AvgPool2d(2, 2, 0, True),                   # torch: ceil_mode=True (was count_include_pad)
    lambda: nn.AvgPool2d(3, 2, 1, False, False),           # torch: ceil_mode, count_include_pad
    lambda: nn.Linear(4, 3, True, "cpu"),                  # torch: device
    lambda: nn.Linear(4, 3, True, None, np.float64),       # torch: device, dtype
    lambda: nn.BatchNorm1d(4, 1e-5, 0.1, True, True, None),  # torch: device
    lambda: nn.BatchNorm2d(4, 1e-5, 0.1, True, True, None),
    lambda: nn.LayerNorm(4, 1e-5, True, True, None),       # torch: bias, device (bias is taken now, as torch's)
    lambda: nn.GroupNorm(2, 4, 1e-5, True, None),          # torch: device
    lambda: nn.PReLU(1, 0.25, None),                       # torch: device
], ids=["conv-dilation", "conv-bias8", "avgpool-ceil", "avgpool-5", "linear-device", "linear-dtype",
        "bn1d-device", "bn2d-device", "layernorm-bias", "groupnorm-device", "prelu-device"])
def test_torch_positional_parameters_cynet_lacks_raise(make):
    with pytest.raises(TypeError):
        make()


def test_torch_positional_calls_mean_the_same():
    conv = nn.Conv2d(3, 16, 3, 2, 1)
    assert (conv.stride, conv.padding, conv.bias is not None) == (2, 1, True)
    assert nn.Conv2d(3, 4, 3, bias=False).bias is None
    pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    assert (pool.stride, pool.padding, pool.count_include_pad) == (2, 1, False)
    drop = nn.Dropout(0.3, True)                           # torch: Dropout(p, inplace)
    assert (drop.p, drop.inplace, drop.generator) == (0.3, True, None)
    assert nn.Dropout(0.3, False, generator=0).generator is not None
    with pytest.raises(TypeError, match="inplace"):        # a seed in torch's inplace place: no longer a generator
        nn.Dropout(0.3, 1)
    bn = nn.BatchNorm1d(4, 1e-3, 0.2, False, False)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-3, 0.2, False, False)
    assert nn.Linear(4, 3, False).bias is None
    assert len(nn.ModuleList(None)) == 0 and len(nn.ModuleList()) == 0     # torch's default is None


@pytest.mark.parametrize("make", [lambda: nn.Maxout(4, 3, 2, True, "he"),
                                  lambda: nn.DropConnectLinear(4, 3, True, "he")], ids=["maxout", "dropconnect"])
def test_layers_built_like_linear_take_init_dtype_and_generator_by_keyword(make):
    # as Linear: a fifth (fourth) positional argument is refused, not taken for init; by keyword they work
    with pytest.raises(TypeError):
        make()
    maxout = nn.Maxout(4, 3, 2, True, init="he", dtype=np.float64, generator=0)
    assert all(p.data.dtype == np.float64 for p in maxout.parameters())
    assert nn.DropConnectLinear(4, 3, True, init="he", dtype=np.float64, generator=0, p=0.2).p == 0.2


# --- big-endian data: the float32/float64 it holds, in every layer and loss ------------------------------------------
def _big_endian_cases():
    """(name, builder, input shape): every layer that takes floats, with its own dtype."""
    return [
        ("Linear", lambda dt: nn.Linear(6, 5, generator=0, dtype=dt), (4, 6)),
        ("Maxout", lambda dt: nn.Maxout(6, 3, generator=0, dtype=dt), (4, 6)),
        ("DropConnectLinear", lambda dt: nn.DropConnectLinear(6, 5, generator=0, dtype=dt), (4, 6)),
        ("PReLU", lambda dt: nn.PReLU(3, dtype=dt), (2, 3, 4)),
        ("LeakyReLU", lambda dt: nn.LeakyReLU(), (4, 6)),
        ("GELU", lambda dt: nn.GELU(), (4, 6)),
        ("SiLU", lambda dt: nn.SiLU(), (4, 6)),
        ("ReLU", lambda dt: nn.ReLU(), (4, 6)),
        ("Dropout", lambda dt: nn.Dropout(0.3, generator=3), (4, 6)),
        ("StochasticDepth", lambda dt: nn.StochasticDepth(0.5, generator=0), (4, 6)),
        ("Flatten", lambda dt: nn.Flatten(), (2, 3, 4)),
        ("BatchNorm1d", lambda dt: nn.BatchNorm1d(6, dtype=dt), (4, 6)),
        ("BatchNorm2d", lambda dt: nn.BatchNorm2d(3, dtype=dt), (2, 3, 4, 5)),
        ("LayerNorm", lambda dt: nn.LayerNorm(6, dtype=dt), (4, 6)),
        ("GroupNorm", lambda dt: nn.GroupNorm(2, 4, dtype=dt), (2, 4, 3, 3)),
        ("Conv2d", lambda dt: nn.Conv2d(3, 4, 3, padding=1, generator=0, dtype=dt), (2, 3, 5, 5)),
        ("MaxPool2d", lambda dt: nn.MaxPool2d(2), (2, 3, 4, 4)),
        ("AvgPool2d", lambda dt: nn.AvgPool2d(2), (2, 3, 4, 4)),
        ("AdaptiveAvgPool2d", lambda dt: nn.AdaptiveAvgPool2d(1), (2, 3, 4, 4)),
        ("Sequential", lambda dt: nn.Sequential(nn.Linear(6, 5, generator=0, dtype=dt), nn.ReLU(),
                                                nn.BatchNorm1d(5, dtype=dt), nn.Linear(5, 2, generator=1, dtype=dt)),
         (4, 6)),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, build, shape", _big_endian_cases(), ids=[c[0] for c in _big_endian_cases()])
def test_big_endian_input_and_dout_give_the_native_arrays_results(name, build, shape, dtype):
    """A '>f4' batch (data read from a file written on another machine) is the float32 batch it holds: Linear,
    Conv2d, the norms and pools refused it ("input must have the weights' dtype float32, got >f4 array", with the
    advice to convert the data to float32), GELU/SiLU/LeakyReLU/PReLU took it and then refused the native dout of
    their own output ("dout must be a >f4 array"), and Dropout/StochasticDepth/Flatten returned '>f4' outputs. The
    oracle: the same layer on the native copy (the ops already converted big-endian data)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)

    def run(x_in, dout_of):
        cynet.manual_seed(0)
        layer = build(dtype).train()
        y = layer(x_in)
        dout = np.random.default_rng(5).standard_normal(np.shape(y)).astype(dtype)
        dx = layer.backward(dout_of(dout))
        return y, dx, [p.grad.copy() for p in layer.parameters()]

    y0, dx0, g0 = run(x, lambda d: d)
    swapped = x.astype(np.dtype(dtype).newbyteorder(">"))
    for x_in, dout_of in [(swapped, lambda d: d), (x, lambda d: d.astype(d.dtype.newbyteorder(">"))),
                          (swapped, lambda d: d.astype(d.dtype.newbyteorder(">")))]:
        y, dx, g = run(x_in, dout_of)
        assert y.dtype == dtype and dx.dtype == dtype
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(dx, dx0)
        for a, b in zip(g, g0):
            np.testing.assert_array_equal(a, b)
    assert np.array_equal(swapped, x)                   # the caller's array is untouched


@pytest.mark.parametrize("loss, target", [(nn.CrossEntropyLoss(), np.array([0, 2, 1, 2])),
                                          (nn.CrossEntropyLoss(label_smoothing=0.1), np.array([0, 2, 1, 2])),
                                          (nn.MulticlassSVM(), np.array([0, 2, 1, 2], ">i8")),
                                          (nn.MSELoss(), np.linspace(-1, 1, 12).reshape(4, 3))])
def test_a_loss_takes_big_endian_scores_as_the_native_ones(loss, target):
    """Big-endian scores were a TypeError "scores must be a float32 or float64 array, got >f8 array"."""
    scores = np.random.default_rng(0).standard_normal((4, 3))
    want = loss(scores, target)
    grad = loss.backward().copy()
    assert loss(scores.astype(">f8"), target) == want
    assert loss.backward().dtype == np.float64
    np.testing.assert_array_equal(loss.backward(), grad)


def test_an_in_place_activation_names_the_byte_order_of_a_big_endian_input():
    """An in-place layer cannot convert its input: the error says why '>f4' is not float32 here."""
    with pytest.raises(TypeError, match=r"ReLU\(inplace=True\): an in-place input must be float32 or float64 in the "
                                        r"machine's byte order .*got >f4 array of shape \(2, 3\)"):
        nn.ReLU(inplace=True)(np.ones((2, 3), ">f4"))


def test_an_activation_still_refuses_a_masked_input_or_dout():
    x = np.ma.array(np.ones((2, 3), np.float32), mask=[[True, False, False], [False] * 3])
    with pytest.raises(TypeError, match=r"GELU\(approximate='none'\): input is a masked array"):
        nn.GELU()(x)
    layer = nn.ReLU()
    layer(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"ReLU\(\): dout is a masked array"):
        layer.backward(x)


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 2), lambda: nn.BatchNorm1d(3), lambda: nn.Dropout(0.5),
                                  lambda: nn.LayerNorm(3), lambda: nn.Flatten(),
                                  lambda: nn.Sequential(nn.Linear(3, 2), nn.ReLU())],
                         ids=["Linear", "BatchNorm1d", "Dropout", "LayerNorm", "Flatten", "Sequential"])
def test_every_layer_refuses_a_masked_input_it_would_read_without_its_mask(make):
    # only the activations refused one: Linear(3, 2) gave the product of the values under the mask, silently
    x = np.ma.array(np.arange(6, dtype=np.float32).reshape(2, 3), mask=[[False, True, False], [False] * 3])
    layer = make()
    with pytest.raises(TypeError, match=r"input is a masked array; the mask would be ignored"):
        layer(x)
    layer(x.filled(0.0))                                  # what the message says to pass instead works


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 2), lambda: nn.BatchNorm1d(3)], ids=["Linear", "BatchNorm1d"])
def test_a_masked_array_from_a_module_is_refused_by_a_fused_pair_after_it_too(make):
    # a custom module returning a masked array, then a Linear (or batch norm) and a ReLU: unfused, the Linear refused
    # it; fused (forward_relu), Sequential ran it on the values under the mask ([[3, 3], [12, 12]] for all-ones weights)
    class Masking(nn.Module):
        def forward(self, x):
            return np.ma.array(x, mask=[[True, False, False], [False] * 3])

    model = nn.Sequential(Masking(), make(), nn.ReLU())
    with pytest.raises(TypeError, match=r"input is a masked array; the mask would be ignored"):
        model(np.arange(6, dtype=np.float32).reshape(2, 3))


def test_a_loss_refuses_masked_scores_or_targets():
    scores = np.ma.array(np.zeros((2, 3), np.float32), mask=[[False, True, False], [False] * 3])
    with pytest.raises(TypeError, match=r"SoftmaxCrossEntropy\(\): input is a masked array"):
        nn.SoftmaxCrossEntropy()(scores, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"SoftmaxCrossEntropy\(\): input is a masked array"):
        nn.SoftmaxCrossEntropy()(scores.data, np.ma.array([0, 1], mask=[True, False]))


@pytest.mark.parametrize("make", [lambda: nn.Dropout(0.5).eval(), lambda: nn.Dropout(0.0),
                                  lambda: nn.Dropout(0.5), lambda: nn.StochasticDepth(0.5).eval()],
                         ids=["eval", "p=0", "train", "StochasticDepth-eval"])
def test_dropout_checks_dout_in_every_mode(make):
    # in eval mode and with p = 0 the backward passed any dout on: a (2, 5) dout for a (4, 3) input came back as dx
    layer = make()
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dout must be a float32 array of shape \(4, 3\).*got float32 array of "
                                         r"shape \(2, 5\)"):
        layer.backward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"dout must be a float32 array of shape \(4, 3\)"):
        layer.backward(np.ones((4, 3), np.float64))
    dx = layer.backward(np.full((4, 3), 2.0, np.float32))
    assert dx.shape == (4, 3) and set(np.unique(dx)) <= {0.0, 2.0, 4.0}


class _GradientOfWrongShape(nn.Module):
    """A hand-written backward with a bug: it returns dx for only the first two input columns, or None."""

    def __init__(self, result):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.result = result

    def forward(self, x):
        return self.fc(x)

    def backward(self, dout, *, input_grad=True):
        dx = self.fc.backward(dout)
        return None if self.result == "none" else dx[:, :2]


@pytest.mark.parametrize("result, message", [("cut", r"layer 1 \(_GradientOfWrongShape\)\.backward returned an "
                                                       r"input gradient of shape \(5, 2\) for its input of shape "
                                                       r"\(5, 4\)"),
                                              ("none", r"layer 1 \(_GradientOfWrongShape\)\.backward returned None")])
def test_sequential_names_the_layer_whose_backward_returned_a_bad_input_gradient(result, message):
    # (was the next layer's error about a dout it did not cause: "Linear(...): dout must be a float32 array of shape
    # (5, 4), got float32 array of shape (5, 2)", or "... got object array of shape ()" for None)
    model = nn.Sequential(nn.Linear(4, 4), _GradientOfWrongShape(result))
    y = model(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=message):
        model.backward(np.ones_like(y))


def test_a_custom_module_that_never_calls_super_init_is_refused_when_built():
    # (assigning nothing, it was built and then failed far away: "'NoBase' object has no attribute '_parameters'" from
    # parameters(), repr or a Sequential holding it)
    class NoBase(nn.Module):
        def __init__(self, scale):
            if scale <= 0:          # (a student's slip: nothing assigned, super().__init__() forgotten)
                raise ValueError(scale)

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"NoBase\.__init__ did not call super\(\)\.__init__\(\)"):
        NoBase(2.0)

    class WithBase(NoBase):         # a subclass that does call it
        def __init__(self):
            nn.Module.__init__(self)
            self.fc = nn.Linear(2, 2)

    assert len(WithBase().parameters()) == 2


def test_a_plain_list_of_already_registered_layers_is_not_warned_about():
    # self.fc1, self.fc2 registered one by one and also listed for a loop: a false alarm ("2 Module object(s), which
    # are not registered") while parameters() held all 4; a list mixing in an unregistered one names that one only
    import warnings

    class Net(nn.Module):
        def __init__(self, extra=False):
            super().__init__()
            self.fc1 = nn.Linear(3, 4)
            self.fc2 = nn.Linear(4, 2)
            self.gain = nn.Parameter(np.ones(2, np.float32))
            self.layers = [self.fc1, self.fc2] + ([nn.Linear(2, 2)] if extra else [])
            self.params = (self.gain,)
            self.shapes, self.hp = [(3, 4), (4, 2)], {"lr": 0.1}

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    x = np.ones((2, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Net()(x)
    with pytest.warns(UserWarning, match=r"attribute 'layers' is a plain list holding 1 Module object\(s\)"):
        Net(extra=True)(x)


def test_modules_and_parameters_in_a_plain_list_or_dict_are_warned_about_at_the_first_call():
    # PyTorch's classic silent bug: layers kept in a plain list are not registered, so the optimiser never sees them
    # (here parameters() gave 0 of the 24, without a word)
    class ListNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = []
            for _ in range(2):
                self.layers.append(nn.Linear(3, 4 if not self.layers else 3))
            self.extra = {"scale": nn.Parameter(np.ones(3, np.float32))}
            self._teacher = [nn.Linear(3, 3)]        # a leading "_": deliberately unregistered, no warning

        def forward(self, x):
            return self.layers[1](self.layers[0](x)[:, :3])

    net = ListNet()
    with pytest.warns(UserWarning) as record:
        net(np.ones((2, 3), np.float32))
    messages = [str(w.message) for w in record if "not registered" in str(w.message)]
    assert len(messages) == 2
    assert "attribute 'layers' is a plain list holding 2 Module object(s)" in messages[0]
    assert "attribute 'extra' is a plain dict holding 1 Parameter object(s)" in messages[1]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(np.ones((2, 3), np.float32))                    # once per instance
        registered = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
        registered(np.ones((2, 3), np.float32))             # registered modules: no warning


def test_sequential_passes_a_tuple_of_arrays_of_different_shapes_between_its_modules():
    # the input-gradient check recorded np.shape(x) of every module's input: NumPy refuses that of a ragged tuple
    class Split(nn.Module):
        def forward(self, x):
            return x[:, :2], x[:, 2:]

        def backward(self, dout, *, input_grad=True):
            return np.concatenate(dout, axis=1) if input_grad else None

    class Join(nn.Module):
        def forward(self, parts):
            self._widths = [p.shape[1] for p in parts]
            return np.concatenate([2 * parts[0], parts[1]], axis=1)

        def backward(self, dout, *, input_grad=True):
            return (2 * dout[:, :self._widths[0]], dout[:, self._widths[0]:]) if input_grad else None

    model = nn.Sequential(Split(), Join())
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(model(x), np.concatenate([2 * x[:, :2], x[:, 2:]], axis=1))
    np.testing.assert_array_equal(model.backward(np.ones((2, 5), np.float32)), [[2, 2, 1, 1, 1]] * 2)


def test_a_cs231n_style_backward_without_input_grad_works_in_containers_and_the_trainer():
    # backward(self, dout) failed inside Sequential / the Trainer with Python's "unexpected keyword argument
    # 'input_grad'": it is called without it, and its dx dropped where none is wanted
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.full(3, 2.0, np.float32))

        def forward(self, x):
            self._x = x
            return x * self.w.data

        def backward(self, dout):
            self.w.grad += (dout * self._x).sum(axis=0)
            return dout * self.w.data

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = nn.Sequential(Scale(), nn.Linear(3, 2, generator=0))
    first(x)
    assert first.backward(np.ones((2, 2), np.float32), input_grad=False) is None
    np.testing.assert_allclose(first[0].w.grad, (first[1].weight.data.sum(axis=0) * x).sum(axis=0), rtol=1e-6)
    dx = nn.Sequential(nn.Linear(3, 3, generator=1), Scale())
    dx(x)
    assert dx.backward(np.ones((2, 3), np.float32)).shape == (2, 3)
    from cynet import gradcheck, optim
    report = gradcheck.check_module(Scale(), x.astype(np.float64) + 1)
    assert report.passed, str(report)
    model = nn.Sequential(Scale(), nn.Linear(3, 2, generator=0))
    trainer = cynet.Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    trainer.fit(x, np.array([0, 1]), epochs=2, batch_size=2)
    assert trainer.iteration == 2 and not np.array_equal(model[0].w.data, np.full(3, 2.0))
