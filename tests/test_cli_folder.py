"""`cyconv train / evaluate / predict / export` on an image folder: a tiny make_shapes folder (48 pictures of
16x16, a few epochs), so that every run takes well under a second.

What is checked: the checkpoint records what evaluation and prediction need (classes, size, channels,
split, the training split's normalisation); evaluate reproduces the test accuracy training measured, on
the same split; predict classifies a picture as the model does in Python; --resume ends with the weights
of a run that never stopped; --augment changes training and is reproducible; every misuse is one line.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import cyconv.train as train_module
from cyconv.checkpoint import load_checkpoint, load_model
from cyconv.data import SHAPES, ImageFolder, channel_stats, make_shapes, normalize, read_image
from cyconv.train import CHECKPOINT_NAME, FOLDER_RECIPE, METRICS_NAME, TrainConfig, train
from cli_helpers import assert_error, continue_command, ctrl_c_in_the_second_epoch, run, run_captured
from cli_helpers import no_download  # noqa: F401 (autouse)

SIZE = 16
RUN = ["--image-size", SIZE, "--epochs", 3, "--batch-size", 16, "--no-progress", "--threads", 1]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return make_shapes(48, size=SIZE, seed=3).save(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory):
    """`cyconv train --data-dir shapes` (small_cnn by default): (out dir, stdout)."""
    out = tmp_path_factory.mktemp("run")
    status, stdout, stderr = run_captured("train", "--data-dir", shapes_dir, "--out", out, *RUN)
    assert status == 0, stderr
    return out, stdout


def test_train_records_what_evaluation_and_prediction_need(trained, shapes_dir):
    out, stdout = trained
    lines = stdout.splitlines()
    assert lines[0].startswith(f"training small_cnn on 40 images of 3x{SIZE}x{SIZE} in 4 classes (3 steps/epoch, "
                               "batch 16), testing on 8; 1 thread")
    assert [line.split("  ")[0] for line in lines[1:4]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    spec = ckpt.data
    assert ckpt.model_name == "small_cnn" and ckpt.epoch == 3
    # The folder recipe where the command line is silent, what it says where it speaks.
    assert {k: ckpt.config[k] for k in FOLDER_RECIPE} == {**FOLDER_RECIPE, "epochs": 3}
    assert spec.root == str(shapes_dir.resolve()) and spec.classes == SHAPES
    assert spec.size == (SIZE, SIZE) and spec.channels == 3 and spec.test_fraction == 0.2 and spec.seed == 0
    expected = ImageFolder(shapes_dir, size=SIZE).split(0.2, 0)
    assert (spec.mean, spec.std) == channel_stats(expected.train_images)
    model, _ = load_model(ckpt)
    assert model[-1].out_features == len(SHAPES)
    assert [m["epoch"] for m in json.loads((out / METRICS_NAME).read_text())] == [1, 2, 3]


def test_evaluate_reproduces_the_test_accuracy_of_training(capsys, trained, shapes_dir, tmp_path):
    out, _ = trained
    test_acc = json.loads((out / METRICS_NAME).read_text())[-1]["test_acc"]
    correct = round(test_acc * 8)  # round(0.2 * 12) = 2 of each class's 12
    # From the folder the checkpoint names, and from a copy of it elsewhere (--data-dir): the same split.
    moved = shutil.copytree(shapes_dir, tmp_path / "moved")
    for extra in ([], ["--data-dir", moved]):
        status, stdout, err = run(capsys, "evaluate", "--checkpoint", out / CHECKPOINT_NAME, *extra, "--threads", 1)
        assert status == 0 and err == "", err
        lines = stdout.splitlines()
        assert lines[1] == f"test accuracy {100 * correct / 8:.2f}% ({correct}/8)"
        header = lines.index("confusion matrix (rows: true class, columns: predicted class)")
        assert lines[header + 1].split() == ["true", *SHAPES, "recall"]
        rows = [line.split() for line in lines[header + 2:header + 6]]
        assert [row[0] for row in rows] == list(SHAPES)
        counts = np.array([[int(v) for v in row[1:5]] for row in rows])
        assert counts.sum(axis=1).tolist() == [2, 2, 2, 2] and np.trace(counts) == correct


def test_evaluate_warns_when_the_folder_has_changed_and_refuses_other_classes(capsys, trained, shapes_dir,
                                                                               tmp_path):
    out, _ = trained
    grown = shutil.copytree(shapes_dir, tmp_path / "grown")
    for i in range(10):
        shutil.copy(grown / "circle" / "circle_00.png", grown / "circle" / f"extra_{i}.png")
    status, stdout, err = run(capsys, "evaluate", "--checkpoint", out / CHECKPOINT_NAME, "--data-dir", grown)
    assert status == 0 and "test accuracy" in stdout
    assert err.startswith(f"cyconv: warning: {grown} has changed since training: its test split has 10 images, "
                          "the model was tested on 8; some of these may be images it was trained on\n")
    other = shutil.copytree(shapes_dir, tmp_path / "other")
    (other / "square").rename(other / "rectangle")
    assert_error(run(capsys, "evaluate", "--checkpoint", out / CHECKPOINT_NAME, "--data-dir", other), 1,
                 f"{other}: holds the classes ['circle', 'cross', 'rectangle', 'triangle'], the model was "
                 "trained on ['circle', 'cross', 'square', 'triangle']")


def test_predict_classifies_pictures_as_the_model_does(capsys, trained, shapes_dir, tmp_path):
    out, _ = trained
    # Pictures of any size: they are resized as the folder's were.
    pictures = [shapes_dir / "circle" / "circle_00.png", shapes_dir / "triangle" / "triangle_11.png"]
    big = tmp_path / "big.jpg"
    Image.open(pictures[0]).resize((50, 50)).save(big, quality=95)
    pictures.append(big)
    status, stdout, err = run(capsys, "predict", "--checkpoint", out / CHECKPOINT_NAME, *pictures)
    assert status == 0 and err == "", err
    model, ckpt = load_model(out / CHECKPOINT_NAME)
    x = normalize(np.stack([read_image(p, SIZE) for p in pictures]), ckpt.data.mean, ckpt.data.std)
    logits = model(x).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    lines = stdout.splitlines()
    assert lines[0].split() == ["image", "class", *SHAPES]
    for line, path, p in zip(lines[1:], pictures, probs):
        assert line.split() == [str(path), SHAPES[int(p.argmax())], *(f"{v:.4f}" for v in p)]


def test_resume_ends_with_the_weights_of_a_run_that_never_stopped(capsys, trained, shapes_dir, tmp_path):
    out = tmp_path / "run"
    with ctrl_c_in_the_second_epoch():
        status, _, err = run(capsys, "train", "--data-dir", shapes_dir, "--out", out, *RUN)
    assert status == 130
    command = continue_command(err)
    assert command == ["train", "--resume", "--out", str(out)]  # the folder is in the checkpoint
    wrong = ["train", "--resume", "--out", out, "--image-size", 8, "--no-progress"]
    assert_error(run(capsys, *wrong), 1, "it was trained on other data (size [16, 16] -> [8, 8];")
    status, stdout, err = run(capsys, *command, "--no-progress", "--threads", 1)
    assert status == 0, err
    assert "resuming after epoch 1" in stdout
    resumed = load_checkpoint(out / CHECKPOINT_NAME).model_state
    uninterrupted = load_checkpoint(trained[0] / CHECKPOINT_NAME).model_state
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


def test_augment_changes_training_and_is_reproducible(shapes_dir):
    split = ImageFolder(shapes_dir, size=SIZE).split()

    def weights(augment):
        config = TrainConfig(model="small_cnn", epochs=2, batch_size=16, augment=augment)
        result = train(config, split, progress=False, log=lambda line: None)
        return result.model.state_dict()["0.weight"]

    plain, augmented = weights(False), weights(True)
    np.testing.assert_array_equal(augmented, weights(True))
    assert not np.array_equal(plain, augmented)


def test_augment_flips_and_crops_each_image_as_drawn():
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 7)).astype(np.float32)
    out = train_module.augment(x, np.random.default_rng(9), padding=2)
    # The same draws, image by image.
    rng = np.random.default_rng(9)
    flip = rng.random(6) < 0.5
    dy, dx = rng.integers(0, 5, size=(2, 6))
    assert flip.any() and not flip.all()
    for i in range(6):
        padded = np.pad(x[i], ((0, 0), (2, 2), (2, 2)))
        if flip[i]:
            padded = padded[:, :, ::-1]
        np.testing.assert_array_equal(out[i], padded[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7])
    assert out.flags.c_contiguous and out.dtype == np.float32
    # Without padding, only the flips are left; the default padding is an eighth of the side.
    flipped = np.random.default_rng(1).random(6) < 0.5
    unpadded = train_module.augment(x, np.random.default_rng(1), padding=0)
    np.testing.assert_array_equal(unpadded, np.where(flipped[:, None, None, None], x[..., ::-1], x))
    assert train_module.augment(np.ones((3, 1, 64, 64), np.float32), np.random.default_rng(2)).min() == 0


def test_grey_run_and_export(capsys, shapes_dir, tmp_path):
    out = tmp_path / "grey"
    status, _, err = run(capsys, "train", "--data-dir", shapes_dir, "--channels", 1, "--no-augment", "--out", out,
                         *RUN[:2], "--epochs", 1, "--no-progress")
    assert status == 0, err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt.data.channels == 1 and ckpt.config["augment"] is False
    status, stdout, err = run(capsys, "predict", "--checkpoint", out / CHECKPOINT_NAME,
                              shapes_dir / "cross" / "cross_00.png")  # a colour picture, read as grey
    assert status == 0 and stdout.splitlines()[1].split()[1] in SHAPES, err
    onnx = pytest.importorskip("onnx")
    status, _, err = run(capsys, "export", "--checkpoint", out / CHECKPOINT_NAME, "--output", tmp_path / "m.onnx")
    assert status == 0, err
    dims = onnx.load(tmp_path / "m.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, SIZE, SIZE]
    assert_error(run(capsys, "evaluate", "--model", tmp_path / "m.onnx", "--data-dir", shapes_dir), 2,
                 "--data-dir is for a checkpoint trained on an image folder; an ONNX model records no classes")


# ---------------------------------------------------------------------------------------------------------
# Misuse: one line each


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 28, 28)).astype(np.uint8), rng.integers(0, 10, 64)
    out = tmp_path_factory.mktemp("mnist")
    train(TrainConfig(model="mlp", hidden=8, epochs=1), (images, labels, images[:8], labels[:8]), out_dir=out,
          progress=False, log=lambda line: None)
    return out / CHECKPOINT_NAME


@pytest.mark.parametrize("argv, match", [
    (["train", "--augment"], "train: --augment applies to image folders (--data-dir) only"),
    (["train", "--image-size", "32"], "train: --image-size applies to image folders (--data-dir) only"),
    (["train", "--test-fraction", "1"], "argument --test-fraction: must be in (0, 1)"),
    (["train", "--channels", "2"], "argument --channels: invalid choice: 2"),
    (["train", "--data", "x", "--data-dir", "y"], "--data is the MNIST directory, --data-dir an image folder"),
])
def test_usage_errors(capsys, argv, match):
    assert_error(run(capsys, *argv), 2, match)


def test_runtime_errors_name_the_problem(capsys, shapes_dir, tmp_path, trained, mnist_checkpoint):
    out, _ = trained
    folder = ["train", "--data-dir", shapes_dir, "--out", tmp_path / "r", "--no-progress", *RUN[:2]]
    assert_error(run(capsys, *folder[:-2], "--image-size", 2000), 1,
                 "ImageFolder: size must be between 1 and 1024 pixels a side, got 2000")
    assert_error(run(capsys, *folder, "--model", "lenet5"), 1,
                 f"lenet5 takes 1 x 28 x 28 images, got 3 x {SIZE} x {SIZE}")
    assert_error(run(capsys, *folder[:-2], "--image-size", 20), 1, "image_size must be a multiple of 8")
    assert_error(run(capsys, "train", "--data-dir", tmp_path / "nope"), 1, "no such directory")
    broken = shutil.copytree(shapes_dir, tmp_path / "broken")
    (broken / "cross" / "cross_03.png").write_bytes(b"")
    (broken / "square" / "x.jpg").write_text("text")
    assert_error(run(capsys, "train", "--data-dir", broken, "--out", tmp_path / "b"), 1,
                 f"{broken}: 2 problems: {broken / 'cross' / 'cross_03.png'}: not a PNG, JPEG or BMP image")
    assert_error(run(capsys, "predict", "--checkpoint", out / CHECKPOINT_NAME, "--raw", shapes_dir / "x.png"), 2,
                 "predict: --raw is for MNIST digits")
    assert_error(run(capsys, "predict", "--checkpoint", out / CHECKPOINT_NAME, tmp_path), 1,
                 f"{tmp_path}: is a directory, not an image")
    assert_error(run(capsys, "evaluate", "--checkpoint", out / CHECKPOINT_NAME, "--data", tmp_path), 2,
                 "was trained on an image folder, not MNIST")
    assert_error(run(capsys, "evaluate", "--checkpoint", mnist_checkpoint, "--data-dir", shapes_dir), 2,
                 "evaluate: --data-dir is for a checkpoint trained on an image folder")
    status, _, err = run(capsys, "train", "--resume", "--out", mnist_checkpoint.parent, "--data-dir", shapes_dir)
    assert_error((status, "", err), 1, "it was trained on MNIST, this run has an image folder")


def with_data(source, target, change):
    """A copy of checkpoint `source` at `target` whose 'data' record is change(record)."""
    with np.load(source, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["data"] = np.array(json.dumps(change(json.loads(str(arrays["data"])))))
    np.savez(target, **arrays)
    return target


def test_a_damaged_data_record_is_a_checkpoint_error(capsys, trained, tmp_path):
    source = trained[0] / CHECKPOINT_NAME
    bad = with_data(source, tmp_path / "bad.npz", lambda d: {**d, "std": [1.0, 0.0, 1.0]})
    assert_error(run(capsys, "evaluate", "--checkpoint", bad), 1,
                 f"{bad}: 'data' does not describe an image folder: FolderSpec: std must be 3 numbers > 0")
    # A record naming a million classes is refused before a model with a million outputs is built.
    many = with_data(source, tmp_path / "many.npz", lambda d: {**d, "classes": [f"c{i}" for i in range(10**6)]})
    assert_error(run(capsys, "predict", "--checkpoint", many, tmp_path), 1,
                 "'data' names 1000000 classes, but the saved weights hold only")
    # An MNIST checkpoint of before the record existed still loads as one.
    old = tmp_path / "old.npz"
    with np.load(source, allow_pickle=False) as npz:
        np.savez(old, **{key: npz[key] for key in npz.files if key != "data"})
    assert load_checkpoint(old).data is None
