"""The runnable examples, end to end on the packaged CIFAR-10 subset (offline, seconds).

Oracles: chance level (10 % for ten balanced classes: with 300 test images, 20 % is more than five standard
deviations above it), the PNG signature of the plots, and the checkpoint reloading to the reported accuracy.
"""
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import an example as a module; its directory goes on the import path, as when it runs as a script (the
    examples share cifar10_data.py)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_cifar_data(tmp_path, monkeypatch):
    """Point the data search at an empty directory so the example falls back to the packaged subset."""
    monkeypatch.setenv("CYNET_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("CYNET_SHARED_DATA", str(tmp_path / "nothing-here"))


def test_train_cifar10_learns_on_the_subset_and_reports_test_accuracy(tmp_path, capsys, no_cifar_data):
    example = load_example("train_cifar10")
    out = tmp_path / "run"
    accuracy = example.main(["--epochs", "4", "--skip-checks", "--model", "mlp-small", "--out", str(out)])
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    match = re.fullmatch(r"test accuracy: (\d+\.\d\d)% \((\d+) images\)", last)
    assert match, last
    assert int(match.group(2)) == 300
    assert float(match.group(1)) == pytest.approx(100 * accuracy, abs=0.005)
    # well above chance: the validation and test images go through the same preprocessing as the training ones
    assert accuracy > 0.20
    assert "packaged with cynet" in printed
    for name in ("loss.png", "accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "best.npz", allow_pickle=False) as checkpoint:
        assert len(checkpoint.files) > 0
    # the saved model + preprocessing reproduce the printed test accuracy, and the bundle is the best epoch's
    import json
    from cynet.data import load_bundle, load_cifar10_subset

    history = json.loads((out / "history.json").read_text())
    bundle = load_bundle(out / "model_and_preprocessing.npz", example.build_model(example.MODELS["mlp-small"], 0.2, 0))
    assert bundle.metadata["epoch"] == int(np.argmax(history["val_acc"])) + 1
    assert bundle.metadata["epochs_trained"] == len(history["val_acc"]) == 4
    data = load_cifar10_subset()
    predicted = bundle.model.eval().forward(bundle.transform.transform(data.x_test)).argmax(axis=1)
    assert np.mean(predicted == data.y_test) == accuracy


def test_train_cifar10_resnet_runs_on_the_subset_and_overfits_a_tiny_set(tmp_path, capsys, no_cifar_data):
    example = load_example("train_cifar10")
    accuracy = example.main(["--epochs", "2", "--skip-checks", "--model", "resnet", "--out", str(tmp_path / "res")])
    printed = capsys.readouterr().out
    assert "Residual(" in printed and "StochasticDepth(p=0.1, mode='row')" in printed
    assert "AdaptiveAvgPool2d(output_size=(1, 1))" in printed and "parameters   : 169,098" in printed
    assert 0.0 <= accuracy <= 1.0
    assert printed.strip().splitlines()[-1].startswith("test accuracy: ")
    # the lecture's check that the net can learn at all: 100 images fitted (chance: 10 %)
    from cynet import Trainer, nn, optim
    from cynet.data import Standardize, load_cifar10_subset

    data = load_cifar10_subset()
    x = Standardize(per="channel").fit(data.x_train).transform(data.x_train[:100]).reshape(-1, 3, 32, 32)
    model = example.build_resnet((16, 32, 64), 0.0, seed=0)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                      progress=False, seed=0)
    trainer.fit(x, data.y_train[:100], epochs=40, batch_size=25)
    assert trainer.evaluate(x, data.y_train[:100])[1] > 0.9


def test_train_cifar10_cnn_learns_on_the_subset(tmp_path, capsys, no_cifar_data):
    example = load_example("train_cifar10")
    # four epochs: after three, the best checkpoint of some streams of dropout masks was still the noisy second
    # epoch's (test accuracy 0.14-0.22 for seed 0, 0.22-0.30 for seeds 1-5); after four 0.26-0.35 for seeds 0-5
    accuracy = example.main(["--epochs", "4", "--skip-checks", "--model", "cnn", "--out", str(tmp_path / "cnn")])
    printed = capsys.readouterr().out
    assert "Conv2d(3, 32, kernel_size=(3, 3)" in printed and "MaxPool2d" in printed
    assert accuracy > 0.20                                  # chance is 10 %
    assert printed.strip().splitlines()[-1].startswith("test accuracy: ")


def test_train_cifar10_stops_with_a_message_when_training_diverges_at_once(tmp_path, capsys, no_cifar_data):
    example = load_example("train_cifar10")
    from cynet.train import DivergenceWarning

    with pytest.warns(DivergenceWarning), \
            pytest.raises(SystemExit, match=r"training stopped before its first epoch ended \(diverged"):
        example.main(["--epochs", "1", "--skip-checks", "--model", "mlp-small", "--lr", "50", "--out",
                      str(tmp_path / "diverged")])


def test_train_cifar10_interrupted_writes_the_outputs_of_the_finished_epochs(tmp_path, capsys, monkeypatch,
                                                                           no_cifar_data):
    """Ctrl-C ended the example with a traceback and only best.npz: no history, plots, bundle or test line."""
    from cynet.train import Trainer

    example = load_example("train_cifar10")
    real_epoch, calls = Trainer._run_epoch, []

    def interrupted_in_epoch_3(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted_in_epoch_3)
    out = tmp_path / "run"
    accuracy = example.main(["--epochs", "5", "--skip-checks", "--model", "mlp-small", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "interrupted (KeyboardInterrupt) during epoch 3: writing the outputs of the 2 finished epoch(s)" in printed
    assert re.search(r"test accuracy: \d+\.\d+%", printed) and 0 <= accuracy <= 1
    for name in ("best.npz", "history.json", "loss.png", "accuracy.png", "model_and_preprocessing.npz"):
        assert (out / name).exists(), name

    def interrupted_at_once(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted_at_once)
    with pytest.raises(SystemExit, match=r"first epoch ended \(interrupted .*no checkpoint to test$"):
        example.main(["--epochs", "2", "--skip-checks", "--model", "mlp-small", "--out", str(tmp_path / "r2")])


def test_train_cifar10_sanity_checks_pass_for_the_default_model(tmp_path, capsys, no_cifar_data):
    example = load_example("train_cifar10")
    accuracy = example.main(["--subset", "--epochs", "1", "--model", "mlp-small", "--out", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert re.search(r"\[PASS\] initial loss: expected 2\.303", printed), printed
    assert "[PASS] overfit tiny subset" in printed
    assert "[PASS] regularization raises loss" in printed
    # the checks leave the model and the random streams as they found them: the run does not depend on them
    skipped = example.main(["--subset", "--epochs", "1", "--model", "mlp-small", "--skip-checks", "--out",
                            str(tmp_path / "skipped")])
    assert skipped == accuracy
    import json
    first, second = (json.loads((tmp_path / name / "history.json").read_text()) for name in ("run", "skipped"))
    assert all(first[key] == second[key] for key in first if key != "epoch_time")


def test_regularization_lab_compares_every_method_on_the_subset(capsys, no_cifar_data):
    example = load_example("regularization_lab")
    results = example.main(["--train", "300", "--val", "200", "--epochs", "2", "--batch-size", "50"])
    printed = capsys.readouterr().out
    names = [r["name"] for r in results]
    assert names[0] == "none" and len(names) == 8 and len(set(names)) == 8
    for r in results:
        assert 0.0 <= r["val_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0
        assert r["gap"] == pytest.approx(r["train_acc"] - r["val_acc"])
        assert r["name"] in printed
    assert "300 training and 200 validation images from packaged" in printed
    assert "smallest gap:" in printed.splitlines()[-1]


def test_regularization_lab_gap_is_one_models_train_minus_validation_accuracy(capsys, no_cifar_data):
    """The gap was the final model's training accuracy minus the best epoch's validation accuracy: two models, and a
    gap understated wherever validation peaked before the end (3 epochs here: several rows peak at epoch 2)."""
    example = load_example("regularization_lab")
    results = example.main(["--train", "300", "--val", "200", "--epochs", "3", "--batch-size", "50"])
    printed = capsys.readouterr().out
    assert any(max(r["history"]["val_acc"]) != r["history"]["val_acc"][-1] for r in results)   # the case that tells
    for r in results:
        final_val = r["history"]["val_acc"][-1]
        assert r["gap"] == pytest.approx(r["train_acc"] - final_val)
        assert r["val_acc"] == pytest.approx(max(r["history"]["val_acc"]))
        assert f"{r['train_acc']:>9.1%} {final_val:>8.1%} {r['gap']:>+7.1%}" in printed
    narrowest = min(results[1:], key=lambda r: r["train_acc"] - r["history"]["val_acc"][-1])
    assert printed.splitlines()[-1].startswith(f"smallest gap: {narrowest['name']} (")


def test_ensemble_lab_reports_what_it_computed_on_the_subset(capsys, no_cifar_data):
    """It had no test of its output: the means and differences printed must be those of the returned accuracies."""
    example = load_example("ensemble_cifar10")
    result = example.main(["--models", "3", "--epochs", "3", "--snapshots", "2", "--n-train", "300", "--n-val", "200"])
    printed = capsys.readouterr().out
    rows = result["models"]
    assert [k for k, _, _ in rows] == [0, 1, 2] and result["snapshot_paths"] == 2
    for k, acc, ema_acc in rows:
        assert 0.0 <= acc <= 1.0 and 0.0 <= ema_acc <= 1.0
        assert f"model {k}: val_acc {acc:.4f}   with EMA weights {ema_acc:.4f}" in printed
    mean = float(np.mean([acc for _, acc, _ in rows]))
    mean_ema = float(np.mean([ema for _, _, ema in rows]))
    best = max(acc for _, acc, _ in rows)
    assert f"mean single model         {mean:.4f}" in printed
    assert f"mean EMA model            {mean_ema:.4f}   ({mean_ema - mean:+.4f})" in printed
    assert (f"ensemble of 3 models      {result['ensemble']:.4f}   ({result['ensemble'] - mean:+.4f} over the mean "
            f"model, {result['ensemble'] - best:+.4f} over the best)") in printed
    snapshot_gain = result['snapshots'] - rows[0][1]
    assert f"snapshot ensemble (2)     {result['snapshots']:.4f}   ({snapshot_gain:+.4f} over" in printed
    assert "300 training / 200 validation images" in printed


def test_optimizer_lab_compares_the_update_rules_on_the_ravine_and_the_subset(capsys, no_cifar_data):
    example = load_example("optimizer_lab")
    ravine, rows = example.main(["--train", "300", "--val", "200", "--epochs", "2", "--hidden", "20",
                                 "--lbfgs-iterations", "30"])
    printed = capsys.readouterr().out
    by_rule = {r["rule"]: r for r in ravine}
    # rotation-invariant rules take the same steps on the turned ravine; per-parameter rates do not
    for rule in ("SGD", "SGD + momentum 0.9", "Nesterov 0.9", "L-BFGS, strong Wolfe"):
        assert by_rule[rule]["aligned"] == by_rule[rule]["turned"]
    assert by_rule["AdaGrad"]["aligned"][0] < by_rule["AdaGrad"]["turned"][0]
    assert by_rule["SGD"]["aligned"][1] < 2 / 50           # SGD's rate must stay under 2 / kappa
    assert by_rule["SGD + momentum 0.9"]["aligned"][0] < by_rule["SGD"]["aligned"][0]
    assert by_rule["L-BFGS, strong Wolfe"]["aligned"][0] <= 10
    names = [r["rule"] for r in rows]
    assert names[:6] == list(example.RULES) and len(names) == 9
    for r in rows[:6]:
        assert r["passes"] == 2.0 and 0.0 <= r["val_acc"] <= 1.0
    limited, converged = rows[6], rows[7]
    assert limited["passes"] < converged["passes"] and converged["train_loss"] < limited["train_loss"]
    assert converged["rule"] in ("L-BFGS full batch, converged", "L-BFGS full batch, stopped at 30 iterations",
                                 f"L-BFGS full batch, stopped at {int(converged['passes'])} evaluations")
    assert "300 training and 200 validation images from packaged" in printed
    assert printed.strip().splitlines()[-1].startswith("lowest training loss:")


def test_optimizer_lab_names_the_limit_that_ended_the_full_batch_l_bfgs():
    """The 'converged' row said converged after 3 iterations (--lbfgs-iterations 3): it names what ended the step."""
    example = load_example("optimizer_lab")
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(40, 3072)).astype(np.float32), np.arange(40) % 10,
            rng.normal(size=(20, 3072)).astype(np.float32), np.arange(20) % 10)
    row = example.lbfgs_full_batch("L-BFGS full batch, {stop}", data, 8, 3, 100, 0)
    assert row["rule"] == "L-BFGS full batch, stopped at 3 iterations"
    row = example.lbfgs_full_batch("L-BFGS full batch, {stop}", data, 8, 100, 4, 0)
    assert row["rule"] == "L-BFGS full batch, stopped at 4 evaluations" and row["passes"] == 4
    # a tiny problem that an L-BFGS step finishes well within its limits
    tiny = (np.zeros((10, 3072), np.float32), np.zeros(10, np.int64), np.zeros((5, 3072), np.float32),
            np.zeros(5, np.int64))
    row = example.lbfgs_full_batch("L-BFGS full batch, {stop}", tiny, 8, 500, 1000, 0)
    assert row["rule"] == "L-BFGS full batch, converged" and row["passes"] < 1000


@pytest.mark.parametrize("name,argv,option", [
    ("train_cifar10", ["--epochs", "0"], "--epochs"), ("train_cifar10", ["--threads", "0"], "--threads"),
    ("train_cifar10", ["--dropout", "1.5"], "--dropout"), ("train_cifar10", ["--lr", "-1"], "--lr"),
    ("train_cifar10", ["--batch-size", "0"], "--batch-size"), ("ensemble_cifar10", ["--snapshots", "0"], "--snapshots"),
    ("ensemble_cifar10", ["--models", "0"], "--models"), ("regularization_lab", ["--epochs", "0"], "--epochs"),
    ("regularization_lab", ["--train", "0"], "--train"), ("optimizer_lab", ["--kappa", "-1"], "--kappa"),
    ("init_lab", ["--layers", "0"], "--layers"), ("tune_cifar10", ["--trials", "0"], "--trials"),
    ("train_cifar10", ["--weight-decay", "-1"], "--weight-decay"),
    # a negative seed reached manual_seed / NumPy as a traceback (optimizer_lab's after its whole first part)
    ("train_cifar10", ["--seed", "-1"], "--seed"), ("tune_cifar10", ["--seed", "-1"], "--seed"),
    ("ensemble_cifar10", ["--seed", "-1"], "--seed"), ("init_lab", ["--seed", "-1"], "--seed"),
    ("optimizer_lab", ["--seed", "-1"], "--seed"), ("regularization_lab", ["--seed", "-1"], "--seed"),
    ("demo_kernels", ["--size", "0"], "--size"), ("demo_kernels", ["--threads", "0"], "--threads"),
    # above cynet's limit of 32768 threads: a traceback from set_num_threads (tune's after loading the data)
    ("train_cifar10", ["--threads", "100000"], "--threads"), ("demo_kernels", ["--threads", "100000"], "--threads"),
    ("tune_cifar10", ["--threads-per-trial", "100000"], "--threads-per-trial"),
])
def test_a_bad_option_is_an_argparse_error_naming_it_before_any_work(name, argv, option, capsys):
    """--epochs 0 failed in the middle of a run with "CosineAnnealingLR: T_max must be an int >= 1", --snapshots 0
    after training every model, --threads 0 was ignored and --kappa -1 turned the ravine into a saddle."""
    with pytest.raises(SystemExit) as stop:
        load_example(name).main(argv)
    assert stop.value.code == 2
    assert f"argument {option}: must be" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [(["--lr", "abc"], "argument --lr: 'abc' is not a number"),
                                          (["--epochs", "2.5"], "argument --epochs: '2.5' is not an integer")])
def test_an_option_that_is_not_a_number_is_named(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        load_example("train_cifar10").main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_an_argparse_error(tmp_path, capsys):
    taken = tmp_path / "afile"
    taken.write_text("")
    for name in ("train_cifar10", "tune_cifar10"):
        with pytest.raises(SystemExit) as stop:
            load_example(name).main(["--out", str(taken)])
        assert stop.value.code == 2 and "argument --out: " in capsys.readouterr().err


@pytest.mark.parametrize("name,option", [("train_cifar10", "--out"), ("tune_cifar10", "--out"),
                                         ("init_lab", "--plots")])
def test_an_output_directory_that_cannot_be_created_is_a_one_line_error(name, option, tmp_path, capsys):
    # a path under a file passed the check and ended in a NotADirectoryError traceback from os.makedirs
    taken = tmp_path / "afile"
    taken.write_text("")
    with pytest.raises(SystemExit) as stop:
        load_example(name).main([option, str(taken / "sub")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and f"error: {option}: cannot create" in err[0]


@pytest.mark.parametrize("name,argv", [("train_cifar10", ["--skip-checks", "--epochs", "1"]),
                                       ("tune_cifar10", []), ("regularization_lab", [])])
def test_missing_data_is_a_one_line_error_naming_the_option(name, argv, tmp_path, capsys):
    # a traceback ended with the (clear) FileNotFoundError; now one line on stderr and status 2, as a bad option
    with pytest.raises(SystemExit) as stop:
        load_example(name).main(argv + ["--data", str(tmp_path / "nothing-here")] +
                                (["--out", str(tmp_path / "out")] if name != "regularization_lab" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "error: --data" in err[0] and "no CIFAR-10 data" in err[0]
