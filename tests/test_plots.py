"""Tests of cynet.diagnostics.plots: valid PNG files come out, wrong inputs give clear errors."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cynet import nn
from cynet.diagnostics import plots
from cynet.diagnostics.init_lab import activation_statistics, init_experiment
from cynet.diagnostics.monitors import TrainingMonitor, UpdateRatioWarning
from cynet.nn.loss import SoftmaxCrossEntropy
from cynet.optim import SGD
from cynet.train import Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_side=50):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] >= min_side and image.shape[1] >= min_side
    assert image.std() > 0                       # something was drawn


def _history():
    rng = np.random.default_rng(0)
    loss = list(2.3 * np.exp(-np.arange(300) / 100) + 0.1 * rng.random(300))
    return {"loss": loss, "train_acc": [0.3, 0.5, 0.6], "val_acc": [0.28, 0.45, 0.5]}


def test_loss_and_accuracy_plots(tmp_path):
    h = _history()
    assert plots.plot_loss(h, tmp_path / "loss.png", window=20) == str(tmp_path / "loss.png")
    _check_png(tmp_path / "loss.png")
    plots.plot_loss({"loss": [2.3, 2.0, float("nan")]}, tmp_path / "nan.png")
    _check_png(tmp_path / "nan.png")
    plots.plot_accuracy(h, tmp_path / "acc.png")
    _check_png(tmp_path / "acc.png")
    with pytest.raises(ValueError, match="loss"):
        plots.plot_loss({"loss": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="window"):
        plots.plot_loss(h, tmp_path / "x.png", window=0)
    with pytest.raises(ValueError, match="train_acc"):
        plots.plot_accuracy({"loss": [1.0]}, tmp_path / "x.png")
    with pytest.raises(TypeError):
        plots.plot_loss([1, 2], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_activation_histograms(tmp_path):
    experiment = init_experiment("tanh", "xavier", layers=6, width=50, samples=100)
    plots.plot_activation_histograms(experiment, tmp_path / "h.png")
    _check_png(tmp_path / "h.png")
    model = nn.Sequential(nn.Linear(4, 8, generator=0), nn.ReLU())
    stats = activation_statistics(model, np.ones((5, 4), np.float32))
    plots.plot_activation_histograms(stats, tmp_path / "one.png", title="one layer")
    _check_png(tmp_path / "one.png")
    with pytest.raises(ValueError):
        plots.plot_activation_histograms([], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_activation_histograms([1.0, 2.0], tmp_path / "x.png")


def test_update_ratios(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(6, 8, generator=0), nn.ReLU(), nn.Linear(8, 2, generator=1))
    monitor = TrainingMonitor(every_iterations=1)
    with pytest.raises(ValueError, match="no records"):
        plots.plot_update_ratios(monitor, tmp_path / "x.png")
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05), callbacks=[monitor],
                      progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpdateRatioWarning)
        trainer.fit(x, y, epochs=2, batch_size=32)
    plots.plot_update_ratios(monitor, tmp_path / "r.png")
    _check_png(tmp_path / "r.png")
    with pytest.raises(TypeError):
        plots.plot_update_ratios({"records": []}, tmp_path / "x.png")


def test_first_layer_templates(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(10, 3072)).astype(np.float32)
    plots.plot_first_layer_templates(weight, tmp_path / "t.png")
    _check_png(tmp_path / "t.png")
    layer = nn.Linear(3072, 12, generator=0)
    plots.plot_first_layer_templates(layer.weight, tmp_path / "p.png", max_templates=5)
    _check_png(tmp_path / "p.png")
    plots.plot_first_layer_templates(rng.normal(size=(3, 64)), tmp_path / "g.png", image_shape=(1, 8, 8))
    _check_png(tmp_path / "g.png", min_side=20)
    with pytest.raises(ValueError, match=r"\(out, 3072\)"):
        plots.plot_first_layer_templates(np.zeros((10, 3000)), tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_first_layer_templates(np.zeros(3072), tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_first_layer_templates(np.zeros((2, 48)), tmp_path / "x.png", image_shape=(2, 4, 6))


def test_importing_diagnostics_does_not_import_matplotlib():
    code = "import sys, cynet.diagnostics; print('matplotlib' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_plots_leave_the_sessions_matplotlib_backend_alone(tmp_path):
    # before: every plot called matplotlib.use("Agg"), which ended plt.show() in a notebook or desktop session
    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
            "from cynet.diagnostics import plots\n"
            "figure = plt.figure()\n"
            f"plots.plot_loss({{'loss': [2.3, 2.1, 1.9]}}, {str(tmp_path / 'l.png')!r}, window=2)\n"
            "print(matplotlib.get_backend(), plt.get_fignums() == [figure.number])")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["svg", "True"]                 # the user's backend, and only the user's figure
    _check_png(tmp_path / "l.png", min_side=20)


def test_update_ratio_plot_draws_weight_matrices_not_a_batchnorms_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(6, 8, generator=0), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2, generator=1))
    monitor = TrainingMonitor(every_iterations=1)
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.05), callbacks=[monitor],
                      progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpdateRatioWarning)
        trainer.fit(x, y, epochs=1, batch_size=32)
    assert "1.weight" in monitor.records[0]["update_ratio"]          # BatchNorm1d's (8,) scale is monitored
    assert plots._weight_matrices(monitor) == ["0.weight", "3.weight"]


def test_the_file_extension_chooses_the_format(tmp_path):
    """plot_loss(h, "loss.svg") wrote PNG bytes into loss.svg (every plot forced PNG); SearchResult.plot wrote SVG."""
    history = _history()
    plots.plot_loss(history, tmp_path / "loss.svg", window=20)
    text = (tmp_path / "loss.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    plots.plot_accuracy(history, tmp_path / "acc.pdf")
    assert (tmp_path / "acc.pdf").read_bytes().startswith(b"%PDF")
    plots.plot_accuracy(history, tmp_path / "acc")              # no extension: PNG
    _check_png(tmp_path / "acc")
    with pytest.raises(ValueError, match="Format 'xyz' is not supported"):
        plots.plot_loss(history, tmp_path / "loss.xyz", window=20)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "3", True])
def test_first_layer_templates_refuse_a_count_that_is_not_a_positive_int(tmp_path, bad):
    # max_templates=0 or -5 drew one template ("at most" 0), 2.5 two
    with pytest.raises(ValueError, match="plot_first_layer_templates: max_templates must be a positive int"):
        plots.plot_first_layer_templates(np.zeros((4, 64)), tmp_path / "t.png", image_shape=(1, 8, 8),
                                         max_templates=bad)
    assert not (tmp_path / "t.png").exists()


def test_histories_of_numpy_arrays_are_plotted(tmp_path):
    # {"loss": np.array([...])} raised "The truth value of an array with more than one element is ambiguous"
    figures = []
    save = plots._save
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
        plots.plot_loss({"loss": np.array([2.0, 1.5, 1.2])}, tmp_path / "l.png", window=2)
        plots.plot_accuracy({"train_acc": np.array([0.3, 0.5]), "val_acc": np.array([0.2, 0.4])}, tmp_path / "a.png")
    np.testing.assert_array_equal(figures[0].axes[0].get_lines()[0].get_ydata(), [2.0, 1.5, 1.2])
    np.testing.assert_array_equal(figures[1].axes[0].get_lines()[1].get_ydata(), [0.2, 0.4])


def test_accuracy_plot_refuses_validation_values_of_another_length(tmp_path):
    # 1 val_acc for 2 epochs: the validation curve was silently left out of the plot
    with pytest.raises(ValueError, match=r"plot_accuracy: history has 1 'val_acc' values for 2 epochs"):
        plots.plot_accuracy({"train_acc": [0.3, 0.5], "val_acc": [0.2]}, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_accuracy_plot_refuses_a_history_without_a_finite_accuracy(tmp_path):
    # a Trainer whose loss gives no accuracy records NaN each epoch: an empty plot came out, without a word
    with pytest.raises(ValueError,
                       match=r"plot_accuracy: history has no finite 'train_acc' or 'val_acc' value \(2 epochs"):
        plots.plot_accuracy({"train_acc": [float("nan")] * 2, "val_acc": [float("nan")] * 2}, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_accuracy_plot_draws_the_validation_curve_of_a_mixup_run(tmp_path):
    # Trainer(mixup=...) records a NaN 'train_acc' every epoch (the targets are mixtures) beside a finite 'val_acc':
    # the run was refused as 'no finite train_acc ... does the loss give class accuracies?'
    pytest.importorskip("matplotlib")
    from cynet import nn
    from cynet.data import Mixup
    from cynet.optim import SGD
    from cynet.train import Trainer

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    model = nn.Sequential(nn.Linear(8, 3))
    trainer = Trainer(model, nn.loss.SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1),
                      mixup=Mixup(0.2, num_classes=3), progress=False)
    trainer.fit(x, y, epochs=2, batch_size=16, validation=(x, y))
    assert np.isnan(trainer.history["train_acc"]).all() and np.isfinite(trainer.history["val_acc"]).all()
    plots.plot_accuracy(trainer.history, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0


@pytest.mark.parametrize("history, bad", [({"train_acc": [30.0, 50.0]}, "'train_acc'.*got 30"),
                                          ({"train_acc": [0.3, 0.5], "val_acc": [0.2, 45.0]}, "'val_acc'.*got 45")])
def test_accuracy_plot_refuses_percentages(tmp_path, history, bad):
    # accuracies in percent were drawn above the fixed 0 to 1.02 axis: a plot with no curve on it
    with pytest.raises(ValueError, match="plot_accuracy: " + bad):
        plots.plot_accuracy(history, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_first_layer_templates_refuse_non_finite_weights(tmp_path):
    # a row holding one NaN was drawn as a black square, the same image as a constant (all-zero) row
    weight = np.ones((3, 16))
    weight[1, 5] = np.nan
    weight[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"plot_first_layer_templates: weight rows \[1, 2\] hold NaN or inf"):
        plots.plot_first_layer_templates(weight, tmp_path / "t.png", image_shape=(1, 4, 4))
    assert not (tmp_path / "t.png").exists()
    plots.plot_first_layer_templates(weight, tmp_path / "t.png", image_shape=(1, 4, 4), max_templates=1)


def test_plots_without_matplotlib_say_what_to_install(tmp_path):
    # before: "ModuleNotFoundError: No module named 'matplotlib.figure'", naming neither the plot nor the fix
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from cynet.diagnostics import plots\n"
            "from cynet.tune import SearchResult, loguniform\n"
            "for call in (lambda: plots.plot_loss({'loss': [2.0, 1.0]}, 'l.png'),\n"
            "             lambda: SearchResult([], {'lr': loguniform(1e-4, 1e-1)}).plot('s.png')):\n"
            "    try:\n"
            "        call()\n"
            "    except ImportError as error:\n"
            "        print(error)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.stdout.splitlines() == [
        "plot_loss draws with matplotlib, which is not installed: pip install matplotlib",
        "SearchResult.plot draws with matplotlib, which is not installed: pip install matplotlib"]
    assert not list(tmp_path.iterdir())
