"""Every code block of README.md and docs/*.md runs, and every relative link resolves, so no document
goes stale.

How each kind of block runs (docs/development.md, "The documentation's tests", says the same):

- The blocks of one markdown file run in order, in one fresh temporary directory, so a later block may
  use what an earlier one wrote (`runs/lenet5/checkpoint.npz`, the `shapes` folder). The directory
  starts with one file, `my-seven.png`: an MNIST 7 drawn dark on light on a larger canvas, as a person
  draws one, for the `cyconv predict` examples.
- ```python blocks run in this process, in one namespace per markdown file, with the temporary
  directory as the working directory; the process-wide settings a block may change (ISA tier, thread
  count, convolution algorithm, GEMM) are put back afterwards.
- ```bash / ```console blocks: each command (`# comments` dropped, `\\` continuations joined, a leading
  `$ ` prompt dropped) must be `cyconv ...`, `python -m ...` or `python -c ...`, and runs as a
  subprocess of this Python, with MNIST from the tests' copy and downloads off. To keep the whole file
  under two minutes on two cores, the test appends SMALL[command] to the commands named in SMALL
  (argparse lets the last of a repeated option win): every `cyconv train` trains 1 epoch on 256
  pictures, every `cyconv compare` on 200 training and 100 test images.
- A block that cannot run here (it creates a venv, needs mpiexec, PyTorch or a server that runs until
  stopped) is preceded by `<!-- not run: the reason -->`. There are few such blocks (MAX_NOT_RUN), each
  with its reason; any other command in a shell block fails the test, so a new one is run or marked.
"""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Appended to these commands in shell blocks (see the module docstring).
SMALL = {
    ("cyconv", "train"): ["--epochs", "1", "--limit", "256", "--no-progress"],
    ("cyconv", "compare"): ["--epochs", "1", "--limit", "200", "--test-limit", "100", "--no-progress"],
}
MAX_NOT_RUN = 10
RUN_LANGUAGES = {"python", "bash", "console"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")
TIMEOUT = 300  # seconds per command: a hang fails the test rather than the CI run


class Block:
    def __init__(self, path, line, language, text, not_run):
        self.path, self.line, self.language, self.text, self.not_run = path, line, language, text, not_run

    def __repr__(self):
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.language})"


def blocks(path):
    """The fenced code blocks of a markdown file, in order, with the reason of a preceding
    `<!-- not run: ... -->` (None when there is none)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(1)
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.relative_to(ROOT)}:{start + 1}: code block never closed"
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        marker = NOT_RUN.search(lines[j]) if j >= 0 else None
        found.append(Block(path, start + 1, language, "\n".join(body) + "\n", marker and marker.group(1)))
        i += 1
    return found


def commands(block):
    """The commands of a shell block, each as an argv list."""
    text = re.sub(r"\\\n", " ", block.text)
    argvs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        argv = shlex.split(line, comments=True)
        if argv:
            argvs.append(argv)
    return argvs


def subprocess_argv(argv, block):
    """argv of a documented command as this test runs it, or a failure naming the block."""
    if argv[0] == "cyconv":
        script = Path(sys.executable).with_name("cyconv")
        head = [str(script)] if script.exists() else [sys.executable, "-m", "cyconv"]
        return head + argv[1:] + SMALL.get(tuple(argv[:2]), [])
    if argv[0] == "python" and len(argv) > 2 and argv[1] in ("-m", "-c"):
        return [sys.executable, *argv[1:]]
    pytest.fail(f"{block}: `{shlex.join(argv)}` is neither `cyconv ...` nor `python -m/-c ...`: "
                f"make it one, or mark the block <!-- not run: reason -->")


def my_seven(path, mnist_dir):
    """The first 7 of MNIST's test set, dark on light, three times larger, as a person draws one."""
    from PIL import Image

    from cyconv import data

    mnist = data.load_mnist(mnist_dir)
    digit = mnist.test_images[int(np.flatnonzero(mnist.test_labels == 7)[0])]
    canvas = np.full((120, 100), 255, np.uint8)
    canvas[18:102, 8:92] = 255 - np.kron(digit, np.ones((3, 3), np.uint8))
    Image.fromarray(canvas).save(path)


class Settings:
    """The process-wide settings a python block may change, saved and put back."""

    def __enter__(self):
        import cyconv
        import cyconv._kernels as kernels
        from cyconv import functional

        self.saved = (cyconv.get_isa(), cyconv.get_num_threads(), functional.get_conv_algorithm(),
                      kernels.own_gemm_enabled())
        return self

    def __exit__(self, *exc):
        import cyconv
        import cyconv._kernels as kernels
        from cyconv import functional

        isa, threads, algorithm, own_gemm = self.saved
        cyconv.set_isa(isa)
        cyconv.set_num_threads(threads)
        functional.set_conv_algorithm(algorithm)
        kernels.set_own_gemm(own_gemm)
        return False


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_block_runs(path, tmp_path, monkeypatch, mnist_dir):
    env = dict(os.environ, CYCONV_DATA=str(mnist_dir), CYCONV_NO_DOWNLOAD="1")
    env.pop("CYCONV_DEBUG", None)
    monkeypatch.setenv("CYCONV_DATA", str(mnist_dir))
    monkeypatch.setenv("CYCONV_NO_DOWNLOAD", "1")
    monkeypatch.chdir(tmp_path)
    my_seven(tmp_path / "my-seven.png", mnist_dir)
    namespace = {"__name__": "__docs__"}
    with Settings():
        for block in blocks(path):
            if block.not_run is not None:
                continue
            start = time.perf_counter()
            assert block.language in RUN_LANGUAGES, (
                f"{block}: a ```{block.language} block; code blocks are python, bash or console "
                f"(or marked <!-- not run: reason -->)")
            if block.language == "python":
                try:
                    exec(compile(block.text, str(block), "exec"), namespace)
                except Exception as e:
                    raise AssertionError(f"{block} failed: {type(e).__name__}: {e}") from e
            for argv in commands(block) if block.language != "python" else []:
                run = subprocess.run(subprocess_argv(argv, block), cwd=tmp_path, env=env, capture_output=True,
                                     text=True, timeout=TIMEOUT)
                assert run.returncode == 0, (f"{block}: `{shlex.join(argv)}` exited {run.returncode}\n"
                                             f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}")
            print(f"{block}: {time.perf_counter() - start:.1f} s")  # shown with -s or on a failure


def test_blocks_not_run_are_few_and_say_why():
    not_run = [(b, b.not_run) for path in DOCS for b in blocks(path) if b.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, f"{len(not_run)} blocks marked not run: {not_run}"
    for block, reason in not_run:
        assert len(reason.split()) >= 2, f"{block}: `<!-- not run: {reason} -->` names no reason"


def test_the_readme_opens_with_the_two_commands():
    """The README's first block is the two set-up commands, in the order and with the extras that
    `.ci/run` runs them (its "install (README) and test" step: `pip install ".[test]"`, then pytest on
    tests/)."""
    first = blocks(ROOT / "README.md")[0]
    assert first.line <= 5, f"{first}: the set-up commands come first"
    assert first.text.splitlines() == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && cyconv train",
        'python3 -m venv .venv && . .venv/bin/activate && pip install ".[test]" && pytest',
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q ".[test]"' in ci and "python -m pytest -q -p no:cacheprovider tests\n" in ci


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose(path):
    """A markdown file's text without its fenced code blocks."""
    text, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line) or (fenced and line.rstrip() == "```"):
            fenced = not fenced
        elif not fenced:
            text.append(line)
    return "\n".join(text)


def anchors(path):
    text = prose(path)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_resolve(path):
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        where = (path.parent / file).resolve() if file else path
        assert where.exists(), f"{path.relative_to(ROOT)}: link to {target}: {where} does not exist"
        if anchor and where.suffix == ".md":
            assert anchor in anchors(where), f"{path.relative_to(ROOT)}: link to {target}: no such heading"


def test_the_map_names_files_that_exist():
    """The README's map names C files (`im2col.c`: in csrc/), test files (`test_conv2d.py`: in tests/) and,
    once the package is grouped into folders, the package's own (`cyconv/kernels/...`): each must exist."""
    names = set()
    for span in re.findall(r"`([\w./]+)`", prose(ROOT / "README.md")):
        if "/" not in span and re.fullmatch(r"\w+\.[ch]", span):
            names.add(f"csrc/{span}")
        elif "/" not in span and re.fullmatch(r"test_\w+\.py", span):
            names.add(f"tests/{span}")
        elif span.startswith(("csrc/", "tests/")) and "." in span:
            names.add(span)
        elif span.startswith("cyconv/") and (ROOT / "src" / "cyconv" / "kernels").is_dir():
            names.add(f"src/{span}")
    assert len(names) > 30, f"the README's map names only {sorted(names)}"
    missing = sorted(n for n in names if not (ROOT / n).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"
