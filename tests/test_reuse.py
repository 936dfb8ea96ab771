"""Reused output arrays (cynet.nn._reuse): a layer gets a large array handed out before only when nothing else holds
it. Oracles: copies of the outputs the caller kept, the same training run with the reuse turned off, and the pool's
own bookkeeping (which arrays it keeps, by shape)."""
import copy
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from cynet import nn
from cynet.nn import _reuse
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD

SHAPE = (8, 8, 64, 64)


@pytest.fixture(autouse=True)
def reuse_on(monkeypatch):
    """Reuse on, from 64 KiB: every map of these tests (the smallest, a pooled (8, 8, 32, 32) float32, is 256 KiB);
    an empty pool before and after."""
    monkeypatch.setattr(_reuse, "ENABLED", True)
    monkeypatch.setattr(_reuse, "MIN_BYTES", 64 << 10)
    _reuse.POOL.clear()
    yield
    _reuse.POOL.clear()


def _maps(seed, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _layers():
    return {
        "conv": nn.Conv2d(8, 8, 3, padding=1, generator=0),
        "batchnorm": nn.BatchNorm2d(8),
        "batchnorm_eval": nn.BatchNorm2d(8).eval(),
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


def test_arrays_pass_between_layers_once_free():
    conv, bn = nn.Conv2d(8, 8, 3, padding=1, generator=0), nn.BatchNorm2d(8)
    y = conv(_maps(1))
    first = y.ctypes.data
    del y
    z = bn(conv(_maps(2)))       # conv's output is the first array again; bn caches it, so its own output is another
    assert bn._cache[1].ctypes.data == first != z.ctypes.data
    del z
    y = conv(_maps(3))           # the first is still in bn's cache: bn's old output, free now, serves conv
    assert y.ctypes.data not in (first, bn._cache[1].ctypes.data)
    assert len(_reuse.POOL) == 2


def test_small_outputs_are_not_pooled():
    relu = nn.ReLU()
    for seed in (1, 2):
        relu(_maps(seed, (4, 64)))
        relu.backward(_maps(seed + 2, (4, 64)))
    assert len(_reuse.POOL) == 0


def test_copies_of_a_layer_share_the_pool_and_stay_independent():
    conv = nn.Conv2d(8, 8, 3, padding=1, generator=0)
    kept = conv(_maps(1))
    clone = copy.deepcopy(conv)
    y = clone(_maps(2))
    assert y.ctypes.data != kept.ctypes.data
    np.testing.assert_array_equal(y, conv(_maps(2)))


def test_a_training_loop_stops_allocating():
    # the second step still needs one array more (a layer cache holding the first step's array while its successor
    # is asked for); from then on every request finds a free array
    sizes = []
    _train_cnn(6, after_step=lambda: sizes.append(len(_reuse.POOL)))
    assert sizes[0] > 0 and sizes[1:] == [sizes[1]] * 5


def test_free_arrays_beyond_the_bound_are_dropped_oldest_shape_first(monkeypatch):
    shapes = [(8, 8, 64, 64), (8, 8, 32, 128), (8, 8, 128, 32), (8, 8, 16, 256), (8, 8, 256, 16), (8, 8, 8, 512)]
    mib = 1 << 20                                     # each shape's float32 array
    monkeypatch.setattr(_reuse, "MAX_FREE_BYTES", 2 * mib)

    def kept_shapes():
        return [shapes.index(key[0]) for key in _reuse.POOL.arrays]

    for shape in shapes[:4]:                          # each dropped by its caller at once
        _reuse.empty(shape, np.float32)
    # before keeping the fourth, the pool dropped the oldest free array: two were left free
    assert kept_shapes() == [1, 2, 3]
    held = [_reuse.empty(shapes[0], np.float32) for _ in range(3)]   # in use: not free, never dropped
    assert kept_shapes() == [2, 3, 0] and len(_reuse.POOL) == 5
    monkeypatch.setattr(_reuse, "MAX_BYTES", 4 * mib)
    fifth = _reuse.empty(shapes[4], np.float32)       # fits once the two free ones are dropped
    assert kept_shapes() == [0, 4]
    sixth = _reuse.empty(shapes[5], np.float32)       # nothing free to drop: handed out, not kept
    assert kept_shapes() == [0, 4] and sixth.shape == shapes[5]
    assert len(held) == 3 and fifth.shape == shapes[4]


def test_concurrent_callers_never_share_an_array():
    addresses, errors = [], []
    barrier = threading.Barrier(4)

    def work():
        try:
            held = [_reuse.empty(SHAPE, np.float32) for _ in range(4)]
            addresses.extend(a.ctypes.data for a in held)
            barrier.wait()                              # every thread holds its four at once
        except Exception as error:                      # reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(addresses)) == 16


def _train_cnn(steps, after_step=lambda: None):
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
        after_step()
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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_with_an_empty_pool():
    held = _reuse.empty(SHAPE, np.float32)
    assert len(_reuse.POOL) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: report the pool it sees, then leave at once
        os.close(read)
        os.write(write, str(len(_reuse.POOL)).encode())
        os._exit(0)
    os.close(write)
    seen = os.read(read, 16).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert seen == "0" and len(_reuse.POOL) == 1 and held.shape == SHAPE


def test_the_layer_and_trainer_tests_pass_with_every_output_pooled():
    """The stress mode: CYNET_REUSE_MIN_BYTES=0 pools every output, however small, so that any layer, loss or trainer
    path that relies on getting a fresh array (or hands out one it still uses) fails its own tests."""
    here = os.path.dirname(os.path.abspath(__file__))
    modules = ["test_nn.py", "test_conv.py", "test_normalization.py", "test_residual.py", "test_inplace.py",
               "test_prelu_maxout.py", "test_trainer.py", "test_checkpoint.py", "test_gradcheck.py", "test_reuse.py"]
    env = dict(os.environ, CYNET_REUSE_MIN_BYTES="0")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                             "-k", "not every_output_pooled", *(os.path.join(here, m) for m in modules)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.parametrize("setting, expected", [("", _reuse.DEFAULT_MIN_BYTES), (" 1024 ", 1024), ("0", 0),
                                               ("abc", None), ("-5", None), ("1_0", None)])
def test_reuse_min_bytes_is_read_as_a_byte_count_and_empty_is_unset(setting, expected):
    """An empty CYNET_REUSE_MIN_BYTES (as an empty OMP_NUM_THREADS) is no setting: it failed ``import cynet`` with
    int()'s bare "invalid literal for int() with base 10: ''"; a value that is not a byte count names the variable."""
    env = dict(os.environ, CYNET_REUSE_MIN_BYTES=setting)
    code = "import cynet; from cynet.nn import _reuse; print(_reuse.MIN_BYTES)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if expected is None:
        assert result.returncode != 0
        assert "CYNET_REUSE_MIN_BYTES must be a whole number of bytes >= 0" in result.stderr and repr(setting.strip()) \
            in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        assert int(result.stdout) == expected


def test_maxout_outputs_winners_and_gradient_come_from_the_pool():
    """Maxout handed out a fresh output, a fresh int32 array of winners and a fresh (N, k*M) gradient at every step
    (here 256 KiB + 256 KiB + 512 KiB a step), where every other layer's come from the pool: in steady state a
    forward and backward now allocate none of them; the values are those of a Maxout without reuse, and an output
    the caller keeps is never overwritten."""
    import tracemalloc
    maxout = nn.Maxout(1024, 256, pieces=2, generator=0)
    fresh = copy.deepcopy(maxout)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((256, 1024), dtype=np.float32), rng.standard_normal((256, 256), dtype=np.float32))
               for _ in range(4)]
    kept_y = maxout(batches[0][0])
    kept = kept_y.copy()
    for x, dout in batches[1:3]:                   # warm-up: the pool gets its arrays
        maxout.zero_grad()
        maxout(x)
        maxout.backward(dout)
    x, dout = batches[3]
    maxout.zero_grad()                             # (the weight gradient is written, not added to)
    tracemalloc.start()
    try:
        y = maxout(x)
        dx_shape = maxout.backward(dout).shape     # the input gradient (from the pool too) dropped at once
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dx_shape == x.shape
    assert peak < 64 << 10, f"a Maxout step allocated {peak} bytes"      # under the pooled size: small arrays only
    np.testing.assert_array_equal(kept_y, kept)
    _reuse.ENABLED = False
    np.testing.assert_array_equal(y, fresh(x))
    np.testing.assert_array_equal(maxout._indices, fresh._indices)


@pytest.mark.parametrize("make", [lambda: nn.Linear(1024, 256, generator=0),
                                  lambda: nn.DropConnectLinear(1024, 256, p=0.5, generator=0)],
                         ids=["Linear accumulating", "DropConnectLinear"])
def test_weight_gradients_use_a_pooled_product(make):
    """An accumulating weight gradient (a second backward without zero_grad, tied weights) and DropConnect's masked
    one computed dout^T x into a fresh weight-sized array (1 MiB here) at every backward; now a pooled one, the
    same bits (against the product written out by hand)."""
    import tracemalloc
    layer = make()
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((256, 1024), dtype=np.float32), rng.standard_normal((256, 256), dtype=np.float32)
    for _ in range(2):                                     # warm-up: the pool gets its arrays
        layer.zero_grad()
        layer(x)
        layer.backward(dout, input_grad=False)
        layer.backward(dout, input_grad=False)
    layer.zero_grad()
    layer(x)
    layer.backward(dout, input_grad=False)
    first = layer.weight.grad.copy()
    tracemalloc.start()
    try:
        layer.backward(dout, input_grad=False)             # adds into the gradient
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, f"an accumulating backward allocated {peak} bytes"
    product = np.matmul(dout.T, x)
    mask = getattr(layer, "_mask", None)
    if mask is not None:
        product *= mask
    np.testing.assert_array_equal(first, product)
    np.testing.assert_array_equal(layer.weight.grad, first + product)
