r"""Residual connections and stochastic depth: :class:`Residual` (``y = body(x) + shortcut(x)``, He et al., 2016) and
:class:`StochasticDepth` (Huang et al., 2016), the regulariser of CS231n's list that drops whole residual branches.

Example:
    >>> import numpy as np, cynet
    >>> from cynet import nn
    >>> _ = cynet.manual_seed(0)
    >>> block = nn.Sequential(nn.Residual(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8),
    ...                                                 nn.StochasticDepth(0.2))), nn.ReLU())
    >>> block(np.ones((4, 8), np.float32)).shape
    (4, 8)
"""
import numpy as np

from cynet._validation import describe
from cynet.nn import _reuse as reuse
from cynet.nn.layers import Dropout
from cynet.nn.module import Module, _arrays_within, _check_input_gradient, _protecting, _shape_of

__all__ = ["Residual", "StochasticDepth"]


class Residual(Module):
    r"""A residual block: the body's output plus the input (or a projection of it).

    .. math::
        y = F(x) + S(x), \qquad \frac{\partial L}{\partial x} = F'(x)^\top \frac{\partial L}{\partial y}
        + S'(x)^\top \frac{\partial L}{\partial y}

    with :math:`S` the identity unless ``shortcut`` is given (a 1x1 convolution or a Linear layer where the body changes
    the shape). The gradient reaches x along the shortcut unchanged, which is why deep residual nets train (CS231n).
    A ReLU after the sum, as in ResNet, goes after the block in the enclosing :class:`Sequential`.

    While the body runs, the input is kept from in-place modules inside it (the shortcut still reads it):
    ``Residual(nn.Sequential(nn.ReLU(inplace=True), ...))`` raises the Sequential's ValueError; while the shortcut
    runs, so are the input, the body's output and what the body keeps for its backward (a first Linear's input):
    ``Residual(body, nn.Sequential(nn.ReLU(inplace=True), ...))`` raises it too.

    Args:
        body (Module): :math:`F`; it must not run in place itself.
        shortcut (Module or None): :math:`S`. Default None (the identity).

    Shape: x -> y of the same shape as ``body(x)``, which must equal ``shortcut(x)``'s.

    Example:
        >>> import numpy as np
        >>> from cynet import nn
        >>> block = nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
        >>> x = np.ones((2, 4), np.float32)
        >>> bool(np.allclose(block(x), block.body(x) + x))
        True
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        for name, module in (("body", body), ("shortcut", shortcut)):
            if module is not None and not isinstance(module, Module):
                raise TypeError(f"Residual: {name} must be a cynet.nn.Module, got {type(module).__name__}")
        if body is None:
            raise TypeError("Residual: body must be a cynet.nn.Module, got NoneType")
        self._refuse_in_place_branches(body, shortcut, "Residual")
        self.body = body
        self.shortcut = shortcut

    @staticmethod
    def _refuse_in_place_branches(body, shortcut, who):
        """ValueError when a branch itself runs in place (it would overwrite the input that the other adds). Checked
        when built and at every forward: whether a module runs in place can depend on its mode (a Dropout built in
        eval mode with inplace=True writes into its input once trained)."""
        for name, module in (("body", body), ("shortcut", shortcut)):
            if module is not None and module._overwrites_input():
                raise ValueError(f"{who}: the {name} ({module!r}) runs in place and would overwrite the input that "
                                 f"the other branch adds; build it with inplace=False")

    def forward(self, x):
        self._refuse_in_place_branches(self.body, self.shortcut, repr(self))
        self._input_shape = _shape_of(x)        # backward checks each branch's input gradient against it
        with _protecting(_arrays_within(x)):      # the shortcut reads x after the body
            out = self.body(x)
        if self.shortcut is None:
            skip = np.asarray(x)
        else:
            # an in-place module inside the shortcut must not overwrite x either (what the body keeps of it, a Linear's
            # input, or the body's output itself when the body passes x on) nor anything else the body keeps
            with _protecting(list(_arrays_within(x)) + list(self.body._kept_arrays()) + list(_arrays_within(out))):
                skip = self.shortcut(x)
        if np.shape(out) != np.shape(skip):
            raise ValueError(f"{self!r}: the body's output ({describe(np.asarray(out))}) and the shortcut's "
                             f"({describe(skip)}) must have the same shape; give a shortcut that projects x")
        return np.add(out, skip, out=reuse.empty(np.shape(skip), np.result_type(out, skip)))

    def backward(self, dout, *, input_grad=True):
        dout = np.asarray(dout)
        through_body = self.body.backward(dout, input_grad=input_grad)
        through_shortcut = dout if self.shortcut is None else self.shortcut.backward(dout, input_grad=input_grad)
        if not input_grad:
            return None
        # a branch's gradient of another shape than x would broadcast into the sum without a word
        shape = self.__dict__.get("_input_shape")
        _check_input_gradient(self, "the body", self.body, through_body, False, shape)
        if self.shortcut is not None:
            _check_input_gradient(self, "the shortcut", self.shortcut, through_shortcut, False, shape)
        dtype = np.result_type(through_body, through_shortcut)
        return np.add(through_body, through_shortcut, out=reuse.empty(np.shape(through_body), dtype))


class StochasticDepth(Dropout):
    r"""Stochastic depth (Huang et al., 2016): in training, drop the residual branch it ends with probability p, per
    example (``mode="row"``) or for the whole batch (``"batch"``), and scale the kept ones by :math:`1/(1-p)`
    (torchvision's ``StochasticDepth``), so evaluation (an identity) needs no rescaling.

    .. math:: y = x \cdot m / (1 - p), \quad m \sim \text{Bernoulli}(1 - p) \text{ per example (row) or per batch}

    Put it last in a :class:`Residual` block's body: a dropped branch leaves :math:`y = S(x)`, the block's shortcut,
    so a net of n blocks trains as an ensemble of shallower ones. It is :class:`~cynet.nn.Dropout` with one draw per
    example (or batch) instead of per element: masks come from ``generator`` (default: the global generator, reseeded
    by :func:`cynet.manual_seed`), and ``reuse_mask = True`` reuses the last mask (gradient checks).

    Args:
        p (float): drop probability in [0, 1]. Default 0.5 (the paper decays it linearly from 0 to 0.5 with depth).
        mode (str): ``"row"`` (each example its own draw) or ``"batch"``. Default ``"row"``.
        generator: a seed or :class:`numpy.random.Generator` (default: the global one).

    Shape: (N, ...) -> the same.

    Example:
        >>> import numpy as np, cynet
        >>> from cynet import nn
        >>> _ = cynet.manual_seed(0)
        >>> drop = nn.StochasticDepth(0.5)
        >>> y = drop(np.ones((8, 2), np.float32))
        >>> sorted(set(y[:, 0].tolist())), bool((y[:, 0] == y[:, 1]).all())
        ([0.0, 2.0], True)
    """

    def __init__(self, p=0.5, mode="row", generator=None):
        if mode not in ("row", "batch"):
            raise ValueError(f"StochasticDepth: mode must be 'row' or 'batch', got {mode!r}")
        super().__init__(p, generator=generator)
        self.mode = mode

    def _mask_shape(self, x):
        # checked again at each forward: an attribute a user may set (mode = "rows" was taken for "batch")
        if not (isinstance(self.mode, str) and self.mode in ("row", "batch")):
            raise ValueError(f"{self!r}: mode must be 'row' or 'batch', got {self.mode!r}")
        if x.ndim == 0:
            raise ValueError(f"{self!r}: input must have a batch axis (N, ...), got {describe(x)}")
        return (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode!r}"
