"""The input normalisation a model expects, carried by the model itself.

The "black" baseline is black *pixels* in model-input space, (0 − mean) / std: it is only right
when the engine knows the model's own mean and std. A model built by :mod:`igcam_fast.models`
carries them (``attach_preprocessing``); the engine and every command read them from there
(``preprocessing_of``), and refuse a conflicting ``mean``/``std`` given by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# An attribute in the module's __dict__: survives copy.deepcopy and .to(), not part of state_dict.
_ATTRIBUTE = "_igcam_fast_preprocessing"


@dataclass(frozen=True)
class Preprocessing:
    """x_model = (x_pixels − mean) / std per channel, on pixels scaled to [0, 1]; square input_size."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None = None

    def __post_init__(self):
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std must have one value per channel, got {len(mean)} and {len(std)}")
        if any(s == 0 for s in std):
            raise ValueError("std must not contain zeros")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


def attach_preprocessing(model: nn.Module, mean, std, input_size: int | None = None) -> nn.Module:
    """Record on ``model`` the normalisation its inputs need; returns the model."""
    setattr(model, _ATTRIBUTE, Preprocessing(tuple(mean), tuple(std), input_size))
    return model


def preprocessing_of(model: nn.Module) -> Preprocessing | None:
    """The normalisation recorded on ``model`` by :func:`attach_preprocessing`, or None."""
    found = getattr(model, _ATTRIBUTE, None)
    return found if isinstance(found, Preprocessing) else None
