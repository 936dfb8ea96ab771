"""Reused output arrays: the large arrays the layers hand out, recycled once nothing else holds them.

Why. A fresh NumPy array larger than glibc's mmap threshold (it adapts, up to 32 MiB) is new memory from the kernel,
and the kernel zeroes each of its pages when it is first touched. A conv net's activations are that large (the CIFAR
CNN's (256, 32, 32, 32) float32 maps are 33.5 MB) and every forward and backward pass made several of them. Measured on
the 2-vCPU development host (Intel Xeon, 2 threads): a (256, 32, 32, 32) batch norm forward took 10.4 ms with a fresh
output and 3.7 ms with a reused one; the CIFAR CNN's training step (batch 256) 191-209 ms without reuse and 156-160
ms with it (the narrow max pooling included), the residual CNN's 289 against 249 ms (593 against 489 ms at batch 512).

How it stays safe. A layer asks for its output (``empty(shape, dtype)``) and gets an array handed out before only
when nothing but this pool refers to it any more: CPython counts every reference, and a caller that kept the array, a
view of it (a view refers to the array that owns the memory, and a pooled array always owns its memory), a memoryview,
or a layer that caches it for its backward all show in ``sys.getrefcount``. An array in use is never overwritten; the
layer then gets another. One pool serves every layer, by shape and dtype, so it holds as many arrays of a shape as were
in use at once (the activations a forward pass keeps, the gradients of a backward pass): once a training loop's
arrays are all in the pool, every request finds a free one and nothing more is allocated.

Bounds. Arrays under :data:`MIN_BYTES` are allocated as before (glibc hands out a block that was just freed, often
still in cache, where a pooled array was last touched a pass ago: with a 1 MiB threshold the benchmark MLP's epoch,
whose largest activations are (256, 1024) float32, went from 1.16-1.18x to 1.21x its GEMM floor; the CNN step is the
same with 1 or 4 MiB). Each time the pool has to allocate, it first drops free arrays, those of the shapes asked for
longest ago first, until at most :data:`MAX_FREE_BYTES` are free (after an evaluation pass with its larger batches,
say), and it keeps at most :data:`MAX_BYTES` in all. The CIFAR CNN example's peak memory over one epoch with its
validation pass: 1.35 GB without reuse, 1.65 GB with it (2.78 GB without the free bound; a pool per layer, keeping
two arrays per output, 1.85 GB); a bound of 64 MiB took it to 1.45 GB but dropped arrays the next pass needed (the
step 179 ms). A net whose pass leaves more than that free at once gets less reuse, never wrong results.
``CYNET_REUSE_ARRAYS=0`` in the environment turns the reuse off (every output fresh, as NumPy allocates it); on a
Python without reference counts to rely on (free-threaded builds) it is off. ``CYNET_REUSE_MIN_BYTES=0`` pools every
output, however small: the test suite passes that way too (a check that no layer relies on a fresh array).
"""
import math
import os
import sys
import threading
from collections import OrderedDict

import numpy as np

from cynet._validation import switched_off

DEFAULT_MIN_BYTES = 4 << 20


def _min_bytes_from_environment():
    """``CYNET_REUSE_MIN_BYTES`` as a whole number of bytes >= 0 (digits only, as ``OMP_NUM_THREADS`` is read); unset
    or empty: :data:`DEFAULT_MIN_BYTES`. Anything else is a ValueError naming the variable (``int()`` failed with
    "invalid literal for int() with base 10: ''" for an empty value, and took -5 or '1_0')."""
    setting = os.environ.get("CYNET_REUSE_MIN_BYTES", "").strip()
    if not setting:
        return DEFAULT_MIN_BYTES
    if not (setting.isascii() and setting.isdigit()):
        raise ValueError(f"cynet: CYNET_REUSE_MIN_BYTES must be a whole number of bytes >= 0, got {setting!r}")
    return int(setting)


MIN_BYTES = _min_bytes_from_environment()   # smaller outputs are allocated fresh
MAX_FREE_BYTES = 256 << 20   # after each new allocation, the most the pool keeps of arrays nothing else holds
MAX_BYTES = 2 << 30      # the most the pool keeps allocated, in use or free


def _reference_count_baseline():
    """``sys.getrefcount(kept[i])`` for an array only a list holds (2 on CPython 3.9-3.13)."""
    kept = [np.empty(1)]
    return sys.getrefcount(kept[0])


def _enabled_by_default():
    if switched_off("CYNET_REUSE_ARRAYS"):
        return False
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return gil_enabled is None or gil_enabled()


ENABLED = _enabled_by_default()
_UNSHARED = _reference_count_baseline()


class ArrayPool:
    """Arrays by (shape, dtype), least recently asked-for shape first; each array is free when only the pool holds
    it."""

    def __init__(self):
        self.arrays = OrderedDict()       # (shape, dtype) -> [ndarray, ...]
        self.nbytes = 0
        self._lock = threading.Lock()

    def empty(self, shape, dtype, max_free_bytes, max_bytes):
        key = (shape, dtype)
        with self._lock:
            kept = self.arrays.get(key)
            if kept is None:
                kept = self.arrays[key] = []
            else:
                self.arrays.move_to_end(key)
                for i in range(len(kept)):
                    if sys.getrefcount(kept[i]) == _UNSHARED:      # nothing outside the pool refers to it
                        return kept[i]
            array = np.empty(shape, dtype)
            if self._make_room(array.nbytes, max_free_bytes, max_bytes):
                kept.append(array)
                self.nbytes += array.nbytes
            return array

    def _free_bytes(self):
        total = 0
        for kept in self.arrays.values():
            for i in range(len(kept)):
                if sys.getrefcount(kept[i]) == _UNSHARED:       # the same expression as the baseline's
                    total += kept[i].nbytes
        return total

    def _make_room(self, nbytes, max_free_bytes, max_bytes):
        """Before keeping a new array of ``nbytes`` (in use): drop free arrays, those of the least recently asked-for
        shapes first, until at most ``max_free_bytes`` are free and the total with the new one fits ``max_bytes``;
        whether it does."""
        free = self._free_bytes()
        for key in list(self.arrays):
            if free <= max_free_bytes and self.nbytes + nbytes <= max_bytes:
                break
            kept = self.arrays[key]
            for i in range(len(kept) - 1, -1, -1):
                if free <= max_free_bytes and self.nbytes + nbytes <= max_bytes:
                    break
                if sys.getrefcount(kept[i]) == _UNSHARED:
                    dropped = kept.pop(i).nbytes
                    self.nbytes -= dropped
                    free -= dropped
            if not kept:
                del self.arrays[key]
        return self.nbytes + nbytes <= max_bytes

    def clear(self):
        """Forget every array (those in use stay valid: their holders keep them)."""
        with self._lock:
            self.arrays.clear()
            self.nbytes = 0

    def __len__(self):
        return sum(len(kept) for kept in self.arrays.values())


POOL = ArrayPool()


def _after_fork_in_child():
    """A forked child (a process-pool worker) starts with an empty pool and a fresh lock: the parent's lock may have
    been held by another thread at the fork, and its arrays are the parent's business."""
    POOL.__init__()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def empty(shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` for a layer's output: a pooled one that nothing
    else holds when it is large, else a new one."""
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    if not ENABLED or math.prod(shape) * dtype.itemsize < MIN_BYTES:
        return np.empty(shape, dtype)
    return POOL.empty(shape, dtype, MAX_FREE_BYTES, MAX_BYTES)


def zeros(shape, dtype):
    """:func:`empty`, filled with zeros."""
    array = empty(shape, dtype)
    array.fill(0)
    return array


def like(array):
    """:func:`empty` with the shape and dtype of ``array``."""
    return empty(array.shape, array.dtype)
