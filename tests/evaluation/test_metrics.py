"""The metrics of SPEC §2 against hand-computed values on tiny inputs, their edge cases, and
EBPG against Quantus' RelevanceMassAccuracy."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from igcam_fast.evaluation import metrics as M


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)[None]


def b(rows):
    return torch.tensor(rows, dtype=torch.bool)[None]


# ---- EBPG ---------------------------------------------------------------------------------------

def test_ebpg_hand_value():
    L = t([[1, 2, 0], [0, 3, 4]])
    mask = b([[1, 1, 0], [0, 0, 0]])
    assert M.ebpg(L, mask).item() == pytest.approx(3 / 10)


def test_ebpg_batched_scale_invariant_and_negative_part_dropped():
    L = torch.stack([t([[1, 2], [3, 4]])[0], t([[10, 20], [30, 40]])[0], t([[-5, 2], [3, 4]])[0]])
    mask = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool).expand(3, 2, 2)
    got = M.ebpg(L, mask)
    assert got.shape == (3,) and got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.5, 0.5, 4 / 9])


def test_ebpg_edge_cases():
    mask = b([[1, 0], [0, 0]])
    assert math.isnan(M.ebpg(t([[1, 2], [3, 4]]), b([[0, 0], [0, 0]])).item())  # empty mask
    assert M.ebpg(t([[0, 0], [0, 0]]), mask).item() == pytest.approx(0.25)  # all-zero map: chance
    assert math.isnan(M.ebpg(t([[0, 0], [0, 0]]), mask, zero_map="nan").item())
    assert math.isnan(M.ebpg(t([[float("nan"), 1], [0, 0]]), mask).item())
    assert math.isnan(M.ebpg(t([[float("inf"), 1], [0, 0]]), mask).item())


def test_ebpg_matches_quantus_relevance_mass_accuracy():
    quantus = pytest.importorskip("quantus", reason="quantus is not installed in this environment")
    rng = np.random.default_rng(0)
    N, H, W = 6, 12, 10
    a = rng.random((N, 1, H, W)).astype(np.float32) ** 3
    s = np.zeros((N, 1, H, W), dtype=np.float32)
    for i in range(N):
        y0, x0 = rng.integers(0, 6, 2)
        s[i, 0, y0:y0 + rng.integers(2, 6), x0:x0 + rng.integers(2, 5)] = 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 3)).eval()
    x = rng.random((N, 1, H, W)).astype(np.float32)
    y = np.zeros(N, dtype=np.int64)
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True)
    ref = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, s_batch=s, device="cpu"))
    ours = M.ebpg(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0] > 0)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


# ---- Bbox ---------------------------------------------------------------------------------------

def test_bbox_hand_value():
    L = t([[4, 3, 2], [1, 0, 0]])
    mask = b([[1, 0, 0], [1, 0, 0]])  # N = 2: the top-2 pixels are 4 and 3, one is in M
    assert M.bbox_score(L, mask).item() == pytest.approx(0.5)
    assert M.bbox_score(t([[4, 3, 2], [1, 0, 0]]), b([[1, 1, 0], [0, 0, 0]])).item() == 1.0


def test_bbox_ties_score_their_expected_value():
    # threshold 1 with 4 tied pixels, 1 of them in M; N = 2 -> 2 · 1/4 expected hits, / 2
    L = t([[1, 1, 1], [1, 0, 0]])
    mask = b([[1, 0, 0], [0, 1, 0]])
    assert M.bbox_score(L, mask).item() == pytest.approx(0.25)
    # brute force: average over every way of breaking the ties
    import itertools
    tied = [0, 1, 2, 3]
    hits = [sum(1 for p in chosen if p in (0, 4)) / 2 for chosen in itertools.combinations(tied, 2)]
    assert np.mean(hits) == pytest.approx(0.25)
    # an all-zero map is a uniform map: chance level
    assert M.bbox_score(t([[0, 0, 0], [0, 0, 0]]), mask).item() == pytest.approx(2 / 6)


def test_bbox_matches_a_per_image_loop_without_ties():
    g = torch.Generator().manual_seed(1)
    L = torch.rand(5, 7, 9, generator=g)
    masks = torch.rand(5, 7, 9, generator=g) > 0.6
    got = M.bbox_score(L, masks)
    for i in range(5):
        n = int(masks[i].sum())
        top = L[i].flatten().topk(n).indices
        assert got[i].item() == pytest.approx(float(masks[i].flatten()[top].sum()) / n)


def test_bbox_edge_cases():
    assert math.isnan(M.bbox_score(t([[1, 2]]), b([[0, 0]])).item())
    assert math.isnan(M.bbox_score(t([[float("nan"), 2]]), b([[1, 0]])).item())


# ---- pointing game --------------------------------------------------------------------------------

def test_pointing_game_tolerance():
    L = torch.zeros(1, 10, 10)
    L[0, 2, 2] = 1
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 5:8, 5:8] = True  # nearest mask pixel (5, 5): distance sqrt(18) = 4.24
    assert M.pointing_game(L, mask, tolerance=5).item() == 1.0
    assert M.pointing_game(L, mask, tolerance=4).item() == 0.0
    L[0, 6, 6] = 2
    assert M.pointing_game(L, mask, tolerance=0).item() == 1.0


def test_pointing_game_ties_take_the_first_maximum_and_edge_cases():
    L = t([[0, 1, 0, 1]])
    assert M.pointing_game(L, b([[0, 1, 0, 0]]), tolerance=0).item() == 1.0
    assert M.pointing_game(L, b([[0, 0, 0, 1]]), tolerance=0).item() == 0.0
    assert math.isnan(M.pointing_game(L, b([[0, 0, 0, 0]])).item())
    assert math.isnan(M.pointing_game(t([[float("nan"), 1, 0, 0]]), b([[1, 0, 0, 0]])).item())


# ---- masks, Drop% and Increase% -----------------------------------------------------------------

def test_top_fraction_mask_has_exactly_k_pixels_ties_in_raster_order():
    L = t([[5, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])  # 20 px, k = 3
    keep = M.top_fraction_mask(L, 0.15)
    assert keep.sum().item() == 3
    assert keep[0, 0, :3].tolist() == [1, 1, 1]


def test_soft_mask_and_blackout_in_pixel_space():
    soft = M.soft_mask(t([[0, 1], [2, 4]]))
    assert soft[0].flatten().tolist() == pytest.approx([0, 0.25, 0.5, 1])
    assert M.soft_mask(t([[3, 3], [3, 3]])).sum().item() == 0  # flat map: no preference, all blacked out
    x = torch.ones(1, 3, 1, 2)  # pixel value 1.0 with mean 0.5, std 0.5
    out = M.blackout(x, torch.tensor([[[1.0, 0.0]]]), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert out[0, :, 0, 0].tolist() == [1, 1, 1] and out[0, :, 0, 1].tolist() == [-1, -1, -1]  # black pixel


def test_drop_increase_from_confidences_hand_values():
    drop, inc = M.drop_increase_from_confidences(torch.tensor([0.8, 0.5, 0.0, 0.4]),
                                                 torch.tensor([0.4, 0.6, 0.1, float("nan")]))
    assert drop[:2].tolist() == pytest.approx([50.0, 0.0]) and math.isnan(drop[2]) and math.isnan(drop[3])
    assert inc[:2].tolist() == [0.0, 1.0] and math.isnan(inc[2])


class MeanModel(nn.Module):
    """logit 0 = mean of the input, logit 1 = 0."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def test_drop_increase_both_protocols_hand_values():
    x = torch.ones(1, 1, 2, 2)
    L = t([[0, 1], [2, 4]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    top = M.drop_increase(MeanModel(), x, L, [0], mean=(0.0,), std=(1.0,), protocol="top15")
    # k = max(1, round(0.15 · 4)) = 1 pixel kept: mean 0.25
    assert top["drop"].item() == pytest.approx((sig(1) - sig(0.25)) / sig(1) * 100)
    assert top["increase"].item() == 0.0
    soft = M.drop_increase(MeanModel(), x, L, [0], mean=(0.0,), std=(1.0,), protocol="soft")
    assert soft["masked"].item() == pytest.approx(sig(1.75 / 4))
    # softmax confidence, and a masked image that scores higher: an increase
    x2 = torch.tensor([[[[-1.0, -1.0], [-1.0, 3.0]]]])
    up = M.drop_increase(MeanModel(), x2, L, [0], mean=(0.0,), std=(1.0,), kind="softmax")
    assert up["increase"].item() == 1.0 and up["drop"].item() == 0.0
    # pairs pointing at shared images
    two = M.drop_increase(MeanModel(), torch.cat([x, x2]), torch.cat([L, L, L]), [0, 0, 0], mean=(0.0,),
                          std=(1.0,), image_index=[1, 0, 1], batch_size=2)
    assert two["increase"].tolist() == [1.0, 0.0, 1.0]
    nan = M.drop_increase(MeanModel(), x, t([[float("nan"), 1], [2, 4]]), [0], mean=(0.0,), std=(1.0,))
    assert math.isnan(nan["drop"].item())


class SumModel(nn.Module):
    def forward(self, x):
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_deletion_and_insertion_auc_hand_values():
    x = torch.ones(1, 1, 1, 4)
    L = t([[4, 3, 2, 1]])
    sig = [1 / (1 + math.exp(-v)) for v in range(5)]
    d = M.deletion_insertion(SumModel(), x, L, [0], mean=(0.0,), std=(1.0,), mode="deletion", steps=4,
                             kind="sigmoid")
    assert d["curves"][0].tolist() == pytest.approx(sig[::-1])
    assert d["auc"].item() == pytest.approx((sum(sig) - (sig[0] + sig[4]) / 2) / 4)
    i = M.deletion_insertion(SumModel(), x, L, [0], mean=(0.0,), std=(1.0,), mode="insertion", steps=4,
                             substrate="black", kind="sigmoid", batch_size=3)
    assert i["curves"][0].tolist() == pytest.approx(sig)
    # the map's order matters: deleting the least important pixel first on a weighted model
    x3 = torch.tensor([[[[3.0, 0.0, 0.0, 0.0]]]])
    good = M.deletion_insertion(SumModel(), x3, t([[1, 0, 0, 0]]), [0], mean=(0.0,), std=(1.0,), steps=4,
                                kind="sigmoid")["auc"]
    bad = M.deletion_insertion(SumModel(), x3, t([[0, 0, 0, 1]]), [0], mean=(0.0,), std=(1.0,), steps=4,
                               kind="sigmoid")["auc"]
    assert good.item() < bad.item()


def test_blur_substrate_keeps_a_constant_image():
    x = torch.full((1, 3, 9, 9), 0.7)
    assert torch.allclose(M._gaussian_blur(x, 2.0), x, atol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="masks must have"):
        M.ebpg(torch.rand(2, 3, 3), torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.bbox_score(torch.rand(3, 3), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="protocol"):
        M.drop_increase(MeanModel(), torch.ones(1, 1, 2, 2), torch.rand(1, 2, 2), [0], mean=(0,), std=(1,),
                        protocol="hard")


@pytest.mark.needs_cuda
def test_metrics_stay_on_the_gpu_and_agree_with_the_cpu():
    g = torch.Generator().manual_seed(2)
    L = torch.rand(8, 32, 32, generator=g)
    masks = torch.rand(8, 32, 32, generator=g) > 0.7
    for fn in (M.ebpg, M.bbox_score, M.pointing_game):
        cpu = fn(L, masks)
        gpu = fn(L.cuda(), masks.cuda())
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu)
