"""Modules: layers that own parameters and caches, in the CS231n forward/backward contract with PyTorch's names.

See :mod:`cynet.nn.module` for the contract (``forward``, ``backward(dout, input_grad=True)``, parameters, state).
"""
from cynet.nn.module import Module, ModuleList, Parameter, Sequential
from cynet.nn.layers import (
    ELU, GELU, SELU, DropConnectLinear, Dropout, Flatten, Identity, LeakyReLU, Linear, Maxout, PReLU, ReLU, Sigmoid,
    SiLU, Tanh,
)
from cynet.nn.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from cynet.nn.residual import Residual, StochasticDepth
from cynet.nn.loss import (CrossEntropyLoss, L1Penalty, L2Penalty, MSELoss, MulticlassSVM, PenaltySum,
                           SoftmaxCrossEntropy)
from cynet.nn import utils
from cynet import init          # also as cynet.nn.init, where PyTorch code looks for it (nn.init.kaiming_normal_)
from cynet.nn.normalization import (
    BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm, fold_batchnorm, recompute_batchnorm_statistics,
)

__all__ = [
    "Module", "ModuleList", "Parameter", "Sequential", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d",
    "AdaptiveAvgPool2d", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU", "Maxout",
    "Dropout", "DropConnectLinear", "StochasticDepth", "Residual", "Flatten", "Identity", "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "GroupNorm",
    "fold_batchnorm", "recompute_batchnorm_statistics", "SoftmaxCrossEntropy", "CrossEntropyLoss", "MulticlassSVM",
    "MSELoss", "L2Penalty", "L1Penalty", "PenaltySum", "init", "utils",
]
