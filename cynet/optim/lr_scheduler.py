"""Learning-rate schedules: step, multi-step, exponential, 1/t, 1/sqrt(t), linear, polynomial, cosine (with or without
warm restarts), linear warm-up, and reduce-on-plateau: the decays of CS231n's "Training Neural Networks" and PyTorch's
names for them.

A schedule owns an optimiser's :attr:`~cynet.optim.Optimizer.lr`. Construct it after the optimiser (the optimiser's
current ``lr`` becomes the schedule's ``base_lr``), then call :meth:`~LRScheduler.step` once per epoch (or per
iteration, if the schedule is counted in iterations), after ``optimizer.step()``:

    >>> from cynet import nn, optim
    >>> opt = optim.SGD(nn.Linear(4, 2).parameters(), lr=0.1, momentum=0.9)
    >>> sched = optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    >>> for epoch in range(3):
    ...     # ... train one epoch: forward, backward, opt.step() ...
    ...     sched.step()

The epoch-based schedules are closed forms of the epoch counter ``last_epoch`` (0 at construction): the learning rate
at epoch t is ``lr_at(t)``, the same formula as PyTorch's ``_get_closed_form_lr`` (PyTorch's ``step()`` applies the
equivalent recursive form, which agrees to rounding). So a schedule resumes exactly from its ``last_epoch``, and it
overwrites any change made to ``optimizer.lr`` by hand at its next step. :class:`ReduceLROnPlateau` is the
exception: it reads the current ``optimizer.lr`` and multiplies it when a metric stops improving.

With parameter groups (:class:`~cynet.optim.Optimizer`) each group follows the schedule from its own base rate (its
``lr`` when the schedule was made), as in PyTorch: ``lr_at`` is evaluated once per group, with ``base_lr`` set to that
group's base. :meth:`get_last_lr` returns a float for an optimiser with one group, and a list with one rate per group
otherwise (PyTorch always returns the list).

``state_dict()`` is flat and JSON-friendly like the optimisers': string keys, JSON scalars (MultiStepLR's milestones
are an int64 ndarray); a wrapped schedule's keys are prefixed ``after.``. As the optimisers' ``load_state_dict``,
``load_state_dict`` also takes a state read back from ``np.savez``/``np.load`` (its scalars as 0-d arrays).
"""
import bisect
import copy
import math
import numbers
import warnings

import numpy as np

from cynet._validation import saved_scalar
from cynet.optim.optimizers import Optimizer, _check_state_type, _is_real

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "InverseTimeLR", "InverseSqrtLR", "LinearLR",
           "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "LinearWarmup", "ReduceLROnPlateau"]


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _Scheduler:
    """What every schedule shares: the optimiser check, ``get_last_lr``, flat state dicts with validation."""

    # the settings saved in state_dict besides the counters (validated by _validate)
    _settings = ()
    # counters and other state saved in state_dict
    _counters = ()

    def _attach(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a cynet.optim optimiser, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer

    def _fail(self, message, error=ValueError):
        raise error(f"{type(self).__name__}: {message}")

    def _int(self, label, value, low):
        if not _is_int(value) or value < low:
            self._fail(f"{label} must be an int >= {low}, got {value!r}")
        return int(value)

    def _real(self, label, value, low=None, high=None, low_open=False, high_open=False):
        ok = _is_real(value) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            bounds = ("(" if low_open else "[") + ("-inf" if low is None else str(low)) + ", " + \
                     ("inf" if high is None else str(high)) + (")" if high_open or high is None else "]")
            self._fail(f"{label} must be a finite number in {bounds}, got {value!r}")
        return float(value)

    def _validate(self):
        """Check and normalise the settings in place (ValueError naming the class and the setting)."""

    def get_last_lr(self):
        """The learning rate the last :meth:`step` (or the constructor) set: a float, or a list of one per parameter
        group when the optimiser has several."""
        return self._last_lrs[0] if len(self._last_lrs) == 1 else list(self._last_lrs)

    def _group_rates(self, label, value):
        """``value`` (a number, or one per parameter group) as a list of one float >= 0 per group of the optimiser."""
        groups = len(self.optimizer.param_groups)
        values = np.asarray(value).reshape(-1).tolist() if isinstance(value, (np.ndarray, list, tuple)) else [value]
        if len(values) != groups:
            self._fail(f"{label} holds {len(values)} rate(s), the optimiser has {groups} parameter group(s)")
        return [self._real(label, item, low=0) for item in values]

    def _state_of_rates(self, rates):
        """Rates as state_dict stores them: a float for one group, a float64 array for several."""
        return rates[0] if len(rates) == 1 else np.array(rates, dtype=np.float64)

    def state_dict(self):
        """A flat dict: ``type``, the settings and the counters (JSON scalars; ndarrays where noted)."""
        out = {"type": type(self).__name__}
        for key in self._settings + self._counters:
            value = getattr(self, key)
            out[key] = value.copy() if isinstance(value, np.ndarray) else value
        return out

    def _restore(self, state):
        """Check ``state`` and copy its settings and counters into ``self`` (all or nothing)."""
        name = f"{type(self).__name__}.load_state_dict"
        if not hasattr(state, "keys"):
            raise TypeError(f"{name}: expected a dict from state_dict(), got {type(state).__name__}")
        _check_state_type(name, state, type(self).__name__, "schedule")
        expected = ("type",) + self._settings + self._counters
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected and not self._accepts_key(key)]
        if missing or unexpected:
            parts = ([f"missing keys {missing}"] if missing else []) + \
                    ([f"unexpected keys {unexpected}"] if unexpected else [])
            raise KeyError(f"{name}: " + "; ".join(parts))
        probe = copy.copy(self)
        for key in self._settings + self._counters:
            setattr(probe, key, saved_scalar(state[key]))
        probe._validate()
        probe._validate_counters()
        self.__dict__.update(probe.__dict__)  # the settings, the counters and what is derived from them

    def _accepts_key(self, key):
        return False

    def _validate_counters(self):
        self.last_epoch = self._int("last_epoch", self.last_epoch, 0)


class LRScheduler(_Scheduler):
    """Base class of the epoch-based schedules: ``lr = lr_at(last_epoch)``, a closed form of the epoch counter.

    Subclasses implement :meth:`lr_at` (from ``self.base_lr``) and :meth:`_validate`, and list their settings in
    ``_settings``. The constructor records each parameter group's ``lr`` as its base rate and sets the learning rates
    of epoch 0.

    Args:
        optimizer (Optimizer): the optimiser whose learning rates the schedule sets.

    Attributes:
        base_lrs (list of float): each parameter group's learning rate when the schedule was created.
        base_lr (float): the base rate ``lr_at`` works from: the first group's, or during a step the group's whose
            rate is being computed.
        last_epoch (int): number of :meth:`step` calls (0 after construction).
    """

    _counters = ("base_lr", "last_epoch")
    _warned_overwrite = False        # set on the instance by the first warning of step()

    def __init__(self, optimizer):
        self._attach(optimizer)
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.base_lr = self.base_lrs[0]
        self.last_epoch = 0
        self._validate()
        self._apply()

    def lr_at(self, epoch):
        """The learning rate at epoch ``epoch`` (closed form) for the base rate ``self.base_lr``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lr_at")

    def _apply(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            self._fail(f"the optimiser has {len(groups)} parameter groups, the schedule was made for "
                       f"{len(self.base_lrs)}: create the schedule after adding groups")
        rates = []
        for base in self.base_lrs:
            self.base_lr = base
            rates.append(float(self.lr_at(self.last_epoch)))
        self.base_lr = self.base_lrs[0]
        for group, rate in zip(groups, rates):
            group["lr"] = rate
        self._last_lrs = rates

    def step(self):
        """Advance one epoch and set the optimiser's learning rate to ``lr_at(last_epoch)``.

        Warns (once per schedule) when a group's rate is no longer the one this schedule set last: another schedule
        on the same optimiser, or a change by hand, which this step overwrites (PyTorch's schedules multiply the
        current rate and so compose; cynet's set it from the epoch count: chain a warm-up with
        ``LinearWarmup(opt, warmup_steps, after=schedule)``)."""
        self._warn_if_overwriting()
        self.last_epoch += 1
        try:
            self._apply()
        except BaseException:
            self.last_epoch -= 1        # a refused step (a group added since) does not count
            raise

    def _warn_if_overwriting(self):
        if self._warned_overwrite:
            return
        current = [float(group["lr"]) for group in self.optimizer.param_groups]
        if len(current) != len(self._last_lrs) or current == list(self._last_lrs):
            return
        self._warned_overwrite = True
        group = next(i for i, (a, b) in enumerate(zip(current, self._last_lrs)) if a != b)
        warnings.warn(
            f"{type(self).__name__}.step: group {group}'s learning rate is {current[group]:g}, not the "
            f"{self._last_lrs[group]:g} this schedule set last: another schedule on the same optimiser or a change by "
            f"hand, which this step overwrites (cynet's schedules set the rate from their epoch count, they do not "
            f"multiply it as PyTorch's do: one schedule per optimiser; chain a warm-up with LinearWarmup(optimizer, "
            f"warmup_steps, after=schedule))", UserWarning, stacklevel=2)

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output and set the optimiser's ``lr`` to the restored epoch's value.

        Raises:
            ValueError: a state of another schedule type, or invalid values.
            KeyError: missing or unexpected keys.
        """
        self._restore(state)
        self._apply()

    def state_dict(self):
        """A flat dict: ``type``, the settings and the counters; ``base_lr`` is a float, or a float64 array of one
        base rate per parameter group."""
        out = super().state_dict()
        out["base_lr"] = self._state_of_rates(self.base_lrs)
        return out

    def _validate_counters(self):
        super()._validate_counters()
        self.base_lrs = self._group_rates("base_lr", self.base_lr)
        self.base_lr = self.base_lrs[0]

    def __repr__(self):
        settings = ", ".join(f"{key}={getattr(self, key)!r}" for key in self._settings)
        base = self.base_lr if len(self.base_lrs) == 1 else self.base_lrs
        return f"{type(self).__name__}({settings}, base_lr={base!r}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \, \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Args:
        optimizer (Optimizer): the optimiser.
        step_size (int): epochs between decays, >= 1.
        gamma (float): multiplicative factor > 0. Default 0.1.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.StepLR(opt, step_size=2, gamma=0.5)
        >>> [sched.step() or sched.get_last_lr() for _ in range(4)]
        [1.0, 0.5, 0.5, 0.25]
    """

    _settings = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def _validate(self):
        self.step_size = self._int("step_size", self.step_size, 1)
        self.gamma = self._real("gamma", self.gamma, low=0, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` at each milestone epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^{\#\{m \in \text{milestones} : m \le t\}}

    A milestone listed twice decays twice, as in PyTorch.

    Args:
        optimizer (Optimizer): the optimiser.
        milestones (iterable of int): epochs (>= 1) at which to decay.
        gamma (float): multiplicative factor > 0. Default 0.1.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.MultiStepLR(opt, milestones=[1, 3], gamma=0.1)
        >>> [round(sched.step() or sched.get_last_lr(), 6) for _ in range(4)]
        [0.1, 0.1, 0.01, 0.01]
    """

    _settings = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = milestones, gamma
        super().__init__(optimizer)

    def _validate(self):
        try:
            values = list(np.asarray(self.milestones).reshape(-1).tolist()) \
                if isinstance(self.milestones, np.ndarray) else list(self.milestones)
        except TypeError:
            self._fail(f"milestones must be an iterable of ints, got {self.milestones!r}")
        if not values or not all(_is_int(m) and m >= 1 for m in values):
            self._fail(f"milestones must be a non-empty iterable of ints >= 1, got {self.milestones!r}")
        self.milestones = np.array(sorted(int(m) for m in values), dtype=np.int64)
        self._sorted = self.milestones.tolist()
        self.gamma = self._real("gamma", self.gamma, low=0, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** bisect.bisect_right(self._sorted, epoch)


class ExponentialLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^t

    Args:
        optimizer (Optimizer): the optimiser.
        gamma (float): multiplicative factor > 0 (e.g. 0.95).

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.ExponentialLR(opt, gamma=0.5)
        >>> sched.step(); sched.step(); sched.get_last_lr()
        0.25
    """

    _settings = ("gamma",)

    def __init__(self, optimizer, gamma):
        self.gamma = gamma
        super().__init__(optimizer)

    def _validate(self):
        self.gamma = self._real("gamma", self.gamma, low=0, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class _DecayRateSchedule(LRScheduler):
    """A schedule of one setting, ``decay_rate`` k >= 0 (InverseTimeLR, InverseSqrtLR)."""

    _settings = ("decay_rate",)

    def __init__(self, optimizer, decay_rate):
        self.decay_rate = decay_rate
        super().__init__(optimizer)

    def _validate(self):
        self.decay_rate = self._real("decay_rate", self.decay_rate, low=0)


class InverseTimeLR(_DecayRateSchedule):
    r"""1/t decay (the CS231n notes' form): the learning rate falls as the inverse of the epoch.

    .. math:: \eta_t = \frac{\eta_0}{1 + k t}

    Args:
        optimizer (Optimizer): the optimiser.
        decay_rate (float): :math:`k` >= 0.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.InverseTimeLR(opt, decay_rate=0.5)
        >>> sched.step(); sched.step(); sched.get_last_lr()
        0.5
    """

    def lr_at(self, epoch):
        return self.base_lr / (1 + self.decay_rate * epoch)


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the base learning rate down to ``eta_min`` over ``T_max`` epochs (SGDR without restarts).

    .. math:: \eta_t = \eta_{min} + (\eta_0 - \eta_{min}) \, \frac{1 + \cos(\pi t / T_{max})}{2}

    Past ``T_max`` the cosine continues (the rate rises again), as PyTorch's closed form does.

    Args:
        optimizer (Optimizer): the optimiser.
        T_max (int): epochs of the half cosine, >= 1.
        eta_min (float): the final learning rate, >= 0. Default 0.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.CosineAnnealingLR(opt, T_max=2)
        >>> sched.step(); round(sched.get_last_lr(), 12)
        0.5
    """

    _settings = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def _validate(self):
        self.T_max = self._int("T_max", self.T_max, 1)
        self.eta_min = self._real("eta_min", self.eta_min, low=0)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class InverseSqrtLR(_DecayRateSchedule):
    r"""Inverse square-root decay (the lecture's :math:`\eta_0 / \sqrt{t}`, as in "Attention is all you need"),
    shifted so that it starts at the base rate.

    .. math:: \eta_t = \frac{\eta_0}{\sqrt{1 + k t}}

    Usually after a warm-up: ``LinearWarmup(opt, W, after=InverseSqrtLR(opt, decay_rate=1 / W))`` gives
    :math:`\eta_0 \sqrt{W / t}` from epoch W on, the Transformer's schedule (Hugging Face's
    ``get_inverse_sqrt_schedule`` with ``timescale`` :math:`1 / k`).

    Args:
        optimizer (Optimizer): the optimiser.
        decay_rate (float): :math:`k` >= 0.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.InverseSqrtLR(opt, decay_rate=1.0)
        >>> sched.step(); sched.step(); sched.step(); sched.get_last_lr()
        0.5
    """

    def lr_at(self, epoch):
        return self.base_lr / math.sqrt(1 + self.decay_rate * epoch)


class LinearLR(LRScheduler):
    r"""Scale the base rate by a factor that moves linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs, then stays (PyTorch's ``LinearLR``, same defaults).

    .. math:: \eta_t = \eta_0 \left(s + (e - s) \, \frac{\min(t, T)}{T}\right)

    The lecture's linear decay to zero is ``LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=T)``.

    Args:
        optimizer (Optimizer): the optimiser.
        start_factor (float): :math:`s` in [0, 1]. Default 1/3.
        end_factor (float): :math:`e` in [0, 1]. Default 1.0.
        total_iters (int): :math:`T` >= 1. Default 5.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=4)
        >>> [sched.step() or sched.get_last_lr() for _ in range(5)]
        [0.75, 0.5, 0.25, 0.0, 0.0]
    """

    _settings = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def _validate(self):
        self.start_factor = self._real("start_factor", self.start_factor, low=0, high=1)
        self.end_factor = self._real("end_factor", self.end_factor, low=0, high=1)
        self.total_iters = self._int("total_iters", self.total_iters, 1)

    def lr_at(self, epoch):
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                               * min(self.total_iters, epoch) / self.total_iters)


class PolynomialLR(LRScheduler):
    r"""Polynomial decay to zero over ``total_iters`` epochs, then zero (PyTorch's ``PolynomialLR``).

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^p

    ``power=1`` is the lecture's linear decay.

    Args:
        optimizer (Optimizer): the optimiser.
        total_iters (int): :math:`T` >= 1. Default 5.
        power (float): :math:`p` >= 0. Default 1.0.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.PolynomialLR(opt, total_iters=4, power=2.0)
        >>> [sched.step() or sched.get_last_lr() for _ in range(5)]
        [0.5625, 0.25, 0.0625, 0.0, 0.0]
    """

    _settings = ("total_iters", "power")

    def __init__(self, optimizer, total_iters=5, power=1.0):
        self.total_iters, self.power = total_iters, power
        super().__init__(optimizer)

    def _validate(self):
        self.total_iters = self._int("total_iters", self.total_iters, 1)
        self.power = self._real("power", self.power, low=0)

    def lr_at(self, epoch):
        return self.base_lr * (1.0 - min(self.total_iters, epoch) / self.total_iters) ** self.power


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017; PyTorch's
    ``CosineAnnealingWarmRestarts`` for whole epochs): the rate falls from the base rate towards ``eta_min`` along a
    half cosine, then jumps back, each cycle ``T_mult`` times longer than the one before.

    .. math:: \eta_t = \eta_{min} + (\eta_0 - \eta_{min}) \, \frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    with :math:`T_i = T_0 T_{mult}^i` the length of the current cycle and :math:`T_{cur}` the epochs since its start.

    Args:
        optimizer (Optimizer): the optimiser.
        T_0 (int): length of the first cycle, >= 1.
        T_mult (int): growth of each cycle, >= 1. Default 1 (cycles of equal length).
        eta_min (float): the lowest rate, >= 0. Default 0.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2)
        >>> [round(sched.step() or sched.get_last_lr(), 6) for _ in range(6)]
        [0.5, 1.0, 0.853553, 0.5, 0.146447, 1.0]
    """

    _settings = ("T_0", "T_mult", "eta_min")

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0):
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        super().__init__(optimizer)

    def _validate(self):
        self.T_0 = self._int("T_0", self.T_0, 1)
        self.T_mult = self._int("T_mult", self.T_mult, 1)
        self.eta_min = self._real("eta_min", self.eta_min, low=0)

    def cycle_at(self, epoch):
        """``(T_cur, T_i)`` at ``epoch``: epochs since the current cycle began, and its length (whole numbers)."""
        if self.T_mult == 1:
            return epoch % self.T_0, self.T_0
        start, length = 0, self.T_0
        while start + length <= epoch:
            start, length = start + length, length * self.T_mult
        return epoch - start, length

    def lr_at(self, epoch):
        t_cur, t_i = self.cycle_at(epoch)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


class LinearWarmup(LRScheduler):
    r"""Linear warm-up over ``warmup_steps`` epochs, then hand over to another schedule (or hold the base rate).

    .. math::
        \eta_t = \eta_0 \left(s + (1 - s) \, \frac{t}{W}\right) \ (t < W), \qquad
        \eta_t = \text{after.lr\_at}(t - W) \ (t \ge W)

    with :math:`s` = ``start_factor`` and :math:`W` = ``warmup_steps`` (PyTorch's ``LinearLR`` followed by
    ``SequentialLR``). The wrapped schedule starts its own epoch count at the hand-over. Warm-up is usually counted
    in iterations: call :meth:`step` after every ``optimizer.step()`` then.

    Args:
        optimizer (Optimizer): the optimiser.
        warmup_steps (int): length :math:`W` >= 1 of the ramp.
        start_factor (float): :math:`s` in [0, 1], the fraction of the base rate at epoch 0. Default 0.
        after (LRScheduler or None): an epoch-based schedule of the same optimiser, freshly created (epoch 0), to
            follow the ramp. Default None (the base rate from epoch W on). Not :class:`ReduceLROnPlateau`.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.LinearWarmup(opt, warmup_steps=4, after=optim.CosineAnnealingLR(opt, T_max=10))
        >>> sched.get_last_lr(), sched.step() or sched.get_last_lr()
        (0.0, 0.25)
    """

    _settings = ("warmup_steps", "start_factor")

    def __init__(self, optimizer, warmup_steps, start_factor=0.0, after=None):
        if after is not None:
            if not isinstance(after, LRScheduler):
                raise TypeError(f"LinearWarmup: after must be an epoch-based schedule (StepLR, CosineAnnealingLR, "
                                f"...) or None, got {type(after).__name__}")
            if after.optimizer is not optimizer:
                raise ValueError("LinearWarmup: after must schedule the same optimiser")
            if after.last_epoch != 0:
                raise ValueError(f"LinearWarmup: after must be a fresh schedule (last_epoch 0), got last_epoch "
                                 f"{after.last_epoch}")
        self.after = after
        self.warmup_steps, self.start_factor = warmup_steps, start_factor
        super().__init__(optimizer)
        if after is not None:
            self.base_lrs = list(after.base_lrs)
            self._apply()

    def _validate(self):
        self.warmup_steps = self._int("warmup_steps", self.warmup_steps, 1)
        self.start_factor = self._real("start_factor", self.start_factor, low=0, high=1)

    def lr_at(self, epoch):
        if epoch < self.warmup_steps:
            return self.base_lr * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup_steps)
        if self.after is None:
            return self.base_lr
        first = self.after.base_lr
        self.after.base_lr = self.base_lr  # the group being computed
        try:
            return self.after.lr_at(epoch - self.warmup_steps)
        finally:
            self.after.base_lr = first

    def _apply(self):
        if self.after is not None:
            self.after.last_epoch = max(0, self.last_epoch - self.warmup_steps)
            self.after._apply()
        super()._apply()

    def state_dict(self):
        """Flat state; the wrapped schedule's keys are prefixed ``after.`` (``has_after`` says whether there is
        one)."""
        out = super().state_dict()
        out["has_after"] = self.after is not None
        if self.after is not None:
            out.update({f"after.{key}": value for key, value in self.after.state_dict().items()})
        return out

    def _accepts_key(self, key):
        return key == "has_after" or key.startswith("after.")

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output, the wrapped schedule's included."""
        name = "LinearWarmup.load_state_dict"
        if not hasattr(state, "keys"):
            raise TypeError(f"{name}: expected a dict from state_dict(), got {type(state).__name__}")
        if "has_after" in state and bool(state["has_after"]) != (self.after is not None):
            raise ValueError(f"{name}: the state was saved {'with' if state['has_after'] else 'without'} a wrapped "
                             f"schedule, this LinearWarmup has {'one' if self.after is not None else 'none'}")
        inner = {key[len("after."):]: value for key, value in state.items() if key.startswith("after.")}
        if self.after is None and inner:
            raise KeyError(f"{name}: unexpected keys {sorted('after.' + key for key in inner)}")
        saved_after = dict(self.after.__dict__) if self.after is not None else None
        try:
            if self.after is not None:
                if "has_after" not in state:
                    raise KeyError(f"{name}: missing keys ['has_after']")
                try:
                    self.after.load_state_dict(inner)
                except (KeyError, ValueError, TypeError) as error:
                    raise type(error)(f"{name}: in the wrapped schedule: {error.args[0]}") from None
            self._restore({key: value for key, value in state.items() if not key.startswith("after.")})
        except Exception:
            if saved_after is not None:  # all or nothing: put the wrapped schedule back as it was
                self.after.__dict__.clear()
                self.after.__dict__.update(saved_after)
                self.after._apply()
            self._apply()
            raise
        self._apply()


class ReduceLROnPlateau(_Scheduler):
    r"""Reduce the learning rate when a monitored metric stops improving (PyTorch's rules).

    After each epoch call ``step(metric)`` (e.g. the validation loss). The metric improves when it beats the best so
    far by the threshold: ``metric < best * (1 - threshold)`` in ``"min"`` mode with ``threshold_mode="rel"``
    (``metric < best - threshold`` with ``"abs"``); in ``"max"`` mode ``metric > best * (1 + threshold)`` (``"rel"``)
    or ``metric > best + threshold`` (``"abs"``), as in PyTorch. After more than
    ``patience`` epochs without improvement the rate becomes ``max(lr * factor, min_lr)`` (changes smaller than
    ``eps`` are ignored), then ``cooldown`` epochs pass before bad epochs count again. A NaN metric never improves.

    Args:
        optimizer (Optimizer): the optimiser.
        mode (str): ``"min"`` (loss) or ``"max"`` (accuracy). Default ``"min"``.
        factor (float): multiplier in [0, 1). Default 0.1.
        patience (int): bad epochs tolerated before a reduction, >= 0. Default 10.
        threshold (float): improvement margin >= 0. Default 1e-4.
        threshold_mode (str): ``"rel"`` or ``"abs"``. Default ``"rel"``.
        cooldown (int): epochs to wait after a reduction, >= 0. Default 0.
        min_lr (float): lower bound >= 0 of the learning rate. Default 0.
        eps (float): smallest change applied, >= 0. Default 1e-8.

    Attributes:
        best (float): the best metric so far (``inf`` / ``-inf`` before the first step).
        num_bad_epochs (int): epochs since the last improvement.
        last_epoch (int): number of :meth:`step` calls.

    Example:
        >>> from cynet import nn, optim
        >>> opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = optim.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        >>> for loss in [1.0, 0.9, 0.9, 0.9]:
        ...     sched.step(loss)
        >>> sched.get_last_lr()
        0.5
    """

    _settings = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
    _counters = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        self._attach(optimizer)
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.min_lr, self.eps = threshold_mode, cooldown, min_lr, eps
        self._validate()
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lrs = [float(group["lr"]) for group in optimizer.param_groups]

    def _validate(self):
        if self.mode not in ("min", "max"):
            self._fail(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.threshold_mode not in ("rel", "abs"):
            self._fail(f"threshold_mode must be 'rel' or 'abs', got {self.threshold_mode!r}")
        self.factor = self._real("factor", self.factor, low=0, high=1, high_open=True)
        self.patience = self._int("patience", self.patience, 0)
        self.threshold = self._real("threshold", self.threshold, low=0)
        self.cooldown = self._int("cooldown", self.cooldown, 0)
        self.min_lr = self._real("min_lr", self.min_lr, low=0)
        self.eps = self._real("eps", self.eps, low=0)

    def _validate_counters(self):
        super()._validate_counters()
        if not _is_real(self.best):
            self._fail(f"best must be a number, got {self.best!r}")
        self.best = float(self.best)
        self.num_bad_epochs = self._int("num_bad_epochs", self.num_bad_epochs, 0)
        self.cooldown_counter = self._int("cooldown_counter", self.cooldown_counter, 0)

    @property
    def in_cooldown(self):
        """True while the cooldown after a reduction runs."""
        return self.cooldown_counter > 0

    def _is_better(self, current):
        if self.mode == "min":
            return current < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                              else self.best - self.threshold)
        return current > (self.best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                          else self.best + self.threshold)

    def step(self, metric):
        """Record one epoch's ``metric`` (a number) and reduce the learning rate if it has plateaued."""
        if isinstance(metric, (str, bytes)) or isinstance(metric, bool):
            raise TypeError(f"ReduceLROnPlateau.step: metric must be a number, got {metric!r}")
        try:
            current = float(metric)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: metric must be a number, got {metric!r}") from None
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during the cooldown do not count
        groups = self.optimizer.param_groups
        if self.num_bad_epochs > self.patience:
            for group in groups:  # each group's rate, as PyTorch does
                old_lr = float(group["lr"])
                new_lr = max(old_lr * self.factor, self.min_lr)
                if old_lr - new_lr > self.eps:
                    group["lr"] = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lrs = [float(group["lr"]) for group in groups]

    def state_dict(self):
        """Flat state: settings, ``best``, the counters and ``last_lr`` (JSON scalars, ``best`` may be +-inf;
        ``last_lr`` is a float64 array of one rate per group when the optimiser has several)."""
        out = super().state_dict()
        out["last_lr"] = self._state_of_rates(self._last_lrs)
        return out

    def _accepts_key(self, key):
        return key == "last_lr"

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output (the learning rate itself lives in the optimiser's state dict)."""
        saved = hasattr(state, "keys") and "last_lr" in state
        if saved:  # checked before anything changes
            last_lrs = self._group_rates("last_lr", state["last_lr"])
        self._restore(state)
        if saved:
            self._last_lrs = last_lrs

    def __repr__(self):
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, patience={self.patience}, "
                f"threshold={self.threshold}, best={self.best}, num_bad_epochs={self.num_bad_epochs})")
