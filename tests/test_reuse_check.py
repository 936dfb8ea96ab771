"""A module instance used twice in one forward pass keeps only its latest call's values: the backward belonging to the
earlier call would silently give wrong gradients. cynet refuses that backward (Module._check_backward) and leaves
the legitimate patterns alone. The oracle for "wrong": the same computation with one instance per use."""
import numpy as np
import pytest

from cynet import nn


class TwiceReLU(nn.Module):
    """y = relu(W2 relu(W1 x)) with one ReLU instance for both places (the PyTorch habit ``self.relu`` reused), or
    with two instances (``shared=False``, the correct form)."""

    def __init__(self, shared):
        super().__init__()
        self.first = nn.Linear(6, 5, generator=1, dtype=np.float64)
        self.second = nn.Linear(5, 4, generator=2, dtype=np.float64)
        self.act_a = nn.ReLU()
        self.act_b = self.act_a if shared else nn.ReLU()

    def forward(self, x):
        return self.act_b(self.second(self.act_a(self.first(x))))

    def backward(self, dout, *, input_grad=True):
        d = self.second.backward(self.act_b.backward(dout))
        return self.first.backward(self.act_a.backward(d), input_grad=input_grad)


def test_an_activation_reused_inside_a_custom_module_is_refused():
    x = np.random.default_rng(0).standard_normal((8, 6))
    dout = np.random.default_rng(1).standard_normal((8, 4))
    correct = TwiceReLU(shared=False)
    correct(x)
    dx_correct = correct.backward(dout)
    shared = TwiceReLU(shared=True)
    np.testing.assert_array_equal(shared(x), correct(x))            # the forward itself is right
    with pytest.raises(RuntimeError, match="ReLU: backward called again with no call since its previous backward"):
        shared.backward(dout)
    assert dx_correct.shape == x.shape


def test_a_sequential_called_on_two_inputs_then_taken_back_twice_is_refused():
    model = nn.Sequential(nn.Linear(6, 5, generator=3, dtype=np.float64), nn.Tanh(),
                          nn.Linear(5, 2, generator=4, dtype=np.float64))
    rng = np.random.default_rng(2)
    x1, x2 = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    model(x1)
    model(x2)
    model.backward(np.ones((4, 2)))                   # x2's: its values are the cached ones
    with pytest.raises(RuntimeError, match="used more than once in one forward pass"):
        model.backward(np.ones((4, 2)))               # x1's would use x2's values


def test_legitimate_patterns_pass():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6))
    d = rng.standard_normal((5, 4))
    # a repeated backward after one call: the cache is unchanged; gradients accumulate (twice the single pass)
    layer = nn.Linear(6, 4, generator=5, dtype=np.float64)
    layer(x)
    layer.backward(d)
    once = layer.weight.grad.copy()
    layer.backward(d)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    # calls on the same input object, then two backwards: the same values either way
    act = nn.Sigmoid()
    act(x)
    act(x)
    first, second = act.backward(np.ones_like(x)), act.backward(np.ones_like(x))
    np.testing.assert_array_equal(first, second)
    # forwards without a backward (evaluation, logging), then one pass: nothing to refuse
    model = TwiceReLU(shared=False)
    for _ in range(3):
        model(rng.standard_normal((5, 6)))
    model(x)
    model.backward(d)
    # direct forward calls are not counted
    act = nn.Tanh()
    act.forward(rng.standard_normal((5, 6)))
    act.forward(x)
    act.backward(np.ones_like(x))
    act.backward(np.ones_like(x))


def test_a_backward_calling_super_is_checked_once():
    class Doubled(nn.Tanh):
        def backward(self, dout, *, input_grad=True):
            return 2 * super().backward(dout, input_grad=input_grad)

    x = np.linspace(-1, 1, 6).reshape(2, 3)
    layer = Doubled()
    layer(x)
    layer(x + 1)
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), 2 * (1 - np.tanh(x + 1) ** 2))
    with pytest.raises(RuntimeError, match="Doubled: backward called again"):
        layer.backward(np.ones_like(x))
