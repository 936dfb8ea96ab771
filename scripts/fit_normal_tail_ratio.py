"""Fit the rational function behind the float32 GELU (erf form): R(u) = Phi(-u) exp(u^2/2) on [0, 14.5].

Phi is the standard normal distribution function, so R is Mills' ratio over sqrt(2 pi). The fit is P(u) / Q(u) with
deg P = 4, deg Q = 5 and Q(0) = 1, minimising the maximum relative error (Lawson's iteratively reweighted least squares
over a linearised, Sanathanan-Koerner-weighted problem) on 3,000 Chebyshev nodes, against a 40-digit reference.
The coefficients printed are those of normal_tail_ratio in cynet/_kernels/_vecmath.pxd (max relative error 5.9e-9;
all positive, so that Horner's rule adds no cancellation).

Needs mpmath (not a cynet dependency: `pip install mpmath`; torch installs it).
Run: python scripts/fit_normal_tail_ratio.py
"""
import mpmath
import numpy as np

mpmath.mp.dps = 40
U_MAX = 14.5  # beyond, x Phi(x) and its slope round to 0 in float32 (the kernel clamps u at 15)
DEG_P, DEG_Q = 4, 5


def tail_ratio(u):
    u = mpmath.mpf(u)
    return float(mpmath.erfc(u / mpmath.sqrt(2)) / 2 * mpmath.exp(u * u / 2))


def fit(nodes=3000, iterations=200):
    k = np.arange(nodes)
    u = (1 - np.cos(np.pi * (k + 0.5) / nodes)) / 2 * U_MAX
    r = np.array([tail_ratio(v) for v in u])
    vp = np.vander(u, DEG_P + 1, increasing=True)
    vq = np.vander(u, DEG_Q + 1, increasing=True)
    weights, q_previous, best = np.ones(nodes), np.ones(nodes), None
    for _ in range(iterations):
        # P(u) - r Q(u) = 0 with Q(0) = 1; rows scaled to relative error through the previous Q
        a = np.hstack([vp, -r[:, None] * vq[:, 1:]])
        scale = np.sqrt(weights) / (r * q_previous)
        c, *_ = np.linalg.lstsq(a * scale[:, None], r * scale, rcond=None)
        p, q = c[:DEG_P + 1], np.concatenate([[1.0], c[DEG_P + 1:]])
        q_previous = vq @ q
        err = (vp @ p) / q_previous / r - 1
        if best is None or np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), p, q)
        weights = weights * np.abs(err)
        weights /= weights.sum()
    return best


if __name__ == "__main__":
    worst, p, q = fit()
    print(f"max relative error {worst:.2e}; all coefficients positive: {bool((p > 0).all() and (q > 0).all())}")
    print("P (u^0 first):", ", ".join(repr(float(v)) for v in p))
    print("Q (u^0 first):", ", ".join(repr(float(v)) for v in q))
