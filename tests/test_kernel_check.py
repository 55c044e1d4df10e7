"""tests/c/kernel_check.c, built with this machine's C compiler and run: every kernel of csrc/ against a
plain C loop, on every ISA tier this CPU runs (CI also runs it on aarch64 under qemu, and under ASan +
UBSan). Skipped where there is no C compiler."""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernels  # once, not per tier: the driver itself runs every tier the CPU has

ROOT = Path(__file__).resolve().parents[1]


def test_every_kernel_matches_its_plain_c_loop(tmp_path):
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None or not (ROOT / "csrc").is_dir():
        pytest.skip(f"no C compiler ({cc}) or no csrc/ beside the tests")
    exe = tmp_path / "kernel_check"
    subprocess.run([cc, "-std=c11", "-O2", f"-I{ROOT / 'csrc'}", str(ROOT / "tests/c/kernel_check.c"),
                    *map(str, sorted((ROOT / "csrc").glob("*.c"))), "-lm", "-o", str(exe)], check=True,
                   capture_output=True, timeout=300)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "values agree" in run.stdout
