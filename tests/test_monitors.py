"""Tests of cynet.diagnostics.monitors.TrainingMonitor against NumPy recomputations of the same step."""
import warnings

import numpy as np
import pytest

from cynet import nn
from cynet.diagnostics.monitors import TrainingMonitor, UpdateRatioWarning
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Callback, Trainer


def _data(n=256, d=10):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _model():
    return nn.Sequential(nn.Linear(10, 16, generator=0), nn.ReLU(), nn.Linear(16, 8, generator=1), nn.Tanh(),
                         nn.Linear(8, 2, generator=2))


def _fit(model, monitor, x, y, lr=0.1, epochs=1, batch_size=64, validation=None):
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=lr), callbacks=[monitor],
                      progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpdateRatioWarning)
        trainer.fit(x, y, epochs=epochs, batch_size=batch_size, validation=validation, shuffle=False)
    return trainer


@pytest.mark.parametrize("kwargs,expected", [
    (dict(every=1), [1, 5, 9]),                         # 4 batches per epoch, first batch of each epoch
    (dict(every=2), [1, 9]),
    (dict(every_iterations=3), [1, 4, 7, 10]),
    (dict(every=1, batches=2), [2, 6, 10]),             # two batches pooled: recorded after the second
])
def test_schedule(kwargs, expected):
    x, y = _data()
    monitor = TrainingMonitor(**kwargs)
    _fit(_model(), monitor, x, y, epochs=3)
    assert [r["iteration"] for r in monitor.records] == expected


def test_values_match_a_numpy_recomputation_of_the_step():
    x, y = _data(n=64)
    model = _model()
    before = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    monitor = TrainingMonitor(every=1, bins=20)
    lr = 0.1
    _fit(model, monitor, x, y, lr=lr, batch_size=64)            # exactly one full-batch step
    after = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    (record,) = monitor.records
    for name in before:
        delta = after[name] - before[name]
        ratio = np.linalg.norm(delta) / np.linalg.norm(before[name]) if np.any(before[name]) else np.nan
        if np.isnan(ratio):
            assert np.isnan(record["update_ratio"][name])
        else:
            assert record["update_ratio"][name] == pytest.approx(ratio, rel=1e-4)
        # plain SGD: delta = -lr * grad, so std(grad) = std(delta) / lr
        assert record["grad_std"][name] == pytest.approx(np.std(delta) / lr, rel=1e-3, abs=1e-9)
    h1 = np.maximum(x @ before["0.weight"].T + before["0.bias"], 0)
    h2 = np.tanh(h1 @ before["2.weight"].T + before["2.bias"])
    relu, tanh = record["layers"]
    assert (relu.name, tanh.name) == ("1", "3")
    assert relu.mean == pytest.approx(h1.mean(), rel=1e-5) and relu.std == pytest.approx(h1.std(), rel=1e-5)
    assert relu.dead == pytest.approx(np.mean(~(h1 > 0).any(axis=0)))
    assert tanh.saturated == pytest.approx(np.mean(np.abs(h2) > 0.99))
    assert tanh.counts.sum() == h2.size and len(tanh.counts) == 20


def test_dead_relus_and_saturated_tanh_are_counted():
    x, y = _data()
    model = _model()
    model[0].bias.data[:8] = -100.0          # half of the first layer's units can never fire
    model[2].weight.data *= 1e4              # tanh driven into saturation
    monitor = TrainingMonitor(every=1)
    _fit(model, monitor, x, y, lr=1e-6)
    relu, tanh = monitor.records[0]["layers"]
    assert relu.dead == pytest.approx(0.5)
    assert tanh.saturated > 0.95


def test_update_ratio_warning_is_configurable():
    x, y = _data()
    monitor = TrainingMonitor(every=1)
    model = _model()
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=1e-9), callbacks=[monitor],
                      progress=False)
    with pytest.warns(UpdateRatioWarning, match=r"0\.weight .* < 0\.0001"):
        trainer.fit(x, y, epochs=1, batch_size=64)
    assert issubclass(UpdateRatioWarning, UserWarning)
    quiet = TrainingMonitor(every=1, ratio_range=(0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UpdateRatioWarning)
        _fit(_model(), quiet, x, y, lr=1e-9)
    assert len(quiet.records) == 1


def test_validation_is_never_recorded_and_wrappers_are_removed():
    x, y = _data()
    xv, yv = _data(n=100)
    model = _model()
    monitor = TrainingMonitor(every_iterations=1)
    _fit(model, monitor, x, y, epochs=2, validation=(xv, yv))
    assert len(monitor.records) == 8
    assert all(layer.shape[0] == 64 for r in monitor.records for layer in r["layers"])
    assert all("forward" not in m.__dict__ for m in model.modules())
    iterations, ratios = monitor.history("update_ratio", "0.weight")
    assert list(iterations) == list(range(1, 9)) and np.all(ratios > 0)
    _, stds = monitor.history("std", "1")
    assert len(stds) == 8


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TrainingMonitor(every=0)
    for bad in ((1e-2, 1e-4), (1e-2,), (1e-4, 1e-3, 1e-2), None, ("a", "b")):    # not "not enough values to unpack"
        with pytest.raises(ValueError, match=r"ratio_range must be \(low, high\) with 0 <= low < high"):
            TrainingMonitor(ratio_range=bad)
    assert isinstance(TrainingMonitor(), Callback)


def test_history_refuses_a_name_or_key_it_does_not_hold():
    # before: a misspelt parameter or layer name returned two empty arrays (an empty plot), an unknown key an
    # AttributeError of LayerStats
    x, y = _data()
    monitor = TrainingMonitor(every_iterations=1)
    assert [len(a) for a in monitor.history("update_ratio", "0.weight")] == [0, 0]     # no records yet
    _fit(_model(), monitor, x, y)
    assert len(monitor.history("update_ratio", "0.weight")[1]) == 4
    with pytest.raises(ValueError, match=r"no parameter named '0\.weights'.*'0\.weight', '0\.bias'"):
        monitor.history("update_ratio", "0.weights")
    with pytest.raises(ValueError, match=r"no monitored layer named '0'.*\['1', '3'\]"):
        monitor.history("dead", "0")                      # the Linear, not its ReLU
    with pytest.raises(ValueError, match="key must be one of"):
        monitor.history("grad", "1")


def test_a_re_evaluating_optimizer_records_the_batch_not_its_line_search():
    """L-BFGS re-runs forward and backward at other weights inside its step: those passes were pooled into the
    batch's activations ((1000, 16) for a batch of 50) and their last gradients read as the step's."""
    from cynet.optim import LBFGS
    x, y = _data(n=50)
    x = x.astype(np.float64)
    model = _model().double()
    weights = {name: p.data.copy() for name, p in model.named_parameters()}
    optimizer = LBFGS(model.parameters(), lr=1)
    grads_at_step = []
    step = optimizer.step

    def recorded_step(*args, **kwargs):
        grads_at_step.append({name: p.grad.copy() for name, p in model.named_parameters()})
        return step(*args, **kwargs)

    optimizer.step = recorded_step
    monitor = TrainingMonitor(every=1, warn=False)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optimizer, callbacks=[monitor], progress=False)
    trainer.fit(x, y, epochs=1, batch_size=50, shuffle=False)
    relu = np.maximum(x @ weights["0.weight"].T + weights["0.bias"], 0)
    layer = monitor.records[0]["layers"][0]
    assert layer.shape == (50, 16)
    np.testing.assert_allclose([layer.mean, layer.std], [relu.mean(), relu.std()], rtol=1e-12)
    for name, grad in grads_at_step[0].items():
        np.testing.assert_allclose(monitor.records[0]["grad_std"][name], np.std(grad), rtol=1e-12)
    assert optimizer.__dict__["step"] is recorded_step        # the optimiser's own step is back
