"""Parameters, the module base class and :class:`Sequential`: the CS231n layer contract in PyTorch's clothes.

A module's ``forward(x)`` (also ``module(x)``) returns its output and caches what its backward needs;
``backward(dout)`` returns dx and *adds* each parameter's gradient into ``param.grad``. There is no autograd: a
model is a chain of modules and the backward pass runs the chain in reverse.

``backward(dout, input_grad=False)`` skips dx (returns ``None``): the first layer of a network never needs it, and
for a Linear layer it is a whole matrix product per batch. :class:`Sequential` asks only its first child to skip it.
A module of your own may write the CS231n form ``backward(self, dout)``: it is then called without ``input_grad``
and its dx dropped where none is wanted.

In-place activations (``nn.ReLU(inplace=True)``, ...) write their output into their input array. Without autograd's
version counters, :class:`Sequential` checks each of them before it runs: its input must not be (a view of) an array
that an earlier module keeps for its backward (a Sigmoid's output, say), nor the caller's own input.

Outputs and input gradients of 4 MiB or more come from one pool of arrays handed out before, each only once nothing
else refers to it any more (:mod:`cynet.nn._reuse`: fresh large arrays cost their page faults every pass); an array a
caller holds is never overwritten.
"""
import contextlib
import contextvars
import copy
import functools
import inspect
import numbers
import threading
import types
import warnings
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from cynet._validation import describe, refuse_masked, switched_off


NO_NONE_GRAD = ("a gradient is a buffer of the parameter's shape, never None; zero_grad() resets it. In PyTorch a "
                "None gradient also makes the optimiser skip the parameter, while here a parameter that gets no new "
                "gradient still moves by its momentum and weight decay: set requires_grad=False to keep it still")
"""Why cynet has no ``grad = None`` / ``zero_grad(set_to_none=True)``, for the errors that refuse them."""


_train_walk = threading.local()      # Module.train's modules on the way down, per thread (cycles end there)
# _evaluation_mode's open blocks: id of the model -> [blocks open on it, in any thread; the modes to restore]
_evaluating = {}
_evaluating_lock = threading.Lock()


@contextlib.contextmanager
def _evaluation_mode(model):
    """Evaluation mode for the block, for the tools that evaluate a model on the side (:meth:`cynet.Trainer.predict`,
    :meth:`~cynet.Trainer.evaluate`, :class:`cynet.ensemble.Ensemble`): the first block opened on ``model`` saves every
    module's mode and switches to evaluation, the last one to close, in whichever Python thread, restores them. (A
    block per thread, each restoring what it saw, let the first to close put a model in training mode back while
    another thread's prediction was still running: that one then used batch statistics, updated the running ones and
    dropped units, and the model was left in evaluation mode afterwards.)"""
    with _evaluating_lock:
        entry = _evaluating.get(id(model))
        if entry is None:
            entry = _evaluating[id(model)] = [0, [(module, module.training) for module in model.modules()]]
            model.eval()
        entry[0] += 1
    try:
        yield model
    finally:
        with _evaluating_lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _evaluating[id(model)]
                for module, mode in entry[1]:
                    object.__setattr__(module, "training", mode)


def _loadable(array, dtype):
    """Whether ``array`` can be loaded into an array of ``dtype`` (:meth:`Module.load_state_dict`'s rule, also
    checked by :func:`cynet.checkpoint.load_trainer` before anything loads): numbers, and no NaN or inf for an
    integer buffer."""
    return array.dtype.kind in "biuf" and not (np.dtype(dtype).kind in "iu" and array.dtype.kind == "f"
                                                 and not np.all(np.isfinite(array)))


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = """What :meth:`Module.load_state_dict` returns: ``(missing_keys, unexpected_keys)``, a tuple
whose fields also have PyTorch's names (``result.missing_keys``, ``result.unexpected_keys``)."""


def _refuse_set_to_none(owner, set_to_none):
    if set_to_none:
        raise ValueError(f"{owner}: set_to_none=True is not supported ({NO_NONE_GRAD})")


class Parameter:
    """A learnable array and its gradient.

    ``data`` is a float array (C-contiguous as created; the kernels and optimisers refuse other layouts with a clear
    error); ``grad`` has its shape and dtype and accumulates over backward passes
    until :meth:`zero_grad`. ``requires_grad=False`` freezes it: modules compute no gradient for it and optimisers
    leave it unchanged.

    Zeroing is lazy: :meth:`zero_grad` only flags the gradient buffer as zero, and the first module to contribute
    afterwards (through :meth:`grad_target` or :meth:`accumulate`) overwrites the buffer instead of adding to it, so a
    Linear layer writes its weight gradient straight into it with one matrix product (no zero-fill pass, no
    temporary). Reading :attr:`grad` while the buffer is flagged zero-fills it and clears the flag, so anything
    written through the returned array (``p.grad[...] += g``) is kept.

    Args:
        data (array_like): initial value (copied), float32 or float64.
        requires_grad (bool): whether it learns. Default True.

    Example:
        >>> import numpy as np
        >>> from cynet.nn import Parameter
        >>> p = Parameter(np.ones((2, 3), np.float32))
        >>> float(p.grad.sum())
        0.0
        >>> p.grad[...] += 2.0      # the buffer itself: writes through it are kept
        >>> float(p.grad.sum())
        12.0
    """

    __slots__ = ("_data", "_grad", "_grad_is_zero", "requires_grad")

    def __init__(self, data, requires_grad=True):
        self._grad = None
        self.data = np.array(data, copy=True, order="C")
        self.requires_grad = bool(requires_grad)

    @property
    def data(self):
        """The array itself. Assigning another array (``p.data = w``) keeps it as it is; when its shape or dtype
        differs from the old one's, the gradient becomes a zero buffer of the new shape and dtype (every module and
        optimiser writes the gradient by the data's size)."""
        return self._data

    @data.setter
    def data(self, value):
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        if value.dtype.kind != "f":
            raise TypeError(f"Parameter: data must be floating point, got {describe(value)}")
        self._data = value
        if self._grad is None or self._grad.shape != value.shape or self._grad.dtype != value.dtype:
            self._grad = np.zeros(value.shape, value.dtype)
            self._grad_is_zero = True

    def _cast(self, dtype):
        """Data and gradient in ``dtype`` (Module.to), the gradient's values and its zero flag kept."""
        grad, is_zero = self._grad.astype(dtype), self._grad_is_zero
        self.data = self._data.astype(dtype)
        self._grad, self._grad_is_zero = grad, is_zero

    @property
    def grad(self):
        """The accumulated gradient (same shape and dtype as ``data``): the buffer itself, not a copy.

        After :meth:`zero_grad` the first read zero-fills the buffer and counts as a write (the buffer is no longer
        flagged zero), so in-place updates of the returned array are kept and later contributions add to them.
        """
        if self._grad_is_zero:
            self._grad.fill(0)
            self._grad_is_zero = False
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is None:
            raise TypeError(f"Parameter: grad cannot be None in cynet ({NO_NONE_GRAD})")
        value = np.asarray(value)
        if value.shape != self.data.shape:
            raise ValueError(f"Parameter: grad must have shape {self.data.shape}, got {describe(value)}")
        self._grad[...] = value
        self._grad_is_zero = False

    def zero_grad(self, set_to_none=False):
        """Reset the gradient to zero, lazily: no memory is written; the next contribution overwrites the buffer
        instead of adding to it, and the next read of :attr:`grad` zero-fills it. ``set_to_none=True`` (PyTorch's)
        is refused: see :data:`NO_NONE_GRAD`."""
        _refuse_set_to_none("Parameter.zero_grad", set_to_none)
        self._grad_is_zero = True

    def grad_target(self):
        """``(buffer, fresh)`` for a module about to contribute a gradient.

        When ``fresh`` is True the buffer holds stale values and the caller must *overwrite* all of it (for example
        ``np.matmul(a, b, out=buffer)``: no zero-fill, no extra pass); otherwise it must *add* into it.
        """
        fresh = self._grad_is_zero
        self._grad_is_zero = False
        return self._grad, fresh

    def accumulate(self, value):
        """Add ``value`` into the gradient (overwrite when it is still zero)."""
        buffer, fresh = self.grad_target()
        if fresh:
            np.copyto(buffer, value)
        else:
            buffer += value

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def numel(self):
        """The number of entries (PyTorch's ``numel()``; ``size`` is that number too, not torch's shape method)."""
        return self.data.size

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


# Replaced whenever a child module is assigned or removed anywhere: a Sequential checks its layers again for a module
# used twice (_first_repeat) before its next forward when the token it last checked against is not this one (an
# object, not a count: a model unpickled in another process, or deep-copied, is checked again once).
_STRUCTURE_TOKEN = [object()]


def _structure_changed():
    _STRUCTURE_TOKEN[0] = object()


def _first_repeat(container, layers):
    """``(name, earlier name, module)`` for the first module found in two of ``layers`` (``(name, module)`` pairs),
    in one and inside another, or equal to ``container``; None when there is none. Within one layer a module may
    appear under two names (a custom module's alias of its own part): that layer runs it once."""
    seen = {id(container): "the Sequential itself"}
    for name, layer in layers:
        mine = {}
        for inner_name, inner in layer.named_modules(name):      # each module of this layer once
            if id(inner) in seen:
                return inner_name, seen[id(inner)], inner
            mine[id(inner)] = f"layer {inner_name!r}"
        seen.update(mine)
    return None


# --- forward passes, for the check against an instance run twice in one pass ---------------------------------------
# A pass is one outermost module forward (no other module forward running on this thread) with every module forward it
# makes, and has a token of its own (a fresh object: a record copied or unpickled never matches a live pass). Each
# module records (token, runs in that pass) when its forward starts; while the instance is running on this thread, a
# parent class's forward reached through super() the first time is part of that run, and the same wrapper entered again
# (a forward calling itself) or a parent's entered a second time (super().forward() twice) counts as another run. The
# record says whether the module ran more than once in the latest pass it took part in. A forward that raises is no
# run. Costs about 1 us per module forward.
_forwards_running = threading.local()     # .modules: {id of a running module: {id of a wrapper: entries}}; .token


def _record_run(module):
    """Count one run of ``module`` in the pass running on this thread (a forward, or a ReLU that a Sequential fused
    into the module before it, whose forward does not run)."""
    token = _forwards_running.token
    last, runs = module.__dict__.get("_pass_runs", (None, 0))
    module.__dict__["_pass_runs"] = (token, runs + 1 if last is token else 1)


def _recording_passes(forward, declined_is_no_run=False):
    """``forward`` recording its runs; with ``declined_is_no_run`` (forward_relu) a call that returns None, declining
    the fused pass (eval mode, a frozen batch norm: the caller then runs forward and the ReLU), is no run."""
    def restore(module, before):
        if before is None:
            module.__dict__.pop("_pass_runs", None)
        else:
            module.__dict__["_pass_runs"] = before

    @functools.wraps(forward)
    def recorded_forward(self, *args, **kwargs):
        running = getattr(_forwards_running, "modules", None)
        if running is None:
            running = _forwards_running.modules = {}
        if not running:
            _forwards_running.token = object()
        key, me = id(self), id(recorded_forward)
        entered = running.get(key)
        if entered is not None:
            # the instance is running already: a parent class's forward reached through super() is part of that run
            # the first time; the same wrapper entered again (a forward calling itself) or a parent's entered twice
            # (super().forward() called twice) is another run of the instance, whose cache keeps only the last
            if entered.get(me, 0):
                _record_run(self)
            entered[me] = entered.get(me, 0) + 1
            return forward(self, *args, **kwargs)
        before = self.__dict__.get("_pass_runs")
        _record_run(self)
        running[key] = {me: 1}
        try:
            result = forward(self, *args, **kwargs)
        except BaseException:
            restore(self, before)       # a forward that raised (a dtype refused) is no run: a retry may follow
            raise
        finally:
            running.pop(key, None)
        if result is None and declined_is_no_run:
            restore(self, before)
        return result

    recorded_forward._cynet_pass_wrapper = True
    return recorded_forward


def _takes_input_grad(function):
    """Whether ``function`` accepts the keyword ``input_grad`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "input_grad" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _refusing_a_reused_instance(backward):
    # a CS231n-style backward(self, dout) without input_grad: called without it (a container passes it to every
    # module, which failed with Python's "unexpected keyword argument 'input_grad'"), its dx dropped when not wanted
    takes_input_grad = _takes_input_grad(backward)

    @functools.wraps(backward)
    def checked_backward(self, *args, **kwargs):
        if not takes_input_grad and "input_grad" in kwargs:
            wanted = kwargs.pop("input_grad")
            dx = checked_backward(self, *args, **kwargs)
            return dx if wanted else None
        runs = self.__dict__.get("_pass_runs", (0, 0))[1]
        if runs > 1:
            raise RuntimeError(
                f"{type(self).__name__}: backward of an instance that ran {runs} times in one forward pass (the "
                f"outermost forward call and every module forward it makes; {self!r}): a module keeps only its latest "
                f"run's values for its backward, so the gradients of the earlier runs would be wrong (PyTorch's "
                f"autograd records every call; cynet does not). Create one instance per use (self.relu1, "
                f"self.relu2); for one layer with its weights at two places, a tied twin: module.shared_copy(); "
                f"runs that need no backward (a target, statistics, an initialisation) belong outside the forward "
                f"pass or on a copy (copy.deepcopy(module))")
        return backward(self, *args, **kwargs)

    checked_backward._cynet_pass_wrapper = True
    return checked_backward


def _checking_base_init(init):
    """A subclass's ``__init__`` followed by a TypeError when it never ran ``Module.__init__`` (a forgotten
    ``super().__init__()`` that assigned nothing, which Module.__setattr__ would have caught): the module otherwise
    failed later with "object has no attribute '_parameters'" from parameters(), repr or a Sequential."""
    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if "_parameters" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}.__init__ did not call super().__init__(): a module's __init__ must "
                            f"call it first, to set up its parameters, buffers and child modules")

    checked_init._cynet_init_check = True
    return checked_init


def _fusable(cls):
    """Class decorator: record the forward and backward that a fused pass stands for (Sequential._fused_relu fuses
    only while the class still has them: a method patched on the class afterwards, for logging or an experiment,
    turns the fusion off)."""
    cls._fusion_methods = (cls.forward, cls.backward)
    return cls


class Module:
    """Base class of every layer, activation, loss and container.

    Subclasses set parameters (:class:`Parameter`), buffers (:meth:`register_buffer`, e.g. running statistics) and
    child modules as attributes; they are found by name, in assignment order. Subclasses implement
    ``forward(x)`` and ``backward(dout, *, input_grad=True)``.

    A module keeps what its backward needs from its latest forward (the input, the output, a mask), one pass at a
    time: an instance must run at most once per forward pass that is followed by a backward. (PyTorch's autograd
    records every call; here a second call would overwrite the first one's values and its backward would give wrong
    gradients.) :class:`Sequential` refuses to hold an instance twice; to share weights between two layers, give
    them the same :class:`Parameter` (``second.weight = first.weight``). Elsewhere (a custom module whose forward
    calls one ``self.relu`` in two places) the instance's backward raises a RuntimeError: a forward pass is one
    outermost ``forward`` call with every module forward it makes, and a module that ran twice in the latest pass it
    took part in refuses its backward. Forwards with no backward (evaluation) never raise; modules called one by one
    at the top level are a pass each.

    Threads: several Python threads may evaluate one model at once (``Trainer.predict`` / ``evaluate``, an
    :class:`~cynet.ensemble.Ensemble`: evaluation mode is held until the last of them ends, and each forward computes
    its own output), or train models of their own. Training one model from two threads at once is not supported:
    each module keeps only its latest forward's values, so the backwards would mix the two passes.

    Example:
        >>> import numpy as np, cynet
        >>> from cynet import nn
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> [name for name, _ in model.named_parameters()]
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """

    def __init_subclass__(cls, **kwargs):
        """Wrap the subclass's own ``forward`` / ``forward_relu`` in the record of forward passes and its own
        ``backward`` in the check against a second run in one pass (see the class docstring)."""
        super().__init_subclass__(**kwargs)
        for name, wrap in (("forward", _recording_passes),
                           ("forward_relu", functools.partial(_recording_passes, declined_is_no_run=True)),
                           ("backward", _refusing_a_reused_instance)):
            # the class's own method, or one it inherits from a class that is not a Module (a mixin's)
            owner = next((klass for klass in cls.__mro__ if name in vars(klass)), None)
            if owner is None or (owner is not cls and issubclass(owner, Module)):
                continue
            method = vars(owner)[name]
            if isinstance(method, types.FunctionType) and not getattr(method, "_cynet_pass_wrapper", False):
                setattr(cls, name, wrap(method))
        init = vars(cls).get("__init__")
        if isinstance(init, types.FunctionType) and not getattr(init, "_cynet_init_check", False):
            cls.__init__ = _checking_base_init(init)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_unset_buffers", set())   # buffer names set to None: an array assigned there is one
        object.__setattr__(self, "training", True)

    # --- registration ------------------------------------------------------------------------------------------------
    def __setattr__(self, name, value):
        """PyTorch's registration rules: a Parameter or a Module assigned is registered, in the place of the one it
        replaces (the order of a Sequential's layers and of ``parameters()`` stays); an array assigned to a buffer's
        name replaces the buffer and stays one (``self.running_mean = 0.9 * self.running_mean + ...``); None
        unregisters (a buffer's name set to None takes an array as a buffer again, as in PyTorch, at the end of the
        order); anything else on a parameter's or buffer's name is a TypeError, not a silent unregistering."""
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        parameters, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, (Parameter, Module)):
            self.__dict__.get("_unset_buffers", set()).discard(name)
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            if modules.pop(name, None) is not None:
                _structure_changed()
            parameters[name] = value                    # an existing key keeps its place
        elif isinstance(value, Module):
            parameters.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
            _structure_changed()
        elif value is None:
            parameters.pop(name, None)
            if buffers.pop(name, None) is not None:
                self.__dict__.get("_unset_buffers", set()).add(name)
            if modules.pop(name, None) is not None:
                _structure_changed()
        elif name in parameters:
            raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to parameter {name!r} (a "
                            f"cynet.nn.Parameter or None expected; to change its values, write into "
                            f"{name}.data[...])")
        elif name in buffers or name in self.__dict__.get("_unset_buffers", ()):
            if isinstance(value, np.generic):       # arithmetic on a 0-d buffer gives a NumPy scalar
                value = np.asarray(value)
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to buffer {name!r} (a "
                                f"numpy array or None expected)")
            self.__dict__.get("_unset_buffers", set()).discard(name)
            buffers[name] = value
        elif name in modules:
            raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to child module {name!r} "
                            f"(a Module or None expected)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if self._modules.pop(name, None) is not None:
            _structure_changed()
        for registry in (self._parameters, self._buffers):
            registry.pop(name, None)
        self.__dict__.get("_unset_buffers", set()).discard(name)
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """Register a non-learnable array saved in :meth:`state_dict` (running statistics, for example), of the shape
        given (a 0-d counter stays 0-d). As in PyTorch, the name must be a non-empty string without "." that is not
        already an attribute other than a buffer (KeyError: a parameter's, a child module's, ``training``,
        ``forward``, ...); a buffer's name set to None may be registered again, as there."""
        where = f"{type(self).__name__}.register_buffer"
        if not isinstance(name, str):
            raise TypeError(f"{where}: the name must be a string, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{where}: the name must be non-empty and hold no '.', got {name!r}")
        if name in self._parameters or name in self._modules:
            kind = "parameter" if name in self._parameters else "child module"
            raise KeyError(f"{where}: {name!r} is already a {kind}")
        # a buffer set to None is still a buffer (PyTorch keeps the name registered): it may be registered again
        if name not in self._buffers and name not in self.__dict__.get("_unset_buffers", ()) and hasattr(self, name):
            raise KeyError(f"{where}: {name!r} is already an attribute of {type(self).__name__}")
        if array is None:
            raise TypeError(f"{where}: the buffer must be an array, got None (to drop a buffer, assign None to it)")
        array = np.asarray(array)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)       # (np.ascontiguousarray alone makes a 0-d array 1-d)
        object.__setattr__(self, name, array)
        self.__dict__.get("_unset_buffers", set()).discard(name)
        self._buffers[name] = array
        return array

    def _set_buffer(self, name, array):
        """Replace a buffer's array (keeping it registered)."""
        object.__setattr__(self, name, array)
        self._buffers[name] = array

    # --- traversal ---------------------------------------------------------------------------------------------------
    def children(self):
        """The direct child modules, each once (one instance under two names is listed under the first)."""
        for _, child in self.named_children():
            yield child

    def named_children(self):
        """``(name, module)`` for each direct child, each instance once, as in PyTorch."""
        seen = set()
        for name, child in self._modules.items():
            if id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def named_modules(self, prefix=""):
        """``(name, module)`` for this module and every descendant, depth first.

        A module reachable along several paths (one instance assigned to two attributes) is listed once, under the
        first name met, as in PyTorch.
        """
        return self._named_modules(prefix, set())

    def _named_modules(self, prefix, seen):
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child._named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def apply(self, fn):
        """Call ``fn(module)`` on every child (recursively, each child's own children first), then on this module;
        returns this module. The PyTorch idiom for a custom initialisation.

        Example:
            >>> import numpy as np, cynet
            >>> from cynet import nn
            >>> def init_weights(m):
            ...     if isinstance(m, nn.Linear):
            ...         cynet.init.xavier_uniform_(m.weight, generator=0)
            ...         cynet.init.zeros_(m.bias)
            >>> model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).apply(init_weights)
            >>> float(np.abs(model[2].bias.data).max())
            0.0
        """
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix=""):
        """``(dotted name, Parameter)`` for every parameter, in registration order.

        Tied weights (one :class:`Parameter` registered in several modules) are listed once, under the first name
        met, as in PyTorch: an optimiser then updates them once per step, with the gradient that every use added into
        the shared ``grad``; :meth:`state_dict` stores them under that name only.
        """
        seen = set()
        for name, module in self.named_modules(prefix):
            for pname, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{name}.{pname}" if name else pname), param

    def parameters(self):
        """Every :class:`Parameter` of the module and its descendants (frozen ones included), each once."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        """``(dotted name, array)`` for every buffer, in registration order; a shared array is listed once."""
        seen = set()
        for name, module in self.named_modules(prefix):
            for bname, buf in module._buffers.items():
                if id(buf) not in seen:
                    seen.add(id(buf))
                    yield (f"{name}.{bname}" if name else bname), buf

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    # --- modes, gradients, freezing ----------------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active, batch statistics) for this module and its descendants; returns self.

        Each child's own ``train`` is called (as in PyTorch), so a module that overrides it, to keep a frozen
        backbone's batch norms in eval mode for example, is obeyed when a parent is switched. ``mode`` must be a
        bool, as in PyTorch (``train("False")`` or ``train(0)`` is a TypeError, not a truthiness guess)."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.train: mode must be True or False, got {mode!r}")
        walking = getattr(_train_walk, "ids", None)     # the modules whose train() is running in this thread
        if walking is None:
            walking = _train_walk.ids = set()
        entered = id(self) not in walking
        walking.add(id(self))
        try:
            object.__setattr__(self, "training", bool(mode))
            for child in self.children():
                if id(child) not in walking:            # a child that holds one of its ancestors: no endless loop
                    child.train(mode)
        finally:
            if entered:
                walking.discard(id(self))
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    @contextlib.contextmanager
    def modes_restored(self):
        """Within the block, switch this module and its descendants between training and evaluation freely: each
        module's own mode comes back on exit, also on error (the tools that evaluate a model on the side use it).

        Example:
            >>> from cynet import nn
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
            >>> with model.modes_restored():
            ...     _ = model.eval()
            >>> model.training, model[1].training
            (True, True)
        """
        modes = [(module, module.training) for module in self.modules()]
        try:
            yield self
        finally:
            for module, mode in modes:
                object.__setattr__(module, "training", mode)

    def zero_grad(self, set_to_none=False):
        """Reset every parameter's gradient to zero (``set_to_none=True``, PyTorch's, is refused: a cynet gradient is
        a buffer, never None; see :data:`cynet.nn.module.NO_NONE_GRAD`)."""
        _refuse_set_to_none(f"{type(self).__name__}.zero_grad", set_to_none)
        for param in self.parameters():
            param.zero_grad()

    def shared_copy(self):
        """A second instance of this module sharing every :class:`Parameter` and buffer with it: the weights are tied
        (both add their gradients into the same ``grad``; an optimiser over a model holding both updates each
        Parameter once) and so are running statistics and random generators (a Dropout with its own generator draws
        the twins' masks from one stream, as one module called twice would), while what a forward keeps for its
        backward is each instance's own. Use it where one module would otherwise run twice in one forward pass (a
        Siamese network's two branches, one layer applied at two places), which a module cannot do (see
        :class:`Module`). A dtype
        change (:meth:`to`, :meth:`float`, :meth:`double`) keeps the buffers shared when it is applied to a module
        holding both instances (or before the copy).

        Example:
            >>> import numpy as np
            >>> from cynet import nn
            >>> branch = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
            >>> twin = branch.shared_copy()
            >>> twin[0].weight is branch[0].weight
            True
            >>> e1, e2 = branch(np.ones((2, 4), np.float32)), twin(np.zeros((2, 4), np.float32))
        """
        shared = {}
        for module in self.modules():
            generators = [v for v in vars(module).values() if isinstance(v, np.random.Generator)]
            for value in (list(module._parameters.values()) + list(module._buffers.values()) + generators
                          + module._twin_shared()):
                shared[id(value)] = value
        return copy.deepcopy(self, shared)

    def _twin_shared(self):
        """Objects besides parameters, buffers and generators that a :meth:`shared_copy` twin shares (a batch
        norm's frozen flag); none by default."""
        return []

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter, and every module inside (their own notion of frozen,
        e.g. a batch norm without parameters stops updating its running statistics); returns self."""
        for param in self.parameters():
            param.requires_grad = bool(requires_grad)
        for module in self.modules():
            module._set_frozen_state(not requires_grad)
        return self

    def _set_frozen_state(self, frozen):
        """What a module freezes besides its parameters (nothing by default), called by requires_grad_ on every
        module of the tree."""

    def freeze(self):
        """Stop learning: no gradients, no updates (``requires_grad_(False)``); returns self."""
        return self.requires_grad_(False)

    def unfreeze(self):
        return self.requires_grad_(True)

    @property
    def frozen(self):
        """True when the module has parameters and none of them learns."""
        params = self.parameters()
        return bool(params) and not any(p.requires_grad for p in params)

    def to(self, dtype):
        """Cast every parameter and floating buffer to ``dtype`` (float32 or float64) in place; returns self.

        Gradient checks run a float64 copy of a model: ``copy.deepcopy(model).to(np.float64)``. ``"cpu"`` (PyTorch's
        ``.to(device)``) changes nothing: cynet runs on the CPU.
        """
        if isinstance(dtype, str) and dtype.lower() == "cpu":
            return self
        if isinstance(dtype, str) and dtype.strip().lower() == "float":
            # NumPy reads 'float' as float64, PyTorch's torch.float is float32 and self.float() casts to float32:
            # to('float') made a float64 model without a word
            raise TypeError(f"{type(self).__name__}.to: dtype 'float' is ambiguous (NumPy's 'float' is float64, "
                            f"PyTorch's torch.float and .float() are float32): pass np.float32 or np.float64")
        try:
            if dtype is None:           # np.dtype(None) is float64: to(None) cast the model without a word
                raise TypeError
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{type(self).__name__}.to: dtype must be float32 or float64 (the kernels' types) or "
                            f"'cpu', got {dtype!r}: cynet runs on the CPU only") from None
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}.to: dtype must be float32 or float64 (the kernels' types), got "
                            f"{dtype}")
        cast = {}           # one new array per buffer array: buffers shared by modules (shared_copy) stay shared
        for module in self.modules():
            module._cast_state(dtype)
            for param in module._parameters.values():
                if param.data.dtype != dtype:
                    param._cast(dtype)
            for name, buf in list(module._buffers.items()):
                if buf.dtype.kind == "f" and buf.dtype != dtype:
                    if id(buf) not in cast:
                        cast[id(buf)] = (buf, buf.astype(dtype))     # (the old array kept: its id stays its own)
                    module._set_buffer(name, cast[id(buf)][1])
        return self

    def _cast_state(self, dtype):
        """What :meth:`to` changes in this module besides its parameters and buffers (nothing by default; a norm
        without either keeps the dtype it expects), called for every module of the tree."""

    def double(self):
        """``self.to(np.float64)`` (PyTorch's name)."""
        return self.to(np.float64)

    def float(self):
        """``self.to(np.float32)`` (PyTorch's name)."""
        return self.to(np.float32)

    # --- state -------------------------------------------------------------------------------------------------------
    def state_dict(self):
        """An ordered ``{dotted name: array copy}`` of every parameter and buffer, in PyTorch's order: module by
        module (this one, then its descendants depth first), each module's parameters then its buffers (a
        BatchNorm's ``weight, bias, running_mean, running_var, num_batches_tracked`` before the next layer's)."""
        params = OrderedDict(self.named_parameters())
        buffers = OrderedDict(self.named_buffers())
        state = OrderedDict()
        for prefix, module in self.named_modules():
            for names, found, copy_of in ((module._parameters, params, lambda p: p.data.copy()),
                                          (module._buffers, buffers, lambda b: np.array(b, copy=True))):
                for name in names:
                    key = f"{prefix}.{name}" if prefix else name
                    if key in found:
                        state[key] = copy_of(found[key])
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into the parameters and buffers, in place: each value is cast to the
        array's own dtype (a float64 state loads into a float32 model as float32, as PyTorch's ``copy_`` does).

        Args:
            state_dict (Mapping[str, array_like]): as returned by :meth:`state_dict`.
            strict (bool): require exactly the same keys (default). Shapes must always agree.

        Returns:
            IncompatibleKeys: the tuple ``(missing_keys, unexpected_keys)`` (both empty when strict), also readable
            by PyTorch's field names ``.missing_keys`` and ``.unexpected_keys``.

        Raises:
            KeyError: strict and keys are missing or unexpected (all of them listed).
            ValueError: an array's shape differs from the module's, or it does not hold numbers (NaN or inf for an
                integer buffer); nothing is loaded then.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict of arrays (from state_dict()), "
                            f"got {type(state_dict).__name__}")
        targets = OrderedDict(self.named_parameters())
        buffers = OrderedDict(self.named_buffers())
        expected = list(targets) + list(buffers)
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets and k not in buffers]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"{type(self).__name__}.load_state_dict: " + "; ".join(parts))
        # every value converted and checked before anything is written: a failed load changes nothing
        mismatched, converted = [], []
        for key, value in state_dict.items():
            target = targets[key].data if key in targets else buffers.get(key)
            if target is None:
                continue
            array = np.asarray(value)
            if array.shape != target.shape:
                mismatched.append(f"{key}: expected shape {target.shape}, got {array.shape}")
                continue
            if array.dtype.kind == "O" and all(isinstance(v, numbers.Real) for v in array.flat):
                array = array.astype(target.dtype)      # numbers in an object array load (None would become NaN)
            if not _loadable(array, target.dtype):
                mismatched.append(f"{key}: expected numbers for a {target.dtype} array, got {describe(array)}"
                                  + (" holding NaN or inf" if array.dtype.kind == "f" else ""))
                continue
            converted.append((target, array))
        if mismatched:
            raise ValueError(f"{type(self).__name__}.load_state_dict: nothing loaded: " + "; ".join(mismatched))
        for target, array in converted:
            target[...] = array
        for module in self.modules():
            module._state_loaded()
        return IncompatibleKeys(missing, unexpected)

    def _state_loaded(self):
        """Called on every module after :meth:`load_state_dict` wrote its arrays: forget what described the old ones
        (a batch norm's note that its running statistics were recomputed)."""

    # --- in-place modules --------------------------------------------------------------------------------------------
    def _overwrites_input(self):
        """Whether ``forward`` writes its result into its input array (an activation built with ``inplace=True``)."""
        return False

    def _kept_arrays(self):
        """Every array this module and its descendants hold between calls: what forward cached for backward, buffers.
        :class:`Sequential` keeps in-place modules off them."""
        for module in self.modules():
            for value in vars(module).values():
                yield from _arrays_within(value)

    # --- calling -----------------------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout, *, input_grad=True):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement backward: cynet has no autograd; a module defines "
            f"backward(self, dout, *, input_grad=True), which adds its parameters' gradients into param.grad (+=) "
            f"from what forward kept and returns the input's gradient (None when input_grad is False); see the "
            f"README's 'Your own module'")

    def __call__(self, *args, **kwargs):
        if "_registration_checked" not in self.__dict__:       # once per instance, at its first call
            object.__setattr__(self, "_registration_checked", True)
            _warn_unregistered(self)
        for value in (*args, *kwargs.values()):
            if isinstance(value, np.ma.MaskedArray):           # np.asarray would drop the mask without a word
                refuse_masked(repr(self) if not self._modules else type(self).__name__, "input", value)
        return self.forward(*args, **kwargs)

    # --- printing ----------------------------------------------------------------------------------------------------
    def extra_repr(self):
        """The settings shown inside the module's repr."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        if self._parameters and self.frozen:
            extra = f"{extra}, frozen" if extra else "frozen"
        if not self._modules:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}(" + (extra if extra else "")]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"


def _warn_unregistered(module):
    """UserWarning for each public attribute of ``module`` that is a plain list, tuple or dict holding Modules or
    Parameters: those are not registered (PyTorch's classic silent bug: parameters(), so the optimiser, state_dict,
    .to(), train()/eval() and gradcheck never see them). A name starting with "_" is taken as deliberate."""
    registered = None           # the ids of the modules and parameters this module does register (computed lazily)
    for name, value in vars(module).items():
        if name.startswith("_") or not isinstance(value, (list, tuple, dict)) or isinstance(value, Module):
            continue
        items = list(value.values()) if isinstance(value, dict) else list(value)
        held = [item for item in items if isinstance(item, (Module, Parameter))]
        if held and registered is None:
            # a list of layers also assigned one by one (self.fc1 = ...; self.layers = [self.fc1, ...]) is a
            # convenience over registered objects, not a bug: only the unregistered ones are warned about
            registered = {id(m) for m in module.modules()} | {id(p) for p in module.parameters()}
        held = [item for item in held if id(item) not in registered]
        if held:
            kinds = sorted({"Module" if isinstance(item, Module) else "Parameter" for item in held})
            warnings.warn(
                f"{type(module).__name__}: attribute {name!r} is a plain {type(value).__name__} holding {len(held)} "
                f"{' and '.join(kinds)} object(s), which are not registered: parameters() (so the optimiser), "
                f"state_dict(), .to(), train()/eval() and gradcheck do not see them. Use nn.ModuleList (or assign "
                f"each as an attribute: self.fc1 = ...); name the attribute with a leading '_' if this is deliberate",
                UserWarning, stacklevel=3)


def _shape_of(x):
    """``x.shape`` for an array, else None: a module may take a tuple of arrays of different shapes, whose
    ``np.shape`` NumPy refuses (inhomogeneous), and its input gradient is then not checked."""
    return tuple(x.shape) if isinstance(x, np.ndarray) else None


def _check_input_gradient(container, where, module, dx, may_be_none, input_shape):
    """ValueError naming ``module`` (at ``where`` in ``container``) when the input gradient its backward returned is
    None where the module before it needs one (``may_be_none`` False), or its shape is not its input's
    (``input_shape``, None when unknown): otherwise the next module's backward refused a dout it did not cause, or a
    broadcast made the gradient silently wrong."""
    if dx is None:
        if may_be_none:
            return
        raise ValueError(f"{type(container).__name__}: {where} ({type(module).__name__}).backward returned None for "
                         f"its input's gradient (input shape {input_shape}), which the module before it needs: a "
                         f"backward returns dx (None only when called with input_grad=False)")
    if input_shape is not None and np.shape(dx) != tuple(input_shape):
        raise ValueError(f"{type(container).__name__}: {where} ({type(module).__name__}).backward returned an input "
                         f"gradient of shape {np.shape(dx)} for its input of shape {tuple(input_shape)}: dx must have "
                         f"the shape of the forward's x")


def _arrays_within(value):
    """The numpy arrays in value: itself, or inside a tuple, list or dict (one module attribute)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays_within(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays_within(item)


# The arrays that an in-place module inside the running Sequential.forward must not overwrite: the outermost
# Sequential's input and what every module run before holds (a nested Sequential starts from its parent's list).
_protected_arrays = contextvars.ContextVar("cynet_protected_arrays", default=None)

# Sequential runs a batch norm (training statistics) and a plain ReLU right after it as one pass
# (BatchNorm*.forward_relu); CYNET_FUSE_BATCHNORM_RELU=0 runs them one by one (the same bits either way). Likewise a
# Linear and a plain ReLU (Linear.forward_relu: the bias and the ReLU in one pass); CYNET_FUSE_LINEAR_RELU=0.
FUSE_BATCHNORM_RELU = not switched_off("CYNET_FUSE_BATCHNORM_RELU")     # (0, false, no, off: off, as the other
FUSE_LINEAR_RELU = not switched_off("CYNET_FUSE_LINEAR_RELU")           # CYNET_* switches; 'false' left it on)


def _refuse_overwriting_protected(module, x):
    """ValueError if the in-place ``module`` is about to write into ``x`` while an enclosing Sequential or Residual
    still needs ``x`` (its input, or what a module run before keeps for its backward): the check Sequential makes for
    its own children, made again by the module itself for one reached through a custom module's forward."""
    protected = _protected_arrays.get()
    if not protected or not isinstance(x, np.ndarray):
        return
    if any(np.may_share_memory(array, x) for array in protected):
        raise ValueError(
            f"{module!r} runs in place and would overwrite an array that an enclosing Sequential or Residual still "
            f"needs (its input, or an array a module run before keeps for its backward; {describe(x)}), which "
            f"would give a wrong output or gradient; build it with inplace=False")


@contextlib.contextmanager
def _protecting(arrays):
    """For the block: the arrays no in-place module may overwrite are the enclosing blocks' and ``arrays``; yields
    that list (append to it what the block's modules keep)."""
    outer = _protected_arrays.get()
    protected = (list(outer) if outer is not None else []) + list(arrays)
    token = _protected_arrays.set(protected)
    try:
        yield protected
    finally:
        _protected_arrays.reset(token)


class _ModuleSequence(Module):
    """An ordered list of child modules named by position ("0", "1", ...): list-style access and editing, shared by
    :class:`Sequential` and :class:`ModuleList`. Insertions and removals rename the children to their new positions,
    so state-dict keys follow (as in PyTorch)."""

    def _checked(self, what, module):
        """``module``, or a TypeError naming the call (``what``) when it is not a Module."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.{what}: not a Module: {module!r}")
        return module

    def _add(self, what, name, module):
        setattr(self, name, self._checked(what, module))

    def append(self, module):
        """Add ``module`` at the end, named by its position (or the next free number, where a slice kept other
        names); returns self."""
        position = len(self._modules)
        while str(position) in self._modules:
            position += 1
        self._add("append", str(position), module)
        return self

    def extend(self, modules):
        """Append each module of an iterable (another Sequential or ModuleList, a list); returns self. Nothing is
        appended when one of them is not a Module."""
        modules = list(modules)
        for module in modules:          # all checked first: a refused item no longer left the ones before it appended
            self._checked("extend", module)
        for module in modules:
            self.append(module)
        return self

    def insert(self, index, module):
        """Insert ``module`` before position ``index`` (negative counts from the end, as for a list); the modules
        after it are renamed. Returns self."""
        self._checked("insert", module)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"{type(self).__name__}.insert: index must be an int, got {index!r}")
        layers = list(self._modules.values())
        layers.insert(int(index), module)
        self._renumber(layers)
        return self

    def pop(self, index=-1):
        """Remove and return the module at ``index`` (the last by default); the ones after it are renamed."""
        layers = list(self._modules.values())
        if not layers:
            raise IndexError(f"{type(self).__name__}.pop: it is empty")
        module = layers.pop(index)
        self._renumber(layers)
        return module

    def __setitem__(self, index, module):
        """``seq[index] = module``: replace the module at position ``index`` (an int; negative counts from the end),
        which keeps its name and place (as in PyTorch: ``model[-1] = nn.Linear(512, 10)`` swaps a classifier head)."""
        name = type(self).__name__
        if not isinstance(module, Module):
            raise TypeError(f"{name}: only a Module can be assigned to an item, got {module!r}")
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"{name}: item assignment takes an int index (not a slice), got {index!r}")
        names = list(self._modules)
        if not -len(names) <= index < len(names):
            raise IndexError(f"{name}: index {index} is out of range for {len(names)} modules")
        setattr(self, names[index], module)

    def __delitem__(self, index):
        layers = list(self._modules.values())
        del layers[index]
        self._renumber(layers)

    def _renumber(self, layers):
        for name in list(self._modules):
            delattr(self, name)
        for position, module in enumerate(layers):
            setattr(self, str(position), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, slice):
            if isinstance(self, Sequential):            # the layers keep their names, as in PyTorch
                return Sequential(OrderedDict(list(self._modules.items())[index]))
            return ModuleList(list(self._modules.values())[index])
        modules = list(self._modules.values())
        try:
            return modules[index]
        except IndexError:          # (was the bare "list index out of range")
            raise IndexError(f"{type(self).__name__}: index {index} is out of range for its {len(modules)} "
                             f"module{'s' if len(modules) != 1 else ''} (valid: {-len(modules)} to "
                             f"{len(modules) - 1})") from None


class ModuleList(_ModuleSequence):
    """A list of modules registered as children (their parameters, buffers, modes and state-dict entries belong to
    the module holding the list), for a custom module whose ``forward`` and ``backward`` walk them itself. It has no
    forward of its own.

    Args:
        modules (iterable of Module): the initial modules, named "0", "1", ... Default empty.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> class Tower(nn.Module):
        ...     def __init__(self, width, depth):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        ...     def forward(self, x):
        ...         for layer in self.layers:
        ...             x = layer(x)
        ...         return x
        ...     def backward(self, dout, *, input_grad=True):
        ...         for i, layer in reversed(list(enumerate(self.layers))):
        ...             dout = layer.backward(dout, input_grad=input_grad or i > 0)
        ...         return dout
        >>> tower = Tower(4, 3)
        >>> len(tower.layers), [name for name, _ in tower.named_parameters()][:2]
        (3, ['layers.0.weight', 'layers.0.bias'])
    """

    def __init__(self, modules=None):
        super().__init__()
        for index, module in enumerate(() if modules is None else modules):     # None: empty, as torch's
            self._add(f"__init__ (item {index})", str(index), module)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward: iterate over it in your module's forward")


class Sequential(_ModuleSequence):
    """A chain of modules: ``forward`` runs them in order, ``backward`` in reverse.

    A batch norm in training mode and a plain ReLU right after it run as one pass
    (:meth:`~cynet.nn.BatchNorm2d.forward_relu`; the same bits; ``CYNET_FUSE_BATCHNORM_RELU=0`` turns it off), and so
    do a Linear and a plain ReLU after it (:meth:`~cynet.nn.Linear.forward_relu`: the bias and the ReLU in one pass;
    ``CYNET_FUSE_LINEAR_RELU=0``), unless either module's forward or backward is shadowed, as a
    :class:`~cynet.diagnostics.TrainingMonitor` does to record activations.

    An in-place module (``nn.ReLU(inplace=True)``) may follow any module that does not keep its own output for its
    backward (Linear, BatchNorm1d, ...). Before it runs, forward raises a ValueError if its input is, or is a view
    of, an array that an earlier module keeps (the output of a Sigmoid, Tanh, ELU or of another in-place activation,
    also through a Flatten or an evaluation-mode Dropout, which pass their input on) or the caller's own input.

    Args:
        *modules (Module): the layers, named ``"0"``, ``"1"``, ... in the state dict; or one dict (an
            ``OrderedDict``) of name -> module, as in PyTorch, whose names then name them (``model.fc1``, state-dict
            keys ``fc1.weight``). ``insert``, ``pop`` and ``del`` rename every layer by position.

    Shape: the first module's input to the last module's output.

    Example:
        >>> import numpy as np
        >>> from collections import OrderedDict
        >>> from cynet import nn
        >>> model = nn.Sequential(nn.Linear(3072, 100), nn.ReLU(), nn.Linear(100, 10))
        >>> model(np.zeros((8, 3072), np.float32)).shape
        (8, 10)
        >>> named = nn.Sequential(OrderedDict([("fc1", nn.Linear(4, 3)), ("act", nn.Tanh()), ("fc2", nn.Linear(3, 2))]))
        >>> list(named.state_dict())
        ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, module in modules[0].items():
                if not isinstance(name, str) or not name or "." in name or hasattr(type(self), name) \
                        or name in vars(self):      # the registries and `training`
                    raise ValueError(f"Sequential: layer names must be non-empty strings without '.' that do not "
                                     f"hide an attribute, got {name!r}")
                self._add(f"__init__ (layer {name!r})", name, module)
            return
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: argument {index} is not a Module: {module!r}")
            setattr(self, str(index), module)

    def __setattr__(self, name, value):
        if isinstance(value, Module) and "_modules" in self.__dict__:
            self._refuse_a_second_use([(n, m) for n, m in self._modules.items() if n != name] + [(name, value)])
        super().__setattr__(name, value)

    def _renumber(self, layers):
        self._refuse_a_second_use([(str(position), module) for position, module in enumerate(layers)])  # first
        super()._renumber(layers)

    def extend(self, modules):
        """Append each module of an iterable (another Sequential or ModuleList, a list); returns self. Nothing is
        appended when one of them is refused."""
        modules = list(modules)
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential.extend: not a Module: {module!r}")
        start = len(self._modules)
        self._refuse_a_second_use(list(self._modules.items()) +
                                  [(str(start + i), module) for i, module in enumerate(modules)])
        return super().extend(modules)

    def _refuse_a_second_use(self, layers):
        """ValueError if a module appears twice in the trees of ``layers`` (what this Sequential would hold), or is
        this Sequential: run twice in one pass, the first run's backward would read the second run's values."""
        repeat = _first_repeat(self, layers)
        if repeat is not None:
            name, earlier, module = repeat
            raise ValueError(
                f"Sequential: layer {name!r} ({type(module).__name__}) is already in this Sequential as {earlier}: "
                f"a module keeps the values of one forward pass for its backward, so one instance running twice in "
                f"a pass would give wrong gradients. Use a new instance (to share weights, give it the same "
                f"Parameter: second.weight = first.weight)")

    def forward(self, x):
        token = _STRUCTURE_TOKEN[0]
        if self.__dict__.get("_checked_at") is not token:
            # a nested container changed since the last check (e.g. inner.append(m) with m already outside it)
            self._refuse_a_second_use(list(self._modules.items()))
            object.__setattr__(self, "_checked_at", token)
        modules = list(self._modules.values())
        self._fused = set()
        # each layer's input shape, for backward's check of the gradient each layer returns for its input
        self._input_shapes = shapes = [None] * len(modules)
        if not any(module._overwrites_input() for module in self.modules()):
            position = 0
            while position < len(modules):
                shapes[position] = _shape_of(x)
                y = self._fused_relu(modules, position, x)
                x = modules[position](x) if y is None else y
                position += 1 if y is None else 2
            return x
        # the caller's input is protected at the outermost Sequential; nested, the enclosing modules say what is
        with _protecting(() if _protected_arrays.get() is not None else _arrays_within(x)) as protected:
            position = 0
            while position < len(modules):
                shapes[position] = _shape_of(x)
                y = self._fused_relu(modules, position, x)
                # fused, the ReLU's output is the batch norm's fresh array: nothing to check
                ran = modules[position:position + 1 if y is None else position + 2]
                if y is None:
                    if modules[position]._overwrites_input():
                        self._check_overwrite(modules, position, x, protected)
                    y = modules[position](x)
                for module in ran:
                    protected.extend(module._kept_arrays())
                x = y
                position += len(ran)
        return x

    def _fused_relu(self, modules, position, x):
        """A batch norm (training statistics) or a Linear and the plain ReLU after it in one pass, or None.

        The ReLU takes the result as its own output; backward then skips the ReLU, whose mask the first module's
        backward applies (the same bits as the two layers run one by one). Not when either module's forward is
        shadowed (a :class:`~cynet.diagnostics.TrainingMonitor` recording activations) or overridden by a subclass,
        nor with ``CYNET_FUSE_BATCHNORM_RELU=0`` / ``CYNET_FUSE_LINEAR_RELU=0``."""
        if position + 1 >= len(modules) or not hasattr(modules[position], "forward_relu"):
            return None
        if isinstance(x, np.ma.MaskedArray):
            # (a module before it returned one): unfused, the module's __call__ refuses it; forward_relu read the
            # values under the mask without a word
            return None
        from cynet.nn.layers import Linear, ReLU

        first, relu = modules[position], modules[position + 1]
        if not (FUSE_LINEAR_RELU if isinstance(first, Linear) else FUSE_BATCHNORM_RELU):
            return None
        # forward_relu stands for its own class's forward and backward: not for a subclass's, an instance's own, or
        # methods patched on the class since it was built (_fusable)
        owner = next(cls for cls in type(first).__mro__ if "forward_relu" in vars(cls))
        if (type(first).forward, type(first).backward) != vars(owner).get("_fusion_methods"):
            return None
        if type(relu) is not ReLU or (ReLU.forward, ReLU.backward) != vars(ReLU).get("_fusion_methods") or any(
                name in vars(module) for module in (first, relu) for name in ("forward", "backward")):
            return None
        y = first.forward_relu(x)
        if y is not None:
            _record_run(relu)           # a run of the ReLU, as if its forward had run (the check against reuse)
            relu._adopt_output(y)
            self._fused.add(position)
        return y

    def _check_overwrite(self, modules, position, x, protected):
        """Raise if the in-place module at ``position`` would write into an array that must outlive it."""
        if not isinstance(x, np.ndarray):
            return                                  # the module's own check refuses it
        for array in protected:
            if np.may_share_memory(array, x):
                # the nearest module keeping it (a Linear fused with the ReLU after it keeps the ReLU's output too)
                holder = next((f"module {index} ({type(m).__name__})"
                               for index, m in reversed(list(enumerate(modules[:position])))
                               if any(a is array for a in m._kept_arrays())), None)
                whose = f"an array that {holder} keeps for its backward" if holder else (
                    "the input passed to the Sequential (or an array an enclosing module keeps)")
                raise ValueError(
                    f"Sequential: module {position} ({modules[position]!r}) runs in place and would overwrite {whose} "
                    f"({describe(x)}); build it with inplace=False, or put it after a module that returns a fresh "
                    f"array (Linear, BatchNorm1d)")

    def backward(self, dout, *, input_grad=True):
        layers = list(self._modules.values())
        fused = getattr(self, "_fused", ())
        shapes = self.__dict__.get("_input_shapes", ())
        for position in range(len(layers) - 1, -1, -1):
            if position - 1 in fused:   # a ReLU fused with the module before it: that backward applies its mask
                layers[position]._check_kept_output()      # (refused as unfused when its output was changed)
                continue
            wanted = input_grad if position == 0 else True
            dout = layers[position].backward(dout, input_grad=wanted)
            if wanted:
                _check_input_gradient(self, f"layer {position}", layers[position], dout, position == 0,
                                      shapes[position] if position < len(shapes) else None)
        return dout
