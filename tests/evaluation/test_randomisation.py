"""Cascading randomisation: stages, the untouched user model, Spearman with ties and constant maps."""

import math

import pytest
import torch
from torch import nn

from igcam_fast.evaluation import randomisation as R


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    net.add_module("blocks", nn.Sequential(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
                                           nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(8, 5))
    return net.eval()


def test_spearman_hand_values_and_ties():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert R.spearman(a, a * 10 + 1).item() == pytest.approx(1.0)
    assert R.spearman(a, -a).item() == pytest.approx(-1.0)
    # ties: ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4): Pearson = 4.5 / sqrt(4.5 · 5) (scipy gives the same)
    b = torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    assert R.average_ranks(b).tolist() == [[1.5, 1.5, 3.0, 4.0]]
    assert R.spearman(b, a).item() == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_spearman_matches_scipy_on_random_tied_maps():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (5, 30), generator=g).double()
    b = torch.randint(0, 6, (5, 30), generator=g).double()
    ours = R.spearman(a, b)
    for i in range(5):
        assert ours[i].item() == pytest.approx(scipy_stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)


def test_spearman_constant_maps_are_defined():
    const, other, varying = torch.zeros(1, 2, 3), torch.full((1, 2, 3), 7.0), torch.arange(6.0).reshape(1, 2, 3)
    assert R.spearman(const, const).item() == 1.0      # unchanged map (both constant)
    assert R.spearman(const, other).item() == 1.0      # both constant: identical (all-tied) ranks
    assert R.spearman(const, varying).item() == 0.0    # one constant: no shared order
    assert R.spearman(varying, const).item() == 0.0
    assert math.isnan(R.spearman(varying, torch.full((1, 2, 3), math.nan)).item())


def test_cascade_stages_follow_the_forward_order_backwards():
    stages = R.cascade_stages(small_net(), "blocks.1.2", torch.zeros(1, 3, 8, 8))
    assert [s.name for s in stages] == ["fc", "blocks.1", "blocks.0", "stem.1", "stem.0"]
    assert stages[1].modules == ["blocks.1.0", "blocks.1.1"]
    assert len(R.cascade_stages(small_net(), "blocks.1.2", torch.zeros(1, 3, 8, 8), max_stages=2)) == 2


def test_randomisation_leaves_the_users_model_bit_identical():
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits_before = net(x)
    stages = R.cascade_stages(net, "blocks.1.2", x[:1])
    changed = []
    for stage, randomised in R.cascading_randomisation(net, stages, seed=0):
        assert randomised is not net
        changed.append(not torch.equal(randomised.fc.weight, net.fc.weight))
        with torch.no_grad():
            assert not torch.equal(randomised(x), logits_before)
    assert all(changed)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    with torch.no_grad():
        assert torch.equal(net(x), logits_before)
    assert not net.training


def test_cascade_is_cumulative_and_seeded():
    net = small_net()
    stages = R.cascade_stages(net, "blocks.1.2", torch.zeros(1, 3, 8, 8))
    snapshots = [{k: v.clone() for k, v in m.state_dict().items()} for _, m in R.cascading_randomisation(net, stages)]
    # after stage 2 the classifier is still the one stage 1 drew (cumulative, not re-drawn)
    assert torch.equal(snapshots[0]["fc.weight"], snapshots[1]["fc.weight"])
    assert not torch.equal(snapshots[1]["blocks.1.0.weight"], net.state_dict()["blocks.1.0.weight"])
    again = [{k: v.clone() for k, v in m.state_dict().items()} for _, m in R.cascading_randomisation(net, stages)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(snapshots, again) for k in a)


def test_module_without_reset_parameters_is_refused():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

    net = nn.Sequential(nn.Linear(2, 2), Scale())
    with pytest.raises(ValueError, match="reset_parameters"):
        R.randomise_modules(net, ["1"], seed=0)


def test_randomisation_correlations_separate_model_dependent_and_fixed_maps():
    net = small_net()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    stages = R.cascade_stages(net, "blocks.1.2", x[:1])

    def input_times_gradient(model, images, targets):
        images = images.clone().requires_grad_(True)
        model(images).gather(1, targets[:, None]).sum().backward()
        return (images.grad * images).sum(dim=1).detach()

    fixed = lambda model, images, targets: torch.arange(64.0).reshape(1, 8, 8).expand(len(images), 8, 8)  # noqa: E731
    targets = torch.tensor([0, 1])
    rho_fixed = R.randomisation_correlations(net, stages, x, targets, fixed)
    assert rho_fixed.shape == (len(stages), 2) and torch.all(rho_fixed == 1)
    rho = R.randomisation_correlations(net, stages, x, targets, input_times_gradient)
    assert rho[-1].abs().max() < 0.9  # after the full cascade the gradient map has changed
