"""Reused output arrays (cynet.nn._reuse): a module hands out a large output array again only when nothing else holds
it. Oracles: copies of the outputs the caller kept, and the same training run with the reuse turned off."""
import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from cynet import nn
from cynet.nn import _reuse
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD

SHAPE = (8, 8, 64, 64)


@pytest.fixture(autouse=True)
def reuse_on(monkeypatch):
    """Reuse on, from 64 KiB: every map of these tests (the smallest, a pooled (8, 8, 32, 32) float32, is 256 KiB)."""
    monkeypatch.setattr(_reuse, "ENABLED", True)
    monkeypatch.setattr(_reuse, "MIN_BYTES", 64 << 10)


def _maps(seed, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _layers():
    return {
        "conv": nn.Conv2d(8, 8, 3, padding=1, generator=0),
        "batchnorm": nn.BatchNorm2d(8),
        "relu": nn.ReLU(),
        "tanh": nn.Tanh(),
        "gelu": nn.GELU(),
        "maxpool": nn.MaxPool2d(2),
        "groupnorm": nn.GroupNorm(2, 8),
        "prelu": nn.PReLU(8),
        "dropout": nn.Dropout(0.5, generator=0),
        "residual": nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, generator=1), nn.ReLU())),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_an_output_the_caller_keeps_is_never_overwritten(name):
    layer = _layers()[name]
    y1 = layer(_maps(1))
    kept = y1.copy()
    for seed in (2, 3, 4):                      # more passes than the arrays a slot keeps
        layer(_maps(seed))
    np.testing.assert_array_equal(y1, kept)


@pytest.mark.parametrize("name", list(_layers()))
def test_a_gradient_the_caller_keeps_is_never_overwritten(name):
    layer = _layers()[name]
    y = layer(_maps(1))
    dx1 = layer.backward(_maps(5, y.shape))
    kept = dx1.copy()
    for seed in (6, 7, 8):
        layer(_maps(seed - 4))
        layer.backward(_maps(seed, y.shape))
    np.testing.assert_array_equal(dx1, kept)


def test_a_view_a_memoryview_or_a_cache_keeps_the_array_from_reuse():
    conv = nn.Conv2d(8, 8, 3, padding=1, generator=0)
    view = conv(_maps(1))[2:5]
    kept_view = view.copy()
    memory = memoryview(conv(_maps(2)))
    kept_memory = np.array(memory, copy=True)
    bn = nn.BatchNorm2d(8)
    bn(conv(_maps(3)))                          # bn caches conv's output for its backward
    cached = bn._cache[1].copy()
    for seed in (4, 5, 6, 7):
        conv(_maps(seed))
    np.testing.assert_array_equal(view, kept_view)
    np.testing.assert_array_equal(np.asarray(memory), kept_memory)
    np.testing.assert_array_equal(bn._cache[1], cached)


def test_a_dropped_output_is_handed_out_again():
    conv = nn.Conv2d(8, 8, 3, padding=1, generator=0)
    address = conv(_maps(1)).ctypes.data       # the caller drops it at once
    y = conv(_maps(2))
    assert y.ctypes.data == address
    # and the values are the new pass's: the same as a layer without reuse
    fresh = copy.deepcopy(conv)
    _reuse.ENABLED = False
    np.testing.assert_array_equal(y, fresh(_maps(2)))


def test_a_cached_forward_output_alternates_between_two_arrays():
    conv, bn = nn.Conv2d(8, 8, 3, padding=1, generator=0), nn.BatchNorm2d(8)
    addresses = []
    for seed in range(4):
        y = conv(_maps(seed))
        bn(y)                                   # holds y until its next forward
        addresses.append(y.ctypes.data)
        del y
    assert addresses[0] == addresses[2] != addresses[1] == addresses[3]


def test_small_outputs_are_not_kept():
    relu = nn.ReLU()
    for seed in (1, 2):
        relu(_maps(seed, (4, 64)))
        relu.backward(_maps(seed + 2, (4, 64)))
    assert "_reused_arrays" not in vars(relu)


def test_copies_and_pickles_keep_no_arrays():
    conv = nn.Conv2d(8, 8, 3, padding=1, generator=0)
    conv(_maps(1))
    assert sum(len(a) for a in conv._reused_arrays.kept.values()) == 1
    for clone in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert clone._reused_arrays.kept == {}
        np.testing.assert_array_equal(clone(_maps(2)), conv(_maps(2)))


def _train_cnn(steps):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, generator=0), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, generator=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Dropout(0.2, generator=2))),
        nn.Conv2d(8, 16, 3, padding=1, generator=3), nn.GroupNorm(4, 16), nn.GELU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10, generator=4))
    loss, optimizer = SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((16, 3, 64, 64), dtype=np.float32)
        y = rng.integers(0, 10, 16)
        optimizer.zero_grad()
        losses.append(loss.forward(model.forward(x), y))
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
    return losses, [p.data.copy() for p in model.parameters()]


def test_training_with_reused_arrays_gives_the_same_bits_as_without(monkeypatch):
    losses, params = _train_cnn(4)
    monkeypatch.setattr(_reuse, "ENABLED", False)
    fresh_losses, fresh_params = _train_cnn(4)
    assert losses == fresh_losses
    for p, q in zip(params, fresh_params):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False"), ("off", "False")])
def test_the_environment_switch_and_the_config_printout(setting, expected):
    env = {k: v for k, v in os.environ.items() if k != "CYNET_REUSE_ARRAYS"}
    if setting is not None:
        env["CYNET_REUSE_ARRAYS"] = setting
    code = ("import cynet; from cynet.nn import _reuse; from cynet._config import config; "
            "print(_reuse.ENABLED, config()['reuse_arrays'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [expected, expected]
