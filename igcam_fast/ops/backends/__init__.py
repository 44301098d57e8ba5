"""Backends of the ops: the interface (:mod:`.base`), dispatch (:mod:`.dispatch`) and the
implementations: ``torch`` (:mod:`.eager`), ``cpu`` and ``cuda`` (:mod:`.compiled`), ``triton``
(:mod:`.triton`). Importing this package registers all four; a backend that cannot run here
says why (``explain_backends``) instead of failing the import.
"""

from .base import OP_NAMES, Backend, OpCall
from .dispatch import (BACKEND_ENV, PRIORITY, backend_names, choose_backend, dispatch, explain_backends,
                       get_backend, recording, register_backend, unregister_backend)
from .eager import TorchBackend
from .compiled import CppBackend, CudaBackend
from .triton import TritonBackend

register_backend("torch", TorchBackend)
register_backend("cpu", CppBackend)
register_backend("cuda", CudaBackend)
register_backend("triton", TritonBackend)

__all__ = [
    "OP_NAMES", "Backend", "OpCall", "BACKEND_ENV", "PRIORITY", "backend_names", "choose_backend", "dispatch",
    "explain_backends", "get_backend", "recording", "register_backend", "unregister_backend",
    "TorchBackend", "CppBackend", "CudaBackend", "TritonBackend",
]
