"""Triton kernels of the three ops, one module each, registered as ``torch.ops.igcam_fast_triton.*``.

Imported lazily by :mod:`igcam_fast.ops.backends.triton` on first use, because importing triton
is slow. See :mod:`.common` for the registration and the interpreter switch.
"""

from . import combine, path_images, upsample  # noqa: F401  (each registers its op)
from .common import INTERPRETED, run  # noqa: F401
