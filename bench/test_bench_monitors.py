"""The cost of watching training: one epoch of the CIFAR-10 MLP with and without :class:`TrainingMonitor`.

The model, data and optimiser of ``test_bench_training.py``'s ``mlp_bn`` (imported from it, so both benchmarks
time the same epoch): 3072-1024-BN-ReLU-512-BN-ReLU-10, softmax cross-entropy, SGD with momentum 0.9, one epoch over
10,000 CIFAR-shaped float32 samples in mini-batches of 256 (40 batches), shuffled, through
``cynet.train.Trainer.fit`` without a progress bar. One pytest-benchmark group per thread count
(``monitor/mlp_bn/tN``); the implementations:

- ``plain``:                the epoch without callbacks (the baseline of ``bench/report.py``'s group table);
- ``monitored``:            the same with ``TrainingMonitor()`` at its default settings (the first batch of every
                            epoch monitored: activation statistics and histograms, dead ReLUs, gradient stds,
                            update-to-weight ratios);
- ``monitored_every_step``: ``TrainingMonitor(every_iterations=1)``, every batch monitored: the worst case.

The issue's target: monitored / plain <= 1.10 (the overhead at most 10 % of the epoch). The ratio is the second
column of ``python bench/report.py`` for the group. UpdateRatioWarnings are still raised (their cost is part of the
default settings) but not displayed.

Before anything is timed, the monitored run is checked against a plain run from the same seeds: after one epoch the
parameters must be bit-identical (the monitor only reads) and the monitor must hold the expected number of records.

Run:  python -m pytest bench/test_bench_monitors.py --benchmark-only --benchmark-json=bench/results/monitors.json
      python bench/report.py bench/results/monitors.json
"""
import numpy as np
import pytest

import test_bench_training as training
from cynet.diagnostics import TrainingMonitor
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Trainer
from settings import bench_threads

SAMPLES = training.SAMPLES
BATCH = training.BATCH
INPUT_FEATURES, CLASSES = training.SIZES[0], training.SIZES[-1]
THREADS = bench_threads()
IMPLS = ["plain", "monitored", "monitored_every_step"]


def make_data(samples):
    """CIFAR-shaped standard-normal float32 inputs and labels, drawn as ``test_bench_training``'s fixture draws them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, INPUT_FEATURES), dtype=np.float32)
    y = rng.integers(0, CLASSES, samples)
    return x, y


@pytest.fixture(scope="module")
def data():
    return make_data(SAMPLES)


def make_monitor(impl):
    """The callback list of one implementation: none, the default monitor, or a monitor on every iteration."""
    if impl == "plain":
        return None
    return TrainingMonitor() if impl == "monitored" else TrainingMonitor(every_iterations=1)


def make_trainer(monitor):
    """A fresh ``mlp_bn`` (same seeds every time) and its trainer, with ``monitor`` as the only callback."""
    model = training._cynet_model(batchnorm=True)
    optimizer = SGD(model.parameters(), lr=training.LR, momentum=training.MOMENTUM)
    callbacks = [] if monitor is None else [monitor]
    return Trainer(model, SoftmaxCrossEntropy(), optimizer, callbacks=callbacks, progress=False)


def check_monitor_only_reads(x, y, impl):
    """One epoch monitored and one plain from the same seeds: identical parameters, and the records expected of the
    schedule (one per epoch for the default, one per batch for every-step). Returns the monitored trainer, one
    epoch in."""
    monitor = make_monitor(impl)
    monitored, plain = make_trainer(monitor), make_trainer(None)
    monitored.fit(x, y, epochs=1, batch_size=BATCH)
    plain.fit(x, y, epochs=1, batch_size=BATCH)
    for (name, p), (_, q) in zip(monitored.model.named_parameters(), plain.model.named_parameters()):
        if not np.array_equal(p.data, q.data):
            raise AssertionError(f"TrainingMonitor changed the training: parameter {name} differs after one epoch")
    batches = -(-len(x) // BATCH)
    expected = 1 if impl == "monitored" else batches
    if len(monitor.records) != expected:
        raise AssertionError(f"{impl}: expected {expected} monitor records after one epoch, got "
                             f"{len(monitor.records)}")
    return monitored


@pytest.mark.filterwarnings("ignore::cynet.diagnostics.UpdateRatioWarning")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])   # a group's impls run back to back
def test_monitored_epoch(benchmark, timing, use_threads, data, impl, threads):
    x, y = data
    benchmark.group = f"monitor/mlp_bn/t{threads}"
    benchmark.extra_info.update(impl=impl, threads=threads, samples=len(x), batch=BATCH, model="mlp_bn")
    with use_threads(threads):
        if impl == "plain":
            trainer = make_trainer(None)
            trainer.fit(x, y, epochs=1, batch_size=BATCH)          # untimed, as the monitored runs' check epoch
        else:
            trainer = check_monitor_only_reads(x, y, impl)
        epochs = iter(range(2, 10_000))

        def run():
            trainer.fit(x, y, epochs=next(epochs), batch_size=BATCH)

        timing.run(benchmark, run)
