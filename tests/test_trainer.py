"""The training loop (cynet.train): against a hand-written NumPy loop, callbacks, the divergence guard, inference.

Oracles: a NumPy float64 re-implementation of the lecture's loop for the same 2-layer MLP (weights copied in,
the same batch order); weights recorded by a callback after every step/epoch for the restore checks; direct
NumPy computations of the loss and accuracy for evaluate/predict.
"""
import io
import math
import sys
import threading
import warnings

import numpy as np
import pytest

import cynet
from cynet import nn, optim
from cynet.nn.loss import L2Penalty, MSELoss, SoftmaxCrossEntropy
from cynet.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from cynet.train import (Callback, DivergenceWarning, EarlyStopping, ModelCheckpoint, ProgressBar, Trainer)
from cynet import checkpoint


# --- data and helpers ------------------------------------------------------------------------------------------------
def blobs(n, d=6, classes=3, seed=0, spread=0.4):
    """Well separated Gaussian blobs: class c is centred at 3*e_c."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = 3.0 * np.eye(classes, d)
    x = centres[y] + spread * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.int64)


def mlp(d=6, h=10, c=3, dropout=None, seed=0):
    layers = [nn.Linear(d, h, generator=seed), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(h, c, generator=seed + 1))
    return nn.Sequential(*layers)


def weights(model):
    return [p.data.copy() for p in model.parameters()]


class Recorder(Callback):
    """Records the weights at the start, after every step and after every epoch."""

    def __init__(self):
        self.start, self.steps, self.epochs = None, [], []

    def on_train_begin(self, trainer):
        self.start = weights(trainer.model)

    def on_batch_end(self, trainer):
        self.steps.append(weights(trainer.model))

    def on_epoch_end(self, trainer):
        self.epochs.append(weights(trainer.model))


def numpy_softmax_loss(scores, y):
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    dscores = np.exp(log_p)
    dscores[np.arange(n), y] -= 1
    return -log_p[np.arange(n), y].mean(), dscores / n


# --- the reference loop ----------------------------------------------------------------------------------------------
def test_matches_numpy_reference_loop():
    """Per-iteration losses, reg losses and final weights equal a NumPy float64 loop of the same MLP."""
    x, y = blobs(50, seed=1)
    model = mlp()
    w1, b1, w2, b2 = [p.astype(np.float64) for p in weights(model)]
    lr, mu, reg, batch, seed, epochs = 0.05, 0.9, 1e-3, 16, 7, 3
    penalty = L2Penalty(reg)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=lr, momentum=mu),
                      regularization=penalty, seed=seed, progress=False)
    history = trainer.fit(x, y, epochs=epochs, batch_size=batch)

    # CS231n's convention, R = 0.5 * reg * sum(W**2) over the weights (not the biases): gradient reg * W
    ws = [model[0].weight.data.astype(np.float64), model[-1].weight.data.astype(np.float64)]
    assert penalty(model) == pytest.approx(0.5 * reg * sum((w ** 2).sum() for w in ws), rel=1e-5)
    k = 0.5

    # NumPy loop (PyTorch's SGD momentum: v = mu * v + g; w -= lr * v)
    params = [w1, b1, w2, b2]
    velocity = [np.zeros_like(p) for p in params]
    rng = np.random.default_rng(seed)
    losses, reg_losses, epoch_means = [], [], []
    xd = x.astype(np.float64)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for lo in range(0, len(x), batch):
            idx = order[lo:lo + batch]
            xb, yb = xd[idx], y[idx]
            hidden = xb @ w1.T + b1
            relu = np.maximum(hidden, 0)
            scores = relu @ w2.T + b2
            loss, dscores = numpy_softmax_loss(scores, yb)
            losses.append(loss)
            reg_losses.append(k * reg * ((w1 ** 2).sum() + (w2 ** 2).sum()))
            total += loss * len(idx)
            dw2 = dscores.T @ relu + 2 * k * reg * w2
            db2 = dscores.sum(axis=0)
            dhidden = (dscores @ w2) * (hidden > 0)
            dw1 = dhidden.T @ xb + 2 * k * reg * w1
            db1 = dhidden.sum(axis=0)
            for p, v, g in zip(params, velocity, (dw1, db1, dw2, db2)):
                v *= mu
                v += g
                p -= lr * v
        epoch_means.append(total / len(x))

    assert len(history["loss"]) == epochs * 4 == trainer.iteration
    np.testing.assert_allclose(history["loss"], losses, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(history["reg_loss"], reg_losses, rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(history["train_loss"], epoch_means, rtol=2e-5)
    assert history["lr"] == [lr] * len(losses)
    for got, want in zip(weights(model), params):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert all(math.isnan(v) for v in history["val_loss"] + history["val_acc"])
    assert len(history["epoch_time"]) == epochs and all(t >= 0 for t in history["epoch_time"])


def test_separable_problem_reaches_high_accuracy():
    x, y = blobs(300, seed=2)
    xv, yv = blobs(150, seed=3)
    model = mlp(h=16)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-2), progress=False)
    history = trainer.fit(x, y, epochs=8, batch_size=32, validation=(xv, yv))
    assert history["val_acc"][-1] >= 0.97
    assert history["train_loss"][-1] < history["train_loss"][0] / 4
    assert np.mean(trainer.predict(xv) == yv) == pytest.approx(history["val_acc"][-1])


def test_train_acc_and_loss_on_a_frozen_model_equal_evaluate():
    """With no dropout and no updates, the per-epoch numbers (odd last batch included) equal evaluate()."""
    x, y = blobs(37, seed=4)
    model = mlp().freeze()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    history = trainer.fit(x, y, epochs=1, batch_size=10, validation=(x, y))
    scores = model.eval()(x).astype(np.float64)
    want_loss, _ = numpy_softmax_loss(scores, y)
    want_acc = np.mean(scores.argmax(axis=1) == y)
    assert history["train_loss"][0] == pytest.approx(want_loss, rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(want_loss, rel=1e-5)
    assert history["train_acc"][0] == pytest.approx(want_acc) == history["val_acc"][0]


def test_epoch_numbers_count_the_rows_a_mixup_callable_returned():
    """A mixup callable that returns the originals with the batch (2N rows of integer labels) trained on 2N rows per
    step: train_acc counted those correct over the N of the slice (1.8 was reported), train_loss mis-weighted the
    partial last batch. Both now weigh each batch by the rows trained on."""
    x, y = blobs(37, seed=4)
    model = mlp().freeze()
    double = lambda xb, yb, generator: (np.concatenate([xb, xb]), np.concatenate([yb, yb]))
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False,
                      mixup=double)
    history = trainer.fit(x, y, epochs=1, batch_size=10, shuffle=False)
    scores = model.eval()(x).astype(np.float64)
    want_loss, _ = numpy_softmax_loss(scores, y)
    assert history["train_acc"][0] == pytest.approx(np.mean(scores.argmax(axis=1) == y))
    assert history["train_loss"][0] == pytest.approx(want_loss, rel=1e-5)
    assert trainer.running_acc == history["train_acc"][0] <= 1


def test_seeded_runs_are_reproducible_and_the_seed_matters():
    x, y = blobs(60, seed=5)

    def run(seed):
        cynet.manual_seed(3)
        model = mlp(dropout=0.3)
        trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                          seed=seed, progress=False)
        return trainer.fit(x, y, epochs=2, batch_size=16), weights(model)

    h1, w1 = run(0)
    h2, w2 = run(0)
    h3, _ = run(1)
    assert h1["loss"] == h2["loss"]
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert h1["loss"] != h3["loss"]


def test_shuffle_false_keeps_the_data_order():
    x, y = blobs(20, seed=6)
    seen = []

    def transform(xb, rng):
        seen.append(xb.copy())
        return xb

    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.01),
                      batch_transform=transform, progress=False)
    trainer.fit(x, y, epochs=1, batch_size=8, shuffle=False)
    np.testing.assert_array_equal(np.concatenate(seen), x)
    assert [len(b) for b in seen] == [8, 8, 4]


def test_batch_transform_gets_uint8_and_the_trainer_generator_in_training_and_none_in_eval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    x = (y[:, None] * 200 + rng.integers(0, 50, (40, 4))).astype(np.uint8)
    calls = []

    def transform(xb, generator):
        calls.append((xb.dtype, generator))
        out = xb.astype(np.float32) / 255.0
        if generator is not None:       # augmentation: tiny noise
            out += generator.normal(0, 0.01, out.shape).astype(np.float32)
        return out

    model = nn.Sequential(nn.Linear(4, 2, generator=0))
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.5), batch_transform=transform,
                      progress=False)
    trainer.fit(x, y, epochs=2, batch_size=16, validation=(x, y))
    train_calls = [c for c in calls if c[1] is not None]
    assert len(train_calls) == 6 and all(g is trainer.generator for _, g in train_calls)
    assert all(dtype == np.uint8 for dtype, _ in calls)
    calls.clear()
    loss, acc = trainer.evaluate(x, y, batch_size=25)
    assert [g for _, g in calls] == [None, None]
    want_loss, _ = numpy_softmax_loss(model(x.astype(np.float32) / 255.0).astype(np.float64), y)
    assert loss == pytest.approx(want_loss, rel=1e-5)


def test_an_augmentation_as_batch_transform_is_refused_since_it_would_augment_evaluation():
    # RandomHorizontalFlip()(xb, None) draws from the global generator: evaluate and predict came out at random
    from cynet.data import Compose, Cutout, RandomCrop, RandomHorizontalFlip, make_batch_transform
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 1, 4, 4)).astype(np.float32), np.arange(32) % 2
    for augment in (RandomHorizontalFlip(), RandomCrop(4, padding=1), Cutout(2), Compose([RandomHorizontalFlip()])):
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, generator=0))
        with pytest.raises(TypeError, match="is an augmentation.*make_batch_transform"):
            Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), batch_transform=augment,
                    progress=False)
        trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False,
                          batch_transform=make_batch_transform(None, augment))
        trainer.fit(x, y, epochs=1, batch_size=8)
        assert trainer.evaluate(x, y) == trainer.evaluate(x, y)
        np.testing.assert_array_equal(trainer.predict(x), np.argmax(model.eval()(x), axis=1))


def test_uint8_input_without_transform_is_cast_to_the_model_dtype():
    x = np.array([[0, 1], [2, 3], [4, 5]], np.uint8)
    model = nn.Sequential(nn.Linear(2, 2, generator=0))
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    np.testing.assert_array_equal(trainer.predict(x), model(x.astype(np.float32)).argmax(axis=1))


# --- inference -------------------------------------------------------------------------------------------------------
def test_evaluate_and_predict_are_batched_deterministic_and_leave_gradients_alone():
    x, y = blobs(53, seed=7)
    model = mlp(dropout=0.5)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    for p in model.parameters():
        p.grad = np.full(p.shape, 0.25, p.dtype)
    loss_small, acc_small = trainer.evaluate(x, y, batch_size=7)
    loss_big, acc_big = trainer.evaluate(x, y)
    model.eval()
    scores = model(x).astype(np.float64)
    model.train()
    want_loss, _ = numpy_softmax_loss(scores, y)
    assert loss_small == pytest.approx(want_loss, rel=1e-5) and loss_big == pytest.approx(want_loss, rel=1e-5)
    assert acc_small == acc_big == np.mean(scores.argmax(axis=1) == y)
    labels = trainer.predict(x, batch_size=10)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, scores.argmax(axis=1))
    proba = trainer.predict_proba(x, batch_size=10)
    assert proba.shape == (53, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad, 0.25)


def test_predictions_from_two_python_threads_keep_evaluation_mode_until_both_end():
    # each prediction restored the modes it had seen on entry: the first to end put the model back in training mode
    # while the other still ran (batch statistics, running statistics updated, units dropped), and the model was
    # left in evaluation mode after both
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(16, 32, generator=1), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5, generator=2),
                          nn.Linear(32, 4, generator=3))
    x = rng.standard_normal((64, 16)).astype(np.float32)
    model(x * 2 + 1)                                   # running statistics unlike the batches'
    events = {name: threading.Event() for name in ("first_in", "second_in", "first_done")}

    def transform(xb, rng):          # orders the two threads: the first ends while the second is half-way through
        name = threading.current_thread().name
        if name == "first" and not events["first_in"].is_set():
            events["first_in"].set()
            events["second_in"].wait(10)
        elif name == "second" and not events["second_in"].is_set():
            events["second_in"].set()
            events["first_done"].wait(10)
        return xb

    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), batch_transform=transform)
    expected = trainer.predict_proba(x, batch_size=16)
    events["first_in"].clear()
    running = model[1].running_mean.copy()
    results = {}

    def predict(name):
        results[name] = trainer.predict_proba(x, batch_size=16)
        if name == "first":
            events["first_done"].set()

    first = threading.Thread(target=predict, args=("first",), name="first")
    first.start()
    events["first_in"].wait(10)
    second = threading.Thread(target=predict, args=("second",), name="second")
    second.start()
    first.join()
    second.join()
    assert np.array_equal(results["first"], expected) and np.array_equal(results["second"], expected)
    assert all(module.training for module in model.modules())
    assert np.array_equal(model[1].running_mean, running)


def test_predict_refuses_nan_inputs_as_evaluate_does():
    # predict gave class 0 for a row holding a NaN (np.argmax of NaN scores) and predict_proba NaN "probabilities"
    x, y = blobs(12, seed=7)
    x[5, 2] = np.nan
    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    for method in ("evaluate", "predict", "predict_proba"):
        args = (x, y) if method == "evaluate" else (x,)
        before = "evaluating" if method == "evaluate" else "predicting"      # (it advised it "before training")
        with pytest.raises(ValueError, match=rf"Trainer.{method}: x holds 1 NaN/inf value \(first in row 5\); "
                                             rf"remove or impute them before {before}"):
            getattr(trainer, method)(*args, batch_size=4)


def test_inference_restores_each_modules_mode_even_after_an_error():
    x, y = blobs(10, seed=8)
    model = mlp(dropout=0.5)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    trainer.evaluate(x, y)
    trainer.predict(x)
    trainer.predict_proba(x)
    assert all(m.training for m in model.modules())
    model.eval()
    trainer.evaluate(x, y)
    assert not any(m.training for m in model.modules())
    model.train()
    model[2].eval()         # a mixed state survives too
    before = [m.training for m in model.modules()]
    with pytest.raises(ValueError):
        trainer.predict(np.zeros((4, 5), np.float32))          # wrong width: Linear raises mid-inference
    assert [m.training for m in model.modules()] == before
    with pytest.raises(ValueError, match="same length"):
        trainer.evaluate(x, y[:-1])

    class Boom(SoftmaxCrossEntropy):
        def forward(self, scores, yb):
            raise RuntimeError("boom")

    trainer.loss = Boom()                                  # an error outside the model, in evaluate's own loop
    with pytest.raises(RuntimeError, match="boom"):
        trainer.evaluate(x, y)
    assert [m.training for m in model.modules()] == before


def test_a_single_example_without_the_batch_axis_is_named_as_such():
    # predict(x_test[0]) on a (N, 3072) model: the (3072,) vector was cut into "batches" of its values and Linear
    # reported a shape (1024,) the learner never passed; evaluate said "got 3072 and 1"
    model = nn.Sequential(nn.Linear(3072, 10, generator=0))
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    one = np.zeros(3072, np.float32)
    for call, op in [(trainer.predict, "Trainer.predict"), (trainer.predict_proba, "Trainer.predict_proba")]:
        with pytest.raises(ValueError, match=rf"{op}: x must be a batch with one example per row, shape \(N, \.\.\.\), "
                                             rf"got float32 array of shape \(3072,\); for a single example pass "
                                             rf"x\[None\] \(shape \(1, 3072\)\)"):
            call(one)
    with pytest.raises(ValueError, match=r"Trainer.evaluate: x and y must have the same length \(one label per "
                                         r"example\), got 3072 and 1; x of shape \(3072,\) looks like a single "
                                         r"example: pass x\[None\] \(shape \(1, 3072\)\)"):
        trainer.evaluate(one, np.array([3]))
    assert trainer.predict(one[None]).shape == (1,)


def test_a_scheduler_of_another_optimiser_is_refused():
    # fit stepped the other optimiser's rate (0.1 -> 1e-4 in 3 epochs) and trained at 0.1 throughout, silently
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    other = optim.SGD(mlp().parameters(), lr=0.1)
    for scheduler in (StepLR(other, step_size=1, gamma=0.1), ReduceLROnPlateau(other)):
        with pytest.raises(ValueError, match=rf"Trainer: the scheduler {type(scheduler).__name__} was built over "
                                             r"another optimiser \(SGD at 0x[0-9a-f]+\) than the trainer's SGD at "
                                             r"0x[0-9a-f]+, whose learning rate it would never change; build it over "
                                             r"the trainer's optimiser"):
            Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=scheduler, progress=False)
    Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=StepLR(opt, step_size=1), progress=False)


def test_predict_proba_needs_a_probabilistic_loss():
    model = mlp()
    trainer = Trainer(model, MSELoss(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(TypeError, match="probabilities"):
        trainer.predict_proba(np.zeros((2, 6), np.float32))


def test_regression_targets_give_nan_accuracy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3)).astype(np.float32)
    target = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    model = nn.Sequential(nn.Linear(3, 1, generator=0))
    trainer = Trainer(model, MSELoss(), optim.SGD(model.parameters(), lr=0.05), progress=False)
    history = trainer.fit(x, target, epochs=20, batch_size=30, validation=(x, target))
    assert math.isnan(history["train_acc"][-1]) and math.isnan(history["val_acc"][-1])
    assert history["val_loss"][-1] < history["val_loss"][0] / 10


# --- fit's arguments and the epoch count -----------------------------------------------------------------------------
def test_fit_validates_its_arguments():
    x, y = blobs(10)
    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(ValueError, match="same length"):
        trainer.fit(x, y[:9], epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(x, y, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(x, y, epochs=-1)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(x, y, epochs=1.5)
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(x[:0], y[:0], epochs=1)
    with pytest.raises(ValueError, match="pair"):
        trainer.fit(x, y, epochs=1, validation=x)
    with pytest.raises(ValueError, match="validation"):
        trainer.fit(x, y, epochs=1, validation=(x, y[:3]))
    with pytest.raises(TypeError, match="Callback"):
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[print])
    with pytest.raises(TypeError, match="Module"):
        Trainer(object(), SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="validation data"):
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[EarlyStopping()],
                progress=False).fit(x, y, epochs=1)
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(monitor="accuracy")
    assert trainer.epoch == 0 and trainer.history["loss"] == []


def test_epochs_is_the_total_to_reach():
    x, y = blobs(20)
    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    trainer.fit(x, y, epochs=2, batch_size=10)
    trainer.fit(x, y, epochs=3, batch_size=10)
    assert trainer.epoch == 3 and len(trainer.history["train_loss"]) == 3 and len(trainer.history["loss"]) == 6
    with pytest.warns(UserWarning, match="already done"):
        trainer.fit(x, y, epochs=3, batch_size=10)
    assert trainer.epoch == 3 and len(trainer.history["loss"]) == 6


def test_schedulers_step_once_per_epoch_and_plateau_gets_the_validation_loss():
    x, y = blobs(40, seed=9)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=StepLR(opt, step_size=1, gamma=0.5),
                      progress=False)
    history = trainer.fit(x, y, epochs=3, batch_size=20)
    np.testing.assert_allclose(history["lr"], [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])

    received = []

    class MetricScheduler:
        def step(self, metric):
            received.append(metric)

        def state_dict(self):
            return {}

    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
                      scheduler=MetricScheduler(), progress=False)
    history = trainer.fit(x, y, epochs=3, batch_size=20, validation=(x[:10], y[:10]))
    assert received == history["val_loss"]

    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    plateau = ReduceLROnPlateau(opt, factor=0.5, patience=0)
    seen = []
    original = plateau.step

    def spy(metric, *args, **kwargs):
        seen.append(metric)
        return original(metric, *args, **kwargs)

    plateau.step = spy
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=plateau, progress=False)
    history = trainer.fit(x, y, epochs=2, batch_size=20, validation=(x[:10], y[:10]))
    assert seen == history["val_loss"]


def test_a_plateau_schedule_in_max_mode_is_refused_since_the_trainer_feeds_it_a_loss():
    # accepted, it cut the learning rate after every epoch whose validation loss went down (no 'increase')
    x, y = blobs(40, seed=9)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"Trainer: the scheduler ReduceLROnPlateau has mode='max', but the trainer "
                                         r"steps it with the validation loss"):
        Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=ReduceLROnPlateau(opt, mode="max", patience=0),
                progress=False)
    # in 'min' mode a loss that keeps going down leaves the rate alone (the oracle: the schedule's own rule)
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=ReduceLROnPlateau(opt, patience=0),
                      progress=False)
    history = trainer.fit(x, y, epochs=3, batch_size=20, validation=(x, y))
    assert all(b < a for a, b in zip(history["val_loss"], history["val_loss"][1:]))
    assert history["lr"] == [0.1] * 6 and opt.lr == 0.1


# --- callbacks -------------------------------------------------------------------------------------------------------
def _diverging_validation_setup(**early):
    """Validation labels are the training labels shifted, so val_loss rises as training succeeds."""
    x, y = blobs(60, seed=10)
    xv, yv = x, (y + 1) % 3
    model = mlp()
    recorder = Recorder()
    stopper = EarlyStopping(**early)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      callbacks=[recorder, stopper], progress=False)
    return trainer, recorder, stopper, (x, y), (xv, yv)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    trainer, recorder, stopper, (x, y), val = _diverging_validation_setup(monitor="val_loss", patience=2)
    history = trainer.fit(x, y, epochs=15, batch_size=20, validation=val)
    val_loss = history["val_loss"]
    best = int(np.argmin(val_loss))
    assert len(val_loss) == best + 1 + 2 < 15          # stopped exactly `patience` epochs after the best
    assert "early stopping" in trainer.stop_reason and "val_loss" in trainer.stop_reason
    assert stopper.best == val_loss[best] and stopper.best_epoch == best + 1
    for got, want in zip(weights(trainer.model), recorder.epochs[best]):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(recorder.epochs[best][0], recorder.epochs[-1][0])


def test_early_stopping_min_delta_and_no_restore():
    trainer, recorder, stopper, (x, y), val = _diverging_validation_setup(monitor="train_loss", patience=1,
                                                                           min_delta=1e9,
                                                                           restore_best_weights=False)
    trainer.fit(x, y, epochs=10, batch_size=20)
    assert trainer.epoch == 2        # epoch 1 sets the best, epoch 2 cannot beat it by 1e9
    for got, want in zip(weights(trainer.model), recorder.epochs[-1]):
        np.testing.assert_array_equal(got, want)


def test_early_stopping_min_delta_is_a_strict_margin():
    # documented: an improvement must beat the best by more than min_delta; exactly min_delta is no improvement
    # (values exact in binary, so no rounding decides it)
    class Fake:
        def __init__(self):
            self.history, self.epoch, self.stop_reason = {"val_loss": []}, 0, None

        def stop(self, reason):
            self.stop_reason = reason

    for values, min_delta, stopped_at in (([1.0, 0.5], 0.5, 2), ([1.0, 0.4375], 0.5, None)):
        stopper, fake = EarlyStopping(monitor="val_loss", patience=1, min_delta=min_delta,
                                      restore_best_weights=False), Fake()
        stopped = None
        for value in values:
            fake.history["val_loss"].append(value)
            fake.epoch += 1
            stopper.on_epoch_end(fake)
            if fake.stop_reason and stopped is None:
                stopped = fake.epoch
        assert stopped == stopped_at


def test_early_stopping_restores_best_weights_on_keyboard_interrupt():
    trainer, recorder, stopper, (x, y), val = _diverging_validation_setup(monitor="val_loss", patience=50)

    class Interrupt(Callback):
        def on_batch_end(self, trainer):
            if trainer.epoch == 4 and trainer.iteration == 4 * 3 + 2:
                raise KeyboardInterrupt

    trainer.callbacks.append(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=15, batch_size=20, validation=val)
    assert "KeyboardInterrupt" in trainer.stop_reason and trainer.epoch == 4
    best = int(np.argmin(trainer.history["val_loss"]))
    for got, want in zip(weights(trainer.model), recorder.epochs[best]):
        np.testing.assert_array_equal(got, want)


def test_model_checkpoint_keeps_the_best_model(tmp_path):
    trainer, recorder, _, (x, y), val = _diverging_validation_setup(monitor="val_loss", patience=100)
    path = tmp_path / "best.npz"
    trainer.callbacks.append(ModelCheckpoint(path, monitor="val_loss"))
    history = trainer.fit(x, y, epochs=4, batch_size=20, validation=val)
    best = int(np.argmin(history["val_loss"]))
    restored = checkpoint.load_model(path, mlp(seed=99))
    for got, want in zip(weights(restored), recorder.epochs[best]):
        np.testing.assert_array_equal(got, want)


def test_progress_bar_shows_loss_and_accuracy():
    x, y = blobs(30)
    stream = io.StringIO()
    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[ProgressBar(file=stream)])
    assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == 1
    trainer.fit(x, y, epochs=2, batch_size=10, validation=(x, y))
    text = stream.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert "loss=" in text and "acc=" in text and "val_acc=" in text
    assert any(isinstance(c, ProgressBar) for c in Trainer(model, SoftmaxCrossEntropy(), trainer.optimizer).callbacks)
    assert not any(isinstance(c, ProgressBar)
                   for c in Trainer(model, SoftmaxCrossEntropy(), trainer.optimizer, progress=False).callbacks)


def test_callback_hooks_run_in_order():
    events = []

    class Log(Callback):
        def on_train_begin(self, t):
            events.append("train_begin")

        def on_epoch_begin(self, t):
            events.append(f"epoch_begin {t.epoch}")

        def on_batch_end(self, t):
            events.append(f"batch {t.iteration}")

        def on_epoch_end(self, t):
            events.append(f"epoch_end {t.epoch} {len(t.history['val_loss'])}")

        def on_train_end(self, t):
            events.append("train_end")

    x, y = blobs(8)
    model = mlp()
    Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[Log()],
            progress=False).fit(x, y, epochs=2, batch_size=5, validation=(x, y))
    assert events == ["train_begin", "epoch_begin 0", "batch 1", "batch 2", "epoch_end 1 1",
                      "epoch_begin 1", "batch 3", "batch 4", "epoch_end 2 2", "train_end"]


# --- the divergence guard --------------------------------------------------------------------------------------------
def snapshot_iteration(bad, guard_every):
    """The iteration before whose step the guard's latest copy was taken, for a divergence at iteration ``bad``:
    the largest 1 + m * guard_every below ``bad`` (None: only the copy taken when fit started)."""
    taken = [i for i in range(1, bad) if (i - 1) % guard_every == 0]
    return taken[-1] if taken else None


@pytest.mark.parametrize("guard_every", [1, 3])
@pytest.mark.parametrize("lr", [1e4, 10.0, 6.0])     # blows up at once / after two steps / after four
def test_divergence_guard_stops_on_a_huge_learning_rate_and_restores_the_last_good_weights(lr, guard_every):
    x, y = blobs(64, seed=11)
    model = mlp()
    recorder = Recorder()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=lr), callbacks=[recorder],
                      progress=False)
    trainer.guard_every = guard_every
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(x, y, epochs=50, batch_size=8)
    caught = [w for w in caught if issubclass(w.category, DivergenceWarning)]
    assert len(caught) == 1
    losses = trainer.history["loss"]
    bad = len(losses)                           # 1-based number of the diverged iteration
    assert bad >= 2 and trainer.iteration == bad and len(recorder.steps) == bad - 1
    assert not math.isfinite(losses[-1]) or losses[-1] > 3 * losses[0]
    assert all(math.isfinite(v) and v <= 3 * losses[0] for v in losses[:-1])
    message = str(caught[0].message)
    assert f"iteration {bad}" in message and ("3x the first" in message or "not finite" in message)
    assert "diverged" in trainer.stop_reason and trainer.epoch < 50
    # the weights from before the step of the iteration of the guard's latest copy (with guard_every = 1 the bad
    # step itself: the weights that produced the last good loss); recorder.steps[i] follows the step of iteration
    # i + 1
    taken = snapshot_iteration(bad, guard_every)
    want_weights = recorder.steps[taken - 2] if taken is not None and taken >= 2 else recorder.start
    for got, want in zip(weights(model), want_weights):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)
    if taken is not None:
        back = "the last step" if taken == bad - 1 else f"the step of iteration {taken}"
        assert f"from before {back} (those of iteration {taken}" in message


def test_divergence_guard_catches_nan_and_early_stopping_still_restores_the_best():
    x, y = blobs(40, seed=12)

    class NaNAfter(SoftmaxCrossEntropy):
        calls = 0

        def forward(self, scores, yb):
            NaNAfter.calls += 1
            value = super().forward(scores, yb)
            return math.nan if NaNAfter.calls == 10 else value

    model = mlp()
    recorder = Recorder()
    stopper = EarlyStopping(monitor="val_acc", patience=100)
    trainer = Trainer(model, NaNAfter(), optim.SGD(model.parameters(), lr=0.05), callbacks=[recorder, stopper],
                      progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(x[:30], y[:30], epochs=20, batch_size=10, validation=(x[30:], y[30:]))
    messages = [str(w.message) for w in caught if issubclass(w.category, DivergenceWarning)]
    # validation calls forward too: 3 training + 1 validation batches per epoch, so call 10 is iteration 8
    assert len(messages) == 1 and "not finite" in messages[0]
    assert trainer.epoch == 2 and "diverged" in trainer.stop_reason
    best = int(np.argmax(trainer.history["val_acc"]))    # first maximum: later ties are not improvements
    for got, want in zip(weights(model), recorder.epochs[best]):
        np.testing.assert_array_equal(got, want)


def test_a_divergence_in_a_later_fit_says_which_steps_it_undid():
    x, y = blobs(40, seed=3)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.05)
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, progress=False)
    trainer.fit(x, y, epochs=1, batch_size=8)                  # iterations 1-5
    after_first = weights(model)
    opt.lr = 1e4                                               # the step of iteration 6 blows the loss up at 7
    with pytest.warns(DivergenceWarning, match=r"from the start of this fit \(undoing the step of iteration 6\)"):
        trainer.fit(x, y, epochs=2, batch_size=8)
    assert trainer.iteration == 7
    for got, want in zip(weights(model), after_first):
        np.testing.assert_array_equal(got, want)


def test_the_divergence_guard_restores_a_layer_unfrozen_after_its_copy():
    """A callback unfreezes the first layer after the guard's copy; the steps that follow blow the loss up. The
    guard put back every other layer and kept the unfrozen one's diverged weights and momentum (its copy skipped
    frozen parameters), a model half from before and half from after."""
    x, y = blobs(64, seed=0)
    model = mlp()
    for param in model[0].parameters():
        param.requires_grad = False
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    class Unfreeze(Callback):
        def on_epoch_begin(self, trainer):
            if trainer.epoch == 1:
                for param in model[0].parameters():
                    param.requires_grad = True
                opt.lr = 50.0

    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, callbacks=[Unfreeze()], progress=False)
    trainer.guard_every = 1000                  # copies at the start of fit and before the step of iteration 1
    with pytest.warns(DivergenceWarning, match="from before the step of iteration 1"):
        trainer.fit(x, y, epochs=3, batch_size=16, shuffle=False)
    first = mlp()                               # the weights before the step of iteration 1: the start
    for got, want in zip(weights(model), weights(first)):
        np.testing.assert_array_equal(got, want)
    assert opt.state[0] == {} and opt.state[1] == {}              # the unfrozen layer's momentum is gone too


def test_the_divergence_guard_undoes_the_steps_in_an_ema_average_too():
    from cynet.ensemble import EMA

    class ShadowRecorder(Callback):
        def __init__(self, ema):
            self.ema, self.seen = ema, {}

        def on_train_begin(self, trainer):
            self.on_batch_end(trainer)

        def on_batch_end(self, trainer):
            self.seen[self.ema.num_updates] = [shadow.copy() for shadow in self.ema.shadow]

    x, y = blobs(40, seed=3, spread=3.0)                       # overlapping classes: the loss cannot reach 0
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ema = EMA(0.9)
    recorder = ShadowRecorder(ema)
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, callbacks=[ema, recorder], progress=False)
    trainer.fit(x, y, epochs=3, batch_size=4)
    opt.lr = 1e4
    with pytest.warns(DivergenceWarning):
        trainer.fit(x, y, epochs=6, batch_size=4)
    assert ema.num_updates < max(recorder.seen)                # steps were undone ...
    for got, want in zip(ema.shadow, recorder.seen[ema.num_updates]):
        np.testing.assert_array_equal(got, want)               # ... and the average is the one from before them


def _recording(optimizer_class):
    """``optimizer_class`` that records its state dict and the model's (weights and buffers) before every step."""
    class Recording(optimizer_class):
        def __init__(self, model, *args, **kwargs):
            super().__init__(model.parameters(), *args, **kwargs)
            self.model = model
            self.before_steps = []

        def step(self):
            self.before_steps.append((self.state_dict(), self.model.state_dict()))
            super().step()
    return Recording


class RecordingLoss(SoftmaxCrossEntropy):
    """Records the model's state dict at every forward, i.e. after the forward pass updated the running stats."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, scores, yb):
        self.seen.append(self.model.state_dict())
        return super().forward(scores, yb)


def assert_same_state(got, want):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("guard_every", [1, 2, Trainer.guard_every])
@pytest.mark.parametrize("optimizer_class,settings", [(optim.SGD, dict(lr=2.0, momentum=0.9)),
                                                      (optim.Adam, dict(lr=1.0))], ids=["sgd-momentum", "adam"])
def test_divergence_guard_restores_optimiser_state_and_batchnorm_statistics(optimizer_class, settings, guard_every):
    x, y = blobs(64, seed=11)
    model = nn.Sequential(nn.Linear(6, 10, generator=0), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3, generator=1))
    opt = _recording(optimizer_class)(model, **settings)
    loss = RecordingLoss(model)
    trainer = Trainer(model, loss, opt, progress=False)
    trainer.guard_every = guard_every
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        trainer.fit(x, y, epochs=30, batch_size=8)
    bad = trainer.iteration                       # the diverged iteration; the bad step was step bad - 1
    assert "diverged" in trainer.stop_reason and bad >= 4 and len(opt.before_steps) == bad - 1
    taken = snapshot_iteration(bad, guard_every)  # the state from before the step of iteration `taken`
    optimizer_before, model_before = opt.before_steps[taken - 1]
    assert_same_state(opt.state_dict(), optimizer_before)         # momentum buffers / moments and step counts
    assert opt.step_count == taken - 1
    assert_same_state(model.state_dict(), model_before)           # weights, running mean/var, batch count
    # what the guard undid: the steps since its copy and the forward passes' updates of the running statistics
    diverged = loss.seen[-1]
    assert int(diverged["1.num_batches_tracked"]) == int(model_before["1.num_batches_tracked"]) + (bad - taken)
    assert not np.array_equal(diverged["1.running_mean"], model_before["1.running_mean"])
    assert not np.array_equal(diverged["0.weight"], model_before["0.weight"])


def _fit_refusing(attribute, value, message):
    """``(trainer, x, y)``: a trainer given ``attribute = value`` on the instance, whose fit refused it (a ValueError
    matching ``message``) before any step."""
    x, y = blobs(16, seed=2)
    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    setattr(trainer, attribute, value)
    with pytest.raises(ValueError, match=message):
        trainer.fit(x, y, epochs=1, batch_size=8)
    assert trainer.iteration == 0
    return trainer, x, y


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_guard_every_must_be_a_positive_int(bad):
    _fit_refusing("guard_every", bad, r"Trainer.fit: guard_every must be an int >= 1, got")


@pytest.mark.parametrize("bad", [None, "20", math.nan, 0, 0.5, -3.0, True])
def test_divergence_factor_must_be_a_number_at_least_one(bad):
    # set on the instance, NaN silently turned the loss rule off and None or "20" failed at the second iteration
    # with a bare TypeError, after a step; a factor below 1 stopped on a loss lower than the first
    trainer, x, y = _fit_refusing("divergence_factor", bad,
                                  r"Trainer.fit: divergence_factor must be a number >= 1 .*, got")
    trainer.divergence_factor = math.inf        # only a NaN/inf loss stops the run
    trainer.fit(x, y, epochs=1, batch_size=8)
    assert trainer.iteration == 2 and trainer.stop_reason is None


def test_divergence_at_the_first_iteration_restores_the_running_statistics():
    x, y = blobs(24, seed=3)

    class NaNLoss(SoftmaxCrossEntropy):
        def forward(self, scores, yb):
            super().forward(scores, yb)
            return math.nan

    model = nn.Sequential(nn.Linear(6, 5, generator=0), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3, generator=1))
    start = model.state_dict()
    trainer = Trainer(model, NaNLoss(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9), progress=False)
    with pytest.warns(DivergenceWarning, match="no step was taken"):
        trainer.fit(x, y, epochs=1, batch_size=8)
    assert trainer.iteration == 1
    assert_same_state(model.state_dict(), start)          # running_mean 0, running_var 1, no batch counted
    assert int(start["1.num_batches_tracked"]) == 0 and trainer.optimizer.state[0] == {}


# --- data plumbing ---------------------------------------------------------------------------------------------------
def test_memmapped_data_trains_like_in_memory_data(tmp_path):
    """Batches are gathered one at a time, so a read-only memmap works and gives the same run."""
    x, y = blobs(45, seed=13)
    path = tmp_path / "x.dat"
    stored = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    stored[:] = x
    stored.flush()
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)

    def run(data):
        model = mlp()
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
            data, y, epochs=2, batch_size=16)
        return weights(model)

    for a, b in zip(run(x), run(mapped)):
        np.testing.assert_array_equal(a, b)


def test_backward_skips_the_input_gradient():
    calls = []

    class Spy(nn.Sequential):
        def backward(self, dout, *, input_grad=True):
            calls.append(input_grad)
            return super().backward(dout, input_grad=input_grad)

    x, y = blobs(12)
    model = Spy(nn.Linear(6, 3, generator=0))
    Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False).fit(
        x, y, epochs=1, batch_size=5)
    assert calls == [False, False, False]


def test_progress_without_tqdm_prints_one_line_per_epoch(monkeypatch):
    monkeypatch.setattr(ProgressBar, "_tqdm", lambda self: None)
    x, y = blobs(20)
    stream = io.StringIO()
    model = mlp()
    Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
            callbacks=[ProgressBar(file=stream)]).fit(x, y, epochs=2, batch_size=10)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ") and " acc " in lines[1]


def test_validation_split_holds_out_the_last_examples_as_keras_does():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((50, 6)).astype(np.float32), rng.integers(0, 3, 50)

    def run(**kwargs):
        cynet.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        trainer = Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
        return trainer.fit(kwargs.pop("x"), kwargs.pop("y"), epochs=3, batch_size=8, **kwargs)

    split = run(x=x, y=y, validation_split=0.2)
    explicit = run(x=x[:40], y=y[:40], validation=(x[40:], y[40:]))
    assert split.keys() == explicit.keys()
    for key in split:
        if key != "epoch_time":                                # wall-clock seconds
            assert split[key] == explicit[key], key
    assert len(split["val_acc"]) == 3
    with pytest.raises(ValueError, match="not both"):
        run(x=x, y=y, validation_split=0.2, validation=(x, y))
    for bad in (0, 1, 1.5, -0.1, True, 0.001):
        with pytest.raises(ValueError, match="validation_split"):
            run(x=x, y=y, validation_split=bad)


def test_a_last_batch_of_one_example_joins_the_one_before():
    """97 examples in batches of 16: six steps, the last of 17, and a batch norm trains through the epoch (a batch
    of one made it raise after the other steps); the step count is the oracle, and the first five steps' data
    losses equal a run on the first 80 examples."""
    from cynet.nn.loss import SoftmaxCrossEntropy
    from cynet.optim import SGD

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((97, 5)), rng.integers(0, 3, 97)

    def trainer():
        model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.BatchNorm1d(4), nn.ReLU(),
                              nn.Linear(4, 3, generator=1)).double()
        return Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), progress=False)

    merged = trainer()
    history = merged.fit(x, y, epochs=1, batch_size=16, shuffle=False)
    assert len(history["loss"]) == 6 and merged.batches_per_epoch == 6    # what progress bars and monitors count
    plain = trainer()
    first = plain.fit(x[:80], y[:80], epochs=1, batch_size=16, shuffle=False)
    np.testing.assert_array_equal(history["loss"][:5], first["loss"])


@pytest.mark.parametrize("n, batch_size, steps", [(97, 16, 7), (5, 1, 5)])
def test_without_a_batch_norm_every_batch_stays_as_sliced(n, batch_size, steps):
    """The merge is for batch norms only: a model without one keeps a last batch of one, and batch_size=1 stays one
    example per step (found by QA: the first version merged for every model)."""
    from cynet.nn.loss import SoftmaxCrossEntropy
    from cynet.optim import SGD

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((n, 5)), rng.integers(0, 3, n)
    model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.ReLU(), nn.Linear(4, 3, generator=1)).double()
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), progress=False)
    history = trainer.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False)
    assert len(history["loss"]) == steps and trainer.batches_per_epoch == steps


@pytest.mark.filterwarnings("ignore::cynet.diagnostics.UpdateRatioWarning")
def test_a_monitor_records_when_the_last_batch_joined_the_one_before():
    from cynet.diagnostics import TrainingMonitor
    from cynet.nn.loss import SoftmaxCrossEntropy

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((97, 8)), rng.integers(0, 3, 97)
    model = nn.Sequential(nn.Linear(8, 16, generator=0), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 3, generator=1)).double()
    monitor = TrainingMonitor(batches=10)
    Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[monitor],
            progress=False).fit(x, y, epochs=2, batch_size=16, validation=(x[:10], y[:10]))
    assert len(monitor.records) == 2


def _small_problem(seed=0, n=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _small_trainer(callbacks, lr=0.1, scheduler=None):
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.SGD(model.parameters(), lr=lr)
    sched = StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    return Trainer(model, SoftmaxCrossEntropy(), opt, callbacks=callbacks, scheduler=sched, progress=False)


def test_a_callback_failing_in_on_train_begin_still_ends_those_that_began():
    # EarlyStopping.on_train_begin put the trained weights in place of the best ones; a later callback raised, no
    # on_train_end ran, and a fit that trained nothing left the model with other weights
    x, y = _small_problem()
    seen = []

    class Recorder(Callback):
        def on_train_begin(self, trainer):
            seen.append("begin")

        def on_train_end(self, trainer):
            seen.append("end")

    class Refuses(Callback):
        def on_train_begin(self, trainer):
            raise ValueError("setup check failed")

        def on_train_end(self, trainer):
            seen.append("refuser's end")

    stopper = EarlyStopping(monitor="train_loss", patience=1)
    trainer = _small_trainer([stopper, Recorder()])
    trainer.fit(x, y, epochs=4, batch_size=8)
    best = trainer.model.state_dict()
    trainer.callbacks.append(Refuses())
    seen.clear()
    with pytest.raises(ValueError, match="setup check failed"):
        trainer.fit(x, y, epochs=8, batch_size=8)
    assert seen == ["begin", "end"]                              # not the refuser's own end: it never began
    for key, value in best.items():
        np.testing.assert_array_equal(trainer.model.state_dict()[key], value)


def test_a_stop_asked_at_an_epochs_last_batch_keeps_the_whole_epoch():
    # the epoch was trained to its end but dropped: no train_loss entry, no scheduler step, no on_epoch_end
    x, y = _small_problem()
    ends = []

    class StopAtIteration4(Callback):
        def on_batch_end(self, trainer):
            if trainer.iteration == 4:
                trainer.stop("enough")

        def on_epoch_end(self, trainer):
            ends.append(trainer.epoch)

    trainer = _small_trainer([StopAtIteration4()], scheduler=True)
    trainer.fit(x, y, epochs=5, batch_size=8)                    # 2 batches per epoch: iteration 4 ends epoch 2
    assert trainer.epoch == 2 and len(trainer.history["train_loss"]) == 2 and ends == [1, 2]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)          # 0.1 halved twice
    assert trainer.stop_reason == "enough"


def test_model_checkpoint_says_when_its_number_was_never_finite(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)).astype(np.float32), rng.standard_normal((12, 2)).astype(np.float32)
    model = nn.Linear(3, 2, generator=0)
    saver = ModelCheckpoint(tmp_path / "best.npz")               # val_acc of a regression: NaN every epoch
    trainer = Trainer(model, MSELoss(), optim.SGD(model.parameters(), lr=0.01), callbacks=[saver], progress=False)
    with pytest.warns(RuntimeWarning, match="nothing saved to .*best.npz.*val_acc had no finite value in 3 epochs"):
        trainer.fit(x, y, epochs=3, batch_size=4, validation=(x, y))
    assert not (tmp_path / "best.npz").exists()


def test_the_monitors_update_ratio_starts_from_the_weights_the_step_found():
    # listed before MaxNorm, the monitor copied the weights for the next step before MaxNorm rescaled them, so the
    # rescaling of the iteration before counted as part of the next update; now the copy is taken in on_batch_begin.
    # The oracle: a spy right after the monitor, copying in on_batch_begin and measuring in on_batch_end
    from cynet.diagnostics import TrainingMonitor
    from cynet.train import MaxNorm
    x, y = _small_problem(n=32)
    for order in ("monitor first", "monitor last"):
        monitor = TrainingMonitor(every_iterations=1, warn=False)
        steps = []

        class Spy(Callback):
            def on_batch_begin(self, trainer):
                self.before = trainer.model[0].weight.data.astype(np.float64)

            def on_batch_end(self, trainer):
                after = trainer.model[0].weight.data.astype(np.float64)
                steps.append(np.linalg.norm(after - self.before) / np.linalg.norm(self.before))

        callbacks = [monitor, Spy(), MaxNorm(0.3)] if order == "monitor first" else [MaxNorm(0.3), monitor, Spy()]
        trainer = _small_trainer(callbacks, lr=0.5)
        trainer.fit(x, y, epochs=1, batch_size=8)
        ratios = [r["update_ratio"]["0.weight"] for r in monitor.records]
        assert len(ratios) == 4 and ratios == pytest.approx(steps, rel=1e-5), order


def test_nan_in_the_data_is_named_before_training_not_blamed_on_the_learning_rate():
    # one NaN in x trained to a NaN loss that the divergence guard called a learning rate too large; a NaN in the
    # validation x gave val_loss NaN next to a plausible val_acc
    x, y = _small_problem(n=32)
    bad = x.copy()
    bad[23, 1] = np.nan
    trainer = _small_trainer([], lr=1e-6)
    with pytest.raises(ValueError, match=r"Trainer.fit: x holds 1 NaN/inf value \(first in row 23\)"):
        trainer.fit(bad, y, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"Trainer.fit \(validation\): x holds 1 NaN/inf value \(first in row 23\)"):
        trainer.fit(x, y, epochs=1, batch_size=8, validation=(bad, y))
    with pytest.raises(ValueError, match=r"Trainer.evaluate: x holds 1 NaN/inf"):
        trainer.evaluate(bad, y)
    assert trainer.iteration == 0


def test_max_norm_is_idempotent_so_a_run_in_two_fits_equals_one():
    # a float32 row scaled onto the ball came back at c (1 + eps) and was scaled again: MaxNorm's projection at the
    # start of every fit moved a run in two calls away from the uninterrupted one
    from cynet.nn.utils import max_norm_
    from cynet.train import MaxNorm
    layer = nn.Linear(50, 20, generator=0)
    layer.weight.data *= 10
    assert max_norm_(layer, 0.3) == 20
    once = layer.weight.data.copy()
    assert max_norm_(layer, 0.3) == 0
    np.testing.assert_array_equal(layer.weight.data, once)
    x, y = _small_problem(n=32)
    straight = _small_trainer([MaxNorm(0.3)], lr=0.5)
    straight.fit(x, y, epochs=4, batch_size=8)
    split = _small_trainer([MaxNorm(0.3)], lr=0.5)
    split.fit(x, y, epochs=2, batch_size=8)
    split.fit(x, y, epochs=4, batch_size=8)
    for a, b in zip(straight.model.parameters(), split.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_every_callback_ends_even_when_one_raises_in_on_train_end():
    x, y = _small_problem()
    ended = []

    class Fails(Callback):
        def on_train_end(self, trainer):
            raise RuntimeError("logger failed")

    class Ends(Callback):
        def on_train_end(self, trainer):
            ended.append(True)

    stopper = EarlyStopping(monitor="train_loss", patience=10)
    trainer = _small_trainer([Fails(), stopper, Ends()])
    with pytest.raises(RuntimeError, match="logger failed"):
        trainer.fit(x, y, epochs=3, batch_size=8)
    assert ended == [True]                                        # it was skipped, and so was EarlyStopping's restore
    for key, value in stopper.best_state.items():
        np.testing.assert_array_equal(trainer.model.state_dict()[key], value)


def test_a_checkpoint_saved_while_an_epoch_end_raised_says_it_may_not_resume_exactly(tmp_path):
    x, y = _small_problem()

    class Saver(Callback):
        def on_epoch_end(self, trainer):
            trainer.save_checkpoint(tmp_path / "run.npz")

    class Interrupts(Callback):
        def on_epoch_end(self, trainer):
            raise KeyboardInterrupt

    trainer = _small_trainer([Saver(), Interrupts(), EarlyStopping(monitor="train_loss")])
    with pytest.warns(UserWarning, match="while a callback's on_epoch_end raised"):
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(x, y, epochs=3, batch_size=8)
    with pytest.warns(UserWarning, match="while a callback's on_epoch_end raised"):
        trainer.save_checkpoint(tmp_path / "again.npz")


@pytest.mark.parametrize("hook", ["on_epoch_begin", "on_batch_begin"])
def test_a_stop_asked_before_a_step_takes_no_step(hook):
    # stopping from on_epoch_begin still trained one step, leaving a cut-short epoch
    x, y = _small_problem()

    class Stops(Callback):
        pass

    def stop(self, trainer):
        if trainer.epoch == 1:
            trainer.stop(f"stop from {hook}")
    setattr(Stops, hook, stop)
    trainer = _small_trainer([Stops()])
    trainer.fit(x, y, epochs=3, batch_size=8)
    assert trainer.epoch == 1 and trainer.iteration == 2 and trainer.stop_reason == f"stop from {hook}"


def test_a_best_value_saved_for_another_monitor_is_refused(tmp_path):
    x, y = _small_problem()
    trainer = _small_trainer([EarlyStopping(monitor="val_loss")])
    trainer.fit(x, y, epochs=2, batch_size=8, validation=(x, y))
    trainer.save_checkpoint(tmp_path / "run.npz")
    other = _small_trainer([EarlyStopping(monitor="val_acc")])
    with pytest.raises(checkpoint.CheckpointError, match="watched monitor='val_loss', this one monitor='val_acc'"):
        other.load_checkpoint(tmp_path / "run.npz")


def test_a_label_out_of_range_is_named_by_its_row_in_y():
    # the loss named its position within a shuffled batch (position 7 while y[7] was fine)
    x, y = _small_problem(n=32)
    y = y.copy()
    y[21] = 3                                                  # the model has 2 outputs
    trainer = _small_trainer([])
    with pytest.raises(ValueError, match=r"Trainer.fit: label 3 in row 21 of y is out of range \[0, 2\)"):
        trainer.fit(x, y, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"Trainer.evaluate: label 3 in row 21 of y"):
        trainer.evaluate(x, y)


def test_a_bad_validation_label_is_named_by_its_row_in_the_array_the_user_passed():
    # the validation pass reported 'Trainer.evaluate: ... row 3 of y' for fit's y[27] held out by validation_split
    # (its row within the held-out part), and called validation=(x_val, y_val)'s labels 'y'
    x, y = _small_problem(n=32)
    y = y.copy()
    y[27] = 3                                                  # in the last 8 rows: held out by 0.25
    with pytest.raises(ValueError, match=r"Trainer.fit \(validation_split\): label 3 in row 27 of y is out of "
                                         r"range \[0, 2\)"):
        _small_trainer([]).fit(x, y, epochs=1, batch_size=8, validation_split=0.25)
    x_val, y_val = x[16:].copy(), y[16:].copy()                # y_val[11] is the bad label
    with pytest.raises(ValueError, match=r"Trainer.fit \(validation\): label 3 in row 11 of y_val is out of "
                                         r"range \[0, 2\) .*\(1 such label in y_val\)"):
        _small_trainer([]).fit(x[:16], y[:16], epochs=1, batch_size=8, validation=(x_val, y_val))


@pytest.mark.parametrize("key,value,message", [("best", "0.5", "best must be a finite number or None"),
                                               ("best", float("nan"), "best must be a finite number or None"),
                                               ("best_epoch", -1, "best_epoch must be an int >= 0 or None"),
                                               ("wait", 2.5, "wait must be an int >= 0"),
                                               ("wait", "two", "wait must be an int >= 0")])
def test_early_stopping_refuses_a_saved_state_it_cannot_use_and_keeps_its_own(key, value, message):
    """A best that is a string loaded and failed at the next comparison, deep in a run; a wait that is not a count
    raised from int() after best and best_epoch were already replaced. Now refused before anything changes."""
    stopper = EarlyStopping(monitor="val_loss", patience=3)
    stopper.best, stopper.best_epoch, stopper.wait = 0.25, 4, 1
    state = stopper.state_dict()
    state.update(best=0.75, best_epoch=6, wait=0)
    state[key] = value
    with pytest.raises(ValueError, match=message):
        stopper.load_state_dict(state)
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (0.25, 4, 1)


def test_early_stopping_loads_its_state_read_back_from_npz(tmp_path):
    stopper = EarlyStopping(monitor="val_acc", patience=3)
    stopper.best, stopper.best_epoch, stopper.wait = 0.625, 4, 2
    path = tmp_path / "stopper.npz"
    np.savez(path, **{key: np.asarray(value) for key, value in stopper.state_dict().items()})
    with np.load(path, allow_pickle=False) as f:
        loaded = {key: f[key] for key in f.files}
    other = EarlyStopping(monitor="val_acc", patience=3)
    other.load_state_dict(loaded)
    assert (other.best, other.best_epoch, other.wait) == (0.625, 4, 2)
    assert type(other.best) is float and type(other.best_epoch) is int and type(other.wait) is int


@pytest.mark.parametrize("value", ["no", 0, None, 1.0])
def test_fit_refuses_a_shuffle_that_is_not_a_bool(value):
    # shuffle="no" is truthy: it shuffled
    x, y = blobs(12, seed=3)
    model = mlp()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(TypeError, match="Trainer.fit: shuffle must be True or False, got"):
        trainer.fit(x, y, epochs=1, batch_size=4, shuffle=value)
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before)) and trainer.epoch == 0


# Trainer(model, nn.SoftmaxCrossEntropy, opt) (the class, no parentheses) was accepted and fit failed deep inside with
# "'numpy.ndarray' object has no attribute '__dict__'"; an optimiser built over another model's parameters (the model
# created again after it) was accepted and fit ran without ever changing the model.
def test_trainer_refuses_a_class_for_an_instance_and_an_optimizer_of_another_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"^Trainer: loss is the class SoftmaxCrossEntropy, not an instance of it"):
        Trainer(model, nn.SoftmaxCrossEntropy, opt, progress=False)
    with pytest.raises(TypeError, match=r"^Trainer: optimizer is the class SGD, not an instance"):
        Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD, progress=False)
    other = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    with pytest.raises(ValueError, match=r"^Trainer: the optimizer SGD updates none of the model's parameters .*"
                                         r"build it over model.parameters\(\)"):
        Trainer(other, nn.SoftmaxCrossEntropy(), opt, progress=False)


def test_trainer_warns_of_a_callback_hook_with_a_misspelt_name():
    # on_epoch_ends was never called: the callback silently did nothing. A helper named otherwise stays quiet.
    class Typo(Callback):
        def on_epoch_ends(self, trainer):
            raise AssertionError("never reached")

    class Helper(Callback):
        def on_improvement(self, trainer):
            pass

    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.warns(UserWarning, match=r"Trainer: the callback Typo defines on_epoch_ends\(\), which is not a hook "
                                         r".*did you mean 'on_epoch_end'\?"):
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[Typo()], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[Helper()],
                progress=False)


def test_trainer_refuses_a_single_callback_not_in_a_list():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(TypeError, match=r"Trainer: callbacks must be a list of Callback instances, got "
                                        r"EarlyStopping.*pass \[callback\]"):     # was "... is not iterable"
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=EarlyStopping(),
                progress=False)


def test_model_checkpoint_into_a_missing_directory_fails_before_training(tmp_path):
    # the first save failed after an epoch, naming a hidden temporary file
    x, y = _small_problem()
    model = nn.Sequential(nn.Linear(4, 2, generator=0))
    before = [p.data.copy() for p in model.parameters()]
    saver = ModelCheckpoint(tmp_path / "missing" / "best.npz", monitor="train_loss")
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), callbacks=[saver],
                      progress=False)
    with pytest.raises(FileNotFoundError, match=r"ModelCheckpoint: the directory .*missing' of .* does not exist"):
        trainer.fit(x, y, epochs=1, batch_size=8)
    assert trainer.iteration == 0 and all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(TypeError, match="ModelCheckpoint: path must be a str or os.PathLike"):
        ModelCheckpoint(None)


def test_fit_predict_and_evaluate_refuse_masked_data():
    # np.asarray dropped the mask: a masked x trained on (and predicted from) the values under the mask, silently
    rng = np.random.default_rng(0)
    x = np.ma.array(rng.standard_normal((8, 3)).astype(np.float32), mask=np.zeros((8, 3), bool))
    x.mask[0, 1] = True
    y = np.zeros(8, np.int64)
    model = nn.Sequential(nn.Linear(3, 2, generator=0))
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    before = model.state_dict()
    for call, name in [(lambda: trainer.fit(x, y, epochs=1, batch_size=4), "Trainer.fit: x"),
                       (lambda: trainer.fit(x.data, np.ma.array(y, mask=y == 0), epochs=1), "Trainer.fit: y"),
                       (lambda: trainer.predict(x), "Trainer.predict: x"),
                       (lambda: trainer.evaluate(x, y), "Trainer.evaluate: x")]:
        with pytest.raises(TypeError, match=f"{name} is a masked array; the mask would be ignored"):
            call()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_a_label_out_of_range_is_refused_before_any_step():
    # label 10 in the last row of y (10 classes) was found at its own batch, after the steps of every batch before
    # it had changed the weights; a bad validation label only after the first whole epoch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    model = nn.Sequential(nn.Linear(6, 10, generator=0))
    before = {key: value.copy() for key, value in model.state_dict().items()}
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    bad = y.copy()
    bad[-1] = 10
    with pytest.raises(ValueError, match=r"Trainer.fit: label 10 in row 39 of y is out of range \[0, 10\)"):
        trainer.fit(x, bad, epochs=1, batch_size=4, shuffle=False)
    bad_val = y[:8].copy()
    bad_val[5] = -1
    with pytest.raises(ValueError, match=r"Trainer.fit \(validation\): label -1 in row 5 of y_val is out of range"):
        trainer.fit(x, y, epochs=1, batch_size=4, validation=(x[:8], bad_val))
    assert trainer.iteration == 0
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    # the held-out rows of validation_split are named by their row in fit's y
    with pytest.raises(ValueError, match=r"label 10 in row 39 of y is out of range"):
        trainer.fit(x, bad, epochs=1, batch_size=4, validation_split=0.25)


def test_a_loss_subclass_with_its_own_forward_decides_which_labels_it_takes():
    # a cross-entropy over the labelled rows only (label -1: unlabelled) trained before the first-step label check;
    # then fit refused it ('label -1 in row 5 of y is out of range [0, 3)'); a subclass without a forward of its own
    # is still checked at the first step
    class IgnoringCE(SoftmaxCrossEntropy):
        def forward(self, scores, y):
            keep = y >= 0
            loss = super().forward(scores[keep], y[keep])
            dscores = np.zeros_like(scores)
            dscores[keep] = self._dscores * keep.sum() / len(y)
            self._dscores = dscores
            return loss * keep.sum() / len(y)

    class PlainCE(SoftmaxCrossEntropy):
        pass

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    y[5] = -1
    model = nn.Sequential(nn.Linear(5, 3, generator=0))
    trainer = Trainer(model, IgnoringCE(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=8)
    assert trainer.iteration == 5
    trainer = Trainer(model, PlainCE(), optim.SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(ValueError, match=r"label -1 in row 5 of y is out of range \[0, 3\)"):
        trainer.fit(x, y, epochs=1, batch_size=8)
    assert trainer.iteration == 0


@pytest.mark.parametrize("error", [ValueError("bad batch"), KeyboardInterrupt()])
def test_the_exception_that_ends_a_run_is_not_replaced_by_a_failing_on_train_end(error):
    # it was: a ValueError (or Ctrl+C) raised in on_batch_end came out of fit as the logger's RuntimeError
    x, y = _small_problem()
    ended = []

    class Raises(Callback):
        def on_batch_end(self, trainer):
            raise error

    class FailsAtEnd(Callback):
        def on_train_end(self, trainer):
            raise RuntimeError("logger failed")

    class Ends(Callback):
        def on_train_end(self, trainer):
            ended.append(True)

    trainer = _small_trainer([Raises(), FailsAtEnd(), Ends()])
    with pytest.raises(type(error)) as raised:
        trainer.fit(x, y, epochs=2, batch_size=8)
    assert raised.value is error and ended == [True]
    if sys.version_info >= (3, 11):
        assert any("FailsAtEnd.on_train_end raised RuntimeError('logger failed')" in note
                   for note in raised.value.__notes__)


@pytest.mark.parametrize("start, cast", [(np.float64, "float"), (np.float32, "double")])
def test_early_stopping_goes_on_from_the_reached_weights_after_a_dtype_change_between_fits(start, cast):
    # a float64 model cast with .float() between two fits no longer equalled its float64 best state bit for bit, so
    # the second fit went on from the best epoch's weights (0.21 away) instead of those training had reached
    x, y = blobs(40, seed=0, spread=2.0)
    xv, yv = blobs(20, seed=1, spread=2.0)
    model = mlp().to(start)
    stopper = EarlyStopping(monitor="val_loss", patience=100)
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.5), callbacks=[stopper],
                      progress=False)
    trainer.fit(x, y, epochs=6, batch_size=10, validation=(xv, yv))
    reached = {key: value.copy() for key, value in stopper.training_state.items()}
    assert any(not np.array_equal(reached[key], stopper.best_state[key]) for key in reached)
    getattr(model, cast)()
    stopper.on_train_begin(trainer)
    dtype = np.float32 if cast == "float" else np.float64
    for key, value in model.state_dict().items():
        assert value.dtype == dtype
        np.testing.assert_array_equal(value, reached[key].astype(dtype))
