"""Build script for cynet's Cython kernels.

One extension per kernel family (every ``cynet/_kernels/*.pyx``), all compiled with the same Cython directives and the
same compiler flags. OpenMP flags are chosen for the compiler in use and *probed*: a tiny OpenMP program must compile
and link with them, otherwise the kernels are built serially (``prange`` then runs as a plain loop) and a warning says
so. ``CYNET_NO_OPENMP=1`` forces the serial build.

The default build is portable: ``-O3 -fno-trapping-math -fno-math-errno -ffp-contract=off`` (and GCC's
``-fno-thread-jumps``), no ``-march=native`` and no ``-ffast-math``. The kernels are written so that the compiler can
vectorise them. On x86-64, each kernel family is also built for AVX2 and AVX-512 (same source, wider vectors) and
the widest variant the CPU runs is chosen at import time (``cynet._kernels.load``); ``CYNET_NO_SIMD_VARIANTS=1``
builds the baseline only.

For development, ``CYNET_BUILD_ONLY=family[,family]`` with ``python setup.py build_ext --inplace`` rebuilds just
those kernel families.
"""
import os
import shutil
import sys
import tempfile
import textwrap
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

# Cython directives, set once for every kernel family.
CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
    "binding": False,
}

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d %d\\n", n, omp_get_max_threads());
        return 0;
    }
    """
)


def _openmp_flags(compiler):
    """Return (compile_args, link_args) for OpenMP with this compiler, or None when OpenMP is disabled/unusable."""
    if os.environ.get("CYNET_NO_OPENMP", "0").strip().lower() not in ("", "0", "false", "no", "off"):
        print("cynet: WARNING: CYNET_NO_OPENMP is set: building the kernels without OpenMP (serial).",
              file=sys.stderr)
        return None
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        # Apple clang needs the preprocessor flag and libomp (e.g. from Homebrew).
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for compile_args, link_args in candidates:
        if _probe(compiler, compile_args, link_args):
            return compile_args, link_args
    print(
        "cynet: WARNING: no working OpenMP flags for this compiler "
        f"(tried {[c for c, _ in candidates]}); building the kernels serially. "
        "Everything works, only without multi-threading.",
        file=sys.stderr,
    )
    return None


def _probe(compiler, compile_args, link_args):
    tmp = tempfile.mkdtemp(prefix="cynet_omp_probe_")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
        compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=link_args)
        return True
    except Exception:  # any compile or link error means: these flags do not work here
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# SIMD variants built beside the baseline on x86-64 with GCC/clang; cynet._kernels.load picks one at run time from the
# CPU's features. Same source: a variant differs in vector width and, in the polynomials of _vecmath.pxd only, in
# fused multiply-adds (explicit fma calls; -ffp-contract=off still forbids the compiler from contracting anything else).
ISA_VARIANTS = {
    "avx2": ["-mavx2", "-mfma"],
    # -mavx512f implies AVX2 but not FMA (GCC): without -mfma the variant's explicit fma calls were two roundings.
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma", "-mprefer-vector-width=512"],
}
# Kernel families without a hot loop get no variants.
NO_VARIANTS = {"_runtime"}


def _flags_compile(compiler, flags):
    """True when the compiler accepts ``flags`` (probe on a trivial file)."""
    tmp = tempfile.mkdtemp(prefix="cynet_isa_probe_")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int cynet_probe(int x) { return x + 1; }\n")
        compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _x86_64():
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


def _simd_variants():
    """[(isa, flags)] the compiler accepts, on x86-64 with a GCC-style compiler; [] elsewhere or when disabled."""
    if os.environ.get("CYNET_NO_SIMD_VARIANTS", "0") not in ("", "0") or not _x86_64():
        return []
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    if compiler.compiler_type == "msvc":
        return []
    variants = []
    for isa, flags in ISA_VARIANTS.items():
        if _flags_compile(compiler, flags):
            variants.append((isa, flags))
        else:
            print(f"cynet: the compiler does not accept {flags}: no {isa} kernels.")
    return variants


class BuildExtWithOpenMP(build_ext):
    """build_ext that probes the OpenMP flags once and applies them, with the optimisation flags, to every kernel."""

    def build_extensions(self):
        flags = _openmp_flags(self.compiler)
        if self.compiler.compiler_type == "msvc":
            opt = ["/O2"]
        else:
            # -fno-trapping-math (clang's default) lets the compiler evaluate both arms of a select, which is what
            # turns the branch-free kernels into SIMD code; values, NaN and inf are unchanged. -ffp-contract=off
            # keeps a*b+c two rounded operations on every target (no FMA contraction), so results are identical
            # across instruction sets and equal to NumPy's where the formula is the same; the one exception is
            # deliberate: the explicit fma calls of _vecmath.pxd's polynomials (fused in the FMA variants).
            # -fno-math-errno (clang's default on macOS) lets sqrt become the SIMD square-root instruction instead of
            # a call that may set errno: without it the AdaGrad, RMSProp and Adam update loops do not vectorise. The
            # value is the same correctly rounded IEEE square root (NaN for a negative input) either way. Not
            # -ffast-math.
            opt = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off", "-fno-strict-aliasing",
                   "-Wno-unused-function", "-Wno-unreachable-code"]
            # GCC's jump threading copies the rest of an exp/expm1 once per clamp of its argument ("x > 88.8: every
            # later value is a constant") and blends the copies back together: a third more instructions in the SIMD
            # loops. Without it, sigmoid/tanh/ELU/SELU/SiLU run 10-25% faster (measured, AVX2); values are unchanged.
            # GCC only: clang has no such flag (probed, with -Werror so that an ignored flag is not taken).
            if _flags_compile(self.compiler, ["-fno-thread-jumps", "-Werror"]):
                opt.append("-fno-thread-jumps")
        for ext in self.extensions:
            ext.extra_compile_args = list(opt) + list(ext.extra_compile_args or []) + (flags[0] if flags else [])
            ext.extra_link_args = list(flags[1]) if flags else []
            ext.define_macros = list(ext.define_macros or []) + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        super().build_extensions()


def _extensions():
    sources = sorted(glob(os.path.join("cynet", "_kernels", "*.pyx")))
    # Development knob: CYNET_BUILD_ONLY=optim,losses rebuilds only those families (the others keep their built
    # modules). Installs and CI leave it unset and build everything.
    only = {f.strip() for f in os.environ.get("CYNET_BUILD_ONLY", "").split(",") if f.strip()}
    if only:
        sources = [s for s in sources if os.path.basename(s)[:-4] in only]
    exts = [Extension(src[:-4].replace(os.sep, "."), [src], include_dirs=[numpy.get_include()]) for src in sources]
    exts = cythonize(exts, compiler_directives=CYTHON_DIRECTIVES, quiet=True)
    variants = []
    for isa, isa_flags in _simd_variants():
        for ext in exts:
            family = ext.name.rsplit(".", 1)[-1]
            if family in NO_VARIANTS:
                continue
            # The variant compiles the family's generated C file under another module name: rename its init function.
            variants.append(Extension(
                f"{ext.name}_{isa}", list(ext.sources), include_dirs=list(ext.include_dirs),
                extra_compile_args=isa_flags + [f"-DPyInit_{family}=PyInit_{family}_{isa}"],
            ))
    return exts + variants


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtWithOpenMP})
