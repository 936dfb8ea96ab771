"""Search spaces: the distributions hyperparameters are drawn from, and how coarse-to-fine narrows them.

A space is a dict ``{name: distribution or constant}``. :func:`loguniform` is the lecture's choice for learning
rates and regularisation strengths (a value is as likely in [1e-4, 1e-3] as in [1e-3, 1e-2]); :func:`uniform` for
dropout-like numbers; :func:`randint` for integers; :func:`choice` for categories. Constants pass through unchanged.

Example:
    >>> import numpy as np
    >>> from cynet.tune import loguniform, choice, sample_space
    >>> space = {"lr": loguniform(1e-4, 1e-1), "hidden": choice([64, 128]), "batch_size": 64}
    >>> params = sample_space(space, np.random.default_rng(0))
    >>> sorted(params)
    ['batch_size', 'hidden', 'lr']
"""
import copy
import math
from fractions import Fraction

import numpy as np

from cynet._validation import is_real

__all__ = ["Distribution", "LogUniform", "Uniform", "Choice", "RandInt", "LogRandInt", "loguniform", "uniform",
           "choice", "randint", "lograndint", "sample_space", "grid_points", "narrow_space", "edge_report"]


def _check_int(owner, name, value, low):
    """``value`` as an int >= ``low`` (NumPy ints too, not bools); ValueError naming ``owner`` and ``name`` otherwise:
    the check every integer setting of cynet.tune goes through."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _trial_params(params):
    """A copy of ``params`` for one call of a trial function, nested values (a choice of layer sizes) included.

    A trial that changes a list in place (``params["hidden"].append(10)`` for the output layer) changed the option
    of the :func:`choice` it was drawn from, the record of its own configuration and what every later trial (or
    fold) in this process received; on a process pool, where each trial gets its own unpickled copy, it did not, so
    the same seed gave other trials per executor. A value that cannot be deep-copied is passed as it is.
    """
    fresh = {}
    for name, value in params.items():
        try:
            fresh[name] = copy.deepcopy(value)
        except Exception:       # locks, open files and other values deepcopy refuses: as before
            fresh[name] = value
    return fresh


def _number(owner, name, value):
    if not is_real(value) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return value


class Distribution:
    """Base class of the search-space distributions.

    Subclasses implement ``sample(rng)``, ``grid(n)`` (``n`` representative values), ``narrow(values, margin)``
    (a smaller distribution around ``values``) and ``position(value)`` (where ``value`` lies, 0 at the lower end,
    1 at the upper end, in the distribution's own scale; None for categories).
    """

    numeric = True
    log = False

    def sample(self, rng):
        raise NotImplementedError

    def grid(self, n):
        raise NotImplementedError

    def narrow(self, values, margin):
        raise NotImplementedError

    def position(self, value):
        return None

    def __eq__(self, other):
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self):
        return hash((type(self).__name__, repr(self)))


class _Interval(Distribution):
    """A continuous range [lo, hi], linear or logarithmic."""

    name = "interval"

    def __init__(self, lo, hi):
        owner = self.name
        lo, hi = _number(owner, "lo", lo), _number(owner, "hi", hi)
        if not lo < hi:
            raise ValueError(f"{owner}: need lo < hi, got lo={lo!r}, hi={hi!r}")
        if self.log and lo <= 0:
            raise ValueError(f"{owner}: the bounds must be positive (it samples log(value) uniformly), got "
                             f"lo={lo!r}")
        self.lo, self.hi = float(lo), float(hi)

    def _to(self, value):
        return math.log(value) if self.log else float(value)

    def _from(self, t):
        return math.exp(t) if self.log else float(t)

    def sample(self, rng):
        value = self._from(rng.uniform(self._to(self.lo), self._to(self.hi)))
        return min(max(value, self.lo), self.hi)   # exp(log(hi)) may round just past hi

    def grid(self, n):
        """``n`` evenly spaced values (in log space for :class:`LogUniform`), both ends exactly ``lo`` and ``hi``
        (``n == 1``: the midpoint), all within [lo, hi]."""
        if n == 1:
            return [min(max(self._from(0.5 * (self._to(self.lo) + self._to(self.hi))), self.lo), self.hi)]
        # exp(log(x)) rounds off x (exp(log(1e-5)) is 9.999999999999997e-06): clamp like sample(), ends exact
        values = [min(max(self._from(t), self.lo), self.hi)
                  for t in np.linspace(self._to(self.lo), self._to(self.hi), n)]
        values[0], values[-1] = self.lo, self.hi
        return values

    def position(self, value):
        a, b = self._to(self.lo), self._to(self.hi)
        return (self._to(value) - a) / (b - a)

    def narrow(self, values, margin):
        """The range spanned by ``values``, widened by ``margin`` of this range's width on each side, clipped to it.

        In log space for :class:`LogUniform`. Every value (clipped to this range) lies in the result, ``margin = 0``
        included.
        """
        a, b = self._to(self.lo), self._to(self.hi)
        clipped = [min(max(float(v), self.lo), self.hi) for v in values]      # values outside: their end
        t = [self._to(v) for v in clipped]
        pad = margin * (b - a)
        lo, hi = max(a, min(t) - pad), min(b, max(t) + pad)
        if not lo < hi:    # margin 0 and a single value: keep a sliver around it
            lo, hi = max(a, lo - 1e-6 * (b - a)), min(b, hi + 1e-6 * (b - a))
        # exp(log(v)) may round v up (or down) by an ulp: the range still holds every value
        lo, hi = min(max(self._from(lo), self.lo), min(clipped)), max(min(self._from(hi), self.hi), max(clipped))
        # tidy float noise such as 0.0009999999999999998, unless that would close a narrow range or cut off a value
        # (with margin 0 the ends are the extreme values themselves, which 12 digits round inwards as often as not)
        tidy_lo, tidy_hi = max(float(f"{lo:.12g}"), self.lo), min(float(f"{hi:.12g}"), self.hi)
        if tidy_lo < tidy_hi and tidy_lo <= min(clipped) and tidy_hi >= max(clipped):
            lo, hi = tidy_lo, tidy_hi
        if not lo < hi:
            # the sliver was narrower than the spacing of floats there (margin 0 and one value, stage after stage:
            # 2e-6, 4e-12, then 8e-18 of uniform(0, 1) around 0.565, below its ulp of 1.1e-16): the neighbouring
            # floats, within this range, instead of a range with lo == hi that the constructor refuses
            lo, hi = max(float(np.nextafter(lo, -math.inf)), self.lo), min(float(np.nextafter(hi, math.inf)), self.hi)
        return type(self)(lo, hi)

    def __repr__(self):
        return f"{self.name}({self.lo!r}, {self.hi!r})"


class LogUniform(_Interval):
    """``log(value)`` uniform on [log(lo), log(hi)]: for learning rates and regularisation strengths."""

    name = "loguniform"
    log = True


class Uniform(_Interval):
    """``value`` uniform on [lo, hi]."""

    name = "uniform"


class RandInt(Distribution):
    """An integer uniform on ``lo, lo + 1, ..., hi - 1`` (``hi`` excluded, as ``numpy`` and ``torch.randint``)."""

    def __init__(self, lo, hi):
        for name, value in (("lo", lo), ("hi", hi)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"randint: {name} must be an int, got {value!r}")
        if not lo < hi:
            raise ValueError(f"randint: need lo < hi (hi is excluded), got lo={lo!r}, hi={hi!r}")
        self.lo, self.hi = int(lo), int(hi)

    def sample(self, rng):
        return int(rng.integers(self.lo, self.hi))

    def grid(self, n):
        # as np.linspace(lo, hi - 1, n) rounded, in exact integer arithmetic (floats lose large integers); n = 1:
        # the middle value, as the continuous ranges give their midpoint (it was lo, an edge of the range)
        span = self.hi - 1 - self.lo
        return sorted({self.lo + round(Fraction(i * span, n - 1)) for i in range(n)} if n > 1
                      else {self.lo + round(Fraction(span, 2))})

    def position(self, value):
        if self.hi - self.lo == 1:
            return 0.5
        return (value - self.lo) / (self.hi - 1 - self.lo)

    def narrow(self, values, margin):
        values = [min(max(int(v), self.lo), self.hi - 1) for v in values]     # values outside: their end
        pad = int(math.ceil(margin * (self.hi - 1 - self.lo)))
        lo = max(self.lo, min(values) - pad)
        hi = min(self.hi, max(values) + pad + 1)
        return RandInt(int(lo), int(hi))

    def __repr__(self):
        return f"randint({self.lo}, {self.hi})"


class LogRandInt(RandInt):
    r"""An integer in ``lo, ..., hi - 1`` (``hi`` excluded) whose logarithm is about uniform: ``floor(exp(t))`` with
    ``t`` uniform on ``[log lo, log hi)``, so that :math:`P(k) = \log((k + 1) / k) / \log(hi / lo)` (as Ray Tune's
    ``lograndint``): for sizes that matter by their ratio (hidden units 32 ... 512, batch sizes), where
    :func:`randint` would spend most trials on the large values. Grids, narrowing and edge positions work in log
    scale too."""

    log = True

    def __init__(self, lo, hi):
        if isinstance(lo, (int, np.integer)) and not isinstance(lo, bool) and lo < 1:
            raise ValueError(f"lograndint: lo must be an int >= 1 (it samples log(value)), got lo={lo!r}")
        super().__init__(lo, hi)

    def _flat(self):
        """Whether the range is too narrow for its logarithms (lograndint(2**60, 2**60 + 10): log lo == log(hi - 1)
        in float64, so every draw was lo and edge positions divided by zero): there the log-uniform law is the
        uniform one within 1e-9 of each probability, and the integers are drawn, gridded and placed as randint's."""
        return math.log(self.hi - 1) - math.log(self.lo) < 1e-9 * max(1.0, math.log(self.hi - 1)) \
            and self.hi - self.lo > 1

    def sample(self, rng):
        if self._flat():
            return super().sample(rng)
        value = math.floor(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))
        return int(min(max(value, self.lo), self.hi - 1))     # exp(log(x)) may round past an end

    def grid(self, n):
        """Up to ``n`` distinct integers, log-spaced from ``lo`` to ``hi - 1`` (both included), rounded; ``n = 1``:
        the geometric middle, rounded."""
        if self._flat():
            return super().grid(n)
        a, b = math.log(self.lo), math.log(self.hi - 1)
        points = [0.5 * (a + b)] if n == 1 else np.linspace(a, b, n)
        values = {min(max(round(math.exp(t)), self.lo), self.hi - 1) for t in points}
        if n > 1:
            values |= {self.lo, self.hi - 1}
        return sorted(int(v) for v in values)

    def position(self, value):
        if self.hi - self.lo == 1:
            return 0.5
        if self._flat():
            return super().position(value)
        return (math.log(value) - math.log(self.lo)) / (math.log(self.hi - 1) - math.log(self.lo))

    def narrow(self, values, margin):
        """The integers spanned by ``values``, widened by ``margin`` of this range's width in log scale on each
        side, clipped to this range (every value, clipped to it, included)."""
        if self._flat():
            narrowed = super().narrow(values, margin)
            return LogRandInt(narrowed.lo, narrowed.hi)
        values = [min(max(int(v), self.lo), self.hi - 1) for v in values]     # values outside: their end
        a, b = math.log(self.lo), math.log(self.hi - 1)
        pad = margin * (b - a)
        lo = max(self.lo, min(min(values), math.floor(math.exp(math.log(min(values)) - pad))))
        hi = min(self.hi - 1, max(max(values), math.ceil(math.exp(math.log(max(values)) + pad))))
        return LogRandInt(int(lo), int(hi) + 1)

    def __repr__(self):
        return f"lograndint({self.lo}, {self.hi})"


class Choice(Distribution):
    """One of a list of options, each equally likely (categories: activations, optimisers, widths)."""

    numeric = False

    def __init__(self, options):
        if isinstance(options, (str, bytes, dict)) or not hasattr(options, "__iter__"):
            # choice("relu") drew single letters; choice(5) failed with "'int' object is not iterable"
            raise TypeError(f"choice: options must be a list of candidates, e.g. choice(['relu', 'tanh']), got "
                            f"{options!r}")
        options = list(options)
        if not options:
            raise ValueError("choice: needs at least one option")
        self.options = options

    def sample(self, rng):
        return self.options[int(rng.integers(len(self.options)))]

    def grid(self, n):
        return list(self.options)

    def narrow(self, values, margin):
        """The options among ``values``, in their original order."""
        kept = [option for option in self.options if any(_same(option, v) for v in values)]
        return Choice(kept or self.options)

    def __repr__(self):
        return f"choice({self.options!r})"


def _same(a, b):
    try:
        return bool(a == b)
    except Exception:       # arrays and other odd options
        return a is b


def loguniform(lo, hi):
    """A log-uniform distribution on [lo, hi] (both > 0).

    Args:
        lo (float): lower bound, > 0.
        hi (float): upper bound, > lo.

    Returns:
        LogUniform: the distribution.

    Example:
        >>> from cynet.tune import loguniform
        >>> lr = loguniform(1e-5, 1e-1)
    """
    return LogUniform(lo, hi)


def uniform(lo, hi):
    """A uniform distribution on [lo, hi].

    Args:
        lo (float): lower bound.
        hi (float): upper bound, > lo.

    Returns:
        Uniform: the distribution.

    Example:
        >>> from cynet.tune import uniform
        >>> p = uniform(0.0, 0.5)
    """
    return Uniform(lo, hi)


def randint(lo, hi):
    """A uniform integer in ``[lo, hi)`` (``hi`` excluded).

    Args:
        lo (int): smallest value.
        hi (int): one past the largest value.

    Returns:
        RandInt: the distribution.

    Example:
        >>> from cynet.tune import randint
        >>> layers = randint(1, 4)     # 1, 2 or 3
    """
    return RandInt(lo, hi)


def lograndint(lo, hi):
    """An integer in ``[lo, hi)`` (``hi`` excluded) drawn uniformly in log scale (see :class:`LogRandInt`).

    Args:
        lo (int): smallest value, >= 1.
        hi (int): one past the largest value.

    Returns:
        LogRandInt: the distribution.

    Example:
        >>> import numpy as np
        >>> from cynet.tune import lograndint
        >>> hidden = lograndint(32, 1025)          # 32 ... 1024: as many draws in 32-64 as in 512-1024
        >>> hidden.grid(6)
        [32, 64, 128, 256, 512, 1024]
    """
    return LogRandInt(lo, hi)


def choice(options):
    """One of ``options``, uniformly.

    Args:
        options (sequence): the candidates (at least one).

    Returns:
        Choice: the distribution.

    Example:
        >>> from cynet.tune import choice
        >>> hidden = choice([64, 128, 256])
    """
    return Choice(options)


def _check_space(space):
    if not isinstance(space, dict) or not space:
        raise TypeError(f"tune: a search space must be a non-empty dict {{name: distribution or constant}}, got "
                        f"{space!r}")
    for name in space:
        if not isinstance(name, str):
            raise TypeError(f"tune: hyperparameter names must be strings, got {name!r}")
    return space


def sample_space(space, rng):
    """Draw one configuration: each distribution sampled in the space's key order, constants copied.

    Args:
        space (dict): ``{name: Distribution or constant}``.
        rng (numpy.random.Generator): the random source.

    Returns:
        dict: ``{name: value}``.

    Example:
        >>> import numpy as np
        >>> from cynet.tune import sample_space, uniform
        >>> sample_space({"p": uniform(0, 1), "k": 3}, np.random.default_rng(0))["k"]
        3
    """
    _check_space(space)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_space: rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), got "
                        f"{rng!r}")
    return {name: (dist.sample(rng) if isinstance(dist, Distribution) else dist) for name, dist in space.items()}


def grid_points(space, points):
    """The values a grid search tries for each hyperparameter.

    Args:
        space (dict): ``{name: Distribution or constant}``.
        points (int or dict): values per numeric dimension (log-spaced for :func:`loguniform`), one number for all
            or ``{name: n}``; a :func:`choice` contributes all its options, a constant itself.

    Returns:
        dict: ``{name: list of values}``.
    """
    _check_space(space)
    if isinstance(points, dict) and set(points) - set(space):
        # a misspelt name would otherwise leave its dimension at the default of 3 without a word
        raise ValueError(f"GridSearch: points names {sorted(set(points) - set(space))}, which are not in the space "
                         f"{sorted(space)}")
    out = {}
    for name, dist in space.items():
        n = points.get(name, 3) if isinstance(points, dict) else points
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"GridSearch: points for {name!r} must be an int >= 1, got {n!r}")
        out[name] = dist.grid(int(n)) if isinstance(dist, Distribution) else [dist]
    return out


def narrow_space(space, best_params, margin=0.1):
    """A smaller space around the given configurations (coarse-to-fine).

    Each numeric range becomes the span of the values in ``best_params`` widened by ``margin`` of the old range's
    width on both sides (in log space for :func:`loguniform`) and clipped to the old range; a :func:`choice` keeps
    the options that occur in ``best_params``; constants stay.

    Args:
        space (dict): the current space.
        best_params (list of dict): configurations of the best trials (at least one).
        margin (float): padding as a fraction of the old range's width. Default 0.1.

    Returns:
        dict: the narrowed space.

    Example:
        >>> from cynet.tune import loguniform, narrow_space
        >>> narrow_space({"lr": loguniform(1e-4, 1e0)}, [{"lr": 1e-2}], margin=0.25)["lr"]
        loguniform(0.001, 0.1)
    """
    _check_space(space)
    if isinstance(best_params, dict):     # result.best_params, one configuration, not a list of them
        raise TypeError(f"narrow_space: best_params must be a list of configurations (dicts), got one dict "
                        f"{best_params!r}; pass [best_params]")
    if not best_params:
        raise ValueError("narrow_space: needs at least one configuration to narrow around")
    for params in best_params:
        if not isinstance(params, dict):
            raise TypeError(f"narrow_space: best_params must be a list of configurations (dicts), got an element "
                            f"{params!r}")
        missing = [name for name, dist in space.items() if isinstance(dist, Distribution) and name not in params]
        if missing:
            raise ValueError(f"narrow_space: the configuration {params!r} has no value for {missing} of the space "
                             f"{sorted(space)}")
    if isinstance(margin, bool) or not (isinstance(margin, (int, float, np.integer, np.floating))
                                        and math.isfinite(margin) and 0 <= margin):
        raise ValueError(f"narrow_space: margin must be a number >= 0, got {margin!r}")
    out = {}
    for name, dist in space.items():
        if isinstance(dist, Distribution):
            out[name] = dist.narrow([p[name] for p in best_params], margin)
        else:
            out[name] = dist
    return out


def edge_report(space, params, edge=0.1):
    """The hyperparameters of ``params`` that lie within ``edge`` of an end of their range.

    The position is measured in the distribution's own scale (log scale for :func:`loguniform`), as a fraction of
    the range's width. A best value at an edge means the optimum may lie outside the range searched.

    Args:
        space (dict): the space the values were drawn from.
        params (dict): one configuration (usually the best).
        edge (float): the fraction of the range counted as an edge; 0 turns the check off. Default 0.1.

    Returns:
        list of str: one message per hyperparameter at an edge (empty when none is).

    Example:
        >>> from cynet.tune import loguniform, edge_report
        >>> print(edge_report({"lr": loguniform(1e-4, 1e-1)}, {"lr": 0.09})[0][:60])
        lr=0.09 lies at the upper edge of loguniform(0.0001, 0.1) (p
    """
    _check_space(space)
    if not isinstance(params, dict):
        raise TypeError(f"edge_report: params must be a dict {{name: value}} (one configuration), got {params!r}")
    if not any(isinstance(dist, Distribution) for dist in space.values()) \
            and any(isinstance(value, Distribution) for value in params.values()):
        # edge_report(params, space): every "range" a constant, nothing was ever at an edge
        raise TypeError("edge_report: the arguments are swapped: call edge_report(space, params)")
    if not is_real(edge) or not 0 <= edge < 0.5:
        raise ValueError(f"edge_report: edge must be a number in [0, 0.5), got {edge!r}")
    messages = []
    if not edge > 0:
        return messages
    for name, dist in space.items():
        if not isinstance(dist, Distribution) or not dist.numeric or name not in params:
            continue
        if isinstance(dist, RandInt) and dist.hi - dist.lo <= 2:
            continue    # one or two integers: every value is an edge, nothing to learn
        value = params[name]
        if not is_real(value) or not math.isfinite(value) or (dist.log and value <= 0):
            raise ValueError(f"edge_report: params[{name!r}] must be a finite number"
                             f"{' > 0' if dist.log else ''} drawn from {dist!r}, got {value!r}")
        position = dist.position(params[name])
        scale = "log-range" if dist.log else "range"
        if position <= edge:
            messages.append(f"{name}={params[name]:.4g} lies at the lower edge of {dist!r} (position "
                            f"{position:.2f} of the {scale}): the best value may lie below it; widen the range")
        elif position >= 1 - edge:
            messages.append(f"{name}={params[name]:.4g} lies at the upper edge of {dist!r} (position "
                            f"{position:.2f} of the {scale}): the best value may lie above it; widen the range")
    return messages
