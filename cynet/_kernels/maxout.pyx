"""Maxout kernels (Goodfellow et al., 2013): each output unit is the maximum of k linear pieces.

Layout, piece-major: a row of the input holds k blocks of D values, block p being piece p of every unit,

    x[m, p*D + j] = piece p of unit j          (x viewed as (M, k, D))
    y[m, j] = max_p x[m, p, j],  idx[m, j] = the first p reaching the maximum (NaN counts as maximal, like np.argmax)

so the maximum runs over k contiguous slabs and vectorises across units. A linear layer producing a maxout input
orders its k*D output columns the same way (the columns of piece p are p*D ... p*D + D - 1).

Backward: the gradient flows only into the winning piece, dx[m, p, j] = dout[m, j] if idx[m, j] == p else 0.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, uint32_t

from cynet._kernels._openmp cimport split_length
from cynet._kernels._stream cimport (STREAM_BLOCK, stream_block, stream_blocks, stream_fence, stream_head,
                                     stream_store)


cdef extern from *:
    """
    /* The int32 indices streamed through the float32 path: its loads and non-temporal stores move bits unchanged. */
    #define cynet_stream_store_i32(dst, src, n) cynet_stream_store_f32((float*)(dst), (const float*)(src), (n))
    """
    void cynet_stream_store_i32(int32_t* dst, const int32_t* src, Py_ssize_t n) noexcept nogil


# y[j] = max_p x[p * D + j], idx[j] = the first p reaching it (a NaN piece wins), for j < n: x points at unit 0 of
# piece 0 of one row, y and idx at the n outputs (the row's units offset by the caller).
cdef inline void _max_of_pieces(const floating* x, floating* y, int32_t* idx, Py_ssize_t n, Py_ssize_t K,
                                Py_ssize_t D) noexcept nogil:
    cdef Py_ssize_t p, j
    cdef floating v, best
    cdef int32_t winner
    cdef bint take
    if K == 2:                                       # the usual count: one pass, no second round through y and idx
        for j in range(n):
            best = x[j]
            v = x[D + j]
            take = (v > best) or (v != v and best == best)
            y[j] = v if take else best
            idx[j] = 1 if take else 0
        return
    for j in range(n):
        y[j] = x[j]
        idx[j] = 0
    for p in range(1, K):
        for j in range(n):
            v = x[p * D + j]
            best = y[j]
            winner = idx[j]
            take = (v > best) or (v != v and best == best)
            y[j] = v if take else best
            idx[j] = <int32_t>p if take else winner


# y[m, j] = max_p x[m, p, j], idx[m, j] = first argmax, over `rows` rows of K pieces x D units. With `stream`, y and
# idx go to memory with non-temporal stores: each row's units in blocks of STREAM_BLOCK computed into L1 buffers, the
# blocks starting on 64-byte lines of y (idx's lines too when both arrays share their offset in a line, as NumPy's
# allocations of one size do; otherwise idx's partial lines are written twice, the same values).
cdef void _maxout_rows_forward(const floating* x, floating* y, int32_t* idx, Py_ssize_t rows, Py_ssize_t K,
                               Py_ssize_t D, bint stream) noexcept nogil:
    cdef floating y_buffer[STREAM_BLOCK]
    cdef int32_t idx_buffer[STREAM_BLOCK]
    cdef Py_ssize_t m, b, head, j, n
    cdef const floating* xr
    cdef floating* yr
    cdef int32_t* ir
    for m in range(rows):
        xr = x + m * K * D
        yr = y + m * D
        ir = idx + m * D
        if not stream:
            _max_of_pieces(xr, yr, ir, D, K, D)
            continue
        head = stream_head(yr, D)
        _max_of_pieces(xr, yr, ir, head, K, D)
        for b in range(stream_blocks(head, D)):
            j = stream_block(head, b, D, &n)
            _max_of_pieces(xr + j, y_buffer, idx_buffer, n, K, D)
            stream_store(yr + j, y_buffer, n)
            cynet_stream_store_i32(ir + j, idx_buffer, n)
    if stream:
        stream_fence()


cdef inline void _piece_span(const floating* dout, const int32_t* idx, int32_t p, floating* dx,
                             Py_ssize_t n) noexcept nogil:
    """dx[j] = dout[j] if idx[j] == p else 0 for j < n."""
    cdef Py_ssize_t j
    cdef floating g
    for j in range(n):
        g = dout[j]                  # loaded for every j: a load under the condition is a branch (or a masked load)
        dx[j] = g if idx[j] == p else 0


cdef inline void _two_pieces_span(const floating* dout, const int32_t* idx, floating* dx0, floating* dx1,
                                  Py_ssize_t n) noexcept nogil:
    """dx0[j] = dout[j] if idx[j] == 0 else 0 and dx1[j] = dout[j] if idx[j] == 1 else 0 for j < n: both pieces of
    two-piece units from one pass over dout and the indices."""
    cdef Py_ssize_t j
    cdef floating g
    cdef int32_t w
    for j in range(n):
        g = dout[j]
        w = idx[j]
        dx0[j] = g if w == 0 else 0
        dx1[j] = g if w == 1 else 0


# The number of idx[j] outside [0, K) for j < n (one unsigned compare: negative values wrap above K).
cdef inline Py_ssize_t _count_out_of_range(const int32_t* idx, Py_ssize_t n, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t j, bad = 0
    for j in range(n):
        bad += <uint32_t>idx[j] >= <uint32_t>K
    return bad


# dx[m, p, j] = dout[m, j] if idx[m, j] == p else 0, over `rows` rows; with `stream`, dx is written with non-temporal
# stores (through an L1 buffer, whole lines: see _stream.pxd). Returns the number of indices outside [0, K), counted
# row by row while the row is in cache (the caller raises): a separate pass in Python (indices.min(), .max()) had
# read the whole index array twice more, a third of the backward's time at (4096, 2048) units.
cdef Py_ssize_t _maxout_rows_backward(const floating* dout, const int32_t* idx, floating* dx, Py_ssize_t rows,
                                      Py_ssize_t K, Py_ssize_t D, bint stream) noexcept nogil:
    cdef floating buffer[STREAM_BLOCK]
    cdef floating buffer1[STREAM_BLOCK]
    cdef Py_ssize_t m, p, b, head, j, n, bad = 0
    cdef floating* out
    for m in range(rows):
        bad += _count_out_of_range(idx + m * D, D, K)
        out = dx + m * K * D
        if K == 2:                                   # two pieces (the usual count): both rows from one pass
            if not stream:
                _two_pieces_span(dout + m * D, idx + m * D, out, out + D, D)
                continue
            head = stream_head(out, D)
            if head == stream_head(out + D, D):      # streamed when both rows' lines sit at the same offsets
                _two_pieces_span(dout + m * D, idx + m * D, out, out + D, head)
                for b in range(stream_blocks(head, D)):
                    j = stream_block(head, b, D, &n)
                    _two_pieces_span(dout + m * D + j, idx + m * D + j, buffer, buffer1, n)
                    stream_store(out + j, buffer, n)
                    stream_store(out + D + j, buffer1, n)
                continue
        for p in range(K):
            out = dx + (m * K + p) * D
            if not stream:
                _piece_span(dout + m * D, idx + m * D, <int32_t>p, out, D)
                continue
            head = stream_head(out, D)
            _piece_span(dout + m * D, idx + m * D, <int32_t>p, out, head)
            for b in range(stream_blocks(head, D)):
                j = stream_block(head, b, D, &n)
                _piece_span(dout + m * D + j, idx + m * D + j, <int32_t>p, buffer, n)
                stream_store(out + j, buffer, n)
    if stream:
        stream_fence()
    return bad


def maxout_forward(const floating[:, :, ::1] x, floating[:, ::1] y, int32_t[:, ::1] idx, bint stream,
                   int n_threads):
    """y and the winning pieces idx from x (M, K, D); ``stream``: y and idx written with non-temporal stores."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], D = x.shape[2], c, lo
    cdef Py_ssize_t chunk = split_length(M, M * K * D, n_threads, 1)
    cdef Py_ssize_t n_chunks = (M + chunk - 1) // chunk
    if M == 0 or D == 0:
        return
    with nogil:
        for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
            lo = c * chunk
            _maxout_rows_forward(&x[lo, 0, 0], &y[lo, 0], &idx[lo, 0], min(chunk, M - lo), K, D, stream)


def maxout_backward(const floating[:, ::1] dout, const int32_t[:, ::1] idx, floating[:, :, ::1] dx, bint stream,
                    int n_threads):
    """dx from dout and the winning pieces; returns the number of indices outside [0, K) (0 for valid input)."""
    cdef Py_ssize_t M = dx.shape[0], K = dx.shape[1], D = dx.shape[2], c, lo
    cdef Py_ssize_t chunk = split_length(M, M * K * D, n_threads, 1)
    cdef Py_ssize_t n_chunks = (M + chunk - 1) // chunk
    cdef Py_ssize_t bad = 0
    if M == 0 or D == 0:
        return 0
    with nogil:
        for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
            lo = c * chunk
            bad += _maxout_rows_backward(&dout[lo, 0], &idx[lo, 0], &dx[lo, 0, 0], min(chunk, M - lo), K, D, stream)
    return bad
