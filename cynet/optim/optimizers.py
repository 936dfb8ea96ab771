"""Optimisers: SGD (momentum, Nesterov), AdaGrad, RMSProp, Adam and AdamW, with PyTorch's update formulas.

Each ``step()`` updates every learning parameter with ONE fused Cython kernel call over its flattened array: the kernel
reads p, the gradient and the rule's state and writes p and the state in a single pass (no temporaries, no NumPy ops),
in the parameter's precision, split over :func:`cynet.kernel_threads` threads (elementwise, so every thread count
gives the same bits). The formulas and the order of operations are those of ``torch.optim`` (its single-tensor path),
so float64 results agree with PyTorch step for step. Parameter groups (:class:`ParamGroup`) give parts of a model
their own settings, as in PyTorch; each parameter is updated with its group's.

Per-parameter state (momentum buffers, squared-gradient averages, Adam's moments) is allocated lazily, at a
parameter's first step, in its dtype. Frozen parameters (``requires_grad=False``) are skipped: neither their data nor
their state changes, and a parameter frozen for a while keeps its own step count (Adam's bias correction).

A parameter's gradient is read through :attr:`~cynet.nn.Parameter.grad`: one that nothing wrote since
:meth:`zero_grad` is zero, and a step still applies weight decay and momentum to it (PyTorch, whose ``zero_grad``
sets gradients to ``None``, would skip such a parameter).

:meth:`Optimizer.state_dict` is flat and storable without pickle: string keys, values that are ndarrays or JSON
scalars, for example ``{"type": "SGD", "lr": 0.1, "momentum": 0.9, ..., "step": 3,
"state.0.momentum_buffer": ndarray}``, where 0 is the parameter's index in :attr:`Optimizer.params`; with several
parameter groups the settings are ``group.<g>.<setting>`` beside ``n_groups`` and ``group.<g>.n_params``.
"""
import math
import numbers

import numpy as np

from cynet._kernels import load
from cynet._threading import NS_STREAM, copyto, kernel_threads
from cynet._validation import KERNEL_DTYPES, describe
from cynet.nn.module import Module, Parameter, _refuse_set_to_none

__all__ = ["Optimizer", "ParamGroup", "SGD", "AdaGrad", "RMSProp", "Adam", "AdamW", "weight_decay_groups"]

_kernels = None


def _k():
    """The optim kernel family (loaded on first use)."""
    global _kernels
    if _kernels is None:
        _kernels = load("optim")
    return _kernels


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_state_type(name, state, expected, what):
    """ValueError from ``load_state_dict`` (``name``) when ``state`` is not the flat state of a cynet ``expected``
    (``what``: "optimiser" or "schedule"); a state without a ``type`` key (PyTorch's nested ``{"state": ...,
    "param_groups": ...}``, or a dict of something else) is named as such, with its keys, not as "a None optimiser"."""
    kind = state.get("type")
    if kind is None:
        keys = sorted(map(str, state.keys()))
        shown = keys[:8] + (["..."] if len(keys) > 8 else [])
        torch_like = "param_groups" in keys or "_step_count" in keys or "base_lrs" in keys
        flat = ("'step' and 'state.<i>.<name>' arrays)" if what == "optimiser" else "'base_lr' and 'last_epoch')")
        hint = ("; it looks like a PyTorch state_dict, a format cynet does not read (cynet's is flat: 'type', the "
                "settings, " + flat) if torch_like else ""
        raise ValueError(f"{name}: the state has no 'type' key (keys {shown}): not a cynet {expected}.state_dict()"
                         f"{hint}")
    if kind != expected:
        raise ValueError(f"{name}: the state is of a {kind!r} {what}, not {expected!r}")


def _unwrap(value):
    """A 0-d bool, integer or floating NumPy array (a setting or step count read back from ``np.load``/``np.savez``)
    as its Python value; anything else as it is."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value.item()
    return value


class ParamGroup(dict):
    """One parameter group of an optimiser: ``group["params"]``, the group's list of :class:`~cynet.nn.Parameter`
    (fixed once the group exists), and one entry per setting of the optimiser (``"lr"``, ``"momentum"``, ...).

    A plain dict to read. Assigning a setting, ``group["lr"] = 0.01`` (PyTorch's idiom for per-group rates), checks it
    as the optimiser's constructor does and leaves the old value in place when it is refused; unknown keys and
    changes to ``"params"`` are refused too, so a misspelt setting cannot be ignored in silence.
    """

    def __init__(self, optimizer, entries):
        dict.__init__(self, entries)
        self._optimizer = optimizer

    def __getitem__(self, key):
        aliases = self._optimizer._aliases
        if key in aliases:
            return tuple(dict.__getitem__(self, part) for part in aliases[key])
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __contains__(self, key):
        # an alias ("betas" for beta1 / beta2) is in the group as it reads: ``if "betas" in group: group["betas"]
        # = ...`` (PyTorch code) skipped the assignment without a word
        return key in self._optimizer._aliases or dict.__contains__(self, key)

    def __setitem__(self, key, value):
        if key == "params":
            self._refuse()
        self._optimizer._assign({key: value}, [self])

    def update(self, *args, **kwargs):
        self._optimizer._assign(dict(*args, **kwargs), [self])

    def __ior__(self, other):               # group |= {...}: checked as update() is
        self.update(other)
        return self

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{type(self._optimizer).__name__}: a parameter group's entries cannot be removed or added; "
                        f"assign a setting, or use add_param_group for more parameters")

    __delitem__ = pop = popitem = clear = setdefault = _refuse

    def __reduce__(self):  # copy and pickle rebuild the group without going through __setitem__
        return ParamGroup, (self._optimizer, dict(self))


class Optimizer:
    """Base class: holds the parameter groups, the per-parameter state and the settings.

    Subclasses declare their hyperparameters (``_hyperparameters``, saved in :meth:`state_dict`), the names of their
    per-parameter arrays (``_state_arrays``), whether they count steps per parameter (``_counts_steps``), and
    implement ``_update(group, param, flat_data, flat_grad, state, n_threads)`` (``group`` holds the settings of the
    parameter's group) and ``_check_setting(name, value)`` (and ``_check_combination(settings)`` where settings
    constrain each other).

    **Parameter groups** (PyTorch's form): ``params`` may be a list of dicts, each ``{"params": [...], setting:
    value, ...}``; a setting a group does not give takes the constructor's value. The usual use is to leave biases and
    normalisation parameters out of weight decay (CS231n: "it is not common to regularize the bias parameters"; see
    :func:`weight_decay_groups`) or to give pretrained layers a smaller learning rate.

    Every setting is checked whenever it is assigned, in the constructor, in a group, or later, with the same
    ``ValueError`` (PyTorch's wording: ``"SGD: invalid momentum value: -5"``); a refused value leaves the old one in
    place. ``opt.lr = 0.01`` (or any other setting) sets it in every group and in :attr:`defaults`; reading
    ``opt.lr`` gives the groups' common value, and a ValueError when the groups differ (read
    ``opt.param_groups[i]["lr"]`` then).

    Args:
        params (iterable of Parameter, or of dict): the parameters to optimise, e.g. ``model.parameters()``, or
            parameter groups; frozen parameters may be included (they are skipped while frozen).
        lr (float): learning rate, >= 0.
        **hyperparameters: the subclass's other settings (every one of ``_hyperparameters``).

    Attributes:
        param_groups (tuple of ParamGroup): the groups, in the given order (:meth:`add_param_group` adds one).
        defaults (dict): the constructor's settings, taken by groups that do not set their own.
        params (list of Parameter): every parameter, group after group (its index here names its state).
        state (list of dict): per-parameter state, ``{}`` until the parameter's first step.
        step_count (int): number of :meth:`step` calls so far.

    Example:
        >>> from cynet import nn, optim
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
        ...                  {"params": model[2].parameters()}], lr=0.1, momentum=0.9)
        >>> [group["lr"] for group in opt.param_groups]
        [0.01, 0.1]
        >>> opt.param_groups[0]["lr"] = -1.0
        Traceback (most recent call last):
        ...
        ValueError: SGD: invalid learning rate: -1.0
    """

    _hyperparameters = ()
    _state_arrays = ()
    _counts_steps = False
    _aliases = {}       # a name that stands for several settings, e.g. Adam's betas -> (beta1, beta2)

    def __init__(self, params, lr, **hyperparameters):
        name = type(self).__name__
        missing = [key for key in self._hyperparameters if key not in hyperparameters]
        unknown = [key for key in hyperparameters if key not in self._hyperparameters]
        if missing or unknown:
            raise TypeError(f"{name}: settings {missing} missing, {unknown} unknown")
        object.__setattr__(self, "defaults", self._checked_settings({}, {"lr": lr, **hyperparameters}, ""))
        self.param_groups = ()
        self.params = []
        self.state = []
        self._group_of = []     # the index in param_groups of each parameter's group
        self.step_count = 0
        for params, overrides, where in self._group_specs(params):
            self._add_group(params, overrides, where)

    def _group_specs(self, params):
        """The constructor's ``params`` as ``(parameters, settings, where)`` per group, the parameters checked."""
        name = type(self).__name__
        if isinstance(params, Module):
            # (a Sequential iterates over its layers: was "params[0] is not a cynet.nn.Parameter but a Linear")
            raise TypeError(f"{name}: params must be the model's parameters, got the module {type(params).__name__} "
                            f"itself; pass model.parameters()")
        params = self._listed(params, (Parameter, np.ndarray, dict), "", "params must be an iterable of Parameter "
                              "(e.g. model.parameters()) or a list of parameter-group dicts")
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = [item for item in params if isinstance(item, dict)]
        if not groups:
            return [(self._group_parameters({"params": params}, ""), {}, "")]
        if len(groups) != len(params):
            raise TypeError(f"{name}: params mixes parameter-group dicts and other items; give either parameters or "
                            f"one dict per group")
        specs = [self._group_spec(group, f" param_groups[{index}]") for index, group in enumerate(groups)]
        if not any(spec[0] for spec in specs):
            raise ValueError(f"{name}: got an empty parameter list (every parameter group is empty)")
        return specs

    def _group_spec(self, group, where):
        return (self._group_parameters(group, where), {key: value for key, value in group.items() if key != "params"},
                where)

    def _group_parameters(self, group, where):
        """The list of Parameters of a group dict, checked one by one."""
        name = type(self).__name__
        if "params" not in group:
            raise KeyError(f"{name}:{where}: a parameter group needs a 'params' entry")
        params = group["params"]
        if isinstance(params, Parameter):
            return [params]
        params = self._listed(params, (np.ndarray, dict, str), where,
                              "'params' must be a Parameter or an iterable of Parameter")
        for index, param in enumerate(params):
            if not isinstance(param, Parameter):
                hint = " (pass model.parameters(), not named_parameters())" if isinstance(param, tuple) else ""
                raise TypeError(f"{name}: {self._label(where, index)} is not a cynet.nn.Parameter but a "
                                f"{type(param).__name__}{hint}")
        return params

    def _listed(self, value, refused, where, wanted):
        """``list(value)``; TypeError saying what was ``wanted`` when ``value`` is one of ``refused`` or not
        iterable."""
        prefix = f"{type(self).__name__}:{where}{':' if where else ''} {wanted}, got"
        if isinstance(value, refused):
            raise TypeError(f"{prefix} a single {type(value).__name__}")
        if isinstance(value, (set, frozenset)):
            # as PyTorch: a set's order changes between runs, and the state is saved by position in the list
            raise TypeError(f"{prefix} a {type(value).__name__}, whose order changes from run to run (a checkpoint "
                            f"would give one parameter's state to another); pass a list, e.g. model.parameters()")
        try:
            return list(value)
        except TypeError:
            raise TypeError(f"{prefix} {type(value).__name__}") from None

    @staticmethod
    def _label(where, index):
        return f"params[{index}]" if not where else f"{where.strip()}['params'][{index}]"

    def add_param_group(self, param_group):
        """Add a group of parameters (PyTorch's method), e.g. layers unfrozen part-way through fine-tuning.

        Args:
            param_group (dict): ``{"params": Parameter or iterable of Parameter, setting: value, ...}``; settings it
                does not give take :attr:`defaults`.

        Raises:
            ValueError: a parameter already in the optimiser (or twice in the group), or an invalid setting.
            TypeError: not a dict, or items that are not Parameters.

        Example:
            >>> from cynet import nn, optim
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = optim.SGD(model[2].parameters(), lr=0.1)
            >>> opt.add_param_group({"params": model[0].parameters(), "lr": 0.01})
            >>> len(opt.params), [group["lr"] for group in opt.param_groups]
            (4, [0.1, 0.01])
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"{type(self).__name__}.add_param_group: expected a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        self._add_group(*self._group_spec(param_group, f" param_groups[{len(self.param_groups)}]"))

    def _add_group(self, params, overrides, where):
        """Check a group (its parameters against those already held, its settings) and append it; nothing changes
        when it is refused."""
        name = type(self).__name__
        known = {id(param) for param in self.params}
        for index, param in enumerate(params):
            if id(param) in known:
                raise ValueError(f"{name}: {self._label(where, index)} appears more than once in the parameter list")
            known.add(id(param))
        try:
            settings = self._checked_settings(self.defaults, overrides, where)
        except ValueError as error:
            raise ValueError(f"{error.args[0]} (in{where})" if where and "unknown" not in error.args[0]
                             else error.args[0]) from None
        group = ParamGroup(self, {"params": params, **settings})
        self._group_of.extend(len(self.param_groups) for _ in params)
        self.param_groups = self.param_groups + (group,)
        self.params.extend(params)
        self.state.extend({} for _ in params)

    # --- settings -----------------------------------------------------------------------------------------------------
    def _setting_names(self):
        return ("lr",) + tuple(self._hyperparameters)

    def _checked_settings(self, settings, changes, where):
        """``settings`` (a complete, checked set) with ``changes`` applied, each change checked and normalised and the
        result's combination checked; ValueError naming the setting (and ``where``: the group) otherwise."""
        expanded = {}
        for key, value in changes.items():
            if key in self._aliases:
                expanded.update(self._split_alias(key, value))
            else:
                expanded[key] = value
        unknown = [key for key in expanded if key not in self._setting_names()]
        if unknown:
            raise ValueError(f"{type(self).__name__}:{where} unknown settings {unknown}; the settings are "
                             f"{list(self._setting_names()) + list(self._aliases)}")
        merged = dict(settings)
        for key, value in expanded.items():
            merged[key] = self._checked_lr(value) if key == "lr" else self._check_setting(key, value)
        self._check_combination(merged)
        return merged

    def _split_alias(self, key, value):
        raise NotImplementedError(f"{type(self).__name__} declares the alias {key!r} without splitting it")

    def _checked_lr(self, value):
        value = _unwrap(value)
        if not _is_real(value) or not value >= 0 or math.isinf(value):
            # a non-number shown as its repr: lr="0.1" read "invalid learning rate: 0.1", a valid-looking rate
            shown = value if _is_real(value) else f"{value!r} ({type(value).__name__}; lr must be a number >= 0)"
            raise ValueError(f"{type(self).__name__}: invalid learning rate: {shown}")
        return float(value)

    def _group_settings(self, group):
        return {key: dict.__getitem__(group, key) for key in self._setting_names()}

    def _assign(self, changes, groups):
        """Check ``changes`` (setting -> value) against every group of ``groups`` first, then assign them (all or
        nothing)."""
        updated = [self._checked_settings(self._group_settings(group), changes, "") for group in groups]
        for group, settings in zip(groups, updated):
            for key, value in settings.items():
                dict.__setitem__(group, key, value)

    def _common(self, key):
        """The value of a setting that all groups share; ValueError naming the groups' values otherwise."""
        values = [group[key] for group in self.param_groups]
        if any(value != values[0] for value in values[1:]):
            raise ValueError(f"{type(self).__name__} has {len(values)} parameter groups with different {key} "
                             f"({', '.join(map(repr, values))}): read param_groups[i][{key!r}]")
        return values[0]

    def _set_everywhere(self, changes):
        """Assign settings to every group and to :attr:`defaults` (checked against each first)."""
        defaults = self._checked_settings(self.defaults, changes, "")
        self._assign(changes, self.param_groups)
        object.__setattr__(self, "defaults", defaults)

    @property
    def lr(self):
        """The learning rate (a float >= 0) of every group; setting it sets every group's."""
        return self._common("lr")

    @lr.setter
    def lr(self, value):
        self._set_everywhere({"lr": value})

    def __getattr__(self, name):  # the hyperparameters live in the groups
        if name in type(self)._hyperparameters and "param_groups" in self.__dict__:
            return self._common(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self._hyperparameters:
            self._set_everywhere({name: value})
        else:
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
        value = _unwrap(value)
        ok = _is_real(value) and math.isfinite(value) and value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        self._check(ok, f"invalid {label}: {value}")
        return float(value)

    # --- stepping -----------------------------------------------------------------------------------------------------
    def _arrays(self, index, param):
        """``(flat data, flat grad)`` of a parameter, after checking they are what the kernels accept."""
        data = param.data

        def name():
            return f"{type(self).__name__}.step: params[{index}]"

        if not isinstance(data, np.ndarray) or data.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name()}: data must be a float32 or float64 ndarray, got "
                            f"{describe(data) if isinstance(data, np.ndarray) else type(data).__name__}")
        flags = data.flags
        if not flags.c_contiguous or not flags.writeable:
            raise ValueError(f"{name()}: data must be C-contiguous and writable, got a "
                             f"{'strided' if not flags.c_contiguous else 'read-only'} {describe(data)}")
        grad = param.grad
        if grad.dtype != data.dtype or grad.shape != data.shape:
            raise TypeError(f"{name()}: gradient ({describe(grad)}) does not match the data ({describe(data)}); was "
                            f"param.data replaced without its gradient? Use Module.to(dtype) to change dtypes")
        if not grad.flags.c_contiguous:
            raise ValueError(f"{name()}: gradient must be C-contiguous, got a strided {describe(grad)}")
        state = self.state[index]
        for key in self._state_arrays:
            buffer = state.get(key)
            if buffer is not None and (buffer.dtype != data.dtype or buffer.size != data.size):
                raise TypeError(f"{name()}: state {key!r} ({buffer.dtype}, {buffer.size} elements) does not match "
                                f"the parameter ({describe(data)}); the parameter changed dtype or size after the "
                                f"optimiser started: create a new optimiser")
            if buffer is not None and (buffer.ndim != 1 or not buffer.flags.c_contiguous or not buffer.flags.writeable):
                raise ValueError(f"{name()}: state {key!r} must be a flat, C-contiguous, writable array of "
                                 f"{data.size} values, got {describe(buffer)} (replaced by hand?)")
        return data.reshape(-1), grad.reshape(-1)

    def step(self):
        """Update every learning parameter once from its current gradient, with its group's settings (frozen
        parameters are skipped).

        Returns:
            None
        """
        # each group's settings as a plain dict for this step: ParamGroup's own lookup (aliases) cost 0.3 us a read
        settings = [dict(group) for group in self.param_groups]
        # every parameter checked before any is updated: a step refused at params[2] (a part of the model cast with
        # .double() since the optimiser started) had already moved params[0] and [1] and counted their steps
        arrays = [(index, param) + self._arrays(index, param) for index, param in enumerate(self.params)
                  if param.requires_grad]
        for index, param, data, grad in arrays:
            state = self.state[index]
            if self._counts_steps:
                state["step"] = state.get("step", 0) + 1
            # an update streams the parameter, its gradient and one or two state buffers
            self._update(settings[self._group_of[index]], param, data, grad, state,
                         kernel_threads(data.size, 2 * NS_STREAM))
        self.step_count += 1

    def _update(self, group, param, data, grad, state, n_threads):
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def _zeros(self, param):
        return np.zeros(param.data.size, dtype=param.data.dtype)

    def zero_grad(self, set_to_none=False):
        """Reset the gradient of every parameter (``param.zero_grad()``, lazy: no memory is written).
        ``set_to_none=True`` (PyTorch's) is refused: a cynet gradient is a buffer, never None (see
        :data:`cynet.nn.module.NO_NONE_GRAD`)."""
        _refuse_set_to_none(f"{type(self).__name__}.zero_grad", set_to_none)
        for param in self.params:
            param.zero_grad()

    # --- state --------------------------------------------------------------------------------------------------------
    def _settings_keys(self):
        """The scalar keys of :meth:`state_dict` that hold settings: ``{(group, setting): key}``."""
        if len(self.param_groups) == 1:
            return {(0, key): key for key in self._setting_names()}
        return {(index, key): f"group.{index}.{key}" for index in range(len(self.param_groups))
                for key in self._setting_names()}

    def _layout_keys(self):
        if len(self.param_groups) == 1:
            return ()
        return ("n_groups",) + tuple(f"group.{index}.n_params" for index in range(len(self.param_groups)))

    def state_dict(self):
        """A flat dict of everything needed to resume: settings, step counts and per-parameter arrays (copies).

        Keys: ``type`` (the class name), the settings (``lr``, ``momentum``, ...), ``step`` (number of :meth:`step`
        calls), ``n_params``, then for each parameter ``i`` that has state ``state.i.<name>`` (an ndarray of the
        parameter's shape, or ``state.i.step``, an int). With several parameter groups the settings are
        ``group.<g>.<setting>``, and ``n_groups`` and ``group.<g>.n_params`` give the layout. Values are ndarrays or
        JSON scalars: no pickle needed.
        """
        out = {"type": type(self).__name__}
        if len(self.param_groups) > 1:
            out["n_groups"] = len(self.param_groups)
            for index, group in enumerate(self.param_groups):
                out[f"group.{index}.n_params"] = len(group["params"])
        for (index, setting), key in self._settings_keys().items():
            out[key] = dict.__getitem__(self.param_groups[index], setting)
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
        having stopped. The optimiser must have the same parameter groups (their number and sizes) as the saved one.

        Raises:
            ValueError: another optimiser type, another number of parameters or groups, an invalid setting, or an
                array whose shape differs from its parameter's.
            KeyError: missing settings or unknown keys (all listed).
        """
        self._apply_checked_state(self._checked_state(state))

    def _checked_state(self, state):
        """Check ``state`` as :meth:`load_state_dict` does, changing nothing; returns what
        :meth:`_apply_checked_state` needs: ``(settings per group, step, per-parameter state)``, arrays copied."""
        name = f"{type(self).__name__}.load_state_dict"
        if not hasattr(state, "keys"):
            raise TypeError(f"{name}: expected a dict from state_dict(), got {type(state).__name__}")
        _check_state_type(name, state, type(self).__name__, "optimiser")
        saved_groups = state.get("n_groups", 1)
        if saved_groups != len(self.param_groups):
            raise ValueError(f"{name}: the state holds {saved_groups} parameter group(s), this optimiser has "
                             f"{len(self.param_groups)}")
        settings_keys = self._settings_keys()
        scalars = ("type",) + self._layout_keys() + tuple(settings_keys.values()) + ("step", "n_params")
        missing = [key for key in scalars if key not in state]
        if missing:
            raise KeyError(f"{name}: missing keys {missing}")
        if state["n_params"] != len(self.params):
            raise ValueError(f"{name}: the state holds {state['n_params']} parameters, this optimiser has "
                             f"{len(self.params)}")
        sizes = [state[f"group.{index}.n_params"] for index in range(saved_groups)] if saved_groups > 1 else []
        if sizes and sizes != [len(group["params"]) for group in self.param_groups]:
            raise ValueError(f"{name}: the state's groups hold {sizes} parameters, this optimiser's "
                             f"{[len(group['params']) for group in self.param_groups]}")
        allowed = set(self._state_arrays) | ({"step"} if self._counts_steps else set())
        per_param = [{} for _ in self.params]
        unexpected, mismatched = [], []
        for key, value in state.items():
            if key in scalars:
                continue
            parts = key.split(".")
            if (len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(self.params)
                    or parts[2] not in allowed):
                unexpected.append(key)
                continue
            index, field = int(parts[1]), parts[2]
            param = self.params[index]
            if field == "step":
                value = _unwrap(value)
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
        settings = [{} for _ in self.param_groups]
        for (index, setting), key in settings_keys.items():
            settings[index][setting] = state[key]
        settings = [self._checked_settings({}, group_settings, "") for group_settings in settings]
        for index, entries in enumerate(per_param):
            if entries:
                self._check_complete_state(name, index, entries, settings[self._group_of[index]])
        step = _unwrap(state["step"])
        if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 0:
            raise ValueError(f"{name}: step must be a non-negative int, got {step!r}")
        return settings, int(step), per_param

    def _apply_checked_state(self, checked):
        """Install the output of :meth:`_checked_state` (cannot fail)."""
        settings, step, per_param = checked
        self._set_checked_settings(settings)
        self.step_count = step
        self.state = per_param

    def _set_checked_settings(self, settings):
        """Install per-group settings already checked together, without the per-assignment checks (assigned one by
        one they could clash with the current values on the way: SGD's Nesterov rule)."""
        for group, values in zip(self.param_groups, settings):
            for key, value in values.items():
                dict.__setitem__(group, key, value)

    # --- snapshots ----------------------------------------------------------------------------------------------------
    def snapshot(self, out=None):
        """Copy the state a :meth:`step` changes — per-parameter arrays and step counts — and the settings (each
        group's and :attr:`defaults`), for :meth:`restore`.

        Cheap enough to take before every step (the trainer's divergence guard does): pass the previous snapshot as
        ``out`` and its arrays are overwritten in place, so nothing is allocated once the state exists. Frozen
        parameters' state is copied too (usually none, or unchanged since they froze): one unfrozen after the
        snapshot may take steps before :meth:`restore`.

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
            out = {"state": [{} for _ in self.params]}
        out["settings"] = [self._group_settings(group) for group in self.param_groups]
        out["defaults"] = dict(self.defaults)
        out["step_count"] = self.step_count
        for live, saved in zip(self.state, out["state"]):
            _copy_state(live, saved)
        return out

    def restore(self, snapshot):
        """Put back the state copied by :meth:`snapshot` (into the existing arrays, so references stay valid): the
        settings (each group's and :attr:`defaults`, which a group added later takes), the step counts and every
        parameter's state as it was, including "no state yet" for parameters whose first step came after the
        snapshot.

        Args:
            snapshot (dict): from :meth:`snapshot` of this optimiser.

        Raises:
            ValueError: the snapshot was taken of an optimiser with another number of parameters or groups.
        """
        name = f"{type(self).__name__}.restore"
        if len(snapshot["state"]) != len(self.params):
            raise ValueError(f"{name}: the snapshot holds {len(snapshot['state'])} parameters, this optimiser has "
                             f"{len(self.params)}")
        if len(snapshot["settings"]) != len(self.param_groups):
            raise ValueError(f"{name}: the snapshot holds {len(snapshot['settings'])} parameter group(s), this "
                             f"optimiser has {len(self.param_groups)}")
        self._set_checked_settings(snapshot["settings"])
        object.__setattr__(self, "defaults", dict(snapshot["defaults"]))   # what a group added later takes
        self.step_count = snapshot["step_count"]
        for saved, live in zip(snapshot["state"], self.state):
            _copy_state(saved, live)

    def _check_complete_state(self, name, index, entries, settings):
        """A parameter's state must be whole: every array its group's rule keeps (and its step count where
        counted)."""
        required = list(self._required_state(settings))
        if self._counts_steps:
            required.append("step")
        absent = [key for key in required if key not in entries]
        if absent:
            raise KeyError(f"{name}: parameter {index} has state {sorted(entries)} but lacks "
                           f"{[f'state.{index}.{key}' for key in absent]}")

    def _required_state(self, settings):
        """The state arrays a parameter keeps under ``settings`` (its group's)."""
        return self._state_arrays

    def __repr__(self):
        def described(settings):
            return ", ".join(f"{key}={value!r}" for key, value in settings.items())

        name = type(self).__name__
        if len(self.param_groups) == 1:
            return f"{name}({len(self.params)} parameters, {described(self._group_settings(self.param_groups[0]))})"
        groups = ", ".join(f"{{{len(group['params'])} parameters, {described(self._group_settings(group))}}}"
                           for group in self.param_groups)
        return f"{name}({len(self.params)} parameters in {len(self.param_groups)} groups: {groups})"


def weight_decay_groups(model, weight_decay):
    r"""Parameter groups that decay the weights only: CS231n's "it is not common to regularize the bias parameters".

    The parameters with ``ndim >= 2`` (weight matrices and kernels, the ones :class:`~cynet.nn.L2Penalty` covers)
    take ``weight_decay``; the others (biases, the gains and shifts of normalisation layers, whatever their shape when
    a model is given, PReLU slopes) take 0.
    Frozen parameters are included, since the optimiser skips them while they stay frozen; a parameter shared by
    several modules is listed once.

    Args:
        model (Module or iterable of Parameter): the model, or its parameters (what ``cynet.tune``'s
            ``optimizer_factory(parameters, params)`` receives).
        weight_decay (float): :math:`\lambda` for the weights (the optimiser checks it).

    Returns:
        list of dict: ``[{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay":
        0.0}]``, to pass as any optimiser's ``params``.

    Example:
        >>> from cynet import nn, optim
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = optim.SGD(optim.weight_decay_groups(model, 5e-4), lr=0.1, momentum=0.9)
        >>> [(len(group["params"]), group["weight_decay"]) for group in opt.param_groups]
        [(2, 0.0005), (4, 0.0)]
    """
    never = set()
    if callable(getattr(model, "named_parameters", None)):
        from cynet.nn.normalization import normalization_parameters

        params = [param for _, param in model.named_parameters()]
        never = normalization_parameters(model)       # a LayerNorm over (C, D): 2-d gains and shifts, still not decayed
    else:
        try:
            params = list(model) if not isinstance(model, (Parameter, np.ndarray, str)) else None
        except TypeError:
            params = None
        if params is None or not all(isinstance(param, Parameter) for param in params):
            raise TypeError(f"weight_decay_groups: expected a cynet.nn.Module or an iterable of Parameter, got "
                            f"{type(model).__name__}")
    seen, decayed, others = set(), [], []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            (decayed if param.data.ndim >= 2 and id(param) not in never else others).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def learning_rates(optimizer):
    """Each parameter group's learning rate as a list of floats (``[optimizer.lr]`` for an optimiser of another
    library that has no groups)."""
    groups = getattr(optimizer, "param_groups", None)
    return [float(group["lr"]) for group in groups] if groups else [float(optimizer.lr)]


def _copy_state(source, target):
    """Make the per-parameter state dict ``target`` equal to ``source``: arrays copied into ``target``'s arrays where
    they fit (no allocation), keys that ``source`` lacks removed."""
    for key in [key for key in target if key not in source]:
        del target[key]
    for key, value in source.items():
        if isinstance(value, np.ndarray):
            buffer = target.get(key)
            if isinstance(buffer, np.ndarray) and buffer.shape == value.shape and buffer.dtype == value.dtype:
                copyto(buffer, value)
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
        nesterov (bool): keyword-only, as the two after it (PyTorch's positional order is ``lr, momentum,
            dampening, weight_decay, nesterov``: a positional call ported from it fails instead of mixing them up).
            Nesterov momentum (needs momentum > 0 and dampening 0, also when settings change later:
            to drop the momentum of a Nesterov optimiser, set ``nesterov = False`` first). Default False.
        weight_decay (float): L2 penalty :math:`\lambda` >= 0 added to the gradient. Default 0.
        dampening (float): :math:`\tau`, scales the gradient's share of the velocity by :math:`1 - \tau`; any
            real number, as in PyTorch (a negative one enlarges the share). Default 0.

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

    def __init__(self, params, lr, momentum=0.0, *, nesterov=False, weight_decay=0.0, dampening=0.0):
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         dampening=dampening)

    def _check_setting(self, name, value):
        if name == "nesterov":
            value = _unwrap(value)
            self._check(isinstance(value, (bool, np.bool_)), f"nesterov must be a bool, got {value!r}")
            return bool(value)
        return self._real(f"{name} value", value, low=-math.inf if name == "dampening" else 0.0)

    def _check_combination(self, settings):
        # Checked on every assignment: to drop momentum from a Nesterov optimiser, set nesterov = False first.
        self._check(not settings["nesterov"] or (settings["momentum"] > 0 and settings["dampening"] == 0),
                    "Nesterov momentum requires a momentum and zero dampening")

    def _required_state(self, settings):
        # none: the momentum buffer is made by the first step with momentum (momentum switched on after some steps
        # saves a state without it, which must load as the uninterrupted run goes on)
        return ()

    def _update(self, group, param, data, grad, state, n_threads):
        first = False
        buffer = data  # ignored by the kernel without momentum
        if group["momentum"] != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = np.empty_like(data)  # filled with d by the first step
                first = True
        _k().sgd_update(data, grad, buffer, group["lr"], group["weight_decay"], group["momentum"], group["dampening"],
                        group["nesterov"], first, n_threads)


class AdaGrad(Optimizer):
    r"""AdaGrad (Duchi et al., 2011): per-element step sizes shrinking with the sum of squared gradients.

    .. math::
        d = g + \lambda p, \qquad s_t = s_{t-1} + d^2, \qquad p_t = p_{t-1} - \eta \, \frac{d}{\sqrt{s_t} + \epsilon}

    Args:
        params (iterable of Parameter): parameters to optimise.
        lr (float): learning rate :math:`\eta`, >= 0. Default 1e-2.
        eps (float): keyword-only, as ``weight_decay`` (PyTorch's third positional argument is ``lr_decay``):
            :math:`\epsilon` >= 0 added to the root (numerical stability). Default 1e-10.
        weight_decay (float): L2 penalty :math:`\lambda` >= 0. Default 0.

    State per parameter: ``sum`` (starts at 0) and ``step``.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.AdaGrad(nn.Linear(4, 2).parameters(), lr=0.1)
    """

    _hyperparameters = ("eps", "weight_decay")
    _state_arrays = ("sum",)
    _counts_steps = True

    def __init__(self, params, lr=1e-2, *, eps=1e-10, weight_decay=0.0):
        super().__init__(params, lr, eps=eps, weight_decay=weight_decay)

    def _check_setting(self, name, value):
        return self._real("epsilon value" if name == "eps" else f"{name} value", value)

    def _update(self, group, param, data, grad, state, n_threads):
        if "sum" not in state:
            state["sum"] = self._zeros(param)
        _k().adagrad_update(data, grad, state["sum"], group["lr"], group["eps"], group["weight_decay"], n_threads)


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
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)

    def _check_setting(self, name, value):
        if name == "alpha":
            return self._real("alpha value", value, high=1.0)
        return self._real("epsilon value" if name == "eps" else f"{name} value", value)

    def _required_state(self, settings):
        # the momentum buffer is made (zeros) by the first step with momentum: a state saved before it, or after
        # momentum was switched on between steps, lacks it and must load as the uninterrupted run goes on
        return ("square_avg",)

    def _update(self, group, param, data, grad, state, n_threads):
        if "square_avg" not in state:
            state["square_avg"] = self._zeros(param)
        buffer = data  # ignored by the kernel without momentum
        if group["momentum"] > 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = self._zeros(param)
            buffer = state["momentum_buffer"]
        _k().rmsprop_update(data, grad, state["square_avg"], buffer, group["lr"], group["alpha"], group["eps"],
                            group["weight_decay"], group["momentum"], n_threads)


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
        pair = self._split_alias("betas", betas)
        super().__init__(params, lr, beta1=pair["beta1"], beta2=pair["beta2"], eps=eps, weight_decay=weight_decay)

    _aliases = {"betas": ("beta1", "beta2")}

    def _split_alias(self, key, value):
        try:
            beta1, beta2 = value
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: betas must be a pair of floats, got {value!r}") from None
        return {"beta1": beta1, "beta2": beta2}

    @property
    def betas(self):
        """``(beta1, beta2)``; assigning a pair checks both before setting either (also as a group's ``"betas"``)."""
        return self._common("betas")    # (groups with different pairs: the error names betas, not beta1)

    @betas.setter
    def betas(self, value):
        self._set_everywhere({"betas": value})

    def _check_setting(self, name, value):
        if name in ("beta1", "beta2"):
            return self._real(f"beta parameter at index {int(name == 'beta2')}", value, high=1.0, high_open=True)
        return self._real("epsilon value" if name == "eps" else f"{name} value", value)

    def _update(self, group, param, data, grad, state, n_threads):
        if "exp_avg" not in state:
            state["exp_avg"] = self._zeros(param)
            state["exp_avg_sq"] = self._zeros(param)
        step = float(state["step"])
        beta1, beta2 = group["beta1"], group["beta2"]
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        _k().adam_update(data, grad, state["exp_avg"], state["exp_avg_sq"], group["lr"], beta1, beta2,
                         group["eps"], group["weight_decay"], self._decoupled, bias_correction1, bias_correction2_sqrt,
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
