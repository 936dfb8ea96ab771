"""Diagnostics for training neural networks: the CS231n "babysitting" checks, made automatic.

- :func:`babysit` — the pre-training checks (initial loss, regularisation, overfit a tiny subset, learning-rate
  probe) in one call, with a readable report (:mod:`cynet.diagnostics.babysit`).
- :mod:`cynet.diagnostics.init_lab` — per-layer activation statistics and the lecture's initialisation
  experiment (:func:`activation_statistics`, :func:`init_experiment`).
- :func:`diagnose` — the curve doctor: names the patterns of a training history (:mod:`.curve_doctor`).
- :class:`TrainingMonitor` — a trainer callback recording activations, saturation, dead ReLUs, gradient stds and
  update-to-weight ratios (:mod:`.monitors`).
- :mod:`cynet.diagnostics.plots` — PNG plots of all of the above.
- :func:`summary` — the model's layers, output shapes and parameter counts as a table (Keras's ``model.summary()``).
- :func:`check_batchnorm` — batch norm in training and in evaluation: whether the running statistics still describe
  the data, and how much eval mode's predictions differ from those with batch statistics (:mod:`.batchnorm_check`).

Importing this package does not import matplotlib: :mod:`cynet.diagnostics.plots` loads it when a plot is drawn.

Example:
    >>> from cynet.diagnostics import babysit, diagnose, init_experiment
    >>> print(init_experiment("relu", "he", width=100, samples=200).verdict)
    healthy
"""
from cynet.diagnostics.babysit import BabysitReport, Check, ProbeResult, babysit
from cynet.diagnostics.batchnorm_check import BatchNormReport, LayerStatistics, check_batchnorm
from cynet.diagnostics.curve_doctor import Diagnosis, Finding, diagnose
from cynet.diagnostics.init_lab import InitExperiment, LayerStats, activation_statistics, init_experiment
from cynet.diagnostics.monitors import TrainingMonitor, UpdateRatioWarning
from cynet.diagnostics.summary import ModelSummary, summary
from cynet.diagnostics import plots

__all__ = [
    "babysit", "BabysitReport", "Check", "ProbeResult", "diagnose", "Diagnosis", "Finding",
    "activation_statistics", "init_experiment", "InitExperiment", "LayerStats", "TrainingMonitor",
    "UpdateRatioWarning", "plots", "summary", "ModelSummary", "check_batchnorm", "BatchNormReport",
    "LayerStatistics",
]
