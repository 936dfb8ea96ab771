"""Linear's bias and the ReLU after it in one pass (``Linear.forward_relu`` inside Sequential), and its kernels.

Oracles: NumPy (``y + b``, ``np.where(y < 0, 0, y)``, ``dz.sum(axis=0)``: the kernels must give their bits), the same
network run layer by layer (``FUSE_LINEAR_RELU`` off), and float64 numerical gradients.
"""
import os

import numpy as np
import pytest

import cynet
from cynet import nn
from cynet._kernels import load
from cynet.gradcheck import check_module
from _helpers import MethodCalls

_act = load("activations")
DTYPES = [np.float32, np.float64]
# empty, one element, odd, a column range narrower than a cache line, above the kernels' parallel threshold (32768)
SHAPES = [(0, 4), (4, 0), (1, 1), (7, 3), (257, 33), (300, 700), (256, 1024)]


def _specials(h, b):
    """NaN, -0 and an infinity in the first row, so that ReLU's sign and NaN rules are exercised."""
    if h.shape[0] and h.shape[1] >= 3:
        h[0, 0], h[0, 1], h[0, 2] = np.nan, -0.0, -np.inf
        b[1] = -0.0
    return h, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_bias_relu_kernel_matches_numpy_bit_for_bit(dtype, shape, threads, rng):
    h, b = _specials(rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape[1]).astype(dtype))
    total = h + b
    for bias, relu, want in [(b, True, np.where(total < 0, 0, total)), (b, False, total),
                             (None, True, np.where(h < 0, 0, h))]:
        y = h.copy()
        _act.bias_relu_rows(y, bias, relu, threads)
        want = want.astype(dtype)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(want))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_relu_bias_gradient_kernel_matches_numpy_bit_for_bit(dtype, shape, threads, rng):
    y = np.maximum(rng.standard_normal(shape), 0).astype(dtype)      # a ReLU output: zeros and positives
    dout = (rng.standard_normal(shape) * 1e3 + 0.1).astype(dtype)     # large terms: the order of the sums shows
    dz, db = np.full(shape, 7.0, dtype), np.full(shape[1], 7.0, dtype)
    _act.relu_bias_grad_rows(dout, y, dz, db, True, threads)
    want = np.where(y > 0, dout, 0).astype(dtype)
    np.testing.assert_array_equal(dz, want)
    np.testing.assert_array_equal(db, want.sum(axis=0))
    plain = np.full(shape[1], 7.0, dtype)
    _act.relu_bias_grad_rows(dout, None, None, plain, False, threads)
    np.testing.assert_array_equal(plain, dout.sum(axis=0))


def _mlp(inplace=False, dtype=np.float32, bias=True, frozen_bias=False):
    model = nn.Sequential(nn.Linear(12, 40, bias=bias, init="he", generator=1, dtype=dtype), nn.ReLU(inplace=inplace),
                          nn.Linear(40, 300, init="he", generator=2, dtype=dtype), nn.ReLU(inplace=inplace),
                          nn.Linear(300, 4, generator=3, dtype=dtype))
    if frozen_bias:
        model[2].bias.requires_grad = False
    return model


@pytest.mark.parametrize("variant", ["plain", "inplace", "no-bias", "frozen-bias", "float64"])
def test_sequential_fuses_linear_and_relu_with_the_same_bits(rng, monkeypatch, variant):
    # outputs, dx, every gradient (accumulated over two backward passes: the second adds) and the ReLUs' kink state
    # equal the layers one by one; fused, the ReLUs' own forward and backward do not run
    import cynet.nn.module as module_file

    dtype = np.float64 if variant == "float64" else np.float32
    x = rng.standard_normal((300, 12)).astype(dtype)
    douts = [rng.standard_normal((300, 4)).astype(dtype) for _ in range(2)]
    results = {}
    for fuse in (False, True):
        monkeypatch.setattr(module_file, "FUSE_LINEAR_RELU", fuse)
        model = _mlp(inplace=variant == "inplace", dtype=dtype, bias=variant != "no-bias",
                     frozen_bias=variant == "frozen-bias")
        forwards, backwards = MethodCalls(monkeypatch, model[1], "forward"), MethodCalls(monkeypatch, model[1],
                                                                                          "backward")
        outputs = [model(x).copy(), model(x).copy()]
        dxs = [model.backward(d).copy() for d in douts]
        results[fuse] = (outputs, dxs, [None if p.grad is None else p.grad.copy() for p in model.parameters()],
                         [model[1].kink_state(), model[3].kink_state()])
        assert (forwards.count, backwards.count) == ((0, 0) if fuse else (4, 4))
        if variant == "frozen-bias":
            assert not np.any(model[2].bias.grad)     # frozen: no gradient, fused or not
        monkeypatch.undo()
    plain, fused = results[False], results[True]
    for a, b in zip(sum(plain, []), sum(fused, [])):
        np.testing.assert_array_equal(a, b)


def test_linear_relu_fused_passes_a_float64_gradient_check(rng):
    model = _mlp(dtype=np.float64)
    x = rng.standard_normal((6, 12))
    report = check_module(model, x, num_checks=20)
    assert report.passed and report.kinks_present, report
    assert report.max_error < 1e-6, report


def test_linear_and_relu_run_one_by_one_where_fusing_does_not_apply(rng, monkeypatch):
    # a shadowed forward (a monitor's wrapper) or backward, a subclass's own forward, or an activation other than a
    # plain ReLU: each layer runs itself, with the right answer
    x = rng.standard_normal((5, 12)).astype(np.float32)
    model = _mlp()
    calls = MethodCalls(monkeypatch, model[1], "forward")
    model(x)
    assert calls.count == 0
    seen = []
    model[1].forward = lambda value: seen.append(value) or nn.ReLU.forward(model[1], value)
    model(x)
    assert calls.count == 1 and len(seen) == 1       # the shadowed ReLU ran; the second (not shadowed) was fused
    np.testing.assert_array_equal(model[1]._saved, np.maximum(model[0](x), 0))
    del model[1].forward
    model[0].backward = lambda dout, input_grad=True: nn.Linear.backward(model[0], dout, input_grad=input_grad)
    model(x)
    assert calls.count == 2
    del model[0].backward

    class Doubled(nn.Linear):
        def forward(self, value):
            return 2 * super().forward(value)

    doubled = nn.Sequential(Doubled(12, 3, generator=0), nn.ReLU())
    doubled_calls = MethodCalls(monkeypatch, doubled[1], "forward")
    y = doubled(x)
    assert doubled_calls.count == 1
    np.testing.assert_array_equal(y, np.maximum(2 * (x @ doubled[0].weight.data.T + doubled[0].bias.data), 0))


def test_linear_bias_gradient_of_a_non_contiguous_dout(rng):
    # the kernels take C-contiguous rows; a Fortran-ordered dout goes through NumPy's sum, as before
    layer = nn.Linear(6, 5, generator=0)
    x = rng.standard_normal((9, 6)).astype(np.float32)
    layer(x)
    dout = np.asfortranarray(rng.standard_normal((9, 5)).astype(np.float32))
    dx = layer.backward(dout)
    np.testing.assert_array_equal(layer.bias.grad, dout.sum(axis=0))
    np.testing.assert_allclose(dx, dout @ layer.weight.data, rtol=1e-6)


def test_fused_mlp_trains_to_the_same_weights_on_any_thread_count(rng):
    # the fused pass splits rows (forward) and columns (backward) by thread: the results must not depend on it
    x = rng.standard_normal((256, 12)).astype(np.float32)
    weights = []
    for threads in (1, 2, 3):
        with cynet.threads(threads):
            model = _mlp()
            optimizer = cynet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            for step in range(3):
                model.zero_grad()
                model.backward(np.tanh(model(x)))
                optimizer.step()
            weights.append([p.data.copy() for p in model.parameters()])
    for other in weights[1:]:
        for a, b in zip(weights[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("replace", ["float64", "reversed-view"])
def test_a_replaced_bias_array_goes_through_numpy(rng, replace):
    # a bias whose array was swapped for one the kernels do not take (another dtype, a non-contiguous view): NumPy's
    # y += b as before, fused or not, and its gradient still lands in the bias's gradient buffer
    x = rng.standard_normal((5, 4)).astype(np.float32)
    dout = rng.standard_normal((5, 3)).astype(np.float32)
    for fused in (False, True):
        layer = nn.Linear(4, 3, generator=0)
        values = rng.standard_normal(3)
        layer.bias.data = values if replace == "float64" else values.astype(np.float32)[::-1].copy()[::-1]
        want = x @ layer.weight.data.T
        want += layer.bias.data
        model = nn.Sequential(layer, nn.ReLU()) if fused else layer
        y = model(x)
        np.testing.assert_array_equal(y, np.maximum(want, 0) if fused else want)
        model.backward(dout)
        grad = np.where(want > 0, dout, 0) if fused else dout
        np.testing.assert_allclose(layer.bias.grad, grad.sum(axis=0), rtol=1e-6)


def test_the_kernels_refuse_mismatched_lengths_before_touching_memory():
    y = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="bias must have 4 values for y of shape"):
        _act.bias_relu_rows(y, np.zeros(3, np.float32), True, 1)
    for dz_y, db in [((y, y), np.zeros(3, np.float32)), ((y[:2], y), np.zeros(4, np.float32)),
                     ((None, None), np.zeros(4, np.float32))]:
        with pytest.raises(ValueError, match="db must have 4 values and, with the ReLU, y and dz"):
            _act.relu_bias_grad_rows(y, dz_y[0], dz_y[1], db, True, 1)


def test_a_fused_relus_output_changed_before_the_backward_is_refused_as_unfused(rng, monkeypatch):
    # the fused Linear's backward took the changed array as the ReLU's mask: dx off by up to 3, no error; unfused,
    # the ReLU refuses its backward
    import cynet.nn.module as module_file
    x = rng.standard_normal((64, 12)).astype(np.float32)
    for fuse in (True, False):
        monkeypatch.setattr(module_file, "FUSE_LINEAR_RELU", fuse)
        model = nn.Sequential(nn.Linear(12, 40, generator=0), nn.ReLU())
        y = model(x)
        assert (0 in model._fused) == fuse
        y -= 0.5
        with pytest.raises(RuntimeError, match="was modified since that forward"):
            model.backward(np.ones_like(y))


def test_a_method_patched_on_the_class_turns_the_fusion_off(rng):
    # a patch of nn.ReLU.forward (logging, or a leaky variant tried out) was skipped inside a Sequential while fused
    x = rng.standard_normal((8, 12)).astype(np.float32)
    model = nn.Sequential(nn.Linear(12, 6, generator=0), nn.ReLU())
    original = nn.ReLU.forward
    try:
        nn.ReLU.forward = lambda self, x: original(self, x) + 1.0
        y = model(x)
    finally:
        nn.ReLU.forward = original
    plain = np.maximum(x.astype(np.float64) @ model[0].weight.data.T + model[0].bias.data, 0)
    np.testing.assert_allclose(y, plain + 1.0, rtol=1e-6, atol=1e-6)          # the patched forward ran
    np.testing.assert_allclose(model(x), plain, rtol=1e-6, atol=1e-6)          # restored: fused again, plain values


@pytest.mark.parametrize("value, fused", [("0", False), ("false", False), (" Off ", False), ("no", False),
                                          ("1", True), ("", True), ("yes", True)])
def test_the_fusion_switches_read_off_as_every_cynet_switch_does(value, fused):
    # only exactly "0" turned the fusions off: CYNET_FUSE_LINEAR_RELU=false left them on, while CYNET_REUSE_ARRAYS
    # took 0 / false / no / off
    import subprocess
    import sys
    code = ("from cynet.nn import module, _reuse; "
            "print(module.FUSE_LINEAR_RELU, module.FUSE_BATCHNORM_RELU, _reuse.ENABLED)")
    env = {**os.environ, "CYNET_FUSE_LINEAR_RELU": value, "CYNET_FUSE_BATCHNORM_RELU": value,
           "CYNET_REUSE_ARRAYS": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(fused)] * 3
