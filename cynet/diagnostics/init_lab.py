r"""The initialisation lab: per-layer activation statistics, and the lecture's 10-layer experiment in numbers.

CS231n ("Training Neural Networks I", *weight initialisation*) feeds a (1000, 500) unit-Gaussian input through 10
layers of 500 units, ``H = f(H @ W)`` without biases, and looks at each layer's activations:

========  ==========================  =====================================================================
init      weight std                  what happens (tanh / ReLU)
========  ==========================  =====================================================================
small     0.01                        std shrinks ~4.5x (ReLU ~6.4x) per layer: collapses towards 0
large     1.0                         tanh: saturated at ±1 (gradients vanish); ReLU: explodes
xavier    :math:`1/\sqrt{fan_{in}}`   tanh: healthy; ReLU: the variance halves per layer (std x ~0.7)
he        :math:`\sqrt{2/fan_{in}}`   ReLU: std stays roughly constant
zeros     0                           every unit of a layer identical, before and after training: no symmetry
                                      breaking
lsuv      from the data               :func:`cynet.init.lsuv_`: orthonormal, then each layer scaled until its
                                      output std on the input is 1: healthy for either nonlinearity
========  ==========================  =====================================================================

:func:`init_experiment` builds that net and turns the numbers into a verdict, by these rules in this order:

- "symmetry never broken": in every layer all units (columns) carry identical activations, and still do after one
  training step ("units identical until the first step" where the step separates them: a single layer, whose output
  units each have their own target);
- "exploding": non-finite activations, the last layer's std above 1000x the first layer's, or growing more than
  2x per layer (geometric mean);
- "saturated at ±1" (tanh) or "saturated at 0 and 1" (sigmoid): more than half of the last layer's units saturated
  (|y| > 0.99 for tanh, y < 0.01 or y > 0.99 for sigmoid);
- "std collapses layer by layer towards 0": last layer's std below 1e-3 x the first's;
- "collapsing": over the second half of the layers the std shrinks by more than 15 % per layer (geometric mean);
- otherwise "healthy".

The two collapse rules read both the std of all values (the lecture's plots) and each layer's signal
(:attr:`LayerStats.unit_std`, every unit's std across the inputs): a sigmoid layer whose units each sit at their own
constant near 0.5 has lost its input although its values still differ from unit to unit.

Example:
    >>> from cynet.diagnostics.init_lab import init_experiment
    >>> result = init_experiment("tanh", "small", width=100, samples=200)
    >>> result.verdict
    'std collapses layer by layer towards 0'
"""
import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from cynet._validation import is_count
from cynet.nn.layers import Linear, Maxout, PReLU, ReLU, Sigmoid, Tanh, _Elementwise
from cynet.nn.module import Module, Sequential

__all__ = ["LayerStats", "InitExperiment", "activation_statistics", "init_experiment", "INIT_SCALES"]

ACTIVATION_TYPES = (_Elementwise, PReLU, Maxout)
INIT_SCALES = ("small", "large", "xavier", "he", "zeros", "lsuv")
EXPLODE_RATIO = 1e3
COLLAPSE_RATIO = 1e-3
SATURATED_MAJORITY = 0.5
COLLAPSING_PER_LAYER = 0.85
EXPLODE_PER_LAYER = 2.0


@dataclass
class LayerStats:
    r"""Statistics of one layer's output over a batch.

    Attributes:
        name (str): the module's dotted name (``named_modules``) or its index in a list of layers.
        kind (str): the module's class name ("ReLU", "Tanh", ...).
        mean (float), std (float): over every value of the output.
        counts (numpy.ndarray): histogram counts, shape (bins,).
        edges (numpy.ndarray): histogram bin edges, shape (bins + 1,), spanning the output's range.
        saturated (float): fraction of saturated values (tanh: |y| > 0.99; sigmoid: y < 0.01 or y > 0.99); NaN for
            other layers.
        dead (float): fraction of units (features along axis 1) never positive in the batch, for ReLU; NaN
            otherwise, and where the output holds NaN or inf.
        shape (tuple): the output's shape.
        unit_std (float): the signal: :math:`\sqrt{\operatorname{mean}_j \operatorname{var}_i y_{ij}}`, each unit's
            (feature's, channel's) variance across the batch (and positions), averaged over the units. Unlike
            ``std`` it leaves out how the units' means differ, so a layer whose units are each constant across the
            inputs (sigmoid's near 0.5) reads 0: the input no longer reaches it. NaN for outputs of fewer than 2
            dimensions.
    """

    name: str
    kind: str
    mean: float
    std: float
    counts: np.ndarray
    edges: np.ndarray
    saturated: float = math.nan
    dead: float = math.nan
    shape: tuple = ()
    unit_std: float = math.nan


def _saturation_mask(module, y):
    if isinstance(module, Tanh):
        return np.abs(y) > 0.99
    if isinstance(module, Sigmoid):
        return (y < 0.01) | (y > 0.99)
    return None


def _unit_active(y):
    """Per unit (axis 1), whether it was positive anywhere in the batch."""
    if y.ndim < 2:
        return np.asarray(y > 0).reshape(1, -1).any(axis=0)
    axes = (0,) + tuple(range(2, y.ndim))
    return np.any(y > 0, axis=axes)


def summarize(name, module, y, bins=50):
    """Per-layer :class:`LayerStats` of the output ``y`` of ``module`` (NumPy reductions in float64).

    Args:
        name (str): the layer's name.
        module (Module or None): the layer (decides saturation and dead-unit statistics).
        y (numpy.ndarray): its output.
        bins (int): histogram bins. Default 50.

    Returns:
        LayerStats: the summary.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> summarize("0", nn.ReLU(), np.array([[0.0, 1.0], [0.0, 3.0]])).dead
        0.5
    """
    y = np.asarray(y)
    finite = np.isfinite(y)
    if finite.all():
        mean = float(np.mean(y, dtype=np.float64))
        std = float(np.std(y, dtype=np.float64))
        lo, hi = (float(y.min()), float(y.max())) if y.size else (0.0, 1.0)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(y, bins=bins, range=(lo, hi))
    else:
        mean = std = math.nan
        counts, edges = np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
    unit_std = math.nan
    if y.ndim >= 2 and y.shape[0] and y.shape[1] and finite.all():
        axes = (0,) + tuple(range(2, y.ndim))
        unit_std = float(np.sqrt(np.mean(np.var(y, axis=axes, dtype=np.float64))))
    mask = _saturation_mask(module, y)
    saturated = float(np.mean(mask)) if mask is not None and y.size else math.nan
    dead = math.nan
    if isinstance(module, ReLU) and y.size and finite.all():     # a NaN unit is not dead (NaN > 0 is False)
        dead = float(np.mean(~_unit_active(y)))
    return LayerStats(str(name), type(module).__name__ if module is not None else "array", mean, std, counts,
                      edges, saturated, dead, tuple(y.shape), unit_std)


def monitored_layers(model):
    """``(name, module)`` of the activation modules of ``model`` (every leaf module when it has none)."""
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)]
    if named:
        return named
    return [(name, m) for name, m in model.named_modules() if not m._modules and name]


_NO_FORWARD = object()      # recording: the module had no instance forward of its own


@contextlib.contextmanager
def recording(named_modules, sink):
    """Within the block, every forward of the given modules appends ``(name, module, output)`` to ``sink``.

    The output is copied when recorded: a later in-place module (``Dropout(inplace=True)``) would otherwise change
    it before it is read. The wrapper is an instance attribute shadowing the module's ``forward``; on exit (also on
    error) it stops recording and the module's ``forward`` is put back as it was: the class's, a user's instance
    override, or the wrapper of an enclosing recording still open (which so keeps recording).
    """
    active = [True]
    wrapped = []
    try:
        for name, module in named_modules:
            original = module.forward

            def forward(*args, _original=original, _name=name, _module=module, **kwargs):
                out = _original(*args, **kwargs)
                if active[0]:
                    sink.append((_name, _module, np.array(out, copy=True) if isinstance(out, np.ndarray) else out))
                return out

            forward._recording = (active, module.__dict__.get("forward", _NO_FORWARD))
            object.__setattr__(module, "forward", forward)
            wrapped.append(module)
        yield sink
    finally:
        active[0] = False
        for module in wrapped:
            # drop the closed recordings' wrappers from the top (one left below an open one just passes through)
            own = module.__dict__.get("forward", _NO_FORWARD)
            while getattr(own, "_recording", None) is not None and not own._recording[0][0]:
                own = own._recording[1]
            if own is _NO_FORWARD:
                module.__dict__.pop("forward", None)
            else:
                object.__setattr__(module, "forward", own)


def activation_statistics(model_or_layers, x, *, bins=50):
    """Per-layer mean, std and histogram of the activations of one forward pass of ``x``.

    A model records the output of each activation module (ReLU, Tanh, Sigmoid, ..., PReLU, Maxout) or, when it has
    none, of each leaf module; a list of modules is applied in order and records every layer's output. The model's
    own ``forward`` runs, in its current train/eval mode: in training mode a BatchNorm updates its running statistics
    and Dropout draws masks (from the global generator unless it has its own), as in any training forward; call
    ``model.eval()`` first to look at the inference-time network.

    Args:
        model_or_layers (Module or sequence of Module): the network, or its layers in order.
        x (numpy.ndarray): the input batch (the parameters' dtype).
        bins (int): histogram bins per layer. Default 50.

    Returns:
        list[LayerStats]: one entry per recorded layer, in forward order.

    Raises:
        TypeError: neither a Module nor a sequence of Modules.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 20), nn.Tanh())
        >>> stats = activation_statistics(model, np.ones((4, 10), np.float32))
        >>> [s.name for s in stats]
        ['1', '3']
    """
    if isinstance(model_or_layers, Module):
        sink = []
        with recording(monitored_layers(model_or_layers), sink):
            model_or_layers(x)
        return [summarize(name, module, y, bins) for name, module, y in sink]
    try:
        layers = list(model_or_layers)
    except TypeError:
        layers = []
    if not layers or not all(isinstance(m, Module) for m in layers):
        raise TypeError("activation_statistics: expected a cynet.nn.Module or a non-empty sequence of Modules")
    stats = []
    for index, layer in enumerate(layers):
        x = layer(x)
        stats.append(summarize(str(index), layer, x, bins))
    return stats


@dataclass
class InitExperiment:
    """The outcome of :func:`init_experiment`.

    Attributes:
        nonlinearity (str), init (str): the settings.
        weight_std (float): the std the weights were drawn with.
        stats (list[LayerStats]): per layer, after the nonlinearity.
        verdict (str): one of "healthy", "collapsing", "std collapses layer by layer towards 0",
            "saturated at ±1" (sigmoid: at 0 and 1), "exploding", "symmetry never broken", "units identical until
            the first step".
        identical_units (list[bool]): per layer, whether all units carry identical activations.
        symmetric_after_step (bool): whether, after one SGD step, all units of every hidden layer still share the
            same weights (the output layer's differ: each output unit has its own target); for a single layer,
            whether its own units still do (a zero-initialised ReLU layer gets no gradient and never separates).
    """

    nonlinearity: str
    init: str
    weight_std: float
    stats: list = field(default_factory=list)
    verdict: str = ""
    identical_units: list = field(default_factory=list)
    symmetric_after_step: bool = False

    @property
    def stds(self):
        return np.array([s.std for s in self.stats])

    @property
    def unit_stds(self):
        """Per layer, the signal's std (:attr:`LayerStats.unit_std`): what the verdict's collapse rules read beside
        :attr:`stds` (the explosion rule reads :attr:`stds` alone)."""
        return np.array([s.unit_std for s in self.stats])

    @property
    def means(self):
        return np.array([s.mean for s in self.stats])

    def __str__(self):
        head = f"{self.nonlinearity} / {self.init} (weight std {self.weight_std:.4g}): {self.verdict}"
        lines = [head, "layer        mean         std  signal std   saturated   dead units"]
        for index, s in enumerate(self.stats, 1):
            sat = "" if math.isnan(s.saturated) else f"{s.saturated:.1%}"
            dead = "" if math.isnan(s.dead) else f"{s.dead:.1%}"
            lines.append(f"{index:5d} {s.mean:11.3g} {s.std:11.3g} {s.unit_std:11.3g} {sat:>11} {dead:>12}")
        return "\n".join(lines)


def _weight_std(init, fan_in):
    if init in ("small", "lsuv"):       # lsuv: a small draw, then lsuv_ sets each layer from the data
        return 0.01
    if init == "large":
        return 1.0
    if init == "xavier":
        return 1.0 / math.sqrt(fan_in)
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    return 0.0


def _shrinks(stds):
    """(collapsed, collapsing): the last std below COLLAPSE_RATIO x the first; the second half shrinking faster than
    COLLAPSING_PER_LAYER per layer (geometric mean)."""
    first, last = stds[0], stds[-1]
    collapsed = bool(last < COLLAPSE_RATIO * first)
    half = stds[len(stds) // 2:]
    collapsing = bool(len(half) >= 2 and half[0] > 0
                      and (half[-1] / half[0]) ** (1.0 / (len(half) - 1)) < COLLAPSING_PER_LAYER)
    return collapsed, collapsing


def _verdict(result):
    stds = result.stds
    if result.identical_units and all(result.identical_units):
        # identical units part at the first step where a gradient reaches them (a single layer's units get
        # different targets), and never where none does (zero weights before a ReLU): symmetric_after_step says which
        return "symmetry never broken" if result.symmetric_after_step else "units identical until the first step"
    if not np.all(np.isfinite(stds)):
        return "exploding"
    first, last = stds[0], stds[-1]
    growth = (last / first) ** (1.0 / (len(stds) - 1)) if first > 0 and len(stds) > 1 else 1.0
    if first > 0 and (last > EXPLODE_RATIO * first or growth > EXPLODE_PER_LAYER):
        return "exploding"
    if result.nonlinearity in ("tanh", "sigmoid") and result.stats[-1].saturated > SATURATED_MAJORITY:
        return "saturated at ±1" if result.nonlinearity == "tanh" else "saturated at 0 and 1"
    # the spread of all values (the lecture's plots), and the signal (each unit across the inputs): sigmoid's units
    # each sit at their own constant near 0.5 while the signal is gone, which only the second shows
    spread, signal = _shrinks(stds), _shrinks(result.unit_stds)
    if spread[0] or signal[0]:
        return "std collapses layer by layer towards 0"
    if spread[1] or signal[1]:
        return "collapsing"
    return "healthy"


def init_experiment(nonlinearity="tanh", init="xavier", layers=10, width=500, samples=1000, seed=0):
    r"""The lecture's experiment: a deep net on unit-Gaussian data, one weight scale, statistics per layer.

    ``layers`` bias-free Linear layers of ``width`` units, each followed by the nonlinearity, on a
    ``(samples, width)`` standard normal input (float64); weights normal with std 0.01 ("small"), 1.0 ("large"),
    :math:`1/\sqrt{fan_{in}}` ("xavier", as in the lecture), :math:`\sqrt{2/fan_{in}}` ("he") or 0 ("zeros"), or
    drawn small and then set by :func:`cynet.init.lsuv_` on the input itself ("lsuv"; ``weight_std`` is then the
    first layer's).
    After recording the activations it takes one SGD step (lr 0.1) on a mean-squared loss against a random target
    and checks whether every layer's units still share the same weights. The verdict rules are in
    :mod:`cynet.diagnostics.init_lab`.

    Args:
        nonlinearity (str): "tanh" (default), "relu" or "sigmoid".
        init (str): "small", "large", "xavier" (default), "he", "zeros" or "lsuv".
        layers (int): depth. Default 10.
        width (int): units per layer (and input features). Default 500.
        samples (int): input rows. Default 1000.
        seed (int): seeds the input, the weights and the target. Default 0.

    Returns:
        InitExperiment: per-layer statistics, the verdict and the symmetry findings; ``print`` shows a table.

    Raises:
        ValueError: unknown nonlinearity or init, sizes below 1, or a seed that is not a non-negative int.

    Example:
        >>> r = init_experiment("relu", "he", width=200, samples=300)
        >>> r.verdict
        'healthy'
    """
    activations = {"tanh": Tanh, "relu": ReLU, "sigmoid": Sigmoid}
    if nonlinearity not in activations:
        raise ValueError(f"init_experiment: nonlinearity must be 'tanh', 'relu' or 'sigmoid', got {nonlinearity!r}")
    if init not in INIT_SCALES:
        raise ValueError(f"init_experiment: init must be one of {', '.join(INIT_SCALES)}, got {init!r}")
    for name, value in (("layers", layers), ("width", width), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"init_experiment: {name} must be a positive int, got {value!r}")
    if not is_count(seed):
        # default_rng(None) would draw fresh entropy: another experiment on every call
        raise ValueError(f"init_experiment: seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, width))
    std = _weight_std(init, width)
    modules = []
    for _ in range(layers):
        linear = Linear(width, width, bias=False, init="zeros", dtype=np.float64)
        linear.weight.data[...] = rng.standard_normal((width, width)) * std
        modules += [linear, activations[nonlinearity]()]
    net = Sequential(*modules)
    if init == "lsuv":
        from cynet.init import lsuv_

        lsuv_(net, x, generator=rng)
        std = float(np.std(modules[0].weight.data))
    result = InitExperiment(nonlinearity, init, std)
    sink = []
    with recording([(str(i // 2 + 1), m) for i, m in enumerate(modules) if i % 2 == 1], sink):
        out = net(x)
    result.stats = [summarize(name, module, y) for name, module, y in sink]
    result.identical_units = [bool(y.size and np.all(y == y[:, :1])) for _, _, y in sink]
    # one SGD step on 0.5 * mean squared error against a random target
    target = rng.standard_normal(out.shape)
    net.zero_grad()
    net.backward((out - target) / out.shape[0], input_grad=False)
    for param in net.parameters():
        param.data -= 0.1 * param.grad
    # the hidden layers: the output layer's units get different targets, so its rows part from the first step on
    # where a gradient reaches them; a single layer is its own output layer and is read itself (ReLU at 0 passes no
    # gradient: its zero weights do not move and its units stay identical)
    hidden = modules[::2][:-1] or modules[:1]
    result.symmetric_after_step = all(bool(np.all(m.weight.data == m.weight.data[:1])) for m in hidden)
    result.verdict = _verdict(result)
    return result
