"""One seeded random source for every draw cynet makes (initialisers, dropout masks, shuffling, searches).

Every function that draws random numbers takes ``generator=None``; ``None`` means the global generator below, which
:func:`manual_seed` reseeds. Pass your own :class:`numpy.random.Generator` to keep a draw independent of the rest.
:func:`get_rng_state` / :func:`set_rng_state` save and restore the global generator exactly (checkpoints use them).
"""
import json

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Reseed the global generator: everything drawn afterwards is reproducible.

    Args:
        seed (int): a non-negative integer.

    Returns:
        numpy.random.Generator: the new global generator.

    Example:
        >>> import cynet
        >>> g = cynet.manual_seed(0)
        >>> a = g.random(); g = cynet.manual_seed(0); a == g.random()
        True
    """
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"cynet.manual_seed: seed must be a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def default_generator():
    """The global :class:`numpy.random.Generator` (the one :func:`manual_seed` reseeds)."""
    return _generator


def resolve_generator(generator=None):
    """``generator`` itself, a new generator seeded with it when it is an int, or the global one when ``None``."""
    if generator is None:
        return _generator
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise TypeError(f"cynet: generator must be None, an int seed or a numpy.random.Generator, got {generator!r}")


def get_rng_state(generator=None):
    """The state of ``generator`` (default: the global one) as a JSON string, storable without pickle."""
    return json.dumps(resolve_generator(generator).bit_generator.state)


def set_rng_state(state, generator=None):
    """Restore a state returned by :func:`get_rng_state` into ``generator`` (default: the global one)."""
    target = resolve_generator(generator)
    target.bit_generator.state = json.loads(state) if isinstance(state, str) else state
    return target
