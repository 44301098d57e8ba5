"""The quadrature rules: the existing ones unchanged to the bit, the nested Patterson levels exact and nested."""

import numpy as np
import pytest
import torch

from igcam_fast.core.quadrature import PATTERSON_LEVELS, RULES, canonical_rule, path_nodes


def _expected(rule, m):
    """The existing rules, written out independently of the module."""
    t = np.arange(m, dtype=np.float64)
    if rule == "right":
        return (t + 1) / m, np.full(m, 1.0 / m)
    if rule == "left":
        return t / m, np.full(m, 1.0 / m)
    if rule == "middle":
        return (t + 0.5) / m, np.full(m, 1.0 / m)
    if rule == "trapezoid":
        w = np.full(m, 1.0 / (m - 1))
        w[0] = w[-1] = 0.5 / (m - 1)
        return t / (m - 1), w
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(m)
        return (x + 1.0) / 2.0, w / 2.0
    if rule == "demo":
        return t / m, np.ones(m)
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", ["right", "left", "middle", "trapezoid", "gausslegendre", "demo"])
@pytest.mark.parametrize("m", [2, 3, 10, 16, 128])
def test_existing_rules_are_bit_identical(rule, m):
    nodes, weights = path_nodes(rule, m)
    want_nodes, want_weights = _expected(rule, m)
    assert nodes.dtype == weights.dtype == torch.float64
    assert torch.equal(nodes, torch.from_numpy(want_nodes)) and torch.equal(weights, torch.from_numpy(want_weights))


def test_patterson_is_a_rule_with_aliases():
    assert "patterson" in RULES
    assert canonical_rule("Gauss_Patterson") == "patterson"


@pytest.mark.parametrize("points,degree", [(1, 1), (3, 5), (7, 11), (15, 23), (31, 47), (63, 95)])
def test_patterson_levels_are_exact_to_their_degree(points, degree):
    nodes, weights = path_nodes("patterson", points)
    assert nodes.shape == weights.shape == (points,)
    assert bool((nodes > 0).all() and (nodes < 1).all() and (weights > 0).all())
    for k in range(degree + 1):  # ∫_0^1 α^k dα = 1 / (k + 1)
        assert abs(float((weights * nodes**k).sum()) - 1.0 / (k + 1)) < 1e-14, k
    # and not beyond: the Legendre polynomial of the next degree (∫ = 0) is not integrated to zero
    legendre = np.polynomial.legendre.legval(2 * nodes.numpy() - 1, [0] * (degree + 1) + [1])
    assert abs(float(weights.numpy() @ legendre)) > 1e-13  # rounding is ~1e-16


def test_patterson_levels_are_nested_in_introduction_order():
    finest, _ = path_nodes("patterson", PATTERSON_LEVELS[-1])
    for n in PATTERSON_LEVELS:
        nodes, _ = path_nodes("patterson", n)
        assert torch.equal(nodes, finest[:n])
    assert len(set(finest.tolist())) == PATTERSON_LEVELS[-1]


def test_patterson_matches_the_published_kronrod_7_nodes():
    nodes, weights = path_nodes("patterson", 7)
    x = sorted((2 * nodes - 1).tolist())
    # Gauss 3 / Kronrod 7 on [-1, 1] (Kronrod 1965; Patterson 1968)
    assert np.allclose(x[4:], [0.4342437493468026, 0.7745966692414834, 0.9604912687080203], atol=1e-15)
    assert x[3] == 0.0
    order = np.argsort(2 * nodes.numpy() - 1)
    assert np.allclose(2 * weights.numpy()[order][3:], [0.4509165386584741, 0.4013974147759622, 0.2684880898683334,
                                                        0.1046562260264673], atol=1e-15)


@pytest.mark.parametrize("steps", [0, 2, 5, 10, 127])
def test_patterson_refuses_other_step_counts(steps):
    with pytest.raises(ValueError, match="steps"):
        path_nodes("patterson", steps)
