"""Metrics that judge per-voxel uncertainty maps, and the formulas that build such maps.

Pure numpy/scipy, no files, no torch. Follows the ValUES framework (Kahl et al., ICLR 2024) and Jungo & Reyes
(MICCAI 2019); definitions and conventions are written out in ``docs/reference/uncertainty_metrics.md``.

Every voxel-level function takes arrays of any dimensionality (2D or 3D) and an optional boolean ``valid`` mask of
the same (spatial) shape, e.g. a field-of-view mask: only voxels where ``valid`` is True count. A ``valid`` mask
with no True voxel gives NaN.

Groups:

* error detection: ``error_mask``, ``auroc``, ``auprc``, ``ueo_curve``, ``ueo``;
* calibration: ``adaptive_calibration_error``, ``reliability_diagram_data``;
* case-level failure detection: ``case_confidence``, ``risk_coverage``, ``aurc``, ``eaurc``;
* agreement with raters: ``rater_disagreement``, ``normalized_cross_correlation``;
* map building: ``normalized_entropy``, ``total_entropy``, ``expected_entropy``, ``mutual_information``.
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.special import entr
from scipy.stats import rankdata

__all__ = ["adaptive_calibration_error", "aurc", "auprc", "auroc", "case_confidence", "eaurc", "error_mask",
           "expected_entropy", "mutual_information", "normalized_cross_correlation", "normalized_entropy",
           "rater_disagreement", "reliability_diagram_data", "risk_coverage", "total_entropy", "ueo", "ueo_curve"]

DEFAULT_UEO_THRESHOLDS = np.linspace(0.0, 1.0, 101)


# ---------------------------------------------------------------- helpers

def _check_valid(valid: Optional[np.ndarray], shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    if valid is None:
        return None
    valid = np.asarray(valid)
    if valid.dtype != bool:
        raise ValueError(f"valid must be a boolean mask, got dtype {valid.dtype}")
    if valid.shape != tuple(shape):
        raise ValueError(f"valid has shape {valid.shape}, expected {tuple(shape)}")
    return valid


def _select(valid: Optional[np.ndarray], *arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """The valid voxels of same-shaped arrays, each flattened to 1D."""
    arrays = tuple(np.asarray(a) for a in arrays)
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"shape mismatch: {a.shape} vs {shape}")
    valid = _check_valid(valid, shape)
    if valid is None:
        return tuple(a.ravel() for a in arrays)
    return tuple(a[valid] for a in arrays)


def _finite_scores(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} contains NaN or inf inside the valid region")
    return scores


# ---------------------------------------------------------------- error detection

def error_mask(prediction: np.ndarray, reference: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Bool map ``prediction != reference`` (label maps, any integer labels); False outside ``valid``."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"shape mismatch: {prediction.shape} vs {reference.shape}")
    errors = prediction != reference
    valid = _check_valid(valid, errors.shape)
    return errors if valid is None else errors & valid


def auroc(scores: np.ndarray, positives: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``positives``.

    Mann-Whitney form with average ranks for ties: ``AUROC = (R_pos - n_pos(n_pos+1)/2) / (n_pos n_neg)``, i.e.
    ``P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)``. A constant score gives exactly 0.5, a perfect one exactly 1.0.
    NaN when there are no positives or no negatives.
    """
    s, y = _select(valid, scores, positives)
    s, y = _finite_scores(s, "scores"), y.astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # doubled average ranks are integers, so the sum is exact and the result is one rounding of a rational
    doubled_ranks = np.rint(2.0 * rankdata(s, method="average")).astype(np.int64)
    u2 = int(doubled_ranks[y].sum()) - n_pos * (n_pos + 1)
    return u2 / (2 * n_pos * n_neg)


def auprc(scores: np.ndarray, positives: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """Average precision, step-wise as sklearn's ``average_precision_score``.

    Thresholds are the distinct score values, voxels with ``score >= t`` are called positive (tied scores enter
    together). ``AP = sum_n (R_n - R_{n-1}) P_n`` with ``R_0 = 0``. A constant map gives the positive rate
    ``n_pos / n``; a perfect map gives 1. NaN when there are no positives.
    """
    s, y = _select(valid, scores, positives)
    s, y = _finite_scores(s, "scores"), y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # the last index of each group of equal scores (scores descending)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[ends].astype(np.float64)
    called = (ends + 1).astype(np.float64)
    precision = tp / called
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ueo_curve(uncertainty: np.ndarray, errors: np.ndarray, valid: Optional[np.ndarray] = None,
              thresholds: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Uncertainty-error overlap at each threshold: ``Dice(u >= tau, errors)`` for every ``tau``.

    ``Dice(A, E) = 2|A and E| / (|A| + |E|)``; two empty sets give 1. ``u >= tau`` (not ``>``), so ``tau = 0``
    marks every voxel of a non-negative map. Default thresholds: 0, 0.01, ..., 1.0. One sort, no pass per
    threshold. Returns ``(thresholds, dice)``; NaN everywhere if ``valid`` is empty.
    """
    u, e = _select(valid, uncertainty, errors)
    u, e = _finite_scores(u, "uncertainty"), e.astype(bool)
    taus = np.asarray(DEFAULT_UEO_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64).ravel()
    if u.size == 0:
        return taus, np.full(taus.shape, np.nan)
    u_all, u_err = np.sort(u), np.sort(u[e])
    marked = u_all.size - np.searchsorted(u_all, taus, side="left")  # |u >= tau|
    hits = u_err.size - np.searchsorted(u_err, taus, side="left")  # |(u >= tau) and errors|
    denominator = marked + u_err.size
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denominator == 0, 1.0, 2.0 * hits / np.maximum(denominator, 1))
    return taus, dice


def ueo(uncertainty: np.ndarray, errors: np.ndarray, valid: Optional[np.ndarray] = None,
        thresholds: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """Uncertainty-error overlap (Jungo & Reyes 2019): ``max_tau Dice(u >= tau, errors)``.

    Returns ``(best_ueo, best_threshold)``; on a tie the smallest threshold is returned. No errors and an empty
    thresholded map at some ``tau`` gives UEO = 1 (Dice of two empty sets). See ``ueo_curve``.
    """
    taus, dice = ueo_curve(uncertainty, errors, valid, thresholds)
    if dice.size == 0 or np.all(np.isnan(dice)):
        return float("nan"), float("nan")
    best = int(np.nanargmax(dice))
    return float(dice[best]), float(taus[best])


# ---------------------------------------------------------------- calibration

def _probabilities_and_reference(probabilities: np.ndarray, reference: np.ndarray,
                                 valid: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(C, N) probabilities and (N,) labels of the valid voxels."""
    p = np.asarray(probabilities, dtype=np.float64)
    r = np.asarray(reference)
    if p.ndim < 2 or p.shape[1:] != r.shape:
        raise ValueError(f"probabilities must be (C, *spatial) with spatial = reference.shape; got {p.shape} "
                         f"and {r.shape}")
    valid = _check_valid(valid, r.shape)
    if valid is None:
        return p.reshape(p.shape[0], -1), r.ravel()
    return p[:, valid], r[valid]


def adaptive_calibration_error(probabilities: np.ndarray, reference: np.ndarray, n_bins: int = 15,
                               valid: Optional[np.ndarray] = None) -> float:
    """Adaptive calibration error (Nixon et al. 2019), as used by ValUES.

    ``probabilities``: (C, *spatial) softmax output; ``reference``: label map with values 0..C-1. For each class
    c the valid voxels are sorted by ``p_c`` (stable sort, tied voxels in C order) and split into ``n_bins`` bins
    of equal count (``np.array_split``: sizes differ by at most one). ``ACE = 1/(C R) sum_c sum_r
    |mean_r(p_c) - mean_r(reference == c)|``. Fewer voxels than bins: only the non-empty bins are averaged.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p, r = _probabilities_and_reference(probabilities, reference, valid)
    if r.size == 0:
        return float("nan")
    gaps = []
    for c in range(p.shape[0]):
        order = np.argsort(p[c], kind="stable")
        conf, hit = p[c][order], (r[order] == c).astype(np.float64)
        for conf_bin, hit_bin in zip(np.array_split(conf, n_bins), np.array_split(hit, n_bins)):
            if conf_bin.size:
                gaps.append(abs(conf_bin.mean() - hit_bin.mean()))
    return float(np.mean(gaps))


def reliability_diagram_data(probabilities: np.ndarray, reference: np.ndarray, n_bins: int = 15,
                             valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin ``(mean confidence, accuracy, count)`` of the top-label confidence, for a reliability diagram.

    Confidence = ``max_c p_c``, correct = ``argmax_c p_c == reference``. Equal-width bins with edges
    ``linspace(0, 1, n_bins + 1)``: bin i holds ``i/n <= conf < (i+1)/n``, the last bin also holds conf = 1.
    Empty bins have confidence and accuracy NaN and count 0.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p, r = _probabilities_and_reference(probabilities, reference, valid)
    conf = p.max(axis=0)
    correct = (p.argmax(axis=0) == r).astype(np.float64)
    index = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return mean_conf, accuracy, count


# ---------------------------------------------------------------- case-level failure detection

def case_confidence(uncertainty: np.ndarray, valid: Optional[np.ndarray] = None,
                    region: Optional[np.ndarray] = None) -> float:
    """Case confidence ``= -mean(u)`` over ``region`` (e.g. the predicted foreground) and ``valid``.

    Without ``region`` the mean is over the whole (valid) image. An empty region gives NaN.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    mask = np.ones(u.shape, dtype=bool)
    for m in (valid, region):
        m = _check_valid(m, u.shape)
        if m is not None:
            mask &= m
    if not mask.any():
        return float("nan")
    return float(-u[mask].mean())


def _cases(risks: np.ndarray, confidences: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    r = np.asarray(risks, dtype=np.float64).ravel()
    c = np.asarray(confidences, dtype=np.float64).ravel()
    if r.shape != c.shape:
        raise ValueError(f"risks and confidences differ in length: {r.size} vs {c.size}")
    if r.size == 0:
        raise ValueError("no cases")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))):
        raise ValueError("risks and confidences must be finite (drop or fill NaN cases first)")
    return r, c


def risk_coverage(risks: np.ndarray, confidences: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve: ``(coverages k/n, selective risks)`` for k = 1..n.

    Cases sorted by confidence, descending; the selective risk at coverage k/n is the mean risk of the k most
    confident cases. Tied confidences: the expectation over all orders of the tied cases, i.e. each case's risk is
    replaced by the mean risk of its tie group before the running mean. The result does not depend on case order.
    """
    r, c = _cases(risks, confidences)
    order = np.argsort(-c, kind="stable")
    r, c = r[order], c[order]
    starts = np.r_[0, np.flatnonzero(np.diff(c) != 0) + 1]
    sizes = np.diff(np.r_[starts, c.size])
    group_means = np.add.reduceat(r, starts) / sizes
    r = np.repeat(group_means, sizes)
    k = np.arange(1, r.size + 1, dtype=np.float64)
    return k / r.size, np.cumsum(r) / k


def aurc(risks: np.ndarray, confidences: np.ndarray) -> float:
    """Area under the risk-coverage curve, discrete: ``AURC = 1/n sum_{k=1..n} selective_risk(k)``."""
    return float(np.mean(risk_coverage(risks, confidences)[1]))


def eaurc(risks: np.ndarray, confidences: np.ndarray) -> float:
    """Excess AURC: ``AURC(confidences) - AURC(-risks)`` (the optimal ranking); >= 0, 0 = optimal ranking."""
    r, c = _cases(risks, confidences)
    return aurc(r, c) - aurc(r, -r)


# ---------------------------------------------------------------- agreement with raters

def rater_disagreement(*references: np.ndarray) -> np.ndarray:
    """Per-voxel disagreement of two or more raters' label maps.

    Two raters: 1.0 where the labels differ, 0.0 elsewhere. R raters: the fraction of the R(R-1)/2 rater pairs
    whose labels differ.
    """
    if len(references) == 1 and not isinstance(references[0], np.ndarray):
        references = tuple(references[0])  # a list of maps
    refs = [np.asarray(r) for r in references]
    if len(refs) < 2:
        raise ValueError("rater_disagreement needs at least two label maps")
    for r in refs[1:]:
        if r.shape != refs[0].shape:
            raise ValueError(f"shape mismatch: {r.shape} vs {refs[0].shape}")
    pairs = list(combinations(range(len(refs)), 2))
    disagree = np.zeros(refs[0].shape, dtype=np.float64)
    for i, j in pairs:
        disagree += refs[i] != refs[j]
    return disagree / len(pairs)


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """``NCC = mean((a - mean a)(b - mean b)) / (std a std b)`` over valid voxels (population std).

    In [-1, 1] (clipped against rounding); NaN if either map is constant (max == min) or no voxel is valid.
    """
    x, y = _select(valid, a, b)
    x, y = _finite_scores(x, "a"), _finite_scores(y, "b")
    if x.size == 0 or x.max() == x.min() or y.max() == y.min():
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    ncc = np.mean(x * y) / (x.std() * y.std())
    return float(np.clip(ncc, -1.0, 1.0))


# ---------------------------------------------------------------- map building

def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``H(p) = -sum_c p_c log p_c / log C`` over axis 0 of (C, *spatial) probabilities; in [0, 1].

    ``0 log 0 = 0``; probabilities are clipped to [0, 1] first (tiny negatives from rounding). Needs C >= 2.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or p.shape[0] < 2:
        raise ValueError(f"need (C, *spatial) probabilities with C >= 2 channels, got shape {p.shape}")
    h = entr(np.clip(p, 0.0, 1.0)).sum(axis=0) / np.log(p.shape[0])
    return np.clip(h, 0.0, 1.0)


def _samples(samples: np.ndarray) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim < 2:
        raise ValueError(f"samples must be (K, C, *spatial), got shape {s.shape}")
    return s


def total_entropy(samples: np.ndarray) -> np.ndarray:
    """Predictive (total) uncertainty: ``H(mean_k p_k)`` normalised by log C; ``samples`` is (K, C, *spatial)."""
    return normalized_entropy(_samples(samples).mean(axis=0))


def expected_entropy(samples: np.ndarray) -> np.ndarray:
    """Aleatoric part: ``mean_k H(p_k)`` normalised by log C; ``samples`` is (K, C, *spatial)."""
    s = _samples(samples)
    return np.mean([normalized_entropy(p) for p in s], axis=0)


def mutual_information(samples: np.ndarray) -> np.ndarray:
    """Epistemic part: ``MI = H(mean_k p_k) - mean_k H(p_k)``, normalised by log C, clipped to [0, 1].

    ``samples`` is (K, C, *spatial), the probabilities of K passes. K = 1 gives exactly 0 everywhere.
    """
    s = _samples(samples)
    if s.shape[0] == 1:
        return np.zeros(s.shape[2:], dtype=np.float64)
    return np.clip(total_entropy(s) - expected_entropy(s), 0.0, 1.0)
