r"""Numerical gradient checking, following the CS231n notes ("Gradient checks").

The analytic gradient a module's ``backward`` computes is compared with the centred difference

.. math:: \frac{\partial L}{\partial w_i} \approx \frac{L(w + h e_i) - L(w - h e_i)}{2h}, \qquad h = 10^{-5},

whose error is :math:`O(h^2)` (the one-sided difference's is :math:`O(h)`), through the relative error

.. math:: e_i = \frac{|a_i - n_i|}{\max(|a_i|, |n_i|)} \qquad (0 \text{ when both are } 0).

**Rounding noise.** The centred difference cannot resolve a derivative below the rounding noise of the losses it
subtracts. The check evaluates :math:`f_\pm = L(w \pm h e_i)` at every sampled entry and the unperturbed
:math:`f_0 = L(w)` once, and estimates two levels from them:

.. math::
    \text{floor}_i = 10\,\varepsilon \max(|f_+|, |f_-|, S) / h, \qquad
    \delta_i = \max\Big(\text{floor}_i,\; \min\Big(c \max_{j} \frac{|f_+^{(j)} - 2 f_0 + f_-^{(j)}|}{h},\;
    10^4\, \text{floor}_i\Big)\Big), \quad c = 2,

- the **floor** is the rounding of the last operations on numbers of the size of the loss; :math:`S` is the sum
  of the magnitudes of the terms the loss adds up where the check knows them (:func:`check_module`'s
  :math:`L = \sum \text{dout} \odot y`: :math:`S = \sum |\text{dout} \odot y|`, larger than :math:`|L|` when the
  terms cancel), else 0. About :math:`5 \cdot 10^{-10}` for a loss near 2.3.
- :math:`\delta_i` adds the rounding noise the forward itself makes, which can be far above the floor (the bias of
  a Linear followed by batch norm, 1 against a batch spread of 0.01, loses two digits when the mean is subtracted,
  and batch norm's :math:`\gamma` multiplies what is left). Along an entry on which :math:`L` is (nearly) linear,
  the second difference :math:`f_+ - 2 f_0 + f_-` is pure rounding noise of the same origin and order as that of
  :math:`f_+ - f_-` (for independent errors about 3.5 times the centred difference's: :math:`\sqrt 6` against
  :math:`\sqrt 2 / 2`). One entry's second difference can still come out near 0 while its :math:`f_\pm` are off in
  opposite directions, so the level is pooled: the largest over the array's checked entries (kink-crossed ones
  left out), :math:`j` above. :math:`c = 2` leaves a margin; in batch-norm models the centred differences of such
  entries stayed below half the pooled second difference. The cap, :math:`10^5` epsilons of the loss (a forward
  that keeps 11 of its 16 digits), stops a large curvature or an undeclared kink from passing for rounding noise.

Each entry is then one of:

- **agreeing** (verified, counted as error 0): :math:`|a_i - n_i| \le \text{floor}_i` with one of them above the
  floor, or both exactly 0 (the loss did not move by a bit, and the backward says so). A gradient of
  :math:`3 \cdot 10^{-8}` (an L2 penalty's on a weight near 0) read through losses near 1 differs from its centred
  difference by rounding alone, a relative error of :math:`10^{-6}`. The verdict counts such an entry as 0; the
  printed report still shows the relative error measured (:attr:`ArrayCheck.max_measured_error`, typically
  :math:`10^{-11}`-:math:`10^{-8}` for a right gradient), and says so where counting it as 0 changes the band.
- **below the rounding noise** (error 0, *not* verified): otherwise, when :math:`\max(|a_i|, |n_i|) \le
  \delta_i`. Neither value says more than "about 0": a gradient that is exactly 0 in exact arithmetic (that bias's,
  whose numerical gradient is the forward's rounding noise) or one made tiny by a tiny input. The report counts
  these entries per array; an array with no other entry is "unresolved" (named in the report, but it does not fail
  the check: the bias before batch norm is one), and a check in which *no* entry is verified does not pass (its
  verdict says to scale the input or the loss up). Entries whose perturbation crossed a kink are not verified
  either: a check whose every sampled entry crossed one (a ReLU net at x = 0, integer scores at the SVM's margins)
  is unresolved too, and its verdict says to move the sample point.
- **compared**: every other entry, through :math:`e_i`.

What this can mask: the second difference also holds the curvature, :math:`f_+ - 2 f_0 + f_- \approx h^2
L''_{jj}`, so an entry whose gradients are below :math:`c h \max_j |L''_{jj}|`, and below the cap (about
:math:`2 \cdot 10^{-6} \max(|L|, S)`), and do not agree within the floor is reported as below the noise, wrong or
not: an entry near a stationary point of :math:`L` along it (a weight within :math:`2h` of 0 under an L2 penalty,
a trained model near a minimum). It is never counted as agreeing, and the
second difference is never used for agreement (there the curvature would excuse relative errors of about
:math:`c h |L''_{ii}| / |L'_i|`, :math:`10^{-5}` and more); other entries of the array still catch a gradient
that is wrong everywhere. Like any floor, both levels also hide a gradient that is wrong by less than the noise:
scale the input or the loss up when that matters.

The recipe of the notes, all applied here:

- **float64**: the model is deep-copied and cast (``copy.deepcopy(model).to(np.float64)``), the input too; in
  float32 the rounding error of :math:`L` divided by :math:`2h` swamps the comparison. Every forward gets a fresh
  copy of the (perturbed) input, so a module that works in place (``Sigmoid(inplace=True)``) cannot overwrite the
  array the check perturbs; parameters are perturbed in place through their own array, whatever its memory layout.
- **sampled entries**: ``num_checks`` entries (seeded) of every parameter, biases included, and of the input; each
  costs two forward passes.
- **dropout fixed**: after the first forward, every module with a ``reuse_mask`` attribute gets ``reuse_mask =
  True``, so all forward passes of the check see the same mask. The check runs inside
  :func:`cynet._random.generator_scope` with a generator seeded by ``seed``: a mask drawn from the global generator
  (``Dropout(generator=None)``) is reproducible from the check's seed, and cynet's global generator is neither read
  nor advanced (the masks drawn after a check are those drawn without it).
- **kinks**: :math:`\max(0, x)` and friends are not differentiable at their kinks; when :math:`x \pm h` lies on the
  other side the centred difference is meaningless. Every module with a ``kink_state()`` method (ReLU's positive
  mask, Maxout's winners, MaxPool2d's argmax positions, ...; the loss too) is read at :math:`w`, :math:`w + h e_i`
  and :math:`w - h e_i`; an entry whose perturbation changes any state is counted as "kink crossed" and left out of
  the verdict.
- **regularisation checked separately** (:func:`check_model`): a penalty's gradient is often much larger than the
  data loss's and would hide a bug in the latter, so the data loss is checked first and the penalty alone second.
- **accumulation** (beyond the notes): a second backward pass on the same forward must double every parameter's
  ``.grad``; a backward that assigns (``p.grad = ...``) instead of adding gives the right first gradient and would pass
  the comparison, then break gradient accumulation and tied weights. Such parameters fail the check, named in
  :attr:`GradcheckReport.not_accumulating` (a module whose backward refuses a second call is not checked for it).

Reading the maximum relative error (the lecture's bands, :func:`verdict`):

=================  ==============================================================
``> 1e-2``         wrong: the gradient is probably wrong
``1e-4 .. 1e-2``   uncomfortable
``1e-7 .. 1e-4``   ok for kinked functions (fine if kinks present, otherwise suspicious)
``< 1e-7``         good
=================  ==============================================================

A check passes when its maximum error is below ``tolerance`` (1e-6) without kinks, ``kink_tolerance`` (1e-4) with
them. A smooth model that passes with an error above 1e-7 is in the lecture's "suspicious" band: the report says so
next to PASSED and shows the worst entry.

The entry points return a :class:`GradcheckReport`: print it for a table, test ``report.passed`` or call
``report.raise_if_failed()``.

Example:
    >>> import numpy as np
    >>> from cynet import nn, gradcheck
    >>> model = nn.Sequential(nn.Linear(5, 4, generator=0), nn.Tanh(), nn.Linear(4, 3, generator=1))
    >>> report = gradcheck.check_module(model, np.random.default_rng(0).standard_normal((2, 5)))
    >>> report.passed, report.verdict
    (True, 'good')
"""
import copy
import inspect
import numbers
from dataclasses import dataclass, field

import numpy as np

from cynet._random import generator_scope
from cynet._validation import describe, is_count

__all__ = ["rel_error", "verdict", "check_module", "check_loss", "check_model", "ArrayCheck", "GradcheckReport",
           "GradientCheckError"]

#: The lecture's bands: (lower bound of the band, its verdict), from the worst down.
BANDS = (
    (1e-2, "wrong"),
    (1e-4, "uncomfortable"),
    (1e-7, "ok for kinked functions (fine if kinks present, otherwise suspicious)"),
)
GOOD = "good"
#: Multiples of float64's epsilon * |L| / h below which a centred difference is rounding noise (see the module doc).
NOISE_FACTOR = 10.0
#: c: multiples of the second difference |f+ - 2 f0 + f-| / h taken as the centred difference's rounding noise.
SECOND_DIFFERENCE_FACTOR = 2.0
#: The most rounding noise a float64 forward is taken to make, in multiples of epsilon * |L| / h (module doc).
MAX_NOISE_FACTOR = 1e5
#: The verdict of a check in which no entry rose above the rounding noise (see :attr:`GradcheckReport.verdict`).
UNRESOLVED = "unresolved: gradients below the rounding noise"
#: The verdict of a check whose every sampled entry crossed a kink (nothing was compared).
UNRESOLVED_KINKS = "unresolved: every sampled entry crossed a kink"
#: The verdict of a check that sampled no entry at all (every parameter frozen and ``check_input=False``).
NOTHING_CHECKED = ("nothing checked: no learnable parameter (frozen ones are skipped) and no input (check_input=False) "
                   "to sample")
#: Appended to an array's band in the printed table when its measured error lies in a worse band than the error
#: counted (entries agreeing within the loss's rounding floor count as 0; see the module doc).
WITHIN_ROUNDING = " (agrees within the loss's rounding)"


def rel_error(a, n):
    r"""Elementwise relative error :math:`|a - n| / \max(|a|, |n|)`, 0 where both are 0.

    Args:
        a (array_like): analytic gradient values.
        n (array_like): numerical gradient values (same shape, or broadcastable).

    Returns:
        ndarray: float64 errors in [0, 2] (NaN when an input is NaN).

    Example:
        >>> from cynet.gradcheck import rel_error
        >>> rel_error([1.0, 0.0, -2.0], [1.1, 0.0, 2.0])
        array([0.09090909, 0.        , 2.        ])
    """
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    num = np.abs(a - n)
    den = np.maximum(np.abs(a), np.abs(n))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((num == 0) & (den == 0), 0.0, num / np.where(den == 0, 1.0, den))


def verdict(error):
    """The lecture's reading of a maximum relative error: "wrong", "uncomfortable", "ok for kinked functions (...)"
    or "good". NaN reads as "wrong".

    Example:
        >>> from cynet.gradcheck import verdict
        >>> verdict(3e-9), verdict(5e-3)
        ('good', 'uncomfortable')
    """
    error = float(error)
    if np.isnan(error):
        return BANDS[0][1]
    for bound, name in BANDS:
        if error > bound:
            return name
    return GOOD


class GradientCheckError(AssertionError):
    """Raised by :meth:`GradcheckReport.raise_if_failed`; its message is the report's table."""


@dataclass
class ArrayCheck:
    r"""The check of one array (a parameter or the input).

    Attributes:
        name (str): ``"0.weight"``, ``"input"``, ``"scores"``, ...
        section (str): ``"data loss"``, ``"regularisation"``, ``"module"`` or ``"loss"``.
        shape (tuple): the array's shape.
        indices (list[tuple]): the checked entries (multi-indices), kink-crossed ones included.
        analytic, numeric (ndarray): per checked entry.
        errors (ndarray): per checked entry, the relative error the verdict counts (0 for entries agreeing within
            the loss's rounding floor and for those below the rounding noise; see the module doc).
        kink (ndarray of bool): the entries whose perturbation crossed a kink (left out of :attr:`max_error`).
        below_noise (ndarray of bool): the entries whose analytic and numerical values are both below the rounding
            noise (error 0, not verified; see the module doc). Default: none.
        noise (ndarray): each entry's rounding-noise level :math:`\delta_i`. Default: zeros.
        measured (ndarray): per checked entry, the relative error :math:`|a_i - n_i| / \max(|a_i|, |n_i|)` as
            measured, before the rounding rules set any to 0 (what the printed report shows). Default: ``errors``.
    """

    name: str
    section: str
    shape: tuple
    indices: list = field(default_factory=list)
    analytic: np.ndarray = None
    numeric: np.ndarray = None
    errors: np.ndarray = None
    kink: np.ndarray = None
    below_noise: np.ndarray = None
    noise: np.ndarray = None
    measured: np.ndarray = None

    def __post_init__(self):
        if self.measured is None:
            self.measured = self.errors
        if self.below_noise is None:
            self.below_noise = np.zeros(len(self.indices), dtype=bool)
        if self.noise is None:
            self.noise = np.zeros(len(self.indices))

    @property
    def _verified(self):
        return ~self.kink & ~self.below_noise

    @property
    def num_checked(self):
        """Entries that count in the verdict (sampled minus kink-crossed minus below the rounding noise)."""
        return int(np.count_nonzero(self._verified))

    @property
    def num_kinks(self):
        """Entries left out because their perturbation crossed a kink."""
        return int(np.count_nonzero(self.kink))

    @property
    def num_below_noise(self):
        """Entries left out because both gradients are below the rounding noise (not kink-crossed ones)."""
        return int(np.count_nonzero(self.below_noise & ~self.kink))

    @property
    def unresolved(self):
        """True when no entry is verified and some were sampled (below the rounding noise, or crossing a kink): the
        check says nothing about this array's gradient."""
        return self.num_checked == 0 and (self.num_below_noise > 0 or self.num_kinks > 0)

    @property
    def unresolved_reason(self):
        """Why :attr:`unresolved` (None when it is not): the rounding noise, the kinks, or both."""
        if not self.unresolved:
            return None
        if self.num_below_noise and self.num_kinks:
            return "below the rounding noise or kink-crossed"
        return "below the rounding noise" if self.num_below_noise else "every entry kink-crossed"

    def _largest(self, errors):
        counted = errors[self._verified]
        if counted.size == 0:
            return 0.0
        return float(np.max(np.where(np.isnan(counted), np.inf, counted)))

    @property
    def max_error(self):
        """Largest relative error over the counted entries (NaN counts as inf; 0 when none counts): what the
        verdict reads, entries agreeing within the rounding floor counted as 0."""
        return self._largest(self.errors)

    @property
    def max_measured_error(self):
        """Largest relative error as measured over the same entries (agreeing ones with their own value): the
        number the printed report shows."""
        return self._largest(self.measured)

    @property
    def worst(self):
        """``(index, analytic, numeric, error)`` of the worst counted entry, or None."""
        counted = np.flatnonzero(self._verified)
        if counted.size == 0:
            return None
        errors = np.where(np.isnan(self.errors), np.inf, self.errors)
        i = counted[np.argmax(errors[counted])]
        return self.indices[i], float(self.analytic[i]), float(self.numeric[i]), float(self.errors[i])


class GradcheckReport:
    """The result of a gradient check: one :class:`ArrayCheck` per array, a verdict and pass/fail.

    Attributes:
        arrays (list[ArrayCheck]): in the order checked (data-loss section before the regularisation section).
        kinks_present (bool): some module exposed a kink state (ReLU, Maxout, ...), so the kink tolerance applies.
        tolerance (float): the pass threshold for smooth functions. kink_tolerance (float): the one with kinks.
        notes (list[str]): how the check ran ("dropout fixed", "regularisation checked separately", frozen
            parameters skipped, ...).

    Printed, it is a table (one row per array: entries verified, kink-crossed, below the rounding noise, the
    largest error and its band), then the worst entry when the check failed or passed in the suspicious band, the
    entries below the rounding noise, and the overall line.
    """

    def __init__(self, arrays, *, kinks_present, tolerance, kink_tolerance, h, num_checks, seed, notes=(),
                 not_accumulating=()):
        self.arrays = list(arrays)
        self.not_accumulating = list(not_accumulating)
        self.kinks_present = bool(kinks_present)
        self.tolerance = float(tolerance)
        self.kink_tolerance = float(kink_tolerance)
        self.h = h
        self.num_checks = num_checks
        self.seed = seed
        self.notes = list(notes)

    @property
    def max_error(self):
        """Largest relative error over every counted entry of every array."""
        return max((a.max_error for a in self.arrays), default=0.0)

    @property
    def max_measured_error(self):
        """Largest measured relative error over every counted entry of every array (see
        :attr:`ArrayCheck.max_measured_error`)."""
        return max((a.max_measured_error for a in self.arrays), default=0.0)

    @property
    def num_kinks(self):
        """Entries skipped because their perturbation crossed a kink."""
        return sum(a.num_kinks for a in self.arrays)

    @property
    def num_below_noise(self):
        """Entries not verified because both their gradients are below the rounding noise."""
        return sum(a.num_below_noise for a in self.arrays)

    @property
    def unresolved_arrays(self):
        """Names of the arrays with no verified entry and some below the rounding noise or kink-crossed (data-loss
        section first)."""
        return [a.name for a in self.arrays if a.unresolved]

    @property
    def unresolved(self):
        """True when no entry of any array was verified and some were sampled (below the rounding noise, or crossing
        a kink): the check cannot tell a right gradient from a wrong one (scale the input or the loss up; move the
        sample point off the kinks)."""
        return (self.num_below_noise > 0 or self.num_kinks > 0) and not any(a.num_checked for a in self.arrays)

    @property
    def nothing_checked(self):
        """True when no entry was sampled at all: every parameter frozen (or none) and the input not checked, or
        only empty arrays. Such a check compared nothing and does not pass."""
        return not any(a.indices for a in self.arrays)

    @property
    def noise_level(self):
        """The largest rounding-noise level :math:`\\delta_i` of the entries below the noise (0 when none is)."""
        levels = [float(np.max(a.noise[a.below_noise & ~a.kink])) for a in self.arrays if a.num_below_noise]
        return max(levels, default=0.0)

    @property
    def verdict(self):
        """The lecture's band of :attr:`max_error` (see :func:`verdict`); when the check is :attr:`unresolved`,
        ``"unresolved: gradients below the rounding noise (|n| <= ...); scale the input or the loss up"``; when
        :attr:`nothing_checked`, ``"nothing checked: ..."``."""
        if self.nothing_checked:
            return NOTHING_CHECKED
        if self.unresolved and not self.num_below_noise:
            return f"{UNRESOLVED_KINKS}; move the sample point (another input, or a random one)"
        if self.unresolved:
            kinks = f", the other {self.num_kinks} crossed kinks" if self.num_kinks else ""
            return f"{UNRESOLVED} (|n| <= {self.noise_level:.1e}{kinks}); scale the input or the loss up"
        return verdict(self.max_error)

    @property
    def threshold(self):
        """The error the check must stay below: ``kink_tolerance`` if kinks are present, else ``tolerance``."""
        return max(self.tolerance, self.kink_tolerance) if self.kinks_present else self.tolerance

    @property
    def passed(self):
        """True when :attr:`max_error` is below :attr:`threshold` and the check is not :attr:`unresolved` (some
        entry rose above the rounding noise). An array that is unresolved while others are verified (the bias of a
        Linear followed by batch norm, whose gradient is exactly 0) does not fail the check; the report names it. A
        check that sampled no entry at all (:attr:`nothing_checked`) does not pass either."""
        return (not self.unresolved and not self.nothing_checked and self.max_error < self.threshold
                and not self.not_accumulating)

    @property
    def suspicious(self):
        """True when the check passed without kinks but above the lecture's "good" bound 1e-7 (its "otherwise
        suspicious" band)."""
        return self.passed and not self.kinks_present and self.max_error > BANDS[-1][0]

    def __getitem__(self, name):
        """The :class:`ArrayCheck` named ``name`` (the first one, data-loss section first)."""
        for a in self.arrays:
            if a.name == name:
                return a
        raise KeyError(f"GradcheckReport: no array named {name!r}; checked {[a.name for a in self.arrays]}")

    def raise_if_failed(self):
        """Raise :class:`GradientCheckError` (an AssertionError) with the table when the check did not pass."""
        if not self.passed:
            raise GradientCheckError("gradient check failed\n" + str(self))
        return self

    def __str__(self):
        head = (f"Gradient check: float64, centred differences h={self.h:g}, up to {self.num_checks} entries per "
                f"array, seed {self.seed}")
        if self.notes:
            head += "; " + "; ".join(self.notes)
        rows = [("section", "array", "shape", "checked", "kinks", "below noise", "max rel error", "verdict")]
        for a in self.arrays:
            band = verdict(a.max_error)
            if verdict(a.max_measured_error) != band:
                band += WITHIN_ROUNDING
            rows.append((a.section, a.name, str(a.shape), str(a.num_checked), str(a.num_kinks),
                         str(a.num_below_noise), f"{a.max_measured_error:.2e}",
                         f"unresolved ({a.unresolved_reason})" if a.unresolved else band))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
        lines = [head]
        for r in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
        worst = max(self.arrays, key=lambda a: a.max_error, default=None)
        if worst is not None and worst.worst is not None and (not self.passed or self.suspicious):
            index, an, nu, err = worst.worst
            lines.append(f"worst entry ({worst.section}): {worst.name}{list(index)}: analytic {an:.6e}, "
                         f"numeric {nu:.6e}, rel error {err:.2e}")
        if self.num_below_noise:
            text = (f"{self.num_below_noise} entries below the rounding noise (|a|, |n| <= "
                    f"{self.noise_level:.1e}): not verified")
            if self.unresolved_arrays and not self.unresolved:
                text += (f"; arrays with no entry verified: {', '.join(self.unresolved_arrays)} (fine for a gradient "
                         f"that is exactly 0, such as a bias before batch norm; else scale the input or the loss up)")
            lines.append(text)
        if self.not_accumulating:
            status = (f"FAILED: the backward does not add into .grad for {', '.join(self.not_accumulating)} (a second "
                      f"backward did not double it: assigned, not accumulated?)")
        elif self.nothing_checked:
            status = "FAILED: no entry was compared"
        elif self.unresolved and not self.num_below_noise:
            status = "FAILED: no entry was compared (every one crossed a kink)"
        elif self.unresolved:
            status = "FAILED: no entry rose above the rounding noise"
        elif self.suspicious:
            # the tolerance lets it pass, the lecture's bands call it suspicious without kinks: say both
            status = (f"PASSED the tolerance, but with no kinks present an error above {BANDS[-1][0]:g} is "
                      f"suspicious (see the worst entry)")
        else:
            status = "PASSED" if self.passed else "FAILED"
        kinks = f", {self.num_kinks} kink-crossed entries skipped" if self.num_kinks else ""
        unresolved = (f"; unresolved: {', '.join(self.unresolved_arrays)}" if self.unresolved_arrays
                      and not self.unresolved else "")
        rounding = ""
        if verdict(self.max_measured_error) != verdict(self.max_error) and not self.unresolved:
            rounding = (f" (entries agreeing within the loss's rounding counted as 0: max counted "
                        f"{self.max_error:.2e})")
        lines.append(f"overall: max rel error {self.max_measured_error:.2e}{rounding} -> {self.verdict}; {status} "
                     f"(threshold {self.threshold:g}{', kinks present' if self.kinks_present else ''}){kinks}"
                     f"{unresolved}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"GradcheckReport(max_error={self.max_error:.2e}, verdict={self.verdict!r}, passed={self.passed}, "
                f"arrays={[a.name for a in self.arrays]})")


# --- machinery -------------------------------------------------------------------------------------------------------
def _not_accumulating(params, grads, second_backward, notes):
    """Names of the parameters whose gradient a second backward pass (after the first, on the same forward) did not
    add to ``.grad``: the README's contract is ``grad += ...``; a backward that assigns (``p.grad = ...``, a typical
    slip) gives the same first gradient and passes the check, then breaks gradient accumulation and tied weights."""
    try:
        second_backward()
    except Exception as error:          # (a custom module whose backward runs once per forward: not checked)
        notes.append(f"accumulation not checked (a second backward raised {type(error).__name__})")
        return []
    wrong = []
    for name, p in params:
        first = grads[name]
        if not np.allclose(p.grad, 2 * first, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(first), initial=0.0))):
            wrong.append(name)
    return wrong


def _validate_settings(fn, num_checks, h, tolerance, kink_tolerance, seed):
    if not is_count(seed):
        # default_rng(None) would draw fresh entropy: a check that changes on every call and that the report's
        # "seed None" cannot reproduce
        raise ValueError(f"{fn}: seed must be a non-negative int, got {seed!r}")
    if isinstance(num_checks, bool) or not isinstance(num_checks, numbers.Integral) or num_checks < 1:
        raise ValueError(f"{fn}: num_checks must be a positive int, got {num_checks!r}")
    for name, value in (("h", h), ("tolerance", tolerance), ("kink_tolerance", kink_tolerance)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < np.inf):
            raise ValueError(f"{fn}: {name} must be a positive finite number, got {value!r}")


def _float64_copy(module):
    if not hasattr(module, "to"):
        return copy.deepcopy(module)
    return copy.deepcopy(module).to(np.float64)


def _float64_input(fn, name, x):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be floating point to be checked, got {describe(x)}")
    return np.array(x, dtype=np.float64, order="C", copy=True)


def _float64_targets(y):
    """Floating targets (regression) go to float64 like the scores; labels pass through unchanged."""
    y_array = np.asarray(y)
    return np.array(y_array, dtype=np.float64) if y_array.dtype.kind == "f" else y


def _kink_modules(*roots):
    found = []
    for root in roots:
        members = root.modules() if hasattr(root, "modules") else [root]
        found.extend(m for m in members if callable(getattr(m, "kink_state", None)))
    return found


class _PenaltyKinks:
    """A penalty's ``kink_state(model)`` as the ``kink_state()`` the checks read; a penalty whose ``kink_state``
    takes no argument (a module's form: it reads the weights it holds) is called without one."""

    def __init__(self, penalty, model):
        self.penalty, self.model = penalty, model
        try:
            takes_model = bool(inspect.signature(penalty.kink_state).parameters)
        except (TypeError, ValueError):        # no signature to read (a builtin): the documented form
            takes_model = True
        self.arguments = (model,) if takes_model else ()

    def kink_state(self):
        return self.penalty.kink_state(*self.arguments)


def _kink_states(modules):
    states = []
    for m in modules:
        s = m.kink_state()
        states.append(None if s is None else np.array(s, copy=True))
    return states


def _same_states(s1, s2):
    return all((a is None and b is None) or (a is not None and b is not None and a.shape == b.shape
                                             and np.array_equal(a, b)) for a, b in zip(s1, s2))


def _fix_dropout(*roots):
    """Set ``reuse_mask = True`` on every module that has the attribute; True when one of them is in training mode
    (in evaluation mode dropout is the identity and there is no mask to fix)."""
    fixed = False
    for root in roots:
        for m in (root.modules() if hasattr(root, "modules") else [root]):
            if hasattr(m, "reuse_mask"):
                m.reuse_mask = True
                fixed = fixed or bool(getattr(m, "training", True))
    return fixed


def _check_array(name, section, array, analytic, loss, f0, scale, kink_modules, base_states, rng, num_checks, h):
    """Compare ``analytic`` with centred differences of ``loss()`` at sampled entries of ``array`` (perturbed in
    place and restored); ``f0`` is ``loss()`` unperturbed and ``scale`` the magnitude of the loss's terms (or 0),
    both for the rounding-noise level of the module doc."""
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != array.shape:
        raise ValueError(f"gradcheck: the analytic gradient of {name!r} has shape {analytic.shape}, the array "
                         f"{array.shape}")
    k = min(num_checks, array.size)
    flat_indices = np.sort(rng.choice(array.size, size=k, replace=False)) if k else np.empty(0, np.int64)
    # multi-indices write through to the array whatever its layout (a reshape of a Fortran-ordered or strided
    # parameter would be a copy, and the perturbation would never reach the forward)
    indices = [tuple(int(v) for v in np.unravel_index(i, array.shape)) for i in flat_indices]
    an = np.empty(k)
    nu = np.empty(k)
    size = np.empty(k)
    second = np.empty(k)
    kink = np.zeros(k, dtype=bool)
    for j, index in enumerate(indices):
        old = array[index]
        array[index] = old + h
        fp = float(loss())
        crossed = not _same_states(base_states, _kink_states(kink_modules))
        array[index] = old - h
        fm = float(loss())
        crossed = crossed or not _same_states(base_states, _kink_states(kink_modules))
        array[index] = old
        an[j] = analytic[index]
        nu[j] = (fp - fm) / (2 * h)
        size[j] = np.finfo(np.float64).eps * max(abs(fp), abs(fm), scale) / h
        # on an entry where the loss is (nearly) linear this is the rounding noise of the forward itself
        second[j] = abs(fp - 2 * f0 + fm) / h
        kink[j] = crossed
    # one noise level per array: the largest second difference of its smooth entries (a single entry's can come out
    # near 0 by chance, f+ and f- off in opposite directions, while its centred difference is all noise), capped so
    # that curvature or an undeclared kink cannot pass for rounding noise beyond 1e5 epsilons of the loss
    floor = NOISE_FACTOR * size
    pooled = float(np.max(second[~kink], initial=0.0))
    noise = np.maximum(floor, np.minimum(SECOND_DIFFERENCE_FACTOR * pooled, MAX_NOISE_FACTOR * size))
    measured = rel_error(an, nu)
    errors = measured.copy()
    # equal to within the rounding of the loss, with one of them above it: verified (the second difference is not
    # used here: on a curved entry it is h^2 L'', which would excuse relative errors of about 1e-5)
    agree = (np.abs(an - nu) <= floor) & (np.maximum(np.abs(an), np.abs(nu)) > floor)
    # both below the noise: the entry resolves nothing (not verified). Exact zeros on both sides are agreement. A
    # kink-crossed entry keeps its error (its second difference is the kink's, not rounding noise)
    below = (np.maximum(np.abs(an), np.abs(nu)) <= noise) & ((an != 0) | (nu != 0)) & ~agree & ~kink
    errors[below | agree] = 0.0
    return ArrayCheck(name=name, section=section, shape=tuple(array.shape), indices=indices, analytic=an, numeric=nu,
                      errors=errors, kink=kink, below_noise=below, noise=noise, measured=measured)


def _parameters(model, notes):
    """``(name, Parameter)`` of the learnable parameters; frozen ones are noted and skipped."""
    named = list(model.named_parameters()) if hasattr(model, "named_parameters") else []
    frozen = [name for name, p in named if not p.requires_grad]
    if frozen:
        notes.append(f"frozen parameters skipped: {', '.join(frozen)}")
    return [(name, p) for name, p in named if p.requires_grad]


# --- entry points ----------------------------------------------------------------------------------------------------
def check_module(module, x, *, num_checks=10, h=1e-5, seed=0, check_input=True, dout=None, tolerance=1e-6,
                 kink_tolerance=1e-4):
    r"""Gradient check of one module (or a :class:`~cynet.nn.Sequential`) through the loss
    :math:`L = \sum_i \text{forward}(x)_i \, \text{dout}_i`, whose gradient with respect to the output is ``dout``.

    A float64 deep copy of ``module`` runs ``backward(dout)`` once (after ``zero_grad``); then ``num_checks``
    sampled entries of every learnable parameter (frozen ones are skipped) and of ``x`` are perturbed by
    :math:`\pm h` and the forward re-run. The module passed in is not modified.

    Args:
        module (Module): the module, in its current mode (``train()`` checks dropout with a fixed mask).
        x (ndarray): a floating-point input (copied to float64).
        num_checks (int): entries sampled per array (all of them when the array is smaller). Default 10.
        h (float): the perturbation. Default 1e-5.
        seed (int): seeds the entry sampling, the random ``dout`` and the draws modules make from cynet's global
            generator during the check (a ``Dropout(generator=None)`` mask); the global generator itself is left
            alone. Default 0.
        check_input (bool): also check dx. Default True.
        dout (ndarray, optional): the upstream gradient; default standard-normal draws.
        tolerance (float): pass threshold when no module has kinks. Default 1e-6.
        kink_tolerance (float): pass threshold when some module exposes ``kink_state()``. Default 1e-4.

    Returns:
        GradcheckReport: arrays named like ``"0.weight"``, ``"0.bias"``, ``"input"``.

    Raises:
        ValueError: a setting out of range, a ``dout`` of the wrong shape, a backward that returns no input gradient
            (with ``check_input``) or an analytic gradient of the wrong shape.
        TypeError: ``x`` is not floating point.

    Shape:
        x: whatever the module takes; dout: the module's output shape.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> from cynet.gradcheck import check_module
        >>> check_module(nn.Linear(4, 3, generator=0), np.ones((2, 4))).verdict
        'good'
    """
    fn = "check_module"
    _validate_settings(fn, num_checks, h, tolerance, kink_tolerance, seed)
    model = _float64_copy(module)
    x = _float64_input(fn, "x", x)
    rng = np.random.default_rng(seed)
    notes = []
    with generator_scope(np.random.default_rng(seed)):         # global draws (dropout masks) seeded, and kept apart
        out = np.asarray(model(x.copy()))
        if _fix_dropout(model):
            notes.append("dropout fixed")
        if dout is None:
            dout = rng.standard_normal(out.shape)
        else:
            dout = np.asarray(dout)
            if dout.shape != out.shape:
                raise ValueError(f"{fn}: dout must have the output's shape {out.shape}, got {describe(dout)}")
            dout = np.array(dout, dtype=np.float64)

        def loss_terms():
            # a fresh copy for every forward: an in-place module would otherwise overwrite the array perturbed here
            return np.asarray(model(x.copy())) * dout

        def loss():
            return np.sum(loss_terms())

        model.zero_grad()
        terms = loss_terms()                   # a fresh forward (mask fixed) so the caches belong to this x
        f0 = float(np.sum(terms))
        scale = float(np.sum(np.abs(terms)))   # S = sum |dout * y|: the rounding of L's own sum (module doc)
        kink_modules = _kink_modules(model)
        base = _kink_states(kink_modules)
        dx = model.backward(dout, input_grad=check_input)
        params = _parameters(model, notes)
        grads = {name: p.grad.copy() for name, p in params}
        not_accumulating = _not_accumulating(params, grads, lambda: model.backward(dout, input_grad=check_input),
                                             notes)

        arrays = [_check_array(name, "module", p.data, grads[name], loss, f0, scale, kink_modules, base, rng,
                               num_checks, h) for name, p in params]
        if check_input:
            if dx is None:
                raise ValueError(f"{fn}: {type(module).__name__}.backward returned None for the input gradient")
            arrays.append(_check_array("input", "module", x, dx, loss, f0, scale, kink_modules, base, rng,
                                       num_checks, h))
    return GradcheckReport(arrays, kinks_present=any(s is not None for s in base), tolerance=tolerance,
                           kink_tolerance=kink_tolerance, h=h, num_checks=num_checks, seed=seed, notes=notes,
                           not_accumulating=not_accumulating)


def check_loss(loss_module, scores, y, *, num_checks=10, h=1e-5, seed=0, tolerance=1e-6, kink_tolerance=1e-4):
    r"""Gradient check of a loss: ``backward()`` (dL/dscores) against centred differences of
    ``forward(scores, y)``.

    Args:
        loss_module: an object with ``forward(scores, y) -> float`` and ``backward() -> dscores`` (the losses of
            :mod:`cynet.nn.loss`); ``kink_state()`` when it has kinks (the SVM's margins).
        scores (ndarray): the scores, copied to float64.
        y: the targets: labels pass through unchanged, floating targets are copied to float64.
        num_checks, h, seed, tolerance, kink_tolerance: as for :func:`check_module`.

    Returns:
        GradcheckReport: one array, ``"scores"``.

    Raises:
        ValueError, TypeError: as for :func:`check_module`.

    Shape:
        scores (N, C) (or whatever the loss takes); y as the loss expects.

    Example:
        >>> import numpy as np
        >>> from cynet.nn.loss import SoftmaxCrossEntropy
        >>> scores = np.random.default_rng(0).standard_normal((4, 3))
        >>> check_loss(SoftmaxCrossEntropy(), scores, np.array([0, 2, 1, 1])).verdict
        'good'
    """
    fn = "check_loss"
    _validate_settings(fn, num_checks, h, tolerance, kink_tolerance, seed)
    loss_module = _float64_copy(loss_module)
    scores = _float64_input(fn, "scores", scores)
    y = _float64_targets(y)
    rng = np.random.default_rng(seed)

    def loss():
        return loss_module.forward(scores.copy(), y)          # a copy: a loss may work in its scores' array

    with generator_scope(np.random.default_rng(seed)):
        f0 = float(loss())
        kink_modules = _kink_modules(loss_module)
        base = _kink_states(kink_modules)
        dscores = loss_module.backward()
        arrays = [_check_array("scores", "loss", scores, dscores, loss, f0, 0.0, kink_modules, base, rng, num_checks,
                               h)]
    return GradcheckReport(arrays, kinks_present=any(s is not None for s in base), tolerance=tolerance,
                           kink_tolerance=kink_tolerance, h=h, num_checks=num_checks, seed=seed)


def check_model(model, loss_module, x, y, *, regularization=None, num_checks=10, h=1e-5, seed=0, check_input=True,
                tolerance=1e-6, kink_tolerance=1e-4):
    r"""End-to-end gradient check of a model and its loss, with the regularisation checked separately.

    Section "data loss": :math:`L = \text{loss}(\text{model}(x), y)`; the analytic gradients come from
    ``loss_module.backward()`` fed into ``model.backward``; every learnable parameter and (``check_input``) the input
    are sampled. Section "regularisation" (when ``regularization`` is given): the penalty :math:`R(\text{model})`
    alone, its gradient from ``regularization.backward(model)`` after ``zero_grad``, every parameter sampled. Checking
    the two apart keeps a large penalty gradient from hiding a wrong data gradient (the CS231n advice).

    Args:
        model (Module): the network (copied and cast to float64; the original is untouched).
        loss_module: ``forward(scores, y) -> float``, ``backward() -> dscores`` (see :mod:`cynet.nn.loss`).
        x (ndarray): the input batch. y: its targets (floating ones are copied to float64).
        regularization (optional): an object with ``__call__(model) -> float`` and ``backward(model)`` that adds
            the penalty's gradient into the parameters' ``grad`` (e.g. ``cynet.nn.loss.L2Penalty(strength)``); a
            penalty with kinks gives ``kink_state(model)`` (L1's signs of the weights; a ``kink_state()`` without
            argument is read as a module's), and an entry whose perturbation changes it is "kink crossed", as for
            the modules.
        num_checks, h, seed, check_input, tolerance, kink_tolerance: as for :func:`check_module`.

    Returns:
        GradcheckReport: arrays of section ``"data loss"`` then ``"regularisation"``.

    Raises:
        ValueError, TypeError: as for :func:`check_module`.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> from cynet.nn.loss import SoftmaxCrossEntropy, L2Penalty
        >>> model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        >>> x, y = np.random.default_rng(0).standard_normal((6, 5)), np.array([0, 1, 2, 0, 1, 2])
        >>> check_model(model, SoftmaxCrossEntropy(), x, y, regularization=L2Penalty(1e-2)).passed
        True
    """
    fn = "check_model"
    _validate_settings(fn, num_checks, h, tolerance, kink_tolerance, seed)
    model = _float64_copy(model)
    loss_module = _float64_copy(loss_module)
    x = _float64_input(fn, "x", x)
    y = _float64_targets(y)
    rng = np.random.default_rng(seed)
    notes = []
    with generator_scope(np.random.default_rng(seed)):         # global draws (dropout masks) seeded, and kept apart
        model(x.copy())
        if _fix_dropout(model, loss_module):
            notes.append("dropout fixed")

        def data_loss():
            # a fresh copy for every forward: an in-place module would otherwise overwrite the array perturbed here
            return loss_module.forward(model(x.copy()), y)

        model.zero_grad()
        f0 = float(data_loss())
        kink_modules = _kink_modules(model, loss_module)
        base = _kink_states(kink_modules)
        dx = model.backward(loss_module.backward(), input_grad=check_input)
        params = _parameters(model, notes)
        grads = {name: p.grad.copy() for name, p in params}
        not_accumulating = _not_accumulating(
            params, grads, lambda: model.backward(loss_module.backward(), input_grad=check_input), notes)
        arrays = [_check_array(name, "data loss", p.data, grads[name], data_loss, f0, 0.0, kink_modules, base, rng,
                               num_checks, h) for name, p in params]
        if check_input:
            if dx is None:
                raise ValueError(f"{fn}: {type(model).__name__}.backward returned None for the input gradient")
            arrays.append(_check_array("input", "data loss", x, dx, data_loss, f0, 0.0, kink_modules, base, rng,
                                       num_checks, h))
        kinks_present = any(s is not None for s in base)

        if regularization is not None:
            notes.append("regularisation checked separately")
            model.zero_grad()
            regularization.backward(model)
            grads = {name: p.grad.copy() for name, p in params}
            reg_kinks = [_PenaltyKinks(regularization, model)] if callable(getattr(regularization, "kink_state",
                                                                                    None)) else []

            def penalty():
                return regularization(model)

            f0 = float(penalty())
            reg_base = _kink_states(reg_kinks)
            kinks_present = kinks_present or any(s is not None for s in reg_base)
            arrays += [_check_array(name, "regularisation", p.data, grads[name], penalty, f0, 0.0, reg_kinks,
                                    reg_base, rng, num_checks, h) for name, p in params]
    return GradcheckReport(arrays, kinks_present=kinks_present, tolerance=tolerance, kink_tolerance=kink_tolerance,
                           h=h, num_checks=num_checks, seed=seed, notes=notes, not_accumulating=not_accumulating)
