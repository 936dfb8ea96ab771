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
from libc.stdint cimport int32_t

from cynet._kernels._openmp cimport PARALLEL_MIN_ELEMENTS


def maxout_forward(const floating[:, :, ::1] x, floating[:, ::1] y, int32_t[:, ::1] idx, int n_threads):
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], D = x.shape[2], m, p, j
    cdef int nt = 1 if M * K * D < PARALLEL_MIN_ELEMENTS else n_threads
    cdef floating v, best
    cdef bint take
    with nogil:
        for m in prange(M, schedule='static', num_threads=nt):
            for j in range(D):
                y[m, j] = x[m, 0, j]
                idx[m, j] = 0
            for p in range(1, K):
                for j in range(D):
                    v = x[m, p, j]
                    best = y[m, j]
                    take = (v > best) or (v != v and best == best)
                    y[m, j] = v if take else best
                    idx[m, j] = <int32_t>p if take else idx[m, j]


def maxout_backward(const floating[:, ::1] dout, const int32_t[:, ::1] idx, floating[:, :, ::1] dx, int n_threads):
    cdef Py_ssize_t M = dx.shape[0], K = dx.shape[1], D = dx.shape[2], m, p, j
    cdef int nt = 1 if M * K * D < PARALLEL_MIN_ELEMENTS else n_threads
    with nogil:
        for m in prange(M, schedule='static', num_threads=nt):
            for p in range(K):
                for j in range(D):
                    dx[m, p, j] = dout[m, j] if idx[m, j] == p else 0
