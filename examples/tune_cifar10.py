"""A small random search over an MLP's learning rate, L2 strength and width on CIFAR-10, as the lecture does it.

Coarse stage: short trials (1-2 epochs) with learning rate and regularisation drawn log-uniformly; the trials run
on a local process pool (default), in this process, or on a Dask cluster. Writes the trial table (CSV, JSON), a
plot of validation accuracy against each hyperparameter and the best checkpoint (``best_val0.XXXX.npz``) to
``--out``. Validation images are carved from the training images; no test image is used.

Data: ``--data`` (a CIFAR-10 directory), else ``$CYNET_DATA`` or ``~/.cache/cynet``, else the shared development copy
``../shared/datasets/cifar-10-batches-py`` next to the project, else the small subset packaged with cynet.

Examples:
    python examples/tune_cifar10.py                                   # 16 trials on the process pool
    python examples/tune_cifar10.py --executor serial --trials 8
    python examples/tune_cifar10.py --executor dask --workers 2       # a LocalCluster of 2 worker processes
    python examples/tune_cifar10.py --executor dask --scheduler tcp://host:8786
    python examples/tune_cifar10.py --coarse-to-fine                  # then a narrowed, longer second stage

The same ``--seed`` and ``--threads-per-trial`` give the same trial table on every executor.
"""
import argparse
import os
import time

from cynet import nn
from cynet.tune import CoarseToFine, RandomSearch, Stage, choice, loguniform, make_trainer_trial
from cifar10_data import load_split
from cli_types import (data_errors_exit, make_output_directory, non_negative_int, output_directory, positive_int,
                       thread_count)


def build_mlp(params):
    """3072 -> hidden -> ReLU -> 10, He initialisation."""
    hidden = int(params["hidden"])
    return nn.Sequential(nn.Linear(3072, hidden, init="he"), nn.ReLU(), nn.Linear(hidden, 10, init="he"))


def sgd_momentum(parameters, params):
    from cynet.optim import SGD

    return SGD(parameters, lr=params["lr"], momentum=0.9)


SPACE = {"lr": loguniform(1e-4, 1e-1), "reg": loguniform(1e-5, 1e-1), "hidden": choice([100, 200])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--executor", choices=["serial", "process", "dask"], default="process")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="process-pool / LocalCluster workers (default: the cores on the pool, 2 for a LocalCluster)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (with --executor dask)")
    p.add_argument("--threads-per-trial", type=thread_count, default=None,
                   help="threads each trial uses (default: cores // workers on the pool, 1 on Dask, all cores "
                        "serially); give the same number to get bit-identical tables from different executors")
    p.add_argument("--trials", type=positive_int, default=16)
    p.add_argument("--epochs", type=positive_int, default=2)
    p.add_argument("--n-train", type=positive_int, default=5000)
    p.add_argument("--n-val", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--coarse-to-fine", action="store_true", help="add a narrowed second stage (4x the epochs)")
    p.add_argument("--data", default=None)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", type=output_directory, default="runs/tune_cifar10")
    args = p.parse_args(argv)
    make_output_directory(args.out, "--out")

    with data_errors_exit("--data"):
        x_tr, y_tr, x_val, y_val, source = load_split(args.data, args.n_train, args.n_val, args.seed)
    print(f"data: {source}\n  {len(x_tr)} training / {len(x_val)} validation images")
    trial = make_trainer_trial(build_mlp, optimizer_factory=sgd_momentum, batch_size=args.batch_size)
    if args.coarse_to_fine:
        search = CoarseToFine(SPACE, [Stage(args.trials, args.epochs, keep=4),
                                      Stage(max(2, args.trials // 4), 4 * args.epochs)], seed=args.seed)
    else:
        search = RandomSearch(SPACE, n_trials=args.trials, seed=args.seed)

    client = cluster = None
    executor = None if args.executor == "serial" else args.executor
    if args.executor == "dask":
        import distributed

        if args.scheduler:
            try:
                client = distributed.Client(args.scheduler)
            except OSError as error:      # (a raw traceback after the connection timeout before)
                p.error(f"--scheduler: cannot reach {args.scheduler}: {error}")
        else:
            cluster = distributed.LocalCluster(n_workers=args.workers or 2, threads_per_worker=1, processes=True,
                                               dashboard_address=None)
            client = distributed.Client(cluster)
        executor = client
    start = time.perf_counter()
    try:
        result = search.run(trial, (x_tr, y_tr, x_val, y_val), budget=args.epochs, executor=executor,
                            n_workers=args.workers if args.executor == "process" else None,
                            threads_per_trial=args.threads_per_trial,
                            checkpoint_dir=args.out, progress=True)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    seconds = time.perf_counter() - start

    print(f"\n{len(result.trials)} trials in {seconds:.1f} s on executor '{args.executor}'\n")
    print(result)
    counts = {s: sum(t["status"] == s for t in result.trials) for s in ("ok", "diverged", "error")}
    print(f"\nstatus: {counts}")
    if not counts["ok"]:
        raise SystemExit(f"no trial finished; the first error:\n{result.trials[0]['error']}")
    print(f"best: val_acc {result.best_val_acc:.4f} with {result.best_params}")
    print(f"files: {result.to_csv(os.path.join(args.out, 'trials.csv'))}, "
          f"{result.to_json(os.path.join(args.out, 'trials.json'))}, {result.best_checkpoint}")
    try:
        print(f"plot: {result.plot(os.path.join(args.out, 'val_acc.png'))}")
    except ImportError:
        print("plot: skipped (matplotlib not installed)")
    return result


if __name__ == "__main__":
    main()
