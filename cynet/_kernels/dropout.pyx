"""Dropout masks from a counter-based generator (Philox4x32-10), on the kernels' threads.

Element i of a mask drawn with the 64-bit key K takes word i mod 4 of the Philox4x32-10 block
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the Random123 reference):

    (u_0, u_1, u_2, u_3) = philox4x32_10(counter = (b mod 2^32, b div 2^32, 0, 0), key = (K mod 2^32, K div 2^32)),
    b = i div 4,    u = u_(i mod 4)                                            (unsigned 32-bit words)
    keep_i = u >= threshold,    threshold = round(p 2^32)    (p = 1: nothing kept)
    mask_i = scale if keep_i else 0,    y_i = x_i * mask_i   (scale = 1 / (1 - p), rounded to x's type)

So a value depends only on (K, i): the same mask for any thread count and any split, and every block is computed
where it is used, without a shared state. P(keep) = 1 - threshold / 2^32, within 2^-33 of 1 - p.

One round of Philox4x32 on (x0, x1, x2, x3) with the round key (k0, k1):
    (hi0, lo0) = 0xD2511F53 * x0,  (hi1, lo1) = 0xCD9E8D57 * x2     (64-bit products, high and low words)
    (x0, x1, x2, x3) <- (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0)
ten rounds, the key bumped by (0x9E3779B9, 0xBB67AE85) between rounds.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint32_t, uint64_t

from cynet._kernels._openmp cimport split_length


cdef enum:
    # Philox blocks computed side by side (each a lane of the compiler's vectors): 64 mask values per group.
    GROUP_BLOCKS = 16


cdef extern from *:
    """
    /* Philox4x32-10 for `group` blocks b = first .. first + group - 1; words[4 l + w] = word w of block first + l.
       One loop over the blocks whose body is the ten rounds, the round keys precomputed: the compiler runs the
       blocks side by side in its vector lanes. The 32-bit words live in 64-bit lanes (values below 2^32), so that
       nothing is repacked between rounds. (Intrinsics, vpmuludq on 64-bit lanes, were measured: AVX2 441 against
       565 us per (256, 1024) mask and product on one thread, AVX-512 357 against 191: not kept.) */
    #define CYNET_PHILOX_ROUND(r)                                                                                 \
        { uint64_t p0 = (x0 & lo32) * m0, p1 = (x2 & lo32) * m1;                                                  \
          uint64_t y0 = (p1 >> 32) ^ x1 ^ k0[r], y2 = (p0 >> 32) ^ x3 ^ k1[r];                                   \
          x1 = p1 & lo32; x3 = p0 & lo32; x0 = y0; x2 = y2; }
    static void cynet_philox_group(uint64_t first, uint64_t key, uint32_t* CYTHON_RESTRICT words, int group) {
        const uint64_t lo32 = 0xFFFFFFFFu, m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
        uint64_t k0[10], k1[10];
        int r, l;
        k0[0] = key & lo32; k1[0] = key >> 32;
        for (r = 1; r < 10; r++) { k0[r] = (k0[r - 1] + 0x9E3779B9u) & lo32; k1[r] = (k1[r - 1] + 0xBB67AE85u) & lo32; }
        for (l = 0; l < group; l++) {
            uint64_t b = first + (uint64_t)l;
            uint64_t x0 = b & lo32, x1 = b >> 32, x2 = 0, x3 = 0;
            CYNET_PHILOX_ROUND(0) CYNET_PHILOX_ROUND(1) CYNET_PHILOX_ROUND(2) CYNET_PHILOX_ROUND(3)
            CYNET_PHILOX_ROUND(4) CYNET_PHILOX_ROUND(5) CYNET_PHILOX_ROUND(6) CYNET_PHILOX_ROUND(7)
            CYNET_PHILOX_ROUND(8) CYNET_PHILOX_ROUND(9)
            words[4 * l] = (uint32_t)x0; words[4 * l + 1] = (uint32_t)x1;
            words[4 * l + 2] = (uint32_t)x2; words[4 * l + 3] = (uint32_t)x3;
        }
    }
    """
    void cynet_philox_group(uint64_t first, uint64_t key, uint32_t* words, int group) noexcept nogil


cdef void _dropout_span(const floating* x, floating* mask, floating* y, Py_ssize_t lo, Py_ssize_t hi, uint64_t key,
                        uint32_t threshold, bint keep_none, floating scale) noexcept nogil:
    """Elements [lo, hi), lo a multiple of 4 * GROUP_BLOCKS: the mask, and with x, y = x * mask."""
    cdef uint32_t words[4 * GROUP_BLOCKS]
    cdef Py_ssize_t i, j, n
    cdef floating m
    i = lo
    while i < hi:
        cynet_philox_group(<uint64_t>(i >> 2), key, words, GROUP_BLOCKS)
        n = min(hi - i, 4 * GROUP_BLOCKS)
        if keep_none:
            for j in range(n):
                mask[i + j] = 0
        else:
            for j in range(n):
                mask[i + j] = scale if words[j] >= threshold else 0
        if x != NULL:
            for j in range(n):
                y[i + j] = x[i + j] * mask[i + j]
        i += n


def dropout_mask(floating[::1] mask, uint64_t key, uint32_t threshold, bint keep_none, double scale,
                 int n_threads, const floating[::1] x=None, floating[::1] y=None):
    """Fill ``mask`` (flat, contiguous) with ``scale`` where element i is kept, 0 elsewhere (see the module
    docstring); given ``x`` and ``y`` of the mask's length, also y = x * mask in the same pass (y may be x)."""
    cdef Py_ssize_t n = mask.shape[0], length, c, n_chunks
    cdef const floating* xp = NULL
    cdef floating* yp = NULL
    cdef floating s = <floating>scale
    if (x is None) != (y is None) or (x is not None and (x.shape[0] != n or y.shape[0] != n)):
        raise ValueError(f"cynet._kernels.dropout.dropout_mask: x and y must both be given, with the mask's length "
                         f"{n}, or both be None")
    if n == 0:
        return
    if x is not None:
        xp = &x[0]
        yp = &y[0]
    length = split_length(n, n, n_threads, 4 * GROUP_BLOCKS)     # chunks start on whole groups
    n_chunks = (n + length - 1) // length
    with nogil:
        if n_chunks == 1:
            _dropout_span(xp, &mask[0], yp, 0, n, key, threshold, keep_none, s)
        else:
            for c in prange(n_chunks, schedule='static', num_threads=n_threads):
                _dropout_span(xp, &mask[0], yp, c * length, min(n, (c + 1) * length), key, threshold, keep_none, s)
