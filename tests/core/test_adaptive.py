"""Error-controlled integration: the estimator on integrals known in closed form, the rounds, the cap,
and the engine with tol= against the float64 reference."""

import sys
from pathlib import Path

import pytest
import torch

import igcam_fast
from igcam_fast.core import reference as R
from igcam_fast.core.adaptive import CONTRACTION, integrate_nested, relative_difference
from igcam_fast.core.config import CamConfig
from igcam_fast.core.engine import CamEngine
from igcam_fast.core.quadrature import embedded_rule, path_nodes

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import rel_err, small_cnn  # noqa: E402

# ---- integrands S(α) per image: (B, T=1, h, w) maps known in closed form --------------------------

torch.manual_seed(0)
PIXELS = (6, 5)
SHIFT = torch.rand(3, 1, *PIXELS, dtype=torch.float64)  # where each pixel's kink / jump sits, in (0, 1)


def smooth(alpha):  # exp(a α) with a per pixel: ∫ = (e^a − 1) / a
    rate = 1 + 2 * SHIFT
    return torch.exp(rate * alpha)


def smooth_integral():
    rate = 1 + 2 * SHIFT
    return (torch.exp(rate) - 1) / rate


def kinked(alpha):  # ReLU(α − c): ∫ = (1 − c)² / 2
    return (alpha - SHIFT).clamp(min=0)


def kinked_integral():
    return (1 - SHIFT) ** 2 / 2


def step(alpha):  # 1[α > c]: ∫ = 1 − c
    return (alpha > SHIFT).double()


def step_integral():
    return 1 - SHIFT


class Integrand:
    """node_maps for integrate_nested from a function of α; records which images each round asked for."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, images, alphas):
        self.calls.append((images.tolist(), alphas.numel()))
        return torch.stack([self.fn(float(a))[images] for a in alphas], dim=1)


CASES = [(smooth, smooth_integral), (kinked, kinked_integral), (step, step_integral)]


@pytest.mark.parametrize("fn,integral", CASES, ids=["smooth", "relu-kink", "piecewise-constant"])
@pytest.mark.parametrize("max_points", [7, 15, 31, 63])
def test_estimate_bounds_the_true_error_of_known_integrals(fn, integral, max_points):
    result = integrate_nested(Integrand(fn), 3, tol=None, max_points=max_points, first_points=max_points)
    exact = integral()
    true = (result.maps - exact).flatten(2).norm(dim=2) / exact.flatten(2).norm(dim=2)
    assert result.maps.shape == (3, 1, *PIXELS) and result.error_estimate.shape == (3, 1)
    assert bool((result.path_points == max_points).all())
    assert bool((result.error_estimate >= true - 1e-14).all()), (result.error_estimate, true)  # up to rounding
    if fn is smooth and max_points >= 15:
        assert float(true.max()) < 1e-13  # exact to degree 23: exp is resolved to rounding


def test_estimate_is_the_difference_to_the_coarser_level_raised_by_a_slow_contraction():
    level = {n: integrate_nested(Integrand(step), 3, tol=None, max_points=n, first_points=n).maps for n in (3, 7, 15)}

    def d(fine, coarse):
        return (level[fine] - level[coarse]).flatten(2).norm(dim=2) / level[fine].flatten(2).norm(dim=2)

    result = integrate_nested(Integrand(step), 3, tol=None, max_points=15, first_points=15)
    want = d(15, 7) * (CONTRACTION * d(15, 7) / d(7, 3)).clamp(min=1)
    assert torch.allclose(result.error_estimate, want, rtol=1e-12, atol=0)
    assert bool((want > d(15, 7)).any())  # the jumps contract slowly: the check raised some estimates
    three = integrate_nested(Integrand(step), 3, tol=None, max_points=3, first_points=3)
    one = integrate_nested(Integrand(step), 3, tol=None, max_points=1, first_points=1)
    plain = (three.maps - one.maps).flatten(2).norm(dim=2) / three.maps.flatten(2).norm(dim=2)
    assert torch.allclose(three.error_estimate, plain, rtol=1e-12, atol=0)  # nothing two levels below 3


def test_relative_difference_of_zero_maps():
    zero = torch.zeros(2, 1, 3, 3)
    assert float(relative_difference(zero, zero).max()) == 0.0
    assert relative_difference(zero, torch.ones(2, 1, 3, 3)).isinf().all()


def test_stopping_rule_mixed_batch_and_rounds():
    """An easy image (smooth) stops at 7 points, a kinked one later; later rounds ask only for the others."""
    def mixed(alpha):
        return torch.stack([torch.exp(torch.full((1, *PIXELS), alpha, dtype=torch.float64)),  # smooth
                            (alpha - SHIFT[1]).clamp(min=0),                                   # one kink per pixel
                            (alpha > SHIFT[2]).double()])                                      # jumps
    integrand = Integrand(mixed)
    result = integrate_nested(integrand, 3, tol=1e-3, max_points=63)
    points = result.path_points.tolist()
    assert points[0] == 7 and points[0] < points[1] <= points[2], points
    assert integrand.calls[0] == ([0, 1, 2], 7)
    assert all(0 not in images for images, _ in integrand.calls[1:])  # converged images drop out
    assert [r for _, r in integrand.calls] == [7, 8, 16, 32][:len(integrand.calls)]  # only new nodes
    assert bool(result.converged[:2].all())
    assert bool((result.error_estimate[result.converged] <= 1e-3).all())
    # each image's map is its own level's sum
    for b, n in enumerate(points):
        alone = integrate_nested(Integrand(lambda a: mixed(a)[b:b + 1]), 1, tol=None, max_points=n, first_points=n)
        assert torch.allclose(result.maps[b], alone.maps[0], rtol=1e-14, atol=0)


def test_cap_is_reported():
    result = integrate_nested(Integrand(step), 3, tol=1e-9, max_points=31)
    assert result.path_points.tolist() == [31, 31, 31]
    assert not bool(result.converged.any())
    assert bool((result.error_estimate > 1e-9).all())
    capped = integrate_nested(Integrand(step), 3, tol=1e-9, max_points=40)  # between levels: the level below
    assert capped.path_points.tolist() == [31, 31, 31]


def test_one_point_level_has_no_estimate():
    result = integrate_nested(Integrand(smooth), 3, tol=None, max_points=1, first_points=1)
    assert bool(result.error_estimate.isnan().all())


# ---- the engine ---------------------------------------------------------------------------------------


def _black(shape, dtype=torch.float64):
    black = (0 - torch.tensor(igcam_fast.IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(
        igcam_fast.IMAGENET_STD, dtype=torch.float64)
    return black.to(dtype)[:, None, None].expand(shape[1:]).contiguous()


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_engine_tol_against_the_float64_reference(pool):
    torch.manual_seed(1)
    net = small_cnn(pool=pool).double()
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    classes = [0, 3, 1]
    truth = R.reference_integrated_gradcam(net, x, net[3], classes, steps=128, rule="gausslegendre",
                                           baseline=_black(x.shape))
    with igcam_fast.ops.poison_outputs():
        res = igcam_fast.integrated_gradcam(net, x, "3", classes, tol=0.02, output_size="layer", batch_rows=8,
                                            return_result=True)
    assert res.error_estimate.shape == (3, 1) and res.error_estimate.dtype == torch.float64
    assert res.path_points.dtype == torch.int64 and set(res.path_points.tolist()) <= {7, 15, 31, 63}
    for b in range(3):  # the 128-node truth is itself ~0.1 % off on this rough little network
        true = rel_err(res.layer_maps[b], truth[b])
        assert true <= float(res.error_estimate[b, 0]) + 2e-3, (b, true, res.error_estimate)
        if bool(res.error_estimate[b, 0] <= 0.02):
            assert true <= 0.02
    assert res.settings["rule"] == "patterson" and res.settings["tol"] == 0.02
    assert res.settings["not_converged"] == [b for b in range(3) if float(res.error_estimate[b, 0]) > 0.02]


def test_engine_tol_equals_the_fixed_level_where_the_rounds_end():
    torch.manual_seed(2)
    net = small_cnn().double()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    adaptive = igcam_fast.integrated_gradcam(net, x, "3", [[0, 1], [2, 3], [4, 0], [1, 1]], tol=0.01,
                                             batch_rows=16, return_result=True)
    for n in set(adaptive.path_points.tolist()):
        fixed = igcam_fast.integrated_gradcam(net, x, "3", [[0, 1], [2, 3], [4, 0], [1, 1]], rule="patterson",
                                              steps=n, batch_rows=16, return_result=True)
        same = adaptive.path_points == n
        assert rel_err(adaptive.maps[same], fixed.maps[same]) < 1e-12
        assert torch.allclose(adaptive.error_estimate[same], fixed.error_estimate[same], rtol=1e-9, atol=0)


def test_engine_tol_with_a_per_image_baseline_and_callable_targets():
    torch.manual_seed(3)
    net = small_cnn(pool="max").double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    baseline = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = igcam_fast.integrated_gradcam(net, x, "3", [lambda row: row[2], lambda row: row[4]], tol=0.05,
                                        max_steps=15, baseline=baseline, batch_rows=5, return_result=True)
    for b, cls in enumerate((2, 4)):
        n = int(res.path_points[b])
        ref = R.reference_integrated_gradcam(net, x[b:b + 1], net[3], [cls], steps=n, rule="patterson",
                                             baseline=baseline[b], output_size=(8, 8))
        assert rel_err(res.maps[b], ref[0]) < 1e-10


def test_fixed_rules_report_points_and_the_estimate_their_nodes_allow():
    net = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    res = igcam_fast.integrated_gradcam(net, x, "3", steps=6, return_result=True)  # Gauss-Legendre: not nested
    assert res.error_estimate is None and "gausslegendre rule's nodes contain no coarser rule" in res.settings[
        "error_estimate"]
    assert res.path_points.tolist() == [6, 6]
    gc = igcam_fast.gradcam(net, x, "3", return_result=True)
    assert gc.path_points.tolist() == [1, 1] and gc.error_estimate is None
    odd = igcam_fast.integrated_gradcam(net, x, "3", rule="right", steps=7, return_result=True)
    assert odd.error_estimate is None and "needs m divisible by 2" in odd.settings["error_estimate"]
    paper = igcam_fast.integrated_gradcam(net, x, "3", preset="paper", return_result=True)
    assert paper.error_estimate.shape == (2, 1) and paper.error_estimate.dtype == torch.float64
    assert "embedded right rule of 25 points" in paper.settings["error_estimate"]


@pytest.mark.parametrize("rule, m, coarse_m, offset, factor", [
    ("right", 10, 5, 1, 4.0), ("left", 8, 4, 0, 4.0), ("demo", 6, 3, 0, 4.0), ("trapezoid", 9, 5, 0, 4.0),
    ("middle", 12, 4, 1, 2.0),
])
def test_embedded_rules_are_the_coarser_rule_on_a_subset_of_the_nodes(rule, m, coarse_m, offset, factor):
    weights, got_factor, why = embedded_rule(rule, m)
    nodes, fine = path_nodes(rule, m)
    coarse_nodes, coarse = path_nodes(rule, coarse_m)
    kept = torch.arange(offset, m, m // coarse_m if rule != "trapezoid" else 2)
    assert torch.nonzero(weights).flatten().tolist() == kept.tolist()
    torch.testing.assert_close(nodes[kept], coarse_nodes, rtol=0, atol=1e-15)
    torch.testing.assert_close(weights[kept], coarse * (fine.sum() / coarse.sum()), rtol=0, atol=1e-15)
    assert got_factor == factor and f"{coarse_m} points" in why


@pytest.mark.parametrize("rule, m", [("gausslegendre", 10), ("right", 9), ("trapezoid", 10), ("middle", 10),
                                     ("right", 1), ("patterson", 15)])
def test_rules_without_an_embedded_rule_say_why(rule, m):
    weights, factor, why = embedded_rule(rule, m)
    assert weights is None and factor == 0 and why.startswith("none: ")


def _true_relative_error(net, x, targets, result, **options):
    truth = igcam_fast.integrated_gradcam(net, x, "3", targets, rule="gausslegendre", steps=96, output_size="layer",
                                          **options)
    if truth.dim() == 3:
        truth, maps = truth[:, None], result.layer_maps[:, None]
    else:
        maps = result.layer_maps
    return ((maps - truth).flatten(2).norm(dim=2) / truth.flatten(2).norm(dim=2))


@pytest.mark.parametrize("rule, m", [("right", 10), ("right", 50), ("trapezoid", 11), ("middle", 9)])
def test_the_embedded_estimate_is_richardson_on_the_two_sums_and_bounds_the_error(rule, m):
    """estimate = factor · ‖Q_m − Q_coarse‖ / ‖Q_m‖, the coarse sum over the kept nodes; in float64 on a
    small network it is at least the true error against a 96-node Gauss-Legendre map."""
    torch.manual_seed(3)
    net = small_cnn().double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    targets = [[0, 1], [2, 3], [1, 2]]
    res = igcam_fast.integrated_gradcam(net, x, "3", targets, rule=rule, steps=m, output_size="layer",
                                        return_result=True, batch_rows=7)  # path points split over forwards
    weights, factor, _ = embedded_rule(rule, m)
    kept = torch.nonzero(weights).flatten()
    coarse = igcam_fast.integrated_gradcam(net, x, "3", targets, rule=rule, steps=len(kept), output_size="layer")
    expected = factor * (res.layer_maps - coarse).flatten(2).norm(dim=2) / res.layer_maps.flatten(2).norm(dim=2)
    torch.testing.assert_close(res.error_estimate, expected, rtol=1e-9, atol=1e-15)
    truth = _true_relative_error(net, x, targets, res)
    if (rule, m) == ("right", 10):
        # 6-15 % errors: before the first-order rate sets in, one of the six maps is under-estimated
        # (0.051 against 0.061); the real photos' table (docs/quadrature-error.md) is the measure
        assert (res.error_estimate >= truth).sum() >= 5
    else:
        assert (res.error_estimate >= truth).all()


def test_the_embedded_estimate_per_layer_and_target_of_a_several_layer_engine():
    net = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with CamEngine(net, ["1", "3"], preset="paper") as engine:
        res = engine.explain(x, [[0, 1], [1, 0]])
    assert isinstance(res.error_estimate, tuple) and [e.shape for e in res.error_estimate] == [(2, 2), (2, 2)]
    for index, layer in enumerate(["1", "3"]):
        alone = igcam_fast.integrated_gradcam(net, x, layer, [[0, 1], [1, 0]], preset="paper", return_result=True,
                                              closed_form_head=False)
        torch.testing.assert_close(res.error_estimate[index], alone.error_estimate, rtol=1e-5, atol=1e-8)


def test_nested_nodes_reach_the_engine_in_introduction_order():
    nodes, _ = path_nodes("patterson", 15)
    with CamEngine(small_cnn(), "3", rule="patterson", steps=15) as engine:
        assert torch.equal(engine.alphas, nodes)


@pytest.mark.parametrize("options,match", [
    (dict(tol=0), "tol"), (dict(tol=1.5), "tol"), (dict(tol=float("nan")), "tol"), (dict(tol=True), "tol"),
    (dict(tol="0.01"), "tol"), (dict(max_steps=31), "max_steps"), (dict(tol=0.01, max_steps=5), "max_steps"),
    (dict(tol=0.01, max_steps=10**6), "max_steps"), (dict(rule="patterson", steps=10), "steps"),
])
def test_config_refuses_bad_tolerances(options, match):
    with pytest.raises(ValueError, match=match):
        CamConfig.from_options(**options)


def test_tol_is_for_integrated_gradcam_only():
    with pytest.raises(ValueError, match="tol"):
        CamConfig.from_options("gradcam", tol=0.01)
