"""Progress for people: a tqdm bar on a terminal, periodic plain lines in batch logs."""

from __future__ import annotations

import datetime
import math
import sys
import time


def log(msg: str, world=None, all_ranks: bool = False) -> None:
    """One line on stderr (rank 0 only unless all_ranks; prefixed with the rank under torchrun)."""
    if world is not None and world.rank != 0 and not all_ranks:
        return
    prefix = f"[rank {world.rank}] " if world is not None and world.size > 1 else ""
    try:
        from tqdm import tqdm

        tqdm.write(f"{prefix}{msg}", file=sys.stderr)
    except Exception:  # tqdm missing, or a stream it cannot write to
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)


class Progress:
    """tqdm on a terminal (rank 0); otherwise a line every ``every`` seconds and at the end, every rank."""

    def __init__(self, total: int, world, every: float):
        self.total, self.world, self.every = total, world, every
        self.done = self.failed = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and world.rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.05, desc="explain")

    def update(self, n: int, failed: int) -> None:
        self.done += n
        self.failed += failed
        if self.bar is not None:
            self.bar.update(n)
            if failed:
                self.bar.set_postfix(unreadable=self.failed)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = str(datetime.timedelta(seconds=int(eta))) if math.isfinite(eta) else "?"
            log(f"{self.done}/{self.total} images ({100 * self.done / max(self.total, 1):.1f} %), {rate:.1f} images/s, "
                f"ETA {eta_s}, {self.failed} unreadable", self.world, all_ranks=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
