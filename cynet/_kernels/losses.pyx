"""Loss kernels: softmax cross-entropy (integer labels or target distributions) and the multiclass SVM (forward and
gradient fused in one call), the softmax alone, mean squared error, and the two halves of the L2 penalty (sum of
squares, gradient strength * W).

Private: only ``cynet.nn.loss`` calls these. Contract of every kernel here:
- arrays are C-contiguous memoryviews of one floating type (float32 or float64), already validated by the caller
  (labels int64 in [0, C), shapes agreeing); outputs and the float64 scratch buffers (``row_loss``, ``partials``) are
  allocated by the caller;
- no allocation, no exception, no Python object inside: the GIL is released for the whole computation;
- the result does not depend on ``n_threads``: the classifiers write one loss per row (each row is computed by one
  thread, start to end) and sum the rows in index order; MSE and the sum of squares cut the flat array into chunks of
  REDUCE_CHUNK elements (a constant, not a function of the thread count), sum each chunk into its own entry of
  ``partials``, then add the partials in order. Every loss sum is accumulated in double precision.

Rows are the unit of parallel work for the classifiers (``prange`` over rows, ``schedule='static'``); below
PARALLEL_MIN_ELEMENTS elements, or with one thread, everything runs on the calling thread.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport fabs, log, log1p
from libc.stdint cimport int64_t

from cynet._kernels._openmp cimport PARALLEL_MIN_ELEMENTS
from cynet._kernels._vecmath cimport exp_neg_f64, exp_f64_for_f32


cdef enum:
    # Elements per partial sum of the flat reductions (MSE, sum of squares): 16 KiB of float32, one L1-sized piece.
    REDUCE_CHUNK = 4096
    # Independent accumulators of the per-row max and sum (one 64-byte vector of float32 wide).
    LANES = 16


def partials_length(Py_ssize_t n):
    """Length of the ``partials`` scratch buffer that ``mse`` and ``penalty_sum`` need for ``n`` elements."""
    return (n + REDUCE_CHUNK - 1) // REDUCE_CHUNK if n > 0 else 1


cdef inline bint _serial(Py_ssize_t work, Py_ssize_t tasks, int n_threads) noexcept nogil:
    return n_threads <= 1 or tasks < 2 or work < PARALLEL_MIN_ELEMENTS


# ---------------------------------------------------------------------------------------------------------------------
# One row of the shifted exponentials: m = max_j s_j;  e_j = exp(s_j - m)  (0 < e_j <= 1, the max gives exactly 1).
# Returns m (as a double). NaN propagates: a NaN score is never the max (unless it is s_0, then m is NaN), and
# exp(NaN - m) is NaN; +inf gives m = +inf and e = exp(inf - inf) = NaN at the infinite entries; -inf gives e_j = 0.
# float32 rows are shifted and exponentiated in double (exp accurate to 2e-10 relative), then rounded once into e.

cdef inline double _row_max(const floating* s, Py_ssize_t C) noexcept nogil:
    # LANES independent running maxima, one per column of a block: an elementwise select the compiler vectorises
    # (exact: the order of a max does not change its value).
    cdef floating acc[LANES]
    cdef floating v, m
    cdef Py_ssize_t j = 0, t
    for t in range(LANES):
        acc[t] = s[0]
    while j + LANES <= C:
        for t in range(LANES):
            v = s[j + t]
            acc[t] = v if v > acc[t] else acc[t]
        j += LANES
    m = acc[0]
    for t in range(1, LANES):
        m = acc[t] if acc[t] > m else m
    while j < C:
        v = s[j]
        m = v if v > m else m
        j += 1
    return m


cdef inline void _row_exp_shifted(const floating* s, floating* e, Py_ssize_t C, double m) noexcept nogil:
    cdef Py_ssize_t j
    cdef double d
    for j in range(C):
        d = <double>s[j] - m                        # <= 0, or NaN
        if floating is float:
            d = -708.0 if d < -708.0 else d         # exp(-708) is 0 in float32; keeps exp_f64_for_f32 in range
            e[j] = <float>exp_f64_for_f32(d)
        else:
            e[j] = exp_neg_f64(-d)


cdef inline double _row_sum(const floating* e, Py_ssize_t C) noexcept nogil:
    # LANES partial sums in double, one per column of a block (vectorisable), then added in a fixed order.
    cdef double acc[LANES]
    cdef double total
    cdef Py_ssize_t j = 0, t
    for t in range(LANES):
        acc[t] = 0
    while j + LANES <= C:
        for t in range(LANES):
            acc[t] += e[j + t]
        j += LANES
    total = 0
    for t in range(LANES):
        total += acc[t]
    while j < C:
        total += e[j]
        j += 1
    return total


cdef inline void _row_scale(floating* e, Py_ssize_t C, double scale) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(C):
        e[j] = <floating>(e[j] * scale)


# ---------------------------------------------------------------------------------------------------------------------
# Softmax cross-entropy of row i, fused forward and gradient:
#   m = max_j s_j,  e_j = exp(s_j - m),  Z = sum_j e_j,  others = sum_{j != y} e_j  (Z = others + e_y)
#   loss_i = lse_i - s_y = (m - s_y) + log(Z),   written  log1p(others)  when s_y = m (then e_y = 1 exactly), which
#            keeps the tiny losses of confident correct rows (others << 1) accurate;
#   dscores_ij = (softmax_ij - [j = y]) / N = e_j / (Z N)  for j != y,   -others / (Z N)  at j = y
#            (1 - p_y is formed as others / Z, not 1 - e_y / Z: no cancellation when p_y is close to 1).

cdef inline double _ce_row(const floating* s, int64_t y, floating* d, Py_ssize_t C, double inv_n) noexcept nogil:
    cdef double m = _row_max(s, C)
    cdef double ey, others, total, scale
    _row_exp_shifted(s, d, C, m)
    ey = d[y]
    d[y] = 0
    others = _row_sum(d, C)
    total = others + ey
    scale = inv_n / total
    _row_scale(d, C, scale)
    d[y] = <floating>(-others * scale)
    if <double>s[y] == m:
        return log1p(others) + (ey - 1.0)          # ey - 1 is 0, or NaN when m is NaN or +inf (propagates)
    return (m - <double>s[y]) + log(total)


def softmax_cross_entropy(const floating[:, ::1] scores, const int64_t[::1] labels, floating[:, ::1] dscores,
                          double[::1] row_loss, int n_threads):
    """Mean softmax cross-entropy of ``scores`` (N, C) with ``labels`` (N,); writes the gradient of the mean into
    ``dscores`` (N, C) and each row's loss into ``row_loss`` (N,). Returns the mean (a float)."""
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1], i
    cdef double inv_n = 1.0 / N, total = 0
    with nogil:
        if _serial(N * C, N, n_threads):
            for i in range(N):
                row_loss[i] = _ce_row(&scores[i, 0], labels[i], &dscores[i, 0], C, inv_n)
        else:
            for i in prange(N, schedule="static", num_threads=n_threads):
                row_loss[i] = _ce_row(&scores[i, 0], labels[i], &dscores[i, 0], C, inv_n)
        for i in range(N):
            total += row_loss[i]
    return total * inv_n


# Softmax cross-entropy of row i against a target distribution t (PyTorch's class-probability targets: soft labels,
# label smoothing, mixup; the t_j need not sum to 1):
#   m = max_j s_j,  e_j = exp(s_j - m),  Z = sum_j e_j = ones + others  (ones: the entries equal to m, e_j = 1)
#   log Z = log1p((ones - 1) + others)   (no loss of the small others next to 1, as in _ce_row)
#   loss_i = -sum_j t_j log p_ij = sum_{j: t_j != 0} t_j ((m - s_j) + log Z)   (a zero target adds 0, even at
#            s_j = -inf)
#   dscores_ij = (T p_ij - t_j) / N,   T = sum_j t_j,  p_ij = e_j / Z
# Sums in double; NaN or +inf scores give NaN as in _ce_row.

cdef inline double _soft_ce_row(const floating* s, const floating* t, floating* d, Py_ssize_t C,
                                double inv_n) noexcept nogil:
    cdef double m = _row_max(s, C)
    cdef double poison = m - m          # 0; NaN when the maximum is +inf or NaN: the whole row NaN, as in _ce_row
    cdef double ones = 0, others = 0, total_t = 0, loss = 0, log_z, scale, tj
    cdef Py_ssize_t j
    _row_exp_shifted(s, d, C, m)
    for j in range(C):
        if <double>s[j] == m:
            ones += 1
        else:
            others += d[j]
    log_z = log1p((ones - 1) + others)
    for j in range(C):
        tj = t[j]
        total_t += tj
        if tj != 0:
            loss += tj * ((m - <double>s[j]) + log_z)
    scale = total_t * inv_n / (ones + others) + poison
    for j in range(C):
        d[j] = <floating>(d[j] * scale - <double>t[j] * inv_n)
    return loss + poison


def softmax_cross_entropy_soft(const floating[:, ::1] scores, const floating[:, ::1] targets,
                               floating[:, ::1] dscores, double[::1] row_loss, int n_threads):
    """Mean softmax cross-entropy of ``scores`` (N, C) against target distributions ``targets`` (N, C); writes the
    gradient of the mean into ``dscores`` (N, C) and each row's loss into ``row_loss`` (N,). Returns the mean."""
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1], i
    cdef double inv_n = 1.0 / N, total = 0
    if targets.shape[0] != N or targets.shape[1] != C:
        raise ValueError(f"cynet._kernels.losses.softmax_cross_entropy_soft: targets ({targets.shape[0]}, "
                         f"{targets.shape[1]}) do not match scores ({N}, {C})")
    with nogil:
        if _serial(N * C, N, n_threads):
            for i in range(N):
                row_loss[i] = _soft_ce_row(&scores[i, 0], &targets[i, 0], &dscores[i, 0], C, inv_n)
        else:
            for i in prange(N, schedule="static", num_threads=n_threads):
                row_loss[i] = _soft_ce_row(&scores[i, 0], &targets[i, 0], &dscores[i, 0], C, inv_n)
        for i in range(N):
            total += row_loss[i]
    return total * inv_n


# Softmax of row i:  p_ij = exp(s_ij - m_i) / sum_k exp(s_ik - m_i)

cdef inline void _softmax_row(const floating* s, floating* p, Py_ssize_t C) noexcept nogil:
    cdef double m = _row_max(s, C)
    _row_exp_shifted(s, p, C, m)
    _row_scale(p, C, 1.0 / _row_sum(p, C))


def softmax(const floating[:, ::1] scores, floating[:, ::1] out, int n_threads):
    """Row-wise softmax of ``scores`` (N, C) into ``out`` (N, C)."""
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1], i
    with nogil:
        if _serial(N * C, N, n_threads):
            for i in range(N):
                _softmax_row(&scores[i, 0], &out[i, 0], C)
        else:
            for i in prange(N, schedule="static", num_threads=n_threads):
                _softmax_row(&scores[i, 0], &out[i, 0], C)


# ---------------------------------------------------------------------------------------------------------------------
# Multiclass SVM (Weston-Watkins hinge, CS231n) of row i, fused forward and gradient, with delta the margin:
#   m_j = s_j - s_y + delta  (in double);   loss_i = sum_{j != y} max(0, m_j)
#   dscores_ij = [m_j > 0] / N  for j != y,   dscores_iy = -(number of j != y with m_j > 0) / N
# NaN margins (a NaN score, or inf - inf) make loss_i NaN and put NaN in dscores at that entry and at y.

cdef inline double _svm_row(const floating* s, int64_t y, floating* d, Py_ssize_t C, double delta,
                            double inv_n, double n_rows) noexcept nogil:
    cdef double sy = s[y], margin, loss = 0
    cdef floating step = <floating>inv_n, zero = 0
    cdef Py_ssize_t j, active = 0
    cdef bint has_nan = False
    for j in range(C):
        margin = (<double>s[j] - sy) + delta
        if j == y:
            continue
        if margin > 0:
            loss += margin
            active += 1
            d[j] = step
        elif margin <= 0:
            d[j] = zero
        else:                                       # NaN
            loss += margin
            has_nan = True
            d[j] = <floating>margin
    if has_nan:
        d[y] = <floating>(loss * 0.0)               # NaN
    else:
        d[y] = <floating>(-(<double>active) / n_rows)   # divided, not times inv_n: the correctly rounded k/N
    return loss


def multiclass_svm(const floating[:, ::1] scores, const int64_t[::1] labels, double delta,
                   floating[:, ::1] dscores, double[::1] row_loss, int n_threads):
    """Mean multiclass hinge loss of ``scores`` (N, C) with ``labels`` (N,) and margin ``delta``; writes the gradient
    of the mean into ``dscores`` and each row's loss into ``row_loss``. Returns the mean (a float)."""
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1], i
    cdef double inv_n = 1.0 / N, total = 0
    with nogil:
        if _serial(N * C, N, n_threads):
            for i in range(N):
                row_loss[i] = _svm_row(&scores[i, 0], labels[i], &dscores[i, 0], C, delta, inv_n, <double>N)
        else:
            for i in prange(N, schedule="static", num_threads=n_threads):
                row_loss[i] = _svm_row(&scores[i, 0], labels[i], &dscores[i, 0], C, delta, inv_n, <double>N)
        for i in range(N):
            total += row_loss[i]
    return total * inv_n


# ---------------------------------------------------------------------------------------------------------------------
# Mean squared error over total_n elements, one chunk of n of them:
#   loss = (1/total_n) sum_k (p_k - t_k)^2;   dp_k = 2 (p_k - t_k) / total_n   (differences formed in double)

cdef inline double _mse_chunk(const floating* p, const floating* t, floating* dp, Py_ssize_t n,
                              double total_n) noexcept nogil:
    cdef Py_ssize_t k = 0
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, r0, r1, r2, r3
    for k in range(n):
        dp[k] = <floating>(2.0 * (<double>p[k] - <double>t[k]) / total_n)   # 2 d / n: one rounding (2 d is exact)
    k = 0
    while k + 4 <= n:
        r0 = <double>p[k] - <double>t[k]
        r1 = <double>p[k + 1] - <double>t[k + 1]
        r2 = <double>p[k + 2] - <double>t[k + 2]
        r3 = <double>p[k + 3] - <double>t[k + 3]
        a0 += r0 * r0
        a1 += r1 * r1
        a2 += r2 * r2
        a3 += r3 * r3
        k += 4
    while k < n:
        r0 = <double>p[k] - <double>t[k]
        a0 += r0 * r0
        k += 1
    return (a0 + a1) + (a2 + a3)


def mse(const floating[::1] pred, const floating[::1] target, floating[::1] dpred, double[::1] partials,
        int n_threads):
    """Mean of (pred - target)^2 over the n elements; writes 2 (pred - target) / n into ``dpred``. ``partials`` has
    ``partials_length(n)`` entries. Returns the mean (a float)."""
    cdef Py_ssize_t n = pred.shape[0], n_chunks = (n + REDUCE_CHUNK - 1) // REDUCE_CHUNK, c, k0, length
    cdef double total = 0
    with nogil:
        if _serial(n, n_chunks, n_threads):
            for c in range(n_chunks):
                k0 = c * REDUCE_CHUNK
                length = n - k0 if n - k0 < REDUCE_CHUNK else REDUCE_CHUNK
                partials[c] = _mse_chunk(&pred[k0], &target[k0], &dpred[k0], length, <double>n)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                k0 = c * REDUCE_CHUNK
                length = n - k0 if n - k0 < REDUCE_CHUNK else REDUCE_CHUNK
                partials[c] = _mse_chunk(&pred[k0], &target[k0], &dpred[k0], length, <double>n)
        for c in range(n_chunks):
            total += partials[c]
    return total / n


# ---------------------------------------------------------------------------------------------------------------------
# L2 penalty, the two halves:  sum_k w_k^2  (in double)  and  grad_k = lam * w_k  (fresh)  or  grad_k += lam * w_k,
# with lam rounded to w's type first, so that the gradient equals NumPy's  grad + np.float32(lam) * w  bit for bit.

cdef inline double _sum_squares_chunk(const floating* w, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k = 0
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, v0, v1, v2, v3
    while k + 4 <= n:
        v0 = w[k]
        v1 = w[k + 1]
        v2 = w[k + 2]
        v3 = w[k + 3]
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        k += 4
    while k < n:
        v0 = w[k]
        a0 += v0 * v0
        k += 1
    return (a0 + a1) + (a2 + a3)


cdef inline void _l2_grad_chunk(const floating* w, floating lam, floating* g, Py_ssize_t n,
                                bint accumulate) noexcept nogil:
    cdef Py_ssize_t k
    if accumulate:
        for k in range(n):
            g[k] = g[k] + lam * w[k]
    else:
        for k in range(n):
            g[k] = lam * w[k]


# ---------------------------------------------------------------------------------------------------------------------
# L1 penalty, the two halves:  sum_k |w_k|  (in double)  and  grad_k = lam * sign(w_k)  (fresh)  or
# grad_k += lam * sign(w_k), sign(0) = 0 (the subgradient NumPy's np.sign gives) and NaN for NaN, lam rounded to w's
# type first, so that the gradient equals NumPy's  grad + np.float32(lam) * np.sign(w)  bit for bit. The drivers
# (penalty_sum, penalty_grad) below serve both penalties.

cdef inline double _sum_abs_chunk(const floating* w, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k = 0
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0
    while k + 4 <= n:
        a0 += fabs(w[k])
        a1 += fabs(w[k + 1])
        a2 += fabs(w[k + 2])
        a3 += fabs(w[k + 3])
        k += 4
    while k < n:
        a0 += fabs(w[k])
        k += 1
    return (a0 + a1) + (a2 + a3)


cdef inline floating _sign(floating v) noexcept nogil:
    # 1, -1, 0 for +-0, and NaN (v itself) for NaN
    return <floating>1 if v > 0 else (<floating>-1 if v < 0 else v * 0 if v != v else <floating>0)


cdef inline void _l1_grad_chunk(const floating* w, floating lam, floating* g, Py_ssize_t n,
                                bint accumulate) noexcept nogil:
    cdef Py_ssize_t k
    if accumulate:
        for k in range(n):
            g[k] = g[k] + lam * _sign(w[k])
    else:
        for k in range(n):
            g[k] = lam * _sign(w[k])


# The drivers of both penalties: ``power`` 2 (L2: w^2 and lam * w) or 1 (L1: |w| and lam * sign(w)); the chunk
# function is chosen once per chunk of REDUCE_CHUNK values, and the chunks' sums are added in order (the same bits for
# any thread count).

def penalty_sum(const floating[::1] w, int power, double[::1] partials, int n_threads):
    """sum_k w_k^2 (power 2) or sum_k |w_k| (power 1), accumulated in double; ``partials`` has
    ``partials_length(n)`` entries."""
    cdef Py_ssize_t n = w.shape[0], n_chunks = (n + REDUCE_CHUNK - 1) // REDUCE_CHUNK, c, k0, length
    cdef double total = 0
    if power != 1 and power != 2:
        raise ValueError(f"penalty_sum: power must be 1 or 2, got {power}")
    with nogil:
        if _serial(n, n_chunks, n_threads):
            for c in range(n_chunks):
                k0 = c * REDUCE_CHUNK
                length = n - k0 if n - k0 < REDUCE_CHUNK else REDUCE_CHUNK
                partials[c] = _sum_squares_chunk(&w[k0], length) if power == 2 else _sum_abs_chunk(&w[k0], length)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                k0 = c * REDUCE_CHUNK
                length = n - k0 if n - k0 < REDUCE_CHUNK else REDUCE_CHUNK
                partials[c] = _sum_squares_chunk(&w[k0], length) if power == 2 else _sum_abs_chunk(&w[k0], length)
        for c in range(n_chunks):
            total += partials[c]
    return total


cdef inline void _penalty_grad_chunk(const floating* w, floating lam, floating* g, Py_ssize_t n, bint accumulate,
                                     int power) noexcept nogil:
    if power == 2:
        _l2_grad_chunk(w, lam, g, n, accumulate)
    else:
        _l1_grad_chunk(w, lam, g, n, accumulate)


def penalty_grad(const floating[::1] w, int power, double strength, floating[::1] grad, bint accumulate,
                 int n_threads):
    """grad = strength * w (power 2) or strength * sign(w) (power 1) when ``accumulate`` is False (overwrite), else
    grad += the same."""
    cdef Py_ssize_t n = w.shape[0], n_chunks = (n + REDUCE_CHUNK - 1) // REDUCE_CHUNK, c, k0, length
    cdef floating lam = <floating>strength
    if power != 1 and power != 2:
        raise ValueError(f"penalty_grad: power must be 1 or 2, got {power}")
    with nogil:
        if _serial(n, n_chunks, n_threads):
            _penalty_grad_chunk(&w[0], lam, &grad[0], n, accumulate, power)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                k0 = c * REDUCE_CHUNK
                length = n - k0 if n - k0 < REDUCE_CHUNK else REDUCE_CHUNK
                _penalty_grad_chunk(&w[k0], lam, &grad[k0], length, accumulate, power)
