"""Checkpoints (cynet.checkpoint and Trainer.save_checkpoint/load_checkpoint): the file format, atomic writes,
clear errors for bad files, model round trips and bit-exact resumption of training."""
import io
import json
import os
import warnings

import numpy as np
import pytest

import cynet
from cynet import checkpoint, nn, optim
from cynet.checkpoint import CheckpointError
from cynet.nn.loss import L2Penalty, SoftmaxCrossEntropy
from cynet.optim.lr_scheduler import ExponentialLR, StepLR
from cynet.train import Callback, EarlyStopping, ModelCheckpoint, ProgressBar, Trainer


def blobs(n, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = 2.0 * np.eye(classes, d)[y] + 0.8 * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.int64)


def mlp(h=12, dropout=0.3, seed=0, dropout_generator=None):
    return nn.Sequential(nn.Linear(6, h, generator=seed), nn.ReLU(), nn.Dropout(dropout, generator=dropout_generator),
                         nn.Linear(h, 3, generator=seed + 1))


def assert_same_weights(a, b):
    """Two models (or state dicts) hold the same arrays bit for bit."""
    sa, sb = (m.state_dict() if hasattr(m, "state_dict") else m for m in (a, b))
    assert list(sa) == list(sb)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


# --- the file format -------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    path = tmp_path / "state.npz"
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "count": np.array(7, np.int64),
              "empty": np.zeros((0, 5), np.float64), "name": np.array("ünïcode"), "flags": np.array([True, False])}
    meta = {"epoch": 3, "nested": {"lr": 0.1, "list": [1, 2.5, None]}, "text": "héllo", "inf": float("inf")}
    checkpoint.save(path, arrays, meta)
    got, got_meta = checkpoint.load(path)
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape
        np.testing.assert_array_equal(got[key], value)
    assert got_meta["format"] == "cynet-checkpoint" and got_meta["format_version"] == checkpoint.FORMAT_VERSION
    assert {k: got_meta[k] for k in meta} == meta
    # a plain .npz: readable by numpy alone, without pickle, the header a 0-d unicode array of JSON
    with np.load(path, allow_pickle=False) as raw:
        header = raw["__meta__"]
        assert header.shape == () and header.dtype.kind == "U"
        assert json.loads(str(header))["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]     # no temporary file left behind


def test_save_writes_exactly_the_given_path_and_overwrites(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.save(path, {"a": np.ones(2)}, {"v": 1})
    checkpoint.save(str(path), {"a": np.zeros(3)}, {"v": 2})
    arrays, meta = checkpoint.load(path)
    assert meta["v"] == 2 and arrays["a"].tolist() == [0.0, 0.0, 0.0]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_save_rejects_what_it_cannot_store_without_pickle(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match="object"):
        checkpoint.save(path, {"bad": np.array([{"a": 1}], dtype=object)}, {})
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(path, {}, {"when": object()})
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save(path, {"__meta__": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="separator"):
        checkpoint.save(path, {"a/b": np.zeros(1)}, {})
    assert not path.exists() and os.listdir(tmp_path) == []


def test_a_failing_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    checkpoint.save(path, {"w": np.full(1000, 1.0)}, {"version": "old"})
    before = path.read_bytes()

    def broken_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")          # some bytes reach the (temporary) file first
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"w": np.full(1000, 2.0)}, {"version": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    arrays, meta = checkpoint.load(path)
    assert meta["version"] == "old" and np.all(arrays["w"] == 1.0)
    assert os.listdir(tmp_path) == ["model.npz"]

    # an interrupted write (KeyboardInterrupt) is cleaned up the same way
    def interrupted(file, *args, **kwargs):
        file.write(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": np.zeros(1)}, {})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.npz"]


def test_the_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    checkpoint.save(tmp_path / "a.npz", {"x": np.ones(3)}, {})
    assert events.index("fsync") < events.index("replace")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_files_get_the_permissions_a_plain_write_gives_and_an_overwrite_keeps_them(tmp_path):
    """Written through a temporary file from mkstemp, every checkpoint, bundle or download ended up 0600 whatever
    the umask, and overwriting a shared 0644 file made it private."""
    from cynet.data import MeanImage, save_bundle

    old = os.umask(0o022)
    try:
        checkpoint.save(tmp_path / "a.npz", {"w": np.ones(2)}, {})
        save_bundle(tmp_path / "b.npz", nn.Linear(2, 2), MeanImage().fit(np.ones((3, 2))))
        np.savez(tmp_path / "plain.npz", w=np.ones(2))
        mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777           # noqa: E731
        assert mode("a.npz") == mode("b.npz") == mode("plain.npz") == 0o644
        os.chmod(tmp_path / "a.npz", 0o640)
        checkpoint.save(tmp_path / "a.npz", {"w": np.zeros(2)}, {})            # an overwrite keeps the mode
        assert mode("a.npz") == 0o640
        os.umask(0o077)
        checkpoint.save(tmp_path / "c.npz", {"w": np.ones(2)}, {})
        assert mode("c.npz") == 0o600
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz", "c.npz", "plain.npz"]       # no temporary files


# --- unreadable files ------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        checkpoint.load_model(path, mlp())


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.npz"
    checkpoint.save(path, {"w": np.arange(5000, dtype=np.float64)}, {"a": 1})
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 10, 10):
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match="cut.npz"):
            checkpoint.load(path)


def test_corrupt_file_bad_crc(tmp_path):
    path = tmp_path / "flipped.npz"
    values = np.arange(5000, dtype=np.float64)
    checkpoint.save(path, {"w": values}, {"a": 1})
    data = bytearray(path.read_bytes())
    offset = data.find(values[2500:2501].tobytes())       # stored uncompressed: flip a byte of the array's data
    assert offset > 0
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="flipped.npz.*(corrupt|CRC)"):
        checkpoint.load(path)


def test_a_corrupt_directory_entry_is_a_checkpoint_error(tmp_path):
    # a flipped bit in the zip's central directory makes zipfile raise NotImplementedError (an "encrypted" or
    # "compressed patched" flag, an unknown compression method) or RuntimeError ("password required"), not BadZipFile
    path = tmp_path / "entry.npz"
    checkpoint.save(path, {"w": np.arange(50, dtype=np.float64)}, {"a": 1})
    data = path.read_bytes()
    entry = data.rfind(b"PK\x01\x02")       # the last central directory entry (the header's)
    assert entry > 0
    for offset, bit in ((8, 0x01), (8, 0x40), (8, 0x20), (10, 0x01), (6, 0xFF)):   # flags, method, version needed
        damaged = bytearray(data)
        damaged[entry + offset] ^= bit
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="entry.npz.*truncated or corrupt"):
            checkpoint.load(path)


def test_not_a_cynet_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an archive\n")
    with pytest.raises(CheckpointError, match="notes.txt.*not a cynet checkpoint"):
        checkpoint.load(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(3))
    with pytest.raises(CheckpointError, match="plain.npz.*not a cynet checkpoint"):
        checkpoint.load(plain)
    npy = tmp_path / "array.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(CheckpointError, match="array.npy"):
        checkpoint.load(npy)
    other = tmp_path / "other.npz"
    np.savez(other, __meta__=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(CheckpointError, match="other.npz.*not a cynet checkpoint"):
        checkpoint.load(other)
    garbled = tmp_path / "garbled.npz"
    np.savez(garbled, __meta__=np.array("{not json"))
    with pytest.raises(CheckpointError, match="garbled.npz.*header"):
        checkpoint.load(garbled)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"format": "cynet-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled.npz.* holds pickled Python objects, which cynet never loads"):
        checkpoint.load(pickled)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.npz"
    header = {"format": "cynet-checkpoint", "format_version": checkpoint.FORMAT_VERSION + 1}
    np.savez(path, __meta__=np.array(json.dumps(header)))
    with pytest.raises(CheckpointError, match="future.npz.*version"):
        checkpoint.load(path)


# --- models ----------------------------------------------------------------------------------------------------------
def test_save_and_load_model(tmp_path):
    path = tmp_path / "model.npz"
    source = mlp(seed=1)
    checkpoint.save_model(path, source)
    target = mlp(seed=2)
    assert not np.array_equal(source[0].weight.data, target[0].weight.data)
    assert checkpoint.load_model(path, target) is target
    assert_same_weights(source, target)
    arrays, meta = checkpoint.load(path)
    assert meta["kind"] == "model"
    assert sorted(arrays) == ["model.0.bias", "model.0.weight", "model.3.bias", "model.3.weight"]


def test_load_model_mismatch_lists_the_differences_and_changes_nothing(tmp_path):
    path = tmp_path / "model.npz"
    checkpoint.save_model(path, mlp(h=12))
    wider = mlp(h=16, seed=5)
    before = wider.state_dict()
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_model(path, wider)
    message = str(info.value)
    assert "model.npz" in message and "0.weight" in message and "(16, 6)" in message and "(12, 6)" in message
    assert "3.weight" in message and "3.bias" not in message
    for key, value in before.items():
        np.testing.assert_array_equal(wider.state_dict()[key], value)
    deeper = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 3), nn.ReLU(),
                           nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: \['5.weight', '5.bias'\]"):
        checkpoint.load_model(path, deeper)
    shallow = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.3))
    with pytest.raises(CheckpointError, match=r"not in the model: \['3.weight', '3.bias'\]"):
        checkpoint.load_model(path, shallow)


# --- trainers: exact resumption --------------------------------------------------------------------------------------
def _trainer(kind, seed_weights=0, dropout_generator=None, callbacks=()):
    model = mlp(seed=seed_weights, dropout_generator=dropout_generator)
    if kind == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = optim.Adam(model.parameters(), lr=3e-3)
    return Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=StepLR(opt, step_size=1, gamma=0.7),
                   regularization=L2Penalty(1e-3), callbacks=list(callbacks), seed=11, progress=False)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("own_generator", [False, True], ids=["global-dropout-rng", "dropout-own-rng"])
def test_resume_gives_bit_identical_weights(tmp_path, kind, own_generator):
    x, y = blobs(70, seed=1)
    val = blobs(30, seed=2)

    cynet.manual_seed(123)
    straight = _trainer(kind, dropout_generator=7 if own_generator else None)
    straight.fit(x, y, epochs=4, batch_size=16, validation=val)

    cynet.manual_seed(123)
    first = _trainer(kind, dropout_generator=7 if own_generator else None)
    first.fit(x, y, epochs=2, batch_size=16, validation=val)
    path = tmp_path / "run.npz"
    first.save_checkpoint(path)

    cynet.manual_seed(999)                           # a different global state and different initial weights
    resumed = _trainer(kind, seed_weights=42, dropout_generator=3 if own_generator else None)
    assert resumed.load_checkpoint(path) is resumed
    assert resumed.epoch == 2 and resumed.iteration == first.iteration
    resumed.fit(x, y, epochs=4, batch_size=16, validation=val)

    assert_same_weights(straight.model, resumed.model)
    timeless = lambda h: {k: v for k, v in h.items() if k != "epoch_time"}      # noqa: E731 (wall time differs)
    assert timeless(straight.history) == timeless(resumed.history)
    assert len(resumed.history["epoch_time"]) == 4
    assert resumed.optimizer.lr == straight.optimizer.lr
    assert straight.optimizer.lr != 0.05 and straight.optimizer.lr != 3e-3      # the schedule really ran
    # and the weights really depend on the dropout masks: without restoring the random state they would differ
    cynet.manual_seed(999)
    careless = _trainer(kind, dropout_generator=7 if own_generator else None)
    careless.load_checkpoint(path)
    if own_generator:
        careless.model[2].generator = np.random.default_rng(7)
    else:
        cynet.manual_seed(5)
    careless.fit(x, y, epochs=4, batch_size=16, validation=val)
    assert not np.array_equal(careless.model[0].weight.data, straight.model[0].weight.data)


def test_trainer_checkpoint_contents_and_key_names(tmp_path):
    x, y = blobs(40)
    trainer = _trainer("sgd", callbacks=[EarlyStopping(monitor="val_loss", patience=9)])
    trainer.fit(x, y, epochs=2, batch_size=16, validation=(x, y))
    path = tmp_path / "t.npz"
    trainer.save_checkpoint(path)
    arrays, meta = checkpoint.load(path)
    assert meta["kind"] == "trainer" and meta["trainer"]["epoch"] == 2
    model_keys = {"model." + k for k in trainer.model.state_dict()}
    assert model_keys <= set(arrays)
    assert any(k.startswith("optim.") for k in arrays)
    np.testing.assert_array_equal(arrays["history.loss"], trainer.history["loss"])
    assert {"trainer", "global", "modules"} <= set(meta["rng"])
    assert meta["callbacks"][0]["type"] == "EarlyStopping"
    assert {"callback.0.best_state." + k for k in trainer.model.state_dict()} <= set(arrays)
    # a trainer checkpoint also loads as a model checkpoint
    restored = checkpoint.load_model(path, mlp(seed=8))
    assert_same_weights(restored, trainer.model)


def test_early_stopping_state_survives_a_checkpoint(tmp_path):
    x, y = blobs(40)
    stopper = EarlyStopping(monitor="val_loss", patience=9)
    trainer = _trainer("adam", callbacks=[stopper])
    trainer.fit(x, y, epochs=3, batch_size=16, validation=(x, y))
    path = tmp_path / "t.npz"
    trainer.save_checkpoint(path)
    fresh = EarlyStopping(monitor="val_loss", patience=9)
    _trainer("adam", callbacks=[fresh]).load_checkpoint(path)
    assert (fresh.best, fresh.best_epoch, fresh.wait) == (stopper.best, stopper.best_epoch, stopper.wait)
    assert fresh.best_state.keys() == stopper.best_state.keys()
    for key in stopper.best_state:
        np.testing.assert_array_equal(fresh.best_state[key], stopper.best_state[key])


@pytest.mark.parametrize("through_checkpoint", [False, True], ids=["same-trainer", "checkpoint"])
def test_early_stopping_putting_back_the_best_weights_does_not_change_a_run_in_parts(tmp_path, through_checkpoint):
    # the best epoch is the first (the highest training loss): every fit ends with older weights put back, and the
    # next fit must go on from the weights training had reached, as the run in one part does
    x, y = blobs(70, seed=1)
    val = blobs(30, seed=2)

    def run(parts):
        cynet.manual_seed(123)
        trainer = _trainer("sgd", callbacks=[EarlyStopping(monitor="train_loss", mode="max", patience=100)])
        for epochs in parts:
            if through_checkpoint and trainer.epoch:
                path = tmp_path / f"at{trainer.epoch}.npz"
                trainer.save_checkpoint(path)
                cynet.manual_seed(999)
                trainer = _trainer("sgd", seed_weights=42,
                                   callbacks=[EarlyStopping(monitor="train_loss", mode="max", patience=100)])
                trainer.load_checkpoint(path)
            trainer.fit(x, y, epochs=epochs, batch_size=16, validation=val)
            stopper = trainer.callbacks[0]
            assert stopper.best_epoch == 1 and stopper.training_state is not None
            assert_same_weights(trainer.model, stopper.best_state)
        return trainer

    straight, parts = run([4]), run([2, 3, 4])
    timeless = lambda h: {k: v for k, v in h.items() if k != "epoch_time"}      # noqa: E731 (wall time differs)
    assert timeless(parts.history) == timeless(straight.history)
    for key, value in straight.callbacks[0].training_state.items():
        np.testing.assert_array_equal(parts.callbacks[0].training_state[key], value)
    # weights changed between the parts are the ones the next part trains from
    changed = run([2])
    changed.model[0].weight.data += 1
    expected = changed.model.state_dict()
    changed.callbacks[0].on_train_begin(changed)
    assert_same_weights(changed.model, expected)


def test_load_checkpoint_errors_leave_the_trainer_unchanged(tmp_path):
    x, y = blobs(40)
    trainer = _trainer("sgd")
    trainer.fit(x, y, epochs=1, batch_size=16)
    path = tmp_path / "t.npz"
    trainer.save_checkpoint(path)

    wide = mlp(h=20)
    other = Trainer(wide, SoftmaxCrossEntropy(), optim.SGD(wide.parameters(), lr=0.1), progress=False)
    before = other.model.state_dict()
    with pytest.raises(CheckpointError, match="t.npz.*0.weight.*(20, 6)"):
        other.load_checkpoint(path)
    assert other.epoch == 0 and other.history["loss"] == []
    for key, value in before.items():
        np.testing.assert_array_equal(other.model.state_dict()[key], value)

    no_scheduler = mlp()
    with pytest.raises(CheckpointError, match="scheduler"):
        Trainer(no_scheduler, SoftmaxCrossEntropy(), optim.SGD(no_scheduler.parameters(), lr=0.1, momentum=0.9),
                progress=False).load_checkpoint(path)

    model_only = tmp_path / "m.npz"
    checkpoint.save_model(model_only, trainer.model)
    with pytest.raises(CheckpointError, match="m.npz.*load_model"):
        _trainer("sgd").load_checkpoint(model_only)


def trainer_state(trainer):
    """Everything load_checkpoint may change, as comparable copies."""
    return {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict(),
            "sched": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
            "callbacks": [callback.state_dict() for callback in trainer.callbacks], "lr": trainer.optimizer.lr,
            "history": {k: list(v) for k, v in trainer.history.items()}, "epoch": trainer.epoch,
            "iteration": trainer.iteration, "rng": cynet.get_rng_state(trainer.generator)}


def assert_same_trainer_state(got, want):
    assert got.keys() == want.keys()
    for part in want:
        if isinstance(want[part], dict) and part != "history":
            assert_same_flat(got[part], want[part], part)
        elif part == "callbacks":
            assert len(got[part]) == len(want[part])
            for g, w in zip(got[part], want[part]):
                assert_same_flat(g, w, part)
        else:
            assert got[part] == want[part], part


def assert_same_flat(got, want, label):
    assert got.keys() == want.keys(), label
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{label}: {key}")


def _saved_sgd_run(tmp_path, callbacks=()):
    """A 1-epoch SGD+momentum/StepLR run saved to tmp_path/t.npz; its path."""
    x, y = blobs(40)
    trainer = _trainer("sgd", callbacks=callbacks)
    trainer.fit(x, y, epochs=1, batch_size=16, validation=(x, y))
    path = tmp_path / "t.npz"
    trainer.save_checkpoint(path)
    return path


def _trained_target(kind="adam", callbacks=(), scheduler=StepLR, **trainer_kw):
    """A trainer with state of its own (one epoch of training), to load into."""
    x, y = blobs(30, seed=5)
    model = mlp(seed=3)
    opt = optim.Adam(model.parameters(), lr=1e-3) if kind == "adam" else optim.SGD(model.parameters(), lr=0.1,
                                                                                     momentum=0.5)
    sched = scheduler(opt, 0.5) if scheduler is ExponentialLR else scheduler(opt, step_size=1, gamma=0.5)
    trainer = Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=sched, callbacks=list(callbacks), seed=4,
                      **{"progress": False, **trainer_kw})
    trainer.fit(x, y, epochs=1, batch_size=10, validation=(x, y))
    return trainer


def test_an_optimiser_of_another_type_is_a_checkpoint_error_and_changes_nothing(tmp_path):
    path = _saved_sgd_run(tmp_path)
    target = _trained_target("adam")
    before = trainer_state(target)
    with pytest.raises(CheckpointError, match=r"t.npz.*state of a SGD optimiser but the trainer's optimiser is a "
                                              r"Adam"):
        target.load_checkpoint(path)
    assert_same_trainer_state(trainer_state(target), before)


def test_optimiser_state_that_does_not_fit_is_a_checkpoint_error_and_changes_nothing(tmp_path):
    path = _saved_sgd_run(tmp_path)
    model = mlp(seed=3)
    partial = optim.SGD(model.parameters()[:2], lr=0.1, momentum=0.9)      # optimises the first layer only
    target = Trainer(model, SoftmaxCrossEntropy(), partial, scheduler=StepLR(partial, step_size=1, gamma=0.7),
                     progress=False)
    before = trainer_state(target)
    with pytest.raises(CheckpointError, match="optimiser state does not fit.*holds 4 parameters, this optimiser "
                                              "has 2"):
        target.load_checkpoint(path)
    assert_same_trainer_state(trainer_state(target), before)


def test_a_scheduler_of_another_type_is_a_checkpoint_error_and_changes_nothing(tmp_path):
    path = _saved_sgd_run(tmp_path)
    target = _trained_target("sgd", scheduler=ExponentialLR)
    before = trainer_state(target)
    with pytest.raises(CheckpointError, match="state of a StepLR scheduler but the trainer's scheduler is a "
                                              "ExponentialLR"):
        target.load_checkpoint(path)
    assert_same_trainer_state(trainer_state(target), before)


@pytest.mark.parametrize("callbacks,message", [
    (lambda tmp: [], r"callbacks \['EarlyStopping'\] but the trainer's callbacks with state are \[\]"),
    (lambda tmp: [ModelCheckpoint(tmp / "best.npz", monitor="val_loss")], r"are \['ModelCheckpoint'\]"),
    (lambda tmp: [EarlyStopping(monitor="val_loss"), EarlyStopping(monitor="val_acc")],
     r"are \['EarlyStopping', 'EarlyStopping'\]"),
], ids=["missing", "other-type", "one-too-many"])
def test_callbacks_that_do_not_match_are_a_checkpoint_error_and_change_nothing(tmp_path, callbacks, message):
    path = _saved_sgd_run(tmp_path, callbacks=[EarlyStopping(monitor="val_loss", patience=9)])
    target = _trained_target("sgd", callbacks=callbacks(tmp_path))
    before = trainer_state(target)
    with pytest.raises(CheckpointError, match=message):
        target.load_checkpoint(path)
    assert_same_trainer_state(trainer_state(target), before)


def test_callbacks_without_state_are_left_out_of_the_matching(tmp_path):
    """A progress bar (no state) on one side only does not matter; the stateful callbacks are paired in order."""
    saved_stopper = EarlyStopping(monitor="val_loss", patience=9)
    path = _saved_sgd_run(tmp_path, callbacks=[saved_stopper])
    stopper = EarlyStopping(monitor="val_loss", patience=9)
    target = _trained_target("sgd", callbacks=[ProgressBar(file=io.StringIO()), Callback(), stopper])
    target.load_checkpoint(path)
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (saved_stopper.best, saved_stopper.best_epoch,
                                                                saved_stopper.wait)
    assert target.epoch == 1 and type(target.optimizer) is optim.SGD


class Picky(Callback):
    """A callback with state that refuses to load anything but its own kind."""

    def __init__(self, kind):
        self.kind = kind

    def state_dict(self):
        return {"kind": self.kind}

    def load_state_dict(self, state):
        if state["kind"] != self.kind:
            raise ValueError(f"Picky: cannot load the state of a {state['kind']!r} callback into a {self.kind!r} one")


def test_a_callback_refusing_its_state_undoes_what_was_loaded_before_it(tmp_path):
    path = _saved_sgd_run(tmp_path, callbacks=[EarlyStopping(monitor="val_loss", patience=9), Picky("a")])
    stopper = EarlyStopping(monitor="val_loss", patience=9)
    target = _trained_target("sgd", callbacks=[stopper, Picky("b")])
    before = trainer_state(target)
    assert stopper.best is not None                      # it has state of its own, which must come back
    with pytest.raises(CheckpointError, match="the Picky callback refused its saved state: Picky: cannot load"):
        target.load_checkpoint(path)
    assert_same_trainer_state(trainer_state(target), before)


class HalfLoader(Callback):
    """A callback whose load_state_dict sets one attribute, then raises on the next (a half-done load)."""

    def __init__(self):
        self.a, self.b = 1, 2

    def state_dict(self):
        return {"a": self.a, "b": self.b}

    def load_state_dict(self, state):
        self.a = state["a"]
        self.b = int(state["b"])


def _refused_edit(path, edited, edit, match, callbacks=list):
    """Load the checkpoint at ``path``, ``edit(arrays, meta)`` it and save it to ``edited``; a trained target (its
    callbacks from ``callbacks()``) must refuse it with a CheckpointError matching ``match`` and keep its whole state.
    Returns the target."""
    arrays, meta = checkpoint.load(path)
    edit(arrays, meta)
    checkpoint.save(edited, arrays, meta)
    target = _trained_target("sgd", callbacks=callbacks())
    before = trainer_state(target)
    with pytest.raises(CheckpointError, match=match):
        target.load_checkpoint(edited)
    assert_same_trainer_state(trainer_state(target), before)
    return target


def test_a_callback_raising_half_way_through_its_load_is_undone_too(tmp_path):
    # the failing callback's own half-loaded state goes back, not only that of the callbacks before it
    saved = HalfLoader()
    saved.a = 10
    path = _saved_sgd_run(tmp_path, callbacks=[EarlyStopping(monitor="val_loss", patience=9), saved])

    def callbacks():
        return [EarlyStopping(monitor="val_loss", patience=9), HalfLoader()]

    def set_b(arrays, meta):
        meta["callbacks"][1]["state"]["b"] = "not a number"

    target = _refused_edit(path, tmp_path / "half.npz", set_b, "the HalfLoader callback refused its saved state",
                           callbacks)
    assert (target.callbacks[1].a, target.callbacks[1].b) == (1, 2)

    # EarlyStopping itself: a 'wait' that is not a count is refused after best/best_epoch were read
    def set_wait(arrays, meta):
        meta["callbacks"][0]["state"]["wait"] = "three"

    _refused_edit(path, tmp_path / "wait.npz", set_wait, "the EarlyStopping callback refused its saved state",
                  callbacks)


def test_a_corrupt_random_state_or_counter_is_found_before_anything_changes(tmp_path):
    path = _saved_sgd_run(tmp_path)
    arrays, meta = checkpoint.load(path)
    target = _trained_target("sgd")
    before = trainer_state(target)
    broken_rng = json.loads(json.dumps(meta))
    broken_rng["rng"]["global"] = "not json"
    checkpoint.save(tmp_path / "rng.npz", arrays, broken_rng)
    with pytest.raises(CheckpointError, match="invalid random state for the global generator"):
        target.load_checkpoint(tmp_path / "rng.npz")
    broken_epoch = json.loads(json.dumps(meta))
    broken_epoch["trainer"]["epoch"] = -1
    checkpoint.save(tmp_path / "epoch.npz", arrays, broken_epoch)
    with pytest.raises(CheckpointError, match=r"invalid trainer counters: epoch = -1"):
        target.load_checkpoint(tmp_path / "epoch.npz")
    assert_same_trainer_state(trainer_state(target), before)


@pytest.mark.parametrize("key, value", [("iteration_at_epoch_end", "eight"), ("iteration_at_epoch_end", 10 ** 6),
                                        ("iteration_at_epoch_end", -1), ("stop_reason", 5)])
def test_every_trainer_counter_is_checked_before_anything_changes(tmp_path, key, value):
    def set_counter(arrays, meta):
        meta["trainer"][key] = value

    _refused_edit(_saved_sgd_run(tmp_path), tmp_path / "bad.npz", set_counter,
                  f"invalid trainer counters: {key} = {value!r}")


@pytest.mark.parametrize("bad", [np.array(["a"] * 12), np.zeros(12, np.complex64)], ids=["str", "complex"])
def test_model_arrays_that_are_not_numbers_are_a_checkpoint_error_before_anything_changes(tmp_path, bad):
    def set_bias(arrays, meta):
        arrays["model.0.bias"] = bad

    # the whole trainer state kept: the scheduler's epoch and the lr too
    _refused_edit(_saved_sgd_run(tmp_path), tmp_path / "bad.npz", set_bias,
                  r"bad.npz.*0.bias: model float32, checkpoint " + str(bad.dtype),
                  lambda: [EarlyStopping(monitor="val_loss", patience=9)])
    with pytest.raises(CheckpointError, match=r"0.bias: model float32, checkpoint " + str(bad.dtype)):
        checkpoint.load_model(tmp_path / "bad.npz", mlp())


def test_a_checkpoint_saved_in_the_middle_of_an_epoch_says_it_is_not_an_exact_resume(tmp_path):
    x, y = blobs(70, seed=1)

    class StopMidEpoch(Callback):
        def on_batch_end(self, trainer):
            if trainer.iteration == 7:                       # epoch 2 of 5 batches: its second batch
                trainer.stop("enough")

    trainer = _trainer("sgd", callbacks=[StopMidEpoch()])
    trainer.fit(x, y, epochs=3, batch_size=16)
    assert trainer.epoch == 1 and trainer.iteration == 7
    with pytest.warns(UserWarning, match=r"in the middle of epoch 2 \(2 of its iterations done\)"):
        trainer.save_checkpoint(tmp_path / "mid.npz")
    with pytest.warns(UserWarning, match="in the middle of epoch 2"):              # still so once loaded again
        _trainer("sgd").load_checkpoint(tmp_path / "mid.npz").save_checkpoint(tmp_path / "mid2.npz")
    finished = _trainer("sgd")
    finished.fit(x, y, epochs=1, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finished.save_checkpoint(tmp_path / "end.npz")       # at an epoch's end: no warning
        _trainer("sgd").load_checkpoint(tmp_path / "end.npz").save_checkpoint(tmp_path / "again.npz")
        loaded = _trainer("sgd")
        checkpoint.load_trainer(tmp_path / "end.npz", loaded)               # the module's function, too
        loaded.save_checkpoint(tmp_path / "again2.npz")


@pytest.mark.parametrize("saver_first", [True, False], ids=["saver-before-early-stopping", "saver-after"])
def test_a_checkpoint_saved_from_on_epoch_end_resumes_exactly_whatever_the_callback_order(tmp_path, saver_first,
                                                                                          monkeypatch):
    """Saved by a callback before EarlyStopping, the file held EarlyStopping's state from before it counted the
    epoch: the resumed run trained 10 epochs where the uninterrupted one stopped after 6, with other weights."""
    x, y = blobs(70, seed=1)
    val = blobs(30, seed=2)
    path = tmp_path / "at2.npz"

    class Saver(Callback):
        def on_epoch_end(self, trainer):
            if trainer.epoch == 2:
                trainer.save_checkpoint(path)
                assert path.exists()                     # written at once, and again once every callback has run

    def run(load=False):
        stopper = EarlyStopping(monitor="train_loss", mode="max", patience=2)      # best epoch 1: stops after 3
        callbacks = [Saver(), stopper] if saver_first else [stopper, Saver()]
        cynet.manual_seed(5)
        trainer = _trainer("sgd", callbacks=callbacks)
        if load:
            trainer.load_checkpoint(path)
        trainer.fit(x, y, epochs=6, batch_size=16, validation=val)
        return trainer, stopper

    writes, real_save = [], checkpoint.save_trainer
    monkeypatch.setattr(checkpoint, "save_trainer", lambda *a, **k: (writes.append(1), real_save(*a, **k))[1])
    straight, stopper = run()
    assert path.exists() and straight.epoch == 3 and "early stopping" in straight.stop_reason
    assert len(writes) == (2 if saver_first else 1)      # written again only when a callback ran after the save
    resumed, resumed_stopper = run(load=True)
    assert resumed.epoch == straight.epoch and resumed.stop_reason == straight.stop_reason
    assert (resumed_stopper.best_epoch, resumed_stopper.wait) == (stopper.best_epoch, stopper.wait)
    assert_same_weights(resumed.model, straight.model.state_dict())


def test_an_archive_whose_members_are_not_npy_arrays_is_not_a_checkpoint(tmp_path):
    # np.load hands back the raw bytes of such members: they reached the model loader as bytes (AttributeError)
    import zipfile
    path = tmp_path / "raw.npz"
    header = io.BytesIO()
    np.save(header, np.array(json.dumps({"format": checkpoint.FORMAT, "format_version": 1, "kind": "model"})))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__meta__.npy", header.getvalue())
        archive.writestr("model.weight", b"garbage bytes")
    with pytest.raises(CheckpointError, match=r"raw.npz.*members \['model.weight'\] are not .npy arrays"):
        checkpoint.load(path)


def test_early_stopping_on_a_number_that_is_never_finite_says_so(tmp_path):
    # val_acc of a regression loss is NaN every epoch: the stop message formatted best=None and raised TypeError
    from cynet.nn.loss import MSELoss
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)).astype(np.float32), rng.standard_normal((12, 2)).astype(np.float32)
    model = nn.Linear(3, 2, generator=0)
    stopper = EarlyStopping(monitor="val_acc", patience=2)
    trainer = Trainer(model, MSELoss(), optim.SGD(model.parameters(), lr=0.01), callbacks=[stopper], progress=False)
    trainer.fit(x, y, epochs=5, batch_size=4, validation=(x, y))
    assert trainer.epoch == 2 and stopper.best is None
    assert "val_acc has had no finite value in 2 epochs" in trainer.stop_reason


# load_model(model, path) and save_model(model, path) (the arguments swapped) failed with Python's bare "expected str,
# bytes or os.PathLike object, not Sequential" / "'str' object has no attribute 'state_dict'".
def test_swapped_path_and_model_are_refused_naming_the_argument_order(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    path = str(tmp_path / "m.npz")
    checkpoint.save_model(path, model)
    for call in (checkpoint.load_model, checkpoint.save_model):
        with pytest.raises(TypeError, match=r"^checkpoint: path must be a str or os.PathLike, got Sequential; the "
                                            r"calls take the path first: save_model\(path, model\)"):
            call(model, path)


def test_a_fit_after_a_checkpoint_of_a_run_early_stopping_ended_warns_that_it_trains_past_the_stop(tmp_path):
    """The uninterrupted run stopped after epoch 2 (EarlyStopping, patience 1); fit(epochs=2), saved and resumed with
    fit(epochs=6) silently trained on for epoch 3 (5 more steps: the weights training reached differ by up to 0.071,
    the history has 15 iterations for 10): the checkpoint held the stop_reason but the resumed fit dropped it. The
    run is over; a fit after it now says that it trains past the stop."""
    x, y = blobs(70, seed=1)
    val = blobs(30, seed=2)

    def trainer():
        stopper = EarlyStopping(monitor="train_loss", mode="max", patience=1)    # best epoch 1: stops after 2
        return _trainer("sgd", callbacks=[stopper])

    cynet.manual_seed(5)
    straight = trainer()
    straight.fit(x, y, epochs=6, batch_size=16, validation=val)
    assert straight.epoch == 2 and "early stopping" in straight.stop_reason

    cynet.manual_seed(5)
    first = trainer()
    first.fit(x, y, epochs=2, batch_size=16, validation=val)
    assert first.stop_reason == straight.stop_reason
    first.save_checkpoint(tmp_path / "stopped.npz")
    resumed = trainer().load_checkpoint(tmp_path / "stopped.npz")
    assert resumed.stop_reason == straight.stop_reason
    assert_same_weights(resumed.model, straight.model)          # the checkpoint holds the finished run
    with pytest.warns(UserWarning, match=r"stopped at the end of epoch 2 \(early stopping.*trains on past that "
                                         r"stop to epoch 6"):
        resumed.fit(x, y, epochs=6, batch_size=16, validation=val)
    assert resumed.epoch > 2                                     # as documented: it trains on
    with warnings.catch_warnings():                              # once, at the first fit after the load
        warnings.simplefilter("error")
        resumed.fit(x, y, epochs=resumed.epoch + 1, batch_size=16, validation=val)
        # the live trainer fit again after its own early stop: a deliberate continuation, no warning
        straight.fit(x, y, epochs=6, batch_size=16, validation=val)
    assert straight.epoch > 2

    # a run interrupted (not stopped) at an epoch's end resumes without the warning, exactly
    class Interrupt(Exception):
        pass

    class InterruptAtEpoch2(Callback):
        def on_epoch_begin(self, trainer):
            if trainer.epoch == 2:
                raise Interrupt

    cynet.manual_seed(5)
    straight = _trainer("sgd")
    straight.fit(x, y, epochs=4, batch_size=16, validation=val)
    cynet.manual_seed(5)
    interrupted = _trainer("sgd", callbacks=[InterruptAtEpoch2()])
    with pytest.raises(Interrupt):
        interrupted.fit(x, y, epochs=4, batch_size=16, validation=val)
    interrupted.save_checkpoint(tmp_path / "interrupted.npz")
    resumed = _trainer("sgd").load_checkpoint(tmp_path / "interrupted.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit(x, y, epochs=4, batch_size=16, validation=val)
    assert_same_weights(resumed.model, straight.model)


@pytest.mark.parametrize("change, message", [({"batch_size": 32}, "batch_size 16 -> 32"),
                                             ({"shuffle": False}, "shuffle True -> False"),
                                             ({"examples": 50}, "examples 70 -> 50")])
def test_a_resume_with_another_batch_size_or_data_warns_that_it_is_not_exact(tmp_path, change, message):
    """fit(epochs=2, batch_size=16), saved, then resumed with batch_size=32 (or shuffle=False, or 50 examples for 70)
    went on without a word, to other weights than the uninterrupted run's; it now warns, naming what changed. The
    same settings resume silently and exactly."""
    x, y = blobs(70, seed=1)
    val = blobs(30, seed=2)
    cynet.manual_seed(5)
    first = _trainer("sgd")
    first.fit(x, y, epochs=2, batch_size=16, validation=val)
    first.save_checkpoint(tmp_path / "run.npz")
    cynet.manual_seed(5)
    straight = _trainer("sgd")
    straight.fit(x, y, epochs=4, batch_size=16, validation=val)

    n = change.get("examples", 70)
    settings = {"batch_size": change.get("batch_size", 16), "shuffle": change.get("shuffle", True)}
    other = _trainer("sgd").load_checkpoint(tmp_path / "run.npz")
    with pytest.warns(UserWarning, match=rf"resumed from a checkpoint with other data or settings .*\({message}\)"):
        other.fit(x[:n], y[:n], epochs=4, validation=val, **settings)
    assert not np.array_equal(other.model[0].weight.data, straight.model[0].weight.data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.fit(x, y, epochs=5, batch_size=8, validation=val)      # this trainer's own choice: no warning
        same = _trainer("sgd").load_checkpoint(tmp_path / "run.npz")
        same.fit(x, y, epochs=4, batch_size=16, validation=val)
    assert_same_weights(same.model, straight.model)


def test_load_of_a_directory_raises_the_documented_is_a_directory_error(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        checkpoint.load(tmp_path)
