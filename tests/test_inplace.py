"""In-place activations (``nn.ReLU(inplace=True)``, ...) and Sequential's guard against what they could overwrite.

Oracles: the same model with out-of-place activations (the same weights), centred-difference numerical gradients in
float64 (tests._helpers), and the arrays' own memory (``np.shares_memory``).
"""
import numpy as np
import pytest

import cynet
from cynet import nn
from _helpers import numerical_gradient

# every activation that takes inplace=True, with its settings; each backward reads the output
INPLACE = [
    ("ReLU", {}),
    ("LeakyReLU", {"negative_slope": 0.1}),
    ("LeakyReLU", {"negative_slope": 0.0}),
    ("ELU", {"alpha": 0.7}),
    ("SELU", {}),
    ("Sigmoid", {}),
    ("Tanh", {}),
]


def _pair(name, kwargs, dtype, seed=0):
    """The model Linear -> activation -> Linear twice: out of place and in place, with the same weights."""
    def build(inplace):
        cynet.manual_seed(seed)
        return nn.Sequential(nn.Linear(7, 6, dtype=dtype), getattr(nn, name)(**kwargs, inplace=inplace),
                             nn.Linear(6, 3, dtype=dtype))
    return build(False), build(True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", INPLACE)
def test_inplace_activation_gives_the_out_of_place_results(name, kwargs, dtype):
    plain, inplace = _pair(name, kwargs, dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 7)).astype(dtype)
    x_before = x.copy()
    y_plain, y_inplace = plain(x), inplace(x)
    assert np.array_equal(y_plain, y_inplace)
    assert np.array_equal(x, x_before)                    # the caller's input is never written
    dout = rng.standard_normal(y_plain.shape).astype(dtype)
    assert np.array_equal(plain.backward(dout), inplace.backward(dout))
    for (pname, p), (_, q) in zip(plain.named_parameters(), inplace.named_parameters()):
        assert np.array_equal(p.grad, q.grad), pname


@pytest.mark.parametrize("name, kwargs", INPLACE)
def test_inplace_activation_writes_into_its_input_and_backward_matches_the_numerical_gradient(name, kwargs):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5)) * 2
    x[np.abs(x) < 0.05] = 0.5                              # away from the kinks
    dout = rng.standard_normal(x.shape)
    module = getattr(nn, name)(**kwargs, inplace=True)
    buffer = x.copy()
    y = module(buffer)
    assert y is buffer                                     # no new array
    expected = getattr(nn, name)(**kwargs)(x)
    assert np.array_equal(y, expected)
    dx = module.backward(dout)
    oracle = numerical_gradient(lambda v: getattr(nn, name)(**kwargs)(v), x.copy(), dout)
    np.testing.assert_allclose(dx, oracle, rtol=1e-6, atol=1e-8)


def test_inplace_model_trains_to_the_same_weights():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 7)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    results = []
    for inplace in (False, True):
        cynet.manual_seed(0)
        model = nn.Sequential(nn.Linear(7, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=inplace), nn.Linear(16, 16),
                              nn.LeakyReLU(0.05, inplace=inplace), nn.Linear(16, 3))
        trainer = cynet.train.Trainer(model, nn.SoftmaxCrossEntropy(), cynet.optim.SGD(model.parameters(), lr=0.1,
                                                                                          momentum=0.9), seed=0)
        trainer.fit(x, y, epochs=3, batch_size=16, validation=(x, y))
        results.append((trainer.history["loss"], [p.data.copy() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_gradcheck_of_a_model_with_inplace_activations():
    cynet.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(inplace=True), nn.Linear(5, 4), nn.ELU(inplace=True),
                          nn.Linear(4, 3))
    x = np.random.default_rng(4).standard_normal((3, 6))
    report = cynet.gradcheck.check_module(model, x, num_checks=30)
    assert report.passed, report


@pytest.mark.parametrize("layers, culprit", [
    (lambda: [nn.ReLU(inplace=True), nn.Linear(6, 2)], "the input passed to the Sequential"),
    (lambda: [nn.Linear(6, 6), nn.Sigmoid(), nn.ReLU(inplace=True)], "module 1 (Sigmoid)"),
    (lambda: [nn.Linear(6, 6), nn.ReLU(inplace=True), nn.ELU(inplace=True)], "module 1 (ReLU)"),
    (lambda: [nn.Linear(6, 6), nn.Tanh(), nn.Flatten(), nn.ReLU(inplace=True)], "module 1 (Tanh)"),
    (lambda: [nn.Dropout(0.5).eval(), nn.ReLU(inplace=True)], "the input passed to the Sequential"),
    (lambda: [nn.Linear(6, 6), nn.Tanh(), nn.Sequential(nn.Flatten(), nn.ReLU(inplace=True))], "an enclosing module"),
])
def test_sequential_refuses_an_inplace_module_that_would_overwrite_a_kept_array(layers, culprit):
    model = nn.Sequential(*layers())
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    x_before = x.copy()
    with pytest.raises(ValueError, match="runs in place and would overwrite") as error:
        model(x)
    assert culprit in str(error.value)
    assert np.array_equal(x, x_before)


def test_sequential_accepts_inplace_modules_after_fresh_outputs_and_in_nested_chains():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Sequential(nn.ReLU(inplace=True), nn.Linear(6, 6)),
                          nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.ELU(inplace=True),
                          nn.Linear(6, 2))
    y = model(x)
    assert y.shape == (4, 2) and np.all(np.isfinite(y))
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_inplace_settings_and_inputs_are_validated():
    with pytest.raises(ValueError, match="SiLU: no in-place form"):
        nn.SiLU(inplace=True)
    with pytest.raises(TypeError):
        nn.GELU(inplace=True)
    with pytest.raises(ValueError, match="negative_slope >= 0"):
        nn.LeakyReLU(-0.2, inplace=True)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        nn.ReLU(inplace="yes")
    relu = nn.ReLU(inplace=True)
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"ReLU\(inplace=True\): an in-place input must be C-contiguous"):
        relu(x[:, ::2])
    x.flags.writeable = False
    with pytest.raises(ValueError, match="must be writeable"):
        relu(x)
    with pytest.raises(TypeError, match="must be float32 or float64"):
        relu(np.ones(3, np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        relu([1.0, -1.0])
    assert repr(nn.ELU(0.5, inplace=True)) == "ELU(alpha=0.5, inplace=True)"
    assert repr(nn.ReLU()) == "ReLU()"


def test_inplace_dropout_writes_the_same_values_into_its_input():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    plain, inplace = nn.Dropout(0.4, generator=3), nn.Dropout(0.4, generator=3, inplace=True)
    buffer = x.copy()
    y = inplace(buffer)
    assert y is buffer
    assert np.array_equal(y, plain(x))
    dout = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(inplace.backward(dout), plain.backward(dout))
    assert repr(inplace) == "Dropout(p=0.4, inplace=True)"
    inplace.eval()
    assert inplace(x) is x and not inplace._overwrites_input()      # evaluation: the identity, nothing written
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Dropout(0.5, inplace=True))
    with pytest.raises(ValueError, match=r"module 1 \(Tanh\)"):
        model(x)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        nn.Dropout(0.5, inplace=None)


# --- outside a Sequential: a kept array overwritten by hand is caught at the backward --------------------------------
@pytest.mark.parametrize("first,second", [("Sigmoid", "Tanh"), ("Tanh", "ReLU"), ("ELU", "Sigmoid"),
                                          ("SELU", "LeakyReLU")])
def test_a_kept_output_overwritten_in_place_by_hand_is_refused(first, second):
    # torch's autograd refuses the same chain ("modified by an inplace operation"); without the check cynet's
    # Sigmoid -> Tanh(inplace) gave dx [0.1803, 0.1717, 0.1037] against the true [0.1830, 0.1632, 0.0525]
    x = np.random.default_rng(0).standard_normal((5, 40))
    a, b = getattr(nn, first)(), getattr(nn, second)(inplace=True)
    b(a(x))                                            # b writes over the array a keeps for its backward
    d = b.backward(np.ones_like(x))
    with pytest.raises(RuntimeError, match=f"^{first}\\(.*\\): the output its forward kept for the backward was "
                                           "modified since that forward"):
        a.backward(d)


def test_a_kept_input_overwritten_in_place_by_hand_is_refused():
    x = np.random.default_rng(1).standard_normal((4, 30))
    gelu = nn.GELU()
    gelu(x)
    nn.ReLU(inplace=True)(x)                          # GELU's backward reads x itself
    with pytest.raises(RuntimeError, match="^GELU\\(.*\\): the input its forward kept"):
        gelu.backward(np.ones_like(x))


def test_an_in_place_pass_that_changes_nothing_is_not_refused():
    # ReLU in place over an all-positive kept output changes no value: the backward is right, and runs
    x = np.abs(np.random.default_rng(2).standard_normal((3, 20))) + 0.1
    sig = nn.Sigmoid()
    y = sig(x)
    expected = y * (1 - y)
    nn.ReLU(inplace=True)(y)
    np.testing.assert_allclose(sig.backward(np.ones_like(x)), expected)


class _Activation(nn.Module):
    """A custom module whose forward calls an activation (Sequential's own check sees only its direct children)."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x)

    def backward(self, dout, *, input_grad=True):
        return self.act.backward(dout, input_grad=input_grad)


@pytest.mark.parametrize("inner", [lambda: nn.LeakyReLU(0.1, inplace=True), lambda: nn.Dropout(0.5, inplace=True)])
def test_an_inplace_module_inside_a_custom_module_cannot_overwrite_what_an_enclosing_chain_needs(inner):
    # a Tanh's output, mostly positive: the 16 values the backward samples missed the one negative value the in-place
    # LeakyReLU changed, and the Tanh's gradient there came out wrong, silently
    x = np.abs(np.random.default_rng(0).standard_normal((10, 100))).astype(np.float32)
    x[0, 1] = -2.0
    model = nn.Sequential(nn.Tanh(), _Activation(inner()))
    with pytest.raises(ValueError, match="runs in place and would overwrite"):
        model(x)
    # a Residual's input, which its identity shortcut adds after the body ran: the output itself was wrong
    block = nn.Residual(nn.Sequential(nn.Linear(100, 100), _Activation(inner())))
    block(x)                                                    # a Linear's fresh output: allowed
    with pytest.raises(ValueError, match="runs in place and would overwrite"):
        nn.Residual(_Activation(inner()))(x.copy())
    # outside any chain, the activation is the caller's business, as before
    assert _Activation(inner())(x.copy()).shape == x.shape
