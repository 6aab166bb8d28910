"""Descriptive statistics and paired tests for the benchmark.

Conventions (also written into summary.md):

* every mean ignores NaN; a mean over nothing finite is NaN (never an error, never 0);
* "std" is the sample standard deviation (``ddof=1``); with fewer than 2 finite values it is NaN ("n/a");
* a paired test compares ``other − reference`` on the keys present in both mappings whose two values are both
  finite (a NaN on either side drops the pair, so e.g. an undefined HD95 never counts as a difference);
* the test is "n/a" (``p is None``, with the reason in ``note``) with fewer than 2 pairs, when every difference is
  0 (Wilcoxon) or when the differences are constant (t-test: the statistic would be ±inf and p = 0, which is
  meaningless for 2 folds that happen to differ by the same amount). "0" and "constant" allow a relative
  floating-point tolerance of ``ROUNDING``.

Tests: :func:`wilcoxon_paired` (scipy.stats.wilcoxon, two-sided, zero differences dropped as in the original
Wilcoxon procedure) over cases; :func:`ttest_paired` (scipy.stats.ttest_rel, two-sided) over per-fold means.
No correction for multiple comparisons is applied.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Hashable, Iterable, List, Mapping, Optional, Tuple

import numpy as np

MIN_PAIRS = 2
ROUNDING = 1e-12  # relative: differences this small are floating-point noise (treated as 0 / as equal)


def finite(values: Iterable[float]) -> List[float]:
    """The finite values (NaN / inf dropped), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def nan_mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    vals = finite(values)
    return float(np.mean(vals)) if vals else float("nan")


def nan_std(values: Iterable[float]) -> float:
    """Sample standard deviation (ddof=1) of the finite values; NaN with fewer than 2 of them."""
    vals = finite(values)
    return float(np.std(vals, ddof=1)) if len(vals) >= 2 else float("nan")


@dataclass(frozen=True)
class PairedResult:
    """Result of a paired comparison ``other − reference``."""
    test: str  # "wilcoxon" or "ttest_rel"
    n: int  # number of pairs used (both values finite)
    mean_diff: float  # mean of other − reference over the pairs (NaN when n == 0)
    p: Optional[float]  # two-sided p-value; None = not applicable (see note)
    note: str = ""  # why p is n/a, empty otherwise

    @property
    def applicable(self) -> bool:
        return self.p is not None


def paired_differences(reference: Mapping[Hashable, float], other: Mapping[Hashable, float]
                       ) -> Tuple[List[Hashable], np.ndarray]:
    """Keys present in both with finite values on both sides (sorted by str for determinism), and
    ``other[k] − reference[k]`` for them."""
    keys = sorted((k for k in reference.keys() & other.keys()
                   if finite([reference[k]]) and finite([other[k]])), key=str)
    diffs = np.array([float(other[k]) - float(reference[k]) for k in keys], dtype=np.float64)
    scale = max([1.0] + [abs(float(d[k])) for d in (reference, other) for k in keys])
    diffs[np.abs(diffs) <= ROUNDING * scale] = 0.0  # e.g. 0.6 − 0.5 vs 0.8 − 0.7: equal, not "almost equal"
    return keys, diffs


def _not_applicable(test: str, diffs: np.ndarray) -> Optional[PairedResult]:
    n = int(diffs.size)
    mean = float(diffs.mean()) if n else float("nan")
    if n < MIN_PAIRS:
        return PairedResult(test, n, mean, None, f"n/a (fewer than {MIN_PAIRS} pairs)")
    return None


def wilcoxon_paired(reference: Mapping[Hashable, float], other: Mapping[Hashable, float]) -> PairedResult:
    """Wilcoxon signed-rank test of ``other − reference`` over matched keys (e.g. case ids)."""
    from scipy.stats import wilcoxon

    _, diffs = paired_differences(reference, other)
    na = _not_applicable("wilcoxon", diffs)
    if na is not None:
        return na
    mean = float(diffs.mean())
    if not np.any(diffs != 0):
        return PairedResult("wilcoxon", int(diffs.size), mean, None, "n/a (all differences are 0)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's small-sample / tie warnings
        p = float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    if not math.isfinite(p):
        return PairedResult("wilcoxon", int(diffs.size), mean, None, "n/a (test undefined for these differences)")
    return PairedResult("wilcoxon", int(diffs.size), mean, p)


def ttest_paired(reference: Mapping[Hashable, float], other: Mapping[Hashable, float]) -> PairedResult:
    """Paired t-test of ``other − reference`` over matched keys (e.g. folds)."""
    from scipy.stats import ttest_rel

    keys, diffs = paired_differences(reference, other)
    na = _not_applicable("ttest_rel", diffs)
    if na is not None:
        return na
    mean = float(diffs.mean())
    if np.ptp(diffs) <= ROUNDING * max(1.0, float(np.abs(diffs).max())):
        return PairedResult("ttest_rel", int(diffs.size), mean, None, "n/a (differences are constant)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_rel([float(other[k]) for k in keys], [float(reference[k]) for k in keys]).pvalue)
    if not math.isfinite(p):
        return PairedResult("ttest_rel", int(diffs.size), mean, None, "n/a (test undefined for these differences)")
    return PairedResult("ttest_rel", int(diffs.size), mean, p)
