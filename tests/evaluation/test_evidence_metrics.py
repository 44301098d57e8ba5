"""AUC of known curves, the paired statistics and the model-independent baseline maps."""

import math

import pytest
import torch
from torch import nn

from igcam_fast.evaluation import evidence as E
from igcam_fast.evaluation import metrics as M
from igcam_fast.evaluation.statistics import describe, paired_difference


def test_curve_auc_of_known_curves():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    curves = torch.stack([torch.full((11,), 0.3, dtype=torch.float64), 1 - s, s ** 2])
    got = M.curve_auc(curves)
    assert got[0].item() == pytest.approx(0.3)
    assert got[1].item() == pytest.approx(0.5)
    # trapezoid rule on s² with 10 steps: 1/3 + h²/6 = 1/3 + 0.01/6
    assert got[2].item() == pytest.approx(1 / 3 + 0.01 / 6)
    with pytest.raises(ValueError, match="S >= 2"):
        M.curve_auc(torch.zeros(2, 1))


def test_describe_and_paired_difference():
    d = describe(torch.tensor([1.0, 2.0, 3.0, math.nan]), scale=10)
    assert d["mean"] == pytest.approx(20) and d["std"] == pytest.approx(10) and d["n"] == 3 and d["nan"] == 1
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    b = a - torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])  # every difference positive
    p = paired_difference(a, b)
    assert p["mean_diff"] == pytest.approx(1.75) and p["n"] == 6
    assert p["p"] == pytest.approx(2 / 2 ** 6)  # exact two-sided signed-rank p for n = 6, all one sign
    assert math.isnan(paired_difference(a, a)["p"])  # no non-zero difference: no test


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, 4, stride=4)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_baseline_maps_ignore_the_model():
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([[0, 1], [2, 0]])
    rand = E.random_explain("features", seed=3)
    m1, l1 = rand(Tiny(), x, targets)
    m2, l2 = rand(Tiny(), x, targets)
    assert m1.shape == (2, 2, 16, 16) and l1.shape == (2, 2, 4, 4)
    assert torch.equal(m1, m2) and not torch.equal(l1[0, 0], l1[0, 1])
    gm, gl = E.gaussian_explain("features")(Tiny(), x, torch.zeros(2, 4, dtype=torch.long))
    assert torch.equal(gl, gl.flip(-1)) and torch.equal(gl, gl.flip(-2))  # centred
    from igcam_fast.evaluation.grids import grid_pointing_game
    assert grid_pointing_game(gm).flatten().tolist() == pytest.approx([0.25] * 8)  # centred: chance


def test_gradcampp_regimes_match_the_reference_weights_and_hand_counts():
    from igcam_fast.core.reference import gradcampp_channel_weights
    from igcam_fast.evaluation.gradcampp_regimes import regimes

    h, w = 2, 2
    A = torch.ones(4, h, w, dtype=torch.float64)
    A[3] *= 1e6                                                  # a huge activation sum: the cube term wins
    W = torch.tensor([4e-4, 4e-2, -4e-2, 4e-2], dtype=torch.float64)  # g = W / 4
    got = regimes(A, W)
    reference = gradcampp_channel_weights(A, (W / (h * w))[:, None, None].expand(4, h, w))
    assert torch.allclose(got["weights"], reference, rtol=1e-12, atol=0)
    # g = 1e-4: g² = 1e-8 < ε -> "eps"; g = 1e-2: 2g² = 2e-4 > ε, S g³ = 4e-6 -> "square"; negative: none;
    # g = 1e-2 with S = 4e6: S g³ = 4 > 2g² -> "cube", where w ≈ h·w / S
    assert got["channels"] == {"eps": 1, "square": 1, "cube": 1}
    assert got["weights"][1].item() == pytest.approx(W[1].item() / 2, rel=0.03)  # 4e-6 / 2.05e-4 · 4
    assert got["weights"][3].item() == pytest.approx(h * w / 4e6, rel=1e-3)
    assert sum(got["mass"].values()) == pytest.approx(1.0)
