"""Optimisers: SGD (momentum, Nesterov), AdaGrad, RMSProp, Adam and AdamW, with PyTorch's update formulas.

Each ``step()`` updates every learning parameter with ONE fused Cython kernel call over its flattened array: the kernel
reads p, the gradient and the rule's state and writes p and the state in a single pass (no temporaries, no NumPy ops),
in the parameter's precision, split over :func:`cynet.kernel_threads` threads (elementwise, so every thread count
gives the same bits). The formulas and the order of operations are those of ``torch.optim`` (its single-tensor path),
so float64 results agree with PyTorch step for step.

Per-parameter state (momentum buffers, squared-gradient averages, Adam's moments) is allocated lazily, at a
parameter's first step, in its dtype. Frozen parameters (``requires_grad=False``) are skipped: neither their data nor
their state changes, and a parameter frozen for a while keeps its own step count (Adam's bias correction).

A parameter's gradient is read through :attr:`~cynet.nn.Parameter.grad`: one that nothing wrote since
:meth:`zero_grad` is zero, and a step still applies weight decay and momentum to it (PyTorch, whose ``zero_grad``
sets gradients to ``None``, would skip such a parameter).

:meth:`Optimizer.state_dict` is flat and storable without pickle: string keys, values that are ndarrays or JSON
scalars, for example ``{"type": "SGD", "lr": 0.1, "momentum": 0.9, ..., "step": 3,
"state.0.momentum_buffer": ndarray}``, where 0 is the parameter's index in :attr:`Optimizer.params`.
"""
import math
import numbers

import numpy as np

from cynet._kernels import load
from cynet._threading import NS_STREAM, kernel_threads
from cynet._validation import KERNEL_DTYPES, describe
from cynet.nn.module import Parameter

__all__ = ["Optimizer", "SGD", "AdaGrad", "RMSProp", "Adam", "AdamW"]

_kernels = None


def _k():
    """The optim kernel family (loaded on first use)."""
    global _kernels
    if _kernels is None:
        _kernels = load("optim")
    return _kernels


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Optimizer:
    """Base class: holds the parameters, their per-parameter state and the learning rate.

    Subclasses declare their hyperparameters (``_hyperparameters``, saved in :meth:`state_dict`), the names of their
    per-parameter arrays (``_state_arrays``), whether they count steps per parameter (``_counts_steps``), and
    implement ``_update(param, flat_data, flat_grad, state, n_threads)`` and ``_check_setting(name, value)`` (and
    ``_check_combination(settings)`` where settings constrain each other).

    Every setting is checked whenever it is assigned, in the constructor or later (``opt.momentum = 0.5``), with the
    same ``ValueError`` (PyTorch's wording: ``"SGD: invalid momentum value: -5"``); a refused value leaves the old
    one in place.

    Args:
        params (iterable of Parameter): the parameters to optimise, e.g. ``model.parameters()``; frozen ones may be
            included (they are skipped while frozen).
        lr (float): learning rate, >= 0.

    Attributes:
        params (list of Parameter): the parameters, in the given order (their index names their state).
        lr (float): the learning rate; schedulers in :mod:`cynet.optim.lr_scheduler` read and set it.
        state (list of dict): per-parameter state, ``{}`` until the parameter's first step.
        step_count (int): number of :meth:`step` calls so far.
    """

    _hyperparameters = ()
    _state_arrays = ()
    _counts_steps = False

    def __init__(self, params, lr):
        name = type(self).__name__
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError(f"{name}: params must be an iterable of Parameter (e.g. model.parameters()), got a single "
                            f"{type(params).__name__}")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Parameter (e.g. model.parameters()), got "
                            f"{type(params).__name__}") from None
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        seen = set()
        for index, param in enumerate(params):
            if not isinstance(param, Parameter):
                hint = " (pass model.parameters(), not named_parameters())" if isinstance(param, tuple) else ""
                raise TypeError(f"{name}: params[{index}] is not a cynet.nn.Parameter but a "
                                f"{type(param).__name__}{hint}")
            if id(param) in seen:
                raise ValueError(f"{name}: params[{index}] appears more than once in the parameter list")
            seen.add(id(param))
        self.params = params
        self.state = [{} for _ in params]
        self.step_count = 0
        self.lr = lr

    # --- the learning rate --------------------------------------------------------------------------------------------
    @property
    def lr(self):
        """The learning rate (a float >= 0)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        if not _is_real(value) or not value >= 0 or math.isinf(value):
            raise ValueError(f"{type(self).__name__}: invalid learning rate: {value}")
        self._lr = float(value)

    # --- the other settings -------------------------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if name in self._hyperparameters:
            value = self._check_setting(name, value)
            settings = {key: self.__dict__[key] for key in self._hyperparameters if key in self.__dict__}
            settings[name] = value
            if len(settings) == len(self._hyperparameters):  # all assigned (the constructor sets them one by one)
                self._check_combination(settings)
        object.__setattr__(self, name, value)

    def _check_setting(self, name, value):
        """``value`` checked and normalised for the setting ``name``; ValueError naming it otherwise."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _check_setting")

    def _check_combination(self, settings):
        """ValueError when the settings (name -> checked value, all of them) contradict each other."""

    # --- validation helpers -------------------------------------------------------------------------------------------
    def _check(self, condition, message):
        if not condition:
            raise ValueError(f"{type(self).__name__}: {message}")

    def _real(self, label, value, low=0.0, high=None, high_open=False):
        """``float(value)`` after checking low <= value (< or <=) high; ValueError naming the setting otherwise."""
        ok = _is_real(value) and math.isfinite(value) and value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        self._check(ok, f"invalid {label}: {value}")
        return float(value)

    # --- stepping -----------------------------------------------------------------------------------------------------
    def _arrays(self, index, param):
        """``(flat data, flat grad)`` of a parameter, after checking they are what the kernels accept."""
        data = param.data
        name = f"{type(self).__name__}.step: params[{index}]"
        if not isinstance(data, np.ndarray) or data.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name}: data must be a float32 or float64 ndarray, got "
                            f"{describe(data) if isinstance(data, np.ndarray) else type(data).__name__}")
        if not data.flags.c_contiguous or not data.flags.writeable:
            raise ValueError(f"{name}: data must be C-contiguous and writable, got a "
                             f"{'strided' if not data.flags.c_contiguous else 'read-only'} {describe(data)}")
        grad = param.grad
        if grad.dtype != data.dtype or grad.shape != data.shape:
            raise TypeError(f"{name}: gradient ({describe(grad)}) does not match the data ({describe(data)}); was "
                            f"param.data replaced without its gradient? Use Module.to(dtype) to change dtypes")
        if not grad.flags.c_contiguous:
            raise ValueError(f"{name}: gradient must be C-contiguous, got a strided {describe(grad)}")
        state = self.state[index]
        for key in self._state_arrays:
            buffer = state.get(key)
            if buffer is not None and (buffer.dtype != data.dtype or buffer.size != data.size):
                raise TypeError(f"{name}: state {key!r} ({buffer.dtype}, {buffer.size} elements) does not match the "
                                f"parameter ({describe(data)}); the parameter changed dtype or size after the "
                                f"optimiser started: create a new optimiser")
        return data.reshape(-1), grad.reshape(-1)

    def step(self):
        """Update every learning parameter once from its current gradient (frozen parameters are skipped).

        Returns:
            None
        """
        for index, param in enumerate(self.params):
            if not param.requires_grad:
                continue
            data, grad = self._arrays(index, param)
            state = self.state[index]
            if self._counts_steps:
                state["step"] = state.get("step", 0) + 1
            # an update streams the parameter, its gradient and one or two state buffers
            self._update(param, data, grad, state, kernel_threads(data.size, 2 * NS_STREAM))
        self.step_count += 1

    def _update(self, param, data, grad, state, n_threads):
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def _zeros(self, param):
        return np.zeros(param.data.size, dtype=param.data.dtype)

    def zero_grad(self):
        """Reset the gradient of every parameter (``param.zero_grad()``, lazy: no memory is written)."""
        for param in self.params:
            param.zero_grad()

    # --- state --------------------------------------------------------------------------------------------------------
    def _hyperparameter_values(self):
        return {name: getattr(self, name) for name in self._hyperparameters}

    def state_dict(self):
        """A flat dict of everything needed to resume: settings, step counts and per-parameter arrays (copies).

        Keys: ``type`` (the class name), ``lr``, the other settings, ``step`` (number of :meth:`step` calls),
        ``n_params``, then for each parameter ``i`` that has state ``state.i.<name>`` (an ndarray of the parameter's
        shape, or ``state.i.step``, an int). Values are ndarrays or JSON scalars: no pickle needed.
        """
        out = {"type": type(self).__name__, "lr": self.lr}
        out.update(self._hyperparameter_values())
        out["step"] = self.step_count
        out["n_params"] = len(self.params)
        for index, (param, state) in enumerate(zip(self.params, self.state)):
            for key, value in state.items():
                if isinstance(value, np.ndarray):
                    out[f"state.{index}.{key}"] = value.reshape(param.data.shape).copy()
                else:
                    out[f"state.{index}.{key}"] = int(value)
        return out

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output (settings, step counts, per-parameter arrays), checked first.

        Arrays are copied into the parameter's dtype. Continuing after a load gives exactly the results of never
        having stopped.

        Raises:
            ValueError: another optimiser type, another number of parameters, an invalid setting, or an array whose
                shape differs from its parameter's.
            KeyError: missing settings or unknown keys (all listed).
        """
        self._apply_checked_state(self._checked_state(state))

    def _checked_state(self, state):
        """Check ``state`` as :meth:`load_state_dict` does, changing nothing; returns what
        :meth:`_apply_checked_state` needs: ``(settings, step, per-parameter state)``, arrays already copied."""
        name = f"{type(self).__name__}.load_state_dict"
        if not hasattr(state, "keys"):
            raise TypeError(f"{name}: expected a dict from state_dict(), got {type(state).__name__}")
        kind = state.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"{name}: the state is of a {kind!r} optimiser, not {type(self).__name__!r}")
        scalars = ("lr",) + tuple(self._hyperparameters) + ("step", "n_params")
        missing = [key for key in scalars if key not in state]
        if missing:
            raise KeyError(f"{name}: missing keys {missing}")
        if state["n_params"] != len(self.params):
            raise ValueError(f"{name}: the state holds {state['n_params']} parameters, this optimiser has "
                             f"{len(self.params)}")
        allowed = set(self._state_arrays) | ({"step"} if self._counts_steps else set())
        per_param = [{} for _ in self.params]
        unexpected, mismatched = [], []
        for key, value in state.items():
            if key in scalars or key == "type":
                continue
            parts = key.split(".")
            if (len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(self.params)
                    or parts[2] not in allowed):
                unexpected.append(key)
                continue
            index, field = int(parts[1]), parts[2]
            param = self.params[index]
            if field == "step":
                if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                    mismatched.append(f"{key}: expected a non-negative int, got {value!r}")
                    continue
                per_param[index][field] = int(value)
                continue
            value = np.asarray(value)
            if value.shape != param.data.shape:
                mismatched.append(f"{key}: expected shape {param.data.shape}, got {value.shape}")
                continue
            if value.dtype.kind not in "fiu":
                mismatched.append(f"{key}: expected a floating array, got {describe(value)}")
                continue
            per_param[index][field] = np.array(value, dtype=param.data.dtype, order="C", copy=True).reshape(-1)
        if unexpected:
            raise KeyError(f"{name}: unexpected keys {unexpected}")
        if mismatched:
            raise ValueError(f"{name}: " + "; ".join(mismatched))
        # Validate the settings on a scratch optimiser (assignment checks them) before changing anything.
        settings = {key: state[key] for key in ("lr",) + tuple(self._hyperparameters)}
        probe = self._validated_probe(settings)
        for index, entries in enumerate(per_param):
            if entries:
                probe._check_complete_state(name, index, entries)
        step = state["step"]
        if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 0:
            raise ValueError(f"{name}: step must be a non-negative int, got {step!r}")
        return {key: getattr(probe, key) for key in settings}, int(step), per_param

    def _apply_checked_state(self, checked):
        """Install the output of :meth:`_checked_state` (cannot fail)."""
        settings, step, per_param = checked
        self._set_checked_settings(settings)
        self.step_count = step
        self.state = per_param

    def _set_checked_settings(self, settings):
        """Install settings already checked together. Assigned one by one they could clash with the current values
        on the way (SGD's Nesterov rule), so the per-assignment checks are bypassed."""
        for key, value in settings.items():
            if key == "lr":
                self.lr = value
            else:
                object.__setattr__(self, key, value)

    # --- snapshots ----------------------------------------------------------------------------------------------------
    def snapshot(self, out=None):
        """Copy the state a :meth:`step` changes — per-parameter arrays and step counts — and the settings, for
        :meth:`restore`.

        Cheap enough to take before every step (the trainer's divergence guard does): pass the previous snapshot as
        ``out`` and its arrays are overwritten in place, so nothing is allocated once the state exists. Frozen
        parameters are not copied, since a step leaves their state alone.

        Args:
            out (dict): an earlier snapshot of this optimiser to overwrite. Default None: a new one.

        Returns:
            dict: the snapshot (pass it to :meth:`restore`).

        Example:
            >>> import numpy as np
            >>> from cynet import nn, optim
            >>> p = nn.Parameter(np.ones(2)); opt = optim.SGD([p], lr=0.1, momentum=0.9)
            >>> saved = opt.snapshot()
            >>> p.grad = np.ones(2); opt.step()
            >>> opt.restore(saved); opt.step_count, opt.state[0]
            (0, {})
        """
        if out is None or len(out["state"]) != len(self.params):
            out = {"state": [{} for _ in self.params], "taken": [False] * len(self.params)}
        out["settings"] = {"lr": self.lr, **self._hyperparameter_values()}
        out["step_count"] = self.step_count
        for index, (param, live) in enumerate(zip(self.params, self.state)):
            out["taken"][index] = param.requires_grad
            if param.requires_grad:
                _copy_state(live, out["state"][index])
        return out

    def restore(self, snapshot):
        """Put back the state copied by :meth:`snapshot` (into the existing arrays, so references stay valid): the
        settings, the step counts and every parameter's state as it was, including "no state yet" for parameters
        whose first step came after the snapshot.

        Args:
            snapshot (dict): from :meth:`snapshot` of this optimiser.

        Raises:
            ValueError: the snapshot was taken of an optimiser with another number of parameters.
        """
        if len(snapshot["state"]) != len(self.params):
            raise ValueError(f"{type(self).__name__}.restore: the snapshot holds {len(snapshot['state'])} parameters, "
                             f"this optimiser has {len(self.params)}")
        self._set_checked_settings(snapshot["settings"])
        self.step_count = snapshot["step_count"]
        for index, taken in enumerate(snapshot["taken"]):
            if taken:
                _copy_state(snapshot["state"][index], self.state[index])

    def _check_complete_state(self, name, index, entries):
        """A parameter's state must be whole: every array of the rule (and its step count where counted)."""
        required = list(self._required_state())
        if self._counts_steps:
            required.append("step")
        absent = [key for key in required if key not in entries]
        if absent:
            raise KeyError(f"{name}: parameter {index} has state {sorted(entries)} but lacks "
                           f"{[f'state.{index}.{key}' for key in absent]}")

    def _required_state(self):
        return self._state_arrays

    def _validated_probe(self, settings):
        """A parameterless instance holding ``settings`` (name -> value); ValueError unless they are valid."""
        probe = object.__new__(type(self))
        for key, value in settings.items():
            setattr(probe, key, value)
        return probe

    def __repr__(self):
        settings = ", ".join(f"{key}={value!r}" for key, value in
                             [("lr", self.lr)] + list(self._hyperparameter_values().items()))
        return f"{type(self).__name__}({len(self.params)} parameters, {settings})"


def _copy_state(source, target):
    """Make the per-parameter state dict ``target`` equal to ``source``: arrays copied into ``target``'s arrays where
    they fit (no allocation), keys that ``source`` lacks removed."""
    for key in [key for key in target if key not in source]:
        del target[key]
    for key, value in source.items():
        if isinstance(value, np.ndarray):
            buffer = target.get(key)
            if isinstance(buffer, np.ndarray) and buffer.shape == value.shape and buffer.dtype == value.dtype:
                np.copyto(buffer, value)
            else:
                target[key] = value.copy()
        else:
            target[key] = value


class SGD(Optimizer):
    r"""Stochastic gradient descent, with optional momentum (heavy ball or Nesterov) and L2 weight decay.

    PyTorch's formulation (the learning rate multiplies the whole velocity, not each gradient), with
    :math:`d = g + \lambda p`:

    .. math::
        b_1 = d_1, \qquad b_t = \mu b_{t-1} + (1 - \tau) d_t, \qquad
        p_t = p_{t-1} - \eta \, (d_t + \mu b_t) \ \text{(Nesterov)} \quad \text{or} \quad
        p_t = p_{t-1} - \eta \, b_t

    and plain :math:`p_t = p_{t-1} - \eta d_t` without momentum. (CS231n's ``v = mu * v - lr * dx; x += v`` is the
    same trajectory while the learning rate is constant.)

    Args:
        params (iterable of Parameter): parameters to optimise.
        lr (float): learning rate :math:`\eta`, >= 0 (required).
        momentum (float): :math:`\mu` >= 0. Default 0 (plain SGD).
        nesterov (bool): Nesterov momentum (needs momentum > 0 and dampening 0, also when settings change later:
            to drop the momentum of a Nesterov optimiser, set ``nesterov = False`` first). Default False.
        weight_decay (float): L2 penalty :math:`\lambda` >= 0 added to the gradient. Default 0.
        dampening (float): :math:`\tau`, scales the gradient's share of the velocity. Default 0.

    State per parameter: ``momentum_buffer`` (with momentum only).

    Example:
        >>> import numpy as np
        >>> from cynet import nn, optim
        >>> model = nn.Linear(4, 2)
        >>> opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> out = model(np.ones((3, 4), np.float32)); _ = model.backward(np.ones_like(out))
        >>> opt.step(); opt.zero_grad()
    """

    _hyperparameters = ("momentum", "nesterov", "weight_decay", "dampening")
    _state_arrays = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay, self.dampening = momentum, nesterov, weight_decay, dampening

    def _check_setting(self, name, value):
        if name == "nesterov":
            self._check(isinstance(value, (bool, np.bool_)), f"nesterov must be a bool, got {value!r}")
            return bool(value)
        return self._real(f"{name} value", value, low=-math.inf if name == "dampening" else 0.0)

    def _check_combination(self, settings):
        # Checked on every assignment: to drop momentum from a Nesterov optimiser, set nesterov = False first.
        self._check(not settings["nesterov"] or (settings["momentum"] > 0 and settings["dampening"] == 0),
                    "Nesterov momentum requires a momentum and zero dampening")

    def _required_state(self):
        return self._state_arrays if self.momentum != 0 else ()

    def _update(self, param, data, grad, state, n_threads):
        first = False
        buffer = data  # ignored by the kernel without momentum
        if self.momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = np.empty_like(data)  # filled with d by the first step
                first = True
        _k().sgd_update(data, grad, buffer, self.lr, self.weight_decay, self.momentum, self.dampening, self.nesterov,
                        first, n_threads)


class AdaGrad(Optimizer):
    r"""AdaGrad (Duchi et al., 2011): per-element step sizes shrinking with the sum of squared gradients.

    .. math::
        d = g + \lambda p, \qquad s_t = s_{t-1} + d^2, \qquad p_t = p_{t-1} - \eta \, \frac{d}{\sqrt{s_t} + \epsilon}

    Args:
        params (iterable of Parameter): parameters to optimise.
        lr (float): learning rate :math:`\eta`, >= 0. Default 1e-2.
        eps (float): :math:`\epsilon` >= 0 added to the root (numerical stability). Default 1e-10.
        weight_decay (float): L2 penalty :math:`\lambda` >= 0. Default 0.

    State per parameter: ``sum`` (starts at 0) and ``step``.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.AdaGrad(nn.Linear(4, 2).parameters(), lr=0.1)
    """

    _hyperparameters = ("eps", "weight_decay")
    _state_arrays = ("sum",)
    _counts_steps = True

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0):
        super().__init__(params, lr)
        self.eps, self.weight_decay = eps, weight_decay

    def _check_setting(self, name, value):
        return self._real("epsilon value" if name == "eps" else f"{name} value", value)

    def _update(self, param, data, grad, state, n_threads):
        if "sum" not in state:
            state["sum"] = self._zeros(param)
        _k().adagrad_update(data, grad, state["sum"], self.lr, self.eps, self.weight_decay, n_threads)


class RMSProp(Optimizer):
    r"""RMSProp (Tieleman & Hinton, 2012): divide by a running root mean square of the gradient.

    PyTorch's form, :math:`\epsilon` outside the square root, :math:`d = g + \lambda p`:

    .. math::
        v_t = \alpha v_{t-1} + (1 - \alpha) d^2, \qquad
        p_t = p_{t-1} - \eta \, \frac{d}{\sqrt{v_t} + \epsilon}

    and with momentum :math:`b_t = \mu b_{t-1} + d / (\sqrt{v_t} + \epsilon)`, :math:`p_t = p_{t-1} - \eta b_t`.

    Args:
        params (iterable of Parameter): parameters to optimise.
        lr (float): learning rate :math:`\eta`, >= 0. Default 1e-2.
        alpha (float): decay rate :math:`\alpha` of the squared-gradient average, in [0, 1]. Default 0.99.
        eps (float): :math:`\epsilon` >= 0. Default 1e-8.
        weight_decay (float): L2 penalty :math:`\lambda` >= 0. Default 0.
        momentum (float): :math:`\mu` >= 0. Default 0.

    State per parameter: ``square_avg`` (starts at 0), ``momentum_buffer`` (momentum > 0; starts at 0) and ``step``.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.RMSProp(nn.Linear(4, 2).parameters(), lr=1e-3, alpha=0.9)
    """

    _hyperparameters = ("alpha", "eps", "weight_decay", "momentum")
    _state_arrays = ("square_avg", "momentum_buffer")
    _counts_steps = True

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0):
        super().__init__(params, lr)
        self.alpha, self.eps, self.weight_decay, self.momentum = alpha, eps, weight_decay, momentum

    def _check_setting(self, name, value):
        if name == "alpha":
            return self._real("alpha value", value, high=1.0)
        return self._real("epsilon value" if name == "eps" else f"{name} value", value)

    def _required_state(self):
        return self._state_arrays if self.momentum > 0 else ("square_avg",)

    def _update(self, param, data, grad, state, n_threads):
        if "square_avg" not in state:
            state["square_avg"] = self._zeros(param)
        buffer = data  # ignored by the kernel without momentum
        if self.momentum > 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = self._zeros(param)
            buffer = state["momentum_buffer"]
        _k().rmsprop_update(data, grad, state["square_avg"], buffer, self.lr, self.alpha, self.eps,
                            self.weight_decay, self.momentum, n_threads)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015): momentum on the gradient and on its square, with bias correction.

    With :math:`d = g + \lambda p` (L2 penalty through the gradient; see :class:`AdamW` for decoupled decay) and
    :math:`t` the parameter's step count:

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) d, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) d^2, \\
        p_t = p_{t-1} - \frac{\eta}{1 - \beta_1^t} \, \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Args:
        params (iterable of Parameter): parameters to optimise.
        lr (float): learning rate :math:`\eta`, >= 0. Default 1e-3.
        betas (tuple of 2 floats): :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
        eps (float): :math:`\epsilon` >= 0. Default 1e-8.
        weight_decay (float): L2 penalty :math:`\lambda` >= 0. Default 0.

    State per parameter: ``exp_avg`` (m), ``exp_avg_sq`` (v), both starting at 0, and ``step``.

    Example:
        >>> import numpy as np
        >>> from cynet import nn, optim
        >>> model = nn.Linear(4, 2)
        >>> opt = optim.Adam(model.parameters(), lr=1e-3)
        >>> out = model(np.ones((3, 4), np.float32)); _ = model.backward(np.ones_like(out))
        >>> opt.step(); opt.zero_grad()
    """

    _hyperparameters = ("beta1", "beta2", "eps", "weight_decay")
    _state_arrays = ("exp_avg", "exp_avg_sq")
    _counts_steps = True
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: betas must be a pair of floats, got {betas!r}") from None
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay

    @property
    def betas(self):
        """``(beta1, beta2)``; assigning a pair checks both before setting either."""
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value):
        try:
            beta1, beta2 = value
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: betas must be a pair of floats, got {value!r}") from None
        beta1, beta2 = self._check_setting("beta1", beta1), self._check_setting("beta2", beta2)
        self.beta1, self.beta2 = beta1, beta2

    def _check_setting(self, name, value):
        if name in ("beta1", "beta2"):
            return self._real(f"beta parameter at index {int(name == 'beta2')}", value, high=1.0, high_open=True)
        return self._real("epsilon value" if name == "eps" else f"{name} value", value)

    def _update(self, param, data, grad, state, n_threads):
        if "exp_avg" not in state:
            state["exp_avg"] = self._zeros(param)
            state["exp_avg_sq"] = self._zeros(param)
        step = float(state["step"])
        bias_correction1 = 1 - self.beta1 ** step
        bias_correction2_sqrt = (1 - self.beta2 ** step) ** 0.5
        _k().adam_update(data, grad, state["exp_avg"], state["exp_avg_sq"], self.lr, self.beta1, self.beta2,
                         self.eps, self.weight_decay, self._decoupled, bias_correction1, bias_correction2_sqrt,
                         n_threads)


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    The weights shrink by :math:`1 - \eta\lambda` before the Adam step, which uses the raw gradient :math:`g`
    (the decay is not rescaled by the adaptive denominator, unlike :class:`Adam`'s L2 penalty):

    .. math::
        p \leftarrow p \, (1 - \eta \lambda), \qquad m_t = \beta_1 m_{t-1} + (1 - \beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g^2, \\
        p_t = p - \frac{\eta}{1 - \beta_1^t} \, \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Args:
        params (iterable of Parameter): parameters to optimise.
        lr (float): learning rate :math:`\eta`, >= 0. Default 1e-3.
        betas (tuple of 2 floats): :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
        eps (float): :math:`\epsilon` >= 0. Default 1e-8.
        weight_decay (float): decoupled decay :math:`\lambda` >= 0. Default 1e-2.

    State per parameter: ``exp_avg``, ``exp_avg_sq`` and ``step``, as :class:`Adam`.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.AdamW(nn.Linear(4, 2).parameters(), lr=1e-3, weight_decay=0.05)
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
