"""Uncertainty metrics: perfect/constant/inverted maps, sklearn agreement, hand-computed AURC/ACE/UEO, valid masks."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nnunetv2_hidiff.evaluation.uncertainty_metrics import (adaptive_calibration_error, aurc, auprc, auroc,
                                                            case_confidence, eaurc, error_mask, expected_entropy,
                                                            mutual_information, normalized_cross_correlation,
                                                            normalized_entropy, rater_disagreement,
                                                            reliability_diagram_data, risk_coverage, total_entropy,
                                                            ueo, ueo_curve)


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return 2.0 * np.sum(pred & ref) / (pred.sum() + ref.sum())


@pytest.fixture
def seg_pair():
    """A 3D reference and a prediction with a few errors."""
    rng = np.random.default_rng(0)
    ref = np.zeros((4, 16, 16), dtype=np.int64)
    ref[:, 4:12, 4:12] = 1
    ref[:, 6:9, 6:9] = 2
    pred = ref.copy()
    flip = rng.random(ref.shape) < 0.08
    pred[flip] = (pred[flip] + 1) % 3
    return pred, ref


# ---------------------------------------------------------------- error detection

def test_error_mask(seg_pair):
    pred, ref = seg_pair
    errors = error_mask(pred, ref)
    assert errors.dtype == bool and np.array_equal(errors, pred != ref)
    valid = np.zeros(ref.shape, dtype=bool)
    valid[:2] = True
    assert np.array_equal(error_mask(pred, ref, valid), (pred != ref) & valid)


def test_perfect_map(seg_pair):
    pred, ref = seg_pair
    errors = error_mask(pred, ref)
    assert 0 < errors.sum() < errors.size
    u = errors.astype(np.float64)
    assert auroc(u, errors) == 1.0
    assert auprc(u, errors) == 1.0
    best, tau = ueo(u, errors)
    assert best == 1.0 and 0 < tau <= 1.0


def test_constant_and_inverted_maps(seg_pair):
    pred, ref = seg_pair
    errors = error_mask(pred, ref)
    constant = np.full(errors.shape, 0.3)
    assert auroc(constant, errors) == 0.5
    assert auprc(constant, errors) == pytest.approx(errors.mean(), abs=1e-15)
    assert auroc(1.0 - errors, errors) == 0.0
    assert auroc(-errors.astype(float), errors) == 0.0


def test_auroc_auprc_nan_cases():
    u = np.array([0.1, 0.5, 0.9])
    assert math.isnan(auroc(u, np.zeros(3, bool)))
    assert math.isnan(auroc(u, np.ones(3, bool)))
    assert math.isnan(auprc(u, np.zeros(3, bool)))
    assert auprc(u, np.ones(3, bool)) == 1.0


def test_auroc_auprc_agree_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((30, 40)), 1)  # 11 distinct values: many ties
    positives = rng.random((30, 40)) < scores * 0.6
    valid = rng.random((30, 40)) < 0.7
    for v in (None, valid):
        s = scores.ravel() if v is None else scores[v]
        y = positives.ravel() if v is None else positives[v]
        assert auroc(scores, positives, v) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert auprc(scores, positives, v) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


def test_auprc_hand_computed():
    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg); thresholds 0.9, 0.8, 0.1:
    # t=0.9: P=1/1, R=1/2; t=0.8 (tied pair enters together): P=2/3, R=1; t=0.1: P=2/4, R=1 (no recall step)
    # AP = 0.5*1 + 0.5*2/3 + 0*0.5 = 5/6
    s = np.array([0.9, 0.8, 0.8, 0.1])
    y = np.array([True, False, True, False])
    assert auprc(s, y) == pytest.approx(5 / 6)
    # AUROC: pairs (pos, neg): (0.9,0.8)=1, (0.9,0.1)=1, (0.8,0.8)=0.5, (0.8,0.1)=1 -> 3.5/4
    assert auroc(s, y) == 0.875


def test_ueo_hand_computed_and_threshold_convention():
    u = np.array([0.2, 0.6, 0.9, 0.4])
    e = np.array([False, True, True, True])
    # tau <= 0.2: all 4 marked, Dice = 2*3/(4+3) = 6/7; 0.2 < tau <= 0.4: marked = errors, Dice = 1
    taus, dice = ueo_curve(u, e)
    assert taus.size == 101 and dice[0] == pytest.approx(6 / 7) and dice[20] == pytest.approx(6 / 7)
    assert dice[21] == 1.0 and dice[40] == 1.0  # tau = 0.4 still marks u = 0.4 (>=)
    assert dice[41] == pytest.approx(2 * 2 / (2 + 3))
    best, tau = ueo(u, e)
    assert best == 1.0 and tau == pytest.approx(0.21)  # smallest maximising threshold
    # tau = 0 marks everything, even zero uncertainty
    assert ueo_curve(np.zeros(4), e, thresholds=[0.0])[1][0] == pytest.approx(6 / 7)


def test_ueo_no_errors_gives_one_at_empty_threshold():
    u = np.full((5, 5), 0.5)
    best, tau = ueo(u, np.zeros((5, 5), bool))
    assert best == 1.0 and tau == pytest.approx(0.51)
    # the map never becomes empty: Dice of a non-empty set with an empty one is 0
    assert ueo(np.full((5, 5), 1.0), np.zeros((5, 5), bool)) == (0.0, 0.0)


def test_valid_mask_excludes_voxels(seg_pair):
    pred, ref = seg_pair
    errors = error_mask(pred, ref)
    u = errors.astype(np.float64)
    # an error outside the valid region that the map misses
    outside = (0, 0, 0)
    errors2, u2 = errors.copy(), u.copy()
    errors2[outside], u2[outside] = True, 0.0
    valid = np.ones(errors.shape, dtype=bool)
    valid[outside] = False
    assert auroc(u2, errors2) < 1.0 and auroc(u2, errors2, valid) == 1.0
    assert auprc(u2, errors2) < 1.0 and auprc(u2, errors2, valid) == 1.0
    assert ueo(u2, errors2)[0] < 1.0 and ueo(u2, errors2, valid)[0] == 1.0
    assert normalized_cross_correlation(u2, errors2) < 1.0
    assert normalized_cross_correlation(u2, errors2, valid) == pytest.approx(1.0)
    # ACE: a wrong, confident voxel outside the valid region changes nothing inside it
    p = np.stack([np.full((2, 2), 0.25), np.full((2, 2), 0.75)])
    r = np.array([[1, 1], [1, 0]])
    v = np.array([[True, True], [True, False]])
    assert adaptive_calibration_error(p, r, n_bins=1, valid=v) == pytest.approx(0.25)
    assert adaptive_calibration_error(p, r, n_bins=1) == pytest.approx(0.0)
    assert case_confidence(np.array([0.0, 0.0, 9.0]), valid=np.array([True, True, False])) == 0.0
    with pytest.raises(ValueError):
        auroc(u2, errors2, valid.astype(int))


# ---------------------------------------------------------------- risk-coverage

def test_aurc_hand_computed():
    risks = np.array([0.1, 0.5, 0.2, 0.8])
    conf = np.array([0.9, 0.3, 0.7, 0.5])
    # by confidence: risks 0.1, 0.2, 0.8, 0.5 -> selective risks 0.1, 0.15, 1.1/3, 1.6/4
    # AURC = (0.1 + 0.15 + 0.366667 + 0.4) / 4 = 0.2541667
    # optimal (ascending risk 0.1, 0.2, 0.5, 0.8): 0.1, 0.15, 0.8/3, 0.4 -> AURC* = 0.2291667
    # E-AURC = (1.1/3 - 0.8/3) / 4 = 0.025
    cov, sel = risk_coverage(risks, conf)
    assert np.allclose(cov, [0.25, 0.5, 0.75, 1.0])
    assert np.allclose(sel, [0.1, 0.15, 1.1 / 3, 0.4])
    assert aurc(risks, conf) == pytest.approx((0.1 + 0.15 + 1.1 / 3 + 0.4) / 4)
    assert eaurc(risks, conf) == pytest.approx(0.025)
    assert eaurc(risks, -risks) == 0.0
    assert eaurc(risks, risks) > eaurc(risks, conf)  # the worst ranking


def test_eaurc_nonnegative_random():
    rng = np.random.default_rng(2)
    for _ in range(20):
        risks = rng.random(12)
        conf = np.round(rng.random(12), 1)
        assert eaurc(risks, conf) >= -1e-15


def test_aurc_ties_average_over_orders():
    risks = np.array([0.0, 1.0, 0.5, 0.2, 0.6])
    conf = np.array([1.0, 1.0, 0.0, 0.5, 0.5])
    # brute force: mean AURC over every order of the tied cases (stable sort keeps the given order)
    values = []
    for perm in itertools.permutations(range(5)):
        r, c = risks[list(perm)], conf[list(perm)]
        order = np.argsort(-c, kind="stable")
        values.append(np.mean(np.cumsum(r[order]) / np.arange(1, 6)))
    expected = np.mean(values)
    assert len(set(np.round(values, 12))) > 1  # order would matter without averaging
    for perm in itertools.permutations(range(5)):
        assert aurc(risks[list(perm)], conf[list(perm)]) == pytest.approx(expected, abs=1e-12)
    # tie group {0.0, 1.0} first: selective risks 0.5, 0.5, then (1 + 0.4)/3, (1 + 0.8)/4, 2.3/5
    assert aurc(risks, conf) == pytest.approx((0.5 + 0.5 + 1.4 / 3 + 1.8 / 4 + 2.3 / 5) / 5)


def test_case_level_perfect_ranking_gives_zero_eaurc():
    ref = np.zeros((32, 32), dtype=bool)
    ref[8:24, 8:24] = True
    fg = np.argwhere(ref)
    risks, confs = [], []
    for k in (0, 3, 10, 30, 60):  # prediction misses k foreground pixels
        pred = ref.copy()
        pred[tuple(fg[:k].T)] = False
        u = error_mask(pred, ref).astype(np.float64)  # the perfect map
        risks.append(1.0 - _dice(pred, ref))
        confs.append(case_confidence(u))
    order = np.random.default_rng(3).permutation(5)
    assert eaurc(np.array(risks)[order], np.array(confs)[order]) == 0.0
    assert math.isnan(case_confidence(np.ones((4, 4)), region=np.zeros((4, 4), bool)))
    region = np.zeros((4, 4), bool)
    region[0] = True
    assert case_confidence(np.arange(16.0).reshape(4, 4), region=region) == -1.5


# ---------------------------------------------------------------- calibration

def _sample_labels(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per voxel drawn from the (C, *spatial) categorical probabilities."""
    u = rng.random(p.shape[1:])
    return (u[None] > np.cumsum(p, axis=0)).sum(axis=0).clip(0, p.shape[0] - 1)


def test_ace_calibrated_vs_overconfident():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(3), size=(200, 250)).transpose(2, 0, 1)  # (3, 200, 250)
    labels = _sample_labels(p, rng)
    ace_calibrated = adaptive_calibration_error(p, labels)
    assert ace_calibrated < 0.02
    sharp = p ** 8
    sharp /= sharp.sum(axis=0, keepdims=True)  # pushed towards 0/1, same argmax
    ace_over = adaptive_calibration_error(sharp, labels)
    assert ace_over > 0.05 and ace_over > 3 * ace_calibrated


def test_ace_hand_computed_two_bins():
    p1 = np.array([0.1, 0.3, 0.8, 1.0])
    p = np.stack([1 - p1, p1])
    ref = np.array([1, 0, 1, 1])
    # class 1, sorted p: {0.1, 0.3} (labels 1, 0): |0.2 - 0.5| = 0.3; {0.8, 1.0} (1, 1): |0.9 - 1| = 0.1
    # class 0, sorted p: {0.0, 0.2} (labels 0, 0): |0.1 - 0| = 0.1; {0.7, 0.9} (1, 0): |0.8 - 0.5| = 0.3
    # ACE = (0.3 + 0.1 + 0.1 + 0.3) / 4 = 0.2
    assert adaptive_calibration_error(p, ref, n_bins=2) == pytest.approx(0.2)
    assert adaptive_calibration_error(p.reshape(2, 2, 2), ref.reshape(2, 2), n_bins=2) == pytest.approx(0.2)


def test_reliability_diagram_data():
    p1 = np.array([0.1, 0.3, 0.8, 1.0, 0.55])
    p = np.stack([1 - p1, p1])
    ref = np.array([1, 0, 1, 1, 0])
    # top-label confidences 0.9, 0.7, 0.8, 1.0, 0.55; correct: no, yes, yes, yes, no
    conf, acc, count = reliability_diagram_data(p, ref, n_bins=5)  # edges 0, .2, .4, .6, .8, 1
    assert count.tolist() == [0, 0, 1, 1, 3]
    assert np.isnan(conf[0]) and np.isnan(acc[1])
    assert conf[2] == pytest.approx(0.55) and acc[2] == 0.0
    assert conf[3] == pytest.approx(0.7) and acc[3] == 1.0
    assert conf[4] == pytest.approx(0.9) and acc[4] == pytest.approx(2 / 3)  # 0.8 lands in the last bin, 1.0 too


# ---------------------------------------------------------------- agreement with raters

def test_ncc():
    rng = np.random.default_rng(5)
    a = rng.random((8, 9))
    assert normalized_cross_correlation(a, a) == pytest.approx(1.0)
    assert normalized_cross_correlation(a, -a) == pytest.approx(-1.0)
    assert normalized_cross_correlation(a, 2 * a + 3) == pytest.approx(1.0)
    assert math.isnan(normalized_cross_correlation(a, np.full(a.shape, 0.1)))
    b = np.array([1.0, 2.0, 3.0, 4.0])
    c = np.array([1.0, 3.0, 2.0, 4.0])
    # centred: (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): mean product = (2.25 - .25 - .25 + 2.25)/4 = 1, var 1.25
    assert normalized_cross_correlation(b, c) == pytest.approx(0.8)


def test_rater_disagreement():
    r1 = np.array([[0, 1], [1, 2]])
    r2 = np.array([[0, 1], [2, 2]])
    r3 = np.array([[1, 1], [0, 2]])
    assert np.array_equal(rater_disagreement(r1, r2), [[0.0, 0.0], [1.0, 0.0]])
    # pairs (1,2), (1,3), (2,3): top-left 0/1/1 -> 2/3; bottom-left 1/1/1 -> 1
    assert np.allclose(rater_disagreement(r1, r2, r3), [[2 / 3, 0.0], [1.0, 0.0]])
    assert np.allclose(rater_disagreement([r1, r2, r3]), rater_disagreement(r1, r2, r3))
    with pytest.raises(ValueError):
        rater_disagreement(r1)


# ---------------------------------------------------------------- map building

def test_normalized_entropy():
    assert np.allclose(normalized_entropy(np.full((4, 3, 5), 0.25)), 1.0)
    onehot = np.zeros((3, 2, 2))
    onehot[1] = 1.0
    assert np.array_equal(normalized_entropy(onehot), np.zeros((2, 2)))
    p = np.array([[0.5 + 1e-17, 1.0 + 1e-12], [0.5, -1e-12]])  # tiny rounding errors are clipped
    h = normalized_entropy(p)
    assert h[0] == pytest.approx(1.0) and h[1] == 0.0
    assert normalized_entropy(np.array([[0.9], [0.1]]))[0] == pytest.approx(
        -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2))


def test_mutual_information():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1)  # (3, 4, 5)
    assert np.array_equal(mutual_information(p[None]), np.zeros((4, 5)))
    same = np.stack([p] * 5)
    assert np.allclose(mutual_information(same), 0.0, atol=1e-12)
    assert np.allclose(total_entropy(same), normalized_entropy(p))
    opposite = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # (K=2, C=2, 2 voxels)
    assert np.allclose(mutual_information(opposite), 1.0)
    # decomposition: total = expected + MI, and all in [0, 1]
    samples = rng.dirichlet(np.ones(2), size=(6, 7)).transpose(0, 2, 1)  # (K=6, C=2, 7)
    mi = mutual_information(samples)
    assert np.all((mi >= 0) & (mi <= 1)) and mi.max() > 0
    assert np.allclose(total_entropy(samples), expected_entropy(samples) + mi)
