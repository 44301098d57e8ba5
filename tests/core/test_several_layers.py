"""Several layers in one engine: the maps of each layer equal a one-layer engine's, and every path
image runs through the model once for all of them (one forward, one backward per chunk)."""

import pytest
import torch
from torch import nn

from igcam_fast.core.engine import CamEngine


class TwoBranches(nn.Module):
    """A stem, two parallel branches (neither downstream of the other) summed into a GAP + linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.right = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.Tanh())
        self.deep = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(8, 5)
        self.rows = 0  # rows (images) through the stem, counted

    def forward(self, x):
        self.rows += x.shape[0]
        h = self.stem(x)
        h = self.deep(self.left(h) + self.right(h))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TwoBranches().eval()


def _single(net, layer, x, targets=None, **options):
    with CamEngine(net, layer, closed_form_head=False, **options) as engine:
        return engine.explain(x, targets)


CASES = [
    (["deep", "stem"], {}),  # the later layer first in the list
    (["stem", "left", "right", "deep"], {}),  # parallel branches: neither has a graph back to the other
    (["deep", "deep.1"], {}),  # nested: deep.1 is inside deep (and in place)
    (["stem", "deep"], dict(steps=5, batch_rows=3)),  # one image's path points split over forwards
    (["stem", "deep"], dict(method="gradcam")),
    (["stem", "deep"], dict(method="gradcampp")),
    (["stem", "deep"], dict(relu=False, rule="trapezoid", steps=4)),
    (["stem", "deep"], dict(baseline="zeros", subtract_baseline=False, preset="demo")),
    (["stem", "deep"], dict(output_size="layer", normalize=True)),
]


@pytest.mark.parametrize("layers, options", CASES, ids=[f"{'+'.join(ls)}-{o}" for ls, o in CASES])
def test_each_layer_equals_a_one_layer_engine(net, layers, options):
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    net.double()
    with CamEngine(net, layers, **options) as engine:
        result = engine.explain(x)
    assert isinstance(result.maps, tuple) and len(result.maps) == len(layers)
    assert result.settings["layer"] == layers
    for index, layer in enumerate(layers):
        alone = _single(net, layer, x, **options)
        assert result.layer_maps[index].shape == alone.layer_maps.shape
        assert result.maps[index].shape == alone.maps.shape
        scale = alone.layer_maps.abs().max().clamp(min=1e-30)
        assert float((result.layer_maps[index] - alone.layer_maps).abs().max() / scale) < 1e-12, layer
        assert float((result.maps[index] - alone.maps).abs().max()) <= 1e-12 * float(alone.maps.abs().max()) + 1e-30


def test_several_targets_and_per_image_baselines(net):
    x = torch.randn(2, 3, 12, 12)
    baseline = torch.rand(2, 3, 12, 12)
    targets = torch.tensor([[0, 3], [4, 1]])
    with CamEngine(net, ["left", "deep"], baseline=baseline, steps=6) as engine:
        result = engine.explain(x, targets)
    for index, layer in enumerate(["left", "deep"]):
        alone = _single(net, layer, x, targets, baseline=baseline, steps=6)
        assert result.maps[index].shape == (2, 2, 12, 12)
        torch.testing.assert_close(result.layer_maps[index], alone.layer_maps, rtol=1e-5, atol=1e-7)


def test_every_path_image_runs_once_for_all_layers(net):
    """B·m path rows and one baseline row, not one set per layer."""
    x = torch.randn(4, 3, 12, 12)
    targets = torch.tensor([0, 1, 2, 3])
    net.rows = 0
    with CamEngine(net, ["stem", "left", "right", "deep"], steps=7) as engine:
        engine.explain(x, targets)
    assert net.rows == 4 * 7 + 1
    net.rows = 0
    for layer in ["stem", "left", "right", "deep"]:
        _single(net, layer, x, targets, steps=7)
    assert net.rows == 4 * (4 * 7 + 1)


def test_hooks_of_every_layer_removed_on_close(net):
    engine = CamEngine(net, ["stem", "deep"])
    assert net.stem._forward_hooks and net.deep._forward_hooks
    engine.close()
    assert not net.stem._forward_hooks and not net.deep._forward_hooks


@pytest.mark.parametrize("layers, options, message", [
    ([], {}, "empty list"),
    (["stem", "stem"], {}, "more than once"),
    (["stem", "nope"], {}, "'nope' is not a module"),
    (["stem", "deep"], dict(tol=0.01), "one layer per engine"),
    (["stem", "deep"], dict(rule="patterson", steps=15), "one layer per engine"),
])
def test_mistakes_are_named(net, layers, options, message):
    with pytest.raises(ValueError, match=message):
        CamEngine(net, layers, **options)
    assert not any(m._forward_hooks for m in net.modules())


def test_a_layer_the_scores_do_not_reach_is_named():
    torch.manual_seed(0)
    net = TwoBranches().eval()
    dead = nn.Conv2d(3, 2, 1)
    net.stem.register_forward_hook(lambda m, i, o: (dead(i[0]), None)[1])  # runs, feeds nothing
    net.dead = dead
    with CamEngine(net, ["dead", "deep"]) as engine, pytest.raises(ValueError, match="'dead'"):
        engine.explain(torch.randn(1, 3, 12, 12))


def test_one_layer_in_a_list_is_the_one_layer_result(net):
    x = torch.randn(2, 3, 12, 12)
    with CamEngine(net, ["deep"]) as engine:
        listed = engine.explain(x)
    with CamEngine(net, "deep") as engine:
        plain = engine.explain(x)
    assert isinstance(listed.maps, torch.Tensor) and listed.settings["layer"] == "deep"
    torch.testing.assert_close(listed.maps, plain.maps)
