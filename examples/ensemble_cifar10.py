"""Model ensembles and Polyak/EMA averaging on CIFAR-10: the lecture's "a few extra percent for free".

Trains ``--models`` small MLPs (3072-200-ReLU-10, different random seeds) on a few thousand CIFAR-10 images, each
with an :class:`~cynet.ensemble.EMA` callback, and saves model 0's weights after each of its last epochs. Reports
on the validation images (carved from the training images):

- each model's accuracy, and the same model with its EMA-averaged weights;
- the ensemble of the independently trained models (mean of their softmax probabilities);
- the ensemble of model 0's last checkpoints (one run, several snapshots: ``Ensemble.from_checkpoints``).

Data: ``--data`` (a CIFAR-10 directory), else ``$CYNET_DATA`` or ``~/.cache/cynet``, else the shared development copy
``../shared/datasets/cifar-10-batches-py`` next to the project, else the small subset packaged with cynet.

Example:
    python examples/ensemble_cifar10.py --models 4 --epochs 6
"""
import argparse
import os
import tempfile
import time

import numpy as np

import cynet
from cynet import checkpoint, nn
from cynet.ensemble import EMA, Ensemble
from cynet.nn.loss import L2Penalty, SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Callback, Trainer
from cifar10_data import load_split
from cli_types import (data_errors_exit, non_negative_float, non_negative_int, positive_float, positive_int,
                       probability)


def build_mlp(hidden=200):
    return nn.Sequential(nn.Linear(3072, hidden, init="he"), nn.ReLU(), nn.Linear(hidden, 10, init="he"))


class SaveEveryEpoch(Callback):
    """Save the model after each of the last ``last`` epochs (snapshots for a one-run ensemble)."""

    def __init__(self, directory, last):
        self.directory, self.last, self.paths = directory, last, []

    def on_epoch_end(self, trainer):
        if trainer.epoch > trainer.epochs - self.last:
            path = os.path.join(self.directory, f"epoch{trainer.epoch}.npz")
            checkpoint.save_model(path, trainer.model)
            self.paths.append(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=positive_int, default=4)
    p.add_argument("--epochs", type=positive_int, default=6)
    p.add_argument("--snapshots", type=positive_int, default=3, help="checkpoints of model 0 in the one-run ensemble")
    p.add_argument("--n-train", type=positive_int, default=5000)
    p.add_argument("--n-val", type=positive_int, default=1000)
    p.add_argument("--lr", type=positive_float, default=5e-3)
    p.add_argument("--reg", type=non_negative_float, default=1e-3)
    p.add_argument("--decay", type=probability, default=0.99, help="EMA decay")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--data", default=None)
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)

    with data_errors_exit("--data"):
        x_tr, y_tr, x_val, y_val, source = load_split(args.data, args.n_train, args.n_val, args.seed)
    print(f"data: {source}\n  {len(x_tr)} training / {len(x_val)} validation images\n")
    models, rows = [], []
    snapshot_dir = tempfile.TemporaryDirectory(prefix="cynet-snapshots-")     # removed at exit
    saver = SaveEveryEpoch(snapshot_dir.name, args.snapshots)
    start = time.perf_counter()
    for k in range(args.models):
        cynet.manual_seed(args.seed + k)
        model = build_mlp()
        ema = EMA(args.decay)
        callbacks = [ema] + ([saver] if k == 0 else [])
        trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=args.lr, momentum=0.9),
                          regularization=L2Penalty(args.reg), callbacks=callbacks, seed=args.seed + k,
                          progress=False)
        trainer.fit(x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size)
        _, acc = trainer.evaluate(x_val, y_val)
        with ema.apply():       # a model with batch norm: ema.apply(x_tr), statistics for the averaged weights
            _, ema_acc = trainer.evaluate(x_val, y_val)
        rows.append((k, acc, ema_acc))
        models.append(model)
        print(f"model {k}: val_acc {acc:.4f}   with EMA weights {ema_acc:.4f}", flush=True)
        if k == 0 and ema.num_updates < 1 / (1 - args.decay):
            print(f"  note: {ema.num_updates} steps, fewer than the EMA's memory of about {1 / (1 - args.decay):.0f}: "
                  f"the average still leans on the initial weights (lower --decay, or train longer)")

    _, ens_acc = Ensemble(models).evaluate(x_val, y_val)
    _, snap_acc = Ensemble.from_checkpoints(saver.paths, build_mlp).evaluate(x_val, y_val)
    mean_acc = float(np.mean([r[1] for r in rows]))
    mean_ema = float(np.mean([r[2] for r in rows]))
    print(f"\n{'mean single model':<26}{mean_acc:.4f}")
    print(f"{'mean EMA model':<26}{mean_ema:.4f}   ({mean_ema - mean_acc:+.4f})")
    print(f"{f'ensemble of {args.models} models':<26}{ens_acc:.4f}   ({ens_acc - mean_acc:+.4f} over the mean model, "
          f"{ens_acc - max(r[1] for r in rows):+.4f} over the best)")
    print(f"{f'snapshot ensemble ({len(saver.paths)})':<26}{snap_acc:.4f}   ({snap_acc - rows[0][1]:+.4f} over "
          f"model 0)")
    n = cynet.get_num_threads()
    print(f"\n{time.perf_counter() - start:.1f} s on {n} thread{'s' if n != 1 else ''}")
    snapshot_dir.cleanup()
    return {"models": rows, "ensemble": ens_acc, "snapshots": snap_acc, "snapshot_paths": len(saver.paths)}


if __name__ == "__main__":
    main()
