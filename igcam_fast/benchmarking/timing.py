"""Timing primitives shared by ``igcam-fast bench`` and the repository's benchmark suite (bench/):
interleaved repeats, medians and inter-quartile ranges, device synchronisation, CUDA-event and
``triton.testing.do_bench`` timing, peak memory, and the description of the machine that every
result carries.

Timing rules: on the CPU ``time.perf_counter`` around the call; on a GPU CUDA events around the
call and a synchronisation before reading them, never a bare host clock. Providers of one
comparison are interleaved (round-robin, the order rotated every round) so that drift of the
machine (other processes, clocks, thermal state) spreads over all of them; the median is reported
with the inter-quartile range.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

#: The folder above the package: a git checkout when igcam_fast runs from its repository.
_CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass
class Stats:
    """Milliseconds of the timed repeats of one provider."""

    samples_ms: list[float]
    peak_mem_mb: float | None = None
    mem_method: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def q1_ms(self) -> float:
        return _quantile(self.samples_ms, 0.25)

    @property
    def q3_ms(self) -> float:
        return _quantile(self.samples_ms, 0.75)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms


def _quantile(values, q):
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Provider:
    """One thing to time: a zero-argument callable and how often to run it."""

    name: str
    fn: Callable[[], object]
    repeats: int | None = None  # None: the group's repeats (slow comparators run fewer)
    warmup: int | None = None
    meta: dict = field(default_factory=dict)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    """Milliseconds of one call of fn."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


# ---- peak memory -------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc malloc_trim), so that a region that reuses
    buffers freed earlier shows up as RSS growth again instead of hiding in the allocator."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) where Linux allows it (clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a region above what was in use when it began, in MiB.

    GPU: torch.cuda.max_memory_allocated (the caching allocator's tensors). CPU: the process's
    peak resident set (VmHWM after resetting it) minus the resident set at the start, after
    returning the allocator's free pages to the OS (malloc_trim) — an approximation that also
    counts pages touched by the libraries (oneDNN scratch, weight reorders).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float | None = None
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            _release_free_heap()
            self._reset = _reset_rss_peak()
            self._base = _proc_status_kb("VmRSS")
            self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "RSS peak delta (VmHWM)" if self._reset and self._base is not None else "ru_maxrss delta"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self._reset and self._base is not None:
            peak = _proc_status_kb("VmHWM")
            self.mb = max(0, (peak or 0) - self._base) / 1024
        else:  # a lower bound: growth of the lifetime peak only
            self.mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss0) / 1024
        return False


# ---- interleaved timing -----------------------------------------------------------------------


def measure(providers: list[Provider], device: torch.device, *, repeats: int, warmup: int = 1,
            memory: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Stats]:
    """Time every provider ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    The first timed call of each provider also records its peak memory (outside the timed
    region on the GPU; on the CPU reading /proc costs microseconds against calls of milliseconds).
    ``progress(name)`` is called after every call, warm-up included (:func:`count_calls` says how
    many there will be), so that a caller can show a progress bar.
    """
    device = torch.device(device)
    tick = progress or (lambda name: None)
    for p in providers:
        for _ in range(p.warmup if p.warmup is not None else warmup):
            p.fn()
            tick(p.name)
    synchronize(device)
    samples: dict[str, list[float]] = {p.name: [] for p in providers}
    mem: dict[str, tuple[float | None, str]] = {}
    rounds = max((p.repeats or repeats) for p in providers) if providers else 0
    for r in range(rounds):
        k = r % max(1, len(providers))
        for p in providers[k:] + providers[:k]:  # rotate who goes first
            if r >= (p.repeats or repeats):
                continue
            if memory and p.name not in mem:
                with PeakMemory(device) as pm:
                    ms = time_call(p.fn, device)
                mem[p.name] = (pm.mb, pm.method)
            else:
                ms = time_call(p.fn, device)
            samples[p.name].append(ms)
            tick(p.name)
    return {p.name: Stats(samples[p.name], *mem.get(p.name, (None, ""))) for p in providers}


def count_calls(providers: list[Provider], *, repeats: int, warmup: int = 1) -> int:
    """How many calls :func:`measure` makes with these arguments (warm-up included)."""
    return sum((p.warmup if p.warmup is not None else warmup) + (p.repeats or repeats) for p in providers)


def do_bench_ms(fn, device: torch.device, *, rep_ms: int = 100, repeats: int = 20) -> Stats:
    """Micro-benchmark of a short op: triton.testing.do_bench on a GPU, perf_counter on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            q = do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.25, 0.5, 0.75])
            # Stats from the three quantiles: median and IQR survive, which is what we report.
            return Stats([float(q[0]), float(q[1]), float(q[2])])
        except ImportError:
            pass
        for _ in range(3):
            fn()
        return Stats([time_call(fn, device) for _ in range(repeats)])
    fn()
    return Stats([time_call(fn, device) for _ in range(repeats)])


# ---- the machine --------------------------------------------------------------------------------


def git_sha() -> str | None:
    """The commit igcam_fast runs from (``+dirty`` with uncommitted changes), None outside a checkout."""
    if not (_CHECKOUT / ".git").exists():  # an installed package: no repository to ask
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=_CHECKOUT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_CHECKOUT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version_of(distribution: str) -> str | None:
    """An installed package's version without importing it (importing triton would fix its
    interpreter mode for the rest of the process)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """What every result names: the device, the versions, threads, the git sha, the date."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        extra = dict(gpu_memory_gb=round(props.total_memory / 2**30, 1), capability="%d.%d" % (props.major, props.minor),
                     cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                     tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        name = cpu_name()
        extra = {}
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return dict(device=name, device_type=device.type, loadavg_at_start=load, torch=torch.__version__,
                triton=_version_of("triton"), torchvision=_version_of("torchvision"),
                igcam_fast=_version_of("igcam_fast"),
                python=platform.python_version(), threads=torch.get_num_threads(), cpus=os.cpu_count(),
                git_sha=git_sha(), date=_dt.date.today().isoformat(),
                time_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **extra)


def device_slug(env: dict) -> str:
    if env["device_type"] == "cpu":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in env["device"].lower()).strip("-")
