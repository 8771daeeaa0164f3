"""Build hook: compiles csrc/ into detector.ops._C (CUDA when nvcc and a CUDA torch are present)."""

import glob
import os
import shutil
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "ctnode: the C++ operators in csrc/ compile against torch, which is not installed. "
        "Install torch==2.13.0 first, then `pip install --no-build-isolation -e .` (see Makefile)."
    )

CSRC = "csrc"


def _require_cxx() -> None:
    """Stops the install with a message naming the missing C++ compiler."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler.split()[0]) is None:
        sys.exit(
            f"ctnode: no C++ compiler found (looked for {compiler!r}; set CXX to choose one). "
            "The operators in csrc/ are compiled at install time: install g++ "
            "(Debian/Ubuntu: apt-get install g++) and rerun the install."
        )


def _want_cuda() -> bool:
    """CUDA kernels are built when torch has CUDA and nvcc is found (CTNODE_CPU_ONLY=1 opts out)."""
    if os.environ.get("CTNODE_CPU_ONLY") == "1" or torch.version.cuda is None:
        return False
    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        print(
            f"ctnode: torch has CUDA {torch.version.cuda} but nvcc was not found (CUDA_HOME={home}); "
            "building the CPU kernels only",
            file=sys.stderr,
        )
        return False
    return True


def _extension() -> cpp_extension.CppExtension:
    """The single extension module detector.ops._C."""
    _require_cxx()
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(CSRC, "ops", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(CSRC, "ops", "cpu", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(CSRC, "ops", "autograd", "*.cpp")))
    cxx = ["-O3", "-g0", "-fopenmp", "-std=c++20"]
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "detector.ops._C",
            sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    sources += sorted(glob.glob(os.path.join(CSRC, "ops", "cuda", "*.cu")))
    return cpp_extension.CUDAExtension(
        "detector.ops._C",
        sources,
        define_macros=[("CTNODE_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
