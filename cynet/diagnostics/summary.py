"""A layer-by-layer table of a model, as Keras's ``model.summary()`` or torchinfo's ``summary(model, input_size)``:
each layer's output shape and parameter count, the totals, and the memory the parameters and one example's
activations take.

The shapes come from one forward pass of a batch of zeros in evaluation mode (no dropout; batch norm reads, and does
not update, its running statistics); every module's own mode is put back afterwards.
"""
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from cynet._validation import positive_int
from cynet.diagnostics.init_lab import recording
from cynet.nn.module import Module

__all__ = ["summary", "ModelSummary", "LayerSummary"]


@dataclass
class LayerSummary:
    """One leaf module of the model."""

    name: str                 # the dotted name in the state dict ("0", "block.2", ...)
    layer: str                # the module's class and settings, e.g. "Linear(in_features=3072, ...)"
    output_shape: tuple       # with the batch axis
    params: int               # learnable entries (frozen ones included)
    trainable: int            # of which requires_grad


@dataclass
class ModelSummary:
    """The table :func:`summary` prints: ``str(s)`` is the table; the fields hold the numbers."""

    input_shape: tuple
    dtype: np.dtype
    layers: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    param_bytes: int = 0
    activation_bytes_per_example: int = 0     # the leaf modules' outputs (an in-place one counted again)

    def __str__(self):
        rows = [("layer", "type", "output shape", "params")]
        for layer in self.layers:
            count = f"{layer.params:,}" + ("" if layer.trainable == layer.params else f" ({layer.trainable:,} train.)")
            rows.append((layer.name, layer.layer, str(layer.output_shape), count))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        out = [line]
        for k, row in enumerate(rows):
            out.append("  ".join(row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i]) for i in range(4)))
            if k == 0:
                out.append(line)
        out.append(line)
        out.append(f"input {self.input_shape} {np.dtype(self.dtype).name}; parameters: {self.total_params:,} "
                   f"({self.trainable_params:,} trainable, {_size(self.param_bytes)}); layer outputs: "
                   f"{_size(self.activation_bytes_per_example)} per example")
        return "\n".join(out)


def _size(nbytes):
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def _describe(module):
    extra = module.extra_repr()
    text = f"{type(module).__name__}({extra})"
    return text if len(text) <= 60 else text[:57] + "..."


def summary(model, input_shape, dtype=None, batch_size=2):
    """The layer-by-layer table of ``model`` for inputs of ``input_shape`` (one example, without the batch axis).

    Args:
        model (Module): the network (a Sequential, or any module whose forward takes one array).
        input_shape (tuple of int): the shape of one example, e.g. ``(3072,)`` or ``(3, 32, 32)``.
        dtype: the input's dtype. Default None: the model's parameters' dtype (float32 for a model without any).
        batch_size (int): the batch of zeros run through the model. Default 2.

    Returns:
        ModelSummary: print it for the table.

    Example:
        >>> from cynet import nn
        >>> from cynet.diagnostics import summary
        >>> s = summary(nn.Sequential(nn.Linear(3072, 100), nn.ReLU(), nn.Linear(100, 10)), (3072,))
        >>> s.total_params, [layer.output_shape for layer in s.layers]
        (308310, [(2, 100), (2, 100), (2, 10)])
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: model must be a cynet.nn.Module, got {type(model).__name__}")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Iterable) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in input_shape):
        raise TypeError(f"summary: input_shape must be a tuple of ints, got {input_shape!r}")
    input_shape = tuple(int(d) for d in input_shape)
    if any(d < 1 for d in input_shape):
        raise ValueError(f"summary: input_shape {input_shape} must be positive")
    batch_size = positive_int("summary", "batch_size", batch_size)      # (int() took 2.5 for 2 and "3" for 3)
    if dtype is None:
        dtype = next((p.data.dtype for p in model.parameters()), np.dtype(np.float32))
    leaves = [(name, m) for name, m in model.named_modules() if not m._modules]
    sink = []
    batch = (int(batch_size),) + input_shape
    with model.modes_restored(), recording(leaves, sink):
        model.eval()
        try:
            model.forward(np.zeros(batch, dtype))
        except (TypeError, ValueError) as error:
            raise type(error)(f"summary: a batch of {batch_size} example(s) of shape {input_shape} "
                              f"({np.dtype(dtype).name}) does not go through the model: {error}") from error
    result = ModelSummary(input_shape=input_shape, dtype=np.dtype(dtype))
    for name, module, out in sink:
        params = list(module.parameters())
        out = np.asarray(out)
        result.layers.append(LayerSummary(
            name=name or type(module).__name__, layer=_describe(module), output_shape=out.shape,
            params=sum(p.size for p in params), trainable=sum(p.size for p in params if p.requires_grad)))
        result.activation_bytes_per_example += out.nbytes // int(batch_size)
    seen = {id(p): p for p in model.parameters()}.values()
    result.total_params = sum(p.size for p in seen)
    result.trainable_params = sum(p.size for p in seen if p.requires_grad)
    result.param_bytes = sum(p.data.nbytes for p in seen)
    return result
