"""The grid pointing game against hand-computed values: cells, scores, selection and top-k."""

import math

import pytest
import torch

from igcam_fast.evaluation import grids as G


def cell_map(cell, H=4, W=6, value=1.0):
    """A (H, W) map that is ``value`` on cell ``cell`` and 0 elsewhere."""
    m = torch.zeros(H, W)
    r, c = divmod(cell, 2)
    m[r * H // 2:(r + 1) * H // 2, c * W // 2:(c + 1) * W // 2] = value
    return m


def test_cell_masks_partition_the_grid_in_raster_order():
    masks = G.cell_masks(4, 6)
    assert masks.shape == (4, 4, 6) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(dim=0), torch.ones(4, 6, dtype=torch.long))  # every pixel in exactly one cell
    assert masks[0, 0, 0] and masks[1, 0, 5] and masks[2, 3, 0] and masks[3, 3, 5]
    assert int(masks[1].sum()) == 6


@pytest.mark.parametrize("size", [(7, 8), (8, 7), (1, 2)])
def test_cell_masks_refuse_a_boundary_inside_a_pixel(size):
    with pytest.raises(ValueError, match="exact 2×2 cells"):
        G.cell_masks(*size)


def test_map_inside_its_cell_scores_one_and_uniform_map_a_quarter():
    inside = torch.stack([cell_map(j) for j in range(4)])[None]  # map j entirely in cell j
    assert G.grid_pointing_game(inside).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    uniform = torch.full((1, 4, 4, 6), 3.0)
    assert G.grid_pointing_game(uniform).tolist() == [[0.25] * 4]


def test_hand_values_negative_part_zero_and_invalid_maps():
    # cell 0's map: 3 inside cell 0, 1 in cell 3, negatives ignored -> 3·6 / (3·6 + 1·6) = 0.75
    m0 = cell_map(0, value=3.0) + cell_map(3, value=1.0) - cell_map(1, value=5.0)
    m1 = cell_map(0)                      # cell 1's map entirely in cell 0 -> 0
    m2 = torch.zeros(4, 6)                # all zero: no preference, scored as uniform -> 1/4
    m3 = cell_map(3)
    m3[0, 0] = math.nan                   # non-finite -> NaN
    got = G.grid_pointing_game(torch.stack([m0, m1, m2, m3])[None].double())[0]
    assert got[:3].tolist() == pytest.approx([0.75, 0.0, 0.25])
    assert math.isnan(got[3])


def test_scores_work_at_layer_resolution_too():
    layer = torch.zeros(2, 4, 2, 2)
    for j in range(4):
        layer[:, j, j // 2, j % 2] = 1.0  # at 2×2 each pixel is one cell
    assert G.grid_pointing_game(layer).tolist() == [[1.0] * 4] * 2


def test_make_grids_tiles_in_raster_order():
    images = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 1, 2, 3)
    grid = G.make_grids(images, torch.tensor([[2, 0, 3, 1]]))
    assert grid.shape == (1, 1, 4, 6)
    expected = torch.tensor([[2, 2, 2, 0, 0, 0]] * 2 + [[3, 3, 3, 1, 1, 1]] * 2, dtype=torch.float32)
    assert torch.equal(grid[0, 0], expected)


def test_arrangements_rotate_combinations():
    a = G.grid_arrangements(5, 10)
    assert a.shape == (5, 4)  # C(5, 4) = 5 combinations at most
    assert a[0].tolist() == [0, 1, 2, 3] and a[1].tolist() == [1, 2, 4, 0]
    assert all(len(set(r)) == 4 for r in a.tolist())
    with pytest.raises(ValueError, match="at least 4"):
        G.grid_arrangements(3, 1)


def test_selection_keeps_confident_images_of_distinct_classes():
    probs = torch.tensor([[0.9, 0.1, 0.0],    # class 0, 0.9
                          [0.95, 0.05, 0.0],  # class 0, more confident: wins class 0
                          [0.1, 0.2, 0.7],    # class 2
                          [0.4, 0.3, 0.3]])   # below the threshold
    chosen = G.select_grid_images(probs, min_confidence=0.5)
    assert chosen.indices == [1, 2] and chosen.classes == [0, 2]
    assert chosen.confidences == pytest.approx([0.95, 0.7])
    assert set(chosen.rejected) == {0, 3} and "already taken" in chosen.rejected[0]


def test_cells_in_top_k():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    got = G.cells_in_top_k(logits, torch.tensor([[0, 5, 2, 3]]), k=3)
    assert got.tolist() == [[True, False, True, False]]
