"""Elementwise activation kernels: forward and backward of sigmoid, tanh, ReLU, Leaky ReLU, ELU, SELU, GELU (erf and
tanh forms) and SiLU, plus PReLU (with the reduction for dalpha).

Private: only ``cynet.ops`` calls these. Contract of every kernel here:
- arrays are C-contiguous memoryviews of one floating type (float32 or float64), already validated by the caller;
- outputs are allocated by the caller and may alias an input of the same shape (in-place);
- no allocation, no exception, no Python object inside: the GIL is released for the whole computation;
- the result does not depend on ``n_threads`` (elementwise maps trivially; reductions sum fixed chunks in a fixed
  order).

Elementwise kernels split the flat index range in ``n_threads`` contiguous chunks (serially below
PARALLEL_MIN_ELEMENTS); each chunk is one plain loop over pointers that the compiler vectorises.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport erfc
from libc.string cimport memcpy

from cynet._kernels._openmp cimport (PARALLEL_MIN_ELEMENTS, CHUNK_ALIGN, n_spans, range_start, span_start, span_length,
                                     split_length)
from cynet._kernels._stream cimport (STREAM_BLOCK, stream_block, stream_blocks, stream_fence, stream_head,
                                     stream_store)
from cynet._kernels._vecmath cimport (FUSED_FMA, STAGE, TAIL_RATIO_BLOCK, _expm1_reduced_f32, _pow2_f32, exp_neg_f64,
                                      exp_neg_reduce_f64_to_f32, fabsf, fma_f32, fma_f64, half_square_exp_reduce_f32,
                                      gelu_erf_central_block, gelu_erf_slope_central_block, gelu_tanh_central_block,
                                      gelu_tanh_slope_central_block, normal_tail_ratio, scatter_f32,
                                      normal_tail_ratio_block, normal_tail_ratio_f32, opaque_f32, opaque_f64, round_f32,
                                      vexp_neg_block, vexpm1_block, vfabs, vsigmoid_block, vtanh_block)


cpdef enum Activation:
    SIGMOID = 0
    TANH = 1
    RELU = 2
    LEAKY_RELU = 3
    ELU = 4
    SELU = 5
    GELU_ERF = 6
    GELU_TANH = 7
    SILU = 8


# SELU constants (Klambauer et al., 2017): lambda and alpha to the precision of float64.
cdef double SELU_SCALE = 1.0507009873554804934193349852946
cdef double SELU_ALPHA = 1.6732632423543772848170429916717
cdef double SQRT_2_OVER_PI = 0.79788456080286535587989211986876   # sqrt(2/pi), GELU tanh form
cdef double GELU_TANH_CUBIC = 0.044715
cdef double INV_SQRT_2 = 0.70710678118654752440084436210485
cdef double INV_SQRT_2PI = 0.39894228040143267793994605993438     # 1/sqrt(2*pi), the standard normal density at 0



# ---------------------------------------------------------------------------------------------------------------------
# GELU, erf form: y = x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2));  dy/dx = Phi(x) + x * phi(x),
# phi(x) = exp(-x^2/2) / sqrt(2pi). Phi is written so that the left tail (x << 0) keeps its relative accuracy.
#
# float32, with u = |x| and R(u) = Phi(-u) exp(u^2/2) (_vecmath.normal_tail_ratio, double precision, rounded once; in
# the AVX-512 build _vecmath.normal_tail_ratio_block, a float32 piecewise polynomial within 0.72 ulp of R):
#   x < 0:  y = exp(-u^2/2) * (x R(u))           (one rounding after the exponential, also into the subnormal range)
#   x >= 0: y = x - x Phi(-u),  Phi(-u) = exp(-u^2/2) R(u)   (one fused step where the instruction set has FMA)
#   dy/dx = [x >= 0] + exp(-u^2/2) * (x / sqrt(2pi) + (R(u) if x < 0 else -R(u)))
#           (R in float32 here, _vecmath.normal_tail_ratio_f32: the slope's accuracy is stated absolutely; see
#           _gelu_erf_slope_stage_f32)
# The exponential is float32 (8 lanes per AVX2 instruction) with u^2 split so that it is not rounded. Beyond u = 15,
# Phi(-u) is 0 in float32: the factor is set to 0, so that the limits are exact (and x Phi(x) is NaN at -inf, as the
# reference's -inf * 0). float64 calls libm's erfc (exact to an ulp, scalar).
# The float32 forward is staged over m <= STAGE values in five loops (|x| clamped at 15; R in double, rounded once; the
# range reduction of -u^2/2; the exponential's polynomial; the scaling and the select), each a short chain of
# dependent operations, so that the out-of-order core overlaps more values than one loop over the whole evaluation
# lets it: A/B against that one loop, 0.86-0.90 (1 and 2 threads, in cache and (4096, 4096)), the same values bit for
# bit.
cdef inline void _gelu_erf_full_stage_f32(const float* x, float* y, Py_ssize_t m) noexcept nogil:
    cdef float uc[STAGE]
    cdef float ratio[STAGE]
    cdef float r[STAGE]
    cdef float sc[STAGE]
    cdef float u, v, t, mm
    cdef float limit = opaque_f32(15.0)
    cdef Py_ssize_t i
    for i in range(m):
        u = fabsf(x[i])
        uc[i] = limit if u > limit else u                     # NaN passes through
    if TAIL_RATIO_BLOCK:
        normal_tail_ratio_block(uc, ratio, m)
    else:
        for i in range(m):
            ratio[i] = <float>normal_tail_ratio(uc[i])
    for i in range(m):
        sc[i] = half_square_exp_reduce_f32(uc[i], &r[i])
    for i in range(m):
        r[i] = _expm1_reduced_f32(r[i])
    for i in range(m):                                         # t: x Phi(x) for x < 0, else Phi(-x)
        v = x[i]
        mm = v * ratio[i] if v < 0 else ratio[i]
        # the factor 0 beyond |x| = 15 applies to the scale, so that t is +-0 there (NaN at -inf) rather than first a
        # subnormal number: each subnormal result costs a micro-code assist
        t = (fma_f32(mm, r[i], mm) * (sc[i] * (<float>0.0 if fabsf(v) > <float>15.0 else <float>1.0)))
        t = t * <float>5.42101086242752217e-20                     # * 2**-64
        y[i] = t if v < 0 else fma_f32(-uc[i], t, v)              # uc == |x| up to 15; beyond, t == 0


# The float32 slope, staged (see _vecmath's block forms) over m <= STAGE values: |x| clamped, then
# d = x / sqrt(2pi) + (R(u) if x < 0 else -R(u)) with R in float32 lanes (normal_tail_ratio_f32: the slope's bound is
# absolute, |error| <= 4 eps |dout| (1 + |x|), which R's few float32 ulp of relative error leave far behind), then
# exp(-u^2/2) in three loops (the reduction, the polynomial, the scaling: A/B against one, 0.81-0.84, the same values),
# then dx = dout * ([x >= 0] + exp(-u^2/2) d), with -0 for [x < 0]: the sign of an underflowed negative slope.
cdef inline void _gelu_erf_slope_stage_f32(const float* dout, const float* x, float* dx, Py_ssize_t m) noexcept nogil:
    cdef float uc[STAGE]
    cdef float d[STAGE]
    cdef float e[STAGE]
    cdef float sc[STAGE]
    cdef float v, u, r, mm
    cdef float inv_sqrt_2pi = <float>INV_SQRT_2PI
    cdef Py_ssize_t i
    for i in range(m):
        u = fabsf(x[i])
        uc[i] = <float>15.0 if u > <float>15.0 else u             # NaN passes through
    for i in range(m):
        v = x[i]
        r = normal_tail_ratio_f32(uc[i])
        d[i] = (r if v < 0 else -r) + v * inv_sqrt_2pi
    for i in range(m):
        sc[i] = half_square_exp_reduce_f32(uc[i], &e[i])
    for i in range(m):
        e[i] = _expm1_reduced_f32(e[i])
    for i in range(m):
        mm = <float>0.0 if fabsf(x[i]) > <float>15.0 else <float>1.0
        e[i] = (fma_f32(mm, e[i], mm) * sc[i]) * <float>5.42101086242752217e-20     # exp(-u^2/2)
    for i in range(m):
        dx[i] = dout[i] * fma_f32(e[i], d[i], <float>-0.0 if x[i] < 0 else <float>1.0)


cdef inline double _std_normal_cdf(double x) noexcept nogil:
    return 0.5 * erfc(-x * INV_SQRT_2)


cdef inline double _std_normal_pdf(double x) noexcept nogil:
    return INV_SQRT_2PI * exp_neg_f64(0.5 * x * x)


# GELU, tanh form, as x * sigma(w) with w = 2c (x + k x^3), c = sqrt(2/pi), k = 0.044715:
#   gate = sigma(w);   d/dx = sigma + x sigma (1 - sigma) 2c (1 + 3k x^2)
# The forward, staged (see _vecmath's block forms): w in double for the STAGE values, the gate sigma(w) over the buffer,
# then y = x sigma(w) rounded once.
cdef inline void _gelu_tanh_stage(const floating* x, floating* y, Py_ssize_t m) noexcept nogil:
    cdef double w[STAGE]
    cdef double xd
    cdef Py_ssize_t i
    for i in range(m):
        xd = x[i]
        w[i] = 2.0 * SQRT_2_OVER_PI * (xd + GELU_TANH_CUBIC * xd * xd * xd)
    vsigmoid_block(w, w, m)
    for i in range(m):
        y[i] = <floating>(w[i] * x[i])


# The float32 forward's argument: |w| = |x| (c1 + c3 x^2), c1 = 2c, c3 = 2ck, as a float32 pair w + w_lo (returned,
# and through the pointer), each constant split in two floats (c1, c3 to float64, then the float32 nearest and the
# float32 nearest the rest) and the rounding errors of the products recovered exactly by FMA. The pair holds |w| to
# about 2**-40 of itself, where one float32 rounding of w (|w| up to 110, where it is clamped) would cost up to |w|/2
# ulp of a gate of about exp(-|w|). Then exp(-|w|)'s range reduction from the pair: n = round(-w / ln2) and
# r = -w - n ln2 - w_lo (Cody & Waite's two-part ln2, as in _vecmath), returning the scale 2**(n + 64) of _vecmath's
# exp_neg. Only where fma_f32 rounds once (FUSED_FMA).
cdef inline float _gelu_tanh_argument_f32(float x, float* low) noexcept nogil:
    cdef float c1 = <float>1.5957691669464111, c1_lo = <float>-4.534068054340423e-08
    cdef float c3 = <float>0.07135481387376785, c3_lo = <float>2.3988324659995897e-09
    cdef float a = fabsf(x)
    cdef float sq = a * a
    cdef float sq_lo = fma_f32(a, a, -sq)                        # x^2 = sq + sq_lo exactly
    cdef float u = c3 * sq
    cdef float u_lo = fma_f32(c3, sq, -u) + fma_f32(c3, sq_lo, c3_lo * sq)
    cdef float q = c1 + u                                       # c1 + c3 x^2 = q + q_lo (two-sum)
    cdef float b = q - c1
    cdef float q_lo = ((c1 - (q - b)) + (u - b)) + (u_lo + c1_lo)
    cdef float w = a * q
    cdef float w_lo = fma_f32(a, q_lo, fma_f32(a, q, -w))
    low[0] = <float>0.0 if w > <float>110.0 else w_lo
    return <float>110.0 if w > <float>110.0 else w             # NaN passes through


cdef inline float _gelu_tanh_reduce_f32(float w, float w_lo, float* r) noexcept nogil:
    cdef float n = round_f32(w * <float>-1.44269504088896341)
    r[0] = fma_f32(n, <float>2.12194440e-4, fma_f32(n, <float>-0.693359375, -w)) - w_lo
    return _pow2_f32(n, 64)


# The float32 forward, staged in short loops (as the erf form: the argument, its range reduction, the polynomial, the
# rest; A/B against two loops, 0.84-0.85): with FMA as above; without, |w| in double and
# _vecmath.exp_neg_reduce_f64_to_f32, the same values to float32's precision. Then, with e = exp(-|w|) =
# 2**n (1 + p(r)) in float32 lanes:
#   x >= 0:  y = x / (1 + e)
#   x < 0:   y = ((x 2**(n + 64)) (1 + p(r)) / (1 + e)) 2**-64
# x enters before the final scale 2**-64, so that a subnormal result is rounded once (x times an already rounded
# subnormal e would multiply that rounding by |x|). |w| is clamped at 110 for the exponential; from |w| = 107 on the
# result is -0 in float32 for every x there (|x| < 11.2, |x| exp(-|w|) < 2**-150), and for x < -11 (|w| > 112) the
# final scale is 0, so that y is -0 and NaN at -inf (the reference's -inf * 0).
# Within 2.85 ulp of the float64 result over every float32 with |x| <= 10 (AVX2; 2.77 baseline) and 1.3 beyond: the
# exponential, the sum 1 + e and the division each round once; tests/test_vecmath.py asserts 3.
cdef inline void _gelu_tanh_stage_f32(const float* x, float* y, Py_ssize_t m) noexcept nogil:
    cdef float r[STAGE]
    cdef float s[STAGE]
    cdef double ax, limit
    cdef double c1 = 2.0 * SQRT_2_OVER_PI
    cdef double c3 = 2.0 * SQRT_2_OVER_PI * GELU_TANH_CUBIC
    cdef float v, p, e, t, num, scale, sc
    cdef Py_ssize_t i
    if FUSED_FMA:
        for i in range(m):
            r[i] = _gelu_tanh_argument_f32(x[i], &s[i])          # w, w_lo
        for i in range(m):
            s[i] = _gelu_tanh_reduce_f32(r[i], s[i], &r[i])
    else:
        limit = opaque_f64(110.0)
        for i in range(m):
            ax = fabsf(x[i])
            s[i] = exp_neg_reduce_f64_to_f32(ax * fma_f64(ax * ax, c3, c1), limit, &r[i])  # |w| = |x| (c1 + c3 x^2)
    for i in range(m):
        r[i] = _expm1_reduced_f32(r[i])
    for i in range(m):
        v = x[i]
        p = r[i]
        # exp(-|w|), from a scale of at least 2**-38 (e >= 2**-102): where that changes e, e < 2**-100 and 1 + e is 1
        # all the same, and e is never subnormal (each subnormal result costs a micro-code assist: on inputs spread
        # uniformly over [-30, 30] the call took 1.4x as long)
        sc = s[i] if s[i] > <float>3.637978807091713e-12 else <float>3.637978807091713e-12
        e = fma_f32(sc, p, sc) * <float>5.42101086242752217e-20           # * 2**-64
        t = s[i] * v
        num = fma_f32(t, p, t) if v < 0 else v
        scale = (<float>0.0 if v < <float>-11.0 else <float>5.42101086242752217e-20) if v < 0 else <float>1.0
        y[i] = (num / (<float>1.0 + e)) * scale


# ---------------------------------------------------------------------------------------------------------------------
# GELU, float32, both forms: y = x G(x) with G = Phi (erf form) or the tanh form's gate, over n values. In the AVX-512
# build each |x| <= 5 takes the central form (_vecmath.gelu_*_central_block: G(-|x|) from a table of polynomials, no
# exponential, stage by stage), and the others are gathered (value and offset) until a whole stage of them can take
# the full form (_gelu_erf_full_stage_f32 / _gelu_tanh_stage_f32) together, then put in place; each value's form
# depends on its own magnitude only, so the bits do not depend on how the work is split. Elsewhere: the full form.
# A/B against the full form for every value (in-process, alternating; (4096, 4096), medians, 1 / 2 threads; inputs
# normal with standard deviation 1 / 2 / 3 / 8, of which 6e-7 / 1.2% / 9.6% / 53% lie beyond 5):
#   erf form  0.57 / 0.58, 0.77 / 0.77, 0.85 / 0.87, 0.64 / 0.65
#   tanh form 0.65 / 0.63, 0.83 / 0.83, 0.94 / 0.93, 0.97 / 0.96
# Without the shortcuts for wide inputs (see gelu_central_block) the last column was 1.11 and 1.30; with them always
# on, the first three of the erf form lost 4-12%.
cdef enum:
    FAR_WINDOW = 1 << 30          # values per window of _gelu_f32's int offsets

# The form as a compile-time choice: one specialisation of _gelu_f32 per form, each with only its own code (one
# function taking the form as a flag ran 3-7% slower on the central path).
ctypedef signed char erf_form
ctypedef unsigned char tanh_form
ctypedef fused gelu_form:
    erf_form
    tanh_form


cdef inline Py_ssize_t _gelu_central_block(gelu_form form, const float* x, float* y, Py_ssize_t m, int offset,
                                           float* far_x, int* far_at) noexcept nogil:
    if gelu_form is tanh_form:
        return gelu_tanh_central_block(x, y, m, offset, far_x, far_at)
    else:
        return gelu_erf_central_block(x, y, m, offset, far_x, far_at)


cdef inline void _gelu_full_stage_f32(gelu_form form, const float* x, float* y, Py_ssize_t m) noexcept nogil:
    if gelu_form is tanh_form:
        _gelu_tanh_stage_f32(x, y, m)
    else:
        _gelu_erf_full_stage_f32(x, y, m)


# The full form of m gathered values, each put in place at y[far_at[j]] (m <= STAGE).
cdef inline void _gelu_far_stage_f32(gelu_form form, const float* far_x, const int* far_at, Py_ssize_t m,
                                     float* y) noexcept nogil:
    cdef float far_y[STAGE]
    _gelu_full_stage_f32(form, far_x, far_y, m)
    scatter_f32(y, far_at, far_y, m)


cdef void _gelu_f32(gelu_form form, const float* x, float* y, Py_ssize_t n) noexcept nogil:
    cdef float far_x[2 * STAGE + 16]                          # up to STAGE - 1 waiting, STAGE more, whole vectors
    cdef int far_at[2 * STAGE + 16]                           # offsets from y + window
    cdef Py_ssize_t b, i0, j, n_far = 0, window = 0
    if not TAIL_RATIO_BLOCK:
        for b in range(n // STAGE):
            i0 = b * STAGE
            _gelu_full_stage_f32(form, x + i0, y + i0, STAGE)         # a constant trip count for the stage's loops
        i0 = n - n % STAGE
        _gelu_full_stage_f32(form, x + i0, y + i0, n - i0)
        return
    for b in range((n + STAGE - 1) // STAGE):
        i0 = b * STAGE
        if i0 - window >= FAR_WINDOW:                          # keep the offsets within int
            _gelu_far_stage_f32(form, far_x, far_at, n_far, y + window)
            n_far = 0
            window = i0
        n_far += _gelu_central_block(form, x + i0, y + i0, min(STAGE, n - i0), <int>(i0 - window),
                                     far_x + n_far, far_at + n_far)
        if n_far >= STAGE:
            _gelu_far_stage_f32(form, far_x, far_at, STAGE, y + window)
            n_far -= STAGE
            for j in range(n_far):
                far_x[j] = far_x[STAGE + j]
                far_at[j] = far_at[STAGE + j]
    _gelu_far_stage_f32(form, far_x, far_at, n_far, y + window)


# The backward, staged. The float32 slope in float32 lanes (its bound is absolute, |error| <= 4 eps |dout| (1 + |x|),
# which float32 arithmetic meets where the forward's ulp bound needs double). sigma(w) (1 - sigma(w)) is e / (1 + e)^2,
# e = exp(-|w|), without the cancellation of 1 - sigma(w) near 1. x is clamped to +-20 inside w and the polynomial
# (beyond, the gate is 0 or 1 in float32 and its derivative 0) but not in the factor x, so that x = +-inf gives NaN, as
# the reference's inf * 0. The float literals are 2c = 2 sqrt(2/pi), k and 3k.
cdef inline void _gelu_tanh_slope_stage(const floating* dout, const floating* x, floating* dx,
                                        Py_ssize_t m) noexcept nogil:
    """dx = dout * (sigma + x sigma (1 - sigma) 2c (1 + 3k x^2)) for m <= STAGE values, staged."""
    cdef floating w[STAGE]
    cdef floating e[STAGE]
    cdef floating v, xc, x2, t, s, gate, gate_slope
    cdef Py_ssize_t i
    if floating is float:
        for i in range(m):
            v = x[i]
            xc = <float>20.0 if v > <float>20.0 else (<float>-20.0 if v < <float>-20.0 else v)
            x2 = xc * xc
            w[i] = <float>1.5957691216057308 * (xc + <float>0.044715 * (xc * x2))       # 2c (x + k x^3)
            e[i] = fabsf(w[i])
        vexp_neg_block(e, e, m)
        for i in range(m):
            v = x[i]
            xc = <float>20.0 if v > <float>20.0 else (<float>-20.0 if v < <float>-20.0 else v)
            x2 = xc * xc
            t = e[i]
            s = <float>1.0 / (<float>1.0 + t)
            gate = t * s if w[i] < 0 else s
            gate_slope = (t * s) * s                                                    # sigma(w) (1 - sigma(w))
            dx[i] = dout[i] * (gate + v * (gate_slope * (<float>1.5957691216057308 *
                                                          (<float>1.0 + <float>0.134145 * x2))))
    else:
        # x clamped to +-40 inside w and the polynomial as above (beyond, exp(-|w|) is 0 in float64, so sigma(w) is
        # exactly 0 or 1 and its derivative 0; unclamped, x^2 overflows past 1.3e154 and 0 * inf gave NaN for a finite
        # x). sigma(w) (1 - sigma(w)) = e / (1 + e)^2 as in float32: sigma (1 - sigma) from a rounded sigma lost the
        # slope where sigma rounds to 1 (x = 7.09: 5.4 eps (1 + |x|), the bound is 4)
        for i in range(m):
            v = x[i]
            xc = 40.0 if v > 40.0 else (-40.0 if v < -40.0 else v)
            w[i] = 2.0 * SQRT_2_OVER_PI * (xc + GELU_TANH_CUBIC * xc * xc * xc)
            e[i] = vfabs(w[i])
        vexp_neg_block(e, e, m)
        for i in range(m):
            v = x[i]
            xc = 40.0 if v > 40.0 else (-40.0 if v < -40.0 else v)
            t = e[i]
            s = 1.0 / (1.0 + t)
            gate = t * s if w[i] < 0 else s
            gate_slope = (t * s) * s                                                    # sigma(w) (1 - sigma(w))
            dx[i] = dout[i] * (gate + v * gate_slope * 2.0 * SQRT_2_OVER_PI * (1 + 3.0 * GELU_TANH_CUBIC * xc * xc))


# Per-stage bodies (m <= STAGE values; the kernels call them with m = STAGE, a constant the compiler unrolls for, then
# once for the remainder).

# ELU and SELU: y = pos x if x >= 0 else neg (exp(x) - 1)  (ELU: pos = 1, neg = alpha; SELU: lambda, lambda alpha);
# x = -0 takes the first branch, so it gives -0 as neg * expm1(-0) does (the vectorised expm1 drops the zero's sign)
cdef inline void _elu_stage(const floating* x, floating* y, Py_ssize_t m, floating pos, floating neg) noexcept nogil:
    cdef floating t[STAGE]
    cdef floating v
    cdef Py_ssize_t i
    vexpm1_block(x, t, m)
    for i in range(m):
        v = x[i]
        y[i] = pos * v if v >= 0 else neg * t[i]


# SiLU: y = x sigma(x), and -0 where sigma underflows to 0 (the limit at -inf, not -inf * 0 = NaN)
cdef inline void _silu_stage(const floating* x, floating* y, Py_ssize_t m) noexcept nogil:
    cdef floating t[STAGE]
    cdef floating v, u
    cdef floating zero = 0
    cdef Py_ssize_t i
    vsigmoid_block(x, t, m)
    for i in range(m):
        v = x[i]
        u = t[i]
        y[i] = v * u if u != 0 else -zero


# SiLU backward: dx = dout sigma(x) (1 + x (1 - sigma(x)))
cdef inline void _silu_slope_stage(const floating* dout, const floating* x, floating* dx, Py_ssize_t m) noexcept nogil:
    cdef floating t[STAGE]
    cdef floating v, u
    cdef floating one = 1
    cdef Py_ssize_t i
    vsigmoid_block(x, t, m)
    for i in range(m):
        v = x[i]
        u = t[i]
        dx[i] = dout[i] * (u * (one + v * (one - u)))


# ---------------------------------------------------------------------------------------------------------------------
# One contiguous block of an elementwise forward: y[i] = f(x[i]) for i < n.
# `a` is the op's parameter (Leaky ReLU negative_slope, ELU alpha); unused otherwise.

cdef void _forward_block(int op, const floating* x, floating* y, Py_ssize_t n, floating a) noexcept nogil:
    cdef Py_ssize_t i, b, i0
    cdef floating v
    cdef floating selu_scale = <floating>SELU_SCALE
    cdef floating selu_scale_alpha = <floating>(SELU_SCALE * SELU_ALPHA)
    if op == SIGMOID:
        # y = 1 / (1 + exp(-x))
        for b in range(n // STAGE):
            i0 = b * STAGE
            vsigmoid_block(x + i0, y + i0, STAGE)
        i0 = n - n % STAGE
        vsigmoid_block(x + i0, y + i0, n - i0)
    elif op == TANH:
        # y = tanh(x)
        for b in range(n // STAGE):
            i0 = b * STAGE
            vtanh_block(x + i0, y + i0, STAGE)
        i0 = n - n % STAGE
        vtanh_block(x + i0, y + i0, n - i0)
    elif op == RELU:
        # y = max(x, 0)  (NaN propagates)
        for i in range(n):
            v = x[i]
            y[i] = 0 if v < 0 else v
    elif op == LEAKY_RELU:
        # y = x if x > 0 else a * x
        for i in range(n):
            v = x[i]
            y[i] = v if v > 0 else a * v
    elif op == ELU:
        # y = x if x > 0 else a * (exp(x) - 1)
        for b in range(n // STAGE):
            i0 = b * STAGE
            _elu_stage(x + i0, y + i0, STAGE, 1, a)
        i0 = n - n % STAGE
        _elu_stage(x + i0, y + i0, n - i0, 1, a)
    elif op == SELU:
        # y = lambda * x if x > 0 else lambda * alpha * (exp(x) - 1)
        for b in range(n // STAGE):
            i0 = b * STAGE
            _elu_stage(x + i0, y + i0, STAGE, selu_scale, selu_scale_alpha)
        i0 = n - n % STAGE
        _elu_stage(x + i0, y + i0, n - i0, selu_scale, selu_scale_alpha)
    elif op == GELU_ERF:
        # y = x * Phi(x)
        if floating is float:
            _gelu_f32(<erf_form>0, x, y, n)
        else:
            for i in range(n):
                v = x[i]
                y[i] = v * _std_normal_cdf(v)
    elif op == GELU_TANH:
        # y = 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3); 0.5 (1 + tanh(u)) = sigmoid(2u) exactly,
        # which keeps the left tail accurate. float32 keeps the argument 2u to more than float32's precision (rounding
        # it would cost up to ~|2u|/2 ulp of the result): see _gelu_tanh_stage_f32.
        if floating is float:
            _gelu_f32(<tanh_form>0, x, y, n)
        else:
            for b in range(n // STAGE):
                i0 = b * STAGE
                _gelu_tanh_stage(x + i0, y + i0, STAGE)
            i0 = n - n % STAGE
            _gelu_tanh_stage(x + i0, y + i0, n - i0)
    elif op == SILU:
        # y = x * sigmoid(x)
        for b in range(n // STAGE):
            i0 = b * STAGE
            _silu_stage(x + i0, y + i0, STAGE)
        i0 = n - n % STAGE
        _silu_stage(x + i0, y + i0, n - i0)


# The float32 GELU backward, both forms, over n values: in the AVX-512 build each |x| <= 5 takes the central form
# (_vecmath.gelu_*_slope_central_block: the slope D(-|x|) from a table of polynomials, no exponential, stage by stage),
# the offsets of the others are gathered until a whole stage of them can take the full slope stage together, then
# the results are put in place, as in _gelu_f32: each value's form depends on its own magnitude only. Elsewhere: the
# full slope stage for every value.
cdef inline Py_ssize_t _gelu_slope_central_block(gelu_form form, const float* dout, const float* x, float* dx,
                                                 Py_ssize_t m, int offset, int* far_at) noexcept nogil:
    if gelu_form is tanh_form:
        return gelu_tanh_slope_central_block(dout, x, dx, m, offset, far_at)
    else:
        return gelu_erf_slope_central_block(dout, x, dx, m, offset, far_at)


cdef inline void _gelu_slope_stage_f32(gelu_form form, const float* dout, const float* x, float* dx,
                                       Py_ssize_t m) noexcept nogil:
    if gelu_form is tanh_form:
        _gelu_tanh_slope_stage(dout, x, dx, m)
    else:
        _gelu_erf_slope_stage_f32(dout, x, dx, m)


# The full slope stage of the m values at offsets far_at[j] of dout, x and dx (m <= STAGE).
cdef inline void _gelu_far_slope_stage_f32(gelu_form form, const float* dout, const float* x, const int* far_at,
                                           Py_ssize_t m, float* dx) noexcept nogil:
    cdef float far_x[STAGE]
    cdef float far_dout[STAGE]
    cdef float far_dx[STAGE]
    cdef Py_ssize_t j
    for j in range(m):
        far_x[j] = x[far_at[j]]
        far_dout[j] = dout[far_at[j]]
    _gelu_slope_stage_f32(form, far_dout, far_x, far_dx, m)
    scatter_f32(dx, far_at, far_dx, m)


cdef void _gelu_slope_f32(gelu_form form, const float* dout, const float* x, float* dx, Py_ssize_t n) noexcept nogil:
    cdef int far_at[2 * STAGE + 16]                           # up to STAGE - 1 waiting, STAGE more, whole vectors
    cdef Py_ssize_t b, i0, n_far = 0, window = 0              # far_at: offsets from window
    if not TAIL_RATIO_BLOCK:
        for b in range(n // STAGE):
            i0 = b * STAGE
            _gelu_slope_stage_f32(form, dout + i0, x + i0, dx + i0, STAGE)
        i0 = n - n % STAGE
        _gelu_slope_stage_f32(form, dout + i0, x + i0, dx + i0, n - i0)
        return
    for b in range((n + STAGE - 1) // STAGE):
        i0 = b * STAGE
        if i0 - window >= FAR_WINDOW:                          # keep the offsets within int
            _gelu_far_slope_stage_f32(form, dout + window, x + window, far_at, n_far, dx + window)
            n_far = 0
            window = i0
        n_far += _gelu_slope_central_block(form, dout + i0, x + i0, dx + i0, min(STAGE, n - i0), <int>(i0 - window),
                                           far_at + n_far)
        if n_far >= STAGE:
            _gelu_far_slope_stage_f32(form, dout + window, x + window, far_at, STAGE, dx + window)
            n_far -= STAGE                                     # < STAGE left: the copy does not overlap
            memcpy(far_at, far_at + STAGE, n_far * sizeof(int))
    _gelu_far_slope_stage_f32(form, dout + window, x + window, far_at, n_far, dx + window)


# Loads happen before the selects (`g = dout[i]; ... g if c else ...`): a load inside one arm of a select cannot be
# speculated by the compiler and would keep the loop scalar.

# One contiguous block of an elementwise backward: dx[i] = dout[i] * f'(.) from the cheapest saved tensor `s`:
# the output y for sigmoid, tanh, ReLU, ELU and SELU; the input x for Leaky ReLU, GELU and SiLU.

cdef void _backward_block(int op, const floating* dout, const floating* s, floating* dx, Py_ssize_t n,
                          floating a) noexcept nogil:
    cdef Py_ssize_t i, b, i0
    cdef floating v, g
    cdef floating one = 1   # a typed 1: Cython writes a bare 1 in float arithmetic as the double 1.0
    cdef floating selu_scale = <floating>SELU_SCALE
    cdef floating selu_scale_alpha = <floating>(SELU_SCALE * SELU_ALPHA)
    if op == SIGMOID:
        # dx = dout * y * (1 - y)
        for i in range(n):
            v = s[i]
            dx[i] = dout[i] * (v * (one - v))
    elif op == TANH:
        # dx = dout * (1 - y^2)
        for i in range(n):
            v = s[i]
            dx[i] = dout[i] * (one - v * v)
    elif op == RELU:
        # dx = dout if y > 0 else 0   (y > 0 exactly when x > 0, so the input works as well)
        for i in range(n):
            g = dout[i]
            dx[i] = g if s[i] > 0 else 0
    elif op == LEAKY_RELU:
        # dx = dout if x > 0 else a * dout
        for i in range(n):
            g = dout[i]
            dx[i] = g if s[i] > 0 else a * g
    elif op == ELU:
        # dx = dout if y > 0 else dout * (y + a)       (for x <= 0: d/dx a (e^x - 1) = a e^x = y + a)
        for i in range(n):
            v = s[i]
            g = dout[i]
            dx[i] = g if v > 0 else g * (v + a)
    elif op == SELU:
        # dx = lambda * dout if y > 0 else dout * (y + lambda * alpha)
        for i in range(n):
            v = s[i]
            g = dout[i]
            dx[i] = selu_scale * g if v > 0 else g * (v + selu_scale_alpha)
    elif op == GELU_ERF:
        # dx = dout * (Phi(x) + x phi(x))
        if floating is float:
            _gelu_slope_f32(<erf_form>0, dout, s, dx, n)
        else:
            for i in range(n):
                v = s[i]
                dx[i] = dout[i] * (_std_normal_cdf(v) + v * _std_normal_pdf(v))
    elif op == GELU_TANH:
        # y = x sigma(w), w = 2c (x + k x^3):  dx = dout * (sigma + x sigma (1 - sigma) 2c (1 + 3k x^2))
        if floating is float:
            _gelu_slope_f32(<tanh_form>0, dout, s, dx, n)
        else:
            for b in range(n // STAGE):
                i0 = b * STAGE
                _gelu_tanh_slope_stage(dout + i0, s + i0, dx + i0, STAGE)
            i0 = n - n % STAGE
            _gelu_tanh_slope_stage(dout + i0, s + i0, dx + i0, n - i0)
    elif op == SILU:
        # dx = dout * sigma(x) (1 + x (1 - sigma(x)))
        for b in range(n // STAGE):
            i0 = b * STAGE
            _silu_slope_stage(dout + i0, s + i0, dx + i0, STAGE)
        i0 = n - n % STAGE
        _silu_slope_stage(dout + i0, s + i0, dx + i0, n - i0)


cdef inline void _block(bint backward, int op, const floating* u, const floating* saved, floating* out, Py_ssize_t n,
                        floating a) noexcept nogil:
    if backward:
        _backward_block(op, u, saved, out, n, a)
    else:
        _forward_block(op, u, out, n, a)


cdef void _streamed_block(bint backward, int op, const floating* u, const floating* saved, floating* out,
                          Py_ssize_t n, floating a) noexcept nogil:
    """_block through an L1 buffer, STREAM_BLOCK values at a time, written out with non-temporal stores."""
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t head = stream_head(out, n), b, start, m
    _block(backward, op, u, saved, out, head, a)
    for b in range(stream_blocks(head, n)):
        start = stream_block(head, b, n, &m)
        _block(backward, op, u + start, saved + start, buffer, m, a)
        stream_store(out + start, buffer, m)
    stream_fence()


cdef inline void _chunk(bint backward, int op, const floating* u, const floating* saved, floating* out, Py_ssize_t n,
                        floating a, bint stream) noexcept nogil:
    if stream:
        _streamed_block(backward, op, u, saved, out, n, a)
    else:
        _block(backward, op, u, saved, out, n, a)


cdef void _elementwise(bint backward, int op, const floating[::1] u, const floating[::1] saved, floating[::1] out,
                       double a, bint stream, int n_threads) noexcept nogil:
    """Run one elementwise forward (u = x) or backward (u = dout) over spans of the flat index range, every one but
    the first starting on a cache line of out (_openmp.span_start); with ``stream``, the output goes to memory with
    non-temporal stores (outputs larger than the cache)."""
    cdef Py_ssize_t n = u.shape[0]
    cdef Py_ssize_t chunk = split_length(n, n, n_threads, CHUNK_ALIGN)
    cdef Py_ssize_t c, lo, m, head
    if n == 0:
        return
    head = stream_head(&out[0], n)
    if (n + chunk - 1) // chunk == 1:
        for c in range(n_spans(n, head, chunk)):
            lo = span_start(c, head, chunk, n)
            m = span_length(c, head, chunk, n)
            _chunk(backward, op, &u[lo], &saved[lo], &out[lo], m, <floating>a, stream)
    else:
        for c in prange(n_spans(n, head, chunk), schedule='static', num_threads=n_threads):
            lo = span_start(c, head, chunk, n)
            m = span_length(c, head, chunk, n)
            _chunk(backward, op, &u[lo], &saved[lo], &out[lo], m, <floating>a, stream)


def elementwise_forward(int op, const floating[::1] x, floating[::1] y, double a, bint stream, int n_threads):
    """y = f_op(x) over flat contiguous arrays of equal length (``stream``: non-temporal stores of y)."""
    with nogil:
        _elementwise(False, op, x, x, y, a, stream, n_threads)


def elementwise_backward(int op, const floating[::1] dout, const floating[::1] saved, floating[::1] dx, double a,
                         bint stream, int n_threads):
    """dx = dout * f_op'(saved) over flat contiguous arrays of equal length (``stream``: non-temporal stores of
    dx)."""
    with nogil:
        _elementwise(True, op, dout, saved, dx, a, stream, n_threads)


# ---------------------------------------------------------------------------------------------------------------------
# PReLU: y = x if x > 0 else alpha_c * x, with alpha_c the slope of x's channel.
#   dx = dout if x > 0 else alpha_c * dout;   dalpha_c = sum over the elements of channel c of dout * min(x, 0)
#
# Two layouts cover every case without strided access:
# - "rows":   x (M, C), channel along the contiguous axis (per-channel PReLU on (N, C) input);
# - "planes": x (P, C, S), channel constant along the contiguous axis of length S (per-channel PReLU on (N, C, H, W);
#             a shared alpha is C = 1).
# dalpha: the leading axis is cut into `partials.shape[0]` fixed chunks (a number chosen by the caller from the shape
# only); each chunk sums into its own row of `partials` (float64), then the rows are added in order. The answer is
# therefore the same for every thread count.

cdef inline Py_ssize_t _chunk_start(Py_ssize_t k, Py_ssize_t n_chunks, Py_ssize_t m) noexcept nogil:
    """First index of chunk k when [0, m) is cut into n_chunks nearly equal consecutive chunks."""
    return (k * m) // n_chunks


cdef inline Py_ssize_t _n_parallel_chunks(Py_ssize_t leading, Py_ssize_t elements, int n_threads) noexcept nogil:
    """Chunks of the leading axis to run in parallel: one (serial) below the threshold, else one per thread."""
    if n_threads <= 1 or elements < PARALLEL_MIN_ELEMENTS:
        return 1
    return min(leading, <Py_ssize_t>n_threads)


cdef inline void _prelu_y_span(const floating* x, const floating* alpha, floating* y, Py_ssize_t n) noexcept nogil:
    """y[j] = x[j] if x[j] > 0 else alpha[j] x[j] for j < n."""
    cdef Py_ssize_t j
    cdef floating v, a
    for j in range(n):
        v = x[j]
        a = alpha[j]
        y[j] = v if v > 0 else a * v


# y = x if x > 0 else alpha[j] * x over `rows` rows of C values (channel j along the row); with `stream`, y is written
# with non-temporal stores (an output larger than the cache), through an L1 buffer, whole lines.
cdef void _prelu_rows_forward(const floating* x, const floating* alpha, floating* y, Py_ssize_t rows,
                              Py_ssize_t C, bint stream) noexcept nogil:
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t i, j, b, head, n, o
    for i in range(rows):
        o = i * C
        if not stream:
            _prelu_y_span(x + o, alpha, y + o, C)
            continue
        head = stream_head(y + o, C)
        _prelu_y_span(x + o, alpha, y + o, head)
        for b in range(stream_blocks(head, C)):
            j = stream_block(head, b, C, &n)
            _prelu_y_span(x + o + j, alpha + j, buffer, n)
            stream_store(y + o + j, buffer, n)
    if stream:
        stream_fence()


cdef inline void _prelu_slope_span(const floating* x, floating a, floating* y, Py_ssize_t n) noexcept nogil:
    """y[s] = x[s] if x[s] > 0 else a x[s] for s < n."""
    cdef Py_ssize_t s
    cdef floating v
    for s in range(n):
        v = x[s]
        y[s] = v if v > 0 else a * v


# y = x if x > 0 else a * x over n values sharing the slope a; with `stream`, non-temporal stores as above (the
# caller fences once its planes are written).
cdef void _prelu_plane_forward(const floating* x, floating a, floating* y, Py_ssize_t n, bint stream) noexcept nogil:
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t b, head, j, m
    if not stream:
        _prelu_slope_span(x, a, y, n)
        return
    head = stream_head(y, n)
    _prelu_slope_span(x, a, y, head)
    for b in range(stream_blocks(head, n)):
        j = stream_block(head, b, n, &m)
        _prelu_slope_span(x + j, a, buffer, m)
        stream_store(y + j, buffer, m)


# dx = dout if x > 0 else alpha[j] * dout;  partial[j] += dout * min(x, 0) (in float64), over rows of C values.
# (dout * min(x, 0) rather than a select of the product: the form the compiler vectorises; a NaN dout propagates.)
cdef inline void _prelu_dx_span(const floating* dout, const floating* x, const floating* alpha, floating* dx,
                                Py_ssize_t n) noexcept nogil:
    """dx[j] = dout[j] if x[j] > 0 else alpha[j] dout[j] for j < n."""
    cdef Py_ssize_t j
    cdef floating a, g
    for j in range(n):
        a = alpha[j]                                   # loaded for every j: a load under the condition became a
        g = dout[j]                                    # masked load (vmaskmovps), 15% of the whole backward
        dx[j] = g if x[j] > 0 else a * g


cdef void _prelu_rows_backward(const floating* dout, const floating* x, const floating* alpha, floating* dx,
                               double* partial, Py_ssize_t rows, Py_ssize_t C, bint stream) noexcept nogil:
    cdef floating buffer[STREAM_BLOCK]
    cdef Py_ssize_t i, j, b, head, n, o
    cdef floating v, g, v1, g1
    for i in range(rows):
        # Two passes over the (cache-resident) row: one loop doing both stores does not vectorise, each alone does.
        # The reduction goes first: dx may be dout or x itself (in-place backward). Rows are taken in pairs for it:
        # one update of the float64 partials per two rows, partial + (a0 + a1) (each product of two floats is exact
        # in float64); the pairs follow from the chunk's rows alone, so dalpha is the same for any thread count.
        o = i * C
        if i % 2 == 0 and i + 1 < rows:
            for j in range(C):
                v = x[o + j]
                g = dout[o + j]
                v1 = x[o + C + j]
                g1 = dout[o + C + j]
                partial[j] += (<double>g * <double>(0 if v > 0 else v)
                               + <double>g1 * <double>(0 if v1 > 0 else v1))
        elif i % 2 == 0:
            for j in range(C):
                v = x[o + j]
                g = dout[o + j]
                partial[j] += <double>g * <double>(0 if v > 0 else v)
        if not stream:
            _prelu_dx_span(dout + o, x + o, alpha, dx + o, C)
            continue
        # non-temporal stores of dx (an output larger than the cache), through an L1 buffer, whole lines
        head = stream_head(dx + o, C)
        _prelu_dx_span(dout + o, x + o, alpha, dx + o, head)
        for b in range(stream_blocks(head, C)):
            j = stream_block(head, b, C, &n)
            _prelu_dx_span(dout + o + j, x + o + j, alpha + j, buffer, n)
            stream_store(dx + o + j, buffer, n)
    if stream:
        stream_fence()


# Same over n values sharing the slope a; returns sum of dout * x over x <= 0. Four interleaved float64 accumulators,
# combined as (a0 + a1) + (a2 + a3) + tail: a fixed order that lets the compiler use SIMD lanes.
cdef double _prelu_plane_backward(const floating* dout, const floating* x, floating a, floating* dx,
                                  Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t s, n4 = n - n % 4
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, tail = 0
    cdef floating v0, v1, v2, v3, g0, g1, g2, g3, v, g
    for s in range(0, n4, 4):
        v0 = x[s]
        v1 = x[s + 1]
        v2 = x[s + 2]
        v3 = x[s + 3]
        g0 = dout[s]
        g1 = dout[s + 1]
        g2 = dout[s + 2]
        g3 = dout[s + 3]
        dx[s] = g0 if v0 > 0 else a * g0
        dx[s + 1] = g1 if v1 > 0 else a * g1
        dx[s + 2] = g2 if v2 > 0 else a * g2
        dx[s + 3] = g3 if v3 > 0 else a * g3
        a0 = a0 + <double>g0 * <double>(0 if v0 > 0 else v0)
        a1 = a1 + <double>g1 * <double>(0 if v1 > 0 else v1)
        a2 = a2 + <double>g2 * <double>(0 if v2 > 0 else v2)
        a3 = a3 + <double>g3 * <double>(0 if v3 > 0 else v3)
    for s in range(n4, n):
        v = x[s]
        g = dout[s]
        dx[s] = g if v > 0 else a * g
        tail = tail + <double>g * <double>(0 if v > 0 else v)
    return ((a0 + a1) + (a2 + a3)) + tail


# total[j] = sum over k of partials[k, j], added in the order k = 0, 1, ..., K - 1 (the fixed order that makes dalpha
# the same for every thread count), for partials of shape (K, C) in row-major order. Row 0 is the accumulator and is
# overwritten. Whole rows are added in turn: walking each column down its K rows instead (a stride of C doubles per
# load) took 44% of the PReLU backward at (256, 4096).
cdef void _sum_partials_in_order(double* partials, Py_ssize_t K, Py_ssize_t C, floating* total) noexcept nogil:
    cdef Py_ssize_t k, j
    if K == 0:                                         # no chunks (an empty leading axis): the empty sum
        for j in range(C):
            total[j] = 0
        return
    for k in range(1, K):
        for j in range(C):
            partials[j] = partials[j] + partials[k * C + j]
    for j in range(C):
        total[j] = <floating>partials[j]


def prelu_forward_rows(const floating[:, ::1] x, const floating[::1] alpha, floating[:, ::1] y, bint stream,
                       int n_threads):
    """y from x and one slope per column; ``stream``: y written with non-temporal stores."""
    cdef Py_ssize_t m = x.shape[0], C = x.shape[1], k, lo, hi
    cdef Py_ssize_t K = _n_parallel_chunks(m, m * C, n_threads)
    with nogil:
        for k in prange(K, schedule='static', num_threads=K):
            lo = _chunk_start(k, K, m)
            hi = _chunk_start(k + 1, K, m)
            _prelu_rows_forward(&x[lo, 0], &alpha[0], &y[lo, 0], hi - lo, C, stream)


def prelu_forward_planes(const floating[:, :, ::1] x, const floating[::1] alpha, floating[:, :, ::1] y, bint stream,
                         int n_threads):
    """y from x and one slope per plane (axis 1); ``stream``: y written with non-temporal stores."""
    cdef Py_ssize_t P = x.shape[0], C = x.shape[1], S = x.shape[2], k, q, lo, hi
    cdef Py_ssize_t K = _n_parallel_chunks(P * C, P * C * S, n_threads)
    with nogil:
        for k in prange(K, schedule='static', num_threads=K):
            lo = _chunk_start(k, K, P * C)
            hi = _chunk_start(k + 1, K, P * C)
            for q in range(lo, hi):
                _prelu_plane_forward(&x[0, 0, 0] + q * S, alpha[q % C], &y[0, 0, 0] + q * S, S, stream)
            if stream:
                stream_fence()


def prelu_backward_rows(const floating[:, ::1] dout, const floating[:, ::1] x, const floating[::1] alpha,
                        floating[:, ::1] dx, double[:, ::1] partials, floating[::1] dalpha, bint stream,
                        int n_threads):
    """dx, and dalpha summed over K = partials.shape[0] fixed row chunks (K from the shape only), in order.
    ``stream``: dx written with non-temporal stores."""
    cdef Py_ssize_t m = x.shape[0], C = x.shape[1], K = partials.shape[0], k, j, lo, hi
    cdef int nt = 1 if m * C < PARALLEL_MIN_ELEMENTS else n_threads
    partials[:, :] = 0
    with nogil:
        for k in prange(K, schedule='static', num_threads=nt):
            lo = _chunk_start(k, K, m)
            hi = _chunk_start(k + 1, K, m)
            _prelu_rows_backward(&dout[lo, 0], &x[lo, 0], &alpha[0], &dx[lo, 0], &partials[k, 0], hi - lo, C,
                                 stream)
        _sum_partials_in_order(&partials[0, 0], K, C, &dalpha[0])


def prelu_backward_planes(const floating[:, :, ::1] dout, const floating[:, :, ::1] x, const floating[::1] alpha,
                          floating[:, :, ::1] dx, double[:, ::1] partials, floating[::1] dalpha, int n_threads):
    """dx, and dalpha summed over K = partials.shape[0] fixed chunks of the leading axis (K from the shape only)."""
    cdef Py_ssize_t P = x.shape[0], C = x.shape[1], S = x.shape[2], K = partials.shape[0], k, p, c, lo, hi
    cdef int nt = 1 if P * C * S < PARALLEL_MIN_ELEMENTS else n_threads
    cdef Py_ssize_t offset
    partials[:, :] = 0
    with nogil:
        for k in prange(K, schedule='static', num_threads=nt):
            lo = _chunk_start(k, K, P)
            hi = _chunk_start(k + 1, K, P)
            for p in range(lo, hi):
                for c in range(C):
                    offset = (p * C + c) * S
                    partials[k, c] += _prelu_plane_backward(&dout[0, 0, 0] + offset, &x[0, 0, 0] + offset,
                                                            alpha[c], &dx[0, 0, 0] + offset, S)
        _sum_partials_in_order(&partials[0, 0], K, C, &dalpha[0])


# ---------------------------------------------------------------------------------------------------------------------
# A Linear layer's bias, and the ReLU after it, on the layer's output y (N, M) (a Sequential runs Linear -> ReLU so):
#   forward, in place:   v = y_ij + b_j;  y_ij = v, or with the ReLU 0 if v < 0 else v   (NumPy's y += b, then
#                        cynet's ReLU: NaN passes)
#   backward:            dz_ij = dout_ij if y_ij > 0 else 0   (cynet's ReLU backward; without the ReLU, dz is dout)
#                        db_j = (((dz_0j + dz_1j) + dz_2j) + ...) in the arrays' type, rows in order (NumPy's
#                        dz.sum(axis=0) on a C-contiguous array: the same bits)
# The forward splits the rows into one chunk per thread; the backward splits the columns into ranges of whole 64-byte
# lines, each thread walking every row of its range, so that a column's sum is one chain in row order whatever the
# thread count.

cdef void _bias_relu_rows(floating* y, const floating* b, Py_ssize_t rows, Py_ssize_t M, bint has_bias,
                          bint relu) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating v
    cdef floating* row
    for i in range(rows):
        row = y + i * M
        if has_bias and relu:
            for j in range(M):
                v = row[j] + b[j]
                row[j] = 0 if v < 0 else v
        elif has_bias:
            for j in range(M):
                row[j] = row[j] + b[j]
        elif relu:
            for j in range(M):
                v = row[j]
                row[j] = 0 if v < 0 else v


def bias_relu_rows(floating[:, ::1] y, const floating[::1] bias, bint relu, int n_threads):
    """y += bias (one value per column; None: no bias) and, with ``relu``, y = ReLU(y), in place, on (N, M)."""
    cdef Py_ssize_t N = y.shape[0], M = y.shape[1], k, lo, hi
    cdef bint has_bias = bias is not None
    if has_bias and bias.shape[0] != M:
        raise ValueError(f"cynet._kernels.activations.bias_relu_rows: bias must have {M} values for y of shape "
                         f"({N}, {M}), got {bias.shape[0]}")
    cdef const floating* b = &bias[0] if has_bias and M > 0 else NULL
    cdef Py_ssize_t K = _n_parallel_chunks(N, N * M, n_threads)
    if N == 0 or M == 0 or not (has_bias or relu):
        return
    with nogil:
        if K == 1:
            _bias_relu_rows(&y[0, 0], b, N, M, has_bias, relu)
        else:
            for k in prange(K, schedule='static', num_threads=K):
                lo = _chunk_start(k, K, N)
                hi = _chunk_start(k + 1, K, N)
                _bias_relu_rows(&y[lo, 0], b, hi - lo, M, has_bias, relu)


cdef void _relu_bias_grad_columns(const floating* dout, const floating* y, floating* dz, floating* db, Py_ssize_t N,
                                  Py_ssize_t M, Py_ssize_t j0, Py_ssize_t j1, bint relu) noexcept nogil:
    """Columns [j0, j1) of dz (with ``relu``) and db: the first row starts each sum, the others are added in order."""
    cdef Py_ssize_t i, j
    cdef floating g
    cdef const floating* g_row
    cdef const floating* y_row
    cdef floating* dz_row
    if relu:
        for j in range(j0, j1):
            g = dout[j]
            g = g if y[j] > 0 else 0
            dz[j] = g
            db[j] = g
        for i in range(1, N):
            g_row = dout + i * M
            y_row = y + i * M
            dz_row = dz + i * M
            for j in range(j0, j1):
                g = g_row[j]                        # loaded unconditionally: a select, not a branch on y's sign
                g = g if y_row[j] > 0 else 0
                dz_row[j] = g
                db[j] = db[j] + g
    else:
        for j in range(j0, j1):
            db[j] = dout[j]
        for i in range(1, N):
            g_row = dout + i * M
            for j in range(j0, j1):
                db[j] = db[j] + g_row[j]


def relu_bias_grad_rows(const floating[:, ::1] dout, const floating[:, ::1] y, floating[:, ::1] dz,
                        floating[::1] db, bint relu, int n_threads):
    """The backward of bias_relu_rows on (N, M): dz (with ``relu``: dout masked by y > 0; without it dz is not
    written and may be None) and the bias gradient db (M,), the column sums of dz (0 where N = 0)."""
    cdef Py_ssize_t N = dout.shape[0], M = dout.shape[1], t, j
    cdef Py_ssize_t per_line = 64 // sizeof(floating)
    if db.shape[0] != M or (relu and (y is None or dz is None or y.shape[0] != N or y.shape[1] != M
                                      or dz.shape[0] != N or dz.shape[1] != M)):
        raise ValueError(f"cynet._kernels.activations.relu_bias_grad_rows: db must have {M} values and, with the "
                         f"ReLU, y and dz dout's shape ({N}, {M})")
    cdef Py_ssize_t n_ranges = min(<Py_ssize_t>n_threads, M // per_line) if N * M >= PARALLEL_MIN_ELEMENTS else 1
    cdef const floating* y_ptr = &y[0, 0] if relu and N > 0 and M > 0 else NULL
    cdef floating* dz_ptr = &dz[0, 0] if relu and N > 0 and M > 0 else NULL
    if M == 0:
        return
    if N == 0:
        for j in range(M):
            db[j] = 0
        return
    with nogil:
        if n_ranges <= 1:
            _relu_bias_grad_columns(&dout[0, 0], y_ptr, dz_ptr, &db[0], N, M, 0, M, relu)
        else:
            for t in prange(n_ranges, schedule='static', num_threads=n_ranges):
                _relu_bias_grad_columns(&dout[0, 0], y_ptr, dz_ptr, &db[0], N, M,
                                        range_start(M, t, n_ranges, per_line),
                                        range_start(M, t + 1, n_ranges, per_line), relu)
