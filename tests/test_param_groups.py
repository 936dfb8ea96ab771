"""Parameter groups (cynet.optim): per-group settings against separate optimisers (bit for bit) and torch.optim's
param groups (float64), validation of group settings, state dicts, snapshots, schedules, the trainer and checkpoints
with several groups, and weight_decay_groups.
"""
import copy
import pickle

import numpy as np
import pytest

import cynet
from cynet import checkpoint, nn, optim
from cynet.nn import SoftmaxCrossEntropy
from cynet.optim import SGD, AdaGrad, Adam, AdamW, RMSProp
from cynet.train import Trainer

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")

# (class, constructor settings, the first group's own settings, torch's class name)
RULES = [
    (SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3), dict(lr=0.02, momentum=0.5, nesterov=True), "SGD"),
    (SGD, dict(lr=0.1), dict(weight_decay=0.05, dampening=0.0), "SGD"),
    (AdaGrad, dict(lr=0.05), dict(lr=0.2, eps=1e-6, weight_decay=0.01), "Adagrad"),
    (RMSProp, dict(lr=0.01, momentum=0.9), dict(alpha=0.9, momentum=0.0, weight_decay=0.01), "RMSprop"),
    (Adam, dict(lr=0.01), dict(lr=0.003, betas=(0.5, 0.9), weight_decay=0.1), "Adam"),
    (AdamW, dict(lr=0.01), dict(weight_decay=0.3, eps=1e-6), "AdamW"),
]
RULE_IDS = [f"{cls.__name__}-{i}" for i, (cls, *_) in enumerate(RULES)]


def _model(dtype=np.float64, seed=0):
    cynet.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _gradients(model, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.data.shape).astype(p.data.dtype) for p in model.parameters()]
            for _ in range(steps)]


def _run(params, optimizers, grads):
    for step in grads:
        for param, grad in zip(params, step):
            param.grad = grad.copy()
        for opt in optimizers:
            opt.step()


@pytest.mark.parametrize("cls,settings,first_group,_", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_step_exactly_as_separate_optimisers_over_their_parameters(cls, settings, first_group, _, dtype):
    grouped, separate = _model(dtype), _model(dtype)
    first, second = grouped[0].parameters(), grouped[2].parameters()
    opt = cls([{"params": first, **first_group}, {"params": second}], **settings)
    alone = [cls(separate[0].parameters(), **{**settings, **first_group}), cls(separate[2].parameters(), **settings)]
    grads = _gradients(grouped, 6)
    _run(grouped.parameters(), [opt], grads)
    _run(separate.parameters(), alone, grads)
    for p, q in zip(grouped.parameters(), separate.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert [len(group["params"]) for group in opt.param_groups] == [2, 2]


@needs_torch
@pytest.mark.parametrize("cls,settings,first_group,torch_name", RULES, ids=RULE_IDS)
def test_groups_match_torch_param_groups_in_float64(cls, settings, first_group, torch_name):
    model = _model(np.float64)
    initial = [p.data.copy() for p in model.parameters()]
    opt = cls([{"params": model[0].parameters(), **first_group}, {"params": model[2].parameters()}], **settings)
    tensors = [torch.tensor(w, requires_grad=True) for w in initial]
    torch_cls = getattr(torch.optim, torch_name)
    topt = torch_cls([{"params": tensors[:2], **first_group}, {"params": tensors[2:]}], **settings)
    grads = _gradients(model, 5)
    for step in grads:
        for param, tensor, grad in zip(model.parameters(), tensors, step):
            param.grad = grad.copy()
            tensor.grad = torch.tensor(grad)
        opt.step()
        topt.step()
    for param, tensor in zip(model.parameters(), tensors):
        np.testing.assert_allclose(param.data, tensor.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_groups_take_the_constructor_settings_they_do_not_give():
    model = _model()
    opt = SGD([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters(), "momentum": 0.5}],
              lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [(0.01, 0.9, 1e-4),
                                                                                       (0.1, 0.5, 1e-4)]
    assert opt.defaults == {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4, "dampening": 0.0}
    assert opt.params == model.parameters() and opt.weight_decay == 1e-4
    # a single parameter as a group's params, and an empty group, are accepted
    single = Adam([{"params": model[0].weight}, {"params": []}], lr=0.1)
    assert [len(g["params"]) for g in single.param_groups] == [1, 0]


def test_reading_and_setting_a_setting_of_the_whole_optimiser():
    model = _model()
    opt = SGD([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1)
    with pytest.raises(ValueError, match=r"SGD has 2 parameter groups with different lr \(0.01, 0.1\): read "
                                         r"param_groups\[i\]\['lr'\]"):
        opt.lr
    assert opt.momentum == 0.0                                  # equal in every group
    opt.lr = 0.5                                                # sets every group and the defaults
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5] and opt.lr == 0.5 and opt.defaults["lr"] == 0.5
    opt.param_groups[1]["momentum"] = 0.9
    with pytest.raises(ValueError, match="different momentum"):
        opt.momentum
    opt.momentum = 0.8
    assert [g["momentum"] for g in opt.param_groups] == [0.8, 0.8]
    opt.add_param_group({"params": [nn.Parameter(np.zeros(2))]})
    assert opt.param_groups[2]["momentum"] == 0.8 and opt.param_groups[2]["lr"] == 0.5   # the updated defaults
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        opt.nonsense


def test_group_settings_are_checked_when_assigned_and_a_refused_value_is_not_kept():
    model = _model()
    opt = SGD([{"params": model[0].parameters(), "momentum": 0.9, "nesterov": True},
               {"params": model[2].parameters()}], lr=0.1)
    group = opt.param_groups[0]
    with pytest.raises(ValueError, match="SGD: invalid learning rate: -1"):
        group["lr"] = -1
    with pytest.raises(ValueError, match="SGD: Nesterov momentum requires a momentum and zero dampening"):
        group["momentum"] = 0.0                                 # would break this group's Nesterov rule
    opt.param_groups[1]["momentum"] = 0.0                       # fine in the other group
    with pytest.raises(ValueError, match=r"SGD: unknown settings \['weight_deacy'\]"):
        group["weight_deacy"] = 0.1                             # a misspelt setting is not silently ignored
    with pytest.raises(ValueError, match="invalid momentum value"):
        group.update(lr=0.5, momentum=-1)                       # all or nothing
    assert group["lr"] == 0.1 and group["momentum"] == 0.9 and "weight_deacy" not in group
    for refused in (lambda: group.pop("lr"), lambda: group.__delitem__("lr"), lambda: group.clear(),
                    lambda: group.__setitem__("params", [])):
        with pytest.raises(TypeError, match="use add_param_group"):
            refused()
    assert len(group) == 6 and len(group["params"]) == 2
    # the same checks in the constructor, naming the group
    with pytest.raises(ValueError, match=r"SGD: invalid momentum value: -1 \(in param_groups\[1\]\)"):
        SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "momentum": -1}], lr=0.1)
    with pytest.raises(ValueError, match=r"SGD: param_groups\[0\] unknown settings \['initial_lr'\]"):
        SGD([{"params": model[0].parameters(), "initial_lr": 0.1}], lr=0.1)


def test_adam_groups_accept_and_give_betas():
    model = _model()
    opt = Adam([{"params": model[0].parameters(), "betas": (0.5, 0.9)}, {"params": model[2].parameters()}])
    assert opt.param_groups[0]["betas"] == (0.5, 0.9) and opt.param_groups[1]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["beta1"] == 0.5
    with pytest.raises(ValueError, match="Adam: invalid beta parameter at index 1: 1.0"):
        opt.param_groups[1]["betas"] = (0.5, 1.0)
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="Adam: betas must be a pair of floats, got 0.9"):
        opt.param_groups[1]["betas"] = 0.9
    # the groups' pairs named as the property read (it named beta1, which the caller did not ask for)
    with pytest.raises(ValueError, match=r"Adam has 2 parameter groups with different betas \(\(0.5, 0.9\), "
                                         r"\(0.9, 0.999\)\): read param_groups\[i\]\['betas'\]"):
        opt.betas
    opt.betas = (0.8, 0.99)
    assert [g["betas"] for g in opt.param_groups] == [(0.8, 0.99), (0.8, 0.99)]
    assert opt.param_groups[0].get("betas") == (0.8, 0.99) and opt.param_groups[0].get("momentum", 7) == 7


@pytest.mark.parametrize("make,error,message", [
    (lambda m: SGD([{"params": m[0].parameters()}, {"params": m[0].weight}], lr=0.1), ValueError,
     r"SGD: param_groups\[1\]\['params'\]\[0\] appears more than once"),
    (lambda m: SGD([{"params": m[0].parameters()}, m[2].weight], lr=0.1), TypeError, "mixes parameter-group dicts"),
    (lambda m: SGD([{"lr": 0.1}], lr=0.1), KeyError, r"param_groups\[0\]: a parameter group needs a 'params' entry"),
    (lambda m: SGD([{"params": [m[0].weight, np.zeros(3)]}], lr=0.1), TypeError,
     r"SGD: param_groups\[0\]\['params'\]\[1\] is not a cynet.nn.Parameter but a ndarray"),
    (lambda m: SGD([{"params": np.zeros(3)}], lr=0.1), TypeError, "'params' must be a Parameter or an iterable"),
    (lambda m: SGD([{"params": []}, {"params": []}], lr=0.1), ValueError, "every parameter group is empty"),
    (lambda m: SGD({"params": m.parameters()}, lr=0.1), TypeError, "got a single dict"),
])
def test_invalid_groups_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make(_model())


def test_add_param_group_checks_before_adding():
    model = _model()
    opt = SGD(model[2].parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"params'\]\[0\] appears more than once"):
        opt.add_param_group({"params": model[2].weight})
    with pytest.raises(TypeError, match="expected a dict with a 'params' entry, got list"):
        opt.add_param_group(model[0].parameters())
    with pytest.raises(ValueError, match=r"invalid learning rate: -0.1 \(in param_groups\[1\]\)"):
        opt.add_param_group({"params": model[0].parameters(), "lr": -0.1})
    assert len(opt.param_groups) == 1 and len(opt.params) == 2 and len(opt.state) == 2
    with pytest.raises(AttributeError):                         # a group appended by hand would never be stepped
        opt.param_groups.append({"params": model[0].parameters()})
    opt.add_param_group({"params": model[0].parameters(), "lr": 0.01})
    assert opt.params == model[2].parameters() + model[0].parameters() and len(opt.state) == 4


def test_state_dict_with_groups_resumes_exactly_and_refuses_another_layout():
    grads = _gradients(_model(), 6)
    settings = dict(lr=0.1, momentum=0.9)

    def make(model):
        return SGD([{"params": model[0].parameters(), "lr": 0.02, "nesterov": True},
                    {"params": model[2].parameters(), "weight_decay": 0.01}], **settings)

    straight = _model()
    _run(straight.parameters(), [make(straight)], grads)
    first = _model()
    opt = make(first)
    _run(first.parameters(), [opt], grads[:3])
    state = opt.state_dict()
    assert state["n_groups"] == 2 and state["group.0.n_params"] == 2 and state["group.0.lr"] == 0.02
    assert state["group.1.weight_decay"] == 0.01 and "lr" not in state
    resumed = copy.deepcopy(first)
    resumed_opt = SGD([{"params": resumed[0].parameters()}, {"params": resumed[2].parameters()}], lr=0.5,
                      momentum=0.9)
    resumed_opt.load_state_dict(state)                          # the settings come from the state
    assert resumed_opt.param_groups[0]["nesterov"] and resumed_opt.param_groups[1]["lr"] == 0.1
    _run(resumed.parameters(), [resumed_opt], grads[3:])
    for p, q in zip(resumed.parameters(), straight.parameters()):
        np.testing.assert_array_equal(p.data, q.data)

    model = _model()
    with pytest.raises(ValueError, match=r"the state holds 2 parameter group\(s\), this optimiser has 1"):
        SGD(model.parameters(), **settings).load_state_dict(state)
    with pytest.raises(ValueError, match=r"the state's groups hold \[2, 2\] parameters, this optimiser's \[1, 3\]"):
        SGD([{"params": model.parameters()[:1]}, {"params": model.parameters()[1:]}], **settings).load_state_dict(
            state)
    with pytest.raises(ValueError, match=r"the state holds 1 parameter group\(s\), this optimiser has 2"):
        make(model).load_state_dict(SGD(model.parameters(), **settings).state_dict())
    with pytest.raises(KeyError, match=r"missing keys \['group.1.lr'\]"):
        make(model).load_state_dict({k: v for k, v in state.items() if k != "group.1.lr"})
    with pytest.raises(ValueError, match="invalid momentum value: -1"):
        make(model).load_state_dict({**state, "group.1.momentum": -1})


def test_snapshot_and_restore_keep_each_groups_settings():
    model = _model()
    opt = Adam([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1)
    saved = opt.snapshot()
    opt.param_groups[0]["lr"] = 0.5
    opt.param_groups[1]["betas"] = (0.1, 0.2)
    opt.restore(saved)
    assert [(g["lr"], g["betas"]) for g in opt.param_groups] == [(0.01, (0.9, 0.999)), (0.1, (0.9, 0.999))]
    one_group = Adam(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"the snapshot holds 2 parameter group\(s\), this optimiser has 1"):
        one_group.restore(saved)


def test_restore_puts_back_the_defaults_a_later_group_takes():
    """``opt.lr = x`` after a snapshot sets the groups and the defaults; restore put the groups back but kept the
    defaults, so a group added after the divergence guard's restore took the rate and momentum of the undone run."""
    model = _model()
    opt = SGD(model[2].parameters(), lr=0.1, weight_decay=5e-4)
    saved = opt.snapshot()
    opt.lr = 3.0
    opt.momentum = 0.9
    opt.weight_decay = 0.0
    opt.restore(saved)
    assert opt.defaults == {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 5e-4, "dampening": 0.0}
    opt.defaults["lr"] = 7.0                                    # the snapshot holds a copy, not the live dict
    opt.restore(saved)
    assert opt.defaults["lr"] == 0.1
    opt.add_param_group({"params": model[0].parameters()})
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [(0.1, 0.0, 5e-4)] * 2


def test_copies_and_pickles_keep_checking_their_own_groups():
    model = _model()
    opt = SGD([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1)
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert [g["lr"] for g in twin.param_groups] == [0.01, 0.1]
        assert twin.param_groups[0]._optimizer is twin
        assert twin.param_groups[0]["params"][0] is twin.params[0]
        with pytest.raises(ValueError, match="invalid learning rate"):
            twin.param_groups[0]["lr"] = -1.0
        twin.param_groups[0]["lr"] = 0.3
    assert opt.param_groups[0]["lr"] == 0.01


def test_repr_lists_the_groups():
    model = _model()
    one = SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert repr(one) == "SGD(4 parameters, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0, dampening=0.0)"
    two = SGD([{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1)
    assert repr(two) == ("SGD(4 parameters in 2 groups: {2 parameters, lr=0.01, momentum=0.0, nesterov=False, "
                         "weight_decay=0.0, dampening=0.0}, {2 parameters, lr=0.1, momentum=0.0, nesterov=False, "
                         "weight_decay=0.0, dampening=0.0})")


# --- schedules --------------------------------------------------------------------------------------------------------
def _grouped_sgd(lrs=(0.1, 0.01)):
    model = _model()
    return SGD([{"params": model[0].parameters(), "lr": lrs[0]}, {"params": model[2].parameters(), "lr": lrs[1]}],
               lr=1.0, momentum=0.9)


SCHEDULES = [
    (lambda o: optim.StepLR(o, step_size=2, gamma=0.5), lambda m, o: m.StepLR(o, step_size=2, gamma=0.5)),
    (lambda o: optim.MultiStepLR(o, milestones=[2, 5], gamma=0.1),
     lambda m, o: m.MultiStepLR(o, milestones=[2, 5], gamma=0.1)),
    (lambda o: optim.ExponentialLR(o, gamma=0.8), lambda m, o: m.ExponentialLR(o, gamma=0.8)),
    (lambda o: optim.CosineAnnealingLR(o, T_max=6, eta_min=0.001),
     lambda m, o: m.CosineAnnealingLR(o, T_max=6, eta_min=0.001)),
    (lambda o: optim.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=8),
     lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=8)),
    (lambda o: optim.PolynomialLR(o, total_iters=8, power=2.0),
     lambda m, o: m.PolynomialLR(o, total_iters=8, power=2.0)),
    (lambda o: optim.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001),
     lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001)),
]


def test_each_group_follows_the_schedule_from_its_own_base_rate():
    opt = _grouped_sgd()
    sched = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.001)
    assert sched.base_lrs == [0.1, 0.01] and sched.get_last_lr() == pytest.approx([0.1, 0.01], rel=1e-15)
    for epoch in range(1, 6):
        sched.step()
        expected = [0.001 + (base - 0.001) * (1 + np.cos(np.pi * epoch / 4)) / 2 for base in (0.1, 0.01)]
        np.testing.assert_allclose(sched.get_last_lr(), expected, rtol=1e-15)
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
    warm = optim.LinearWarmup(_grouped_sgd(), warmup_steps=2, after=None)
    warm.step()
    assert warm.get_last_lr() == [0.05, 0.005]


@needs_torch
@pytest.mark.parametrize("ours,theirs", SCHEDULES, ids=["step", "multistep", "exponential", "cosine", "linear",
                                                        "polynomial", "restarts"])
def test_group_schedules_match_torch(ours, theirs):
    opt = _grouped_sgd()
    sched = ours(opt)
    params = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    topt = torch.optim.SGD([{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}], lr=1.0,
                           momentum=0.9)
    tsched = theirs(torch.optim.lr_scheduler, topt)
    for _ in range(10):
        topt.step()
        tsched.step()
        sched.step()
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)


def test_linear_warmup_hands_each_group_to_the_wrapped_schedule():
    opt = _grouped_sgd()
    sched = optim.LinearWarmup(opt, warmup_steps=2, start_factor=0.5, after=optim.StepLR(opt, step_size=1, gamma=0.1))
    lrs = [sched.get_last_lr()] + [sched.step() or sched.get_last_lr() for _ in range(3)]
    np.testing.assert_allclose(lrs, [[0.05, 0.005], [0.075, 0.0075], [0.1, 0.01], [0.01, 0.001]], rtol=1e-15)
    assert sched.after.base_lr == 0.1                           # the first group's, as before the step


def test_reduce_on_plateau_reduces_every_group_down_to_min_lr():
    opt = _grouped_sgd()
    sched = optim.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=0.008)
    for metric in (1.0, 1.0, 1.0):
        sched.step(metric)
    assert sched.get_last_lr() == [0.025, 0.008] == [g["lr"] for g in opt.param_groups]
    state = sched.state_dict()
    assert list(state["last_lr"]) == [0.025, 0.008]
    other = optim.ReduceLROnPlateau(_grouped_sgd(), factor=0.5, patience=0, min_lr=0.008)
    other.load_state_dict(state)
    assert other.get_last_lr() == [0.025, 0.008]
    with pytest.raises(ValueError, match=r"last_lr holds 2 rate\(s\), the optimiser has 1 parameter group"):
        optim.ReduceLROnPlateau(SGD(_model().parameters(), lr=0.1)).load_state_dict(state)


def test_schedule_state_with_groups_round_trips_and_refuses_another_count():
    sched = optim.StepLR(_grouped_sgd(), step_size=2, gamma=0.5)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    np.testing.assert_array_equal(state["base_lr"], [0.1, 0.01])
    again = optim.StepLR(_grouped_sgd((0.7, 0.7)), step_size=2, gamma=0.5)
    again.load_state_dict(state)
    assert again.base_lrs == [0.1, 0.01] and again.get_last_lr() == [0.05, 0.005]
    assert [g["lr"] for g in again.optimizer.param_groups] == [0.05, 0.005]
    single = optim.StepLR(SGD(_model().parameters(), lr=0.1), step_size=2)
    with pytest.raises(ValueError, match=r"base_lr holds 2 rate\(s\), the optimiser has 1 parameter group"):
        single.load_state_dict(state)
    assert single.base_lrs == [0.1]                             # unchanged by the refused load
    assert repr(sched) == "StepLR(step_size=2, gamma=0.5, base_lr=[0.1, 0.01], last_epoch=3)"


def test_a_group_added_after_the_schedule_is_reported():
    opt = _grouped_sgd()
    sched = optim.StepLR(opt, step_size=1)
    opt.add_param_group({"params": [nn.Parameter(np.zeros(2))]})
    with pytest.raises(ValueError, match="the optimiser has 3 parameter groups, the schedule was made for 2"):
        sched.step()


def test_multistep_load_uses_the_loaded_milestones():
    """A state with other milestones than the constructor's: the loaded ones decide the rate."""
    sched = optim.MultiStepLR(SGD(_model().parameters(), lr=1.0), milestones=[1, 3], gamma=0.1)
    state = sched.state_dict()
    state["milestones"] = np.array([5])
    sched.load_state_dict(state)
    assert sched.lr_at(2) == 1.0 and sched.lr_at(5) == pytest.approx(0.1)


# --- the trainer and its checkpoints ----------------------------------------------------------------------------------
def _data(n=64, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def _trainer(seed=0):
    model = _model(np.float32, seed)
    opt = SGD([{"params": model[0].parameters(), "lr": 0.05}, {"params": model[2].parameters()}], lr=0.2,
              momentum=0.9)
    return Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=optim.StepLR(opt, step_size=1, gamma=0.5),
                   progress=False, seed=seed)


def test_trainer_with_groups_records_the_first_groups_rate_and_resumes_exactly(tmp_path):
    x, y = _data()
    straight = _trainer()
    straight.fit(x, y, epochs=3, batch_size=16)
    assert straight.history["lr"][:4] == [0.05] * 4 and straight.history["lr"][4] == 0.025
    assert [g["lr"] for g in straight.optimizer.param_groups] == [0.00625, 0.025]

    first = _trainer()
    first.fit(x, y, epochs=2, batch_size=16)
    path = tmp_path / "groups.npz"
    checkpoint.save_trainer(path, first)
    resumed = _trainer()
    resumed.optimizer.param_groups[1]["lr"] = 3.0               # overwritten by the load
    checkpoint.load_trainer(path, resumed)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [0.0125, 0.05]
    resumed.fit(x, y, epochs=3, batch_size=16)
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)

    model = _model(np.float32)
    single = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1), progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="parameter group"):
        checkpoint.load_trainer(path, single)


# --- weight_decay_groups ----------------------------------------------------------------------------------------------
def test_weight_decay_groups_split_weights_from_biases_and_norm_parameters():
    shared, tied = nn.Linear(4, 4), nn.Linear(4, 4)
    tied.weight, tied.bias = shared.weight, shared.bias         # parameters shared by two layers count once
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.PReLU(4), shared, nn.ReLU(), tied)
    model[0].bias.requires_grad = False                         # frozen ones are included
    decayed, others = optim.weight_decay_groups(model, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and others["weight_decay"] == 0.0
    assert decayed["params"] == [model[0].weight, shared.weight]
    assert others["params"] == [model[0].bias, model[1].weight, model[1].bias, model[2].alpha, shared.bias]
    penalised = [param for _, param in nn.L2Penalty(1.0).penalized(model)]
    assert penalised == decayed["params"]                       # the parameters L2Penalty covers
    from_params = optim.weight_decay_groups(model.parameters(), 5e-4)     # what tune's optimizer_factory receives
    assert [g["params"] for g in from_params] == [decayed["params"], others["params"]]
    with pytest.raises(TypeError, match="expected a cynet.nn.Module or an iterable of Parameter"):
        optim.weight_decay_groups([model[0].weight, np.zeros(3)], 0.1)
    with pytest.raises(TypeError, match="expected a cynet.nn.Module or an iterable of Parameter, got int"):
        optim.weight_decay_groups(3, 0.1)


def test_a_layernorm_over_two_axes_keeps_its_gain_and_shift_out_of_decay_and_penalties():
    # before: its (3, 4) gain and shift have ndim 2 and were decayed and penalised like weight matrices
    model = nn.Sequential(nn.LayerNorm((3, 4)), nn.Linear(4, 2), nn.GroupNorm(1, 3))
    decayed, others = optim.weight_decay_groups(model, 1e-2)
    assert decayed["params"] == [model[1].weight]
    assert others["params"] == [model[0].weight, model[0].bias, model[1].bias, model[2].weight, model[2].bias]
    assert [name for name, _ in nn.L2Penalty(1.0).penalized(model)] == ["1.weight"]
    assert nn.L2Penalty(2.0)(model) == pytest.approx(np.sum(model[1].weight.data.astype(np.float64) ** 2))  # by hand


def test_weight_decay_groups_leave_the_biases_undecayed():
    """One SGD step from a zero gradient: weights shrink by lr * wd, biases stay (hand-computed)."""
    model = _model()
    before = [p.data.copy() for p in model.parameters()]
    opt = SGD(optim.weight_decay_groups(model, 0.1), lr=0.5)
    for param in model.parameters():
        param.grad = np.zeros_like(param.data)
    opt.step()
    for param, old in zip(model.parameters(), before):
        expected = old * (1 - 0.5 * 0.1) if old.ndim == 2 else old
        np.testing.assert_allclose(param.data, expected, rtol=1e-15)


def test_group_in_place_union_is_checked_as_update():
    # g |= {...} went through dict's own method: lr -1 and a misspelt key were kept, and the step moved the wrong way
    p = nn.Parameter(np.ones(2))
    opt = SGD([p], lr=0.1)
    group = opt.param_groups[0]
    with pytest.raises(ValueError):
        group |= {"lr": -1.0}
    with pytest.raises((KeyError, TypeError, ValueError), match="momentun"):
        group |= {"momentun": 0.5}
    assert group["lr"] == 0.1 and "momentun" not in group
    group |= {"lr": 0.5}
    assert opt.param_groups[0] is group and group["lr"] == 0.5
    p.grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(p.data, 0.5)              # 1 - 0.5 * 1


@pytest.mark.parametrize("build", [lambda a, b: SGD([{"params": {a, b}}], lr=0.1), lambda a, b: SGD({a, b}, lr=0.1)])
def test_parameters_in_a_set_are_refused_as_pytorch_refuses_them(build):
    # a set's order changes between runs; the state is saved by position, so a resumed run could swap two states
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="order changes from run to run"):
        build(a, b)


@pytest.mark.parametrize("cls, settings", [(RMSProp, {"lr": 0.01}), (SGD, {"lr": 0.1})])
def test_momentum_switched_on_between_steps_saves_a_state_that_loads(cls, settings):
    # the state had no momentum buffer yet (it is made by the first step with momentum); load refused it
    def build():
        p = nn.Parameter(np.linspace(-1, 1, 4))
        return p, cls([p], **settings)

    p, opt = build()
    p.grad[...] = 0.3
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    state = opt.state_dict()
    q, other = build()
    q.data[...] = p.data
    other.param_groups[0]["momentum"] = 0.9
    other.load_state_dict(state)
    for param, optimizer in ((p, opt), (q, other)):          # both go on alike: the buffer made at the next step
        param.grad[...] = -0.2
        optimizer.step()
    np.testing.assert_array_equal(q.data, p.data)


def test_an_alias_setting_is_in_the_group_as_it_reads():
    # "betas" in group was False while group["betas"] worked: PyTorch code guarded by it skipped its assignment
    from cynet import nn, optim
    opt = optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-3, betas=(0.8, 0.99))
    group = opt.param_groups[0]
    assert "betas" in group and "lr" in group and "beta1" in group and "nesterov" not in group
    if "betas" in group:
        group["betas"] = (0.5, 0.9)
    assert group["betas"] == (0.5, 0.9) and group.get("betas") == (0.5, 0.9) and group.get("nope", 1) == 1
