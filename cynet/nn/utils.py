r"""Gradient clipping, as ``torch.nn.utils``: rescale or clamp the gradients a backward pass left in the parameters,
between ``model.backward(...)`` and ``optimizer.step()``.

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

from cynet.nn.module import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _gradients(fn, parameters):
    """The gradient buffers of the learning parameters that received a gradient since zero_grad."""
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    grads = []
    for p in parameters:
        if not isinstance(p, Parameter):
            raise TypeError(f"{fn}: parameters must be cynet.nn.Parameter objects, got {type(p).__name__}")
        if p.requires_grad and not p._grad_is_zero:
            grads.append(p._grad)
    return grads


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
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    elif norm_type == 2.0:
        total = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads))
    else:
        total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in grads) ** (1.0 / norm_type)
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
