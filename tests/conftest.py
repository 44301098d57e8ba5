"""Test configuration for the whole suite.

- Without a visible CUDA device, TRITON_INTERPRET=1 is set here, before anything imports
  triton (``@triton.jit`` and triton's own library read it at import), so the Triton kernels run
  in this process under the interpreter and count as the tests they are.
- ``needs_cuda`` tests skip where no NVIDIA GPU is visible.
- At the end, skipped tests are summed up by reason in one short block.
"""

import os
from collections import Counter

import pytest
import torch

NO_GPU_REASON = "needs an NVIDIA GPU; none is visible on this machine"

# (Were triton imported already, by a plugin say, the triton backend would report that as its
# reason and its tests would skip with it, in the summary below.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts = Counter(_skip_reason(report) for report in skipped)
    terminalreporter.section("skips by reason", sep="-")
    for reason, n in counts.most_common():
        terminalreporter.write_line(f"skipped {n}: {reason}")
