"""The three fused ops at one shape on fixed random inputs, ready to call with a backend name:
what the kernels section of the suite and the pytest-benchmark micro-benchmarks
(bench/test_ops_bench.py) both time, with the bytes each call moves.
"""

from __future__ import annotations

import torch

from igcam_fast import ops

#: combine's path points per image in these cases, as the default's order of magnitude.
COMBINE_STEPS = 16


def images_of(op: str, shape) -> int:
    """How many images a case stands for: B of path_images and upsample, B·m / m of combine."""
    if op == "combine":
        return max(1, shape[0] // COMBINE_STEPS) if shape[0] % COMBINE_STEPS == 0 else 1
    return shape[0]


def op_case(op: str, shape, device, dtype=torch.float32):
    """(call(backend) -> None, bytes moved by one call) for ``op`` at ``shape``.

    path_images: (B, m, C, H, W); combine: (B·m, K, h, w) with m = 16 where B·m allows, else one
    image; upsample: (B, h, w, H, W). Outputs are allocated once and written in place (out=).
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    esize = torch.tensor([], dtype=dtype).element_size()
    if op == "path_images":
        B, m, Cc, H, W = shape
        x = torch.randn(B, Cc, H, W, generator=g).to(device, dtype)
        base = torch.randn(Cc, H, W, generator=g).to(device, dtype)
        alphas = torch.linspace(0.05, 1, m).to(device)
        out = torch.empty(B * m, Cc, H, W, device=device, dtype=dtype)
        nbytes = (x.numel() + base.numel() + out.numel()) * esize
        return (lambda be: ops.path_images(x, base, alphas, backend=be, out=out)), nbytes
    if op == "combine":
        N, K, h, w = shape
        m = COMBINE_STEPS if N % COMBINE_STEPS == 0 else N
        A = torch.randn(N, K, h, w, generator=g).to(device, dtype)
        G = torch.randn(N, K, h, w, generator=g).to(device, dtype)
        Ab = torch.randn(K, h, w, generator=g).to(device, dtype)
        sw = torch.full((m,), 1 / m, device=device)
        out = torch.empty(N // m, h, w, device=device, dtype=torch.float32)
        nbytes = (A.numel() + G.numel() + Ab.numel()) * esize + out.numel() * 4
        return (lambda be: ops.combine(A, G, None, Ab, sw, backend=be, out=out)), nbytes
    if op == "upsample":
        B, h, w, H, W = shape
        maps = torch.rand(B, h, w, generator=g).to(device, dtype)
        out = torch.empty(B, H, W, device=device, dtype=torch.float32)
        nbytes = maps.numel() * esize + out.numel() * 4
        return (lambda be: ops.upsample(maps, (H, W), backend=be, out=out)), nbytes
    raise ValueError(f"unknown op {op!r}: path_images, combine or upsample")


def copy_case(nbytes: int, device):
    """A device-to-device copy moving ``nbytes`` in total (half read, half written): the measured
    bandwidth the ops are judged against."""
    n = max(1, nbytes // 8)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)
