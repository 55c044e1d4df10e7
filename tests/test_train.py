"""The trainer and checkpoints: learning on real MNIST, reproducibility (same seed -> same run; resumed
run == uninterrupted run), atomic checkpoint writes, and a CheckpointError for every kind of bad file.

Most tests use a small synthetic MNIST-like data set (no files needed); the one real run uses the MNIST
verified copy (conftest's mnist_dir: $CYCONV_DATA, else ../shared/data/mnist) and fails without it.
Nothing downloads.
"""

import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import cyconv
import cyconv.train as train_module
from cyconv.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from cyconv.data import MNIST, load_mnist
from cyconv.optim import cosine_lr
from cyconv.train import (
    CHECKPOINT_NAME, METRICS_NAME, TrainConfig, TrainingInterrupted, confusion_matrix, predict_logits, train,
)

# Fields of the per-epoch metrics that measure time, not the computation.
TIMING = {"epoch_time_s", "images_per_s", "eval_time_s"}
METRIC_KEYS = {"epoch", "train_loss", "train_acc", "test_acc", "epoch_time_s", "images_per_s", "lr"}

SMALL_MLP = dict(model="mlp", hidden=16, batch_size=32, lr=0.05)
SMALL_LENET = dict(model="lenet5", batch_size=32, lr=0.02)


def synthetic_mnist(n_train=256, n_test=64, seed=0):
    """An MNIST-shaped uint8 data set a network can learn: digit k lights up the k-th 5-pixel band."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            row = 2 + 2 * int(k)
            images[i, row:row + 2, 4:24] = 255
        return images, labels

    return MNIST(*make(n_train), *make(n_test))


@pytest.fixture(scope="module")
def data():
    return synthetic_mnist()


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir)


@pytest.fixture(autouse=True)
def one_thread():
    # Results are tested for a fixed thread count; one thread keeps these short runs quick on a shared machine.
    with cyconv.set_num_threads(1):
        yield


def quiet(*args, **kwargs):
    pass


def run(config, data, **kwargs):
    return train(config, data, progress=False, log=quiet, **kwargs)


def without_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def interrupt_at_epoch(monkeypatch, stop_epoch):
    """Make train() see a Ctrl-C when the 0-based epoch `stop_epoch` starts."""
    real = train_module.train_epoch

    def fake(model, optimizer, x, y, config, epoch, *args):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real(model, optimizer, x, y, config, epoch, *args)

    monkeypatch.setattr(train_module, "train_epoch", fake)


# ---------------------------------------------------------------------------------------------------------
# Learning


def test_lenet5_learns_mnist_in_100_steps(mnist, tmp_path):
    # 100 steps of batch 64; PyTorch reaches ~94-95% on the full test set after as many.
    config = TrainConfig(model="lenet5", epochs=1, batch_size=64, lr=0.05, limit=6400, seed=0)
    result = run(config, mnist, out_dir=tmp_path)
    m = result.metrics[0]
    assert m["test_acc"] > 0.90, m
    assert m["train_loss"] < 1.0, m
    # The checkpoint holds the trained model.
    model, ckpt = load_model(tmp_path / CHECKPOINT_NAME)
    x = cyconv.data.to_float32(mnist.test_images[:500])
    np.testing.assert_array_equal(predict_logits(model, x), predict_logits(result.model.eval(), x))


def test_synthetic_data_is_learnable(data):
    result = run(TrainConfig(**SMALL_MLP, epochs=3), data)
    assert result.metrics[-1]["test_acc"] > 0.9
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]


# ---------------------------------------------------------------------------------------------------------
# Reproducibility


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("arch", [SMALL_MLP, SMALL_LENET], ids=["mlp", "lenet5"])
def test_same_seed_gives_the_same_run(data, arch, threads):
    n = 128 if arch["model"] == "mlp" else 64  # LeNet-5 with 2 threads is slow on a loaded machine
    small = MNIST(data.train_images[:n], data.train_labels[:n], data.test_images, data.test_labels)
    config = TrainConfig(**arch, epochs=2, seed=3)
    with cyconv.set_num_threads(threads):
        a, b = run(config, small), run(config, small)
    assert without_timing(a.metrics) == without_timing(b.metrics)
    assert_same_state(a.model, b.model)


def test_different_seed_gives_a_different_run(data):
    a = run(TrainConfig(**SMALL_MLP, epochs=1, seed=0), data)
    b = run(TrainConfig(**SMALL_MLP, epochs=1, seed=1), data)
    assert a.metrics[0]["train_loss"] != b.metrics[0]["train_loss"]


SMALL_LENET_ADAM = dict(model="lenet5", batch_size=32, optimizer="adam")
SMALL_MLP_ADAMW = dict(model="mlp", hidden=16, batch_size=32, optimizer="adamw", lr=3e-3)


@pytest.mark.parametrize("arch", [SMALL_MLP, SMALL_LENET, SMALL_LENET_ADAM, SMALL_MLP_ADAMW],
                         ids=["mlp", "lenet5", "lenet5-adam", "mlp-adamw"])
def test_resumed_run_equals_uninterrupted_run(data, tmp_path, monkeypatch, arch):
    small = MNIST(data.train_images[:200], data.train_labels[:200], data.test_images, data.test_labels)
    config = TrainConfig(**arch, epochs=2, weight_decay=5e-4, seed=7)
    whole = run(config, small, out_dir=tmp_path / "whole")

    with monkeypatch.context() as m:
        interrupt_at_epoch(m, 1)
        with pytest.raises(TrainingInterrupted) as stopped:
            run(config, small, out_dir=tmp_path / "split")
    assert stopped.value.checkpoint == tmp_path / "split" / CHECKPOINT_NAME
    assert stopped.value.epochs_done == 1
    assert load_checkpoint(stopped.value.checkpoint).epoch == 1

    resumed = run(config, small, out_dir=tmp_path / "split", resume=True)
    assert_same_state(resumed.model, whole.model)
    for key, value in whole.optimizer.state_dict().items():
        np.testing.assert_array_equal(resumed.optimizer.state_dict()[key], value, err_msg=key)
    assert without_timing(resumed.metrics) == without_timing(whole.metrics)
    saved = json.loads((tmp_path / "split" / METRICS_NAME).read_text())
    assert without_timing(saved) == without_timing(whole.metrics)


@pytest.mark.parametrize("name, cls, lr", [("sgd", "SGD", 0.04), ("adam", "Adam", 1e-3), ("adamw", "AdamW", 1e-3)])
def test_the_optimizer_is_the_configs_with_its_default_lr(data, name, cls, lr):
    config = TrainConfig(**{**SMALL_MLP, "lr": None}, epochs=1, optimizer=name)
    assert config.lr == lr and config.to_dict()["lr"] == lr  # the number is what a checkpoint records
    result = run(config, data)
    assert type(result.optimizer).__name__ == cls
    assert result.optimizer.lr == cosine_lr(7, 8, lr)  # the schedule runs from the optimizer's lr: 8 steps of 32
    assert result.metrics[0]["test_acc"] > 0.5  # it learned: 10 classes, chance is 0.1


def test_a_checkpoint_without_an_optimizer_field_was_sgd():
    old = TrainConfig().to_dict()
    del old["optimizer"]
    assert TrainConfig.from_dict(old).optimizer == "sgd"
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam, adamw, got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")


def test_resume_refuses_another_optimizer(data, tmp_path):
    run(TrainConfig(**SMALL_MLP, epochs=1), data, out_dir=tmp_path)
    with pytest.raises(ValueError, match="optimizer 'sgd' -> 'adam'"):
        run(TrainConfig(**SMALL_MLP, epochs=2, optimizer="adam"), data, out_dir=tmp_path, resume=True)


def test_interrupt_before_first_checkpoint_names_none(data, tmp_path, monkeypatch):
    interrupt_at_epoch(monkeypatch, 0)
    with pytest.raises(TrainingInterrupted) as stopped:
        run(TrainConfig(**SMALL_MLP, epochs=2), data, out_dir=tmp_path)
    assert stopped.value.checkpoint is None and stopped.value.epochs_done == 0
    assert isinstance(stopped.value, KeyboardInterrupt)


def test_resume_refuses_other_settings(data, tmp_path):
    run(TrainConfig(**SMALL_MLP, epochs=1), data, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lr 0\.05 -> 0\.1"):
        run(TrainConfig(**{**SMALL_MLP, "lr": 0.1}, epochs=1), data, out_dir=tmp_path, resume=True)
    fewer = MNIST(data.train_images[:100], data.train_labels[:100], data.test_images, data.test_labels)
    with pytest.raises(ValueError, match="trained on 256 images, this run has 100"):
        run(TrainConfig(**SMALL_MLP, epochs=1), fewer, out_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_fails(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run(TrainConfig(**SMALL_MLP), data, out_dir=tmp_path, resume=True)


def test_resume_of_a_finished_run_does_nothing(data, tmp_path):
    config = TrainConfig(**SMALL_MLP, epochs=1)
    first = run(config, data, out_dir=tmp_path)
    lines = []
    again = train(config, data, out_dir=tmp_path, resume=True, progress=False, log=lines.append)
    assert "nothing to do" in lines[0]
    assert_same_state(again.model, first.model)
    assert again.metrics == first.metrics


# ---------------------------------------------------------------------------------------------------------
# Loop details


def test_metrics_file_and_epoch_lines(data, tmp_path):
    lines = []
    result = train(TrainConfig(**SMALL_MLP, epochs=2), data, out_dir=tmp_path, progress=False, log=lines.append)
    saved = json.loads((tmp_path / METRICS_NAME).read_text())
    assert saved == result.metrics
    assert [m["epoch"] for m in saved] == [1, 2]
    assert all(METRIC_KEYS <= m.keys() for m in saved)
    assert all(0 <= m["train_acc"] <= 1 and 0 <= m["test_acc"] <= 1 for m in saved)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert epoch_lines[1].startswith("epoch 2/2  train loss ") and "test acc " in epoch_lines[1]
    assert epoch_lines[1].endswith(" img/s")
    assert not list(tmp_path.glob(".*.tmp")), "temp files left behind"


def test_a_run_removes_the_temp_files_of_killed_writers(data, tmp_path):
    """A writer killed mid-write (SIGKILL) leaves its temp file; the next run in that directory removes
    the checkpoint's and the metrics' ones whose writer is gone, and nothing else."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead = int(ended.stdout)
    stale = [f".{CHECKPOINT_NAME}.{dead}.k3l_9qz2.tmp", f".{METRICS_NAME}.{dead}.a8b0xw1d.tmp"]
    kept = [
        f".{CHECKPOINT_NAME}.{os.getpid()}.live0001.tmp",  # a write in progress (this process is alive)
        f".other.npz.{dead}.k3l_9qz2.tmp",  # not a file cyconv writes here
        f"{CHECKPOINT_NAME}.{dead}.k3l_9qz2.tmp",  # no leading dot: not atomic_write's
        f".{CHECKPOINT_NAME}.k3l_9qz2.tmp",  # no PID: whose it is cannot be told
        "notes.txt",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    run(TrainConfig(**SMALL_MLP, epochs=1), data, out_dir=tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [CHECKPOINT_NAME, METRICS_NAME])
    assert all((tmp_path / name).read_bytes() == b"partial" for name in kept)


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_learning_rate_follows_the_schedule_over_the_whole_run(data, schedule):
    config = TrainConfig(**SMALL_MLP, epochs=2, schedule=schedule, gamma=0.5)
    result = run(config, data)
    steps = -(-len(data.train_labels) // config.batch_size)
    expected = {
        "cosine": [cosine_lr(steps - 1, 2 * steps, config.lr), cosine_lr(2 * steps - 1, 2 * steps, config.lr)],
        "step": [config.lr, config.lr * 0.5],
        "constant": [config.lr, config.lr],
    }[schedule]
    assert [m["lr"] for m in result.metrics] == pytest.approx(expected, rel=1e-12)
    assert result.optimizer.lr == pytest.approx(expected[-1], rel=1e-12)


def test_progress_bar_goes_to_stderr(data, capsys):
    train(TrainConfig(**SMALL_MLP, epochs=1), data, progress=True, log=print)
    out, err = capsys.readouterr()
    assert "epoch 1/1:" in err and "img/s" in err  # the postfix (loss, acc) may not get drawn in 10 ms
    assert out.startswith("training mlp on 256 images") and "epoch 1/1" in out


def test_last_partial_batch_is_kept(data):
    result = run(TrainConfig(**{**SMALL_MLP, "batch_size": 100}, epochs=1), data)  # 256 = 100 + 100 + 56
    assert result.metrics[0]["steps"] == 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_stops_with_a_clear_error(data):
    with pytest.raises(FloatingPointError, match="loss became .* try a lower lr"):
        run(TrainConfig(**{**SMALL_MLP, "lr": 1e6, "momentum": 0.0}, epochs=1), data)


@pytest.mark.parametrize("field, value", [
    ("model", "resnet"), ("epochs", 0), ("batch_size", 0), ("batch_size", 2.0), ("lr", 0.0), ("lr", np.nan),
    ("momentum", 1.0), ("weight_decay", -1e-4), ("schedule", "linear"), ("seed", -1), ("limit", 0),
    ("hidden", 0), ("gamma", 0.0), ("step_size", 0), ("epochs", True),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig: {field} must be"):
        TrainConfig(**{field: value})


def test_config_rejects_warmup_without_cosine():
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(schedule="step", warmup_steps=10)


def test_limit_larger_than_the_data_is_an_error(data):
    with pytest.raises(ValueError, match="limit 1000 is more than the 256 training images"):
        run(TrainConfig(**SMALL_MLP, limit=1000), data)


def test_confusion_matrix():
    counts = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), num_classes=3)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


@pytest.mark.parametrize("argument, labels, predictions, bad", [
    ("labels", [0, -1, 2, -1], [0, 1, 2, 2], "[-1]"),  # NumPy's negative indexing counted it as class 2
    ("labels", [0, 7, 2, 3], [0, 1, 2, 2], "[3, 7]"),
    ("predictions", [0, 1, 2, 2], [0, 5, -2, 2], "[-2, 5]"),
])
def test_confusion_matrix_refuses_classes_out_of_range(argument, labels, predictions, bad):
    for dtype in (np.int64, np.int8):
        with pytest.raises(ValueError, match=rf"confusion_matrix\(\): {argument} must be in \[0, 3\), "
                                             rf"got {re.escape(bad)}"):
            confusion_matrix(np.array(labels, dtype), np.array(predictions, dtype), num_classes=3)


def test_confusion_matrix_refuses_other_dtypes_and_class_counts():
    with pytest.raises(TypeError, match=r"confusion_matrix\(\): labels must be integers, got float64"):
        confusion_matrix(np.array([0.0, 1.5]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match=r"confusion_matrix\(\): num_classes must be an int >= 1, got 0"):
        confusion_matrix(np.array([0]), np.array([0]), num_classes=0)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A one-epoch mlp run and its checkpoint file."""
    out = tmp_path_factory.mktemp("run")
    with cyconv.set_num_threads(1):
        result = run(TrainConfig(**SMALL_MLP, epochs=1), data, out_dir=out)
    return result, out / CHECKPOINT_NAME


def test_checkpoint_round_trip(trained, data):
    result, path = trained
    ckpt = load_checkpoint(path)
    assert (ckpt.model_name, ckpt.epoch) == ("mlp", 1)
    assert TrainConfig.from_dict(ckpt.config) == TrainConfig(**SMALL_MLP, epochs=1)
    assert ckpt.metrics == result.metrics
    assert ckpt.info["n_train"] == 256
    model, _ = load_model(path)
    assert_same_state(model, result.model)
    # numbers and strings only: the file opens with allow_pickle=False and holds no object arrays
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[k].dtype.kind in "biufU" for k in npz.files)


def test_failed_write_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    result, original = trained
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(original.read_bytes())

    def savez_then_crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr("cyconv.checkpoint.np.savez", savez_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=result.model, optimizer=result.optimizer, model_name="mlp", epoch=2,
                        config=TrainConfig(**SMALL_MLP).to_dict(), metrics=[])
    assert path.read_bytes() == original.read_bytes()
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME], "the temp file was not removed"
    assert load_checkpoint(path).epoch == 1


def rewrite(source, target, change):
    """Copy the checkpoint `source` to `target` after change(arrays) edits its dict of arrays."""
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(target, "wb") as f:
        np.savez(f, **arrays)  # np.savez pickles object arrays, as an attacker's file would


def corrupt_truncated(src, dst):
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def corrupt_random_bytes(src, dst):
    dst.write_bytes(np.random.default_rng(0).bytes(4096))


def corrupt_empty(src, dst):
    dst.write_bytes(b"")


def corrupt_npy_not_npz(src, dst):
    with open(dst, "wb") as f:
        np.save(f, np.zeros(3))


def corrupt_flipped_byte(src, dst):
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the weights: the zip CRC catches it
    dst.write_bytes(bytes(raw))


def corrupt_pickled_object_array(src, dst):
    rewrite(src, dst, lambda a: a.update({"model/1.weight": np.array([{"evil": 1}], dtype=object)}))


def corrupt_pickled_metadata(src, dst):
    rewrite(src, dst, lambda a: a.update({"config": np.array([None], dtype=object)}))


def corrupt_missing_key(src, dst):
    rewrite(src, dst, lambda a: a.pop("epoch"))


def corrupt_missing_weight(src, dst):
    rewrite(src, dst, lambda a: a.pop("model/1.weight"))


def corrupt_wrong_shape(src, dst):
    rewrite(src, dst, lambda a: a.update({"model/1.weight": np.zeros((3, 3), np.float32)}))


def corrupt_wrong_dtype(src, dst):
    rewrite(src, dst, lambda a: a.update({"model/1.weight": a["model/1.weight"].astype(np.float64)}))


def corrupt_unknown_model(src, dst):
    rewrite(src, dst, lambda a: a.update({"model_name": np.array("resnet50")}))


def corrupt_model_type_mismatch(src, dst):
    # Says lenet5 everywhere, holds an mlp's weights.
    def change(a):
        config = json.loads(str(a["config"]))
        a.update(model_name=np.array("lenet5"), config=np.array(json.dumps({**config, "model": "lenet5"})))
    rewrite(src, dst, change)


def corrupt_bad_json(src, dst):
    rewrite(src, dst, lambda a: a.update({"metrics": np.array("[{")}))


def corrupt_format_version(src, dst):
    rewrite(src, dst, lambda a: a.update({"format": np.array(99)}))


def corrupt_epoch_not_int(src, dst):
    rewrite(src, dst, lambda a: a.update({"epoch": np.array([1.5])}))


CORRUPTIONS = [
    corrupt_truncated, corrupt_random_bytes, corrupt_empty, corrupt_npy_not_npz, corrupt_flipped_byte,
    corrupt_pickled_object_array, corrupt_pickled_metadata, corrupt_missing_key, corrupt_missing_weight,
    corrupt_wrong_shape, corrupt_wrong_dtype, corrupt_unknown_model, corrupt_model_type_mismatch,
    corrupt_bad_json, corrupt_format_version, corrupt_epoch_not_int,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.removeprefix("corrupt_"))
def test_bad_checkpoint_raises_checkpoint_error(trained, tmp_path, corrupt):
    _, original = trained
    path = tmp_path / "bad.npz"
    corrupt(original, path)
    with pytest.raises(CheckpointError, match="bad.npz"):
        load_model(path)


def test_flipped_byte_test_really_hits_an_array(trained, tmp_path):
    # Guard the corruption itself: it must land inside a member's data, not in zip padding.
    _, original = trained
    corrupt_flipped_byte(original, tmp_path / "bad.npz")
    with zipfile.ZipFile(tmp_path / "bad.npz") as z:
        assert z.testzip() is not None


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.npz")


def test_resume_from_a_corrupt_checkpoint_fails_cleanly(data, tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=CHECKPOINT_NAME):
        run(TrainConfig(**SMALL_MLP), data, out_dir=tmp_path, resume=True)
