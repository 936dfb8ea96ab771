r"""L-BFGS, the limited-memory quasi-Newton method of CS231n's "second-order optimization" slide, with PyTorch's
algorithm and API: ``opt.step(closure)``, where the closure re-evaluates the loss and the gradients.

The lecture's verdict, which :class:`LBFGS`'s docstring and ``examples/optimizer_lab.py`` let you check: L-BFGS
"usually works very well in full batch, deterministic mode", and "does not transfer very well to the mini-batch
setting". Every step works on all parameters at once, as one flat vector (the concatenation of the learning
parameters), so it keeps ``2 * history_size`` such vectors: 100 pairs of a 3.7 M-parameter MLP take 2.9 GB in float32.
"""
import copy
import math

import numpy as np

from cynet.optim.optimizers import Optimizer, _unwrap

__all__ = ["LBFGS", "loss_closure"]

_LINE_SEARCHES = (None, "strong_wolfe")
# line_search_fn None as state_dict() writes it: a string np.savez stores without pickle
SAVED_NO_LINE_SEARCH = "none"
_SCALARS = ("n_iter", "func_evals", "t", "H_diag", "prev_loss")       # the memory's scalars (t and after: optional)
_VECTORS = ("d", "prev_flat_grad")                                     # the memory's flat vectors (optional)
_HISTORY = ("old_dirs", "old_stps", "ro")                              # (k, n), (k, n), (k,): the curvature pairs


def _cubic_minimum(x1, f1, g1, x2, f2, g2, low=None, high=None):
    r"""The minimiser of the cubic through :math:`(x_1, f_1)` and :math:`(x_2, f_2)` with slopes :math:`g_1, g_2`
    (Nocedal and Wright, eq. 3.59), clipped to ``[low, high]`` (default: the interval between the two points); the
    interval's middle when the cubic has no minimum there."""
    if low is None:
        low, high = min(x1, x2), max(x1, x2)
    if x1 == x2:
        return (low + high) / 2.0
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if not d2_square >= 0:
        return (low + high) / 2.0
    d2 = math.sqrt(d2_square)
    if x1 <= x2:
        denominator = g2 - g1 + 2.0 * d2
        position = x2 - (x2 - x1) * ((g2 + d2 - d1) / denominator) if denominator != 0 else math.nan
    else:
        denominator = g1 - g2 + 2.0 * d2
        position = x1 - (x1 - x2) * ((g1 + d2 - d1) / denominator) if denominator != 0 else math.nan
    if not math.isfinite(position):
        return (low + high) / 2.0
    return min(max(position, low), high)


class _Point:
    """A point of the line search: step ``t``, loss ``f``, gradient ``g`` (flat) and slope ``gtd`` = g . d."""
    __slots__ = ("t", "f", "g", "gtd")

    def __init__(self, t, f, g, gtd):
        self.t, self.f, self.g, self.gtd = t, f, g, gtd


def _strong_wolfe(evaluate, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    r"""A step length along ``d`` meeting the strong Wolfe conditions (Nocedal and Wright, algorithms 3.5 and 3.6,
    as PyTorch implements them):

    .. math::
        f(x + t d) \le f(x) + c_1 t\, g^\top d, \qquad |g(x + t d)^\top d| \le c_2 |g^\top d|

    First the steps grow (cubic extrapolation, at most 10x per try) until an interval brackets such a step, then the
    interval shrinks (cubic interpolation, kept 10% away from its ends) until one is found, the interval is shorter
    than ``tolerance_change`` along ``d``, or ``max_ls`` evaluations were made.

    Args:
        evaluate (callable): ``evaluate(t) -> (loss, flat gradient)`` at ``x + t d`` (the parameters left at x).
        t (float): the first step to try. d (ndarray): the direction. f, g, gtd: loss, gradient and slope at t = 0.

    Returns:
        tuple: ``(loss, flat gradient, t, evaluations)`` at the step chosen.
    """
    d_norm = float(np.abs(d).max())
    f_new, g_new = evaluate(t)
    evaluations = 1
    gtd_new = float(np.dot(g_new, d))
    previous = _Point(0.0, f, g, gtd)
    bracket, done, ls_iter = None, False, 0
    while ls_iter < max_ls:
        current = _Point(t, f_new, g_new, gtd_new)
        if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= previous.f):
            bracket = [previous, current]               # too far: a minimum lies between the last two steps
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, done = [current], True            # both conditions hold
            break
        if gtd_new >= 0:
            bracket = [previous, current]               # past the minimum along d
            break
        t = _cubic_minimum(previous.t, previous.f, previous.gtd, t, f_new, gtd_new,
                           t + 0.01 * (t - previous.t), t * 10)
        previous = current
        f_new, g_new = evaluate(t)
        evaluations += 1
        gtd_new = float(np.dot(g_new, d))
        ls_iter += 1
    if ls_iter == max_ls:
        bracket = [_Point(0.0, f, g, gtd), _Point(t, f_new, g_new, gtd_new)]

    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    insufficient_progress = False
    while not done and ls_iter < max_ls:
        ends = (bracket[0].t, bracket[1].t)
        if abs(ends[1] - ends[0]) * d_norm < tolerance_change:
            break
        t = _cubic_minimum(bracket[0].t, bracket[0].f, bracket[0].gtd, bracket[1].t, bracket[1].f, bracket[1].gtd)
        # keep t at least 10% of the interval away from its ends (unless the last try made progress there)
        margin = 0.1 * (max(ends) - min(ends))
        if min(max(ends) - t, t - min(ends)) < margin:
            if insufficient_progress or t >= max(ends) or t <= min(ends):
                t = max(ends) - margin if abs(t - max(ends)) < abs(t - min(ends)) else min(ends) + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        f_new, g_new = evaluate(t)
        evaluations += 1
        gtd_new = float(np.dot(g_new, d))
        ls_iter += 1
        current = _Point(t, f_new, g_new, gtd_new)
        if f_new > f + c1 * t * gtd or f_new >= bracket[low].f:
            bracket[high] = current                     # sufficient decrease fails: the new point ends the interval
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]            # the old low end becomes the high end
            bracket[low] = current
    best = bracket[low]
    return best.f, best.g, best.t, evaluations


def _counts_past_zero(value):
    """Whether a saved counter (any type; checked afterwards) is a number above 0."""
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


class LBFGS(Optimizer):
    r"""L-BFGS (Liu and Nocedal, 1989): quasi-Newton steps from the last ``history_size`` gradient differences, in
    PyTorch's form (``torch.optim.LBFGS``: the same algorithm, settings, stopping rules and strong-Wolfe line search,
    so float64 runs agree with PyTorch's step for step).

    With :math:`s_k = x_{k+1} - x_k` and :math:`y_k = g_{k+1} - g_k` (kept when :math:`y_k^\top s_k > 10^{-10}`), the
    direction is :math:`d = -H g`, where :math:`H` approximates the inverse Hessian by the two-loop recursion, starting
    from :math:`H_0 = \frac{y^\top s}{y^\top y} I` (the last pair). The step length is ``lr`` (the first iteration:
    :math:`\min(1, 1 / \|g\|_1)\,` ``lr``), or what the strong-Wolfe line search finds from there.

    ``step(closure)`` runs up to ``max_iter`` iterations on one objective; the closure must zero the gradients,
    compute the loss, run the backward pass and return the loss (:func:`loss_closure` builds one). Each
    ``step`` stops early when the largest gradient entry is at most ``tolerance_grad``, the loss or the step change
    by less than ``tolerance_change``, the direction stops descending, or ``max_eval`` closure calls were made. The
    curvature pairs carry over from one ``step`` to the next.

    CS231n: L-BFGS "usually works very well in full batch, deterministic mode", and "does not transfer very well to
    the mini-batch setting": a different batch per ``step`` breaks the pairs, and dropout in training mode makes even
    one batch's loss change between closure calls (a new mask each call). Batch norm in training mode keeps one
    batch's loss the same (its batch statistics), but every closure call's forward pass updates its running
    statistics: up to ``max_eval + 1`` times per ``step`` (switch these layers to eval mode, or use SGD there).

    Args:
        params (iterable of Parameter): the parameters (one group: L-BFGS has no per-parameter settings); all of one
            dtype. Frozen ones stay as they are.
        lr (float): learning rate (step length before any line search). Default 1.
        max_iter (int): iterations per ``step``. Default 20.
        max_eval (int): closure calls per ``step``; the strong-Wolfe line search gets what is left of them, and as
            in PyTorch its first try comes on top, so a step makes at most ``max_eval + 1``. Default
            ``max_iter * 5 // 4``.
        tolerance_grad (float): stop when max |g| is at most this. Default 1e-7.
        tolerance_change (float): stop when the loss, or every step entry, changes by less. Default 1e-9.
        history_size (int): curvature pairs kept. Default 100.
        line_search_fn (str or None): ``"strong_wolfe"``, or None for fixed steps. Default None.

    State: the curvature pairs and the last direction, step and gradient (:meth:`state_dict` keys ``lbfgs.*``;
    ``lbfgs.n_iter`` and ``lbfgs.func_evals`` count iterations and closure calls over all steps).

    Example:
        >>> import numpy as np
        >>> from cynet import nn, optim
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64)
        >>> model = nn.Linear(5, 3, dtype=np.float64)
        >>> opt = optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
        >>> closure = optim.loss_closure(model, nn.SoftmaxCrossEntropy(), x, y)
        >>> first = closure()
        >>> for _ in range(5):
        ...     _ = opt.step(closure)
        >>> closure() < first
        True
    """

    needs_closure = True    # cynet.Trainer passes one
    _hyperparameters = ("max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
                        "line_search_fn")

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        if max_eval is None and isinstance(max_iter, (int, np.integer)) and not isinstance(max_iter, bool):
            max_eval = max_iter * 5 // 4
        super().__init__(params, lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                         tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS: parameter groups are not supported (one set of settings for all parameters)")
        dtypes = {param.data.dtype for param in self.params}
        if len(dtypes) != 1:
            raise TypeError(f"LBFGS: every parameter must have the same dtype (it works on one flat vector), got "
                            f"{sorted(str(dtype) for dtype in dtypes)}")
        self._memory = {"n_iter": 0, "func_evals": 0}

    def add_param_group(self, param_group):
        raise ValueError("LBFGS: parameter groups are not supported (one set of settings for all parameters)")

    def _check_setting(self, name, value):
        # a state read back from np.savez/np.load holds every setting as a 0-d array (max_iter array(20),
        # line_search_fn array('strong_wolfe')): taken as its Python value, as the other optimisers take theirs
        value = _unwrap(value)
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
            value = str(value)
        if name == "line_search_fn":
            value = None if value == SAVED_NO_LINE_SEARCH else value        # as state_dict writes None
            self._check(value in _LINE_SEARCHES, f"line_search_fn must be None or 'strong_wolfe', got {value!r}")
            return value
        if name in ("max_iter", "max_eval", "history_size"):
            self._check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
                        f"{name} must be an int >= 1, got {value!r}")
            return int(value)
        return self._real(f"{name} value", value)

    # --- the flat vector ----------------------------------------------------------------------------------------------
    def _learning(self):
        """The learning parameters, checked against the layout of the memory (a flat vector of their sizes)."""
        params = [param for param in self.params if param.requires_grad]
        if not params:
            raise ValueError("LBFGS.step: every parameter is frozen (requires_grad=False); nothing to optimise")
        for index, param in enumerate(self.params):
            if param.requires_grad:
                self._arrays(index, param)
        size = sum(param.data.size for param in params)
        kept = self._memory.get("d")
        if kept is not None and kept.size != size:
            raise ValueError(f"LBFGS.step: the learning parameters hold {size} values, the curvature pairs {kept.size} "
                             f"(a parameter was frozen or unfrozen since the last step); create a new optimiser")
        return params

    @staticmethod
    def _gather_grad(params):
        return np.concatenate([param.grad.reshape(-1) for param in params])

    @staticmethod
    def _add_step(params, t, d):
        """x += t d over the parameters."""
        offset = 0
        for param in params:
            n = param.data.size
            param.data += t * d[offset:offset + n].reshape(param.data.shape)
            offset += n

    # --- stepping -----------------------------------------------------------------------------------------------------
    def step(self, closure=None):
        """Run up to ``max_iter`` L-BFGS iterations on the objective that ``closure`` evaluates.

        Args:
            closure (callable): no arguments; zeroes the gradients, computes the loss, runs the backward pass and
                returns the loss (a float or 0-d array). See :func:`loss_closure`.

        Returns:
            The closure's first return value (the loss before this step).

        Raises:
            TypeError: no closure.
            FloatingPointError: the line search met a loss that is NaN or inf (the parameters and the optimiser's
                memory are put back as they were before the step, as for any exception the closure raises, a
                KeyboardInterrupt included).
        """
        if not callable(closure):
            raise TypeError("LBFGS.step needs a closure that re-evaluates the model: step(closure), where closure() "
                            "zeroes the gradients, computes the loss, runs backward and returns the loss (see "
                            "optim.loss_closure)")
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        params = self._learning()
        memory = self._memory
        # what an exception inside the closure (Ctrl-C in a long line search) puts back: the parameters were left at
        # a trial point and the memory counted an iteration whose direction it did not hold (the next step crashed)
        saved_params = [param.data.copy() for param in params]
        saved_memory = {key: list(value) if isinstance(value, list) else value for key, value in memory.items()}
        saved_steps = self.step_count
        try:
            return self._step(closure, group, params, memory, lr, max_iter, max_eval, tolerance_grad,
                              tolerance_change)
        except BaseException:
            for param, saved in zip(params, saved_params):
                np.copyto(param.data, saved)
            memory.clear()
            memory.update(saved_memory)
            self.step_count = saved_steps
            raise

    def _step(self, closure, group, params, memory, lr, max_iter, max_eval, tolerance_grad, tolerance_change):
        """The body of :meth:`step`."""

        first_loss = closure()
        loss = float(first_loss)
        evaluations = 1
        memory["func_evals"] += 1
        flat_grad = self._gather_grad(params)
        self.step_count += 1
        if float(np.abs(flat_grad).max()) <= tolerance_grad:
            return first_loss

        d, t, h_diag = memory.get("d"), memory.get("t"), memory.get("H_diag", 1.0)
        old_dirs, old_stps, ro = memory.get("old_dirs", []), memory.get("old_stps", []), memory.get("ro", [])
        prev_flat_grad, prev_loss = memory.get("prev_flat_grad"), memory.get("prev_loss")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            memory["n_iter"] += 1
            if memory["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro, h_diag = [], [], [], 1.0
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = float(np.dot(y, s))
                if ys > 1e-10:
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / float(np.dot(y, y))
                # the oldest pair goes; all those past a history_size lowered since, whether or not a pair came in
                # (state_dict keeps the same last history_size pairs, which its load accepts)
                while len(old_dirs) > group["history_size"]:
                    del old_dirs[0], old_stps[0], ro[0]
                d = self._two_loop(flat_grad, old_dirs, old_stps, ro, h_diag)
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss
            t = min(1.0, 1.0 / float(np.abs(flat_grad).sum())) * lr if memory["n_iter"] == 1 else lr
            gtd = float(np.dot(flat_grad, d))
            if gtd > -tolerance_change:         # not a descent direction any more
                break

            if group["line_search_fn"] == "strong_wolfe":
                start = [param.data.copy() for param in params]

                def evaluate(step_length):
                    self._add_step(params, step_length, d)
                    value = float(closure())
                    gradient = self._gather_grad(params)
                    for param, saved in zip(params, start):
                        np.copyto(param.data, saved)
                    if not math.isfinite(value):        # the bracket logic cannot order it (an IndexError followed)
                        raise FloatingPointError(
                            f"LBFGS: the strong-Wolfe line search met a loss of {value} at step length "
                            f"{step_length:.3g}: the model overflows along this direction; lower lr (the first "
                            f"trial step) or look for the cause of the non-finite loss")
                    return value, gradient

                # as PyTorch's: what is left of max_eval (the search's first try comes on top of it), and the
                # search's own interval tolerance (1e-9), not tolerance_change
                loss, flat_grad, t, line_evaluations = _strong_wolfe(evaluate, t, d, loss, flat_grad, gtd,
                                                                     max_ls=max_eval - evaluations)
                self._add_step(params, t, d)
            else:
                self._add_step(params, t, d)
                line_evaluations = 0
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._gather_grad(params)
                    line_evaluations = 1
            evaluations += line_evaluations
            memory["func_evals"] += line_evaluations
            if (n_iter == max_iter or evaluations >= max_eval or float(np.abs(flat_grad).max()) <= tolerance_grad
                    or float(np.abs(d * t).max()) <= tolerance_change or abs(loss - prev_loss) < tolerance_change):
                break
        memory.update(d=d, t=t, H_diag=h_diag, old_dirs=old_dirs, old_stps=old_stps, ro=ro,
                      prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return first_loss

    @staticmethod
    def _two_loop(flat_grad, old_dirs, old_stps, ro, h_diag):
        r"""The L-BFGS direction :math:`-H g` by the two-loop recursion (Nocedal and Wright, algorithm 7.4)."""
        q = -flat_grad
        alphas = [0.0] * len(old_dirs)
        for i in reversed(range(len(old_dirs))):
            alphas[i] = float(np.dot(old_stps[i], q)) * ro[i]
            q -= alphas[i] * old_dirs[i]
        r = q * h_diag
        for i in range(len(old_dirs)):
            beta = float(np.dot(old_dirs[i], r)) * ro[i]
            r += (alphas[i] - beta) * old_stps[i]
        return r

    # --- state --------------------------------------------------------------------------------------------------------
    def state_dict(self):
        """:meth:`Optimizer.state_dict`'s keys and the memory: ``lbfgs.n_iter``, ``lbfgs.func_evals``, and after the
        first iteration ``lbfgs.t``, ``lbfgs.H_diag``, ``lbfgs.prev_loss``, ``lbfgs.d``, ``lbfgs.prev_flat_grad`` and
        the curvature pairs ``lbfgs.old_dirs`` / ``lbfgs.old_stps`` (k, n) and ``lbfgs.ro`` (k,): the last
        k <= ``history_size`` of them (after the setting was lowered, those the next iteration keeps).
        ``line_search_fn`` None is saved as the string ``"none"`` (np.savez would write None as an object array,
        which ``np.load(allow_pickle=False)`` refuses); loading takes either."""
        out = super().state_dict()
        if out["line_search_fn"] is None:
            out["line_search_fn"] = SAVED_NO_LINE_SEARCH
        memory = self._memory
        for key in _SCALARS:
            if key in memory:
                out[f"lbfgs.{key}"] = int(memory[key]) if key in ("n_iter", "func_evals") else float(memory[key])
        for key in _VECTORS:
            if key in memory:
                out[f"lbfgs.{key}"] = memory[key].copy()
        if "d" in memory:
            n, dtype = memory["d"].size, memory["d"].dtype
            kept = self.param_groups[0]["history_size"]     # the last pairs: a history_size lowered since drops the
            for key in ("old_dirs", "old_stps"):            # others at the next iteration anyway
                pairs = memory[key][-kept:]
                out[f"lbfgs.{key}"] = np.array(pairs, dtype=dtype).reshape(len(pairs), n)
            out["lbfgs.ro"] = np.array(memory["ro"][-kept:], dtype=np.float64)
        return out

    def _checked_state(self, state):
        name = "LBFGS.load_state_dict"
        if not hasattr(state, "keys"):
            raise TypeError(f"{name}: expected a dict from state_dict(), got {type(state).__name__}")
        own = {key[len("lbfgs."):]: value for key, value in state.items() if key.startswith("lbfgs.")}
        checked = super()._checked_state({key: value for key, value in state.items() if not key.startswith("lbfgs.")})
        unknown = sorted(f"lbfgs.{key}" for key in own if key not in _SCALARS + _VECTORS + _HISTORY)
        if unknown:
            raise KeyError(f"{name}: unexpected keys {unknown}")
        missing = [f"lbfgs.{key}" for key in ("n_iter", "func_evals") if key not in own]
        started = "d" in own or _counts_past_zero(own.get("n_iter"))     # an iteration ran: its direction is kept
        if started:
            missing += [f"lbfgs.{key}" for key in _SCALARS[2:] + _VECTORS + _HISTORY if key not in own]
        if missing:
            raise KeyError(f"{name}: missing keys {missing}")
        memory = {}
        for key in ("n_iter", "func_evals"):
            value = own[key]
            if isinstance(value, bool) or not float(value).is_integer() or value < 0:
                raise ValueError(f"{name}: lbfgs.{key} must be a non-negative int, got {value!r}")
            memory[key] = int(value)
        if started:
            dtype = self.params[0].data.dtype
            size = sum(param.data.size for param in self.params if param.requires_grad)
            for key in _SCALARS[2:]:
                memory[key] = float(own[key])
            for key in _VECTORS:
                vector = np.asarray(own[key])
                if vector.shape != (size,):
                    raise ValueError(f"{name}: lbfgs.{key} must have shape ({size},) (the learning parameters' "
                                     f"values), got {vector.shape}")
                memory[key] = np.array(vector, dtype=dtype, copy=True)
            ro = np.asarray(own["ro"], dtype=np.float64)
            k = ro.shape[0] if ro.ndim == 1 else -1
            history_size = checked[0][0]["history_size"]      # the state's own: loading it brings its settings
            if not 0 <= k <= history_size:
                raise ValueError(f"{name}: lbfgs.ro must hold at most the state's history_size ({history_size}) "
                                 f"values, got shape {ro.shape}")
            memory["ro"] = [float(value) for value in ro]
            for key in ("old_dirs", "old_stps"):
                pairs = np.asarray(own[key])
                if pairs.shape != (k, size):
                    raise ValueError(f"{name}: lbfgs.{key} must have shape {(k, size)}, got {pairs.shape}")
                memory[key] = [np.array(row, dtype=dtype, copy=True) for row in pairs]
        return checked, memory

    def _apply_checked_state(self, checked):
        base, memory = checked
        super()._apply_checked_state(base)
        self._memory = memory

    def snapshot(self, out=None):
        """:meth:`Optimizer.snapshot` with a copy of the curvature pairs and the last direction."""
        out = super().snapshot(out)
        out["lbfgs"] = copy.deepcopy(self._memory)
        return out

    def restore(self, snapshot):
        super().restore(snapshot)
        self._memory = copy.deepcopy(snapshot["lbfgs"])


def loss_closure(model, loss, x, y, regularization=None):
    """The closure :meth:`LBFGS.step` calls: zero the gradients, forward ``x``, the loss against ``y`` (plus the
    penalty), backward; returns the loss as a float.

    Args:
        model (Module): the model. loss: a loss module (``forward(scores, y)``, ``backward()``).
        x (ndarray): the inputs (the whole training set, for full-batch L-BFGS). y (ndarray): the targets.
        regularization (optional): a penalty such as ``nn.L2Penalty(1e-4)``, added to the loss and the gradients.

    Returns:
        callable: ``closure() -> float``.

    Example:
        >>> import numpy as np
        >>> from cynet import nn, optim
        >>> model = nn.Linear(4, 3, bias=False, dtype=np.float64)
        >>> closure = optim.loss_closure(model, nn.SoftmaxCrossEntropy(), np.zeros((2, 4)), np.array([0, 2]))
        >>> round(closure(), 4)   # zero inputs, no bias: uniform scores, ln 3
        1.0986
    """
    def closure():
        model.zero_grad()
        value = float(loss.forward(model.forward(x), y))
        model.backward(loss.backward(), input_grad=False)
        if regularization is not None:
            value += float(regularization(model))
            regularization.backward(model)
        return value

    return closure
