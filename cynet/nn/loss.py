r"""Data losses and the L2 penalty: softmax cross-entropy, the multiclass SVM, mean squared error, :class:`L2Penalty`.

A loss sits after the last layer: ``loss.forward(scores, y)`` (also ``loss(scores, y)``) returns the *mean* data loss
over the batch as a Python float, and ``loss.backward()`` returns :math:`\partial L / \partial \text{scores}`, which
is fed to ``model.backward``::

    data_loss = loss(model(x), y)
    model.backward(loss.backward(), input_grad=False)

Forward and gradient are computed together by one fused kernel (``cynet._kernels.losses``) in a single pass over
the scores, so ``backward()`` costs nothing: it returns the array the forward already filled. That array belongs to
the loss until the next forward, which writes a new one (an array returned earlier is never overwritten).

All losses take float32 or float64 scores (the gradient has their dtype) and accumulate the loss in double precision;
the result is bit-identical for any number of threads (:func:`cynet.set_num_threads`).

The regularisation penalty is separate from the data loss, as in CS231n: :class:`L2Penalty` adds
:math:`\tfrac{\lambda}{2}\sum W^2` over the weights and :math:`\lambda W` into their gradients.
"""
import math
import numbers

import numpy as np

from cynet._kernels import load
from cynet._threading import NS_EXP, kernel_threads
from cynet._validation import KERNEL_DTYPES, check_probabilities, describe, native
from cynet.nn.module import Module
from cynet.nn.utils import weight_matrices

__all__ = ["SoftmaxCrossEntropy", "CrossEntropyLoss", "MulticlassSVM", "MSELoss", "L2Penalty", "L1Penalty",
           "PenaltySum", "LossValue"]

_kernels = None


def _k():
    """The loss kernels, loaded on first use."""
    global _kernels
    if _kernels is None:
        _kernels = load("losses")
    return _kernels


# --- validation ------------------------------------------------------------------------------------------------------
def _float_scores(owner, name, scores):
    """``scores`` as a C-contiguous float32/float64 ndarray in the machine's byte order (copied only when strided or
    big-endian); TypeError otherwise."""
    a = native(scores)
    if a.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{owner}: {name} must be a float32 or float64 array, got {describe(a)}")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _class_scores(owner, scores):
    """Validated (N, C) scores with N >= 1 and C >= 1."""
    scores = _float_scores(owner, "scores", scores)
    if scores.ndim != 2:
        raise ValueError(f"{owner}: scores must be 2-d (N, C), got {describe(scores)}")
    if scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"{owner}: scores must have N >= 1 rows and C >= 1 classes, got {describe(scores)}")
    return scores


class LabelError(ValueError):
    """A label outside ``[0, C)``: ``label``, its ``position`` in the batch, ``num_classes`` C (the Trainer maps the
    position back to the row of the whole data set)."""

    def __init__(self, message, label, position, num_classes):
        super().__init__(message)
        self.label, self.position, self.num_classes = label, position, num_classes


def _labels(owner, y, scores):
    """``y`` as a C-contiguous int64 array of length N with every label in [0, C); clear errors otherwise."""
    n, c = scores.shape
    y = np.asarray(y)
    one_hot = y.ndim == 2 and y.shape == scores.shape
    if y.dtype.kind not in "iu":
        if one_hot and y.dtype.kind == "f":
            remedy = "; for one-hot rows pass y.argmax(axis=1)"
        elif y.dtype.kind == "f" and y.shape == (n,):
            remedy = "; labels read as floats: pass y.astype(np.int64)"
        else:
            remedy = ""
        raise TypeError(f"{owner}: labels y must be an integer array of class indices, got {describe(y)}{remedy}")
    if y.shape != (n,):
        remedy = "; for one-hot rows pass y.argmax(axis=1)" if one_hot else (
            "; pass y.ravel()" if y.shape == (n, 1) else "")
        raise ValueError(f"{owner}: labels y must have shape ({n},) to match scores of shape {scores.shape}, "
                         f"got {describe(y)}{remedy}")
    if y.min() < 0 or y.max() >= c:
        bad = np.flatnonzero((y < 0) | (y >= c))
        first = int(bad[0])
        more = f" ({bad.size} labels out of range in all)" if bad.size > 1 else ""
        raise LabelError(f"{owner}: label {int(y[first])} at position {first} is out of range [0, {c}) for scores "
                         f"of shape {scores.shape}{more}", int(y[first]), first, c)
    return np.ascontiguousarray(y, dtype=np.int64)


def _float_targets(owner, what, y, scores):
    """``y`` as a float array of exactly the scores' shape (no broadcasting); TypeError / ValueError naming ``what``."""
    y = np.asarray(y)
    if y.dtype.kind != "f":
        raise TypeError(f"{owner}: {what} y must be a floating-point array, got {describe(y)}")
    if y.shape != scores.shape:
        raise ValueError(f"{owner}: {what} y must have the shape of scores {scores.shape} (no broadcasting), got "
                         f"{describe(y)}")
    return y


def _soft_targets(owner, y, scores):
    """``y`` (N, C) class-probability targets as a C-contiguous array of the scores' dtype: every entry finite and
    >= 0 (rows need not sum to 1, as in PyTorch); clear errors otherwise."""
    y = _float_targets(owner, "target distributions", y, scores)
    with np.errstate(over="ignore"):    # checked in the scores' dtype: 1e39 in float64 is inf in float32
        y = np.ascontiguousarray(y, dtype=scores.dtype)
    check_probabilities(owner, y)
    return y


class LossValue(float):
    """The value a loss's ``forward`` returns: a Python float, with PyTorch's :meth:`item`.

    cynet has no autograd graph: the loss module keeps the gradient of its last forward, and the backward pass is
    ``model.backward(loss_fn.backward())``. :meth:`backward` on the value says so instead of an AttributeError.

    Example:
        >>> import numpy as np
        >>> from cynet.nn.loss import SoftmaxCrossEntropy
        >>> value = SoftmaxCrossEntropy()(np.zeros((2, 4), np.float32), np.array([0, 3]))
        >>> round(value.item(), 4), isinstance(value, float)
        (1.3863, True)
    """

    __slots__ = ()

    def item(self):
        """The value as a plain Python float (PyTorch's ``Tensor.item()``)."""
        return float(self)

    def backward(self):
        raise TypeError("cynet: a loss value is a number, not a node of a graph: run the backward pass with "
                        "model.backward(loss_fn.backward()) (the loss module keeps the gradient of its last forward), "
                        "then optimizer.step()")

    def __reduce__(self):                  # pickles (and deep-copies) as the plain float it is
        return (float, (float(self),))


# --- classification losses -------------------------------------------------------------------------------------------
class _DataLoss(Module):
    """Shared plumbing: the cached gradient, ``backward`` and the repr. Subclasses implement ``forward``."""

    def __init__(self):
        super().__init__()
        self.loss = None          # the mean data loss of the last forward (a Python float)
        self._dscores = None      # its gradient, filled by the fused kernel

    def backward(self, dout=1.0):
        """The gradient of the last forward's mean loss with respect to its scores.

        Args:
            dout (float): the upstream gradient :math:`\\partial(\\text{objective}) / \\partial L`, a scalar.
                Default 1 (the loss is the objective): the array computed by the forward is returned as is;
                otherwise a new array ``dout * dscores``.

        Returns:
            ndarray: ``dscores``, same shape and dtype as the scores.

        Raises:
            RuntimeError: no forward has run yet.
        """
        if self._dscores is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward (no gradient computed yet)")
        if isinstance(dout, np.ndarray) and dout.size == 1:
            dout = dout.item()
        if not isinstance(dout, numbers.Real) or isinstance(dout, bool):
            raise TypeError(f"{type(self).__name__}.backward: dout must be a real scalar (the loss is a scalar), "
                            f"got {dout!r}")
        if dout == 1:
            return self._dscores
        return self._dscores * self._dscores.dtype.type(dout)

    def _classification_forward(self, scores, y, kernel, *params):
        """Validate ``scores`` (N, C) and labels ``y``, then :meth:`_run_fused`; returns the validated labels."""
        name = type(self).__name__
        scores = _class_scores(name, scores)
        labels = _labels(name, y, scores)
        self._run_fused(kernel, scores, labels, *params)
        return labels

    def _run_fused(self, kernel, scores, targets, *params):
        """Run the fused ``kernel(scores, targets, *params, dscores, row_loss, n_threads)`` on validated arrays, keep
        its gradient and mean loss."""
        dscores = np.empty_like(scores)
        row_loss = np.empty(scores.shape[0], np.float64)
        self.loss = LossValue(kernel(scores, targets, *params, dscores, row_loss,
                                     kernel_threads(scores.size, NS_EXP)))
        self._dscores = dscores


class SoftmaxCrossEntropy(_DataLoss):
    r"""Softmax cross-entropy: the mean negative log-probability of the correct class.

    .. math::
        L = \frac{1}{N}\sum_{i=1}^{N} L_i, \qquad
        L_i = -\log\frac{e^{s_{i,y_i}}}{\sum_j e^{s_{ij}}} = \log\sum_j e^{s_{ij}} - s_{i,y_i}, \qquad
        \frac{\partial L}{\partial s_{ij}} = \frac{p_{ij} - [j = y_i]}{N}

    ``y`` may also be a float (N, C) array of target distributions :math:`t_{ij}` (soft labels, as PyTorch's
    probability targets; what :class:`cynet.data.Mixup` produces): :math:`L_i = -\sum_j t_{ij} \log p_{ij}`,
    :math:`\partial L / \partial s_{ij} = (p_{ij} \sum_k t_{ik} - t_{ij}) / N`. With ``label_smoothing``
    :math:`\varepsilon` the targets become :math:`(1 - \varepsilon)\,t + \varepsilon / C` (one-hot :math:`t` for
    integer labels), PyTorch's definition; its minimum is then above 0, the entropy of the smoothed target.

    with :math:`p_{ij}` the softmax of row :math:`i`. ``torch.nn.CrossEntropyLoss()`` (mean reduction) computes the
    same number. With small random scores every class is about equally likely and :math:`L \approx \ln C` (2.303 for
    10 classes): the CS231n sanity check of the initial loss.

    One fused pass per row: max-subtract, exponentiate, sum, then the loss and the gradient, which is written during
    the forward (``backward()`` is free). Numerically stable for any finite scores (1e30 and -1e30 in one row give
    a finite loss and the exact gradient); a score of -inf in a wrong class has probability 0.

    Non-finite input: -inf at the target class gives a loss of +inf (a finite gradient: :math:`-1/N` there); a NaN
    or +inf score anywhere in a row, or a row of only -inf, makes the loss NaN and that row of the gradient NaN.
    Nothing raises: a diverging run sees the NaN/inf loss (cynet's Trainer stops on it).

    Args:
        label_smoothing (float): :math:`\varepsilon` in [0, 1]. Default 0.

    Shape:
        scores (N, C) float32 or float64 (non-contiguous input is copied); y (N,) integer labels in [0, C), or (N, C)
        float target probabilities (finite, >= 0); ``backward()`` -> (N, C), the dtype of the scores.

    Attributes:
        loss (float): the mean loss of the last forward (None before any).

    Example:
        >>> import numpy as np
        >>> from cynet.nn.loss import SoftmaxCrossEntropy
        >>> loss = SoftmaxCrossEntropy()
        >>> scores = np.zeros((4, 10), np.float32)
        >>> round(loss(scores, np.array([0, 3, 9, 2])), 4)        # ln 10
        2.3026
        >>> loss.backward()[0, :3]                                 # (0.1 - [j = 0]) / 4
        array([-0.225,  0.025,  0.025], dtype=float32)
        >>> round(loss(scores, np.full((4, 10), 0.1, np.float32)), 4)   # soft targets: the same ln 10
        2.3026
    """

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        if not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool) or \
                not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{type(self).__name__}: label_smoothing must be a number in [0, 1], got "
                             f"{label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, scores, y):
        """Mean cross-entropy of ``scores`` (N, C) against labels ``y`` (N,) or target distributions (N, C); also
        computes the gradient.

        Returns:
            LossValue: the mean loss, a float (also kept as ``self.loss``).
        """
        name = type(self).__name__
        y = np.asarray(y)
        soft = y.dtype.kind == "f" and y.ndim == 2          # (N, C) distributions; float (N,) labels stay an error
        if not soft and self.label_smoothing == 0:
            self._classification_forward(scores, y, _k().softmax_cross_entropy)
            return self.loss
        scores = _class_scores(name, scores)
        if soft:
            targets = _soft_targets(name, y, scores)
        else:
            targets = np.zeros_like(scores)
            targets[np.arange(len(scores)), _labels(name, y, scores)] = 1
        if self.label_smoothing:
            eps = self.label_smoothing
            targets = targets * scores.dtype.type(1 - eps) + scores.dtype.type(eps / scores.shape[1])
        self._run_fused(_k().softmax_cross_entropy_soft, scores, targets)
        return self.loss

    def extra_repr(self):
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""

    def probabilities(self, scores):
        r"""The row-wise softmax :math:`p_{ij} = e^{s_{ij}} / \sum_k e^{s_{ik}}` of ``scores`` (N, C): class
        probabilities, each row summing to 1 (same dtype as the scores). Does not change the cached gradient."""
        scores = _class_scores(f"{type(self).__name__}.probabilities", scores)
        out = np.empty_like(scores)
        _k().softmax(scores, out, kernel_threads(scores.size, NS_EXP))
        return out


class CrossEntropyLoss(SoftmaxCrossEntropy):
    r"""The name PyTorch users look for: :class:`SoftmaxCrossEntropy` itself (the mean over the batch of the softmax
    cross-entropy, what ``torch.nn.CrossEntropyLoss()`` computes with its defaults, integer labels or class
    probabilities, and ``label_smoothing``). PyTorch's other options (class weights, ``ignore_index``, other
    reductions) are not taken: passing one is a TypeError rather than a silently different loss.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> round(nn.CrossEntropyLoss()(np.zeros((2, 10), np.float32), np.array([1, 7])), 4)   # ln 10
        2.3026
    """

    def __init__(self, *args, label_smoothing=0.0, **kwargs):
        # torch's first positional argument is ``weight`` (class weights): a value there is not a label smoothing
        if args or kwargs:
            given = ([f"{len(args)} positional argument(s) (torch's first is weight, class weights)"] if args else [])
            given += [f"{key}=" for key in kwargs]
            raise TypeError(f"CrossEntropyLoss: only label_smoothing= is taken (by keyword), got {', '.join(given)}; "
                            f"class weights, ignore_index and other reductions are not supported")
        super().__init__(label_smoothing)


class MulticlassSVM(_DataLoss):
    r"""Multiclass SVM (Weston-Watkins hinge) loss, as in CS231n: every wrong class should score at least ``margin``
    below the correct one.

    .. math::
        L = \frac{1}{N}\sum_{i=1}^{N}\sum_{j \ne y_i} \max(0,\; s_{ij} - s_{i,y_i} + \Delta), \qquad
        \frac{\partial L}{\partial s_{ij}} = \frac{[m_{ij} > 0]}{N}\ (j \ne y_i), \qquad
        \frac{\partial L}{\partial s_{i,y_i}} = -\frac{1}{N}\sum_{j \ne y_i} [m_{ij} > 0]

    with :math:`m_{ij} = s_{ij} - s_{i,y_i} + \Delta` the margins. ``torch.nn.MultiMarginLoss(margin=Δ)`` divides
    each row by C as well: this loss is C times torch's. At :math:`m_{ij} = 0` the loss has a kink (the gradient
    taken there is the right-hand one's complement, 0); :meth:`kink_state` reports which margins are active so that a
    gradient check can skip entries whose perturbation crosses a kink.

    Non-finite input: infinite scores give the limit where there is one (+inf in a wrong class: loss +inf; +inf at
    the target: margins -inf, loss 0); NaN, or inf - inf in a margin, makes the loss NaN and puts NaN in the gradient
    at that entry and at the target. Nothing raises.

    Args:
        margin (float): :math:`\Delta`, finite and >= 0. Default 1.0.

    Shape:
        scores (N, C) float32 or float64 (non-contiguous input is copied); y (N,) integer labels in [0, C);
        ``backward()`` -> (N, C), the dtype of the scores.

    Attributes:
        loss (float): the mean loss of the last forward (None before any).

    Example:
        >>> import numpy as np
        >>> from cynet.nn.loss import MulticlassSVM
        >>> svm = MulticlassSVM(margin=1.0)
        >>> svm(np.array([[3.0, 5.0, -2.0]]), np.array([0]))      # max(0, 5 - 3 + 1) + max(0, -2 - 3 + 1)
        3.0
        >>> svm.backward()
        array([[-1.,  1.,  0.]])
    """

    def __init__(self, margin=1.0):
        super().__init__()
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin) \
                or margin < 0:
            raise ValueError(f"MulticlassSVM: margin must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)
        self._labels = None

    def forward(self, scores, y):
        """Mean hinge loss of ``scores`` (N, C) against labels ``y`` (N,); also computes the gradient.

        Returns:
            LossValue: the mean loss, a float (also kept as ``self.loss``).
        """
        self._labels = self._classification_forward(scores, y, _k().multiclass_svm, self.margin)
        return self.loss

    def kink_state(self):
        r"""Boolean (N, C) array of the active margins of the last forward, :math:`s_{ij} - s_{i,y_i} + \Delta > 0`
        for :math:`j \ne y_i` (False at the targets), or None before any forward.

        Read from the gradient the forward wrote (an active margin is exactly a :math:`1/N` entry), so it is the
        kernel's own decision, computed in double precision."""
        if self._dscores is None:
            return None
        active = self._dscores > 0
        active[np.arange(active.shape[0]), self._labels] = False
        return active

    def extra_repr(self):
        return f"margin={self.margin}"


# --- regression ------------------------------------------------------------------------------------------------------
class MSELoss(_DataLoss):
    r"""Mean squared error over every element (PyTorch's ``MSELoss()``, ``reduction='mean'``).

    .. math::
        L = \frac{1}{n}\sum_{k=1}^{n} (\hat y_k - y_k)^2, \qquad
        \frac{\partial L}{\partial \hat y_k} = \frac{2(\hat y_k - y_k)}{n}

    with :math:`n` the number of elements (N times the features), not the batch size. Differences and the sum are
    formed in double precision. inf or NaN in either array gives an inf or NaN loss (and gradient entries).

    Args: none (PyTorch's ``size_average``, ``reduce`` and ``reduction`` are refused with a TypeError).

    Shape:
        scores (N, \*) float32 or float64, the predictions (any number of dimensions >= 1; non-contiguous input is
        copied); y the targets, floating, the same shape (cast to the dtype of the predictions: a float64 target
        for float32 predictions is rounded to float32). No broadcasting: a (N, 1) prediction with (N,) targets is
        an error, not an (N, N) loss. ``backward()`` -> the shape and dtype of the predictions.

    Attributes:
        loss (float): the mean loss of the last forward (None before any).

    Example:
        >>> import numpy as np
        >>> from cynet.nn.loss import MSELoss
        >>> mse = MSELoss()
        >>> mse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0], [3.0, 5.0]]))   # (0 + 4 + 0 + 1) / 4
        1.25
        >>> mse.backward()
        array([[ 0. ,  1. ],
               [ 0. , -0.5]])
    """

    def __init__(self, *args, **kwargs):
        # PyTorch's MSELoss(size_average=None, reduce=None, reduction='mean'): refused by this class's name, not
        # "_DataLoss.__init__() got an unexpected keyword argument 'reduction'"
        if args or kwargs:
            given = ([f"{len(args)} positional argument(s) (torch's are size_average, reduce, reduction)"]
                     if args else []) + [f"{key}=" for key in kwargs]
            raise TypeError(f"MSELoss: takes no arguments (always the mean over every element), got "
                            f"{', '.join(given)}; other reductions are not supported")
        super().__init__()

    def forward(self, scores, y):
        """Mean of ``(scores - y) ** 2`` over all elements; also computes the gradient.

        Returns:
            LossValue: the mean loss, a float (also kept as ``self.loss``).
        """
        name = type(self).__name__
        pred = _float_scores(name, "scores (the predictions)", scores)
        if pred.ndim < 1 or pred.shape[0] < 1 or pred.size < 1:
            raise ValueError(f"{name}: scores must be an array of shape (N, ...) with N >= 1 and at least one "
                             f"element, got {describe(pred)}")
        target = np.ascontiguousarray(_float_targets(name, "targets", y, pred), dtype=pred.dtype)
        dpred = np.empty_like(pred)
        n = pred.size
        partials = np.empty(_k().partials_length(n), np.float64)
        self.loss = LossValue(_k().mse(pred.reshape(-1), target.reshape(-1), dpred.reshape(-1), partials,
                                       kernel_threads(n)))
        self._dscores = dpred
        return self.loss


# --- regularisation --------------------------------------------------------------------------------------------------
class _WeightPenalty:
    """What the weight penalties share: the strength, the parameters covered, the value and gradient kernels, the sum
    of two penalties. A subclass sets ``_power`` (2 or 1) and ``_scale``: the penalty is
    ``_scale * strength * sum |W|^_power``, its gradient ``strength * W`` (power 2) or ``strength * sign(W)``."""

    def __init__(self, strength):
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength) \
                or strength < 0:
            raise ValueError(f"{type(self).__name__}: strength must be a finite number >= 0, got {strength!r}")
        self.strength = float(strength)

    def penalized(self, model):
        """The ``(name, Parameter)`` pairs the penalty covers (:func:`cynet.nn.utils.weight_matrices`: ndim >= 2,
        requires_grad, not a normalisation layer's gain or shift whatever its shape, each parameter once)."""
        if not callable(getattr(model, "named_parameters", None)):
            raise TypeError(f"{type(self).__name__}: model must be a cynet.nn.Module, got {type(model).__name__}")
        return weight_matrices(model)

    def __call__(self, model):
        """The penalty of ``model``'s weights (a Python float; 0.0 when the strength is 0)."""
        params = self.penalized(model)
        if self.strength == 0:
            return 0.0
        k = _k()
        total = 0.0
        for _, param in params:
            w = param.data.reshape(-1)
            if w.dtype in KERNEL_DTYPES and w.flags.c_contiguous:
                total += k.penalty_sum(w, self._power, np.empty(k.partials_length(w.size), np.float64),
                                       kernel_threads(w.size))
            else:                      # weights a user made float16 or strided: NumPy, in float64
                magnitude = np.abs(w.astype(np.float64))
                total += float(np.sum(magnitude * magnitude if self._power == 2 else magnitude))
        return self._scale * self.strength * total

    def backward(self, model):
        """Add the penalty's gradient into the ``grad`` of each weight of ``model`` (nothing when the strength is
        0)."""
        params = self.penalized(model)
        if self.strength == 0:
            return
        k = _k()
        for _, param in params:
            w = param.data
            if w.dtype in KERNEL_DTYPES and w.flags.c_contiguous and param._grad.flags.c_contiguous:
                buffer, fresh = param.grad_target()
                k.penalty_grad(w.reshape(-1), self._power, self.strength, buffer.reshape(-1), not fresh,
                               kernel_threads(w.size))
            else:
                param.accumulate(self.strength * (w if self._power == 2 else np.sign(w)))

    def kink_state(self, model):
        """Where the penalty's gradient jumps, for gradient checks (:func:`cynet.gradcheck.check_model`): the signs of
        the covered weights for L1 (a weight within h of 0 crosses the kink of |w|), None for the smooth L2."""
        if self._power != 1 or self.strength == 0:
            return None
        params = self.penalized(model)
        return np.concatenate([np.sign(param.data).reshape(-1) for _, param in params]) if params else None

    def __add__(self, other):
        if not isinstance(other, (_WeightPenalty, PenaltySum)):
            return NotImplemented
        return PenaltySum(self, other)

    def __repr__(self):
        return f"{type(self).__name__}(strength={self.strength!r})"


class L2Penalty(_WeightPenalty):
    r"""L2 regularisation of a model's weights, in the CS231n convention :math:`R = \tfrac{\lambda}{2}\sum W^2`.

    .. math::
        R(\text{model}) = \frac{\lambda}{2} \sum_{W} \sum_k W_k^2, \qquad \frac{\partial R}{\partial W} = \lambda W

    over the parameters with ``ndim >= 2`` that require grad: the weight matrices and convolution kernels, not the
    biases nor the gains and shifts of normalisation layers (penalising those only hurts; also a LayerNorm's 2-d
    ones over a (C, D) shape), nor frozen parameters.
    A parameter shared by several modules counts once.

    The :math:`\tfrac12` makes the gradient :math:`\lambda W` (CS231n assignment 2's ``reg * W``), which is exactly
    what an optimiser's ``weight_decay=λ`` adds to the gradient: use one or the other, not both. (Assignment 1
    writes :math:`\lambda\sum W^2` with gradient :math:`2\lambda W`: the same penalty at twice the strength.) The
    two part ways under gradient clipping (``Trainer(clip_grad_norm=...)``): the penalty's gradient is clipped with
    the data's, the optimiser's decay is added after the clipping. AdamW's decoupled decay is neither: it shrinks
    the weights outside the adaptive step, where this penalty's gradient (like Adam's ``weight_decay``) is rescaled.

    The value is reported apart from the data loss; ``backward(model)`` *adds* :math:`\lambda W` into each weight's
    ``grad`` (overwriting a gradient that was just zeroed), so call it after ``model.backward`` and before the
    optimiser step. ``L1Penalty(a) + L2Penalty(b)`` is the elastic net (:class:`PenaltySum`).

    Args:
        strength (float): :math:`\lambda`, finite and >= 0 (0 turns it off).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> from cynet.nn.loss import L2Penalty
        >>> model = nn.Linear(3, 2)
        >>> model.weight.data[...] = 1.0
        >>> reg = L2Penalty(0.1)
        >>> round(reg(model), 6)                 # 0.5 * 0.1 * 6 weights of 1 (the bias is not penalised)
        0.3
        >>> model.zero_grad(); reg.backward(model); model.weight.grad[0]
        array([0.1, 0.1, 0.1], dtype=float32)
    """

    _power = 2
    _scale = 0.5


class L1Penalty(_WeightPenalty):
    r"""L1 regularisation of a model's weights (CS231n: it drives many weights to exactly zero, sparse weights that
    keep only the most useful inputs; L2 spreads the weight instead).

    .. math::
        R(\text{model}) = \lambda \sum_{W} \sum_k |W_k|, \qquad \frac{\partial R}{\partial W} = \lambda\,
        \mathrm{sign}(W)

    over the same parameters as :class:`L2Penalty` (``ndim >= 2``, requires_grad, each once), with the subgradient 0
    at :math:`W_k = 0`. Used as :class:`L2Penalty`: the trainer's ``regularization=``, or the value and
    ``backward(model)`` between ``model.backward`` and the optimiser step. ``L1Penalty(a) + L2Penalty(b)`` is the
    elastic net.

    Args:
        strength (float): :math:`\lambda`, finite and >= 0 (0 turns it off).

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> from cynet.nn.loss import L1Penalty
        >>> model = nn.Linear(2, 2)
        >>> model.weight.data[...] = [[1.5, -0.5], [0.0, 2.0]]
        >>> reg = L1Penalty(0.1)
        >>> round(reg(model), 6)                 # 0.1 * (1.5 + 0.5 + 0 + 2)
        0.4
        >>> model.zero_grad(); reg.backward(model); model.weight.grad
        array([[ 0.1, -0.1],
               [ 0. ,  0.1]], dtype=float32)
    """

    _power = 1
    _scale = 1.0


class PenaltySum:
    """The sum of weight penalties, e.g. the elastic net ``L1Penalty(1e-5) + L2Penalty(1e-4)``: the value is the sum
    of the values, ``backward(model)`` adds each one's gradient.

    Example:
        >>> from cynet import nn
        >>> from cynet.nn.loss import L1Penalty, L2Penalty
        >>> L1Penalty(1e-5) + L2Penalty(1e-4)
        PenaltySum(L1Penalty(strength=1e-05), L2Penalty(strength=0.0001))
    """

    def __init__(self, *terms):
        flat = []
        for term in terms:
            if isinstance(term, PenaltySum):
                flat.extend(term.terms)
            elif isinstance(term, _WeightPenalty):
                flat.append(term)
            else:
                raise TypeError(f"PenaltySum: terms must be weight penalties, got {term!r}")
        self.terms = tuple(flat)

    def __call__(self, model):
        return sum(term(model) for term in self.terms)

    def backward(self, model):
        for term in self.terms:
            term.backward(model)

    def kink_state(self, model):
        """The terms' kink states side by side (see :meth:`L1Penalty.kink_state`); None when no term has kinks."""
        states = [state for state in (term.kink_state(model) for term in self.terms) if state is not None]
        return np.concatenate(states) if states else None

    def __add__(self, other):
        if not isinstance(other, (_WeightPenalty, PenaltySum)):
            return NotImplemented
        return PenaltySum(self, other)

    def __repr__(self):
        return f"PenaltySum({', '.join(map(repr, self.terms))})"
