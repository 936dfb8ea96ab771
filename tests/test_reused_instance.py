"""One module instance run twice in one forward pass: its backward raises instead of returning wrong gradients.

PyTorch users write one ``self.relu`` and call it in every place (autograd records each call). A cynet module keeps
only its latest run's values, so the backward of the earlier run would use the later run's mask or input. Oracles:
the numerical gradient of the same function (float64 centred differences), which the separate-instance model matches
and the unchecked backward of the reused one misses; and hand-made call sequences for what must stay allowed."""
import copy
import pickle
import threading

import numpy as np
import pytest

from _helpers import numerical_gradient
from cynet import nn
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Trainer

WIDTH = 5


class TwoUses(nn.Module):
    """fc1 -> act -> fc2 -> act2: act2 is act itself (``shared=True``, the PyTorch habit) or a fresh instance."""

    def __init__(self, make_act, shared):
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, WIDTH, generator=1).double()
        self.fc2 = nn.Linear(WIDTH, WIDTH, generator=2).double()
        self.act = make_act()
        self.act2 = self.act if shared else make_act()

    def forward(self, x):
        return self.act2(self.fc2(self.act(self.fc1(x))))

    def backward(self, dout, *, input_grad=True):
        dout = self.fc2.backward(self.act2.backward(dout))
        return self.fc1.backward(self.act.backward(dout), input_grad=input_grad)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),   # forward through super().forward: one run, not two
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "prelu": lambda: nn.PReLU().double(),
    "dropout": lambda: nn.Dropout(0.5, generator=3),
    "batchnorm": lambda: nn.BatchNorm1d(WIDTH).double(),
    "linear": lambda: nn.Linear(WIDTH, WIDTH, generator=4).double(),
    "sequential": lambda: nn.Sequential(nn.Linear(WIDTH, WIDTH, generator=5), nn.ReLU()).double(),
}


def _x(seed=0, n=6):
    return np.random.default_rng(seed).standard_normal((n, WIDTH))


def _weight_gradient(f, weight, dout):
    """The numerical gradient of sum(f() * dout) with respect to the array ``weight``, which f reads (changed in place
    entry by entry and restored)."""
    def at(w):
        saved = weight.copy()
        weight[...] = w
        value = f()
        weight[...] = saved
        return value

    return numerical_gradient(at, weight.copy(), dout)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_a_module_run_twice_in_one_pass_refuses_its_backward(name):
    model = TwoUses(ACTIVATIONS[name], shared=True)
    y = model(_x())
    with pytest.raises(RuntimeError, match=r"(?s)ran 2 times in one forward pass.*one instance per use"):
        model.backward(np.ones_like(y))


@pytest.mark.parametrize("name", ["relu", "tanh", "prelu", "batchnorm"])
def test_the_refused_gradient_is_wrong_and_separate_instances_are_right(name):
    """What the check prevents: the reused instance's backward, run unchecked, misses the numerical gradient; two
    instances with the same weights match it. (A reused Linear's dx would be right, dout W; its weight gradient
    would not.)"""
    x, dout = _x(), np.random.default_rng(9).standard_normal((6, WIDTH))
    shared = TwoUses(ACTIVATIONS[name], shared=True)
    separate = TwoUses(ACTIVATIONS[name], shared=False)
    separate.act2.load_state_dict(shared.act.state_dict())

    def unchecked(module, d):
        return type(module).backward.__wrapped__(module, d)

    shared(x)
    d = shared.fc2.backward(unchecked(shared.act2, dout))
    wrong = shared.fc1.backward(unchecked(shared.act, d))

    separate(x)
    right = separate.backward(dout)
    numeric = numerical_gradient(lambda v: TwoUses.forward(separate, v), x.copy(), dout)
    np.testing.assert_allclose(right, numeric, rtol=1e-6, atol=1e-8)
    assert not np.allclose(wrong, numeric, rtol=1e-3, atol=1e-6)


def test_forwards_without_a_backward_are_never_refused():
    model = TwoUses(nn.ReLU, shared=True)
    outputs = [model(_x(seed)) for seed in range(3)]            # evaluation: no backward
    separate = TwoUses(nn.ReLU, shared=False)
    for seed, y in enumerate(outputs):
        np.testing.assert_array_equal(y, separate(_x(seed)))


def test_modules_called_one_by_one_are_a_pass_each():
    """Layer by layer at the top level (the CS231n assignment's style): each call is its own pass; a repeated backward
    after one call stays allowed."""
    relu, x = nn.ReLU().double(), _x()
    relu(x + 1.0)
    y = relu(x)
    first = relu.backward(np.ones_like(y))
    np.testing.assert_array_equal(first, (x > 0).astype(np.float64))
    np.testing.assert_array_equal(relu.backward(np.ones_like(y)), first)


def test_a_new_pass_clears_the_record():
    model = TwoUses(nn.ReLU, shared=True)
    model(_x())
    relu = model.act
    y = relu(_x(1))                                             # its own pass, one run
    np.testing.assert_array_equal(relu.backward(np.ones_like(y)), (_x(1) > 0).astype(np.float64))


def test_sequential_fusion_and_nested_containers_run_each_module_once():
    inner = nn.Sequential(nn.Linear(WIDTH, 4, generator=6), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3, generator=7))
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH, generator=8), nn.ReLU(), inner).double()
    x, dout = _x(), np.random.default_rng(2).standard_normal((6, 3))
    model(x)
    dx = model.backward(dout)
    numeric = numerical_gradient(lambda v: model.forward(v), x.copy(), dout)
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-7)


def test_an_error_inside_a_forward_ends_its_pass():
    """A forward that raises part-way must not leave the pass open: later top-level calls are passes of their own."""
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x):
            self.relu(x)
            raise ValueError("part-way")

    failing = Failing()
    with pytest.raises(ValueError, match="part-way"):
        failing(_x())
    failing.relu(_x(1))
    y = failing.relu(_x(2))
    np.testing.assert_array_equal(failing.relu.backward(np.ones_like(y)), (_x(2) > 0).astype(np.float64))


def test_passes_on_two_threads_are_separate():
    errors = []

    def train(seed):
        try:
            model = TwoUses(nn.ReLU, shared=False)
            for step in range(200):
                y = model(_x(seed + step))
                model.backward(np.ones_like(y))
        except Exception as error:      # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=train, args=(seed,)) for seed in (0, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_the_trainer_stops_on_a_reused_activation():
    model = nn.Sequential(TwoUses(nn.ReLU, shared=True), nn.Linear(WIDTH, 3, generator=9).double())
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="ran 2 times in one forward pass"):
        trainer.fit(_x(n=16), np.arange(16) % 3, epochs=1, batch_size=8)


def test_weights_shared_through_one_parameter_add_both_gradients():
    """The documented way to tie weights: two instances, one Parameter; its gradient is the sum of both uses'."""
    first = nn.Linear(WIDTH, WIDTH, bias=False, generator=10).double()
    second = nn.Linear(WIDTH, WIDTH, bias=False, generator=11).double()
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second)
    x, dout = _x(), np.random.default_rng(3).standard_normal((6, WIDTH))
    model.zero_grad()
    model(x)
    model.backward(dout)
    numeric = _weight_gradient(lambda: model.forward(x), first.weight.data, dout)
    np.testing.assert_allclose(first.weight.grad, numeric, rtol=1e-6, atol=1e-8)


def test_a_copied_or_unpickled_module_starts_without_a_record():
    """A copy carries the refused pass's record, but no later pass matches it: one run, then its backward, is fine."""

    model = TwoUses(nn.ReLU, shared=True)
    model(_x())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        relu = clone.act
        y = relu(_x(3))
        np.testing.assert_array_equal(relu.backward(np.ones_like(y)), (_x(3) > 0).astype(np.float64))
        clone(_x())
        with pytest.raises(RuntimeError, match="ran 2 times"):
            clone.backward(np.ones((6, WIDTH)))


@pytest.mark.parametrize("before", ["linear", "batchnorm"])
def test_a_relu_fused_into_a_sequential_counts_as_a_run(before):
    """Sequential runs a Linear or BatchNorm1d and the ReLU after it as one pass, without the ReLU's forward: that is
    still a run of the ReLU (found by QA: used by hand too, its backward gave a wrong dx silently)."""
    class HandAndSequential(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            first = nn.Linear(WIDTH, WIDTH, generator=12) if before == "linear" else nn.BatchNorm1d(WIDTH)
            self.seq = nn.Sequential(first, self.relu).double()

        def forward(self, x):
            return self.seq(self.relu(x))

        def backward(self, dout, *, input_grad=True):
            return self.relu.backward(self.seq.backward(dout))

    model = HandAndSequential()
    y = model(_x())
    assert model.seq._fused                      # the fused path ran
    with pytest.raises(RuntimeError, match="ran 2 times in one forward pass"):
        model.backward(np.ones_like(y))


def test_a_forward_from_a_mixin_is_recorded_too():
    class ForwardMixin:
        def forward(self, x):
            return self.act(self.fc(self.act(x)))

        def backward(self, dout, *, input_grad=True):
            return self.act.backward(self.fc.backward(self.act.backward(dout)))

    class Mixed(ForwardMixin, nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(WIDTH, WIDTH, generator=13).double()
            self.act = nn.Tanh()

    model = Mixed()
    y = model(_x())
    with pytest.raises(RuntimeError, match="Tanh: backward of an instance that ran 2 times"):
        model.backward(np.ones_like(y))


# --- shared_copy: one layer's weights at two places ------------------------------------------------------------------
def test_a_shared_copy_ties_parameters_and_buffers_and_keeps_its_own_caches():
    net = nn.Sequential(nn.Linear(WIDTH, 4, generator=14), nn.BatchNorm1d(4), nn.Tanh()).double()
    twin = net.shared_copy()
    assert all(a is b for a, b in zip(net.parameters(), twin.parameters()))
    assert all(a is b for a, b in zip(net.buffers(), twin.buffers()))
    assert twin[0] is not net[0] and twin[2] is not net[2]
    y1, y2 = net(_x(1)), twin(_x(2))
    np.testing.assert_array_equal(y2, copy.deepcopy(net).forward(_x(2)))       # an independent copy's output
    # each keeps its own forward's values: the backward of net is net's alone
    d = np.random.default_rng(4).standard_normal(y1.shape)
    net.zero_grad()
    dx1 = net.backward(d)
    numeric = numerical_gradient(lambda v: net.forward(v), _x(1).copy(), d)
    np.testing.assert_allclose(dx1, numeric, rtol=1e-5, atol=1e-7)
    # one set of running statistics; a dtype change of a module holding both keeps it shared
    nn.ModuleList([net, twin]).float()
    assert all(a is b for a, b in zip(net.buffers(), twin.buffers()))
    assert twin[0].weight.data.dtype == np.float32 and twin[1].running_mean.dtype == np.float32


def test_a_siamese_pair_through_a_shared_copy_gets_the_numerical_gradient():
    """e1 = net(x1), e2 = twin(x2), L = sum(e1 * e2): the tied weight's gradient is the sum of both branches', as the
    numerical gradient of L with respect to the one weight says."""
    net = nn.Sequential(nn.Linear(WIDTH, 3, generator=15), nn.Tanh()).double()
    twin = net.shared_copy()
    x1, x2 = _x(5), _x(6)
    net.zero_grad()
    e1, e2 = net(x1), twin(x2)
    net.backward(e2)
    twin.backward(e1)
    numeric = _weight_gradient(lambda: np.sum(net.forward(x1) * twin.forward(x2)), net[0].weight.data, 1.0)
    np.testing.assert_allclose(net[0].weight.grad, numeric, rtol=1e-6, atol=1e-8)
    parent = nn.ModuleList([net, twin])
    assert len(parent.parameters()) == 2                    # weight and bias, once each: one optimiser step each


def test_one_layer_at_two_places_through_a_shared_copy():
    """The reuse error's advice: the reused Linear replaced by a tied twin trains like two uses of one layer."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(WIDTH, WIDTH, generator=16).double()
            self.fc_again = self.fc.shared_copy()
            self.act = nn.Tanh()

        def forward(self, x):
            return self.fc_again(self.act(self.fc(x)))

        def backward(self, dout, *, input_grad=True):
            return self.fc.backward(self.act.backward(self.fc_again.backward(dout)), input_grad=input_grad)

    model, x = Tied(), _x(7)
    dout = np.random.default_rng(8).standard_normal((6, WIDTH))
    model.zero_grad()
    model(x)
    model.backward(dout)
    numeric = _weight_gradient(lambda: model.forward(x), model.fc.weight.data, dout)
    np.testing.assert_allclose(model.fc.weight.grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("state", ["frozen", "eval"])
def test_a_batch_norm_that_declines_the_fused_pass_runs_once(state):
    """A frozen or eval-mode batch norm before a ReLU in a Sequential declines forward_relu (it returns None) and then
    runs its forward: one run, not two (found by QA: fine-tuning with a frozen BatchNorm raised at the backward)."""
    model = nn.Sequential(nn.Linear(WIDTH, 4, generator=17), nn.BatchNorm1d(4), nn.ReLU(),
                          nn.Linear(4, 3, generator=18)).double()
    model(_x())                                     # running statistics from one batch
    if state == "frozen":
        model[1].freeze()
    else:
        model.eval()
    x, dout = _x(9), np.random.default_rng(10).standard_normal((6, 3))
    model(x)
    dx = model.backward(dout)
    np.testing.assert_allclose(dx, numerical_gradient(lambda v: model.forward(v), x.copy(), dout), rtol=1e-5,
                               atol=1e-7)


def test_twins_draw_their_dropout_masks_from_one_stream():
    """A Dropout with its own generator: the twin shares it, so the two branches get different masks, those one
    module would draw in two calls (found by QA: the twin had a copy of the generator and repeated the masks)."""
    x = np.ones((4, WIDTH))
    branch = nn.Sequential(nn.Dropout(0.5, generator=3)).double()
    twin = branch.shared_copy()
    first, second = branch(x), twin(x)
    assert not np.array_equal(first, second)
    one = nn.Dropout(0.5, generator=3).double()
    np.testing.assert_array_equal(first, one(x))
    np.testing.assert_array_equal(second, one(x))
