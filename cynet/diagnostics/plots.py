"""Plots of the lecture's training diagnostics, written as image files by matplotlib.

matplotlib is imported inside each function, so ``import cynet.diagnostics`` stays light. Each figure is a bare
:class:`matplotlib.figure.Figure`, drawn without pyplot: the functions work on machines without a display and leave
the session's backend and its figures alone (a notebook's ``plt.show()`` keeps working). Every function writes one
file, in the format its extension names (``.png``, ``.svg``, ``.pdf``, ...; PNG without one), and returns its path.
Without matplotlib installed, each raises an ImportError naming the function and ``pip install matplotlib``.

Example:
    >>> from cynet.diagnostics.plots import plot_loss, plot_accuracy
    >>> plot_loss(trainer.history, "loss.png")          # doctest: +SKIP
    >>> plot_accuracy(trainer.history, "accuracy.png")  # doctest: +SKIP
"""
import math
import os

import numpy as np

from cynet._validation import positive_int

__all__ = ["plot_loss", "plot_accuracy", "plot_activation_histograms", "plot_update_ratios",
           "plot_first_layer_templates"]


def _figure_class(op):
    """matplotlib's ``Figure``, or an ImportError that says what to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{op} draws with matplotlib, which is not installed: pip install matplotlib") from error
    return Figure


def _subplots(op, *grid, figsize, **kwargs):
    """``(figure, axes)`` of a new pyplot-free Figure (no backend switch, nothing registered with pyplot)."""
    Figure = _figure_class(op)
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **kwargs)


def _save(fig, path):
    """Write ``fig`` in the format of the path's extension (matplotlib's names), PNG when it has none."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    fig.savefig(path, format=extension or "png", dpi=100, bbox_inches="tight")
    return path


def _values(history, key, op):
    if not hasattr(history, "get"):
        raise TypeError(f"{op}: history must be a mapping such as Trainer.history, got {type(history).__name__}")
    values = history.get(key)          # (not ``or []``: a numpy array of the values has no truth value)
    return np.asarray([] if values is None else list(values), dtype=np.float64)


def plot_loss(history, path, window=50):
    """Per-iteration training loss with its moving average.

    Args:
        history (Mapping): a Trainer history with a non-empty "loss" list.
        path (str or os.PathLike): the file to write (its extension gives the format: png, svg, pdf, ...).
        window (int): moving-average width in iterations (shrunk to the number of iterations). Default 50.

    Returns:
        str: ``path``.

    Raises:
        TypeError: history is not a mapping. ValueError: no "loss" values, or ``window < 1``.

    Example:
        >>> plot_loss({"loss": [2.3, 2.1, 1.9, 1.8]}, "loss.png", window=2)  # doctest: +SKIP
        'loss.png'
    """
    loss = _values(history, "loss", "plot_loss")
    if loss.size == 0:
        raise ValueError("plot_loss: history has no per-iteration 'loss' values")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"plot_loss: window must be a positive int, got {window!r}")
    fig, ax = _subplots("plot_loss", figsize=(7, 4))
    it = np.arange(1, loss.size + 1)
    finite = np.isfinite(loss)
    ax.plot(it[finite], loss[finite], lw=0.6, alpha=0.4, color="C0", label="loss")
    w = min(int(window), int(finite.sum())) if finite.any() else 0
    if w >= 2:
        smooth = np.convolve(loss[finite], np.ones(w) / w, mode="valid")
        ax.plot(it[finite][w - 1:], smooth, lw=1.8, color="C1", label=f"moving average ({w})")
    if not finite.all():
        ax.axvline(int(it[~finite][0]), color="red", ls="--", lw=1, label="non-finite loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend()
    return _save(fig, path)


def plot_accuracy(history, path):
    """Training and validation accuracy per epoch.

    Args:
        history (Mapping): a Trainer history with "train_acc" (and optionally "val_acc").
        path (str or os.PathLike): the file to write (its extension gives the format: png, svg, pdf, ...).

    Returns:
        str: ``path``.

    Raises:
        TypeError: history is not a mapping. ValueError: no "train_acc" values, no finite "train_acc" or "val_acc"
        value (a run with mixup, whose "train_acc" is NaN, draws its validation curve alone), "val_acc" values of
        another number, or an accuracy outside [0, 1].

    Example:
        >>> plot_accuracy({"train_acc": [0.3, 0.5], "val_acc": [0.3, 0.45]}, "acc.png")  # doctest: +SKIP
        'acc.png'
    """
    train = _values(history, "train_acc", "plot_accuracy")
    val = _values(history, "val_acc", "plot_accuracy")
    if train.size == 0:
        raise ValueError("plot_accuracy: history has no per-epoch 'train_acc' values")
    if val.size and val.size != train.size:     # (the validation curve was silently left out)
        raise ValueError(f"plot_accuracy: history has {val.size} 'val_acc' values for {train.size} epochs of "
                         f"'train_acc'; give one of each per epoch")
    # (an empty plot; a Trainer whose loss gives no accuracy records NaN). A run with mixup records a NaN
    # 'train_acc' at every epoch (its targets are mixtures) beside a finite 'val_acc': its validation curve is drawn
    if not np.isfinite(train).any() and not np.isfinite(val).any():
        raise ValueError(f"plot_accuracy: history has no finite 'train_acc' or 'val_acc' value ({train.size} epochs, "
                         f"all NaN or inf: does the loss give class accuracies?)")
    for key, values in (("train_acc", train), ("val_acc", val)):
        outside = values[np.isfinite(values) & ((values < 0) | (values > 1))]
        if outside.size:                       # (drawn above the axis's fixed 0 to 1.02: not seen at all)
            raise ValueError(f"plot_accuracy: '{key}' must hold fractions in [0, 1], got {outside[0]:g} "
                             f"(a percentage?)")
    fig, ax = _subplots("plot_accuracy", figsize=(6, 4))
    epochs = np.arange(1, train.size + 1)
    if np.isfinite(train).any():
        ax.plot(epochs, train, "o-", label="train")
    if val.size == train.size and np.isfinite(val).any():
        ax.plot(epochs, val, "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy")
    ax.legend()
    return _save(fig, path)


def _layer_stats(stats):
    from cynet.diagnostics.init_lab import LayerStats

    if hasattr(stats, "stats"):            # an InitExperiment
        stats = stats.stats
    elif isinstance(stats, dict) and "layers" in stats:      # a TrainingMonitor record
        stats = stats["layers"]
    stats = list(stats) if not isinstance(stats, LayerStats) else [stats]
    if not stats or not all(isinstance(s, LayerStats) for s in stats):
        raise ValueError("plot_activation_histograms: expected a non-empty list of LayerStats (from "
                         "activation_statistics), an InitExperiment or a TrainingMonitor record")
    return stats


def plot_activation_histograms(stats, path, title=None):
    """One histogram per layer, with the layer's mean and std, side by side as in the lecture's figures.

    Args:
        stats: a list of :class:`~cynet.diagnostics.init_lab.LayerStats` (from
            :func:`~cynet.diagnostics.init_lab.activation_statistics`), an
            :class:`~cynet.diagnostics.init_lab.InitExperiment` or a ``TrainingMonitor`` record.
        path (str or os.PathLike): the file to write (its extension gives the format: png, svg, pdf, ...).
        title (str): figure title. Default None (the experiment's settings and verdict when given one).

    Returns:
        str: ``path``.

    Raises:
        ValueError: empty or not layer statistics.

    Example:
        >>> from cynet.diagnostics.init_lab import init_experiment
        >>> plot_activation_histograms(init_experiment("tanh", "xavier"), "tanh_xavier.png")  # doctest: +SKIP
        'tanh_xavier.png'
    """
    if title is None and hasattr(stats, "verdict"):
        title = f"{stats.nonlinearity}, {stats.init} init: {stats.verdict}"
    layers = _layer_stats(stats)
    n = len(layers)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = _subplots("plot_activation_histograms", rows, cols, figsize=(2.6 * cols, 2.3 * rows),
                          squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, layer in zip(axes.ravel(), layers):
        edges = np.asarray(layer.edges, dtype=np.float64)
        ax.stairs(np.asarray(layer.counts), edges, fill=True, alpha=0.7)
        ax.set_title(f"{layer.kind} {layer.name}\nmean {layer.mean:.2g}, std {layer.std:.2g}", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _weight_matrices(monitor):
    """The names of the monitored parameters with 2 or more dimensions (Linear, Conv2d): not biases, nor a
    BatchNorm's 1-D ``weight``; every name where there are none."""
    names = list(monitor.records[0]["update_ratio"])
    ndim = {name: p.data.ndim for name, p in monitor._params or ()}
    return [n for n in names if ndim.get(n, 0 if n.endswith("bias") else 2) >= 2] or names


def plot_update_ratios(monitor, path):
    """Update-to-weight ratios ‖ΔW‖/‖W‖ of every weight matrix over the monitored iterations (log scale).

    The healthy band (the monitor's ``ratio_range``) is shaded and 1e-3, the lecture's rule of thumb, drawn.

    Args:
        monitor (TrainingMonitor): a monitor with at least one record.
        path (str or os.PathLike): the file to write (its extension gives the format: png, svg, pdf, ...).

    Returns:
        str: ``path``.

    Raises:
        TypeError: not a TrainingMonitor. ValueError: no records, or no finite ratio to draw.

    Example:
        >>> plot_update_ratios(monitor, "ratios.png")  # doctest: +SKIP
        'ratios.png'
    """
    from cynet.diagnostics.monitors import TrainingMonitor

    if not isinstance(monitor, TrainingMonitor):
        raise TypeError(f"plot_update_ratios: expected a TrainingMonitor, got {type(monitor).__name__}")
    if not monitor.records:
        raise ValueError("plot_update_ratios: the monitor has no records yet (train with it in the callbacks)")
    weights = _weight_matrices(monitor)
    fig, ax = _subplots("plot_update_ratios", figsize=(7, 4))
    drawn = 0
    for name in weights:
        its, ratios = monitor.history("update_ratio", name)
        keep = np.isfinite(ratios) & (ratios > 0)
        if keep.any():
            ax.plot(its[keep], ratios[keep], "o-", ms=3, label=name)
            drawn += 1
    if not drawn:
        raise ValueError("plot_update_ratios: no finite, positive update ratio was recorded")
    low, high = monitor.ratio_range
    ax.axhspan(max(low, 1e-12), high, color="green", alpha=0.08, label=f"healthy [{low:g}, {high:g}]")
    ax.axhline(1e-3, color="green", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("‖ΔW‖ / ‖W‖")
    ax.set_title("update-to-weight ratios")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_first_layer_templates(weight, path, image_shape=(3, 32, 32), max_templates=100):
    """The first layer's weights as colour images (CIFAR-10's templates), each rescaled to its own [min, max].

    Args:
        weight (numpy.ndarray or Parameter): shape (out, 3072) for CIFAR-10: each row a flattened image in
            cynet's channel-first layout (1024 red, 1024 green, 1024 blue values).
        path (str or os.PathLike): the file to write (its extension gives the format: png, svg, pdf, ...).
        image_shape (tuple): ``(channels, height, width)`` of one row, channels 1 or 3. Default (3, 32, 32).
        max_templates (int): draw at most this many rows (the first ones). Default 100.

    Returns:
        str: ``path``.

    Raises:
        ValueError: weight is not 2-D with ``prod(image_shape)`` columns, has no rows, a drawn row holds NaN or
            inf, or a bad image_shape.

    Example:
        >>> plot_first_layer_templates(model[0].weight, "templates.png")  # doctest: +SKIP
        'templates.png'
    """
    w = np.asarray(getattr(weight, "data", weight), dtype=np.float64)
    image_shape = tuple(int(v) for v in image_shape)
    if len(image_shape) != 3 or image_shape[0] not in (1, 3) or min(image_shape) < 1:
        raise ValueError(f"plot_first_layer_templates: image_shape must be (channels 1 or 3, height, width), got "
                         f"{image_shape}")
    size = int(np.prod(image_shape))
    if w.ndim != 2 or w.shape[1] != size or w.shape[0] == 0:
        raise ValueError(f"plot_first_layer_templates: weight must have shape (out, {size}) for images of shape "
                         f"{image_shape}, got shape {w.shape}")
    w = w[:positive_int("plot_first_layer_templates", "max_templates", max_templates)]   # (0 or -5 drew one)
    bad = np.flatnonzero(~np.isfinite(w).all(axis=1))
    if bad.size:                               # (such a row was drawn black, as a constant one: a silent 0)
        raise ValueError(f"plot_first_layer_templates: weight rows {bad[:10].tolist()} hold NaN or inf (a diverged "
                         f"training?); there is no image to draw")
    n = len(w)
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    fig, axes = _subplots("plot_first_layer_templates", rows, cols, figsize=(1.2 * cols, 1.2 * rows),
                          squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for index, (ax, row) in enumerate(zip(axes.ravel(), w)):
        lo, hi = row.min(), row.max()
        img = (row - lo) / (hi - lo) if hi > lo else np.zeros_like(row)
        img = img.reshape(image_shape).transpose(1, 2, 0)
        if image_shape[0] == 1:
            ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(str(index), fontsize=6)
    return _save(fig, path)
