"""Fuzzing the two file parsers: IDX files (cyconv.data) and checkpoints (cyconv.checkpoint).

Whatever bytes they are given, they must end in their own error (MNISTFormatError, CheckpointError, or
FileNotFoundError for a missing file): never another exception type, never a hang, and never memory out
of proportion to what the file really holds (a header that lies about its size must not make us allocate
what it claims). Inputs are small valid files, built here, then mutated: truncated, bit-flipped, bytes
inserted or deleted, header fields set to lying values, gzip streams and zip members tampered with.

tests/corpus/ keeps the nastiest inputs as regression files, each with the error it must give
(CORPUS below). `python tests/test_fuzz_files.py` rewrites them; every file is a few KB at most.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import pathlib
import signal
import struct
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyconv import models, optim
from cyconv.data import mnist as mnist_module
from cyconv.checkpoint import CheckpointError, load_model, restore, save_checkpoint
from cyconv.data import FILES, MNISTFormatError, load_mnist

CORPUS = Path(__file__).parent / "corpus"
# Fixed examples, so a failure reproduces; CYCONV_FUZZ_EXAMPLES=5000 explores further (minutes, not seconds).
FUZZ = settings(deadline=None, derandomize=True, database=None,
                max_examples=int(os.environ.get("CYCONV_FUZZ_EXAMPLES", 300)),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HANG_SECONDS = 10.0
SLACK = 4 << 20  # interpreter and numpy noise on top of the 10x-the-file budget
RUNS = {"calls": 0}  # how many inputs the parsers were given (printed at the end with -s)


@pytest.fixture(scope="module", autouse=True)
def count_runs():
    yield
    print(f"\ntest_fuzz_files: {RUNS['calls']} inputs parsed")


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no `except Exception` in the parser can swallow it."""


def _alarm(signum, frame):
    raise Hang


@contextlib.contextmanager
def bounded(label: str, size: int, slack: int = SLACK):
    """Fail if the block takes over HANG_SECONDS or its peak traced memory reaches 10x size + slack."""
    RUNS["calls"] += 1
    can_alarm = hasattr(signal, "setitimer")
    if can_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    tracemalloc.start()
    try:
        yield
    except Hang:
        pytest.fail(f"{label}: no answer after {HANG_SECONDS} s")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if can_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    assert peak < 10 * size + slack, f"{label}: {peak} bytes allocated for a {size}-byte file"


def expect_clean(call, allowed, label: str, size: int, slack: int = SLACK):
    """Run call(); success or one of the allowed errors is fine, anything else fails naming the input."""
    with bounded(label, size, slack):
        try:
            return call()
        except allowed as e:
            cause = e
            while cause is not None:  # a parser that tried to allocate too much and said "damaged" after
                assert not isinstance(cause, MemoryError), f"{label}: MemoryError behind {e!r}"
                cause = cause.__cause__ or cause.__context__
            return None
        except Exception as e:
            pytest.fail(f"{label}: {type(e).__name__} escaped: {e}")


# ---------------------------------------------------------------------------------------------------------
# Mutations, shared by both parsers

# Values that make a length field lie: zero, off by one around the real sizes, sign-bit and all-ones.
LYING_U32 = [0, 1, 4, 5, 6, 9, 27, 28, 29, 255, 256, 60000, 60001, 2**31 - 1, 2**31, 4_000_000_000,
             2**32 - 1]


@st.composite
def mutation(draw, length: int, hot: tuple[int, int] = (0, 16)):
    """One edit of a `length`-byte file, as (name, function). Positions favour the range `hot` (headers)."""
    position = st.one_of(st.integers(*hot), st.integers(0, max(length - 1, 0))).map(
        lambda i: min(i, max(length - 1, 0)))
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "set_u32", "set_u16", "byte",
                                 "append"]))
    if kind == "truncate":
        n = draw(st.integers(0, max(length - 1, 0)))
        return f"truncate to {n}", lambda b: b[:n]
    i = draw(position)
    if kind == "flip":
        bit = draw(st.integers(0, 7))
        return f"flip bit {bit} of byte {i}", lambda b: b[:i] + bytes([b[i] ^ (1 << bit)]) + b[i + 1:] if i < len(b) else b
    if kind == "insert":
        extra = draw(st.binary(min_size=1, max_size=16))
        return f"insert {extra!r} at {i}", lambda b: b[:i] + extra + b[i:]
    if kind == "delete":
        n = draw(st.integers(1, 16))
        return f"delete {n} bytes at {i}", lambda b: b[:i] + b[i + n:]
    if kind in ("set_u32", "set_u16"):
        width, fmt = (4, ">I") if kind == "set_u32" else (2, "<H")
        value = draw(st.sampled_from(LYING_U32)) % (1 << (8 * width))
        endian = draw(st.sampled_from(["<", ">"]))
        packed = struct.pack(endian + fmt[1], value)
        return f"{kind} {endian}{value} at {i}", lambda b: b[:i] + packed + b[i + width:]
    if kind == "byte":
        value = draw(st.integers(0, 255))
        return f"byte {value} at {i}", lambda b: b[:i] + bytes([value]) + b[i + 1:]
    extra = draw(st.one_of(st.binary(min_size=1, max_size=64), st.just(b"\0" * 100)))
    return f"append {extra[:16]!r}... ({len(extra)} bytes)", lambda b: b + extra


def mutate(draw, content: bytes, hot=(0, 16), max_edits: int = 3) -> tuple[bytes, list[str]]:
    names = []
    for _ in range(draw(st.integers(1, max_edits))):
        name, edit = draw(mutation(len(content), hot))
        content = edit(content)
        names.append(name)
    return content, names


# ---------------------------------------------------------------------------------------------------------
# IDX files

IMAGES = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
LABELS = np.array([3, 1, 4, 1, 5], np.uint8)
BASES = {FILES.train_images: mnist_module._idx_bytes(IMAGES), FILES.train_labels: mnist_module._idx_bytes(LABELS)}
IDX_ERRORS = (MNISTFormatError,)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("idx")


def read_idx(root: Path, name: str, content: bytes, gz: bool, label: str, verify_md5: bool = False):
    """mnist_module._read_idx on `content` written as name (or name.gz, already compressed), checked by expect_clean."""
    path = root / (name + ".gz" if gz else name)
    path.write_bytes(content)
    result = expect_clean(lambda: mnist_module._read_idx(path, name, verify_md5), IDX_ERRORS, label, len(content))
    path.unlink()
    if result is not None:  # whatever is accepted must be what the IDX rules allow
        assert result.dtype == np.uint8 and result.shape[1:] == ((28, 28) if "images" in name else ())
        assert "images" in name or not result.size or result.max() <= 9
    return result


@pytest.mark.parametrize("name", BASES)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_every_truncation(idx_dir, name, gz):
    whole = gzip.compress(BASES[name], mtime=0) if gz else BASES[name]
    np.testing.assert_array_equal(read_idx(idx_dir, name, whole, gz, "whole file"),
                                  IMAGES if "images" in name else LABELS)
    for n in range(len(whole)):
        assert read_idx(idx_dir, name, whole[:n], gz, f"{name} cut to {n} bytes") is None


@FUZZ
@given(name=st.sampled_from(list(BASES)), where=st.sampled_from(["raw", "gz-content", "gz-stream", "gz-both"]),
       verify_md5=st.booleans(), draw=st.data())
def test_idx_mutations(idx_dir, name, where, verify_md5, draw):
    content, edits = BASES[name], []
    if where in ("raw", "gz-content", "gz-both"):
        content, edits = mutate(draw.draw, content)
    if where != "raw":
        content = gzip.compress(content, mtime=0)
        if where != "gz-content":  # the gzip header is 10 bytes, its trailer (CRC, size) the last 8
            content, more = mutate(draw.draw, content, hot=(0, 24))
            edits += ["gzip: " + e for e in more]
    read_idx(idx_dir, name, content, where != "raw", f"{name} {where} {edits}", verify_md5)


@FUZZ
@given(name=st.sampled_from(list(BASES)), gz=st.booleans(),
       content=st.one_of(st.binary(max_size=4096),
                         st.tuples(st.sampled_from([b"\0\0\x08\x03", b"\0\0\x08\x01", b"\x1f\x8b\x08\0"]),
                                   st.binary(max_size=256)).map(b"".join)))
def test_idx_random_bytes(idx_dir, name, gz, content):
    read_idx(idx_dir, name, content, gz, f"{name} random {content[:32]!r}")


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p, mtime=0) for p in parts)


def test_idx_concatenated_gzip_members_read_as_one_file(idx_dir):
    # RFC 1952: a gzip file is a series of members, read as their concatenation (as gunzip does).
    raw = BASES[FILES.train_images]
    got = read_idx(idx_dir, FILES.train_images, gzip_members(raw[:16], raw[16:1000], raw[1000:]), True, "concat")
    np.testing.assert_array_equal(got, IMAGES)


def gzip_bomb(header: bytes, zeros: int) -> bytes:
    """A gzip stream of header + `zeros` zero bytes, built a MB at a time (~1 KB of .gz per MB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunks = [packer.compress(header)] + [packer.compress(bytes(1 << 20)) for _ in range(zeros >> 20)]
    return b"".join(chunks) + packer.flush()


@pytest.mark.parametrize("name, shape", [(FILES.train_images, (2**32 - 1, 28, 28)), (FILES.test_labels, (2**32 - 1,))])
def test_idx_gzip_bomb_stops_after_the_largest_mnist_file(idx_dir, name, shape):
    header = struct.pack(f">I{len(shape)}I", (mnist_module.IDX_UBYTE << 8) | len(shape), *shape)
    bomb = gzip_bomb(header, 96 << 20)  # ~95 KB that inflate to twice the largest MNIST file
    path = idx_dir / f"{name}.gz"
    path.write_bytes(bomb)
    # Reading stops one byte past the largest MNIST file (_MAX_RAW), whatever the header claims; the
    # bytearray it grows in over-allocates by up to 1/8.
    with bounded("gzip bomb", 0, slack=mnist_module._MAX_RAW * 5 // 4 + SLACK):
        with pytest.raises(MNISTFormatError, match="more than the largest MNIST file"):
            mnist_module._read_idx(path, name, verify_md5=False)


@FUZZ
@given(target=st.sampled_from(list(FILES)), gz=st.booleans(), draw=st.data())
def test_load_mnist_with_one_mutated_file(idx_dir, target, gz, draw):
    arrays = {FILES.train_images: IMAGES, FILES.train_labels: LABELS,
              FILES.test_images: IMAGES[:2], FILES.test_labels: LABELS[:2]}
    root = idx_dir / "mnist"
    root.mkdir(exist_ok=True)
    edits = []
    for name, array in arrays.items():
        content = mnist_module._idx_bytes(array)
        if name == target:
            content, edits = mutate(draw.draw, content)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (root / name).write_bytes(content)
    size = sum(f.stat().st_size for f in root.iterdir())
    result = expect_clean(lambda: load_mnist(root, verify_md5=False), IDX_ERRORS, f"{target} {edits}", size)
    if result is not None:
        assert len(result.train_images) == len(result.train_labels)
        assert len(result.test_images) == len(result.test_labels)
    for f in root.iterdir():
        f.unlink()


def test_load_mnist_missing_file_and_directory_in_its_place(idx_dir):
    root = idx_dir / "holes"
    root.mkdir()
    for name, array in zip(FILES, (IMAGES, LABELS, IMAGES, LABELS)):
        (root / name).write_bytes(mnist_module._idx_bytes(array))
    (root / FILES.test_labels).unlink()
    (root / FILES.test_labels).mkdir()  # a directory is not the file
    with pytest.raises(FileNotFoundError, match=FILES.test_labels):
        load_mnist(root, verify_md5=False)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints

CKPT_ERRORS = (CheckpointError,)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


class Blob(bytes):
    """Bytes that print as their length, so a failing example's report stays readable."""

    def __repr__(self):
        return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def checkpoint(ckpt_dir) -> bytes:
    """The bytes of a real checkpoint: mlp(hidden=4) and SGD with momentum buffers, after one step."""
    model = models.mlp(hidden=4, rng=np.random.default_rng(0))
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad[...] = 0.5
    optimizer.step()
    path = save_checkpoint(ckpt_dir / "real.npz", model=model, optimizer=optimizer, model_name="mlp", epoch=1,
                           config={"model": "mlp", "hidden": 4}, metrics=[{"loss": 0.5}], info={"n_train": 5})
    load_everything(path)  # the unmutated file loads
    return Blob(path.read_bytes())


def load_everything(path: Path):
    """What resuming does: the model, then the optimizer state into an SGD over its parameters."""
    model, ckpt = load_model(path)
    restore(optim.SGD(model.parameters(), lr=0.1), ckpt.optimizer_state, path, "optimizer state does not fit")
    return model, ckpt


def load_ckpt(root: Path, content: bytes, label: str):
    path = root / "fuzzed.npz"
    path.write_bytes(content)
    return expect_clean(lambda: load_everything(path), CKPT_ERRORS, label, len(content))


def arrays_of(content: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(content), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def npz_bytes(arrays: dict) -> bytes:
    f = io.BytesIO()
    np.savez(f, **arrays)  # pickles object arrays, as an attacker's file would
    return f.getvalue()


def central_directory_start(content: bytes) -> int:
    (offset,) = struct.unpack("<I", content[-6:-2])  # the end record's last fields: offset, comment length
    return offset


@FUZZ
@given(draw=st.data())
def test_checkpoint_byte_mutations(ckpt_dir, checkpoint, draw):
    # Half the edits land in the central directory and end record, where the sizes and offsets are.
    hot = (central_directory_start(checkpoint), len(checkpoint) - 1)
    content, edits = mutate(draw.draw, checkpoint, hot=draw.draw(st.sampled_from([(0, 120), hot])))
    load_ckpt(ckpt_dir, content, f"bytes {edits}")


KEYS = ["format", "model_name", "epoch", "config", "metrics", "info", "model/1.weight", "model/1.bias",
        "model/3.weight", "optimizer/lr", "optimizer/step", "optimizer/momentum_buffer.0"]
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64, "U3", "S3",
          "M8[s]", "m8[s]", [("a", np.float32), ("b", np.float32)], object]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
HIDDEN = st.sampled_from([0, -1, 3, 5, 2**31, 10**9, 2**63, 10**30, 1e300, "4", True, None, [4]])


@st.composite
def odd_array(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    # At most a weight matrix's worth: this is about kinds and shapes, not the generator's own memory.
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 4, 784]), max_size=3).filter(
        lambda dims: math.prod(dims) <= 4 * 784)))
    if dtype.hasobject:
        return np.array([{"x": 1}, None], dtype=object)
    return np.zeros(shape, dtype)


@st.composite
def structural_edit(draw, keys: list[str]):
    kind = draw(st.sampled_from(["remove", "rename", "add", "replace", "json", "config", "scalar"]))
    key = draw(st.sampled_from(keys))
    if kind == "remove":
        return f"remove {key}", lambda a: a.pop(key, None)
    if kind == "rename":
        new = draw(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12),
                             st.just(key.replace("model/", "optimizer/"))))
        return f"rename {key} -> {new!r}", lambda a: a.update({new: a.pop(key)}) if key in a else None
    if kind in ("add", "replace"):
        target = key if kind == "replace" else draw(st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12)))
        value = draw(odd_array())
        return f"{kind} {target} = {value.dtype} {value.shape}", lambda a: a.update({target: value})
    if kind == "json":
        field = draw(st.sampled_from(["config", "metrics", "info"]))
        text = draw(st.one_of(JSON.map(json.dumps), st.text(max_size=40),
                              st.sampled_from(["[" * 3000, "1" * 5000, "1e99999", "NaN", '{"model": "mlp"'])))
        return f"{field} = {text[:40]!r}", lambda a: a.update({field: np.array(text)})
    if kind == "config":
        hidden, model = draw(HIDDEN), draw(st.sampled_from(["mlp", "lenet5", "resnet", 3]))
        config = json.dumps({"model": model, "hidden": hidden})
        return f"config = {config}", lambda a: a.update(config=np.array(config))
    field = draw(st.sampled_from(["format", "epoch", "model_name", "optimizer/lr", "optimizer/step"]))
    value = draw(st.sampled_from([np.array(2**63 - 1), np.array(-1), np.array(np.uint64(2**64 - 1)),
                                  np.array(1.5), np.array("mlp"), np.array([1, 2]), np.array(np.nan),
                                  np.array(True), np.array("x" * 300)]))
    return f"{field} = {value!r}"[:80], lambda a: a.update({field: value})


@FUZZ
@given(draw=st.data())
def test_checkpoint_structural_mutations(ckpt_dir, checkpoint, draw):
    arrays = arrays_of(checkpoint)
    edits = []
    for _ in range(draw.draw(st.integers(1, 3))):
        name, edit = draw.draw(structural_edit(sorted(arrays)))
        edit(arrays)
        edits.append(name)
    load_ckpt(ckpt_dir, npz_bytes(arrays), f"structure {edits}")


def rezip(content: bytes, change) -> bytes:
    """Copy every member of the zip `content` through change(info, data) -> [(info, data), ...]."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            for new_info, new_data in change(info, src.read(info)):
                dst.writestr(new_info, new_data)
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")  # garbage headers, parsed
@FUZZ
@given(draw=st.data())
def test_checkpoint_member_mutations(ckpt_dir, checkpoint, draw):
    # Edits below numpy's level: member names, compression, raw member bytes (the .npy header or data).
    names = zipfile.ZipFile(io.BytesIO(checkpoint)).namelist()
    victim = draw.draw(st.sampled_from(names))
    kind = draw.draw(st.sampled_from(["deflate", "bzip2", "strip-suffix", "duplicate", "npy-bytes", "raw"]))
    npy_edit = draw.draw(mutation(64, hot=(0, 12))) if kind == "npy-bytes" else None
    raw = draw.draw(st.binary(max_size=64)) if kind == "raw" else None

    def change(info, member):
        if info.filename != victim:
            return [(info, member)]
        if kind in ("deflate", "bzip2"):
            info = zipfile.ZipInfo(info.filename, info.date_time)
            info.compress_type = zipfile.ZIP_DEFLATED if kind == "deflate" else zipfile.ZIP_BZIP2
        elif kind == "strip-suffix":
            info = zipfile.ZipInfo(info.filename.removesuffix(".npy"), info.date_time)
        elif kind == "duplicate":
            return [(info, member), (info, member[:len(member) // 2])]
        elif kind == "npy-bytes":
            member = npy_edit[1](member)
        else:
            member = raw
        return [(info, member)]

    with pytest.warns(UserWarning) if kind == "duplicate" else contextlib.nullcontext():
        content = rezip(checkpoint, change)
    load_ckpt(ckpt_dir, content, f"member {victim} {kind} {npy_edit and npy_edit[0]} {raw!r}")


@FUZZ
@given(content=st.one_of(st.binary(max_size=2048),
                         st.tuples(st.just(b"PK\x03\x04"), st.binary(max_size=512)).map(b"".join)))
def test_checkpoint_random_bytes(ckpt_dir, content):
    load_ckpt(ckpt_dir, content, f"random {content[:32]!r}")


def test_checkpoint_every_truncation(ckpt_dir, checkpoint):
    # Every cut inside the central directory and end record, and a stride through the members before it.
    start = central_directory_start(checkpoint)
    for n in [*range(0, start, 97), *range(start, len(checkpoint))]:
        assert load_ckpt(ckpt_dir, checkpoint[:n], f"cut to {n} bytes") is None


class _Touch:
    """Unpickling this creates `marker`: proof that a pickle inside a checkpoint ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pickled_object_array_is_refused_unopened(ckpt_dir, checkpoint, tmp_path):
    marker = tmp_path / "pickle-ran"
    for key in ("model/1.weight", "config", "optimizer/lr", "extra"):
        arrays = arrays_of(checkpoint)
        arrays[key] = np.array([_Touch(str(marker))], dtype=object)
        with pytest.raises(CheckpointError, match="pickled object array"):
            load_ckpt_strict(ckpt_dir, npz_bytes(arrays))
        assert not marker.exists(), "the pickle was executed"


def load_ckpt_strict(root: Path, content: bytes):
    path = root / "strict.npz"
    path.write_bytes(content)
    return load_everything(path)


@pytest.mark.parametrize("text", ["[" * 3000, "1" * 5000], ids=["nested-3000", "int-5000-digits"])
def test_json_that_json_loads_chokes_on(ckpt_dir, checkpoint, text):
    # RecursionError and a plain ValueError (int too long to convert), not JSONDecodeError.
    arrays = arrays_of(checkpoint)
    arrays["metrics"] = np.array(text)
    with pytest.raises(CheckpointError, match="'metrics' is not valid JSON"):
        load_ckpt_strict(ckpt_dir, npz_bytes(arrays))


def test_checkpoint_directory_and_missing_file(ckpt_dir):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(ckpt_dir)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_model(ckpt_dir / "absent.npz")


def test_deflate_bomb_is_refused_before_inflating(ckpt_dir, checkpoint):
    arrays = arrays_of(checkpoint)
    arrays["extra"] = np.zeros(16 << 20, np.uint8)  # 16 MB of zeros: ~16 KB once deflated
    f = io.BytesIO()
    np.savez_compressed(f, **arrays)
    content = f.getvalue()
    path = ckpt_dir / "bomb.npz"
    path.write_bytes(content)
    with bounded("deflate bomb", len(content)):
        with pytest.raises(CheckpointError, match="is compressed"):
            load_model(path)


# ---------------------------------------------------------------------------------------------------------
# The corpus: the nastiest cases as files, each with the error it must give

def _idx_header(magic_ndim: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", (mnist_module.IDX_UBYTE << 8) | magic_ndim, *dims)


def _minimal_checkpoint(**changes) -> dict:
    """The smallest file load_checkpoint accepts, so that the one thing wrong with it is what fails."""
    arrays = {"format": np.array(1), "model_name": np.array("mlp"), "epoch": np.array(0),
              "config": np.array('{"hidden": 1, "model": "mlp"}'), "metrics": np.array("[]"),
              "info": np.array("{}"), "model/1.weight": np.zeros((1, 2), np.float32)}
    arrays.update(changes)
    return arrays


def _npy(shape, descr="<f8", payload=b"", version=b"\x01\x00") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(header)) + header + payload


def _zip(members: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, member in members:
            z.writestr(name, member)
    return out.getvalue()


def _npy_members(arrays: dict) -> list[tuple[str, bytes]]:
    members = []
    for key, value in arrays.items():
        f = io.BytesIO()
        np.save(f, value, allow_pickle=True)
        members.append((key + ".npy", f.getvalue()))
    return members


def _patch_central(content: bytes, field_offset: int, value: int) -> bytes:
    """Set a 4-byte field of every central directory entry (16: CRC, 20: compressed, 24: uncompressed size)."""
    out = bytearray(content)
    i = central_directory_start(content)
    while out[i:i + 4] == b"PK\x01\x02":
        out[i + field_offset:i + field_offset + 4] = struct.pack("<I", value)
        name_len, extra_len, comment_len = struct.unpack("<HHH", out[i + 28:i + 34])
        i += 46 + name_len + extra_len + comment_len
    return bytes(out)


def _overlapping() -> bytes:
    """Three central directory entries for the one 1 KB member: each read of it is a read of the same bytes."""
    content = _zip(_npy_members(_minimal_checkpoint(**{"model/1.weight": np.zeros((1, 400), np.float32)})))
    start = central_directory_start(content)
    entries, i = [], start
    while content[i:i + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack("<HHH", content[i + 28:i + 34])
        entries.append(content[i:i + 46 + n + e + c])
        i += 46 + n + e + c
    big = next(x for x in entries if b"model/1.weight" in x)
    copies = [big[:46] + big[46:].replace(b"model/1.weight", name) for name in (b"model/1.weighu", b"model/1.weighv")]
    directory = b"".join(entries + copies)
    end = bytearray(content[i:])
    count = len(entries) + len(copies)
    end[8:20] = struct.pack("<HHII", count, count, len(directory), start)
    return content[:start] + directory + bytes(end)


def _encrypted_flag() -> bytes:
    content = _zip(_npy_members(_minimal_checkpoint()))
    out = bytearray(content)
    i = central_directory_start(content)
    out[i + 8] |= 1  # general purpose flag bit 0: encrypted
    return bytes(out)


def _gzip_bad_deflate() -> bytes:
    packed = bytearray(gzip.compress(_idx_header(3, 5, 28, 28) + bytes(5 * 784), mtime=0))
    packed[10] = 0xFF  # the first deflate block header: reserved block type 3
    return bytes(packed)


def _touch_pickle_npz() -> bytes:
    # Relative marker: the corpus test runs in a fresh working directory and checks it stays empty.
    value = np.array([_Touch("cyconv-pickle-ran")], dtype=object)
    return npz_bytes(_minimal_checkpoint(**{"model/1.weight": value}))


CORPUS_BUILDERS = {
    # file name: (builder, error, message fragment)
    "idx-images-lying-count-4e9.bin": (lambda: _idx_header(3, 4_000_000_000, 28, 28) + bytes(100),
                                       MNISTFormatError, "truncated payload"),
    "idx-labels-lying-count-2e32.bin": (lambda: _idx_header(1, 2**32 - 1) + bytes([1]) * 50,
                                        MNISTFormatError, "truncated payload"),
    "idx-images-lying-count-4e9.gz": (lambda: gzip_bomb(_idx_header(3, 4_000_000_000, 28, 28), 1 << 20),
                                      MNISTFormatError, "truncated payload"),
    "idx-images-zero-by-zero.bin": (lambda: _idx_header(3, 5, 0, 0), MNISTFormatError, "images are 0x0"),
    "idx-images-ndim-255.bin": (lambda: _idx_header(255, 5, 28, 28), MNISTFormatError, "ndim byte 255"),
    "idx-images-zero-count-trailing.bin": (lambda: _idx_header(3, 0, 28, 28) + b"\0", MNISTFormatError,
                                           "trailing bytes"),
    "idx-labels-header-cut-in-count.bin": (lambda: _idx_header(1, 5)[:6], MNISTFormatError, "truncated header"),
    "idx-labels-label-255.bin": (lambda: _idx_header(1, 3) + bytes([0, 9, 255]), MNISTFormatError,
                                 "label 255 at index 2"),
    "idx-images-gzip-bad-deflate-block.gz": (_gzip_bad_deflate, MNISTFormatError, "cannot read"),
    "idx-images-gzip-then-garbage.gz": (lambda: gzip_members(_idx_header(3, 1, 28, 28) + bytes(784)) + b"garbage!",
                                        MNISTFormatError, "cannot read"),
    "idx-images-gzip-second-member-extra.gz": (
        lambda: gzip_members(_idx_header(3, 1, 28, 28) + bytes(784), b"\0"), MNISTFormatError, "trailing bytes"),
    "idx-labels-gzip-empty.gz": (lambda: gzip_members(b""), MNISTFormatError, "truncated header"),
    "ckpt-object-array.npz": (_touch_pickle_npz, CheckpointError, "pickled object array"),
    "ckpt-npy-header-claims-2e9-floats.npz": (
        lambda: _zip(_npy_members(_minimal_checkpoint()) + [("model/3.weight.npy", _npy((2**31,), payload=bytes(64)))]),
        CheckpointError, "announces a float64 array of shape (2147483648,)"),
    "ckpt-npy-negative-shape.npz": (
        lambda: _zip(_npy_members(_minimal_checkpoint()) + [("model/3.weight.npy", _npy((-1, 2), payload=bytes(64)))]),
        CheckpointError, "damaged array 'model/3.weight'"),
    "ckpt-member-size-4gb.npz": (lambda: _patch_central(_zip(_npy_members(_minimal_checkpoint())), 24, 2**32 - 1),
                                 CheckpointError, "lists 4294967295 bytes"),
    "ckpt-compressed-size-4gb.npz": (lambda: _patch_central(_zip(_npy_members(_minimal_checkpoint())), 20, 2**32 - 1),
                                     CheckpointError, "members claim more bytes than the file holds"),
    "ckpt-deflated-members.npz": (lambda: _zip(_npy_members(_minimal_checkpoint()), zipfile.ZIP_DEFLATED),
                                  CheckpointError, "is compressed"),
    "ckpt-overlapping-entries.npz": (_overlapping, CheckpointError, "members claim more bytes than the file holds"),
    "ckpt-encrypted-flag.npz": (_encrypted_flag, CheckpointError, "is encrypted"),
    "ckpt-member-not-npy.npz": (lambda: _zip(_npy_members(_minimal_checkpoint()) + [("epoch", b"1")]),
                                CheckpointError, "member 'epoch' is not an .npy array"),
    "ckpt-npy-version-9.npz": (
        lambda: _zip(_npy_members(_minimal_checkpoint()) + [("extra.npy", _npy((1,), payload=bytes(8), version=b"\x09\x00"))]),
        CheckpointError, "expected 1.0 or 2.0"),
    "ckpt-json-nested-1200.npz": (lambda: npz_bytes(_minimal_checkpoint(metrics=np.array("[" * 1200))),
                                  CheckpointError, "'metrics' is not valid JSON"),
    "ckpt-config-hidden-1e9.npz": (
        lambda: npz_bytes(_minimal_checkpoint(config=np.array('{"hidden": 1000000000, "model": "mlp"}'))),
        CheckpointError, "config 'hidden' is 1000000000"),
    "ckpt-structured-weights.npz": (
        lambda: npz_bytes(_minimal_checkpoint(**{"model/1.weight": np.zeros(2, [("a", "<f4"), ("b", "<f4")])})),
        CheckpointError, "expected a numeric array"),
}


def load_corpus_file(path: Path):
    if path.name.startswith("idx-"):
        name = FILES.train_images if "-images-" in path.name else FILES.train_labels
        return mnist_module._read_idx(path, name, verify_md5=False)
    return load_everything(path)


@pytest.mark.parametrize("name", sorted(CORPUS_BUILDERS))
def test_corpus_file(name, tmp_path, monkeypatch):
    _, error, fragment = CORPUS_BUILDERS[name]
    path = CORPUS / name
    monkeypatch.chdir(tmp_path)  # where the pickle in ckpt-object-array.npz would create its marker
    with bounded(name, path.stat().st_size):
        with pytest.raises(error) as err:
            load_corpus_file(path)
    assert type(err.value) is error
    assert fragment in str(err.value) and str(path) in str(err.value)
    assert not os.listdir(tmp_path), "loading the file ran code"


def test_corpus_holds_only_known_tiny_files():
    files = {p.name: p.stat().st_size for p in CORPUS.iterdir()}
    assert set(files) == set(CORPUS_BUILDERS)
    assert max(files.values()) < 20_000 and len(files) <= 30


def write_corpus() -> None:
    CORPUS.mkdir(exist_ok=True)
    for name, (build, _, _) in CORPUS_BUILDERS.items():
        content = build()
        (CORPUS / name).write_bytes(content)
        print(f"{name}: {len(content)} bytes")


if __name__ == "__main__":
    sys.exit(write_corpus())
