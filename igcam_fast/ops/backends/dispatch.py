"""Which backend runs an op, and a record of what ran.

Dispatch walks :data:`PRIORITY` for the tensors' device and takes the first backend with no
reasons against the call; a backend forced by the caller (``backend=``) or by
``IGCAM_FAST_BACKEND`` either runs or raises with its reasons. Nothing falls back silently.
:func:`recording` collects {op: backend} for every op dispatched inside it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Optional

import torch

from .base import OP_NAMES, Backend, OpCall

#: Order in which backends are tried for tensors on each device type (the one list of names).
PRIORITY = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}

BACKEND_ENV = "IGCAM_FAST_BACKEND"

_BUILT: dict[str, Backend] = {}
_FACTORIES: dict[str, Callable[[], Backend]] = {}
_RECORDS: contextvars.ContextVar[tuple] = contextvars.ContextVar("igcam_fast_op_records", default=())
#: (backend, device, dtypes, op) -> the backend's static reasons (see Backend.static_reasons).
_STATIC_REASONS: dict[tuple, tuple[str, ...]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Register a backend factory; it is built on first use (so importing stays cheap)."""
    _FACTORIES[name] = factory
    _BUILT.pop(name, None)
    _STATIC_REASONS.clear()


def unregister_backend(name: str) -> None:
    """Remove a registered backend (tests register temporary ones)."""
    _FACTORIES.pop(name, None)
    _BUILT.pop(name, None)
    _STATIC_REASONS.clear()


def get_backend(name: str) -> Backend:
    if name not in _BUILT:
        if name not in _FACTORIES:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_FACTORIES))}")
        _BUILT[name] = _FACTORIES[name]()
    return _BUILT[name]


def backend_names() -> list[str]:
    """Every registered backend, usable here or not."""
    return list(_FACTORIES)


def _reasons(backend: Backend, device: torch.device, dtypes: frozenset, call: Optional[OpCall]) -> list[str]:
    """backend.reasons(device, dtypes, call), with the static part looked up once per process."""
    key = (backend.name, device, dtypes, call.op if call is not None else None)
    static = _STATIC_REASONS.get(key)
    if static is None:
        static = _STATIC_REASONS[key] = tuple(backend.static_reasons(device, dtypes, key[3]))
    return [*static, *backend.call_reasons(call)] if call is not None else list(static)


def choose_backend(device: torch.device, dtypes, backend: Optional[str] = None,
                   call: Optional[OpCall] = None) -> Backend:
    """The backend that runs an op on tensors of these dtypes on this device (and, with
    ``call``, that can take that call).

    ``backend`` (or the IGCAM_FAST_BACKEND environment variable when it is None) forces one;
    a forced backend that cannot take the input raises ValueError with its reasons.
    """
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if not isinstance(dtypes, frozenset):
        dtypes = frozenset(dtypes)
    what = call.op if call is not None else "this op"
    forced = backend or os.environ.get(BACKEND_ENV) or None
    if forced and forced != "auto":
        chosen = get_backend(forced)
        why = _reasons(chosen, device, dtypes, call)
        if why:
            source = "backend=" if backend else f"{BACKEND_ENV}="
            raise ValueError(f"{source}{forced!r} cannot run {what}: {'; '.join(why)}")
        return chosen
    all_reasons = []
    for name in PRIORITY.get(device.type, ("torch",)):
        if name not in _FACTORIES:
            all_reasons.append(f"{name}: not registered")
            continue
        candidate = get_backend(name)
        why = _reasons(candidate, device, dtypes, call)
        if not why:
            return candidate
        all_reasons.append(f"{name}: {'; '.join(why)}")
    raise ValueError(f"no backend can run {what} on {device} with dtypes "
                     f"{sorted(str(d) for d in dtypes)}: " + " | ".join(all_reasons))


@contextlib.contextmanager
def recording():
    """Collect {op name: backend name} for every op dispatched inside the block.

        with igcam_fast.ops.recording() as ran:
            ...
        ran  # {"path_images": "cpu", "combine": "cpu", "upsample": "cpu"}

    An op that ran on two backends inside one block (two dtypes, say) records both, "a+b".
    Blocks nest: each one records what ran inside it.
    """
    record: dict[str, str] = {}
    token = _RECORDS.set(_RECORDS.get() + (record,))
    try:
        yield record
    finally:
        _RECORDS.reset(token)


def _note(op: str, backend: str) -> None:
    for record in _RECORDS.get():
        seen = record.get(op)
        if seen is None:
            record[op] = backend
        elif backend not in seen.split("+"):
            record[op] = "+".join(sorted(seen.split("+") + [backend]))


def dispatch(call: OpCall, backend: Optional[str], *args) -> str:
    """Run ``call.op`` with ``args`` on the chosen backend; returns the backend's name."""
    chosen = choose_backend(call.device, call.dtypes, backend, call)
    getattr(chosen, call.op)(*args)
    _note(call.op, chosen.name)
    return chosen.name


def explain_backends(device="cpu", dtype=torch.float32) -> str:
    """A human-readable account of which backend would run each op on ``device`` and why."""
    device = torch.device(device)
    lines = [f"ops on {device} {str(dtype).replace('torch.', '')}:"]
    for op in OP_NAMES:
        try:
            chosen = choose_backend(device, [dtype], call=OpCall(op, device, frozenset([dtype]))).name
        except ValueError as err:
            chosen = f"none ({err})"
        lines.append(f"  {op:12s} {chosen}")
    lines.append("backends:")
    for name in backend_names():
        why = get_backend(name).reasons(device, [dtype])
        lines.append(f"  {name:7s} {'usable' if not why else 'not usable: ' + '; '.join(why)}")
    return "\n".join(lines)
