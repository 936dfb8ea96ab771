r"""Gradient clipping, as ``torch.nn.utils``: rescale or clamp the gradients a backward pass left in the parameters,
between ``model.backward(...)`` and ``optimizer.step()``; and the max-norm weight constraint (:func:`max_norm_`).

Clipping by the global norm keeps the direction of the step and bounds its length:

.. math:: g \leftarrow g \cdot \min\Big(1, \frac{\text{max\_norm}}{\lVert g \rVert + 10^{-6}}\Big),
          \qquad \lVert g \rVert = \Big(\sum_{p} \lVert g_p \rVert_q^q\Big)^{1/q}

over every parameter p together (q = ``norm_type``, the largest absolute entry for q = inf). It is the usual guard
against the occasional huge gradient (recurrent networks, a bad batch, a learning rate near the edge); a norm that
keeps hitting the limit means the learning rate or the initialisation wants looking at instead.

Frozen parameters (``requires_grad=False``) and parameters no module wrote a gradient into since ``zero_grad`` are
left out (their gradient is zero).
"""
import math
import numbers

import numpy as np

from cynet.nn.module import Module, Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "max_norm_", "weight_matrices"]


def _parameters(fn, parameters):
    """``parameters`` (one Parameter or an iterable of them) as a list, each checked."""
    if isinstance(parameters, Parameter):
        return [parameters]
    params = list(parameters)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"{fn}: parameters must be cynet.nn.Parameter objects, got {type(p).__name__}")
    return params


def _gradients(fn, parameters):
    """The gradient buffers of the learning parameters that received a gradient since zero_grad."""
    return [p._grad for p in _parameters(fn, parameters) if p.requires_grad and not p._grad_is_zero]


def _number(fn, name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < low:
        raise ValueError(f"{fn}: {name} must be a number >= {low}, got {value!r}")
    return float(value)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    r"""Rescale the gradients of ``parameters`` together so that their global norm is at most ``max_norm``.

    Args:
        parameters (iterable of Parameter, or one Parameter): typically ``model.parameters()``.
        max_norm (float): the largest norm allowed, >= 0.
        norm_type (float): q >= 1 of the q-norm, or ``math.inf`` for the largest absolute entry. Default 2.
        error_if_nonfinite (bool): raise a RuntimeError when the norm is NaN or infinite (the gradients are then
            left as they are) instead of scaling by a NaN or zero factor. Default False.

    Returns:
        float: the global norm before clipping (what a monitor would log).

    Example:
        >>> import numpy as np
        >>> from cynet.nn import Parameter
        >>> from cynet.nn.utils import clip_grad_norm_
        >>> p = Parameter(np.zeros(2, np.float32)); p.grad = [3.0, 4.0]
        >>> clip_grad_norm_([p], max_norm=1.0)
        5.0
        >>> p.grad.round(4)
        array([0.6, 0.8], dtype=float32)
    """
    fn = "clip_grad_norm_"
    max_norm = _number(fn, "max_norm", max_norm, 0.0)
    norm_type = _number(fn, "norm_type", norm_type, 1.0)
    grads = _gradients(fn, parameters)
    if not grads:
        return 0.0
    if norm_type == math.inf:
        # np.max, not Python's max: a NaN compares False, so max() kept it only when it came first (a NaN in any
        # other parameter's gradient gave a finite norm, no error_if_nonfinite, and the NaN left in place)
        total = float(np.max([float(np.max(np.abs(g))) if g.size else 0.0 for g in grads]))
    else:
        with np.errstate(over="ignore"):                # an overflow is taken up below
            if norm_type == 2.0:
                total = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads))
            else:
                total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in grads) ** (1 / norm_type)
    if total == math.inf and norm_type != math.inf:
        # the sum of powers overflowed (float32 squares from |g| ~ 1.8e19 on), not necessarily the norm: an
        # infinite "norm" of finite gradients would scale them all to 0
        total = _scaled_norm(grads, norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"{fn}: the total norm of order {norm_type:g} of the gradients is {total}, so they "
                               f"cannot be clipped; pass error_if_nonfinite=False to scale them anyway")
    coefficient = max_norm / (total + 1e-6)          # NaN for a NaN norm, 0 for an infinite one, as in PyTorch
    if math.isfinite(total) and coefficient >= 1.0:
        return total
    with np.errstate(invalid="ignore"):              # inf * 0 where a gradient holds an infinity: NaN, as in PyTorch
        for g in grads:
            np.multiply(g, g.dtype.type(coefficient), out=g)
    return total


def _scaled_norm(grads, norm_type):
    """The q-norm of all ``grads`` together computed as m (sum |g / m|^q)^(1/q) in float64, m the largest |entry|:
    no overflow for any finite gradients (inf or NaN when an entry is)."""
    largest = float(np.max([float(np.max(np.abs(g))) if g.size else 0.0 for g in grads]))
    if not math.isfinite(largest) or largest == 0.0:
        return largest
    powers = sum(float(np.sum((np.abs(g, dtype=np.float64) / largest) ** norm_type)) for g in grads)
    return largest * powers ** (1.0 / norm_type)


def clip_grad_value_(parameters, clip_value):
    r"""Clamp every gradient entry of ``parameters`` into ``[-clip_value, clip_value]`` (in place).

    Unlike :func:`clip_grad_norm_` this changes the direction of the step; it suits a known bound per entry.

    Args:
        parameters (iterable of Parameter, or one Parameter): typically ``model.parameters()``.
        clip_value (float): the bound, >= 0.

    Example:
        >>> import numpy as np
        >>> from cynet.nn import Parameter
        >>> from cynet.nn.utils import clip_grad_value_
        >>> p = Parameter(np.zeros(3, np.float32)); p.grad = [-5.0, 0.5, 2.0]
        >>> clip_grad_value_(p, 1.0); p.grad
        array([-1. ,  0.5,  1. ], dtype=float32)
    """
    fn = "clip_grad_value_"
    clip_value = _number(fn, "clip_value", clip_value, 0.0)
    for g in _gradients(fn, parameters):
        np.clip(g, -clip_value, clip_value, out=g)


def weight_matrices(model):
    """The ``(name, Parameter)`` pairs of ``model`` that weight penalties and the max-norm constraint act on: the
    learning parameters with ``ndim >= 2`` (weight matrices, convolution kernels), each once, not a normalisation
    layer's gain or shift whatever its shape (a LayerNorm over (C, H, W) has 3-d ones).

    Example:
        >>> from cynet import nn
        >>> [name for name, _ in weight_matrices(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm((2,))))]
        ['0.weight']
    """
    from cynet.nn.normalization import normalization_parameters

    seen, chosen = normalization_parameters(model), []
    for name, param in model.named_parameters():
        if id(param) in seen or not param.requires_grad or param.data.ndim < 2 or param.data.size == 0:
            continue
        seen.add(id(param))
        chosen.append((name, param))
    return chosen


MAX_NORM_ULPS = 8        # a row within this many of its dtype's ulps of c counts as on the ball (max_norm_)


def max_norm_(parameters, max_norm):
    r"""The max-norm constraint of the CS231n notes: after an update, scale every unit's incoming weight vector back
    onto the ball :math:`\lVert w \rVert_2 \le c` (projected gradient descent; c is typically 3 or 4). With it the
    weights cannot blow up even with a large learning rate.

    .. math:: w_i \leftarrow w_i \cdot \min\Big(1, \frac{c}{\lVert w_i \rVert_2}\Big)

    (norms in float64; a row within a few ulps of c counts as on the ball, so that applying it twice changes
    nothing)

    for each slice :math:`w_i` along axis 0 of every learning parameter with ``ndim >= 2``: the rows of a Linear
    weight (out_features, in_features), one per output unit. Biases, normalisation gains and frozen parameters are
    left alone: given the model itself, the gains and shifts of its normalisation layers whatever their shape (a
    LayerNorm over (C, H, W) has 3-d ones); given its parameters, those with ``ndim < 2``. The trainer applies it
    after every step with the :class:`cynet.train.MaxNorm` callback (to the model).

    Args:
        parameters (Module, iterable of Parameter, or one Parameter): typically the model, or
            ``model.parameters()``.
        max_norm (float): c, > 0.

    Returns:
        int: how many units were scaled back.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> from cynet.nn.utils import max_norm_
        >>> layer = nn.Linear(2, 2); layer.weight.data[...] = [[3.0, 4.0], [0.3, 0.4]]
        >>> max_norm_(layer.parameters(), 1.0)
        1
        >>> layer.weight.data.round(4)
        array([[0.6, 0.8],
               [0.3, 0.4]], dtype=float32)
    """
    fn = "max_norm_"
    max_norm = _number(fn, "max_norm", max_norm, 0.0)
    if max_norm == 0:
        raise ValueError(f"{fn}: max_norm must be > 0, got {max_norm!r}")
    scaled = 0
    if isinstance(parameters, Module):
        parameters = [param for _, param in weight_matrices(parameters)]
    for p in _parameters(fn, parameters):
        if not p.requires_grad or p.data.ndim < 2 or p.data.size == 0:
            continue
        rows = p.data.reshape(p.data.shape[0], -1)        # a copy where the weight is strided (a transposed kernel)
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
        # a row scaled onto the ball comes back at c (1 +- a few ulp) in its dtype: within the tolerance it is on the
        # ball, so the projection is idempotent (it scaled such rows again, and a MaxNorm at the start of every fit
        # moved the weights of runs in several calls away from one uninterrupted run's)
        over = np.flatnonzero(norms > max_norm * (1 + MAX_NORM_ULPS * np.finfo(p.data.dtype).eps))
        if over.size:                                       # scaled in the weight itself, whatever its layout
            factors = (max_norm / norms[over]).astype(p.data.dtype)
            p.data[over] *= factors.reshape((-1,) + (1,) * (p.data.ndim - 1))
            scaled += over.size
    return scaled
