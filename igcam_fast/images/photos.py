"""Real photos available offline (scikit-image's sample data) with hand-measured object boxes,
and the image loading and preprocessing shared by the demo and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass
class Photo:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    boxes: list[tuple[int, int, int, int]]  # (x1, y1, x2, y2) in original pixels
    expected: str  # what the photo shows (for the reader; not used in scoring)


#: The photos of the demo: (skimage.data function, boxes, what is in the box).
BUNDLED = {
    "chelsea": ([(118, 75, 355, 285)], "cat face"),
    "coffee": ([(172, 15, 415, 305)], "cup of coffee"),
    "astronaut": ([(352, 0, 472, 272), (276, 344, 512, 512)], "shuttle model, held helmet"),
    "rocket": ([(300, 125, 340, 410)], "rocket"),
}


def bundled_photos(names=None) -> list[Photo]:
    """The bundled photos (all four unless ``names`` chooses)."""
    import skimage.data

    photos = []
    for name in names or BUNDLED:
        if name not in BUNDLED:
            raise ValueError(f"unknown bundled photo {name!r}; choose from {list(BUNDLED)}")
        boxes, expected = BUNDLED[name]
        image = np.asarray(getattr(skimage.data, name)())[..., :3]
        photos.append(Photo(name, image, boxes, expected))
    return photos


def save_bundled_photo(name: str, path: str | Path) -> Path:
    """Write one bundled photo (``chelsea``, ``coffee``, ...) to an image file; returns its path."""
    path = Path(path)
    Image.fromarray(bundled_photos([name])[0].image).save(path)
    return path


def load_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB.

    Raises FileNotFoundError for a missing file and ValueError (naming the file) for one that is
    not a readable image (empty, truncated, not an image format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not a readable image ({err})") from None


def model_input(image: np.ndarray, model: torch.nn.Module, size: int | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, S, S) input for ``model``, normalised the way the model says.

    The mean/std (and the input size S, unless ``size`` is given) are those recorded on the model
    by :func:`igcam_fast.core.preprocessing.attach_preprocessing`, as every model from
    :func:`igcam_fast.models.load_model` has them.
    """
    from igcam_fast.core.preprocessing import preprocessing_of

    pre = preprocessing_of(model)
    if pre is None:
        raise ValueError("the model carries no preprocessing: load it with igcam_fast.models.load_model, or "
                         "record it with igcam_fast.core.preprocessing.attach_preprocessing(model, mean, std, size)")
    size = size or pre.input_size
    if size is None:
        raise ValueError("the model's preprocessing has no input_size: pass size=")
    return to_input(image, size, pre.mean, pre.std)


def to_input(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) normalised model input (bilinear resize, no crop):
    (pixels / 255 − mean) / std per channel."""
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((pixels - mean) / std)[None]


def box_mask(boxes, original_hw, size_hw) -> torch.Tensor:
    """Union of boxes (original pixels) as a boolean (H, W) mask at the model's input size."""
    (oh, ow), (h, w) = original_hw, size_hw
    mask = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes:
        c1, c2 = int(round(x1 * w / ow)), int(round(x2 * w / ow))
        r1, r2 = int(round(y1 * h / oh)), int(round(y2 * h / oh))
        mask[r1:max(r2, r1 + 1), c1:max(c2, c1 + 1)] = True
    return mask


def energy_in_mask(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the map's (non-negative) energy inside the mask: the energy-based pointing game."""
    saliency = saliency.clamp(min=0).double()
    total = saliency.sum()
    return float((saliency * mask).sum() / total) if total > 0 else float("nan")
