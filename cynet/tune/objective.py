"""What a search ranks its trials by: one key of the dict ``train_fn`` returns, maximised or minimised.

The default objective is "val_acc", maximised (a classifier's validation accuracy). A regression model (trained with
:class:`cynet.nn.loss.MSELoss`) has no accuracy: rank it by "val_loss", minimised. Any other number ``train_fn``
returns can be the objective too, given its direction (``mode="min"`` or ``"max"``).

:class:`Objective` is the one place that decides which of two trials is better; every search, the successive
halving survivors, coarse-to-fine's narrowing, :class:`~cynet.tune.SearchResult`'s order and the best checkpoint
follow it. A trial whose objective value is not finite (NaN, inf) ranks as "diverged", after every finished trial.

Example:
    >>> from cynet.tune import Objective
    >>> Objective("val_loss").mode, Objective().mode, Objective("val_mae", "min").better(0.1, 0.3)
    ('min', 'max', True)
"""
import math

__all__ = ["Objective"]

# the keys whose direction goes without saying; any other key needs mode="min" or "max"
_DEFAULT_MODES = {"val_acc": "max", "val_loss": "min"}
_LABELS = {"val_acc": "validation accuracy", "val_loss": "validation loss"}
# a trial record's bookkeeping, never a score train_fn returns
_RESERVED = ("number", "stage", "rung", "params", "seed", "budget", "status", "epochs", "seconds", "threads", "error",
             "history", "state_dict", "stop_reason")


class Objective:
    """The key a search ranks trials by and its direction.

    Args:
        key (str): a key of the dict ``train_fn`` returns, a number per trial. Default "val_acc".
        mode (str or None): "max" (higher is better) or "min" (lower is better). Default None: "max" for
            "val_acc", "min" for "val_loss"; required for any other key.

    Raises:
        TypeError: ``key`` is not a non-empty str.
        ValueError: ``key`` names a record's bookkeeping ("epochs", "seconds", "status", ...); ``mode`` is neither
            "min", "max" nor None, or None for a key other than "val_acc" and "val_loss".

    Example:
        >>> from cynet.tune import Objective
        >>> objective = Objective("val_loss")
        >>> objective.mode, objective.label, objective.better(0.2, 0.5)
        ('min', 'validation loss (lower is better)', True)
    """

    def __init__(self, key="val_acc", mode=None, *, owner="Objective"):
        if not isinstance(key, str) or not key:
            raise TypeError(f"{owner}: objective must be the name of a number train_fn returns (a str such as "
                            f"'val_acc' or 'val_loss') or an Objective, got {key!r}")
        if key in _RESERVED or key.endswith(("_folds", "_std")):
            raise ValueError(f"{owner}: objective {key!r} is a trial record's bookkeeping, not a score; name a "
                             f"number train_fn returns, such as 'val_acc' or 'val_loss'")
        if mode is None:
            if key not in _DEFAULT_MODES:
                raise ValueError(f"{owner}: objective {key!r} needs mode='min' (lower is better) or mode='max' "
                                 f"(higher is better); only 'val_acc' (max) and 'val_loss' (min) have a default")
            mode = _DEFAULT_MODES[key]
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
        self.key, self.mode = key, mode

    @property
    def is_default(self):
        """Whether this is the default objective ("val_acc", maximised), whose outputs are those of old."""
        return self.key == "val_acc" and self.mode == "max"

    @property
    def label(self):
        """An axis label: "validation accuracy" for the default, else the key and its direction."""
        if self.is_default:
            return "validation accuracy"
        return f"{_LABELS.get(self.key, self.key)} ({'lower' if self.mode == 'min' else 'higher'} is better)"

    def value(self, record):
        """The objective's value in ``record`` as a float (NaN when absent or None)."""
        value = record.get(self.key)
        return math.nan if value is None else float(value)

    def finished(self, record):
        """Whether ``record`` finished ("ok") with a finite objective value: only such trials are ranked."""
        return record["status"] == "ok" and math.isfinite(self.value(record))

    def loss(self, record):
        """The value to sort ascending by (the best first): minus the value when maximising. Only meaningful for
        :meth:`finished` records."""
        value = self.value(record)
        return -value if self.mode == "max" else value

    def better(self, a, b):
        """Whether the value ``a`` is strictly better than ``b``."""
        return a > b if self.mode == "max" else a < b

    def __eq__(self, other):
        return isinstance(other, Objective) and (self.key, self.mode) == (other.key, other.mode)

    def __hash__(self):
        return hash((self.key, self.mode))

    def __repr__(self):
        return f"Objective({self.key!r}, mode={self.mode!r})"


def as_objective(owner, objective="val_acc", mode=None):
    """``objective`` (a key, or an :class:`Objective` with ``mode`` None) as an :class:`Objective`; errors name
    ``owner``."""
    if isinstance(objective, Objective):
        if mode is not None and mode != objective.mode:
            raise ValueError(f"{owner}: mode={mode!r} contradicts {objective!r}; pass one or the other")
        return objective
    return Objective(objective, mode, owner=owner)
