"""Optimisers and learning-rate schedules: the update rules of CS231n's "Training Neural Networks" in PyTorch's API.

Optimisers (:mod:`cynet.optim.optimizers`): :class:`SGD` (momentum, Nesterov), :class:`AdaGrad`, :class:`RMSProp`,
:class:`Adam`, :class:`AdamW`. Each step is one fused Cython kernel per parameter, with PyTorch's formulas.
:class:`LBFGS` (:mod:`cynet.optim.lbfgs`) is the lecture's second-order method, for full-batch problems:
``opt.step(closure)``, with :func:`loss_closure` building the closure. Parameter
groups (``[{"params": ..., "lr": ...}, ...]``) give parts of a model their own settings; :func:`weight_decay_groups`
builds the usual pair that leaves biases and normalisation parameters out of weight decay.

Schedules (:mod:`cynet.optim.lr_scheduler`, re-exported here): :class:`StepLR`, :class:`MultiStepLR`,
:class:`ExponentialLR`, :class:`InverseTimeLR`, :class:`InverseSqrtLR`, :class:`LinearLR`, :class:`PolynomialLR`,
:class:`CosineAnnealingLR`, :class:`CosineAnnealingWarmRestarts`, :class:`LinearWarmup`, :class:`ReduceLROnPlateau`.

Example:
    >>> import numpy as np
    >>> from cynet import nn, optim
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = optim.Adam(model.parameters(), lr=1e-3)
    >>> sched = optim.CosineAnnealingLR(opt, T_max=10)
    >>> out = model(np.ones((5, 4), np.float32)); _ = model.backward(np.ones_like(out))
    >>> opt.step(); opt.zero_grad(); sched.step()
"""
from cynet.optim import lr_scheduler
from cynet.optim.lr_scheduler import (
    CosineAnnealingLR, CosineAnnealingWarmRestarts, ExponentialLR, InverseSqrtLR, InverseTimeLR, LinearLR, LinearWarmup,
    LRScheduler, MultiStepLR, PolynomialLR, ReduceLROnPlateau, StepLR,
)
from cynet.optim.lbfgs import LBFGS, loss_closure
from cynet.optim.optimizers import (
    SGD, AdaGrad, Adam, AdamW, Optimizer, ParamGroup, RMSProp, weight_decay_groups,
)

# PyTorch's spellings of the same classes
Adagrad = AdaGrad
RMSprop = RMSProp

__all__ = [
    "Optimizer", "ParamGroup", "SGD", "AdaGrad", "RMSProp", "Adagrad", "RMSprop", "Adam", "AdamW", "LBFGS",
    "loss_closure",
    "weight_decay_groups", "lr_scheduler",
    "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "InverseTimeLR", "InverseSqrtLR", "LinearLR",
    "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "LinearWarmup", "ReduceLROnPlateau",
]
