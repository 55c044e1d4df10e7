"""Where the tests find MNIST: where cyconv itself looks ($CYCONV_DATA, its default data directory),
with the copy beside the checkout second; a clear one-line failure naming every place tried."""

import pytest

from conftest import locate_mnist

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def linked_copy(mnist_dir, target):
    """A directory of links to the verified files (no copy of the data)."""
    target.mkdir(parents=True)
    for name in NAMES:
        source = next(p for p in (mnist_dir / name, mnist_dir / f"{name}.gz") if p.is_file())
        (target / source.name).symlink_to(source)
    return target


def test_first_verified_candidate_wins(mnist_dir, tmp_path):
    good = linked_copy(mnist_dir, tmp_path / "good")
    also_good = linked_copy(mnist_dir, tmp_path / "also")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert locate_mnist([(None, "$CYCONV_DATA"), (empty, "shared"), (good, "default")]) == good
    assert locate_mnist([(also_good, "$CYCONV_DATA"), (good, "shared")]) == also_good


def test_a_corrupt_copy_is_skipped(mnist_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in NAMES:
        (bad / name).write_bytes(b"\x00\x00\x08\x01" + bytes(100))  # right magic, wrong everything else
    good = linked_copy(mnist_dir, tmp_path / "good")
    assert locate_mnist([(bad, "$CYCONV_DATA"), (good, "default")]) == good


def test_nothing_found_is_one_line_naming_every_place_and_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LookupError) as info:
        locate_mnist([(None, "$CYCONV_DATA"), (empty, "../shared/data/mnist beside the checkout"),
                      (tmp_path / "nowhere", "cyconv's default data directory")])
    message = str(info.value)
    assert "\n" not in message
    assert "$CYCONV_DATA (unset)" in message
    assert f"{empty} (../shared/data/mnist beside the checkout: files missing)" in message
    assert f"{tmp_path / 'nowhere'} (cyconv's default data directory: files missing)" in message
    assert "cyconv download" in message
