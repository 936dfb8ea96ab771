"""Ensembles and EMA weight averaging (cynet.ensemble) against NumPy oracles."""
import numpy as np
import pytest

import cynet
from cynet import checkpoint, nn
from cynet.data import Compose, Cutout, RandomCrop, RandomHorizontalFlip, Standardize, make_batch_transform
from cynet.ensemble import EMA, Ensemble, softmax
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Trainer


def np_softmax(s):
    s = np.asarray(s, dtype=np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def linear_with(w, b):
    layer = nn.Linear(w.shape[1], w.shape[0])
    layer.load_state_dict({"weight": w.astype(np.float32), "bias": b.astype(np.float32)})
    return layer


@pytest.fixture
def members():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(3, 4)) for _ in range(3)]
    bs = [rng.normal(size=3) for _ in range(3)]
    return ws, bs, rng.normal(size=(7, 4)).astype(np.float32)


def oracle_scores(w, b, x):
    return x.astype(np.float32) @ w.astype(np.float32).T + b.astype(np.float32)


def test_softmax_matches_oracle_and_is_stable():
    s = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(softmax(s), np_softmax(s), rtol=1e-12)
    assert np.all(np.isfinite(softmax(s)))


def test_ensemble_is_the_mean_of_member_probabilities(members):
    ws, bs, x = members
    ensemble = Ensemble([linear_with(w, b) for w, b in zip(ws, bs)])
    expected = np.mean([np_softmax(oracle_scores(w, b, x)) for w, b in zip(ws, bs)], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(x, batch_size=3), expected, rtol=1e-5, atol=1e-7)
    # float64 rows that sum to 1 as the docstring says (the softmax ran in the members' float32: 2e-8 off)
    proba = ensemble.predict_proba(x)
    assert proba.dtype == np.float64 and np.abs(proba.sum(axis=1) - 1).max() < 1e-14
    np.testing.assert_array_equal(ensemble.predict(x), np.argmax(ensemble.predict_proba(x), axis=1))
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    loss, acc = ensemble.evaluate(x, y)
    assert loss == pytest.approx(-np.mean(np.log(expected[np.arange(7), y])), rel=1e-5)
    assert acc == pytest.approx(np.mean(np.argmax(expected, axis=1) == y))
    member = ensemble.evaluate_members(x, y)
    assert member[1][1] == pytest.approx(np.mean(np.argmax(oracle_scores(ws[1], bs[1], x), axis=1) == y))


def test_weighted_ensemble_and_validation(members):
    ws, bs, x = members
    models = [linear_with(w, b) for w, b in zip(ws, bs)]
    proba = Ensemble(models, weights=[2, 1, 1]).predict_proba(x)
    p = [np_softmax(oracle_scores(w, b, x)) for w, b in zip(ws, bs)]
    np.testing.assert_allclose(proba, 0.5 * p[0] + 0.25 * p[1] + 0.25 * p[2], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        Ensemble(models, weights=[1, -1, 1])
    with pytest.raises(ValueError):
        Ensemble([])
    with pytest.raises(TypeError):
        Ensemble([np.zeros(3)])


def test_huge_finite_weights_are_normalised_not_zeroed(members):
    # finite weights whose sum overflows to inf were divided by it: all-zero weights, probabilities summing to 0
    ws, bs, x = members
    models = [linear_with(w, b) for w, b in zip(ws, bs)]
    ensemble = Ensemble(models, weights=[1e308, 1e308, 5e307])
    np.testing.assert_allclose(ensemble.weights, [0.4, 0.4, 0.2], rtol=1e-12)
    np.testing.assert_allclose(ensemble.predict_proba(x), Ensemble(models, weights=[2, 2, 1]).predict_proba(x),
                               rtol=1e-12)


@pytest.mark.parametrize("labels, error, match", [
    ([0, 1, 2, 0, 1, 2, -1], ValueError, r"labels must lie in \[0, 3\).*-1 to 2"),   # -1 would score class 2
    ([0, 1, 2, 0, 1, 2, 3], ValueError, r"labels must lie in \[0, 3\)"),
    ([0.0, 1, 2, 0, 1, 2, 0], TypeError, "integer class labels"),
    ([[0, 1, 2, 0, 1, 2, 0]], TypeError, "integer class labels"),
])
def test_ensemble_evaluate_refuses_labels_outside_the_classes(members, labels, error, match):
    ws, bs, x = members
    ensemble = Ensemble([linear_with(w, b) for w, b in zip(ws, bs)])
    with pytest.raises(error, match=match):
        ensemble.evaluate(x, np.array(labels))
    with pytest.raises(error, match=match):
        ensemble.evaluate_members(x, np.array(labels))


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_ensemble_batch_size_must_be_a_positive_int(members, batch_size):
    ws, bs, x = members
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        Ensemble([linear_with(ws[0], bs[0])]).predict(x, batch_size=batch_size)


def test_ensemble_uses_eval_mode_and_restores_modes():
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    x = np.ones((5, 4), np.float32)
    a = Ensemble([model]).predict_proba(x)
    b = Ensemble([model]).predict_proba(x)
    np.testing.assert_array_equal(a, b)              # no dropout noise
    assert model.training


def test_from_checkpoints_loads_each_member(members, tmp_path):
    ws, bs, x = members
    paths = []
    for i, (w, b) in enumerate(zip(ws, bs)):
        paths.append(tmp_path / f"m{i}.npz")
        checkpoint.save_model(paths[-1], linear_with(w, b))
    ensemble = Ensemble.from_checkpoints(paths, lambda: nn.Linear(4, 3))
    expected = np.mean([np_softmax(oracle_scores(w, b, x)) for w, b in zip(ws, bs)], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(x), expected, rtol=1e-5, atol=1e-7)


def test_ema_shadow_equals_closed_form_average():
    decay = 0.9
    model = nn.Linear(3, 2)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(2, 3)) for _ in range(6)]
    model.weight.data[...] = weights[0]
    ema = EMA(decay).attach(model)
    for w in weights[1:]:
        model.weight.data[...] = w
        ema.update()
    t = len(weights) - 1
    closed = decay ** t * weights[0] + sum((1 - decay) * decay ** (t - k) * weights[k] for k in range(1, t + 1))
    np.testing.assert_allclose(ema.shadow[0], closed, rtol=1e-5, atol=1e-6)
    assert ema.num_updates == t
    # apply swaps the average in and restore puts the trained weights back
    with ema.apply():
        np.testing.assert_array_equal(model.weight.data, ema.shadow[0])
    np.testing.assert_array_equal(model.weight.data, weights[-1].astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_an_ema_update_allocates_no_copy_of_the_weights(dtype):
    """shadow = decay * shadow + (1 - decay) * weights in place: after the first update, no array of a parameter's
    size is allocated (``shadow += (1.0 - keep) * param.data`` made one per parameter and step: 2.1 MB a step here
    in float32); the bits are those of that formula."""
    import tracemalloc
    model = nn.Sequential(nn.Linear(1024, 512, dtype=dtype, generator=0), nn.ReLU(),
                          nn.Linear(512, 10, dtype=dtype, generator=1))
    ema = EMA(0.9).attach(model)
    expected = [shadow.copy() for shadow in ema.shadow]
    rng = np.random.default_rng(2)
    weight_bytes = model[0].weight.data.nbytes                  # 2 MiB in float32, 4 MiB in float64
    for step in range(4):
        for param, shadow in zip(model.parameters(), expected):
            param.data[...] = rng.standard_normal(param.data.shape)
            shadow *= 0.9
            shadow += (1.0 - 0.9) * param.data                   # the formula's bits
        if step == 0:
            ema.update()                                         # (may set up its scratch)
            continue
        tracemalloc.start()
        try:
            ema.update()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < weight_bytes // 16, f"EMA.update allocated {peak} bytes at its step {step + 1}"
    for shadow, oracle in zip(ema.shadow, expected):
        np.testing.assert_array_equal(shadow, oracle)


class _WeightRecorder(cynet.train.Callback):
    """Records the model's weights after every optimiser step."""

    def __init__(self):
        self.seen = []

    def on_batch_end(self, trainer):
        self.seen.append([p.data.copy() for p in trainer.model.parameters()])


def _replayed_average(start, seen, decay):
    """The oracle of an EMA's shadows: its recursion replayed by hand, in float64, on the recorded weights."""
    expected = []
    for i, first in enumerate(start):
        average = first.astype(np.float64)
        for weights in seen:
            average = decay * average + (1 - decay) * weights[i]
        expected.append(average)
    return expected


def test_ema_as_trainer_callback_and_state_dict():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    ema = EMA(decay=0.5)
    start = [p.data.copy() for p in model.parameters()]
    spy = _WeightRecorder()
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), callbacks=[ema, spy],
                      progress=False, seed=0)
    trainer.fit(x, y, epochs=2, batch_size=16)
    assert ema.num_updates == trainer.iteration == 8
    for shadow, expected in zip(ema.shadow, _replayed_average(start, spy.seen, 0.5)):
        np.testing.assert_allclose(shadow, expected, rtol=1e-5, atol=1e-6)
    trained = [p.data.copy() for p in model.parameters()]
    with ema.apply():
        loss_avg, _ = trainer.evaluate(x, y)
    for p, w in zip(model.parameters(), trained):
        np.testing.assert_array_equal(p.data, w)
    state = ema.state_dict()
    assert set(state) == {"decay", "num_updates"} | {"shadow." + n for n, _ in model.named_parameters()}
    other = EMA(0.9)
    other.load_state_dict(state)
    other.attach(model)
    for a, b in zip(other.shadow, ema.shadow):
        np.testing.assert_array_equal(a, b)
    assert other.decay == 0.5 and other.num_updates == 8
    copy = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    ema.copy_to(copy)
    assert copy.forward(x) is not None and np.array_equal(copy.parameters()[0].data, ema.shadow[0])
    assert np.isfinite(loss_avg)


def test_ema_rejects_bad_decay_and_double_apply():
    with pytest.raises(ValueError):
        EMA(1.0)
    ema = EMA(0.9).attach(nn.Linear(2, 2))
    with ema.apply():
        with pytest.raises(RuntimeError):
            ema.apply()


def _trained_bn_ema():
    """``(model, ema, x)``: a Linear-BatchNorm1d-ReLU-Linear net trained a few SGD steps with EMA(0.5)."""
    x, y = _ema_problem()
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    ema = EMA(0.5)
    Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.5), callbacks=[ema], seed=0,
            progress=False).fit(x, y, epochs=2, batch_size=16)
    return model, ema, x


def test_ema_apply_puts_back_the_batchnorm_statistics_a_block_recomputed():
    # recomputing the running statistics for the averaged weights inside the block left them in the live model: the
    # trained weights then predicted with statistics of other weights (CIFAR-10 MLP: 43.0% -> 39.7%, silently)
    model, ema, x = _trained_bn_ema()
    weights = [p.data.copy() for p in model.parameters()]
    buffers = [b.copy() for b in model.buffers()]
    with ema.apply():
        nn.recompute_batchnorm_statistics(model, x * 3 + 1)
        assert not np.array_equal(model[1].running_mean, buffers[0])
    for a, p in zip(weights, model.parameters()):
        np.testing.assert_array_equal(p.data, a)
    for a, b in zip(buffers, model.buffers()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(b, a)
    with pytest.raises(KeyError):           # on an exception inside the block too
        with ema.apply():
            model[1].running_var[...] = 7
            raise KeyError("inside")
    for a, b in zip(buffers, model.buffers()):
        np.testing.assert_array_equal(b, a)


def test_ema_apply_with_training_inputs_recomputes_the_batchnorm_statistics_for_the_averaged_weights():
    # the averaged weights ran with the live model's running statistics (CIFAR-10 MLP: 39.9% instead of 47.4%)
    import copy
    model, ema, x = _trained_bn_ema()
    oracle = ema.copy_to(copy.deepcopy(model))
    nn.recompute_batchnorm_statistics(oracle, x, batch_size=16)
    weights = [p.data.copy() for p in model.parameters()]
    buffers = [b.copy() for b in model.buffers()]
    with ema.apply(x, batch_size=16):
        for a, b in zip(oracle.buffers(), model.buffers()):
            np.testing.assert_array_equal(b, a)
        for p, shadow in zip(model.parameters(), ema.shadow):
            np.testing.assert_array_equal(p.data, shadow)
    for a, p in zip(weights, model.parameters()):
        np.testing.assert_array_equal(p.data, a)
    for a, b in zip(buffers, model.buffers()):
        np.testing.assert_array_equal(b, a)
    with pytest.raises(ValueError):         # a recomputation that fails leaves nothing applied
        ema.apply(x[:, :3])
    for a, p in zip(weights, model.parameters()):
        np.testing.assert_array_equal(p.data, a)
    for a, b in zip(buffers, model.buffers()):
        np.testing.assert_array_equal(b, a)
    with ema.apply():
        pass


def _ema_problem(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _ema_trainer(momentum=0.0, more_callbacks=()):
    """``(trainer, ema)``: the same seeded 5-8-2 MLP, SGD at lr 0.1 and EMA(0.9) for every call."""
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    ema = EMA(0.9)
    return Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1, momentum=momentum),
                   callbacks=[ema, *more_callbacks], progress=False), ema


def test_ema_state_survives_a_trainer_checkpoint(tmp_path):
    x, y = _ema_problem()

    def make():
        return _ema_trainer(momentum=0.9)

    straight, ema_straight = make()
    straight.fit(x, y, epochs=4, batch_size=16)
    first, _ = make()
    first.fit(x, y, epochs=2, batch_size=16)
    first.save_checkpoint(tmp_path / "run.npz")
    resumed, ema_resumed = make()
    resumed.load_checkpoint(tmp_path / "run.npz")
    resumed.fit(x, y, epochs=4, batch_size=16)
    assert ema_resumed.num_updates == ema_straight.num_updates == 16
    for a, b in zip(ema_resumed.shadow, ema_straight.shadow):
        np.testing.assert_array_equal(a, b)


def test_members_with_different_numbers_of_classes_are_refused():
    # before: a 1-output member's probabilities (all ones) broadcast into every class, rows summing to 2
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"member 1 gives scores of shape \(2, 1\).*member 0 gives 3"):
        Ensemble([nn.Linear(4, 3), nn.Linear(4, 1)]).predict_proba(x)
    with pytest.raises(ValueError, match=r"member 1 gives scores of shape \(2, 5\)"):
        Ensemble([nn.Linear(4, 3), nn.Linear(4, 5)]).evaluate(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"member 0 gives scores of shape \(2, 1\)"):
        Ensemble([nn.Linear(4, 1)]).predict(x)


def test_an_ema_loaded_from_a_checkpoint_is_usable_and_saved_again_before_any_fit(tmp_path):
    # the loaded shadow waited for the next fit: apply() raised, and a checkpoint saved again lost the average, so
    # a run resumed from that second file restarted its average (num_updates 5 against 20)
    x, y = _ema_problem()
    make = _ema_trainer
    straight, ema_straight = make()
    straight.fit(x, y, epochs=4, batch_size=16)
    first, ema_first = make()
    first.fit(x, y, epochs=2, batch_size=16)
    first.save_checkpoint(tmp_path / "run.npz")
    second, ema_second = make()
    second.load_checkpoint(tmp_path / "run.npz")
    with ema_second.apply():                  # the loaded average, evaluated before any fit
        for p, shadow in zip(second.model.parameters(), ema_first.shadow):
            np.testing.assert_array_equal(p.data, shadow)
    second.save_checkpoint(tmp_path / "again.npz")
    third, ema_third = make()
    third.load_checkpoint(tmp_path / "again.npz")
    third.fit(x, y, epochs=4, batch_size=16)
    assert ema_third.num_updates == ema_straight.num_updates == 16
    for a, b in zip(ema_third.shadow, ema_straight.shadow):
        np.testing.assert_array_equal(a, b)
    # an EMA given a state while no model is attached keeps it in its own state_dict
    lone = EMA(0.5)
    lone.load_state_dict(ema_first.state_dict())
    assert set(lone.state_dict()) == set(ema_first.state_dict())
    with pytest.raises(RuntimeError, match="not bound to a model"):
        lone.apply()


def test_an_ema_refuses_shadows_that_do_not_fit_the_model_and_changes_nothing():
    small = EMA(0.9).attach(nn.Linear(4, 1, generator=0))
    ema = EMA(0.9).attach(nn.Linear(4, 8, generator=1))
    before = [s.copy() for s in ema.shadow]
    with pytest.raises(ValueError, match=r"weight: saved \(1, 4\), parameter \(8, 4\)"):
        ema.load_state_dict(small.state_dict())          # it broadcast one row into all eight at apply()
    for a, b in zip(ema.shadow, before):
        np.testing.assert_array_equal(a, b)
    deeper = EMA(0.9).attach(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))
    with pytest.raises(ValueError, match=r"parameters the model does not have: \['1.bias', '1.weight'\]"):
        EMA(0.9).attach(nn.Sequential(nn.Linear(4, 8))).load_state_dict(deeper.state_dict())


def test_ema_decay_takes_any_real_number_type():
    assert EMA(np.float32(0.99)).decay == pytest.approx(0.99) and EMA(0).decay == 0.0
    for bad in (True, "0.9", 1.0, -0.1):
        with pytest.raises(ValueError):
            EMA(bad)


@pytest.mark.parametrize("key, value", [("decay", 1.5), ("decay", -0.5), ("decay", float("nan")),
                                        ("num_updates", -3), ("num_updates", 2.5)])
def test_an_ema_state_with_a_decay_or_count_the_constructor_would_refuse_is_refused(key, value):
    # a decay of 1.5 loaded silently made the "average" 1.5 * shadow - 0.5 * weights, growing without bound
    ema = EMA(0.9).attach(nn.Linear(3, 2, generator=0))
    state = ema.state_dict()
    state[key] = value
    before = (ema.decay, ema.num_updates, [s.copy() for s in ema.shadow])
    with pytest.raises(ValueError, match=f"EMA.load_state_dict: {key}"):
        ema.load_state_dict(state)
    assert (ema.decay, ema.num_updates) == before[:2]
    for a, b in zip(ema.shadow, before[2]):
        np.testing.assert_array_equal(a, b)


def test_a_refused_checkpoint_leaves_the_ema_as_it_was(tmp_path):
    # the undo loaded the EMA's backup (no shadow), which left the refused file's shadow pending for the next fit
    x, y = _ema_problem(32)

    class Tag(cynet.train.Callback):
        def __init__(self, tag):
            self.tag = tag

        def state_dict(self):
            return {"tag": self.tag}

        def load_state_dict(self, state):
            if state["tag"] != self.tag:
                raise ValueError("wrong tag")

    def make(tag):
        return _ema_trainer(more_callbacks=[Tag(tag)])

    saved, _ = make("a")
    saved.fit(x, y, epochs=2, batch_size=16)
    saved.save_checkpoint(tmp_path / "run.npz")
    refusing, ema = make("b")
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        refusing.load_checkpoint(tmp_path / "run.npz")
    assert ema.shadow is None and ema.num_updates == 0 and set(ema.state_dict()) == {"decay", "num_updates"}
    fresh, ema_fresh = make("b")
    refusing.fit(x, y, epochs=1, batch_size=16)
    fresh.fit(x, y, epochs=1, batch_size=16)
    for a, b in zip(ema.shadow, ema_fresh.shadow):
        np.testing.assert_array_equal(a, b)


def test_the_ema_follows_a_model_cast_to_float64():
    # attached in float32, the model then .double(): the shadow stayed float32 and rounded the float64 average
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5))
    y = (x[:, 0] > 0).astype(np.int64)
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    ema = EMA(0.5).attach(model)
    model.double()
    start = [p.data.copy() for p in model.parameters()]
    spy = _WeightRecorder()
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), callbacks=[ema, spy],
                      progress=False, seed=0)
    trainer.fit(x, y, epochs=1, batch_size=8)
    for shadow, expected in zip(ema.shadow, _replayed_average(start, spy.seen, 0.5)):
        assert shadow.dtype == np.float64
        np.testing.assert_allclose(shadow, expected, rtol=1e-14, atol=1e-15)


def test_an_ema_state_read_back_from_npz_loads(tmp_path):
    """np.savez/np.load hand scalars back as 0-d arrays: decay and num_updates load from them (the checks of
    load_state_dict must not refuse a saved EMA's own state)."""
    model = nn.Linear(3, 2, generator=0)
    ema = EMA(0.9).attach(model)
    for _ in range(3):
        model.weight.data += 1.0
        ema.update()
    path = tmp_path / "ema.npz"
    np.savez(path, **{key: np.asarray(value) for key, value in ema.state_dict().items()})
    with np.load(path, allow_pickle=False) as f:
        loaded = {key: f[key] for key in f.files}
    other = EMA(0.5).attach(nn.Linear(3, 2, generator=1))
    other.load_state_dict(loaded)
    assert (other.decay, other.num_updates) == (0.9, 3) and type(other.num_updates) is int
    for a, b in zip(other.shadow, ema.shadow):
        np.testing.assert_array_equal(a, b)


def test_a_trainer_is_not_saved_while_the_averaged_weights_are_applied(tmp_path):
    # saved inside ema.apply(), the checkpoint held the averaged weights as the model's: a resume trained on from them
    save_trainer = checkpoint.save_trainer
    x, y = _ema_problem()
    trainer, ema = _ema_trainer()
    trainer.fit(x, y, epochs=1, batch_size=16)
    with ema.apply():
        assert ema.applied
        with pytest.raises(RuntimeError, match=r"save_trainer: EMA's averaged weights are applied to the model"):
            save_trainer(tmp_path / "t.npz", trainer)
    assert not ema.applied and not (tmp_path / "t.npz").exists()
    save_trainer(tmp_path / "t.npz", trainer)


@pytest.mark.parametrize("bad, error, match", [
    (lambda x: x.astype(np.complex128), TypeError, r"Ensemble: x must be a numeric array, got dtype complex128"),
    (lambda x: x.astype(str), TypeError, r"Ensemble: x must be a numeric array, got dtype <U"),
    (lambda x: x.astype(object), TypeError, r"Ensemble: x must be a numeric array, got dtype object"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), ValueError,
     r"Ensemble: x holds 1 NaN/inf value \(first in row 1\)"),
])
def test_ensemble_refuses_inputs_that_trainer_predict_refuses(members, bad, error, match):
    """Complex inputs were cast to float32 with the imaginary parts dropped, text ones parsed, and a NaN row gave NaN
    probabilities that predict() turned into class 0: the members' own Trainer.predict refuses all of these."""
    ws, bs, x = members
    ensemble = Ensemble([linear_with(w, b) for w, b in zip(ws, bs)])
    for call in (ensemble.predict_proba, ensemble.predict, ensemble.member_proba):
        with pytest.raises(error, match=match):
            call(bad(x))
    with pytest.raises(error, match=match.replace("Ensemble:", "Ensemble.evaluate:")):
        ensemble.evaluate(bad(x), np.zeros(len(x), int))
    # the same values as numbers (bool, integers, another float dtype, a list) are taken, as Trainer.predict does
    np.testing.assert_array_equal(ensemble.predict_proba(x.tolist()), ensemble.predict_proba(x.astype(np.float64)))


def test_ensemble_evaluate_of_a_scalar_x_is_a_value_error(members):
    """It was "TypeError: object of type 'numpy.float32' has no len()"."""
    ws, bs, _ = members
    ensemble = Ensemble([linear_with(ws[0], bs[0])])
    with pytest.raises(ValueError, match=r"Ensemble.evaluate: x must hold at least one example, got shape \(\)"):
        ensemble.evaluate(np.float32(1), np.array([0]))


@pytest.mark.parametrize("scores, error, match", [
    (np.ones(3), ValueError, r"softmax: scores must have shape \(N, C\) with C >= 1 classes, got float64 array of "
                             r"shape \(3,\)"),
    (np.float64(2.0), ValueError, r"softmax: scores must have shape \(N, C\).*shape \(\)"),
    (np.ones((2, 0)), ValueError, r"softmax: scores must have shape \(N, C\).*shape \(2, 0\)"),
    (np.ones((2, 3), np.complex128), TypeError, r"softmax: scores must be real numbers, got complex128"),
])
def test_softmax_refuses_what_it_cannot_normalise(scores, error, match):
    """1-d and 0-d scores were numpy's AxisError, zero classes "zero-size array to reduction operation maximum", and
    complex scores lost their imaginary parts (a ComplexWarning, and probabilities of the real parts)."""
    with pytest.raises(error, match=match):
        softmax(scores)


def test_softmax_takes_integer_big_endian_and_empty_batches():
    np.testing.assert_allclose(softmax([[1, 2, 3]]), np_softmax([[1, 2, 3]]), rtol=1e-15)
    np.testing.assert_array_equal(softmax(np.array([[1.0, 2.0]], ">f8")), softmax(np.array([[1.0, 2.0]])))
    assert softmax(np.ones((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("augmentation", [
    lambda: RandomHorizontalFlip(), lambda: RandomCrop(8, padding=2), lambda: Cutout(4),
    lambda: Compose([RandomCrop(8, padding=2)]),
])
def test_ensemble_refuses_a_random_augmentation_as_its_transform(augmentation):
    # called as transform(xb) it drew from the global generator: two predict_proba calls on the same images differed
    # by 0.29-0.45 in probability (a flip, a crop, a cutout), as the Trainer refuses it as a batch_transform
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    with pytest.raises(TypeError, match="Ensemble: transform=.* is a random augmentation"):
        Ensemble([model], transform=augmentation())


def test_ensemble_with_the_training_batch_transform_predicts_the_preprocessed_images_deterministically():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    scaler = Standardize(per="channel").fit(x)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    ensemble = Ensemble([model], transform=make_batch_transform(
        scaler, Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])))
    model.eval()
    expected = np_softmax(model.forward(scaler.transform(x)))
    np.testing.assert_array_equal(ensemble.predict_proba(x), expected)
    np.testing.assert_array_equal(ensemble.predict_proba(x), expected)


def test_from_checkpoints_refuses_a_build_model_that_returns_the_same_module_twice(members, tmp_path):
    # ``lambda: model`` loaded every checkpoint into one module: an "ensemble" of N copies of the last checkpoint
    ws, bs, _ = members
    paths = []
    for i, (w, b) in enumerate(zip(ws, bs)):
        paths.append(str(tmp_path / f"m{i}.npz"))
        checkpoint.save_model(paths[-1], linear_with(w, b))
    shared = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="Ensemble.from_checkpoints: build_model returned the same"):
        Ensemble.from_checkpoints(paths, lambda: shared)
    with pytest.raises(TypeError, match="Ensemble.from_checkpoints: build_model must be a callable that builds"):
        Ensemble.from_checkpoints(paths, nn.Linear(4, 3))
    with pytest.raises(TypeError, match="Ensemble.from_checkpoints: paths must be a sequence of paths"):
        Ensemble.from_checkpoints(paths[0], lambda: nn.Linear(4, 3))
