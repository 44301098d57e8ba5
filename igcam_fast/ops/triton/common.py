"""What the Triton kernels of the three ops share: the launcher, the grid helpers, the device
guard and the ``torch.library.triton_op`` registration with its eager shortcut.

Whether the kernels run compiled or under Triton's interpreter is fixed when this module is
imported (``@triton.jit`` reads TRITON_INTERPRET when it decorates): see :data:`INTERPRETED`.

Each host op is a ``torch.library.triton_op`` (``igcam_fast_triton::<op>``, mutating ``out``)
whose launches go through ``wrap_triton``, so ``torch.compile`` traces into the kernels. The host
code reads only shapes and strides (no ``.data_ptr()``, no ``.item()``) and is its own fake kernel.
:func:`run` (what the backend calls) skips the op dispatcher in plain eager mode only.
"""

import contextlib
import contextvars

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

#: Programs to aim for: a few waves on a 132-SM H100, so small problems still fill the GPU.
TARGET_PROGRAMS = 4 * 132

#: The largest grid along axes 1 and 2 (CUDA's limit); kernels loop over rows past it.
MAX_GRID_ROWS = 65535


@triton.jit
def _probe_kernel():
    pass


#: True when the kernels were built under TRITON_INTERPRET=1 (they then take CPU tensors).
INTERPRETED = not isinstance(_probe_kernel, triton.runtime.jit.JITFunction)

# Set while an eager call runs the host code directly (see `run`): launches then skip the
# wrap_triton machinery, which only tracing needs.
_DIRECT = contextvars.ContextVar("igcam_fast_triton_direct", default=False)


def launcher(kernel):
    """The kernel, wrapped for tracing unless the host code runs directly in eager mode."""
    if _DIRECT.get():
        return kernel
    try:
        return wrap_triton(kernel)
    except RuntimeError:  # an interpreted kernel on a torch that does not know them
        return kernel


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def row_programs(rows: int) -> int:
    """Programs along a row axis (1 or 2): every row when the grid allows, else the kernel's
    loop ``for row in range(program_id, rows, num_programs)`` covers the rest."""
    return max(1, min(int(rows), MAX_GRID_ROWS))


def device_guard(t: torch.Tensor):
    """Make t's GPU current for the launches (a tensor on cuda:1 while cuda:0 is current must
    launch on cuda:1). Plain tensors only: while tracing, the compiled code guards itself."""
    if t.device.type == "cuda" and type(t) is torch.Tensor:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@triton.jit
def pixel_offsets(p, W_img, s_h, s_w, HW_MERGED: tl.constexpr):
    """Offset of flat pixel p = i·w + j; one multiply when (h, w) collapse to one stride."""
    if HW_MERGED:
        return p.to(tl.int64) * s_w
    else:
        return (p // W_img).to(tl.int64) * s_h + (p % W_img).to(tl.int64) * s_w


_HOST: dict = {}
_OPS: dict = {}


def register(name: str, host):
    """Register ``host`` (out= form) as ``torch.ops.igcam_fast_triton.<name>``; returns the op."""
    op = triton_op(f"igcam_fast_triton::{name}", mutates_args={"out"})(host)
    _HOST[name] = host
    _OPS[name] = op
    return op


def _plain_eager(args) -> bool:
    """No tracing, no modes, plain tensors: nothing would see the op, so skip the dispatcher."""
    return (not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor)))


def run(name: str, *args) -> None:
    """Run op ``name`` (out= form): straight to the host code in plain eager mode (the custom-op
    dispatcher costs tens of microseconds a call, as much as a small kernel), else through
    ``torch.ops.igcam_fast_triton.<name>`` so that torch.compile, export and modes see it."""
    if _plain_eager(args):
        token = _DIRECT.set(True)
        try:
            _HOST[name](*args)
        finally:
            _DIRECT.reset(token)
    else:
        _OPS[name](*args)
