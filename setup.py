"""Builds gro_kernels._C: the native CPU epilogues always, the CUDA kernels when nvcc is present.

Environment:
  GRO_SKIP_CUDA_BUILD=1   build the CPU extension only, even when nvcc is found
  GRO_SKIP_NATIVE_BUILD=1 build no extension at all (pure-Python install; torch fallbacks run)
  GRO_CPU_ARCH            value for -march (default: native, right for a source build on the machine
                          that runs it; use e.g. x86-64-v3 for a wheel meant to be shared)
  TORCH_CUDA_ARCH_LIST    CUDA targets (default here: "8.0;9.0")
  CUDA_HOME               CUDA toolkit (default: /usr/local/cuda when it exists)
"""

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_wanted():
    if os.environ.get("GRO_SKIP_CUDA_BUILD") == "1":
        return False
    if not _rel("csrc/cuda/*.cu"):
        return False
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(os.environ.get("CUDA_HOME", ""), "bin/nvcc"))


def _extensions():
    if os.environ.get("GRO_SKIP_NATIVE_BUILD") == "1":
        return [], {}
    if os.environ.get("CUDA_HOME") is None and os.path.isdir("/usr/local/cuda"):
        # torch reads CUDA_HOME when cpp_extension is imported, and with no GPU runtime present it
        # guesses /usr/local, where the CUDA headers are not: set it first.
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    march = os.environ.get("GRO_CPU_ARCH", "native")
    # 512-bit vectors pay off for the exp-heavy epilogue loops; ignored where AVX-512 is absent.
    cxx = ["-O3", "-fopenmp", f"-march={march}", "-mprefer-vector-width=512", "-fno-math-errno", "-std=c++20"]
    sources = _rel("python_api/schemas.cpp") + _rel("python_api/cpu_*.cpp") + _rel("csrc/cpu/*.cpp")
    if _cuda_wanted():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _rel("python_api/cuda_*.cpp") + _rel("csrc/cuda/*.cu")
        nvcc = ["-O3", "-std=c++20", "-lineinfo"]
        ext = CUDAExtension("gro_kernels._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("gro_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
