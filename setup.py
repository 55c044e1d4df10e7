"""Build cyconv's one compiled extension, with OpenMP when the compiler has it.

Environment switches:
  CYCONV_OPENMP=0  build serial kernels even if OpenMP is available.
  CYCONV_OPENMP=1  fail the build if OpenMP is not available.
  CYCONV_DEBUG=1   Cython bounds checks, -O0 -g (for chasing memory errors).
  CYCONV_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer, -O1 -g (GCC/clang);
                   CYCONV_SANITIZE=undefined (or any -fsanitize= list) picks the checks.
                   Python is not instrumented: see the README for how to run the tests.
Default: probe the compiler; without OpenMP, build serial kernels and warn.
"""

import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def openmp_flags(compiler_type):
    """Compile and link flags that turn OpenMP on for this compiler."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag; libomp comes from Homebrew.
        prefix = os.environ.get("HOMEBREW_PREFIX", "/opt/homebrew")
        return (
            ["-Xpreprocessor", "-fopenmp", f"-I{prefix}/opt/libomp/include"],
            [f"-L{prefix}/opt/libomp/lib", "-lomp"],
        )
    return ["-fopenmp"], ["-fopenmp"]


def sanitizer_flags(compiler_type):
    """Compile and link flags for CYCONV_SANITIZE; none when it is unset or 0."""
    checks = os.environ.get("CYCONV_SANITIZE", "").strip()
    if checks in ("", "0"):
        return [], []
    if compiler_type == "msvc":
        raise RuntimeError("cyconv: CYCONV_SANITIZE needs GCC or clang")
    if checks == "1":
        checks = "address,undefined"
    sanitize = [f"-fsanitize={checks}"]
    # UBSan only prints and carries on by default: make a finding fatal, so a
    # test run fails. Python's own CFLAGS has -fwrapv, which makes signed
    # overflow defined and so turns GCC's signed-integer-overflow check off.
    cflags = sanitize + ["-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-fno-wrapv"]
    return cflags, sanitize


def probe_openmp(compiler, cflags, ldflags):
    """True if a tiny omp.h program compiles and links with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe_omp.c")
        with open(src, "w") as f:
            f.write(PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
            compiler.link_executable(objs, os.path.join(tmp, "probe_omp"), extra_postargs=ldflags)
        except Exception:  # any compile or link failure means "no OpenMP"
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        mode = os.environ.get("CYCONV_OPENMP", "").strip()
        debug = os.environ.get("CYCONV_DEBUG", "") == "1"
        san_cflags, san_ldflags = sanitizer_flags(self.compiler.compiler_type)
        if self.compiler.compiler_type == "msvc":
            opt = ["/Od", "/Zi"] if debug else ["/O2"]
        else:
            # -O3 vectorises the copy loops; never -ffast-math: it breaks NaN
            # propagation in max pooling and ReLU and tight comparisons in tests.
            if debug:
                opt = ["-O0", "-g"]
            elif san_cflags:
                opt = ["-O1", "-g"]  # fast enough, and the reports' line numbers stay right
            else:
                opt = ["-O3"]
            # -ffp-contract=off: no fused multiply-add where the C does not ask
            # for one (clang contracts by default), so the elementwise kernels
            # round exactly as their NumPy twins do. -fno-math-errno: nothing reads
            # errno, and a sqrt that may set it is a libm call the loop cannot vectorise.
            # -fno-trapping-math: nothing reads the floating-point exception flags, and
            # without it GCC keeps the clamps of exp_f32 as branches, so the sigmoid and
            # tanh loops stayed scalar (clang vectorised them either way). Values are
            # unchanged: it permits no reassociation and keeps NaN and infinities.
            opt += ["-std=c11", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function",
                    "-Wno-unreachable-code"]
        if san_cflags:
            print(f"cyconv: sanitizers on ({' '.join(san_cflags)}); the README says how to run the tests")

        cflags, ldflags = openmp_flags(self.compiler.compiler_type)
        if mode == "0":
            use_openmp = False
            print("cyconv: CYCONV_OPENMP=0, building serial kernels")
        else:
            use_openmp = probe_openmp(self.compiler, cflags, ldflags)
            if not use_openmp and mode == "1":
                raise RuntimeError(
                    "cyconv: CYCONV_OPENMP=1 but the compiler cannot build an OpenMP program "
                    f"with {cflags} {ldflags} (on macOS: brew install libomp)"
                )
            if use_openmp:
                print(f"cyconv: OpenMP enabled ({' '.join(cflags)})")
            else:
                print(
                    "cyconv: WARNING: the compiler cannot build OpenMP programs; "
                    "building serial kernels (on macOS: brew install libomp)"
                )
        for ext in self.extensions:
            ext.extra_compile_args = opt + (cflags if use_openmp else []) + san_cflags
            ext.extra_link_args = (ldflags if use_openmp else []) + san_ldflags
        super().build_extensions()


def extensions():
    from Cython.Build import cythonize

    debug = os.environ.get("CYCONV_DEBUG", "") == "1"
    ext = Extension(
        "cyconv.kernels._kernels",
        sources=["src/cyconv/kernels/_kernels.pyx", "csrc/isa.c", "csrc/im2col.c", "csrc/gemm.c", "csrc/direct.c", "csrc/maxpool.c",
                 "csrc/avgpool.c", "csrc/relu.c", "csrc/activations.c", "csrc/dropout.c", "csrc/batchnorm.c",
                 "csrc/optim.c", "csrc/hog.c", "csrc/depthwise.c", "csrc/adaptive_avgpool.c",
                 "csrc/hardtanh.c", "csrc/winograd.c"],
        include_dirs=["csrc"],
    )
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "initializedcheck": debug,
        "cdivision": True,
    }
    # force: the directives depend on CYCONV_DEBUG, so never reuse a stale .c file.
    return cythonize([ext], compiler_directives=directives, force=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
