"""Summaries of per-item scores and paired comparisons of two methods on the same items."""

from __future__ import annotations

import math

import torch

__all__ = ["describe", "paired_difference"]


def describe(values, scale: float = 1.0) -> dict:
    """mean, std (sample, ddof = 1; NaN for n < 2), n (finite values) and nan (count) of values × scale."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten().cpu() * scale
    finite = v[~torch.isnan(v)]
    n = int(finite.numel())
    return dict(mean=float(finite.mean()) if n else math.nan, std=float(finite.std()) if n > 1 else math.nan,
                n=n, nan=int(v.numel() - n))


def paired_difference(values, reference, scale: float = 1.0) -> dict:
    """values − reference on the items where both are finite: mean difference, n, and the
    two-sided Wilcoxon signed-rank p-value (scipy; zero differences dropped, scipy's default
    "wilcox" handling; NaN when fewer than one non-zero difference or n < 2)."""
    a = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    b = torch.as_tensor(reference, dtype=torch.float64).flatten().cpu()
    if a.shape != b.shape:
        raise ValueError(f"paired values must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    keep = ~(torch.isnan(a) | torch.isnan(b))
    d = ((a - b)[keep] * scale).numpy()
    n = int(d.size)
    p = math.nan
    if n >= 2 and (d != 0).any():
        from scipy.stats import wilcoxon

        p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return dict(mean_diff=float(d.mean()) if n else math.nan, n=n, p=p)
