"""Optimisers (cynet.optim): each rule against a NumPy reference written here (bit for bit), against torch.optim
(float64, several steps), thread-count invariance, frozen parameters, validation, state dicts and resume.

The NumPy reference follows the formulas of PyTorch's single-tensor optimisers, in the parameter's dtype with the
scalars rounded to it, one rounded operation at a time: the fused kernels do the same operations in the same order
(no FMA contraction), so the results must be identical. torch's vectorised CPU kernels use fused multiply-adds in
``add(alpha=)`` and ``lerp``, so against torch the agreement is to an ulp or two of the parameters' scale.
"""
import copy
import io
import json

import numpy as np
import pytest

import cynet
from cynet import nn, optim
from cynet.optim import SGD, AdaGrad, Adam, AdamW, Optimizer, RMSProp

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")

DTYPES = [np.float32, np.float64]
# below the kernels' parallel threshold (32768), odd, and above it (two chunks or more)
SIZES = [1, 7, 1000, 40_001]


# --- the NumPy reference ----------------------------------------------------------------------------------------------
class Reference:
    """The update rules in NumPy, one rounded operation at a time, scalars in the parameter's dtype."""

    def __init__(self, kind, dtype, **settings):
        self.kind, self.dtype, self.s = kind, np.dtype(dtype), settings
        self.state = {}

    def c(self, value):
        return self.dtype.type(value)

    def step(self, p, g, lr):
        """Update ``p`` (an array, in place) from ``g``; the state lives in self.state."""
        c, s, st = self.c, self.s, self.state
        wd = s.get("weight_decay", 1e-2 if self.kind == "adamw" else 0.0)
        d = g.copy()
        if wd != 0 and self.kind != "adamw":
            d = d + c(wd) * p
        if self.kind == "sgd":
            mu, damp = s.get("momentum", 0.0), s.get("dampening", 0.0)
            if mu != 0:
                if "b" not in st:
                    st["b"] = d.copy()
                else:
                    st["b"] = st["b"] * c(mu) + c(1 - damp) * d
                d = d + c(mu) * st["b"] if s.get("nesterov", False) else st["b"]
            p[...] = p + c(-lr) * d
        elif self.kind == "adagrad":
            st["sum"] = st.get("sum", np.zeros_like(p)) + d * d
            p[...] = p + (c(-lr) * d) / (np.sqrt(st["sum"]) + c(s.get("eps", 1e-10)))
        elif self.kind == "rmsprop":
            alpha, mu = s.get("alpha", 0.99), s.get("momentum", 0.0)
            st["v"] = st.get("v", np.zeros_like(p)) * c(alpha) + (c(1 - alpha) * d) * d
            r = np.sqrt(st["v"]) + c(s.get("eps", 1e-8))
            if mu > 0:
                st["b"] = st.get("b", np.zeros_like(p)) * c(mu) + d / r
                p[...] = p + c(-lr) * st["b"]
            else:
                p[...] = p + (c(-lr) * d) / r
        else:  # adam, adamw
            beta1, beta2 = s.get("betas", (0.9, 0.999))
            eps = s.get("eps", 1e-8)
            st["t"] = t = st.get("t", 0) + 1
            x = p
            if self.kind == "adamw" and wd != 0:
                x = p * c(1 - lr * wd)
            m, v = st.get("m", np.zeros_like(p)), st.get("v", np.zeros_like(p))
            w = c(1 - beta1)
            m = m + w * (d - m) if abs(w) < 0.5 else d - (d - m) * (c(1) - w)
            v = v * c(beta2) + (c(1 - beta2) * d) * d
            st["m"], st["v"] = m, v
            bc1, bc2_sqrt = 1 - beta1 ** float(t), (1 - beta2 ** float(t)) ** 0.5
            p[...] = x + (c(-(lr / bc1)) * m) / (np.sqrt(v) / c(bc2_sqrt) + c(eps))


CLASSES = {"sgd": SGD, "adagrad": AdaGrad, "rmsprop": RMSProp, "adam": Adam, "adamw": AdamW}

# (kind, constructor settings); lr is part of the settings
CONFIGS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, weight_decay=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.3)),
    ("adagrad", dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, eps=1e-3, weight_decay=0.02)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.8, weight_decay=0.01)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, betas=(0.3, 0.95), weight_decay=0.1)),     # beta1 < 0.5: the other lerp branch
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2)),
]
CONFIG_IDS = [f"{kind}-" + "-".join(f"{k}={v}" for k, v in s.items()) for kind, s in CONFIGS]


def _param(rng, shape, dtype):
    return nn.Parameter(rng.standard_normal(shape).astype(dtype))


def _grads(rng, shape, dtype, steps):
    return [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]


# --- against the NumPy reference --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,settings", CONFIGS, ids=CONFIG_IDS)
def test_matches_numpy_reference_bit_for_bit(kind, settings, dtype, size, rng):
    param = _param(rng, (size,), dtype)
    expected = param.data.copy()
    opt = CLASSES[kind]([param], **settings)
    ref = Reference(kind, dtype, **{k: v for k, v in settings.items() if k != "lr"})
    for g in _grads(rng, (size,), dtype, 4):
        param.grad = g
        opt.step()
        ref.step(expected, g, settings["lr"])
        assert param.data.dtype == dtype
        np.testing.assert_array_equal(param.data, expected)


def test_multidimensional_parameters_of_a_model_and_lr_changes_between_steps(rng):
    """Every parameter of a real model is updated (flattened views), with the lr read at each step."""
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    params = model.parameters()
    expected = [p.data.copy() for p in params]
    refs = [Reference("adam", np.float32, weight_decay=0.01) for _ in params]
    opt = Adam(params, lr=0.01, weight_decay=0.01)
    for lr in (0.01, 0.003, 0.02):
        opt.lr = lr
        out = model(rng.standard_normal((6, 5)).astype(np.float32))
        model.zero_grad()
        model.backward(np.ones_like(out))
        grads = [p.grad.copy() for p in params]
        opt.step()
        for ref, e, g in zip(refs, expected, grads):
            ref.step(e, g, lr)
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p.data, e)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_zero_d_and_empty_parameters(kind, rng):
    scalar = nn.Parameter(np.array(1.5))
    empty = nn.Parameter(np.zeros((0, 3)))
    opt = CLASSES[kind]([scalar, empty], lr=0.1)
    scalar.grad = np.array(0.5)
    ref, expected = Reference(kind, np.float64), np.array([1.5])
    opt.step()
    ref.step(expected, np.array([0.5]), 0.1)
    assert scalar.data.shape == () and empty.data.shape == (0, 3)
    assert scalar.data == expected[0]


# --- against torch.optim ----------------------------------------------------------------------------------------------
def _torch_optimizer(kind, params, settings):
    cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
           "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    return cls(params, **settings)


TORCH_STATE = {"momentum_buffer": "momentum_buffer", "sum": "sum", "square_avg": "square_avg",
               "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


@needs_torch
@pytest.mark.parametrize("kind,settings", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_float64_step_for_step(kind, settings, rng):
    """A small MLP's parameters, 6 steps with fresh gradients, lr changed half-way: parameters and state."""
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 40_000 // 5)).to(np.float64)
    params = model.parameters()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = CLASSES[kind](params, **settings)
    topt = _torch_optimizer(kind, tparams, settings)
    for step in range(6):
        if step == 3:
            opt.lr = settings["lr"] / 2
            for group in topt.param_groups:
                group["lr"] = settings["lr"] / 2
        for p, t in zip(params, tparams):
            g = rng.standard_normal(p.shape)
            p.grad = g
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, t in zip(params, tparams):
            theirs = t.detach().numpy()
            # an ulp or two of the parameters' scale: torch's add(alpha=) and lerp use fused multiply-adds
            np.testing.assert_allclose(p.data, theirs, rtol=1e-13, atol=1e-14 * np.abs(theirs).max())
    for index, t in enumerate(tparams):
        for key, tkey in TORCH_STATE.items():
            if key in opt.state[index]:
                theirs = topt.state[t][tkey].numpy()
                np.testing.assert_allclose(opt.state[index][key].reshape(theirs.shape), theirs, rtol=1e-13,
                                           atol=1e-14 * max(np.abs(theirs).max(), 1e-300))
        if "step" in opt.state[index]:
            assert opt.state[index]["step"] == int(topt.state[t]["step"]) == 6


@needs_torch
@pytest.mark.parametrize("kind,settings", [CONFIGS[3], CONFIGS[8], CONFIGS[10], CONFIGS[12]],
                         ids=[CONFIG_IDS[3], CONFIG_IDS[8], CONFIG_IDS[10], CONFIG_IDS[12]])
def test_matches_torch_float32_to_an_ulp(kind, settings, rng):
    p = _param(rng, (5000,), np.float32)
    t = torch.tensor(p.data.copy(), requires_grad=True)
    opt, topt = CLASSES[kind]([p], **settings), _torch_optimizer(kind, [t], settings)
    for g in _grads(rng, (5000,), np.float32, 5):
        p.grad = g
        t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    theirs = t.detach().numpy()
    np.testing.assert_allclose(p.data, theirs, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(theirs).max())


@needs_torch
def test_frozen_then_unfrozen_parameter_keeps_its_own_step_count_like_torch(rng):
    """A parameter frozen for two steps (torch: grad None) starts its bias correction at its own first step."""
    a, b = _param(rng, (30,), np.float64), _param(rng, (20,), np.float64)
    ta, tb = (torch.tensor(p.data.copy(), requires_grad=True) for p in (a, b))
    opt, topt = Adam([a, b], lr=0.05), torch.optim.Adam([ta, tb], lr=0.05)
    b.requires_grad = False
    for step in range(5):
        if step == 2:
            b.requires_grad = True
        ga, gb = rng.standard_normal(30), rng.standard_normal(20)
        a.grad, ta.grad = ga, torch.tensor(ga)
        b.grad = gb
        tb.grad = torch.tensor(gb) if b.requires_grad else None
        opt.step()
        topt.step()
    assert opt.state[1]["step"] == 3 and opt.state[0]["step"] == 5
    np.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(a.data, ta.detach().numpy(), rtol=1e-13, atol=1e-14)


# --- threads ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,settings", [CONFIGS[3], CONFIGS[6], CONFIGS[8], CONFIGS[10], CONFIGS[12]],
                         ids=[CONFIG_IDS[3], CONFIG_IDS[6], CONFIG_IDS[8], CONFIG_IDS[10], CONFIG_IDS[12]])
def test_thread_count_does_not_change_a_bit(kind, settings, dtype, rng):
    size = 100_003  # several parallel chunks, a ragged last one
    start = rng.standard_normal(size).astype(dtype)
    grads = _grads(rng, (size,), dtype, 3)
    results = []
    for n in (1, 2, 3):
        param = nn.Parameter(start)
        opt = CLASSES[kind]([param], **settings)
        with cynet.threads(n):
            for g in grads:
                param.grad = g
                opt.step()
        results.append(param.data)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("kind,settings", [CONFIGS[3], CONFIGS[6], CONFIGS[8], CONFIGS[10], CONFIGS[12]],
                         ids=[CONFIG_IDS[3], CONFIG_IDS[6], CONFIG_IDS[8], CONFIG_IDS[10], CONFIG_IDS[12]])
def test_every_start_within_a_cache_line_gives_the_reference_bits(kind, settings, rng):
    # the kernels run a parameter's values before its first 64-byte line apart from the rest (so that the vector
    # loops store whole lines): every float32 start within a line, a short parameter and a chunked one, one and two
    # threads, against the NumPy reference
    dtype = np.float32
    for size in (5, 40_001):
        start = rng.standard_normal(size).astype(dtype)
        grads = _grads(rng, (size,), dtype, 2)
        for offset in range(16):
            for threads in (1, 2):
                param = nn.Parameter(start)
                buffer = np.empty(size + 32, dtype)
                first = (-buffer.ctypes.data % 64) // 4             # the first item on a line
                param.data = buffer[first + offset:first + offset + size]
                param.data[...] = start
                assert param.data.ctypes.data % 64 == 4 * offset
                opt = CLASSES[kind]([param], **settings)
                expected = start.copy()
                ref = Reference(kind, dtype, **{k: v for k, v in settings.items() if k != "lr"})
                with cynet.threads(threads):
                    for g in grads:
                        param.grad = g
                        opt.step()
                        ref.step(expected, g, settings["lr"])
                np.testing.assert_array_equal(param.data, expected, err_msg=f"offset {offset}, {threads} threads")


# --- frozen parameters, zero_grad -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,settings", CONFIGS, ids=CONFIG_IDS)
def test_frozen_parameters_are_untouched(kind, settings, rng):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[0].freeze()
    frozen = [p.data.copy() for p in model[0].parameters()]
    learning = [p.data.copy() for p in model[2].parameters()]
    opt = CLASSES[kind](model.parameters(), **settings)
    for _ in range(3):
        for p in model.parameters():
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
    for p, before in zip(model[0].parameters(), frozen):
        np.testing.assert_array_equal(p.data, before)
        assert p.data.tobytes() == before.tobytes()
    assert opt.state[0] == {} and opt.state[1] == {}
    assert all(not np.array_equal(p.data, before) for p, before in zip(model[2].parameters(), learning))


def test_zero_grad_resets_every_gradient(rng):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = SGD(model.parameters(), lr=0.1)
    out = model(rng.standard_normal((5, 4)).astype(np.float32))
    model.backward(np.ones_like(out))
    assert any(np.abs(p.grad).sum() > 0 for p in model.parameters())
    opt.zero_grad()
    assert all(np.abs(p.grad).sum() == 0 for p in model.parameters())


@pytest.mark.parametrize("kind,settings", [
    ("sgd", dict(lr=0.1, momentum=0.9)), ("adagrad", dict(lr=0.5)), ("rmsprop", dict(lr=0.01)),
    ("adam", dict(lr=0.05)), ("adamw", dict(lr=0.05, weight_decay=0.0)),
])
def test_minimises_a_quadratic(kind, settings, rng):
    """f(p) = 0.5 * sum(a * (p - target)^2): every rule drives the loss down by orders of magnitude."""
    target = rng.standard_normal(50)
    scale = rng.uniform(0.5, 2.0, 50)
    param = nn.Parameter(np.zeros(50))
    opt = CLASSES[kind]([param], **settings)

    def loss():
        return 0.5 * float(np.sum(scale * (param.data - target) ** 2))

    start = loss()
    for _ in range(400):
        opt.zero_grad()
        param.accumulate(scale * (param.data - target))
        opt.step()
    assert loss() < 1e-3 * start


# --- validation -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda p: SGD(p, lr=-1.0), "SGD: invalid learning rate: -1.0"),
    (lambda p: SGD(p, lr=float("nan")), "SGD: invalid learning rate: nan"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.1), "SGD: invalid momentum value: -0.1"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1), "SGD: invalid weight_decay value: -1"),
    (lambda p: SGD(p, lr=0.1, nesterov=True), "SGD: Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), "Nesterov momentum requires"),
    (lambda p: AdaGrad(p, eps=-1e-10), "AdaGrad: invalid epsilon value: -1e-10"),
    (lambda p: RMSProp(p, alpha=1.5), "RMSProp: invalid alpha value: 1.5"),
    (lambda p: RMSProp(p, momentum=-1), "RMSProp: invalid momentum value: -1"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), "Adam: invalid beta parameter at index 0: 1.0"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), "Adam: invalid beta parameter at index 1: -0.1"),
    (lambda p: Adam(p, betas=0.9), "Adam: betas must be a pair of floats"),
    (lambda p: Adam(p, eps=-1.0), "Adam: invalid epsilon value: -1.0"),
    (lambda p: AdamW(p, weight_decay=-0.01), "AdamW: invalid weight_decay value: -0.01"),
    (lambda p: AdamW(p, lr=float("inf")), "AdamW: invalid learning rate: inf"),
])
def test_invalid_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make([nn.Parameter(np.zeros(3))])


def test_invalid_params_are_refused():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"Adam: params\[1\] is not a cynet.nn.Parameter but a ndarray"):
        Adam([model.weight, np.zeros(3)])
    with pytest.raises(TypeError, match="not named_parameters"):
        Adam(model.named_parameters())
    # SGD(model): a Sequential iterates over its layers, and the message was "params[0] is not a
    # cynet.nn.Parameter but a Linear"
    for module in (nn.Sequential(model, nn.ReLU()), model):
        with pytest.raises(TypeError, match=rf"SGD: params must be the model's parameters, got the module "
                                            rf"{type(module).__name__} itself; pass model.parameters\(\)"):
            SGD(module, lr=0.1)
    with pytest.raises(TypeError, match="got a single Parameter"):
        Adam(model.weight)
    with pytest.raises(TypeError, match="iterable of Parameter"):
        Adam(3)
    with pytest.raises(ValueError, match=r"params\[1\] appears more than once"):
        Adam([model.weight, model.weight])
    assert len(Adam(p for p in model.parameters()).params) == 2  # any iterable, generators included


def test_lr_is_a_validated_float_attribute():
    opt = SGD([nn.Parameter(np.zeros(3))], lr=1)
    assert opt.lr == 1.0 and isinstance(opt.lr, float)
    opt.lr = 0.25
    assert opt.lr == 0.25
    with pytest.raises(ValueError, match="SGD: invalid learning rate: -0.5"):
        opt.lr = -0.5
    assert opt.lr == 0.25


# (constructor with the bad value, a valid optimiser, the setting, the bad value): assigning the value later must be
# refused with the constructor's own message
LATE_SETTINGS = [
    (lambda p: SGD(p, lr=0.1, momentum=-5), lambda p: SGD(p, lr=0.1, momentum=0.9), "momentum", -5),
    (lambda p: SGD(p, lr=0.1, momentum=float("nan")), lambda p: SGD(p, lr=0.1), "momentum", float("nan")),
    (lambda p: SGD(p, lr=0.1, nesterov="yes"), lambda p: SGD(p, lr=0.1, momentum=0.9), "nesterov", "yes"),
    (lambda p: SGD(p, lr=0.1, nesterov=True), lambda p: SGD(p, lr=0.1), "nesterov", True),
    (lambda p: SGD(p, lr=0.1, momentum=0, nesterov=True), lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
     "momentum", 0),
    (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, dampening=0.5),
     lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True), "dampening", 0.5),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1e-4), lambda p: SGD(p, lr=0.1), "weight_decay", -1e-4),
    (lambda p: SGD(p, lr=0.1, dampening=float("inf")), lambda p: SGD(p, lr=0.1), "dampening", float("inf")),
    (lambda p: AdaGrad(p, eps=-1.0), lambda p: AdaGrad(p), "eps", -1.0),
    (lambda p: AdaGrad(p, weight_decay="0.1"), lambda p: AdaGrad(p), "weight_decay", "0.1"),
    (lambda p: RMSProp(p, alpha=1.5), lambda p: RMSProp(p), "alpha", 1.5),
    (lambda p: RMSProp(p, momentum=-1), lambda p: RMSProp(p), "momentum", -1),
    (lambda p: Adam(p, betas=(1.0, 0.999)), lambda p: Adam(p), "beta1", 1.0),
    (lambda p: Adam(p, betas=(0.9, 1.0)), lambda p: Adam(p), "beta2", 1.0),
    (lambda p: Adam(p, betas=(0.9, -0.1)), lambda p: Adam(p), "beta2", -0.1),
    (lambda p: Adam(p, eps=-1e-8), lambda p: Adam(p), "eps", -1e-8),
    (lambda p: AdamW(p, weight_decay=-0.01), lambda p: AdamW(p), "weight_decay", -0.01),
    (lambda p: AdamW(p, betas=(0.9, 1.0)), lambda p: AdamW(p), "betas", (0.5, 1.0)),
    (lambda p: Adam(p, betas=0.9), lambda p: Adam(p), "betas", 0.9),
]


@pytest.mark.parametrize("construct,make,name,value", LATE_SETTINGS,
                         ids=[f"{i}-{case[2]}={case[3]!r}" for i, case in enumerate(LATE_SETTINGS)])
def test_settings_assigned_after_construction_are_checked_like_the_constructors(construct, make, name, value):
    with pytest.raises(ValueError) as from_constructor:
        construct([nn.Parameter(np.zeros(3))])
    opt = make([nn.Parameter(np.zeros(3))])
    before = {key: getattr(opt, key) for key in opt._hyperparameters}
    with pytest.raises(ValueError) as from_assignment:
        setattr(opt, name, value)
    assert str(from_assignment.value) == str(from_constructor.value)
    assert {key: getattr(opt, key) for key in opt._hyperparameters} == before     # the old values stay


def test_refused_adam_beta_leaves_the_weights_finite(rng):
    """The reported failure: beta1 = 1 set after construction made the bias correction 0 and the weights NaN."""
    param = _param(rng, (5,), np.float32)
    opt = Adam([param])
    with pytest.raises(ValueError, match="Adam: invalid beta parameter at index 0: 1.0"):
        opt.beta1 = 1.0
    param.grad = np.ones(5, np.float32)
    opt.step()
    assert np.all(np.isfinite(param.data))


def test_valid_late_settings_are_normalised_and_used(rng):
    opt = SGD([nn.Parameter(np.zeros(3))], lr=0.1)
    opt.momentum = 1
    opt.nesterov = np.bool_(True)
    assert opt.momentum == 1.0 and isinstance(opt.momentum, float) and opt.nesterov is True
    opt.nesterov = False
    opt.momentum = 0                       # allowed once Nesterov momentum is off
    assert (opt.momentum, opt.nesterov) == (0.0, False)

    # a changed setting takes effect at the next step, as if given to the constructor
    grads = _grads(rng, (6,), np.float64, 3)
    late = _param(rng, (6,), np.float64)
    direct = nn.Parameter(late.data.copy())
    late_opt, direct_opt = Adam([late], lr=0.01), Adam([direct], lr=0.01, betas=(0.5, 0.9), eps=1e-3)
    late_opt.betas = (0.5, 0.9)
    late_opt.eps = 1e-3
    assert late_opt.betas == (0.5, 0.9)
    for g in grads:
        late.grad, direct.grad = g, g
        late_opt.step()
        direct_opt.step()
    np.testing.assert_array_equal(late.data, direct.data)


def test_mismatched_dtypes_or_layouts_raise_instead_of_crashing(rng):
    param = nn.Parameter(np.ones(6, np.float32))
    opt = Adam([param])
    param.data = np.ones(6)  # float64 data replaced by hand: the gradient follows (a float64 zero buffer)
    assert param.grad.dtype == np.float64 and param.grad.shape == (6,) and not param.grad.any()
    param._grad = np.zeros(6, np.float32)  # a gradient that does not match, forced past the data's setter
    with pytest.raises(TypeError, match=r"Adam.step: params\[0\]: gradient \(float32 array of shape \(6,\)\) does "
                                        r"not match the data \(float64 array of shape \(6,\)\)"):
        opt.step()
    param.data = np.ones(12, np.float32)[::2]
    with pytest.raises(ValueError, match="must be C-contiguous"):
        opt.step()
    with pytest.raises(TypeError, match="data must be floating point"):
        param.data = np.ones(6, np.int64)
    readonly = np.ones(6, np.float32)
    readonly.setflags(write=False)
    param.data = readonly
    with pytest.raises(ValueError, match="read-only"):
        opt.step()


def test_changing_the_model_dtype_after_the_first_step_is_reported(rng):
    model = nn.Linear(3, 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    model.to(np.float64)
    for p in model.parameters():
        p.grad = np.ones(p.shape)
    with pytest.raises(TypeError, match="state 'momentum_buffer'.*create a new optimiser"):
        opt.step()


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p, lr=0.1),
                                  lambda p: AdamW(p, lr=0.1), lambda p: RMSProp(p, lr=0.1),
                                  lambda p: AdaGrad(p, lr=0.1)])
def test_a_step_refused_for_a_part_cast_since_changes_nothing(make):
    # an optimiser over an encoder and a head, the head cast with .double() after two steps: the refused step had
    # already moved the encoder's weights by 0.1 (Adam) and counted its step (2 -> 3), step_count staying at 2
    encoder, head = nn.Linear(4, 4, generator=0), nn.Linear(4, 2, generator=1)
    opt = make(encoder.parameters() + head.parameters())
    for _ in range(2):
        for p in opt.params:
            p.grad = np.full(p.shape, 0.5, p.data.dtype)
        opt.step()
    head.double()
    for p in head.parameters():
        p.grad = np.full(p.shape, 0.5)
    before = copy.deepcopy(([p.data for p in opt.params], opt.state_dict()))
    with pytest.raises(TypeError, match=r"params\[2\].*create a new optimiser"):
        opt.step()
    for p, saved in zip(opt.params, before[0]):
        np.testing.assert_array_equal(p.data, saved.astype(p.data.dtype))
    after = opt.state_dict()
    assert after.keys() == before[1].keys() and opt.step_count == 2
    for key, value in before[1].items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_kernels_check_lengths_themselves():
    from cynet._kernels import load

    k = load("optim")
    p, g = np.zeros(4), np.zeros(5)
    with pytest.raises(ValueError, match="grad has 5 elements, the parameter 4"):
        k.sgd_update(p, g, p, 0.1, 0.0, 0.0, 0.0, False, False, 1)
    with pytest.raises(ValueError, match="exp_avg_sq has 3 elements"):
        k.adam_update(p, np.zeros(4), np.zeros(4), np.zeros(3), 0.1, 0.9, 0.99, 1e-8, 0.0, False, 0.1, 0.1, 1)
    with pytest.raises((TypeError, ValueError), match="dtype"):  # mixed dtypes match no specialisation
        k.adagrad_update(p, np.zeros(4, np.float32), np.zeros(4), 0.1, 1e-10, 0.0, 1)


# --- state dicts ------------------------------------------------------------------------------------------------------
def _trained(kind, settings, rng, steps, dtype=np.float32):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to(dtype)
    opt = CLASSES[kind](model.parameters(), **settings)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in model.parameters()] for _ in range(steps)]
    return model, opt, grads


def _run(model, opt, grads):
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("kind,settings", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_is_flat_json_friendly_and_resumes_bit_identically(kind, settings, rng):
    model, opt, grads = _trained(kind, settings, rng, 6)
    resumed_model = copy.deepcopy(model)
    _run(model, opt, grads)  # the uninterrupted run

    first = CLASSES[kind](resumed_model.parameters(), **settings)
    _run(resumed_model, first, grads[:3])
    state = first.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)}))
    assert all(isinstance(k, str) for k in state)
    assert scalars["type"] == CLASSES[kind].__name__ and scalars["step"] == 3 and scalars["lr"] == settings["lr"]
    for key, value in arrays.items():
        index = int(key.split(".")[1])
        assert key.startswith("state.") and value.shape == resumed_model.parameters()[index].shape

    # a fresh optimiser (other settings, which the state overrides) continues exactly
    second = CLASSES[kind](resumed_model.parameters(), lr=0.5)
    second.load_state_dict({**arrays, **scalars})
    assert second.step_count == 3
    _run(resumed_model, second, grads[3:])
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_contents_and_copies(rng):
    model, opt, grads = _trained("adam", dict(lr=0.01), rng, 2)
    _run(model, opt, grads)
    state = opt.state_dict()
    assert {k for k in state if not k.startswith("state.")} == {
        "type", "lr", "beta1", "beta2", "eps", "weight_decay", "step", "n_params"}
    assert sorted(k for k in state if k.startswith("state.0.")) == [
        "state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"]
    assert state["state.0.step"] == 2 and state["state.0.exp_avg"].dtype == np.float32
    state["state.0.exp_avg"][...] = 123  # a copy: the optimiser's own state is unchanged
    assert not np.any(opt.state[0]["exp_avg"] == 123)
    sgd = SGD(model.parameters(), lr=0.1)
    assert set(sgd.state_dict()) == {"type", "lr", "momentum", "nesterov", "weight_decay", "dampening", "step",
                                     "n_params"}


def test_load_state_dict_casts_to_the_parameter_dtype(rng):
    model, opt, grads = _trained("sgd", dict(lr=0.1, momentum=0.9), rng, 2, dtype=np.float64)
    _run(model, opt, grads)
    state = opt.state_dict()
    model32 = copy.deepcopy(model).to(np.float32)
    opt32 = SGD(model32.parameters(), lr=0.1, momentum=0.9)
    opt32.load_state_dict(state)
    assert opt32.state[0]["momentum_buffer"].dtype == np.float32
    np.testing.assert_array_equal(opt32.state[0]["momentum_buffer"],
                                  state["state.0.momentum_buffer"].astype(np.float32).ravel())


def test_load_state_dict_of_pytorch_format_names_it(rng):
    # PyTorch's nested {"state": ..., "param_groups": [...]} (no "type" key) was refused as "the state is of a None
    # optimiser, not 'Adam'": a reader porting a checkpoint could not tell what was wrong
    model, opt, _ = _trained("adam", dict(lr=0.01), rng, 1)
    torch_format = {"state": {}, "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1, 2, 3]}]}
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: the state has no 'type' key \(keys \['param_groups', "
                                         r"'state'\]\): not a cynet Adam.state_dict\(\); it looks like a PyTorch"):
        opt.load_state_dict(torch_format)
    with pytest.raises(ValueError, match=r"no 'type' key \(keys \['lr'\]\): not a cynet Adam.state_dict\(\)$"):
        opt.load_state_dict({"lr": 0.1})
    assert opt.step_count == 0 and opt.lr == 0.01


def test_load_state_dict_errors(rng):
    model, opt, grads = _trained("adam", dict(lr=0.01), rng, 1)
    _run(model, opt, grads)
    good = opt.state_dict()
    other = Adam(model.parameters())
    with pytest.raises(ValueError, match="state is of a 'SGD' optimiser, not 'Adam'"):
        other.load_state_dict(SGD(model.parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="holds 4 parameters, this optimiser has 2"):
        Adam(model.parameters()[:2]).load_state_dict(good)
    with pytest.raises(KeyError, match=r"missing keys \['beta2'\]"):
        other.load_state_dict({k: v for k, v in good.items() if k != "beta2"})
    with pytest.raises(KeyError, match=r"unexpected keys \['state.9.exp_avg', 'state.0.momentum_buffer'\]"):
        other.load_state_dict({**good, "state.9.exp_avg": np.zeros(3), "state.0.momentum_buffer": np.zeros(3)})
    with pytest.raises(ValueError, match=r"state.1.exp_avg: expected shape \(3,\), got \(4,\)"):
        other.load_state_dict({**good, "state.1.exp_avg": np.zeros(4)})
    with pytest.raises(KeyError, match=r"parameter 0 .* lacks \['state.0.exp_avg_sq'\]"):
        other.load_state_dict({k: v for k, v in good.items() if k != "state.0.exp_avg_sq"})
    with pytest.raises(ValueError, match="invalid beta parameter at index 0: 1.5"):
        other.load_state_dict({**good, "beta1": 1.5})
    with pytest.raises(ValueError, match="state.0.step: expected a non-negative int"):
        other.load_state_dict({**good, "state.0.step": -1})
    with pytest.raises(TypeError, match="expected a dict"):
        other.load_state_dict([1, 2])
    # nothing of the failed loads stuck
    assert other.step_count == 0 and all(s == {} for s in other.state) and other.beta1 == 0.9


# --- snapshots ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,settings", CONFIGS, ids=CONFIG_IDS)
def test_restore_puts_back_the_state_of_the_snapshot_and_the_run_continues_exactly(kind, settings, rng):
    model, opt, grads = _trained(kind, settings, rng, 5)
    reference = copy.deepcopy(model)
    reference_opt = CLASSES[kind](reference.parameters(), **settings)
    _run(reference, reference_opt, grads[:2] + grads[4:])       # never took steps 3 and 4

    _run(model, opt, grads[:2])
    expected = opt.state_dict()
    weights = [p.data.copy() for p in model.parameters()]
    saved = opt.snapshot()
    _run(model, opt, grads[2:4])
    opt.lr = 0.5
    for p, w in zip(model.parameters(), weights):
        p.data[...] = w                                         # the trainer puts the weights back itself
    opt.restore(saved)
    got = opt.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    _run(model, opt, grads[4:])
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_snapshot_reuses_its_arrays_covers_frozen_parameters_and_restores_no_state(rng):
    model, opt, grads = _trained("adam", dict(lr=0.01), rng, 3)
    fresh = opt.snapshot()                                      # before the first step: no state at all
    _run(model, opt, grads[:1])
    saved = opt.snapshot()
    arrays = [saved["state"][i]["exp_avg"] for i in range(4)]
    model[0].weight.requires_grad = False
    _run(model, opt, grads[1:2])
    assert opt.snapshot(out=saved) is saved
    assert all(saved["state"][i]["exp_avg"] is arrays[i] for i in range(4))   # overwritten in place
    frozen_state = opt.state[0]["exp_avg"].copy()
    _run(model, opt, grads[2:])
    opt.restore(saved)
    assert opt.state[0]["step"] == 1 and opt.state[1]["step"] == 2 and opt.step_count == 2
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], frozen_state)  # frozen all along: as it was
    opt.restore(fresh)
    assert opt.step_count == 0 and opt.state == [{}, {}, {}, {}]
    with pytest.raises(ValueError, match="the snapshot holds 4 parameters, this optimiser has 2"):
        Adam(model.parameters()[:2]).restore(saved)


def test_restore_undoes_the_steps_of_a_parameter_unfrozen_after_the_snapshot(rng):
    """A parameter frozen when the snapshot was taken and unfrozen before the restore kept the moments and step
    count of the steps it took in between (the snapshot skipped frozen parameters)."""
    model, opt, grads = _trained("adam", dict(lr=0.01), rng, 3)
    model[0].weight.requires_grad = False
    _run(model, opt, grads[:1])
    saved = opt.snapshot()
    model[0].weight.requires_grad = True
    _run(model, opt, grads[1:])
    assert opt.state[0]["step"] == 2
    opt.restore(saved)
    assert opt.state[0] == {} and opt.state[1]["step"] == 1         # "no state yet", as at the snapshot


def test_optimizer_base_class_and_repr():
    param = nn.Parameter(np.zeros(2))
    assert issubclass(AdamW, Adam) and issubclass(Adam, Optimizer)
    assert "SGD(1 parameters, lr=0.1, momentum=0.9" in repr(SGD([param], lr=0.1, momentum=0.9))
    assert optim.AdamW([param]).weight_decay == 1e-2 and optim.AdamW([param]).betas == (0.9, 0.999)
    with pytest.raises(NotImplementedError):
        Optimizer([param], lr=0.1).step()


@pytest.mark.parametrize("replacement", ["2-d", "strided", "read-only"])
def test_a_state_buffer_replaced_by_hand_is_refused_with_its_name(replacement):
    param = nn.Parameter(np.ones(6, np.float32))
    opt = SGD([param], lr=0.1, momentum=0.9)
    param.grad = np.ones(6, np.float32)
    opt.step()
    buffer = {"2-d": np.zeros((2, 3), np.float32), "strided": np.zeros(12, np.float32)[::2],
              "read-only": np.zeros(6, np.float32)}[replacement]
    if replacement == "read-only":
        buffer.setflags(write=False)
    opt.state[0]["momentum_buffer"] = buffer
    with pytest.raises(ValueError, match="state 'momentum_buffer' must be a flat, C-contiguous, writable array"):
        opt.step()


def test_settings_after_momentum_and_adagrads_eps_are_keyword_only():
    # torch's positional orders differ (SGD: lr, momentum, dampening, weight_decay, nesterov; Adagrad: lr, lr_decay,
    # ...): a call ported positionally failed late (SGD: "nesterov must be a bool, got 0") or silently ran with
    # AdaGrad eps=0 (NaN weights from dead units); it is now a TypeError at once
    params = nn.Linear(3, 2).parameters()
    with pytest.raises(TypeError, match="positional"):
        SGD(params, 0.1, 0.9, 0, 5e-4)
    with pytest.raises(TypeError, match="positional"):
        AdaGrad(params, 0.01, 0)
    opt = SGD(params, 0.1, 0.9, nesterov=True, weight_decay=5e-4)
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == (0.1, 0.9, True, 5e-4)


def test_torch_spellings_and_settings_read_back_as_0d_arrays():
    assert optim.Adagrad is AdaGrad and optim.RMSprop is RMSProp
    opt = SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    saved = np.load(_npz_round_trip({"lr": 0.25, "momentum": 0.5}))   # np.savez gives 0-d arrays back
    opt.param_groups[0]["lr"] = saved["lr"]
    opt.momentum = saved["momentum"]
    assert (opt.lr, opt.momentum) == (0.25, 0.5) and type(opt.param_groups[0]["lr"]) is float
    with pytest.raises(ValueError, match="invalid learning rate"):
        opt.param_groups[0]["lr"] = np.array([0.1])                   # not a scalar: still refused


def _npz_round_trip(values):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **values)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: Adam(ps, lr=0.01)], ids=["sgd-nesterov", "adam"])
def test_a_state_dict_read_back_from_npz_loads_and_continues_exactly(make):
    """np.savez/np.load hands every scalar back as a 0-d array: the rate was taken that way, the Nesterov flag
    (a 0-d bool) and the step counts (0-d ints) were refused."""
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(3) for _ in range(4)]
    ours, theirs = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))
    opt, other = make([ours]), make([theirs])
    for g in grads[:2]:
        ours.grad = g.copy()
        opt.step()
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in opt.state_dict().items()})
    buffer.seek(0)
    other.load_state_dict(dict(np.load(buffer, allow_pickle=False)))
    np.copyto(theirs.data, ours.data)
    for g in grads[2:]:
        ours.grad, theirs.grad = g.copy(), g.copy()
        opt.step()
        other.step()
    np.testing.assert_array_equal(theirs.data, ours.data)
    assert other.state_dict().keys() == opt.state_dict().keys()
    assert all(type(value) is not np.ndarray or value.ndim for value in other.state_dict().values())


# lr="0.1" (a rate read from a config file or the command line) was refused with "invalid learning rate: 0.1", which
# reads as a valid rate: the value is shown as its repr, with its type.
def test_a_learning_rate_that_is_not_a_number_is_shown_as_what_it_is():
    with pytest.raises(ValueError, match=r"^SGD: invalid learning rate: '0.1' \(str; lr must be a number >= 0\)"):
        SGD(nn.Linear(3, 2).parameters(), lr="0.1")
    with pytest.raises(ValueError, match=r"^Adam: invalid learning rate: None \(NoneType"):
        optim.Adam(nn.Linear(3, 2).parameters(), lr=None)
