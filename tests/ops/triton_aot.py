"""Compile the Triton kernels of igcam_fast.ops.triton for a GPU target without a GPU.

    python tests/ops/triton_aot.py [capability, default 90]

The interpreter (which the in-process tests use) accepts code the compiler rejects; this runs
every kernel through Triton's real compiler, to PTX and (with the bundled ptxas) to a cubin,
once per branch of its constexpr switches. Run in a process without TRITON_INTERPRET, which
test_triton.py does. Prints "compiled N kernel variants".
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("triton_aot.py needs TRITON_INTERPRET unset: the interpreter replaces the compiler")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from igcam_fast.ops.triton import combine as C  # noqa: E402
from igcam_fast.ops.triton import path_images as P  # noqa: E402
from igcam_fast.ops.triton import upsample as U  # noqa: E402

FLOAT_SCALARS = {"scale_h", "scale_w"}
TARGET = GPUTarget("cuda", int(sys.argv[1]) if len(sys.argv) > 1 else 90, 32)


def compile_kernel(kernel, constexprs, pointer_types=None):
    """Compile one specialisation; pointers default to fp32, batch/row strides to int64."""
    pointer_types = pointer_types or {}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, "*fp32")
        elif name in FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i64" if name.endswith(("_sb", "_sn")) else "i32"
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=TARGET)
    assert compiled.asm["ptx"] and compiled.asm["cubin"]


VARIANTS = [
    (P._path_images_kernel, dict(NORMALIZE=False, X_FLAT=True, BASE_FLAT=True, OUT_FLAT=True, BLOCK=1024),
     {"x_ptr": "*fp16", "base_ptr": "*fp16", "out_ptr": "*fp16"}),
    (P._path_images_kernel, dict(NORMALIZE=True, X_FLAT=False, BASE_FLAT=False, OUT_FLAT=False, BLOCK=2048),
     {"x_ptr": "*bf16", "base_ptr": "*bf16", "out_ptr": "*fp32"}),
    (C._combine_weights_kernel, dict(WEIGHT_MODE=0, HW_MERGED=True, BLOCK_K=8, BLOCK_P=256), None),
    (C._combine_weights_kernel, dict(WEIGHT_MODE=1, HW_MERGED=False, BLOCK_K=64, BLOCK_P=32),
     {"a_ptr": "*bf16", "g_ptr": "*bf16"}),
    (C._combine_partial_kernel, dict(WEIGHT_MODE=0, FUSED_WEIGHTS=True, HAS_BASE=True, HW_MERGED=True,
                                     BLOCK_K=64, BLOCK_P=64), {"a_ptr": "*fp16", "g_ptr": "*fp16", "base_ptr": "*fp16"}),
    (C._combine_partial_kernel, dict(WEIGHT_MODE=1, FUSED_WEIGHTS=True, HAS_BASE=False, HW_MERGED=False,
                                     BLOCK_K=8, BLOCK_P=512), None),
    (C._combine_partial_kernel, dict(WEIGHT_MODE=2, FUSED_WEIGHTS=False, HAS_BASE=True, HW_MERGED=False,
                                     BLOCK_K=4, BLOCK_P=1024), {"a_ptr": "*bf16", "base_ptr": "*bf16"}),
    (C._combine_finish_kernel, dict(RELU=True, BLOCK_T=4, BLOCK_S=8, BLOCK_P=128), None),
    (C._combine_finish_kernel, dict(RELU=False, BLOCK_T=1, BLOCK_S=256, BLOCK_P=16), None),
    (U._upsample_kernel, dict(NORMALIZE=False, BLOCK=1024), {"maps_ptr": "*fp16"}),
    (U._upsample_kernel, dict(NORMALIZE=True, BLOCK=4096), None),
]

if __name__ == "__main__":
    for kernel, constexprs, pointer_types in VARIANTS:
        compile_kernel(kernel, constexprs, pointer_types)
    print(f"compiled {len(VARIANTS)} kernel variants for sm_{TARGET.arch}")
