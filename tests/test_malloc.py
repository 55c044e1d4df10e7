"""cyconv.kernels.malloc: `import cyconv` leaves the process's malloc alone; the `cyconv` command keeps freed
array memory in its own process (on glibc), so the next step's arrays of the same size reuse it instead
of faulting in fresh zeroed pages; CYCONV_MALLOC=system leaves malloc alone there too.

Checked by counting page faults (not time) in fresh processes, each making and dropping the arrays of
a training step of small_cnn's first BatchNorm (16.8 MB each) a few times. The counts depend on the page
size: with 4 KB pages a step without the tuning faults ~1,000 times, with transparent huge pages (as on
a machine with THP set to `always`; glibc.malloc.hugetlb=1 asks for them here) ~16 times; tuned, ~0."""

import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

PROBE = """
import resource, sys, numpy as np
if sys.argv[1] != "numpy alone":
    import cyconv, cyconv.kernels.malloc
if sys.argv[1] == "kept":
    cyconv.kernels.malloc.keep_freed_memory()
for i in range(12):
    if i == 2:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = np.empty((64, 16, 64, 64), np.float32); y.fill(1)   # a layer's output
    g = np.empty((64, 16, 64, 64), np.float32); g.fill(2)   # and its gradient, both dropped
    del y, g
mode = cyconv.build_info()["malloc"] if "cyconv" in sys.modules else "-"
print(mode, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
"""

PAGES = [pytest.param("", id="4k-pages"), pytest.param("glibc.malloc.hugetlb=1", id="huge-pages")]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CYCONV_MALLOC", "GLIBC_TUNABLES")}
    return {**env, **{k: v for k, v in extra.items() if v is not None}}


def probe(how, tunables="", malloc_env=None):
    proc = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, timeout=120,
                          env=clean_env(GLIBC_TUNABLES=tunables or None, CYCONV_MALLOC=malloc_env))
    assert proc.returncode == 0, proc.stderr
    mode, faults = proc.stdout.split()
    return mode, float(faults)


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt; elsewhere malloc is left alone")
@pytest.mark.parametrize("tunables", PAGES)
def test_import_leaves_malloc_alone(tunables):
    _, alone = probe("numpy alone", tunables)
    mode, imported = probe("imported", tunables)
    assert mode == "system"
    assert alone >= 8 and imported >= alone / 2, (imported, alone)  # 33.6 MB of fresh pages: >= 16 huge ones


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt; elsewhere malloc is left alone")
@pytest.mark.parametrize("tunables", PAGES)
def test_kept_freed_arrays_are_reused_without_page_faults(tunables):
    kept_mode, kept = probe("kept", tunables)
    system_mode, system = probe("kept", tunables, malloc_env="system")
    assert (kept_mode, system_mode) == ("kept", "system")
    assert system >= 8 and kept < system / 8, (kept, system)


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt; elsewhere malloc is left alone")
def test_the_cyconv_command_keeps_freed_memory_for_its_own_process():
    code = ("import sys, cyconv, cyconv.cli; sys.argv = ['cyconv', 'summary']; status = cyconv.cli.command(); "
            "print(status, cyconv.build_info()['malloc'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["0", "kept"]


def test_a_bad_setting_is_a_warning_not_an_error():
    env = clean_env(CYCONV_MALLOC="sytem")
    proc = subprocess.run([sys.executable, "-c", "import cyconv"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert (proc.returncode, proc.stderr) == (0, "")  # the import does not even read it
    proc = subprocess.run([sys.executable, "-m", "cyconv", "summary"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning: CYCONV_MALLOC must be 'keep' or 'system', got 'sytem'; malloc is left as it is" \
        in proc.stderr
