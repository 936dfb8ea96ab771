"""What the CIFAR-10 examples share: where the development copy of the data lies, and a standardised split.

Not an example of its own: ``train_cifar10.py``, ``tune_cifar10.py``, ``ensemble_cifar10.py``,
``regularization_lab.py`` and ``optimizer_lab.py`` import it (it sits beside them, on their import path when they run
as scripts).
"""
import os
from pathlib import Path

import numpy as np

from cynet.data import Standardize, load_cifar10_reachable
from cynet.tune import holdout_split

# the development copy next to the project (../shared/datasets), when this checkout has one; $CYNET_SHARED_DATA moves it
SHARED = Path(os.environ.get("CYNET_SHARED_DATA")
              or Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
IMAGE = (3, 32, 32)


def load_split(path=None, n_train=5000, n_val=1000, seed=0):
    """``(x_train, y_train, x_val, y_val, description)``: ``n_train`` + ``n_val`` training images drawn at random
    (at most four fifths / one fifth of what is there), split by :func:`cynet.tune.holdout_split`, flattened to
    float32 rows and standardised per channel with the statistics of the training part only.

    Data: ``path``, else ``$CYNET_DATA`` / ``~/.cache/cynet``, else :data:`SHARED`, else the packaged subset.
    """
    data, _ = load_cifar10_reachable(path, fallbacks=[SHARED], test=False, flatten=True)
    x, y = data.x_train, data.y_train
    n_train, n_val = min(n_train, len(x) - len(x) // 5), min(n_val, len(x) // 5)
    pick = np.random.default_rng(seed).permutation(len(x))[:n_train + n_val]
    x_tr, y_tr, x_val, y_val = holdout_split(x[pick], y[pick], n_val / (n_train + n_val), seed=seed)
    scaler = Standardize(per="channel").fit(x_tr.reshape((-1,) + IMAGE))
    x_tr = scaler.transform(x_tr.reshape((-1,) + IMAGE)).reshape(len(x_tr), -1)
    x_val = scaler.transform(x_val.reshape((-1,) + IMAGE)).reshape(len(x_val), -1)
    return x_tr, y_tr, x_val, y_val, data.source
