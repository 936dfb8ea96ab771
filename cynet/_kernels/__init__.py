"""Private Cython kernels. Only :mod:`cynet.ops` (and later ops modules) import from here, through :func:`load`.

Each kernel family (``activations``, ``maxout``, ...) is compiled from one ``.pyx`` into a baseline module that runs
on any CPU of the platform, and, on x86-64 with GCC or clang, into variants for wider SIMD (``<family>_avx2``,
``<family>_avx512``) selected at import time from what the CPU supports: the same source, the same IEEE operations in
the same order (no FMA contraction), only more lanes per instruction, with one deliberate exception: the polynomial
steps of the vectorised exp/expm1 and of GELU's tail ratio (_vecmath.pxd) are fused multiply-adds in the variants (both
have FMA), two roundings in the baseline. Exact ops give the same bits everywhere; the transcendental ones may differ
in the last bit and each variant meets the accuracy bounds asserted in tests/test_vecmath.py.

``CYNET_ISA=baseline|avx2|avx512`` caps the choice (for comparisons and debugging).
"""
import importlib
import os

from cynet._kernels import _runtime

# Widest first.
ISA_LEVELS = ("avx512", "avx2", "baseline")
_loaded = {}


def _allowed_levels():
    cap = os.environ.get("CYNET_ISA", "").strip().lower()
    if not cap:
        return ISA_LEVELS
    if cap not in ISA_LEVELS:
        raise ValueError(f"CYNET_ISA must be one of {ISA_LEVELS}, got {cap!r}")
    return ISA_LEVELS[ISA_LEVELS.index(cap):]


def _import(family, isa):
    """Import the ``isa`` build of ``family``, the baseline build first.

    A Cython module registers itself in sys.modules under the name it was compiled as as well: a variant imported
    first would stand in for the baseline module ``cynet._kernels.<family>`` from then on (and the comparison of the
    variants with the baseline would compare a variant with itself). Importing the baseline first keeps each name
    bound to its own build."""
    try:
        importlib.import_module(f"cynet._kernels.{family}")
    except ImportError:
        pass
    name = family if isa == "baseline" else f"{family}_{isa}"
    return importlib.import_module(f"cynet._kernels.{name}")


def available_isas(family="activations"):
    """Instruction-set variants of ``family`` that were built and that this CPU runs, widest first."""
    found = []
    for isa in ISA_LEVELS:
        if not _runtime.cpu_supports(isa):
            continue
        try:
            _import(family, isa)
        except ImportError:
            continue
        found.append(isa)
    return found


def load(family, isa=None):
    """The kernel module of ``family`` for ``isa`` (default: the widest one built, allowed and supported)."""
    key = (family, isa)
    if key in _loaded:
        return _loaded[key]
    levels = (isa,) if isa is not None else _allowed_levels()
    for level in levels:
        if not _runtime.cpu_supports(level):
            continue
        try:
            module = _import(family, level)
        except ImportError:
            continue
        _loaded[key] = module
        return module
    raise ImportError(f"cynet: no build of the {family!r} kernels for {levels} runs on this CPU")


def selected_isa(family="activations"):
    """The instruction set :func:`load` picks for ``family``."""
    module = load(family)
    suffix = module.__name__.rsplit(".", 1)[-1][len(family):]
    return suffix.lstrip("_") or "baseline"
