"""Memory passes that do no arithmetic worth the name: the bandwidth floors the benchmarks hold the kernels against.

Private: ``bench/settings.py`` (the floors) and the tests call these. A kernel that reads some arrays and writes others
cannot beat the time it takes to move those bytes; how fast the bytes move depends on how they are written:

- ``stream_copy`` / ``stream_add``: dst = src / dst = a + b with non-temporal stores (``_stream.pxd``): each written
  byte crosses to memory once. An ordinary store into a line that is not in cache reads the line first, so
  ``np.copyto`` moves 3 bytes per byte copied where a streaming copy moves 2. cynet's elementwise and normalisation
  kernels stream outputs of 32 MiB or more, so for those this is the floor to compare with; in cache (small outputs)
  ordinary stores are faster, and the benchmarks take the faster of the two floors.
- ``count_nonzero``: how many values are not zero: a read of every byte and one comparison per value, nothing
  written; the read pass of a two-pass kernel (a batch norm reads x for its statistics before its output pass), so
  ``count_nonzero`` + ``stream_copy`` is the floor of any kernel that must read its input twice out of cache.
- ``add_in_place``: targets[k, i] += source[i] for every row k: an in-place update that reads k + 1 arrays and writes k
  back into lines it has just read (no read for ownership), the traffic of a fused optimiser step (SGD with momentum:
  p and the velocity updated, g read; Adam: p, m and v).

Threads split the flat range into chunks starting on 64-byte lines of the written array (``_openmp.span_start``), as
the elementwise kernels do; every value is one IEEE addition (or a copy), so the result never depends on the thread
count. No allocation, no exception, the GIL released.
"""
from cython cimport floating
from cython.parallel cimport prange

from cynet._kernels._openmp cimport CHUNK_ALIGN, n_spans, span_start, span_length, split_length
from cynet._kernels._stream cimport (STREAM_BLOCK, stream_block, stream_blocks, stream_fence, stream_head,
                                     stream_store)

cdef enum:
    # Values of each row per step of add_in_place with a row count other than two or three: the source's block is read
    # from memory once and from L1 for the other rows (2 KB of float32 per row).
    IN_PLACE_BLOCK = 512
    # Values per int32 count in count_nonzero (far below 2**31).
    COUNT_BLOCK = 1 << 20


# dst[i] = src[i]: whole 64-byte lines of dst with non-temporal stores straight from the loads.
cdef void _copy_span(const floating* src, floating* dst, Py_ssize_t n) noexcept nogil:
    stream_store(dst, src, n)
    stream_fence()


# dst[i] = a[i] + b[i]: through an L1 buffer of STREAM_BLOCK values, streamed out, as cynet's kernels write.
cdef void _add_span(const floating* a, const floating* b, floating* dst, Py_ssize_t n) noexcept nogil:
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t head = stream_head(dst, n), blk, start, m, i
    for i in range(head):
        dst[i] = a[i] + b[i]
    for blk in range(stream_blocks(head, n)):
        start = stream_block(head, blk, n, &m)
        for i in range(m):
            buffer[i] = a[start + i] + b[start + i]
        stream_store(dst + start, buffer, m)
    stream_fence()


# targets[k, i] += source[i] for i in [lo, lo + n): for two or three rows (the optimiser steps' counts) one loop over
# i updating every row (each array one sequential stream, as a fused step walks them), for other counts blocks of
# IN_PLACE_BLOCK values of each row in turn.
cdef void _add_in_place_span(floating* targets, Py_ssize_t rows, Py_ssize_t stride, const floating* source,
                             Py_ssize_t lo, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t start = lo, stop, k, i
    cdef floating g
    cdef floating* row
    cdef floating* r0 = targets
    cdef floating* r1 = targets + stride
    cdef floating* r2 = targets + 2 * stride
    if rows == 2:
        for i in range(lo, lo + n):
            g = source[i]
            r0[i] = r0[i] + g
            r1[i] = r1[i] + g
    elif rows == 3:
        for i in range(lo, lo + n):
            g = source[i]
            r0[i] = r0[i] + g
            r1[i] = r1[i] + g
            r2[i] = r2[i] + g
    else:
        while start < lo + n:
            stop = min(start + IN_PLACE_BLOCK, lo + n)
            for k in range(rows):
                row = targets + k * stride
                for i in range(start, stop):
                    row[i] = row[i] + source[i]
            start = stop


# The number of values x[i] != 0 in [0, n): in int32 lanes over blocks of COUNT_BLOCK values (the compiler's vectors
# of counts stay 32-bit: a 64-bit count per lane widened every comparison), added up as Py_ssize_t.
cdef Py_ssize_t _count_span(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t total = 0, start = 0, stop, i
    cdef int count
    while start < n:
        stop = min(start + COUNT_BLOCK, n)
        count = 0
        for i in range(start, stop):
            count = count + (x[i] != 0)
        total += count
        start = stop
    return total


cdef void _streamed_pass(const floating* a, const floating* b, floating* dst, Py_ssize_t n,
                         int n_threads) noexcept nogil:
    """dst = a (b NULL) or a + b over n values, in chunks starting on 64-byte lines of dst."""
    cdef Py_ssize_t chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    cdef Py_ssize_t head = stream_head(dst, n), c, lo, m
    for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=max(1, n_threads)):
        lo = span_start(c, head, chunk, n)
        m = span_length(c, head, chunk, n)
        if b == NULL:
            _copy_span(a + lo, dst + lo, m)
        else:
            _add_span(a + lo, b + lo, dst + lo, m)


def stream_copy(const floating[::1] src, floating[::1] dst, int n_threads):
    """dst = src over flat contiguous arrays of equal length, with non-temporal stores."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError(f"cynet._kernels.memory.stream_copy: dst holds {dst.shape[0]} values, src {src.shape[0]}")
    if src.shape[0]:
        with nogil:
            _streamed_pass(&src[0], <const floating*>NULL, &dst[0], src.shape[0], n_threads)


def stream_add(const floating[::1] a, const floating[::1] b, floating[::1] dst, int n_threads):
    """dst = a + b over flat contiguous arrays of equal length, with non-temporal stores."""
    cdef Py_ssize_t n = a.shape[0]
    if b.shape[0] != n or dst.shape[0] != n:
        raise ValueError(f"cynet._kernels.memory.stream_add: lengths {n}, {b.shape[0]} and {dst.shape[0]} differ")
    if n:
        with nogil:
            _streamed_pass(&a[0], &b[0], &dst[0], n, n_threads)


def count_nonzero(const floating[::1] x, int n_threads):
    """How many values of a flat contiguous array are not zero (NaN counts): each byte read once, nothing written.
    An exact integer whatever the thread count."""
    cdef Py_ssize_t n = x.shape[0], chunk, head, c, lo, m, total = 0
    if n == 0:
        return 0
    chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    head = stream_head(&x[0], n)
    with nogil:
        for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=max(1, n_threads)):
            lo = span_start(c, head, chunk, n)
            m = span_length(c, head, chunk, n)
            total += _count_span(&x[lo], m)
    return total


def add_in_place(floating[:, ::1] targets, const floating[::1] source, int n_threads):
    """targets[k] += source for every row k of a (rows, n) array, source of length n; ordinary stores."""
    cdef Py_ssize_t rows = targets.shape[0], n = source.shape[0], chunk, head, c, lo, m
    if targets.shape[1] != n:
        raise ValueError(f"cynet._kernels.memory.add_in_place: rows of {targets.shape[1]} values, source {n}")
    if rows == 0 or n == 0:
        return
    chunk = split_length(n, rows * n, n_threads, CHUNK_ALIGN)
    head = stream_head(&targets[0, 0], n)
    with nogil:
        for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=max(1, n_threads)):
            lo = span_start(c, head, chunk, n)
            m = span_length(c, head, chunk, n)
            _add_in_place_span(&targets[0, 0], rows, n, &source[0], lo, m)
