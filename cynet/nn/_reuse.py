"""Reused output arrays: the large arrays a module hands out pass after pass, recycled once nothing else holds them.

Why. A fresh NumPy array larger than glibc's mmap threshold (it adapts, up to 32 MiB) is new memory from the kernel,
and the kernel zeroes each of its pages when it is first touched. A conv net's activations are that large (the CIFAR
CNN's (256, 32, 32, 32) float32 maps are 33.5 MB) and every forward and backward pass made several of them. Measured on
the 2-vCPU development host (Intel Xeon, 2 threads): a (256, 32, 32, 32) batch norm forward took 10.4 ms with a fresh
output and 3.7 ms with a reused one; the CIFAR CNN's whole training step (batch 256) 196-199 ms without reuse and
177-179 ms with it (three alternating rounds of fresh processes).

How it stays safe. A module asks for its output (``empty(module, "y", shape, dtype)``) and gets an array it handed
out before only when nothing but the module's own list refers to it any more: CPython counts every reference, and a
caller that kept the array, a view of it (a view refers to the array that owns the memory, and a kept array always
owns its memory), a memoryview or a module cache that still holds it, all show in ``sys.getrefcount``. An output still
in use is never overwritten; the module then allocates another (at most :data:`KEEP` are kept per output, so a
forward output that the next layer caches for its backward alternates between two arrays). Arrays under
:data:`MIN_BYTES` are allocated as before: glibc hands out a block that was just freed, often still in cache, where a
kept array was last touched a pass ago (with a 1 MiB threshold, the benchmark MLP's epoch, whose largest activations
are (256, 1024) float32, went from 1.16-1.18x to 1.21x its GEMM floor; the CNN step is the same with 1 or 4 MiB).

The cost is memory: each module keeps up to two arrays of each output between passes (freed with the module, not
copied with it). ``CYNET_REUSE_ARRAYS=0`` in the environment turns the reuse off (every output fresh, as NumPy
allocates it); on a Python without reference counts to rely on (free-threaded builds) it is off.
"""
import os
import sys

import numpy as np

MIN_BYTES = 4 << 20      # smaller outputs are allocated fresh
KEEP = 2                 # arrays kept per output slot of a module


def _reference_count_baseline():
    """``sys.getrefcount(kept[i])`` for an array only a list holds (2 on CPython 3.9-3.13)."""
    kept = [np.empty(1)]
    return sys.getrefcount(kept[0])


def _enabled_by_default():
    if os.environ.get("CYNET_REUSE_ARRAYS", "1").strip() in ("0", "false", "no", "off"):
        return False
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return gil_enabled is None or gil_enabled()


ENABLED = _enabled_by_default()
_UNSHARED = _reference_count_baseline()


class ReusedArrays:
    """The arrays one module has handed out, by output slot (``"y"``, ``"dx"``, ...). Not copied with the module."""

    __slots__ = ("kept",)

    def __init__(self):
        self.kept = {}

    def empty(self, slot, shape, dtype):
        kept = self.kept.setdefault(slot, [])
        free = None
        for i in range(len(kept)):
            if sys.getrefcount(kept[i]) == _UNSHARED:             # nothing outside this list refers to it
                if kept[i].shape == shape and kept[i].dtype == dtype:
                    return kept[i]
                free = i
        array = np.empty(shape, dtype)
        if free is not None:
            kept[free] = array                                   # replaces an unused array of another shape
        elif len(kept) < KEEP:
            kept.append(array)
        return array

    def __deepcopy__(self, memo):
        return ReusedArrays()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.kept = {}

    def __repr__(self):
        return f"ReusedArrays({ {slot: len(arrays) for slot, arrays in self.kept.items()} })"


def empty(module, slot, shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` for ``module``'s output ``slot``: one it handed
    out before when that is large, of the same shape and dtype, and held by nothing else; else a new one."""
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    if not ENABLED or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize < MIN_BYTES:
        return np.empty(shape, dtype)
    arrays = module.__dict__.get("_reused_arrays")
    if arrays is None:
        arrays = ReusedArrays()
        object.__setattr__(module, "_reused_arrays", arrays)
    return arrays.empty(slot, shape, dtype)


def zeros(module, slot, shape, dtype):
    """:func:`empty`, filled with zeros."""
    array = empty(module, slot, shape, dtype)
    array.fill(0)
    return array


def like(module, slot, array):
    """:func:`empty` with the shape and dtype of ``array``."""
    return empty(module, slot, array.shape, array.dtype)
