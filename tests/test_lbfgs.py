"""L-BFGS (cynet.optim.LBFGS): torch.optim.LBFGS step for step in float64 (fixed steps and strong Wolfe), the exact
minimiser of a quadratic, Rosenbrock's valley, the cubic interpolation, state dicts, snapshots, validation, and the
trainer and its checkpoints driving it.
"""
import io

import numpy as np
import pytest

import cynet
from cynet import checkpoint, nn
from cynet.optim import LBFGS, loss_closure
from cynet.optim.lbfgs import _cubic_minimum
from cynet.train import Trainer

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")


def _data(n=60, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 4, n)


def _model(dtype=np.float64, seed=0):
    cynet.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).to(dtype)


def _function_closure(param, function):
    """A closure for one Parameter: ``function(x) -> (value, gradient)``."""
    def closure():
        value, gradient = function(param.data)
        param.grad = gradient
        return value
    return closure


@needs_torch
@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_matches_torch_step_for_step(line_search):
    x, y = _data()
    model = _model()
    reference = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    with torch.no_grad():
        for theirs, ours in zip(reference.parameters(), model.parameters()):
            theirs.copy_(torch.from_numpy(ours.data))
    settings = dict(lr=0.5 if line_search is None else 1.0, history_size=4, max_iter=7, line_search_fn=line_search)
    opt = LBFGS(model.parameters(), **settings)
    theirs_opt = torch.optim.LBFGS(reference.parameters(), **settings)
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def theirs_closure():
        theirs_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(tx), ty)
        loss.backward()
        return loss

    for _ in range(4):
        ours_loss, theirs_loss = opt.step(closure), theirs_opt.step(theirs_closure).item()
        assert ours_loss == pytest.approx(theirs_loss, rel=1e-10)
        for theirs, ours in zip(reference.parameters(), model.parameters()):
            np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=0, atol=1e-9)
        state = theirs_opt.state[theirs_opt._params[0]]
        assert (opt._memory["n_iter"], opt._memory["func_evals"]) == (state["n_iter"], state["func_evals"])
        assert len(opt._memory["old_dirs"]) == len(state["old_dirs"]) <= 4


@needs_torch
def test_the_line_search_gets_what_is_left_of_max_eval_as_in_torch():
    """A tiny first step makes the line search extrapolate for long: it was given 25 evaluations whatever max_eval
    said (8 closure calls for max_eval=5); torch gives it max_eval minus the calls made so far."""
    x, y = _data()
    for max_iter, max_eval in ((4, 5), (3, 3), (10, 12)):
        model = _model()
        reference = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
        with torch.no_grad():
            for theirs, ours in zip(reference.parameters(), model.parameters()):
                theirs.copy_(torch.from_numpy(ours.data))
        settings = dict(lr=1e-6, max_iter=max_iter, max_eval=max_eval, line_search_fn="strong_wolfe")
        opt, theirs_opt = LBFGS(model.parameters(), **settings), torch.optim.LBFGS(reference.parameters(), **settings)
        inner, calls = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y), []
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def closure():
            calls.append("ours")
            return inner()

        def theirs_closure():
            calls.append("theirs")
            theirs_opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(reference(tx), ty)
            loss.backward()
            return loss

        opt.step(closure)
        theirs_opt.step(theirs_closure)
        assert calls.count("ours") == calls.count("theirs") <= max_eval + 1
        assert opt._memory["func_evals"] == calls.count("ours")


@needs_torch
def test_the_line_search_keeps_its_own_interval_tolerance_as_in_torch():
    """tolerance_change is the step's stopping rule; torch's line search stops shrinking its interval below 1e-9
    whatever it is. With tolerance_change=0 handed to the search, the last search near the solution of a quadratic
    shrank its interval to the loss's rounding and spent what was left of max_eval: 251 evaluations, torch's 29."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a = q @ np.diag(np.geomspace(1.0, 50.0, 12)) @ q.T
    b = rng.standard_normal(12)
    settings = dict(max_iter=200, tolerance_grad=1e-11, tolerance_change=0.0, line_search_fn="strong_wolfe")
    param = nn.Parameter(np.zeros(12))
    opt = LBFGS([param], **settings)
    opt.step(_function_closure(param, lambda x: (0.5 * x @ a @ x - b @ x, a @ x - b)))
    theirs = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    theirs_opt = torch.optim.LBFGS([theirs], **settings)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    def theirs_closure():
        theirs_opt.zero_grad()
        loss = 0.5 * theirs @ ta @ theirs - tb @ theirs
        loss.backward()
        return loss

    theirs_opt.step(theirs_closure)
    state = theirs_opt.state[theirs_opt._params[0]]
    # the same evaluations; the iteration that stops at the loss's rounding may come one apart (losses differ in
    # the last bits: NumPy's and torch's sums)
    assert opt._memory["func_evals"] == state["func_evals"] < 40
    assert abs(opt._memory["n_iter"] - state["n_iter"]) <= 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_quadratic_reaches_the_solution_of_the_linear_system(dtype):
    # f(x) = x'Ax/2 - b'x, minimised at A^-1 b; L-BFGS with n pairs is exact on it up to the line search's rounding
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a = q @ np.diag(np.geomspace(1.0, 50.0, 12)) @ q.T
    b = rng.standard_normal(12)
    param = nn.Parameter(np.zeros(12, dtype=dtype))
    opt = LBFGS([param], max_iter=200, tolerance_grad=1e-11, tolerance_change=0.0, line_search_fn="strong_wolfe")
    opt.step(_function_closure(param, lambda x: (0.5 * x @ a @ x - b @ x, (a @ x - b).astype(dtype))))
    # the line search compares losses: near the solution they differ by ~lambda |x - x*|^2, below the loss's rounding
    # once |x - x*| is under ~sqrt(eps) = 1.5e-8; where the search stops below that is rounding (torch: 2.2e-10 here,
    # cynet 1.6e-9, the same 29 evaluations, losses equal to 4e-16 on the way)
    tolerance = 1e-8 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(param.data, np.linalg.solve(a, b), rtol=0, atol=tolerance)
    # float64 stops on its own (a step of zero length) after 25 iterations; a float32 gradient never gets under 1e-11
    # and tolerance_change=0 never stops it, so it spends max_eval (250 evaluations in 99 iterations, as torch's)
    assert opt._memory["n_iter"] < 60 if dtype == np.float64 else opt._memory["func_evals"] <= 251


def test_rosenbrock_valley_is_crossed_with_the_line_search():
    def rosenbrock(x):
        value = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        gradient = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
        return value, gradient

    param = nn.Parameter(np.array([-1.5, 2.0]))
    opt = LBFGS([param], max_iter=100, tolerance_grad=1e-10, tolerance_change=0.0, line_search_fn="strong_wolfe")
    first = opt.step(_function_closure(param, rosenbrock))
    assert first == pytest.approx(rosenbrock([-1.5, 2.0])[0])
    np.testing.assert_allclose(param.data, [1.0, 1.0], atol=1e-6)

    assert opt._memory["n_iter"] < 100


def test_cubic_interpolation_finds_the_minimum_of_a_cubic_and_a_parabola():
    # f = x^3 - 3x: f(0) = 0, f'(0) = -3, f(2) = 2, f'(2) = 9; minimum at x = 1
    assert _cubic_minimum(0.0, 0.0, -3.0, 2.0, 2.0, 9.0) == pytest.approx(1.0, abs=1e-15)
    assert _cubic_minimum(2.0, 2.0, 9.0, 0.0, 0.0, -3.0) == pytest.approx(1.0, abs=1e-15)
    # f = (x - 0.3)^2 on [0, 1]
    assert _cubic_minimum(0.0, 0.09, -0.6, 1.0, 0.49, 1.4) == pytest.approx(0.3, abs=1e-15)
    # clipped to the bounds given, and the middle when the cubic has no minimum (slopes 2 at both ends of a secant
    # of slope 1: d2^2 = 1 - 4 < 0)
    assert _cubic_minimum(0.0, 0.0, -3.0, 2.0, 2.0, 9.0, 1.5, 3.0) == 1.5
    assert _cubic_minimum(0.0, 0.0, 2.0, 1.0, 1.0, 2.0) == 0.5
    assert _cubic_minimum(1.0, 0.0, 1.0, 1.0, 0.0, 1.0) == 1.0                # one point: no division by zero


def test_full_batch_training_fits_and_keeps_at_most_history_size_pairs():
    x, y = _data(80)
    model = _model()
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y)
    opt = LBFGS(model.parameters(), history_size=3, line_search_fn="strong_wolfe")
    start = closure()
    for _ in range(5):
        opt.step(closure)
    assert closure() < 0.3 * start
    assert len(opt._memory["old_dirs"]) == len(opt._memory["ro"]) == 3
    assert opt.step_count == 5 and opt._memory["n_iter"] > 5


def test_a_converged_problem_returns_at_once_and_a_frozen_parameter_stays():
    model = _model()
    model[0].weight.requires_grad = False
    frozen = model[0].weight.data.copy()
    x, y = _data()
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y)
    opt = LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    opt.step(closure)
    np.testing.assert_array_equal(model[0].weight.data, frozen)
    assert opt._memory["d"].size == sum(p.data.size for p in model.parameters() if p.requires_grad)

    param = nn.Parameter(np.ones(3))
    opt = LBFGS([param], tolerance_grad=1e-3)
    calls = []
    opt.step(lambda: calls.append(1) or 0.0)      # zero gradient: converged before the first iteration
    assert calls == [1] and opt._memory["n_iter"] == 0
    np.testing.assert_array_equal(param.data, np.ones(3))


def _interrupted_equals_straight(save_and_load, line_search_fn="strong_wolfe"):
    x, y = _data()
    straight = _model()
    opt = LBFGS(straight.parameters(), history_size=3, max_iter=4, line_search_fn=line_search_fn)
    closure = loss_closure(straight, nn.SoftmaxCrossEntropy(), x, y)
    for _ in range(4):
        opt.step(closure)

    first = _model()
    first_opt = LBFGS(first.parameters(), history_size=3, max_iter=4, line_search_fn=line_search_fn)
    first_closure = loss_closure(first, nn.SoftmaxCrossEntropy(), x, y)
    for _ in range(2):
        first_opt.step(first_closure)
    resumed = _model(seed=5)
    resumed.load_state_dict(first.state_dict())
    resumed_opt = LBFGS(resumed.parameters(), lr=0.3, history_size=3,
                        line_search_fn="strong_wolfe" if line_search_fn is None else None)
    save_and_load(first_opt, resumed_opt)
    assert resumed_opt.param_groups[0]["line_search_fn"] == line_search_fn
    assert resumed_opt.max_iter == 4 and resumed_opt.lr == 1.0
    resumed_closure = loss_closure(resumed, nn.SoftmaxCrossEntropy(), x, y)
    for _ in range(2):
        resumed_opt.step(resumed_closure)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert resumed_opt._memory["func_evals"] == opt._memory["func_evals"]


def test_state_dict_resumes_exactly():
    _interrupted_equals_straight(lambda source, target: target.load_state_dict(source.state_dict()))


@pytest.mark.parametrize("line_search_fn", ["strong_wolfe", None])
def test_a_state_dict_read_back_from_npz_resumes_exactly(line_search_fn):
    """np.savez/np.load hands every setting back as a 0-d array: LBFGS refused them ("max_iter must be an int >= 1,
    got array(4)"), where the other optimisers and the schedules take them; now they load as their Python values."""
    def through_npz(source, target):
        buffer = io.BytesIO()
        np.savez(buffer, **source.state_dict())
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as saved:
            target.load_state_dict(dict(saved))
        group = target.param_groups[0]
        assert type(group["max_iter"]) is int and type(group["history_size"]) is int
        # None (the default) was saved as an object array that np.load(allow_pickle=False) refused
        assert group["line_search_fn"] == line_search_fn and type(group["line_search_fn"]) is type(line_search_fn)

    _interrupted_equals_straight(through_npz, line_search_fn)


def test_state_dict_is_flat_and_checked():
    x, y = _data()
    model = _model()
    opt = LBFGS(model.parameters(), history_size=2, max_iter=5)
    assert opt.state_dict()["lbfgs.n_iter"] == 0 and "lbfgs.d" not in opt.state_dict()
    opt.step(loss_closure(model, nn.SoftmaxCrossEntropy(), x, y))
    state = opt.state_dict()
    n = sum(p.data.size for p in model.parameters())
    assert state["lbfgs.old_dirs"].shape == (2, n) and state["lbfgs.ro"].shape == (2,)
    assert state["line_search_fn"] == "none" and state["max_eval"] == 6        # None, saved without pickle
    other = LBFGS(_model().parameters(), history_size=2)
    with pytest.raises(ValueError, match=r"lbfgs.d must have shape \(92,\)"):
        other.load_state_dict({**state, "lbfgs.d": np.zeros(3)})
    with pytest.raises(KeyError, match=r"missing keys \['lbfgs.ro'\]"):
        other.load_state_dict({key: value for key, value in state.items() if key != "lbfgs.ro"})
    with pytest.raises(KeyError, match="unexpected keys"):
        other.load_state_dict({**state, "lbfgs.rho": 1.0})
    # the pairs are checked against the state's history_size, which the load brings with it (not the optimiser's)
    with pytest.raises(ValueError, match=r"at most the state's history_size \(1\)"):
        LBFGS(_model().parameters(), history_size=5).load_state_dict({**state, "history_size": 1})
    smaller = LBFGS(_model().parameters(), history_size=1)
    smaller.load_state_dict(state)
    assert smaller.param_groups[0]["history_size"] == 2 and len(smaller._memory["ro"]) == 2
    with pytest.raises(ValueError, match="not 'LBFGS'"):
        other.load_state_dict({**state, "type": "SGD"})
    with pytest.raises(ValueError, match="lbfgs.n_iter must be a non-negative int, got -1"):
        other.load_state_dict({**state, "lbfgs.n_iter": -1})
    with pytest.raises(ValueError, match=r"lbfgs.old_dirs must have shape \(2, 92\), got \(2, 91\)"):
        other.load_state_dict({**state, "lbfgs.old_dirs": np.zeros((2, 91))})
    assert other._memory == {"n_iter": 0, "func_evals": 0}        # refused loads change nothing


def test_snapshot_and_restore_bring_back_the_curvature_pairs():
    x, y = _data()
    model = _model()
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y)
    opt = LBFGS(model.parameters(), max_iter=3)
    opt.step(closure)
    weights = [p.data.copy() for p in model.parameters()]
    saved = opt.snapshot()
    opt.step(closure)
    after = [p.data.copy() for p in model.parameters()]
    for p, w in zip(model.parameters(), weights):
        np.copyto(p.data, w)
    opt.restore(saved)
    opt.step(closure)
    for p, w in zip(model.parameters(), after):
        np.testing.assert_array_equal(p.data, w)


def test_settings_and_misuse_are_refused_with_clear_errors():
    params = _model().parameters()
    with pytest.raises(ValueError, match="max_iter must be an int >= 1, got 0"):
        LBFGS(params, max_iter=0)
    with pytest.raises(ValueError, match="history_size must be an int >= 1"):
        LBFGS(params, history_size=2.5)
    with pytest.raises(ValueError, match="line_search_fn must be None or 'strong_wolfe', got 'armijo'"):
        LBFGS(params, line_search_fn="armijo")
    with pytest.raises(ValueError, match="invalid tolerance_grad value: -1"):
        LBFGS(params, tolerance_grad=-1)
    with pytest.raises(ValueError, match="parameter groups are not supported"):
        LBFGS([{"params": params[:2]}, {"params": params[2:]}])
    opt = LBFGS(params)
    with pytest.raises(ValueError, match="parameter groups are not supported"):
        opt.add_param_group({"params": [nn.Parameter(np.ones(2))]})
    with pytest.raises(TypeError, match=r"needs a closure .*step\(closure\)"):
        opt.step()
    with pytest.raises(TypeError, match="the same dtype"):
        LBFGS([nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2, np.float32))])
    frozen = nn.Parameter(np.ones(2), requires_grad=False)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        LBFGS([frozen]).step(lambda: 0.0)
    opt.max_iter = 3
    assert opt.param_groups[0]["max_iter"] == 3 and opt.max_iter == 3
    model = _model()
    opt = LBFGS(model.parameters(), max_iter=2)
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), *_data())
    opt.step(closure)
    model[0].weight.requires_grad = False           # the curvature pairs no longer fit the learning parameters
    with pytest.raises(ValueError, match=r"the learning parameters hold 44 values, the curvature pairs 92"):
        opt.step(closure)


def _trainer(model=None):
    model = model if model is not None else _model()
    return Trainer(model, nn.SoftmaxCrossEntropy(), LBFGS(model.parameters(), max_iter=5, history_size=4,
                                                          line_search_fn="strong_wolfe"),
                   regularization=nn.L2Penalty(1e-3), progress=False)


def test_trainer_drives_lbfgs_full_batch_as_a_hand_written_loop_does():
    x, y = _data()
    trainer = _trainer()
    history = trainer.fit(x, y, epochs=4, batch_size=len(x), shuffle=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]

    model = _model()
    opt = LBFGS(model.parameters(), max_iter=5, history_size=4, line_search_fn="strong_wolfe")
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y, nn.L2Penalty(1e-3))
    for _ in range(4):
        opt.step(closure)
    for p, q in zip(trainer.model.parameters(), model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert trainer.optimizer._memory["func_evals"] == opt._memory["func_evals"]   # the first calls count, reused


def test_trainer_checkpoint_with_lbfgs_resumes_exactly(tmp_path):
    x, y = _data()
    straight = _trainer()
    straight.fit(x, y, epochs=4, batch_size=30)
    first = _trainer()
    first.fit(x, y, epochs=2, batch_size=30)
    path = tmp_path / "lbfgs.npz"
    checkpoint.save_trainer(path, first)
    resumed = _trainer(_model(seed=7))
    checkpoint.load_trainer(path, resumed)
    resumed.fit(x, y, epochs=4, batch_size=30)
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def _quadratic_closure(p, fail_at=None):
    """f = sum_i i p_i^2 / 2 (curvatures 1..n, so L-BFGS needs several steps); raises KeyboardInterrupt at the call
    numbered ``fail_at``, or returns NaN from the call numbered ``-fail_at`` when negative."""
    calls = [0]
    scale = np.arange(1, p.data.size + 1, dtype=np.float64)

    def closure():
        calls[0] += 1
        if fail_at is not None and calls[0] == fail_at:
            raise KeyboardInterrupt
        if fail_at is not None and calls[0] == -fail_at:
            p.grad[...] = np.nan
            return float("nan")
        p.grad[...] = scale * p.data
        return float(0.5 * (scale * p.data) @ p.data)
    return closure


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_an_interrupted_step_leaves_the_parameters_and_the_memory_as_before(line_search):
    # a KeyboardInterrupt in the closure left the parameters at a trial point and n_iter counting an iteration whose
    # direction was never stored: every later step failed with a TypeError
    p = nn.Parameter(np.linspace(1.0, 3.0, 6))
    reference = nn.Parameter(p.data.copy())
    opt = LBFGS([p], line_search_fn=line_search, max_iter=2)
    twin = LBFGS([reference], line_search_fn=line_search, max_iter=2)
    opt.step(_quadratic_closure(p))
    twin.step(_quadratic_closure(reference))
    before = p.data.copy()
    with pytest.raises(KeyboardInterrupt):
        opt.step(_quadratic_closure(p, fail_at=2))
    np.testing.assert_array_equal(p.data, before)
    opt.step(_quadratic_closure(p))                      # as if the interrupted step never ran
    twin.step(_quadratic_closure(reference))
    np.testing.assert_array_equal(p.data, reference.data)
    assert opt.state_dict().keys() == twin.state_dict().keys()


def test_a_non_finite_loss_in_the_line_search_is_named_and_changes_nothing():
    p = nn.Parameter(np.ones(3))
    opt = LBFGS([p], line_search_fn="strong_wolfe")
    with pytest.raises(FloatingPointError, match="line search met a loss of nan"):
        opt.step(_quadratic_closure(p, fail_at=-2))      # was a bare IndexError from the bracket
    np.testing.assert_array_equal(p.data, 1.0)
    assert opt.state_dict()["lbfgs.n_iter"] == 0


def test_a_lowered_history_size_trims_the_pairs_and_the_state_loads_back():
    p = nn.Parameter(np.linspace(-2.0, 2.0, 6))
    opt = LBFGS([p], history_size=5, max_iter=6)

    def bowl():                                           # curvature 1..6: the pairs carry information
        p.grad[...] = np.arange(1, 7) * p.data
        return float(0.5 * (np.arange(1, 7) * p.data) @ p.data)

    opt.step(bowl)
    opt.history_size = 2
    for _ in range(3):
        p.data[...] += 0.5                                # move away so that every step adds pairs
        opt.step(bowl)
        assert len(opt.state_dict()["lbfgs.ro"]) <= 2
    opt.load_state_dict(opt.state_dict())                 # refused: ro held 23 values against history_size 2


def test_a_state_that_counts_iterations_without_their_direction_is_refused():
    p = nn.Parameter(np.ones(3))
    opt = LBFGS([p])
    state = opt.state_dict()
    state["lbfgs.n_iter"] = 4                             # accepted, then the next step failed with a TypeError
    with pytest.raises(KeyError, match="missing keys .*lbfgs.d"):
        opt.load_state_dict(state)


def test_a_state_saved_right_after_lowering_history_size_loads_and_resumes_exactly():
    # the memory held 5 pairs against history_size 2 until the next iteration trimmed them: state_dict exported all 5
    # and load_state_dict (its own output, or a fresh optimiser's) refused them ("at most the state's history_size")
    def run(p):
        def bowl():
            p.grad[...] = np.arange(1, 7) * p.data
            return float(0.5 * (np.arange(1, 7) * p.data) @ p.data)
        return bowl

    straight_p, resumed_p = nn.Parameter(np.linspace(-2.0, 2.0, 6)), nn.Parameter(np.linspace(-2.0, 2.0, 6))
    straight = LBFGS([straight_p], history_size=5, max_iter=6)
    first = LBFGS([resumed_p], history_size=5, max_iter=6)
    straight.step(run(straight_p))
    first.step(run(resumed_p))
    assert len(first._memory["ro"]) == 5
    straight.history_size = first.history_size = 2
    state = first.state_dict()
    assert state["lbfgs.ro"].shape == (2,) and state["lbfgs.old_dirs"].shape == (2, 6)
    resumed = LBFGS([resumed_p], history_size=7)
    resumed.load_state_dict(state)
    first.load_state_dict(first.state_dict())
    for _ in range(3):
        straight_p.data += 0.5
        resumed_p.data += 0.5
        assert straight.step(run(straight_p)) == resumed.step(run(resumed_p))
        np.testing.assert_array_equal(straight_p.data, resumed_p.data)
        assert len(straight._memory["ro"]) <= 2


def test_a_non_finite_loss_in_the_trainers_line_search_is_the_divergence_guards_case():
    # the line search's closure calls run forward passes: on a NaN it put the weights back but raised out of fit,
    # the batch norm's running statistics left at the overflowed trial point's (running_var inf)
    x, y = _data()
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4)).to(np.float64)
    weights = [p.data.copy() for p in model.parameters()]
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), LBFGS(model.parameters(), lr=1e300, max_iter=5,
                                                             line_search_fn="strong_wolfe"), progress=False)
    with np.errstate(all="ignore"), pytest.warns(cynet.train.DivergenceWarning, match="non-finite loss"):
        trainer.fit(x, y, epochs=1, batch_size=len(x), shuffle=False)
    assert trainer.stop_reason.startswith("diverged at iteration 1")
    for p, w in zip(model.parameters(), weights):
        np.testing.assert_array_equal(p.data, w)
    # by hand: the iteration's own forward moved the statistics once (momentum 0.1) from (0, 1)
    h = x @ weights[0].T + weights[1]
    np.testing.assert_allclose(model[1].running_mean, 0.1 * h.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model[1].running_var, 0.9 + 0.1 * h.var(axis=0, ddof=1), rtol=1e-12)


def test_batch_norm_in_training_mode_keeps_the_loss_and_moves_its_running_statistics_per_closure_call():
    # the docstring's account: the same loss at every call, one running-statistics update per call
    x, y = _data()
    cynet.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4)).to(np.float64)
    closure = loss_closure(model, nn.SoftmaxCrossEntropy(), x, y)
    assert closure() == closure()
    opt = LBFGS(model.parameters(), max_iter=5, line_search_fn="strong_wolfe")
    opt.step(closure)
    assert model[1].num_batches_tracked == 2 + opt.state_dict()["lbfgs.func_evals"]
