"""Checks before the GPU tests and benchmarks run: what the machine has, and a loud failure
(exit 1, the reason on one line) where something they need is missing — so that missing Triton
or an unbuilt CUDA extension can never pass as "all tests skipped".

    python -m bench.gpu_preflight [--device cuda] [--require triton,cuda-backend,triton-backend]

--device cpu runs the same checks against the CPU (the cpu and torch backends), to try the logic
on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

CHECKS = ("triton", "torchvision", "cuda-backend", "triton-backend")


def describe(device: torch.device) -> list[str]:
    lines = [f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA runtime {torch.version.cuda}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"device {props.name}, compute capability {props.major}.{props.minor}, "
                     f"{props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")
    else:
        lines.append(f"device cpu, {torch.get_num_threads()} threads")
    return lines


def problems(device: torch.device, required) -> list[str]:
    """What is missing among ``required`` (names from CHECKS), in words; empty: all there."""
    found = []
    if device.type == "cuda" and not torch.cuda.is_available():
        return ["torch sees no CUDA device (torch.cuda.is_available() is False)"]
    if "triton" in required and importlib.util.find_spec("triton") is None:
        found.append("triton is not importable: the Triton kernels cannot be tested; install the triton that "
                     "matches this torch (a wheel in .whl/)")
    if "torchvision" in required:
        try:
            import torchvision.models  # noqa: F401  (ResNet-50 and VGG16 of the gpu preset)
        except Exception as err:
            found.append(f"torchvision is not importable ({type(err).__name__}: {err}): the gpu preset's ResNet-50 "
                         f"and VGG16 need it; put a torchvision wheel built for torch {torch.__version__} in .whl/")
    backends = [name.removesuffix("-backend") for name in required if name.endswith("-backend")]
    if backends:
        from igcam_fast import ops

        for name in backends:
            if device.type != "cuda" and name in ("cuda", "triton"):
                name = "cpu"  # the CPU stand-in of a GPU backend, for a dry run
            try:
                why = ops.get_backend(name).reasons(device, [torch.float32])
            except Exception as err:  # an unknown name, an extension that fails to load
                why = [f"{type(err).__name__}: {err}"]
            if why:
                found.append(f"backend {name!r} cannot run on {device}: {'; '.join(why)}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--require", default="triton", help=f"comma-separated subset of {CHECKS}")
    args = ap.parse_args(argv)
    required = [r.strip() for r in args.require.split(",") if r.strip()]
    unknown = set(required) - set(CHECKS)
    if unknown:
        ap.error(f"unknown checks {sorted(unknown)}; choose from {CHECKS}")
    device = torch.device(args.device)
    missing = problems(device, required)
    if not missing:
        for line in describe(device):
            print(line)
        from igcam_fast import ops

        print(ops.explain_backends(device))
    for line in missing:
        print(f"gpu_preflight: MISSING: {line}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
