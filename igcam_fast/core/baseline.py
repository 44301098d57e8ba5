"""The baseline image x' and its features A' = A^l(x').

Two concerns live here:

* :func:`resolve_baseline` turns what the user gave as ``baseline`` into one tensor in
  model-input space, once per call: (C, H, W) when it is shared by every image of the batch,
  (B, C, H, W) when each image has its own.
* :class:`BaselineFeatureCache` keeps A' of shared baselines between calls. A' does not depend on
  the input image, so for a fixed model, layer, input size and baseline it is computed once and
  reused — but only while the weights are the ones it was computed with. Whether they are is
  checked on every lookup by :class:`WeightsFingerprint`, which does not trust the autograd
  version counters alone (``param.data.mul_()``, ``vector_to_parameters``, a swapped submodule or
  an EMA update through ``.data`` leave them unchanged).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

BASELINE_NAMES = ("black", "zeros")


@dataclass
class Baseline:
    """x' for one call: ``image`` is (C, H, W) when shared, (B, C, H, W) per image.

    ``cache_name`` is the name of a named baseline ("black", "zeros"), whose features may be cached;
    None for tensors and callables (their features are computed in each call).
    """

    image: torch.Tensor
    cache_name: str | None

    @property
    def shared(self) -> bool:
        return self.image.dim() == 3

    def rows(self, images: slice) -> torch.Tensor:
        """The baseline of the images in ``images``: (C, H, W) shared, or (n, C, H, W)."""
        return self.image if self.shared else self.image[images]


def resolve_baseline(spec, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Baseline:
    """x' in the space and on the device of x (B, C, H, W).

    spec: "black" (black pixels, (0 − mean)/std), "zeros", a tensor (C, H, W), (1, C, H, W) or
    (B, C, H, W), or a callable ``x -> tensor`` of one of those shapes.
    """
    B, C, H, W = x.shape
    given = spec(x) if callable(spec) and not isinstance(spec, torch.Tensor) else spec
    if isinstance(given, str):
        if given == "zeros":
            return Baseline(torch.zeros(C, H, W, dtype=x.dtype, device=x.device), "zeros")
        if given == "black":
            if mean.numel() != C:
                raise ValueError(f"baseline='black' needs mean/std with one value per channel of x ({C}), got "
                                 f"{mean.numel()}: pass the model's mean= and std= (or baseline='zeros')")
            black = ((0.0 - mean) / std).to(x.device, x.dtype)
            return Baseline(black[:, None, None].expand(C, H, W).contiguous(), "black")
        raise ValueError(f"baseline must be 'black', 'zeros', a tensor or a callable, got {given!r}")
    if not isinstance(given, torch.Tensor):
        what = "the baseline callable returned" if given is not spec else "baseline must be"
        raise TypeError(f"{what} 'black', 'zeros' or a tensor, got {type(given).__name__}")
    if given.dim() == 4 and given.shape[0] == 1:
        given = given[0]
    if tuple(given.shape) not in ((C, H, W), (B, C, H, W)):
        raise ValueError(f"baseline must have shape {(C, H, W)} or {(B, C, H, W)} to match x, got {tuple(given.shape)}")
    if not given.is_floating_point():
        raise TypeError(f"baseline must be a floating-point tensor, got {given.dtype}")
    if given.device != x.device:
        raise ValueError(f"baseline is on {given.device} but x is on {x.device}: move it with baseline.to(x.device)")
    if not bool(torch.isfinite(given).all()):
        raise ValueError("baseline contains NaN or infinite values")
    return Baseline(given.to(x.dtype), None)


# ---- the weights a cached A' was computed with -----------------------------------------------------

#: Elements of each parameter or buffer that the fingerprint reads (evenly spaced).
_SAMPLES_PER_TENSOR = 8


def _is_dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill a block of its storage without gaps (any dimension order)."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _sample_view(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of evenly spaced elements of t, in storage order (never a copy: it must see
    later in-place edits). A tensor with gaps in its storage contributes its first element."""
    t = t.detach()
    if not _is_dense(t):
        return t[(0,) * t.dim()].reshape(1)
    step = max(1, t.numel() // _SAMPLES_PER_TENSOR)
    return t.as_strided(((t.numel() + step - 1) // step,), (step,), t.storage_offset())


class WeightsFingerprint:
    """What the weights of a model are, cheaply: checked against the model on every cache lookup.

    Identity (which tensors, their storage, shape, dtype, device and autograd version) catches an
    optimiser step, ``load_state_dict``, ``vector_to_parameters`` and a swapped submodule; the values
    of a few evenly spaced elements of every tensor — read through views made once, so the check is
    one ``torch.cat`` and one comparison — catch in-place edits through ``.data`` (``mul_``, an EMA,
    a BatchNorm ``running_var.data`` edit). What it cannot see: an edit through ``.data`` that leaves
    every sampled element unchanged (a single element changed by hand); call
    :func:`clear_baseline_features` after such surgery.
    """

    def __init__(self, model: nn.Module):
        self._identity = self._identity_of(model)
        tensors = self._tensors(model)
        views: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            if t.numel():
                views.setdefault(t.dtype, []).append(_sample_view(t))
        self._views = list(views.values())  # one group per dtype: one torch.cat each
        self._values = self._sample()

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return list(itertools.chain(model.parameters(), model.buffers()))

    @classmethod
    def _identity_of(cls, model: nn.Module) -> tuple:
        return tuple((id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)
                     for t in cls._tensors(model))

    def _sample(self) -> list[torch.Tensor]:
        return [torch.cat(group) for group in self._views]

    def matches(self, model: nn.Module) -> bool:
        if self._identity_of(model) != self._identity:
            return False
        # torch.equal treats NaN as unequal to itself: a NaN weight makes every lookup recompute,
        # which is slow but never wrong.
        return all(torch.equal(now, then) for now, then in zip(self._sample(), self._values))


class BaselineFeatureCache:
    """A' per model: a few entries per model, each valid while the model's weights are unchanged.

    Keyed weakly by the model (a freed model takes its entries with it), then by everything else A'
    depends on (layer, reshape, baseline, normalisation, input shape, dtype, device, precision and
    memory format). Thread-safe.
    """

    def __init__(self, entries_per_model: int = 8):
        self.entries_per_model = entries_per_model
        self._by_model: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, model: nn.Module, key: tuple, compute) -> torch.Tensor:
        """A' for ``key``: the cached one if the weights still match, else ``compute()`` (and cached)."""
        with self._lock:
            entry = self._by_model.get(model, {}).get(key)
        if entry is not None and entry[0].matches(model):
            return entry[1]
        fingerprint = WeightsFingerprint(model)
        features = compute()
        with self._lock:
            per_model = self._by_model.setdefault(model, {})
            per_model.pop(key, None)
            if len(per_model) >= self.entries_per_model:
                per_model.pop(next(iter(per_model)))
            per_model[key] = (fingerprint, features)
        return features

    def holds(self, model: nn.Module) -> bool:
        """Whether any A' of ``model`` is cached."""
        with self._lock:
            return bool(self._by_model.get(model))

    def clear(self, model: nn.Module | None = None) -> None:
        """Forget the cached A' of ``model`` (of every model when None)."""
        with self._lock:
            if model is None:
                self._by_model.clear()
            else:
                self._by_model.pop(model, None)


#: The cache every engine shares (so the one-shot functions reuse A' too).
BASELINE_FEATURES = BaselineFeatureCache()


def clear_baseline_features(model: nn.Module | None = None) -> None:
    """Forget cached baseline features A' (of ``model``, or of every model)."""
    BASELINE_FEATURES.clear(model)
