"""One seeded random source for every draw cynet makes (initialisers, dropout masks, shuffling, searches).

Every function that draws random numbers takes ``generator=None``; ``None`` means the global generator below, which
:func:`manual_seed` reseeds. Pass your own :class:`numpy.random.Generator` to keep a draw independent of the rest.
:func:`get_rng_state` / :func:`set_rng_state` save and restore the global generator exactly (checkpoints use them).

Inside ``with generator_scope(seed_or_generator):`` the calling Python thread has a global generator of its own: its
``generator=None`` draws, :func:`manual_seed`, :func:`get_rng_state` and :func:`set_rng_state` use and replace that
one, and every other thread keeps the process-wide generator (or its own scope's). A hyperparameter search running
trials on threads (a thread pool, a Dask worker with several threads) scopes each trial to its seed this way, so
a trial's weights and dropout masks do not depend on what runs beside it.
"""
import contextlib
import json
import threading

import numpy as np

_generator = np.random.default_rng()


class _ThreadScope(threading.local):
    """The calling thread's override of the global generator (set by :func:`generator_scope`); None: no override.

    (A class attribute as the default: reading an unset ``threading.local`` attribute then costs a plain lookup, not
    an AttributeError, on every ``generator=None`` draw.)"""

    generator = None


_scope = _ThreadScope()


def manual_seed(seed):
    """Reseed the global generator: everything drawn afterwards is reproducible.

    Inside :func:`generator_scope` it reseeds the calling thread's scoped generator instead (other threads and the
    process-wide generator are left alone; the scope's end discards it).

    Args:
        seed (int): a non-negative integer.

    Returns:
        numpy.random.Generator: the new global generator.

    Raises:
        ValueError: ``seed`` is not a non-negative int.

    Example:
        >>> import cynet
        >>> g = cynet.manual_seed(0)
        >>> a = g.random(); g = cynet.manual_seed(0); a == g.random()
        True
    """
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"cynet.manual_seed: seed must be a non-negative int, got {seed!r}")
    generator = np.random.default_rng(int(seed))
    if _scope.generator is not None:
        _scope.generator = generator
    else:
        _generator = generator
    return generator


def default_generator():
    """The global :class:`numpy.random.Generator` (the one :func:`manual_seed` reseeds): the calling thread's
    scoped one inside :func:`generator_scope`, the process-wide one otherwise."""
    scoped = _scope.generator
    return _generator if scoped is None else scoped


def resolve_generator(generator=None):
    """``generator`` itself, a new generator seeded with it when it is an int, or the global one when ``None``
    (:func:`default_generator`: the calling thread's scoped one inside :func:`generator_scope`).

    Raises:
        TypeError: ``generator`` is not None, an int (a bool is refused) or a Generator (a float, a legacy
            ``numpy.random.RandomState``).
        ValueError: a negative int seed.
    """
    if generator is None:
        return default_generator()
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        if generator < 0:
            # (was NumPy's bare "expected non-negative integer", naming neither cynet nor the argument)
            raise ValueError(f"cynet: generator must be None, a non-negative int seed or a numpy.random.Generator, "
                             f"got the negative seed {generator!r}")
        return np.random.default_rng(int(generator))
    raise TypeError(f"cynet: generator must be None, an int seed or a numpy.random.Generator, got {generator!r}")


@contextlib.contextmanager
def generator_scope(generator):
    """Give the calling Python thread a global generator of its own for the duration of the ``with`` block.

    Inside the block, in this thread only, ``generator=None`` draws (initialisers, dropout masks, ...),
    :func:`default_generator`, :func:`manual_seed`, :func:`get_rng_state` and :func:`set_rng_state` use (and replace)
    the scoped generator; other threads keep seeing the process-wide generator, which the block never touches. This is
    what makes a seeded piece of work (a search trial) independent of whatever runs beside it on other threads, where
    seeding the process-wide generator and restoring it afterwards would let two threads interleave their draws.
    Scopes nest; leaving one restores the enclosing one (or none). Threads started inside the block do not inherit
    it.

    Args:
        generator (int or numpy.random.Generator): a seed (a new ``numpy.random.default_rng(seed)``, the generator
            ``manual_seed(seed)`` would make) or a generator to use as it is.

    Yields:
        numpy.random.Generator: the scoped generator.

    Raises:
        TypeError: ``generator`` is None or not an int or a Generator.
        ValueError: a negative seed.

    Example:
        >>> import cynet
        >>> from cynet._random import generator_scope, default_generator
        >>> before = cynet.get_rng_state()
        >>> with generator_scope(0):
        ...     a = default_generator().random()
        >>> with generator_scope(0):
        ...     b = default_generator().random()
        >>> a == b, cynet.get_rng_state() == before
        (True, True)
    """
    if generator is None or isinstance(generator, bool) \
            or not isinstance(generator, (int, np.integer, np.random.Generator)):
        raise TypeError(f"cynet.generator_scope: generator must be an int seed or a numpy.random.Generator, got "
                        f"{generator!r}")
    if not isinstance(generator, np.random.Generator) and generator < 0:
        raise ValueError(f"cynet.generator_scope: seed must be a non-negative int, got {generator!r}")
    scoped = resolve_generator(generator)
    enclosing = _scope.generator
    _scope.generator = scoped
    try:
        yield scoped
    finally:
        _scope.generator = enclosing


def get_rng_state(generator=None):
    """The state of ``generator`` (default: the global one) as a JSON string, storable without pickle. Any bit
    generator's state: the arrays in MT19937's, Philox's and SFC64's are stored as lists of ints."""
    return json.dumps(resolve_generator(generator).bit_generator.state, default=_array_as_list)


def _array_as_list(value):
    """JSON for the arrays of a bit generator's state (MT19937's key, Philox's counter, ...): a list of ints."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cynet.get_rng_state: cannot store {type(value).__name__} in a random state")


def set_rng_state(state, generator=None):
    """Restore a state returned by :func:`get_rng_state` into ``generator`` (default: the global one)."""
    target = resolve_generator(generator)
    target.bit_generator.state = json.loads(state) if isinstance(state, str) else state
    return target
