"""Optimiser update kernels: one fused pass per update rule (SGD, AdaGrad, RMSProp, Adam/AdamW).

Private: only ``cynet.optim`` calls these. Each kernel reads the parameter p, its gradient g and the rule's state, and
writes p and the state, element by element in a single pass: no temporaries. The formulas and their operation order
are PyTorch's (``torch/optim/*.py``, single-tensor path, the CPU default), so float64 results agree with
``torch.optim`` to the last bit or two (PyTorch's vectorised ``add(alpha=)`` and ``lerp`` use fused multiply-adds; this
build keeps every product and sum separately rounded, ``-ffp-contract=off``).

Contract of every kernel here:
- arrays are flat C-contiguous memoryviews of one floating type (float32 or float64) and equal length, already
  validated by the caller (the wrappers re-check the lengths, which costs nothing and keeps memory safe);
- arithmetic is in the arrays' precision: the double scalars the caller passes (learning rate, bias corrections
  computed in Python) are rounded once to that precision, as PyTorch rounds a Python scalar to the tensor's dtype;
- no allocation, no exception, no Python object inside: the GIL is released for the whole update;
- elementwise, so the result does not depend on ``n_threads``: the flat range is cut into contiguous spans, the
  values before the parameter's first 64-byte line and then chunks from there (one serial chunk below
  PARALLEL_MIN_ELEMENTS), each a plain loop.

Per-element notation: d is the gradient after L2 weight decay, ``d = g + wd * p`` (``d = g`` when wd is 0: PyTorch
skips the add, which matters for p = inf or NaN).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

from cynet._kernels._openmp cimport CHUNK_ALIGN, n_spans, span_start, span_length, split_length
from cynet._kernels._stream cimport stream_head


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline Py_ssize_t _n_chunks(Py_ssize_t n, Py_ssize_t chunk) noexcept nogil:
    return (n + chunk - 1) // chunk


def _check_lengths(str rule, Py_ssize_t n, lengths):
    for name, m in lengths:
        if m != n:
            raise ValueError(f"cynet._kernels.optim.{rule}: {name} has {m} elements, the parameter {n}")


# ---------------------------------------------------------------------------------------------------------------------
# SGD (PyTorch's convention: the learning rate multiplies the whole velocity):
#   momentum == 0:  p = p - lr * d
#   momentum  > 0:  b = d on the first step, else b = mu * b + (1 - dampening) * d
#                   p = p - lr * (d + mu * b)   (Nesterov)    or    p = p - lr * b
# PyTorch's order: b = (b * mu) + (1 - dampening) * d;  p = p + (-lr) * step.

cdef void _sgd_block(floating* p, const floating* g, floating* b, Py_ssize_t n, floating neg_lr, floating wd,
                     bint has_wd, floating mu, floating one_minus_damp, bint has_momentum, bint first,
                     bint nesterov) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating d, v
    if not has_momentum:
        for i in range(n):
            d = g[i]
            if has_wd:
                d = d + wd * p[i]
            p[i] = p[i] + neg_lr * d
    elif first:
        for i in range(n):
            d = g[i]
            if has_wd:
                d = d + wd * p[i]
            b[i] = d
            if nesterov:
                d = d + mu * d
            p[i] = p[i] + neg_lr * d
    else:
        for i in range(n):
            d = g[i]
            if has_wd:
                d = d + wd * p[i]
            v = b[i] * mu + one_minus_damp * d
            b[i] = v
            if nesterov:
                d = d + mu * v
            else:
                d = v
            p[i] = p[i] + neg_lr * d


def sgd_update(floating[::1] param, const floating[::1] grad, floating[::1] momentum_buffer, double lr,
               double weight_decay, double momentum, double dampening, bint nesterov, bint first_step,
               int n_threads):
    """One SGD step in place. ``momentum_buffer`` is ignored (any array of the parameter's length, e.g. the
    parameter itself) when momentum is 0; ``first_step`` initialises it with the gradient, as PyTorch does."""
    cdef Py_ssize_t n = param.shape[0]
    cdef bint has_momentum = momentum != 0
    _check_lengths("sgd_update", n, [("grad", grad.shape[0])]
                   + ([("momentum_buffer", momentum_buffer.shape[0])] if has_momentum else []))
    cdef Py_ssize_t chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    cdef Py_ssize_t c, lo, m, head
    cdef floating neg_lr = <floating>(-lr), wd = <floating>weight_decay, mu = <floating>momentum
    cdef floating one_minus_damp = <floating>(1.0 - dampening)
    cdef bint has_wd = weight_decay != 0
    if n == 0:
        return
    head = stream_head(&param[0], n)
    with nogil:
        if _n_chunks(n, chunk) == 1:
            for c in range(n_spans(n, head, chunk)):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _sgd_block(&param[lo], &grad[lo], &momentum_buffer[lo] if has_momentum else &param[lo], m, neg_lr,
                           wd, has_wd, mu, one_minus_damp, has_momentum, first_step, nesterov)
        else:
            for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=n_threads):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _sgd_block(&param[lo], &grad[lo], &momentum_buffer[lo] if has_momentum else &param[lo], m, neg_lr,
                           wd, has_wd, mu, one_minus_damp, has_momentum, first_step, nesterov)


# ---------------------------------------------------------------------------------------------------------------------
# AdaGrad (Duchi et al., 2011):
#   s = s + d * d;   p = p - lr * d / (sqrt(s) + eps)
# PyTorch's order: s = s + (1 * d) * d;  p = p + ((-lr) * d) / (sqrt(s) + eps).

cdef void _adagrad_block(floating* p, const floating* g, floating* s, Py_ssize_t n, floating neg_lr, floating wd,
                         bint has_wd, floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating d, acc
    for i in range(n):
        d = g[i]
        if has_wd:
            d = d + wd * p[i]
        acc = s[i] + d * d
        s[i] = acc
        p[i] = p[i] + (neg_lr * d) / (_sqrt(acc) + eps)


def adagrad_update(floating[::1] param, const floating[::1] grad, floating[::1] state_sum, double lr, double eps,
                   double weight_decay, int n_threads):
    """One AdaGrad step in place (``lr`` already includes any decay of the step size)."""
    cdef Py_ssize_t n = param.shape[0]
    _check_lengths("adagrad_update", n, [("grad", grad.shape[0]), ("state_sum", state_sum.shape[0])])
    cdef Py_ssize_t chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    cdef Py_ssize_t c, lo, m, head
    cdef floating neg_lr = <floating>(-lr), wd = <floating>weight_decay, e = <floating>eps
    cdef bint has_wd = weight_decay != 0
    if n == 0:
        return
    head = stream_head(&param[0], n)
    with nogil:
        if _n_chunks(n, chunk) == 1:
            for c in range(n_spans(n, head, chunk)):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _adagrad_block(&param[lo], &grad[lo], &state_sum[lo], m, neg_lr, wd, has_wd, e)
        else:
            for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=n_threads):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _adagrad_block(&param[lo], &grad[lo], &state_sum[lo], m, neg_lr, wd, has_wd, e)


# ---------------------------------------------------------------------------------------------------------------------
# RMSProp (Tieleman & Hinton, 2012), PyTorch's form (eps outside the square root):
#   v = alpha * v + (1 - alpha) * d * d;   r = sqrt(v) + eps
#   momentum == 0:  p = p - lr * d / r
#   momentum  > 0:  b = mu * b + d / r;   p = p - lr * b
# PyTorch's order: v = (v * alpha) + ((1 - alpha) * d) * d;  p = p + ((-lr) * d) / r  or  b = (b * mu) + d / r,
# p = p + (-lr) * b.

cdef void _rmsprop_block(floating* p, const floating* g, floating* v, floating* b, Py_ssize_t n, floating neg_lr,
                         floating alpha, floating one_minus_alpha, floating eps, floating wd, bint has_wd,
                         floating mu, bint has_momentum) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating d, sq, r, u
    if has_momentum:
        for i in range(n):
            d = g[i]
            if has_wd:
                d = d + wd * p[i]
            sq = v[i] * alpha + (one_minus_alpha * d) * d
            v[i] = sq
            r = _sqrt(sq) + eps
            u = b[i] * mu + d / r
            b[i] = u
            p[i] = p[i] + neg_lr * u
    else:
        for i in range(n):
            d = g[i]
            if has_wd:
                d = d + wd * p[i]
            sq = v[i] * alpha + (one_minus_alpha * d) * d
            v[i] = sq
            r = _sqrt(sq) + eps
            p[i] = p[i] + (neg_lr * d) / r


def rmsprop_update(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                   floating[::1] momentum_buffer, double lr, double alpha, double eps, double weight_decay,
                   double momentum, int n_threads):
    """One RMSProp step in place. ``momentum_buffer`` is ignored (pass any array of the parameter's length) when
    momentum is 0; PyTorch starts it at zero."""
    cdef Py_ssize_t n = param.shape[0]
    cdef bint has_momentum = momentum > 0
    _check_lengths("rmsprop_update", n, [("grad", grad.shape[0]), ("square_avg", square_avg.shape[0])]
                   + ([("momentum_buffer", momentum_buffer.shape[0])] if has_momentum else []))
    cdef Py_ssize_t chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    cdef Py_ssize_t c, lo, m, head
    cdef floating neg_lr = <floating>(-lr), a = <floating>alpha, one_minus_a = <floating>(1.0 - alpha)
    cdef floating e = <floating>eps, wd = <floating>weight_decay, mu = <floating>momentum
    cdef bint has_wd = weight_decay != 0
    if n == 0:
        return
    head = stream_head(&param[0], n)
    with nogil:
        if _n_chunks(n, chunk) == 1:
            for c in range(n_spans(n, head, chunk)):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _rmsprop_block(&param[lo], &grad[lo], &square_avg[lo],
                               &momentum_buffer[lo] if has_momentum else &param[lo], m, neg_lr, a,
                               one_minus_a, e, wd, has_wd, mu, has_momentum)
        else:
            for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=n_threads):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _rmsprop_block(&param[lo], &grad[lo], &square_avg[lo],
                               &momentum_buffer[lo] if has_momentum else &param[lo], m, neg_lr, a,
                               one_minus_a, e, wd, has_wd, mu, has_momentum)


# ---------------------------------------------------------------------------------------------------------------------
# Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), with t the parameter's step count:
#   AdamW first decays the weights:  p = p * (1 - lr * wd)         (Adam instead adds wd * p to the gradient: d)
#   m = beta1 * m + (1 - beta1) * d;   v = beta2 * v + (1 - beta2) * d * d
#   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
# PyTorch's order: m = lerp(m, d, w) with w = 1 - beta1, i.e. m + w * (d - m) when |w| < 0.5 and
# d - (d - m) * (1 - w) otherwise;  v = (v * beta2) + ((1 - beta2) * d) * d;  denom = sqrt(v) / sqrt(bc2) + eps;
# p = p + ((-step_size) * m) / denom. The bias corrections and step_size = lr / bc1 are computed by the caller.

cdef void _adam_block(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n, floating decay,
                      bint decoupled, floating wd, bint has_wd, floating w1, bint lerp_small, floating beta2,
                      floating one_minus_beta2, floating bc2_sqrt, floating eps, floating neg_step) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating x, d, mi, vi
    cdef floating one = 1
    cdef floating w1c = one - w1
    for i in range(n):
        x = p[i]
        d = g[i]
        if decoupled:
            x = x * decay
        elif has_wd:
            d = d + wd * x
        mi = m[i]
        if lerp_small:
            mi = mi + w1 * (d - mi)
        else:
            mi = d - (d - mi) * w1c
        m[i] = mi
        vi = v[i] * beta2 + (one_minus_beta2 * d) * d
        v[i] = vi
        p[i] = x + (neg_step * mi) / (_sqrt(vi) / bc2_sqrt + eps)


def adam_update(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg, floating[::1] exp_avg_sq,
                double lr, double beta1, double beta2, double eps, double weight_decay, bint decoupled,
                double bias_correction1, double bias_correction2_sqrt, int n_threads):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step in place, the caller having computed
    ``bias_correction1 = 1 - beta1**t`` and ``bias_correction2_sqrt = (1 - beta2**t) ** 0.5`` in double."""
    cdef Py_ssize_t n = param.shape[0]
    _check_lengths("adam_update", n, [("grad", grad.shape[0]), ("exp_avg", exp_avg.shape[0]),
                                      ("exp_avg_sq", exp_avg_sq.shape[0])])
    cdef Py_ssize_t chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    cdef Py_ssize_t c, lo, m, head
    cdef bint has_wd = weight_decay != 0
    cdef bint use_decay = decoupled and has_wd
    cdef floating decay = <floating>(1.0 - lr * weight_decay), wd = <floating>weight_decay
    cdef floating w1 = <floating>(1.0 - beta1)
    cdef bint lerp_small = (w1 if w1 >= 0 else -w1) < 0.5
    cdef floating b2 = <floating>beta2, one_minus_b2 = <floating>(1.0 - beta2)
    cdef floating bc2 = <floating>bias_correction2_sqrt, e = <floating>eps
    cdef floating neg_step = <floating>(-(lr / bias_correction1))
    if n == 0:
        return
    head = stream_head(&param[0], n)
    with nogil:
        if _n_chunks(n, chunk) == 1:
            for c in range(n_spans(n, head, chunk)):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _adam_block(&param[lo], &grad[lo], &exp_avg[lo], &exp_avg_sq[lo], m, decay, use_decay, wd,
                            has_wd and not decoupled, w1, lerp_small, b2, one_minus_b2, bc2, e, neg_step)
        else:
            for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=n_threads):
                lo = span_start(c, head, chunk, n)
                m = span_length(c, head, chunk, n)
                _adam_block(&param[lo], &grad[lo], &exp_avg[lo], &exp_avg_sq[lo], m, decay, use_decay, wd,
                            has_wd and not decoupled, w1, lerp_small, b2, one_minus_b2, bc2, e, neg_step)
