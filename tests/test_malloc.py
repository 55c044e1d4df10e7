"""cyconv._malloc: on glibc, freed array memory stays in the process, so the next step's arrays of the
same size reuse it instead of faulting in fresh zeroed pages; CYCONV_MALLOC=system leaves malloc alone.

Checked by counting page faults (not time) in fresh processes, each making and dropping the arrays of
a training step of small_cnn's first BatchNorm (16.8 MB each) a few times."""

import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

PROBE = """
import resource, numpy as np, cyconv
for i in range(12):
    if i == 2:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = np.empty((64, 16, 64, 64), np.float32); y.fill(1)   # a layer's output
    g = np.empty((64, 16, 64, 64), np.float32); g.fill(2)   # and its gradient, both dropped
    del y, g
print(cyconv.build_info()["malloc"], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
"""


def probe(env_value):
    env = {"CYCONV_MALLOC": env_value} if env_value is not None else {}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    mode, faults = proc.stdout.split()
    return mode, float(faults)


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt; elsewhere malloc is left alone")
def test_freed_arrays_are_reused_without_page_faults():
    kept_mode, kept = probe(None)
    system_mode, system = probe("system")
    assert (kept_mode, system_mode) == ("kept", "system")
    # 2 x 16.8 MB of fresh pages a step is ~8,200 faults of 4 KB (fewer with huge pages); kept, ~none.
    assert system > 200 and kept < system / 20, (kept, system)


def test_a_bad_setting_is_refused_naming_the_variable():
    proc = subprocess.run([sys.executable, "-c", "import cyconv"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CYCONV_MALLOC": "jemalloc"})
    assert proc.returncode != 0
    assert "CYCONV_MALLOC must be 'keep' or 'system', got 'jemalloc'" in proc.stderr
