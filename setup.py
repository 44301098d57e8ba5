"""Builds the compiled ops of igcam_fast against the torch already installed.

    pip install --no-build-isolation -e .

Two extension modules:
    igcam_fast._C       op schemas (csrc/igcam_ops.cpp) + CPU kernels (csrc/cpu/*.cpp); always built.
    igcam_fast._C_cuda  CUDA kernels (csrc/cuda/*.cu); built by default only where it can run: a CUDA
                        toolkit (nvcc) is found, torch was built with CUDA and a GPU is visible. A
                        machine without a GPU skips it (minutes of nvcc for a module it cannot load);
                        CI and `make test` build it there anyway with IGCAM_FAST_BUILD_CUDA=1, so the
                        CUDA code is compiled and linked on every test run.

Environment:
    IGCAM_FAST_BUILD_CUDA=0|1   force the CUDA module off / on, GPU or not (on fails loudly without a toolkit).
    TORCH_CUDA_ARCH_LIST        CUDA architectures (default "7.5;8.0;9.0+PTX": machine code for
                                Turing, Ampere/Ada (sm_80 runs on 8.x) and Hopper, plus Hopper
                                PTX that newer cards compile at first load). The list is recorded
                                in the module; dispatch turns a card it misses into a reason.
    CUDA_HOME                   the toolkit (default: nvcc on PATH, then /usr/local/cuda).
    IGCAM_FAST_DEBUG=1          -O0 -g instead of -O3.
    IGCAM_FAST_OPENMP=0         build the CPU kernels without OpenMP (at::parallel_for then runs serially).
    MAX_JOBS                    parallel compile jobs (ninja).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# CUDA 13 no longer targets sm_70 (Volta): a V100 gets a dispatch reason, not a failed launch.
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0+PTX"


def _is_toolkit(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def _find_cuda_toolkit() -> str | None:
    """The CUDA toolkit root, or None.

    torch guesses dirname(dirname(which nvcc)), which is wrong when nvcc on PATH is a wrapper
    script (/usr/local/bin/nvcc -> CUDA_HOME=/usr/local), so check each guess for the headers.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var] if _is_toolkit(os.environ[var]) else None
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(nvcc)),
                       os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    return next((c for c in candidates if _is_toolkit(c)), None)


# torch.utils.cpp_extension reads CUDA_HOME once, at import: settle it first.
_CUDA_TOOLKIT = _find_cuda_toolkit()
if _CUDA_TOOLKIT and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = _CUDA_TOOLKIT

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _build_cuda() -> bool:
    """Whether to build igcam_fast._C_cuda: IGCAM_FAST_BUILD_CUDA=0|1 decides; unset, only where it can run."""
    forced = os.environ.get("IGCAM_FAST_BUILD_CUDA")
    if forced not in (None, "", "0", "1"):
        raise RuntimeError(f"IGCAM_FAST_BUILD_CUDA must be 0 or 1, got {forced!r}")
    if forced == "1":
        if not (_CUDA_TOOLKIT and torch.version.cuda):
            raise RuntimeError("IGCAM_FAST_BUILD_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME) "
                               "or torch was built without CUDA")
        return True
    if forced == "0":
        return False
    can_build = bool(_CUDA_TOOLKIT and torch.version.cuda)
    if can_build and not torch.cuda.is_available():
        print("igcam_fast: no GPU visible, so the CUDA module igcam_fast._C_cuda is not built "
              "(IGCAM_FAST_BUILD_CUDA=1 builds it anyway)", file=sys.stderr)
        return False
    return can_build


def _nvidia_wheel_includes() -> list[str]:
    """Headers torch's CUDA headers need (cusparse.h, ...) that pip's nvidia-* wheels ship."""
    dirs = []
    for entry in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            for d in sorted(glob.glob(os.path.join(entry, pattern))):
                if os.path.isdir(d) and d not in dirs:
                    dirs.append(d)
    return dirs


def _arch_defines(arch_list: str) -> list[str]:
    """-D flags recording the architectures of TORCH_CUDA_ARCH_LIST in the CUDA module.

    "7.5;8.0;9.0+PTX" -> machine code 75, 80, 90 and PTX 90. An entry torch accepts but this
    does not parse (a name such as "Ampere") leaves the record empty: dispatch then says it
    cannot tell and relies on the module's runtime probe alone.
    """
    sm, ptx = [], []
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not entry:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)(\+PTX)?", entry.strip())  # "9.0a": not recorded
        if match is None:
            return []
        number = int(match.group(1)) * 10 + int(match.group(2))
        sm.append(number)
        if match.group(3):
            ptx.append(number)
    return [f"-DIGCAM_FAST_SM_ARCHS={','.join(map(str, sm))}",
            f"-DIGCAM_FAST_PTX_ARCHS={','.join(map(str, ptx))}"]


def _sources(pattern: str) -> list[str]:
    # Relative paths keep the build reproducible and ninja's dependency file short.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    debug = os.environ.get("IGCAM_FAST_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is header code: without -fopenmp it runs serially inside an extension.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and os.environ.get("IGCAM_FAST_OPENMP") != "0" else []
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx = opt + openmp + ["-fdiagnostics-color=always"]
    exts = [
        CppExtension(
            "igcam_fast._C",
            _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp"),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=openmp,
        )
    ]
    if _build_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        exts.append(
            CUDAExtension(
                "igcam_fast._C_cuda",
                _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
                include_dirs=include_dirs + _nvidia_wheel_includes(),
                extra_compile_args={
                    # host compiler only: nvcc would split the comma lists into separate -D flags
                    "cxx": opt + _arch_defines(os.environ["TORCH_CUDA_ARCH_LIST"]),
                    "nvcc": opt + ["-lineinfo", "--expt-relaxed-constexpr"],
                },
            ))
    return exts


class BuildExt(BuildExtension):
    """ninja build whose objects persist in ./build, so a rerun of pip install -e only relinks."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("use_ninja", True)
        super().__init__(*args, **kwargs)

    def finalize_options(self):
        super().finalize_options()
        # pip's editable builds otherwise compile in a fresh temporary folder every time.
        tag = f"{sys.implementation.cache_tag}-torch{torch.__version__.replace('+', '_')}"
        self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
)
