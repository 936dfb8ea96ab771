"""cynet.diagnostics.check_batchnorm: the running statistics against the data's, and eval mode against batch
statistics. Oracles: statistics computed by hand with NumPy (the data's mean and variance where the batch norm
reads the input directly), hand-set running statistics, and the model's own outputs compared before and after."""
import re

import numpy as np
import pytest

from cynet import nn
from cynet.diagnostics import check_batchnorm
from cynet.diagnostics.batchnorm_check import MEAN_SHIFT_TOLERANCE

FEATURES = 6


def _data(n=600, mean=3.0, std=2.0, seed=0):
    return np.random.default_rng(seed).normal(mean, std, (n, FEATURES))


def _model():
    """A batch norm reading the input itself, so its input's statistics are the data's."""
    return nn.Sequential(nn.BatchNorm1d(FEATURES), nn.Linear(FEATURES, 3, generator=0)).double()


def test_never_updated_statistics_are_stale_by_the_hand_computed_shift_and_ratio():
    x = _data()
    model = _model()                                # running mean 0, running variance 1
    report = check_batchnorm(model, x, batch_size=100)
    layer = report.layers[0]
    eps = model[0].eps
    mean, var = x.mean(axis=0), x.var(axis=0)       # what the batch norm receives over all 600 samples
    assert layer.batches_tracked == 0 and layer.describes_data is False
    shift = mean / np.sqrt(var + eps)
    np.testing.assert_allclose(layer.mean_shift, np.sqrt(np.mean(shift ** 2)), rtol=1e-9)
    np.testing.assert_allclose(layer.max_mean_shift, np.max(np.abs(shift)), rtol=1e-9)
    ratio = (1 + eps) / (var + eps)
    np.testing.assert_allclose(layer.variance_ratio, (ratio.min(), ratio.max()), rtol=1e-9)
    np.testing.assert_allclose(layer.variance_factor, np.exp(np.sqrt(np.mean(np.log(ratio) ** 2))), rtol=1e-9)
    assert report["running statistics"].passed is False and not report.passed
    assert "never updated" in report["running statistics"].explanation
    assert "STALE" in str(report)


def test_statistics_set_to_the_datas_pass_and_eval_agrees_with_large_batches():
    x = _data()
    model = _model()
    bn = model[0]
    bn.running_mean[...] = x.mean(axis=0)
    bn.running_var[...] = x.var(axis=0, ddof=1)
    bn.num_batches_tracked[...] = 50
    report = check_batchnorm(model, x, batch_size=300)
    assert report["running statistics"].passed
    assert report.layers[0].mean_shift < MEAN_SHIFT_TOLERANCE
    low, high = report.layers[0].variance_ratio
    assert 0.9 < low <= high < 1.1
    assert report["eval vs batch statistics"].passed         # batches of 300 from one distribution


def test_a_shifted_running_mean_is_reported_in_standard_deviations():
    x = _data()
    model = _model()
    bn = model[0]
    std = np.sqrt(x.var(axis=0) + bn.eps)
    bn.running_mean[...] = x.mean(axis=0) + np.array([0, 0, 0.5, 0, 0, 0]) * std      # one feature off by 0.5 std
    bn.running_var[...] = x.var(axis=0)
    bn.num_batches_tracked[...] = 10
    layer = check_batchnorm(model, x, batch_size=128).layers[0]     # any batch size: every value counts
    np.testing.assert_allclose(layer.max_mean_shift, 0.5, rtol=1e-6)
    np.testing.assert_allclose(layer.mean_shift, 0.5 / np.sqrt(FEATURES), rtol=1e-6)     # rms over 6 features
    np.testing.assert_allclose(layer.variance_factor, 1.0, rtol=1e-9)
    assert 0.5 / np.sqrt(FEATURES) > MEAN_SHIFT_TOLERANCE and layer.describes_data is False     # 0.204: stale


def test_recomputing_fixes_what_the_check_found_and_predictions_improve():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, (800, FEATURES))
    y = (x[:, 0] > 0).astype(np.int64)
    x = x * 3.0 + 5.0                               # the batch norm must undo this for the classifier
    model = nn.Sequential(nn.BatchNorm1d(FEATURES), nn.Linear(FEATURES, 2, generator=0)).double()
    w = np.zeros((2, FEATURES))
    w[1, 0], w[0, 0] = 1.0, -1.0                    # class 1 where the normalised feature 0 is positive
    model[1].weight.data[...] = w
    model[1].bias.data[...] = 0
    report = check_batchnorm(model, x, y)
    assert report.accuracy["recomputed statistics"] > 0.95 and report.accuracy["batch statistics"] > 0.95
    assert report.accuracy["eval"] < 0.6            # mean 0 / variance 1: every sample looks positive
    assert not report["running statistics"].passed and not report["eval vs batch statistics"].passed
    nn.recompute_batchnorm_statistics(model, x)
    again = check_batchnorm(model, x, y)
    assert again.passed and again.accuracy["eval"] > 0.95


@pytest.mark.parametrize("n", [258, 257 + 256])
def test_the_recommended_fix_passes_the_check_when_the_last_batch_is_tiny(n):
    """258 samples in batches of 256 and 2: the recomputation averaged the two batches' statistics with equal
    weights, 0.64 std off the data's mean, and this check then called the statistics it had just recommended stale."""
    x = np.random.default_rng(0).normal(3.0, 2.0, (n, 8)).astype(np.float32)
    model = nn.Sequential(nn.Linear(8, 16, generator=0), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 3, generator=1))
    nn.recompute_batchnorm_statistics(model, x)
    h = x.astype(np.float64) @ model[0].weight.data.T.astype(np.float64) + model[0].bias.data
    np.testing.assert_allclose(model[1].running_mean, h.mean(0), rtol=0, atol=1e-5 * h.std(0).max())
    np.testing.assert_allclose(model[1].running_var, h.var(0, ddof=1), rtol=1e-5)
    report = check_batchnorm(model, x)
    assert report["running statistics"].passed, report


def test_the_model_is_left_as_it_was():
    x = _data()
    model = nn.Sequential(nn.Linear(FEATURES, 4, generator=1), nn.BatchNorm1d(4), nn.Dropout(0.5, generator=2),
                          nn.Linear(4, 3, generator=3)).double()
    model(x[:50])                                   # one training step's statistics
    model[2].eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    report = check_batchnorm(model, x, batch_size=128)
    after = model.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert [m.training for m in model.modules()] == modes
    assert report.training_mode


def test_a_model_without_batch_norm_and_one_without_running_statistics():
    x = _data()
    plain = check_batchnorm(nn.Sequential(nn.Linear(FEATURES, 3, generator=0)).double(), x)
    assert plain.layers == [] and plain.passed and plain.checks[0].passed is None
    untracked = nn.Sequential(nn.BatchNorm1d(FEATURES, track_running_stats=False),
                              nn.Linear(FEATURES, 3, generator=0)).double()
    report = check_batchnorm(untracked, x)
    assert report.layers[0].describes_data is None and report["running statistics"].passed is None
    assert report["eval vs batch statistics"].passed            # both modes use the batch's statistics


def test_batchnorm2d_on_images():
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 0.5, (64, 3, 5, 5))
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(75, 4, generator=0)).double()
    layer = check_batchnorm(model, x, batch_size=32).layers[0]
    mean = x.mean(axis=(0, 2, 3))
    var = x.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1)
    np.testing.assert_allclose(layer.max_mean_shift, np.max(np.abs(mean) / np.sqrt(var + 1e-5)), rtol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 1}, "batch_size must be an int >= 2"),
    ({"y": np.zeros(600, np.int64), "model": nn.Sequential(nn.BatchNorm1d(FEATURES), nn.Linear(FEATURES, 1)).double()},
     "labels y need class scores"),
    ({"y": np.zeros(3, np.int64)}, "one per sample"),
    ({"y": np.zeros(600)}, "integer labels"),
])
def test_bad_arguments_are_named(kwargs, match):
    model = kwargs.pop("model", None) or _model()
    with pytest.raises(ValueError, match=match):
        check_batchnorm(model, _data(), **kwargs)


def test_one_sample_is_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        check_batchnorm(_model(), _data(n=1))


def test_dropout_before_a_batch_norm_is_named_as_a_cause():
    """Training with dropout in front of a batch norm: the running variance includes dropout's noise, eval's input
    does not (Li et al. 2019's variance shift): by hand, inverted dropout with p = 0.5 on x of mean m and variance v
    gives variance 2 v + m^2 in training."""
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 1.0, (1024, FEATURES))
    model = nn.Sequential(nn.Dropout(0.5, generator=5), nn.BatchNorm1d(FEATURES, momentum=None),
                          nn.Linear(FEATURES, 3, generator=0)).double()
    for s in range(0, 1024, 128):
        model(x[s:s + 128])                         # training: dropout on, the running statistics average
    report = check_batchnorm(model, x)
    layer = report.layers[0]
    np.testing.assert_allclose(layer.variance_factor, (2 * 1.0 + 1.0 ** 2) / 1.0, rtol=0.1)
    assert layer.describes_data is False
    found = re.search(r"\(1 by ([0-9.]+)x, measured with them on\)", report["running statistics"].explanation)
    assert found and abs(float(found.group(1)) - 3.0) < 0.3


def test_a_dropout_after_a_batch_norm_is_not_named():
    """The cause is measured, not read off the module order (found by QA: a shared_copy twin placed after a Dropout
    was named): here the Dropout follows the batch norm in both branches and widens neither's input."""
    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(FEATURES, 4, generator=6), nn.BatchNorm1d(4), nn.ReLU(),
                                   nn.Dropout(0.5, generator=7)).double()
            self.b = self.a.shared_copy()

        def forward(self, x):
            return np.concatenate([self.a(x), self.b(-x)], axis=1)

    model = Siamese()                               # never trained: running statistics 0 / 1, stale
    report = check_batchnorm(model, _data())
    assert [layer.describes_data for layer in report.layers] == [False, False]
    assert "act only in training" not in report["running statistics"].explanation


@pytest.mark.parametrize("n", [258, 520, 1000])
def test_right_statistics_pass_whatever_the_batches_and_the_order(n):
    """Running statistics equal to the data's pass for any sample count (a short last batch weighs by its size) and
    for data sorted into clusters (found by QA: per-batch averages called them stale at n = 258 and on sorted data)."""
    rng = np.random.default_rng(n)
    x = np.concatenate([rng.normal(-2.0, 1.0, (n // 2, FEATURES)), rng.normal(2.0, 1.0, (n - n // 2, FEATURES))])
    model = _model()
    bn = model[0]
    bn.running_mean[...] = x.mean(axis=0)
    bn.running_var[...] = x.var(axis=0)
    bn.num_batches_tracked[...] = 100
    layer = check_batchnorm(model, x, batch_size=256).layers[0]
    assert layer.mean_shift < 1e-9 and abs(layer.variance_factor - 1) < 1e-9 and layer.describes_data


def test_the_check_between_a_forward_and_its_backward_changes_nothing():
    """The check runs on copies: a forward, the check on other data, then the backward of that forward."""
    model = nn.Sequential(nn.Linear(FEATURES, 4, generator=1), nn.BatchNorm1d(4), nn.ReLU(),
                          nn.Linear(4, 3, generator=3)).double()
    x, dout = _data(n=32), np.random.default_rng(6).standard_normal((32, 3))
    model(x)
    check_batchnorm(model, _data(n=40, seed=9))
    dx = model.backward(dout)
    reference = nn.Sequential(nn.Linear(FEATURES, 4, generator=1), nn.BatchNorm1d(4), nn.ReLU(),
                              nn.Linear(4, 3, generator=3)).double()
    reference(x)
    np.testing.assert_array_equal(dx, reference.backward(dout))


def test_the_training_only_pass_leaves_the_global_generator_as_it_was():
    """The cause is measured with Dropout on, on a copy; a Dropout drawing from cynet's global generator draws the
    same masks afterwards as if the check had not run."""
    import cynet

    def masks_after(check):
        cynet.manual_seed(11)
        model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(FEATURES), nn.Linear(FEATURES, 3, generator=0)).double()
        if check:
            assert not check_batchnorm(model, _data()).passed          # never trained: stale, the cause measured
        return model[0](np.ones((4, FEATURES)))

    np.testing.assert_array_equal(masks_after(True), masks_after(False))


def test_statistics_updated_a_few_times_are_named_as_too_young():
    # three training passes over the very data checked: nothing moved, no augmentation, but 0.9^3 = 73% of the
    # averages is still the initial mean 0 / variance 1; the check blamed moved weights or augmentation
    x = _data()
    model = _model()
    for start in (0, 100, 200):
        model(x[start:start + 100])
    report = check_batchnorm(model, x, batch_size=100)
    layer = report.layers[0]
    assert layer.batches_tracked == 3 and layer.initial_share == pytest.approx(0.9 ** 3)
    text = report["running statistics"].explanation
    assert report["running statistics"].passed is False
    assert "too few updates" in text and "73% after 3 batches" in text and "augmentation" not in text
    for _ in range(60):                                       # 0.9^63: well trained averages, no such cause
        model(x[:100])
    assert check_batchnorm(model, x, batch_size=100).layers[0].initial_share < 0.01


def test_recomputed_statistics_on_shifted_data_are_not_named_as_too_young():
    # recompute_batchnorm_statistics over 2 batches leaves num_batches_tracked = 2, and the check took 0.9^2 = 81% of
    # the averages for the initial mean 0 / variance 1 ("too few updates") once the data shifted, though the
    # recomputed averages hold none of them
    x = _data()
    model = nn.recompute_batchnorm_statistics(_model(), x, batch_size=300)
    shifted = check_batchnorm(model, _data(mean=5.0, std=4.0, seed=1), batch_size=300)
    layer = shifted.layers[0]
    assert layer.batches_tracked == 2 and layer.initial_share == 0.0
    text = shifted["running statistics"].explanation
    assert shifted["running statistics"].passed is False
    assert "too few updates" not in text and "augmentation" in text
    model[0].reset_running_stats()                             # back to the initial values: their whole weight
    for start in (0, 100):
        model.train()(x[start:start + 100])
    assert check_batchnorm(model, x, batch_size=100).layers[0].initial_share == pytest.approx(0.9 ** 2)


def test_statistics_loaded_after_a_recompute_are_weighed_as_theirs():
    # the note that the statistics were recomputed described the old arrays: loaded ones (5 updates of a training
    # run) still hold 0.9^5 of the initial mean 0 / variance 1, which the check must count again
    x = _data()
    young = _model()
    for start in range(0, 500, 100):
        young.train()(x[start:start + 100])
    model = nn.recompute_batchnorm_statistics(_model(), x, batch_size=300)
    assert check_batchnorm(model, x, batch_size=300).layers[0].initial_share == 0.0
    model.load_state_dict(young.state_dict())
    assert check_batchnorm(model, x, batch_size=100).layers[0].initial_share == pytest.approx(0.9 ** 5)


def test_equal_accuracies_with_many_differing_predictions_are_not_called_the_same_predictions():
    # an untrained classifier on stale statistics: eval mode and batch statistics each get about as many labels right
    # (57.6 % both), yet 22 % of the predicted classes differ. The check passes on the accuracy (its criterion with
    # labels) but said "the model predicts nearly the same", which its own measured share contradicts
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 20)) * 3 + 2
    y = (x[:, 0] > 2).astype(np.int64)
    model = nn.Sequential(nn.Linear(20, 16, generator=0), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 2, generator=1)).double()
    report = check_batchnorm(model, x, y)
    check = report["eval vs batch statistics"]
    eval_predictions = np.argmax(model.eval()(x), axis=1)
    assert report.accuracy["eval"] == pytest.approx(np.mean(eval_predictions == y))
    assert abs(report.accuracy["eval"] - report.accuracy["batch statistics"]) <= 0.01
    share = report.disagreement["batch statistics"]
    assert share > 0.05
    assert check.passed is True
    assert "predicts nearly the same" not in check.explanation
    assert f"{share:.1%} of the predictions differ" in check.explanation
