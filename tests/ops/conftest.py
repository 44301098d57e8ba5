"""Fixtures of the op tests (the shared check itself is in op_checks.py)."""

from __future__ import annotations

import os

import pytest

import igcam_fast.ops as ops

from op_checks import WORST_ERRORS


@pytest.fixture
def temporary_backend():
    """register(name, factory) for the test's duration: the backend is removed afterwards."""
    names = []

    def register(name, factory):
        ops.register_backend(name, factory)
        names.append(name)
        return ops.get_backend(name)

    yield register
    for name in names:
        ops.unregister_backend(name)


@pytest.fixture(scope="session", autouse=True)
def _report_worst_errors():
    """With IGCAM_FAST_REPORT_ERRORS=1: the worst error per backend, input dtypes and op."""
    yield
    if os.environ.get("IGCAM_FAST_REPORT_ERRORS") == "1" and WORST_ERRORS:
        print("\nworst scaled errors (backend, input dtypes, op):")
        for key, err in sorted(WORST_ERRORS.items()):
            print(f"  {key[0]:7s} {'+'.join(key[1]):18s} {key[2]:12s} {err:.3g}")
