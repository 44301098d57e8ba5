"""Why integrate: a saturated unit, where Grad-CAM's map is empty and Integrated Grad-CAM's is not.

The model scores a picture by how bright its object is, through a unit that saturates,
``score = 1 − ReLU(1 − z)`` (it grows with z up to 1, then stays flat). A bright object drives z far
past 1, so at the input the score no longer changes with the activations: the gradient Grad-CAM
weights them by is exactly zero, and so is its map, although the object is what makes the score
high. Integrated Grad-CAM follows the path from a black picture to the input; on the first part of
it the unit is not yet saturated, the gradient is not zero, and the map shows the object. This is
the sensitivity argument of integrated gradients (Sundararajan et al., 2017) that the paper builds on.

:func:`saturation_example` computes it with the library's own engine; :func:`saturation_figure`
draws it (``make demo`` writes docs/why-integrated-gradcam.png).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from igcam_fast.core.preprocessing import attach_preprocessing

SIZE = 64
#: z = GAIN · mean activation; the object covers ~12 % of the picture, so z ≈ 4 at the input.
GAIN = 32.0


class SaturatedScorer(nn.Module):
    """(B, 3, 64, 64) pixels in [0, 1] -> (B, 2) scores; class 0 is ``1 − ReLU(1 − GAIN · mean(features))``.

    ``features`` (the target layer) is a fixed 1×1 convolution averaging the colour channels, then a
    ReLU: one (B, 1, 64, 64) activation map equal to the brightness. Class 1 is a constant 0.
    No randomness: every weight is set by hand.
    """

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.fill_(1 / 3)
        self.features = nn.Sequential(conv, nn.ReLU())
        attach_preprocessing(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=SIZE)

    def forward(self, x):
        z = GAIN * self.features(x).mean(dim=(1, 2, 3))
        score = 1 - torch.relu(1 - z)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def bright_object(size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: a black picture with one bright disc (the object) off centre."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 0.42 * size) ** 2 + (xx - 0.58 * size) ** 2 < (0.2 * size) ** 2
    picture = np.zeros((size, size, 3), np.uint8)
    picture[disc] = (250, 220, 90)
    return picture


def saturation_example() -> dict:
    """Grad-CAM and Integrated Grad-CAM (the default quadrature) of class 0 on :func:`bright_object`.

    Returns the picture (H, W, 3) uint8, both maps (H, W) float64 at input size, the score along the
    path alpha -> score(alpha · x), its gradient at the input, and the engine's quadrature settings.
    """
    from igcam_fast.core.engine import CamEngine

    model = SaturatedScorer().double().eval()
    picture = bright_object()
    x = torch.from_numpy(picture).permute(2, 0, 1)[None].double() / 255
    common = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), baseline="black")
    with CamEngine(model, "features", method="gradcam", **common) as grad_cam:
        gradcam_map = grad_cam.explain(x, [0]).maps[0]
    with CamEngine(model, "features", method="igcam", **common) as integrated:
        igcam_map = integrated.explain(x, [0]).maps[0]
        rule, steps = integrated.rule, integrated.steps
    alphas = torch.linspace(0, 1, 101, dtype=torch.float64)
    with torch.no_grad():
        scores = torch.stack([model(a * x)[0, 0] for a in alphas])
    x_leaf = x.clone().requires_grad_(True)
    model(x_leaf)[0, 0].backward()
    return dict(picture=picture, gradcam=gradcam_map.numpy(), igcam=igcam_map.numpy(), alphas=alphas.numpy(),
                scores=scores.numpy(), input_gradient_norm=float(x_leaf.grad.abs().sum()), rule=rule, steps=steps)


def saturation_figure(path: str | Path) -> Path:
    """Draw :func:`saturation_example` (picture, score along the path, both maps) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from igcam_fast.images.overlay import COLORMAP, scaled_to

    ex = saturation_example()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), gridspec_kw=dict(width_ratios=[1, 1.25, 1, 1], wspace=0.25))
    axes[0].imshow(ex["picture"])
    axes[0].set_title("input: a bright object", fontsize=13)
    ax = axes[1]
    ax.plot(ex["alphas"], ex["scores"], color="black", linewidth=2)
    flat = ex["alphas"][np.argmax(ex["scores"] >= 1 - 1e-12)]
    ax.axvspan(flat, 1, color="0.85")
    ax.text((flat + 1) / 2, 0.45, "saturated:\ngradient = 0", ha="center", fontsize=11)
    ax.set_xlabel("α along the path black → input", fontsize=11)
    ax.set_ylabel("class score  1 − ReLU(1 − z)", fontsize=11)
    ax.set_title("the score saturates before the input", fontsize=13)
    for ax, key, label in ((axes[2], "gradcam", "Grad-CAM\nempty: the gradient at the input is 0"),
                           (axes[3], "igcam", f"Integrated Grad-CAM\n({ex['rule']}, m = {ex['steps']}): the object")):
        m = ex[key]
        image = ax.imshow(scaled_to(m, *m.shape), cmap=COLORMAP, vmin=0, vmax=1)
        ax.contour(ex["picture"][..., 0] > 0, levels=[0.5], colors="white", linewidths=1.5)
        ax.set_title(label, fontsize=12)
        ax.set_xlabel(f"largest value: {m.max():.3g}  (white line: the object)", fontsize=10)
    for ax in (axes[0], axes[2], axes[3]):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=axes[3], fraction=0.046, pad=0.03)
    bar.set_label("map value (min-max scaled)", fontsize=10)
    fig.suptitle("Why integrate: where a unit saturates, Grad-CAM sees nothing; the path from black to the "
                 "input still finds the object", fontsize=14, y=1.04)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
