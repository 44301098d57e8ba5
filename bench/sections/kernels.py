"""Section "kernels": the three fused ops per usable backend at the preset's shapes, each beside
the measured bandwidth of a device copy of the same bytes (and the peak copy bandwidth of a large
copy), with the speed-up over the eager ``torch`` backend.
"""

from __future__ import annotations

from igcam_fast.benchmarking.timing import do_bench_ms

from .. import comparators as C
from ..common import Recorder, first_line
from ..op_cases import copy_case, images_of, op_case
from ..presets import Preset


def run(p: Preset, device, rec: Recorder, models: dict | None = None):
    usable, unusable = C.usable_backends(device)
    rec.log(f"[kernels] backends {usable}")
    nbytes = 2 * p.copy_peak_mib * 2**20  # read + written
    big = do_bench_ms(copy_case(nbytes, device), device, repeats=p.kernel_repeats)
    peak_gbps = nbytes / (big.median_ms / 1e3) / 1e9
    rec.add("kernels", stats=big, op="copy", shape=f"{p.copy_peak_mib} MiB -> {p.copy_peak_mib} MiB",
            backend="torch copy_", role="copy_peak", provider="device copy", gbps=peak_gbps)
    for op, shapes in p.kernel_shapes.items():
        for shape in shapes:
            call, nbytes = op_case(op, shape, device)
            copy = do_bench_ms(copy_case(nbytes, device), device, repeats=p.kernel_repeats)
            copy_gbps = nbytes / (copy.median_ms / 1e3) / 1e9
            results = {}
            for be in usable:
                try:
                    call(be)
                    results[be] = do_bench_ms(lambda: call(be), device, repeats=p.kernel_repeats)
                except Exception as err:
                    rec.skip(f"kernel {op} {shape} backend {be}", first_line(err))
            torch_ms = results["torch"].median_ms if "torch" in results else None
            for be, st in results.items():
                gbps = nbytes / (st.median_ms / 1e3) / 1e9
                rec.add("kernels", stats=st, op=op, shape="x".join(map(str, shape)), images=images_of(op, shape),
                        backend=be, role="kernel", provider=f"{op} [{be}]", bytes=nbytes, gbps=gbps,
                        copy_gbps_same_bytes=copy_gbps, copy_gbps_peak=peak_gbps, share_of_copy=gbps / copy_gbps,
                        speedup_vs_torch=(torch_ms / st.median_ms) if torch_ms else None)
            rec.checkpoint()
