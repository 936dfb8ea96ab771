"""Learning-rate schedules (cynet.optim.lr_scheduler): hand-computed values, torch.optim.lr_scheduler over 30+ steps
(its recursive step() and its closed forms), ReduceLROnPlateau on scripted metrics, state dicts and resume, validation.
"""
import json
import math
import warnings

import numpy as np
import pytest

from cynet import nn, optim
from cynet.optim import lr_scheduler as sched
from cynet.optim.lr_scheduler import (
    CosineAnnealingLR, CosineAnnealingWarmRestarts, ExponentialLR, InverseSqrtLR, InverseTimeLR, LinearLR, LinearWarmup,
    LRScheduler, MultiStepLR, PolynomialLR, ReduceLROnPlateau, StepLR,
)

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")
BASE_LR = 0.5


def make_optimizer(lr=BASE_LR):
    return optim.SGD([nn.Parameter(np.zeros(3))], lr=lr, momentum=0.9)


def trajectory(scheduler, steps):
    """[lr at epoch 0, ..., lr at epoch steps], checking that the optimiser's lr follows."""
    lrs = [scheduler.get_last_lr()]
    for _ in range(steps):
        scheduler.step()
        assert scheduler.optimizer.lr == scheduler.get_last_lr()
        lrs.append(scheduler.get_last_lr())
    return lrs


# --- closed forms, by hand --------------------------------------------------------------------------------------------
def test_step_lr():
    s = StepLR(make_optimizer(), step_size=3, gamma=0.5)
    assert s.last_epoch == 0 and isinstance(s.get_last_lr(), float)
    assert trajectory(s, 7) == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125]
    assert s.last_epoch == 7


def test_multistep_lr_counts_repeated_milestones_twice():
    s = MultiStepLR(make_optimizer(), milestones=[4, 2, 4], gamma=0.5)
    assert trajectory(s, 5) == [0.5, 0.5, 0.25, 0.25, 0.0625, 0.0625]


def test_exponential_lr():
    s = ExponentialLR(make_optimizer(), gamma=0.5)
    assert trajectory(s, 3) == [0.5, 0.25, 0.125, 0.0625]


def test_inverse_time_lr_is_the_cs231n_one_over_t_decay():
    s = InverseTimeLR(make_optimizer(), decay_rate=0.5)
    assert trajectory(s, 4) == [0.5 / (1 + 0.5 * t) for t in range(5)] == [0.5, 1 / 3, 0.25, 0.2, 0.5 / 3]


def test_cosine_annealing_lr():
    s = CosineAnnealingLR(make_optimizer(), T_max=4, eta_min=0.1)
    expected = [0.1 + 0.4 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(9)]
    np.testing.assert_allclose(trajectory(s, 8), expected, rtol=1e-15)
    assert s.lr_at(2) == pytest.approx(0.3) and s.lr_at(4) == 0.1 and s.lr_at(8) == pytest.approx(0.5)


def test_inverse_sqrt_lr():
    s = InverseSqrtLR(make_optimizer(), decay_rate=0.25)
    np.testing.assert_allclose(trajectory(s, 5), [0.5 / math.sqrt(1 + 0.25 * t) for t in range(6)], rtol=1e-15)
    assert s.lr_at(12) == 0.25
    # after a warm-up of W epochs with k = 1 / W: the Transformer's eta_0 sqrt(W / t) from epoch W on
    opt = make_optimizer(1.0)
    warm = LinearWarmup(opt, 4, after=InverseSqrtLR(opt, decay_rate=1 / 4))
    lrs = trajectory(warm, 16)
    assert lrs[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(lrs[4:], [math.sqrt(4 / t) for t in range(4, 17)], rtol=1e-15)


def test_linear_and_polynomial_decay():
    s = LinearLR(make_optimizer(), start_factor=1.0, end_factor=0.0, total_iters=4)
    assert trajectory(s, 6) == [0.5, 0.375, 0.25, 0.125, 0.0, 0.0, 0.0]
    s = LinearLR(make_optimizer())  # PyTorch's defaults: 1/3 -> 1 over 5 epochs
    np.testing.assert_allclose(trajectory(s, 6), [0.5 * (1 / 3 + (2 / 3) * min(t, 5) / 5) for t in range(7)],
                               rtol=1e-15)
    s = PolynomialLR(make_optimizer(), total_iters=4, power=2.0)
    assert trajectory(s, 5) == [0.5, 0.28125, 0.125, 0.03125, 0.0, 0.0]
    assert PolynomialLR(make_optimizer(), total_iters=4).lr_at(1) == 0.375   # power 1: linear


def test_cosine_annealing_warm_restarts():
    s = CosineAnnealingWarmRestarts(make_optimizer(), T_0=3, T_mult=2, eta_min=0.1)
    # cycles [0, 3), [3, 9), [9, 21): the rate restarts at 3, 9 and 21
    assert [s.cycle_at(t) for t in (0, 2, 3, 8, 9, 20, 21)] == [(0, 3), (2, 3), (0, 6), (5, 6), (0, 12), (11, 12),
                                                               (0, 24)]
    lrs = trajectory(s, 22)
    assert lrs[0] == lrs[3] == lrs[9] == lrs[21] == 0.5
    np.testing.assert_allclose(lrs[6], 0.1 + 0.4 * (1 + math.cos(math.pi * 3 / 6)) / 2, rtol=1e-15)
    equal = CosineAnnealingWarmRestarts(make_optimizer(), T_0=4)
    assert trajectory(equal, 8)[::4] == [0.5, 0.5, 0.5]


def test_linear_warmup_alone_and_with_a_wrapped_schedule():
    alone = LinearWarmup(make_optimizer(), warmup_steps=4)
    assert trajectory(alone, 6) == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    opt = make_optimizer()
    after = StepLR(opt, step_size=2, gamma=0.1)
    warm = LinearWarmup(opt, warmup_steps=2, start_factor=0.5, after=after)
    np.testing.assert_allclose(trajectory(warm, 6), [0.25, 0.375, 0.5, 0.5, 0.05, 0.05, 0.005], rtol=1e-15)
    assert after.last_epoch == 4 and after.get_last_lr() == warm.get_last_lr()


def test_schedules_drive_the_optimizer_updates():
    """The optimiser reads lr at each step: SGD under StepLR equals SGD with the lr set by hand."""
    p, q = nn.Parameter(np.ones(4)), nn.Parameter(np.ones(4))
    opt_p, opt_q = optim.SGD([p], lr=0.1), optim.SGD([q], lr=0.1)
    s = StepLR(opt_p, step_size=2, gamma=0.1)
    for epoch in range(5):
        opt_q.lr = 0.1 * 0.1 ** (epoch // 2)
        for opt, param in ((opt_p, p), (opt_q, q)):
            param.grad = np.full(4, 1.0)
            opt.step()
        s.step()
    np.testing.assert_array_equal(p.data, q.data)


# --- against torch ----------------------------------------------------------------------------------------------------
def _torch_optimizer(lr=BASE_LR):
    return torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=lr, momentum=0.9)


def _torch_trajectory(scheduler, optimizer, steps):
    lrs = [scheduler.get_last_lr()[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append(scheduler.get_last_lr()[0])
    return lrs


TORCH_CASES = [
    ("step", lambda o: StepLR(o, step_size=7, gamma=0.3), lambda T, o: T.StepLR(o, step_size=7, gamma=0.3)),
    ("multistep", lambda o: MultiStepLR(o, milestones=[3, 10, 10, 21], gamma=0.3),
     lambda T, o: T.MultiStepLR(o, milestones=[3, 10, 10, 21], gamma=0.3)),
    ("exponential", lambda o: ExponentialLR(o, gamma=0.9), lambda T, o: T.ExponentialLR(o, gamma=0.9)),
    ("cosine", lambda o: CosineAnnealingLR(o, T_max=12, eta_min=0.01),
     lambda T, o: T.CosineAnnealingLR(o, T_max=12, eta_min=0.01)),
    ("cosine-long", lambda o: CosineAnnealingLR(o, T_max=30), lambda T, o: T.CosineAnnealingLR(o, T_max=30)),
    ("warmup-cosine", lambda o: LinearWarmup(o, 5, start_factor=0.1, after=CosineAnnealingLR(o, T_max=20)),
     lambda T, o: T.SequentialLR(o, [T.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5),
                                     T.CosineAnnealingLR(o, T_max=20)], milestones=[5])),
    ("warmup-exponential", lambda o: LinearWarmup(o, 8, start_factor=0.25, after=ExponentialLR(o, gamma=0.8)),
     lambda T, o: T.SequentialLR(o, [T.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=8),
                                     T.ExponentialLR(o, gamma=0.8)], milestones=[8])),
    ("warmup-only", lambda o: LinearWarmup(o, 6, start_factor=0.5),
     lambda T, o: T.LinearLR(o, start_factor=0.5, end_factor=1.0, total_iters=6)),
    ("linear-decay", lambda o: LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=20),
     lambda T, o: T.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=20)),
    ("linear-defaults", lambda o: LinearLR(o), lambda T, o: T.LinearLR(o)),
    ("polynomial", lambda o: PolynomialLR(o, total_iters=25, power=2.0),
     lambda T, o: T.PolynomialLR(o, total_iters=25, power=2.0)),
    ("polynomial-sqrt", lambda o: PolynomialLR(o, total_iters=30, power=0.5),
     lambda T, o: T.PolynomialLR(o, total_iters=30, power=0.5)),
    ("restarts", lambda o: CosineAnnealingWarmRestarts(o, T_0=7, eta_min=0.02),
     lambda T, o: T.CosineAnnealingWarmRestarts(o, T_0=7, eta_min=0.02)),
    ("restarts-doubling", lambda o: CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
     lambda T, o: T.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
]
# the schedules whose torch closed form (_get_closed_form_lr) or step formula equals cynet's operation for operation
EXACT_CASES = TORCH_CASES[:5] + [case for case in TORCH_CASES if case[0].startswith(("linear-", "polynomial"))]


@needs_torch
@pytest.mark.parametrize("label,ours,theirs", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_over_35_steps(label, ours, theirs):
    """torch's step() applies a recursive form (products of ratios): it agrees with the closed form to rounding."""
    mine = trajectory(ours(make_optimizer()), 35)
    topt = _torch_optimizer()
    reference = _torch_trajectory(theirs(torch.optim.lr_scheduler, topt), topt, 35)
    np.testing.assert_allclose(mine, reference, rtol=1e-13, atol=1e-16)


@needs_torch
@pytest.mark.parametrize("label,ours,theirs", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_equals_torch_closed_forms_exactly(label, ours, theirs):
    tsched = theirs(torch.optim.lr_scheduler, _torch_optimizer())
    if not hasattr(tsched, "_get_closed_form_lr"):  # pragma: no cover - private in torch, may move
        pytest.skip("this torch has no _get_closed_form_lr")
    s = ours(make_optimizer())
    for epoch in range(40):
        tsched.last_epoch = epoch
        assert s.lr_at(epoch) == tsched._get_closed_form_lr()[0], epoch


@needs_torch
@pytest.mark.parametrize("t_0,t_mult", [(7, 1), (3, 2), (2, 3)])
def test_warm_restarts_equal_torch_step_by_step(t_0, t_mult):
    """torch counts T_cur and T_i in whole epochs and applies the cosine formula itself: equal to the last bit."""
    mine = trajectory(CosineAnnealingWarmRestarts(make_optimizer(), T_0=t_0, T_mult=t_mult, eta_min=0.01), 60)
    topt = _torch_optimizer()
    theirs = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(topt, T_0=t_0, T_mult=t_mult, eta_min=0.01)
    assert mine == _torch_trajectory(theirs, topt, 60)


PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.92, 0.899, 0.899, 0.5, 0.6, 0.6, 0.6, 0.6, float("nan"), 0.4, 0.4, 0.4, 0.4,
                   0.41, 0.39, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
PLATEAU_SETTINGS = [
    dict(factor=0.5, patience=2),
    dict(factor=0.5, patience=1, threshold=0.0),  # an equal metric is no improvement
    dict(factor=0.5, patience=1, cooldown=2, threshold=0.01),
    dict(factor=0.1, patience=0, min_lr=0.004),
    dict(mode="max", factor=0.5, patience=1),
    dict(factor=0.5, patience=1, threshold_mode="abs", threshold=0.05),
    dict(mode="max", factor=0.7, patience=2, threshold_mode="abs", threshold=0.01, cooldown=1),
]


@needs_torch
@pytest.mark.parametrize("settings", PLATEAU_SETTINGS, ids=[str(s) for s in PLATEAU_SETTINGS])
def test_reduce_on_plateau_matches_torch_on_a_scripted_metric(settings):
    metrics = PLATEAU_METRICS if settings.get("mode") != "max" else [-m for m in PLATEAU_METRICS]
    s = ReduceLROnPlateau(make_optimizer(), **settings)
    t = torch.optim.lr_scheduler.ReduceLROnPlateau(_torch_optimizer(), **settings)
    for m in metrics:
        s.step(m)
        t.step(m)
        assert s.get_last_lr() == t.get_last_lr()[0] == s.optimizer.lr
        assert (s.num_bad_epochs, s.cooldown_counter, s.last_epoch) == (t.num_bad_epochs, t.cooldown_counter,
                                                                         t.last_epoch)
        assert s.best == t.best or (math.isnan(s.best) and math.isnan(t.best))


def test_reduce_on_plateau_by_hand():
    s = ReduceLROnPlateau(make_optimizer(1.0), factor=0.5, patience=1)
    lrs = []
    for m in [1.0, 0.9, 0.9, 0.9, 0.8, 0.85, 0.85, np.float32(0.85)]:
        s.step(m)
        lrs.append(s.get_last_lr())
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert s.best == 0.8 and s.last_epoch == 8
    s = ReduceLROnPlateau(make_optimizer(1.0), factor=0.5, patience=0, min_lr=0.3)
    for m in [1.0, 1.0, 1.0, 1.0]:
        s.step(m)
    assert s.get_last_lr() == 0.3  # max(lr * factor, min_lr)
    with pytest.raises(TypeError, match="metric must be a number"):
        s.step("0.5")
    with pytest.raises(TypeError, match="metric must be a number"):
        s.step(None)


# --- state dicts ------------------------------------------------------------------------------------------------------
EPOCH_SCHEDULES = [
    ("step", lambda o: StepLR(o, step_size=3, gamma=0.5)),
    ("multistep", lambda o: MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3)),
    ("exponential", lambda o: ExponentialLR(o, gamma=0.9)),
    ("inverse-time", lambda o: InverseTimeLR(o, decay_rate=0.3)),
    ("cosine", lambda o: CosineAnnealingLR(o, T_max=10, eta_min=0.01)),
    ("warmup", lambda o: LinearWarmup(o, 4)),
    ("warmup-cosine", lambda o: LinearWarmup(o, 4, 0.2, after=CosineAnnealingLR(o, T_max=8))),
    ("inverse-sqrt", lambda o: InverseSqrtLR(o, decay_rate=0.5)),
    ("linear", lambda o: LinearLR(o, start_factor=0.9, end_factor=0.1, total_iters=9)),
    ("polynomial", lambda o: PolynomialLR(o, total_iters=10, power=3.0)),
    ("restarts", lambda o: CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=0.01)),
    ("warmup-inverse-sqrt", lambda o: LinearWarmup(o, 3, after=InverseSqrtLR(o, decay_rate=1 / 3))),
]


def _json_round_trip(state):
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)}))
    return {**arrays, **scalars}


@pytest.mark.parametrize("label,make", EPOCH_SCHEDULES, ids=[c[0] for c in EPOCH_SCHEDULES])
def test_epoch_schedule_state_dict_resumes_exactly(label, make):
    uninterrupted = trajectory(make(make_optimizer()), 14)
    first = make(make_optimizer())
    trajectory(first, 6)
    state = _json_round_trip(first.state_dict())
    assert state["type"] == type(first).__name__ and state["last_epoch"] == 6 and state["base_lr"] == BASE_LR
    fresh_optimizer = make_optimizer(lr=0.001)  # the restored schedule sets the restored epoch's rate
    second = make(fresh_optimizer)
    second.load_state_dict(state)
    assert fresh_optimizer.lr == uninterrupted[6] and second.last_epoch == 6
    assert [second.get_last_lr()] + trajectory(second, 8)[1:] == uninterrupted[6:]


def test_state_dict_contents():
    opt = make_optimizer()
    warm = LinearWarmup(opt, 3, after=MultiStepLR(opt, milestones=[5, 2]))
    state = warm.state_dict()
    assert set(state) == {"type", "warmup_steps", "start_factor", "base_lr", "last_epoch", "has_after",
                          "after.type", "after.milestones", "after.gamma", "after.base_lr", "after.last_epoch"}
    assert state["after.type"] == "MultiStepLR" and state["has_after"] is True
    np.testing.assert_array_equal(state["after.milestones"], [2, 5])
    assert state["after.milestones"].dtype == np.int64


def test_reduce_on_plateau_state_dict_resumes_exactly():
    full = ReduceLROnPlateau(make_optimizer(), factor=0.5, patience=1, cooldown=1)
    expected = []
    for m in PLATEAU_METRICS:
        full.step(m)
        expected.append(full.get_last_lr())
    opt = make_optimizer()
    first = ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
    for m in PLATEAU_METRICS[:9]:
        first.step(m)
    state = _json_round_trip(first.state_dict())
    opt_state = _json_round_trip(opt.state_dict())
    resumed_opt = make_optimizer()
    resumed_opt.load_state_dict(opt_state)  # the learning rate lives in the optimiser's state
    second = ReduceLROnPlateau(resumed_opt)  # default settings: the state restores the saved ones
    second.load_state_dict(state)
    assert (second.factor, second.patience, second.cooldown) == (0.5, 1, 1)
    resumed = []
    for m in PLATEAU_METRICS[9:]:
        second.step(m)
        resumed.append(second.get_last_lr())
    assert resumed == expected[9:]
    initial = _json_round_trip(ReduceLROnPlateau(make_optimizer()).state_dict())
    assert initial["best"] == math.inf  # infinities survive Python's JSON


def test_load_state_dict_of_pytorch_format_names_it():
    # a PyTorch scheduler's state_dict (no "type" key) was refused as "the state is of a None schedule, not 'StepLR'"
    s = StepLR(make_optimizer(), step_size=2)
    torch_format = {"step_size": 2, "gamma": 0.1, "base_lrs": [0.1], "last_epoch": 3, "_step_count": 4,
                    "_last_lr": [0.01]}
    with pytest.raises(ValueError, match=r"StepLR.load_state_dict: the state has no 'type' key \(keys \['_last_lr', "
                                         r"'_step_count', 'base_lrs', .*\]\): not a cynet StepLR.state_dict\(\); it "
                                         r"looks like a PyTorch state_dict"):
        s.load_state_dict(torch_format)
    assert s.last_epoch == 0


def test_load_state_dict_errors():
    opt = make_optimizer()
    s = StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="state is of a 'ExponentialLR' schedule, not 'StepLR'"):
        s.load_state_dict(ExponentialLR(make_optimizer(), gamma=0.5).state_dict())
    good = s.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['gamma'\]"):
        s.load_state_dict({k: v for k, v in good.items() if k != "gamma"})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        s.load_state_dict({**good, "extra": 1})
    with pytest.raises(ValueError, match="StepLR: step_size must be an int >= 1, got 0"):
        s.load_state_dict({**good, "step_size": 0, "last_epoch": 5})
    with pytest.raises(ValueError, match="last_epoch must be an int >= 0"):
        s.load_state_dict({**good, "last_epoch": -2})
    assert s.step_size == 2 and s.last_epoch == 0  # failed loads change nothing
    with pytest.raises(TypeError, match="expected a dict"):
        s.load_state_dict(None)

    warm = LinearWarmup(opt, 3, after=CosineAnnealingLR(opt, T_max=5))
    bare = LinearWarmup(make_optimizer(), 3)
    with pytest.raises(ValueError, match="saved with a wrapped schedule, this LinearWarmup has none"):
        bare.load_state_dict(warm.state_dict())
    with pytest.raises(ValueError, match="saved without a wrapped schedule"):
        warm.load_state_dict(bare.state_dict())
    broken = {**warm.state_dict(), "after.T_max": 0, "last_epoch": 4}
    with pytest.raises(ValueError, match="in the wrapped schedule: CosineAnnealingLR: T_max must be an int >= 1"):
        warm.load_state_dict(broken)
    assert warm.after.T_max == 5 and warm.last_epoch == 0
    broken = {**warm.state_dict(), "after.last_epoch": 3, "warmup_steps": -1}
    with pytest.raises(ValueError, match="warmup_steps must be an int >= 1"):
        warm.load_state_dict(broken)
    assert warm.after.last_epoch == 0 and opt.lr == 0.0

    plateau = ReduceLROnPlateau(make_optimizer())
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        plateau.load_state_dict({**plateau.state_dict(), "mode": "avg"})


# --- validation -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,error,message", [
    (lambda o: StepLR(o, step_size=0), ValueError, "StepLR: step_size must be an int >= 1, got 0"),
    (lambda o: StepLR(o, step_size=2.5), ValueError, "step_size must be an int"),
    (lambda o: StepLR(o, step_size=2, gamma=0.0), ValueError, r"StepLR: gamma must be a finite number in \(0"),
    (lambda o: MultiStepLR(o, milestones=[]), ValueError, "milestones must be a non-empty iterable of ints >= 1"),
    (lambda o: MultiStepLR(o, milestones=[3, 0]), ValueError, "milestones must be"),
    (lambda o: MultiStepLR(o, milestones=5), ValueError, "milestones must be an iterable of ints"),
    (lambda o: ExponentialLR(o, gamma=float("nan")), ValueError, "ExponentialLR: gamma must be a finite number"),
    (lambda o: InverseTimeLR(o, decay_rate=-1), ValueError, "InverseTimeLR: decay_rate must be"),
    (lambda o: CosineAnnealingLR(o, T_max=0), ValueError, "CosineAnnealingLR: T_max must be an int >= 1"),
    (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=-0.1), ValueError, "eta_min must be"),
    (lambda o: InverseSqrtLR(o, decay_rate=float("inf")), ValueError, "InverseSqrtLR: decay_rate must be a finite"),
    (lambda o: LinearLR(o, start_factor=1.2), ValueError, r"LinearLR: start_factor must be a finite number in \[0, 1"),
    (lambda o: LinearLR(o, end_factor=-0.1), ValueError, "LinearLR: end_factor must be"),
    (lambda o: LinearLR(o, total_iters=0), ValueError, "LinearLR: total_iters must be an int >= 1"),
    (lambda o: PolynomialLR(o, total_iters=3.0), ValueError, "PolynomialLR: total_iters must be an int"),
    (lambda o: PolynomialLR(o, power=-1), ValueError, "PolynomialLR: power must be"),
    (lambda o: CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "CosineAnnealingWarmRestarts: T_0 must be an int"),
    (lambda o: CosineAnnealingWarmRestarts(o, T_0=2, T_mult=1.5), ValueError, "T_mult must be an int >= 1"),
    (lambda o: CosineAnnealingWarmRestarts(o, T_0=2, eta_min=-1), ValueError, "eta_min must be"),
    (lambda o: LinearWarmup(o, warmup_steps=0), ValueError, "LinearWarmup: warmup_steps must be an int >= 1"),
    (lambda o: LinearWarmup(o, 3, start_factor=1.5), ValueError, r"start_factor must be a finite number in \[0, 1\]"),
    (lambda o: LinearWarmup(o, 3, after=ReduceLROnPlateau(o)), TypeError, "after must be an epoch-based schedule"),
    (lambda o: LinearWarmup(o, 3, after=StepLR(make_optimizer(), 2)), ValueError, "same optimiser"),
    (lambda o: ReduceLROnPlateau(o, factor=1.0), ValueError, r"ReduceLROnPlateau: factor must be a finite number "
                                                             r"in \[0, 1\)"),
    (lambda o: ReduceLROnPlateau(o, mode="best"), ValueError, "mode must be 'min' or 'max', got 'best'"),
    (lambda o: ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode must be 'rel' or 'abs'"),
    (lambda o: ReduceLROnPlateau(o, patience=-1), ValueError, "patience must be an int >= 0"),
    (lambda o: ReduceLROnPlateau(o, min_lr=-1e-3), ValueError, "min_lr must be"),
    (lambda o: StepLR(object(), 3), TypeError, "StepLR: optimizer must be a cynet.optim optimiser, got object"),
])
def test_invalid_settings_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make(make_optimizer())


def test_linear_warmup_needs_a_fresh_wrapped_schedule():
    opt = make_optimizer()
    after = StepLR(opt, 2)
    after.step()
    with pytest.raises(ValueError, match="fresh schedule"):
        LinearWarmup(opt, 3, after=after)


def test_module_exports_and_custom_schedules():
    assert optim.StepLR is StepLR and sched.__all__[0] == "LRScheduler"

    class Halving(LRScheduler):
        def lr_at(self, epoch):
            return self.base_lr / 2 ** epoch

    s = Halving(make_optimizer(1.0))
    assert trajectory(s, 2) == [1.0, 0.5, 0.25]
    assert "StepLR(step_size=3, gamma=0.1, base_lr=0.5, last_epoch=0)" == repr(StepLR(make_optimizer(), 3))


def test_a_second_schedule_or_a_hand_change_that_a_step_overwrites_is_warned_about():
    # before: two schedules on one optimiser silently trained at about 1/10 of the rate (torch 2.13 composes them:
    # 0.01, 0.036, 0.0567, ... where cynet's last step overwrote the other's: 0.01, 0.009, 0.0081, ...)
    opt = optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    warmup = optim.LinearLR(opt, start_factor=0.1, total_iters=3)
    decay = optim.ExponentialLR(opt, gamma=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.step()
            warmup.step()
            decay.step()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2                                # once per schedule
    assert messages[0].startswith("ExponentialLR.step: group 0's learning rate is 0.04, not the 0.01")   # LinearLR's
    assert "LinearWarmup" in messages[0] and messages[1].startswith("LinearLR.step:")
    opt = optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    schedule = optim.StepLR(opt, step_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # one schedule: never a warning
        for _ in range(5):
            opt.step()
            schedule.step()
    opt.param_groups[0]["lr"] /= 10                          # by hand: overwritten at the next step, and said so
    with pytest.warns(UserWarning, match="StepLR.step: group 0's learning rate is 0.0001, not the 0.001 "):
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** 3)


def _npz_round_trip(state):
    import io
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in state.items()})
    buffer.seek(0)
    return dict(np.load(buffer, allow_pickle=False))   # every scalar comes back as a 0-d array


@pytest.mark.parametrize("label,make", EPOCH_SCHEDULES + [
    ("plateau", lambda o: ReduceLROnPlateau(o, mode="max", factor=0.5, patience=1, cooldown=1, threshold_mode="abs"))],
    ids=[c[0] for c in EPOCH_SCHEDULES] + ["plateau"])
def test_state_dict_read_back_from_npz_resumes_exactly(label, make):
    """A schedule's state stored with np.savez beside the optimiser's (whose load_state_dict takes 0-d arrays) loads
    and continues as the uninterrupted run: the settings and counters were refused as 0-d arrays."""
    def steps(schedule, metrics):
        out = []
        for m in metrics:
            schedule.step(m) if isinstance(schedule, ReduceLROnPlateau) else schedule.step()
            out.append(schedule.get_last_lr())
        return out
    metrics = [1.0, 0.5, 0.5, 0.4, 0.4, 0.4, 0.9, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2]
    opt = make_optimizer()
    uninterrupted = steps(make(opt), metrics)
    opt = make_optimizer()
    first = make(opt)
    steps(first, metrics[:6])
    resumed_opt = make_optimizer(lr=0.001)
    resumed_opt.load_state_dict(_npz_round_trip(opt.state_dict()))
    second = make(resumed_opt)
    second.load_state_dict(_npz_round_trip(first.state_dict()))
    assert first.state_dict().keys() == second.state_dict().keys()
    assert all(type(second.state_dict()[key]) is type(value) for key, value in first.state_dict().items())
    assert steps(second, metrics[6:]) == uninterrupted[6:]


def test_a_step_refused_for_a_group_added_later_leaves_the_epoch_count():
    """A schedule made for one group refuses to step once a second is added; the refused step used to count, so
    the epoch had moved on although no rate was set."""
    opt = make_optimizer()
    schedule = StepLR(opt, step_size=2, gamma=0.5)
    schedule.step()
    opt.add_param_group({"params": [nn.Parameter(np.zeros(2))]})
    for _ in range(2):
        with pytest.raises(ValueError, match="create the schedule after adding groups"):
            schedule.step()
    assert schedule.last_epoch == 1 and schedule.get_last_lr() == BASE_LR
