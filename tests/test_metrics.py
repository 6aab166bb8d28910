"""Metrics: hand-computed cases, empty-mask rules, and HD95 against a brute-force oracle."""
import math

import numpy as np
import pytest

from nnunetv2_hidiff.evaluation.metrics import (BOTH_EMPTY, NOT_EMPTY, PRED_EMPTY, REF_EMPTY, accuracy,
                                                compute_case_metrics, dice, empty_counts, hd95, iou, nan_mean,
                                                sensitivity, small_object_metrics, specificity, surface_mask)


# ---------------------------------------------------------------- oracle (independent of scipy.ndimage)

def oracle_surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face neighbour outside the mask or outside the array, via padding + shifts."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = np.ones_like(mask, dtype=bool)
    center = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            sl = list(center)
            sl[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            interior &= padded[tuple(sl)]
    return mask & ~interior


def oracle_hd95(pred, ref, spacing, convention="medpy"):
    ps = np.argwhere(oracle_surface(pred)) * np.asarray(spacing)
    rs = np.argwhere(oracle_surface(ref)) * np.asarray(spacing)
    d = np.sqrt(((ps[:, None, :] - rs[None, :, :]) ** 2).sum(-1))
    d_pr, d_rp = d.min(1), d.min(0)
    if convention == "medpy":
        return np.percentile(np.concatenate([d_pr, d_rp]), 95)
    return max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))


def square(shape, y0, x0, size):
    m = np.zeros(shape, dtype=bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


# ---------------------------------------------------------------- hand-computed cases

def test_square_vs_itself():
    a = square((20, 20), 5, 5, 6)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert hd95(a, a, (0.7, 1.3)) == 0.0
    assert sensitivity(a, a) == 1.0 and specificity(a, a) == 1.0 and accuracy(a, a) == 1.0


def test_shifted_square_known_values():
    # 10x10 square shifted by 2 columns: overlap 10x8
    ref = square((30, 30), 5, 5, 10)
    pred = square((30, 30), 5, 7, 10)
    assert dice(pred, ref) == pytest.approx(2 * 80 / 200)
    assert iou(pred, ref) == pytest.approx(80 / 120)
    assert sensitivity(pred, ref) == pytest.approx(0.8)
    assert accuracy(pred, ref) == pytest.approx(1 - 40 / 900)
    # surface distances per direction: 20 voxels on the outer columns at distance 2 (pred's rightmost column and
    # ref's leftmost column); every other surface voxel lies on the other surface (distance 0) or 1 or 2 apart on
    # the top/bottom rows. Union: 36 + 36 = 72 values; the top 5% (>= 3.6 values) are all 2.
    assert hd95(pred, ref) == pytest.approx(2.0)
    # anisotropic spacing along the shift axis scales the distance: 2 voxels * 1.5 mm
    assert hd95(pred, ref, spacing=(0.5, 1.5)) == pytest.approx(3.0)
    # along the other axis the shift distance is unaffected by the first-axis spacing
    assert hd95(pred, ref, spacing=(4.0, 1.0)) == pytest.approx(2.0)


def test_shifted_cube_anisotropic_3d():
    ref = np.zeros((12, 12, 12), bool)
    ref[3:8, 3:8, 3:8] = True
    pred = np.roll(ref, 3, axis=0)
    assert hd95(pred, ref, spacing=(2.5, 1.0, 1.0)) == pytest.approx(7.5)
    assert hd95(pred, ref, spacing=(2.5, 1.0, 1.0)) == pytest.approx(oracle_hd95(pred, ref, (2.5, 1.0, 1.0)))


def test_singleton_axis_is_dropped_for_2d_images_stored_as_volumes():
    ref = square((16, 16), 4, 4, 6)
    pred = square((16, 16), 4, 5, 6)
    expected = hd95(pred, ref, (1.0, 1.0))
    # nnU-Net stores 2D data as (1, H, W) with a dummy spacing of 999 on the first axis
    assert hd95(pred[None], ref[None], (999.0, 1.0, 1.0)) == pytest.approx(expected)
    assert expected == pytest.approx(oracle_hd95(pred, ref, (1.0, 1.0)))


# ---------------------------------------------------------------- empty-mask rules

def test_both_empty_is_nan_never_one():
    e = np.zeros((10, 10), bool)
    m = compute_case_metrics(e.astype(int), e.astype(int), [1], (1.0, 1.0))[1]
    assert math.isnan(m["Dice"]) and math.isnan(m["IoU"]) and math.isnan(m["HD95"])
    assert math.isnan(m["Sensitivity"])
    assert m["Accuracy"] == 1.0 and m["empty"] == BOTH_EMPTY


@pytest.mark.parametrize("pred_has, status", [(True, REF_EMPTY), (False, PRED_EMPTY)])
def test_exactly_one_empty(pred_has, status):
    full = square((10, 10), 2, 2, 4).astype(int)
    empty = np.zeros((10, 10), int)
    pred, ref = (full, empty) if pred_has else (empty, full)
    m = compute_case_metrics(pred, ref, [1], (1.0, 1.0))[1]
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0
    assert math.isnan(m["HD95"])
    assert m["empty"] == status
    if pred_has:
        assert math.isnan(m["Sensitivity"])
    else:
        assert m["Sensitivity"] == 0.0


def test_empty_counts_and_nan_ratio():
    c = empty_counts([NOT_EMPTY, BOTH_EMPTY, REF_EMPTY, PRED_EMPTY, NOT_EMPTY])
    assert (c["n"], c["n_both_empty"], c["n_hd95_undefined"]) == (5, 1, 2)
    assert c["hd95_nan_ratio"] == pytest.approx(2 / 4)
    assert math.isnan(empty_counts([BOTH_EMPTY])["hd95_nan_ratio"])
    assert nan_mean([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(nan_mean([float("nan")]))


# ---------------------------------------------------------------- HD95 vs oracle on random masks

def _random_blobby_mask(rng, shape, p):
    m = rng.random(shape) < p
    # one smoothing step so the masks have both interiors and ragged surfaces
    from scipy.ndimage import uniform_filter
    return uniform_filter(m.astype(float), 3) > 0.4


@pytest.mark.parametrize("convention", ["medpy", "max"])
@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_bruteforce_oracle_2d(seed, convention):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(12, 30)), int(rng.integers(12, 30)))
    pred, ref = _random_blobby_mask(rng, shape, 0.45), _random_blobby_mask(rng, shape, 0.45)
    if not pred.any() or not ref.any():
        pred[0, 0] = ref[-1, -1] = True
    spacing = tuple(rng.uniform(0.3, 3.0, size=2))
    assert np.array_equal(surface_mask(pred), oracle_surface(pred))
    assert hd95(pred, ref, spacing, convention=convention) == pytest.approx(
        oracle_hd95(pred, ref, spacing, convention), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("convention", ["medpy", "max"])
@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_bruteforce_oracle_3d(seed, convention):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(6, 14, size=3))
    pred, ref = _random_blobby_mask(rng, shape, 0.4), _random_blobby_mask(rng, shape, 0.4)
    if not pred.any() or not ref.any():
        pred[0, 0, 0] = ref[-1, -1, -1] = True
    spacing = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.5, 1.0)))
    assert hd95(pred, ref, spacing, convention=convention) == pytest.approx(
        oracle_hd95(pred, ref, spacing, convention), rel=1e-9, abs=1e-9)


def test_hd95_conventions_differ_on_asymmetric_case():
    # prediction = reference square + a far 3x3 blob: the blob's 8 surface voxels are ~9.5% of the prediction's
    # surface (so its directed p95 is far) but < 5% of the pooled distances (so the pooled p95 stays small)
    ref = square((60, 60), 5, 5, 20)
    pred = ref | square((60, 60), 45, 45, 3)
    medpy, mx = hd95(pred, ref, convention="medpy"), hd95(pred, ref, convention="max")
    assert medpy == pytest.approx(oracle_hd95(pred, ref, (1, 1), "medpy"))
    assert mx == pytest.approx(oracle_hd95(pred, ref, (1, 1), "max"))
    assert medpy < 5 < 20 < mx
    with pytest.raises(ValueError, match="convention"):
        hd95(pred, ref, convention="mean")


def test_hd95_crop_keeps_border_surfaces():
    # masks touching the array border: the image border is background (medpy), cropping must not change that
    ref = np.zeros((20, 20), bool)
    ref[:, :8] = True
    pred = np.zeros((20, 20), bool)
    pred[:, :10] = True
    assert hd95(pred, ref, (1.0, 2.0)) == pytest.approx(oracle_hd95(pred, ref, (1.0, 2.0)))


# ---------------------------------------------------------------- case metrics: regions, FOV, ignore

def test_case_metrics_labels_regions_fov_and_ignore():
    ref = np.zeros((20, 20), int)
    ref[2:8, 2:8] = 1
    ref[10:16, 10:16] = 2
    pred = ref.copy()
    pred[0:2, 0:20] = 1  # false positives in rows 0-1
    fov = np.ones((20, 20), bool)
    fov[0:2] = False  # ... which lie outside the FOV
    m_all = compute_case_metrics(pred, ref, [1, 2, (1, 2)], (1.0, 1.0))
    m_fov = compute_case_metrics(pred, ref, [1, 2, (1, 2)], (1.0, 1.0), fov_mask=fov)
    assert m_all[1]["FP"] == 40 and m_all[1]["Dice"] < 1
    assert m_fov[1]["FP"] == 0 and m_fov[1]["Dice"] == 1.0 and m_fov[1]["HD95"] == 0.0
    assert m_fov[1]["TP"] + m_fov[1]["TN"] == 360 and m_fov[1]["Accuracy"] == 1.0
    assert m_all[2]["Dice"] == 1.0
    assert m_all[(1, 2)]["n_ref"] == 72
    ignore = np.zeros((20, 20), bool)
    ignore[0:2] = True
    m_ign = compute_case_metrics(pred, ref, [1], (1.0, 1.0), ignore_mask=ignore)
    assert m_ign[1]["Dice"] == 1.0 and m_ign[1]["FP"] == 0
    with pytest.raises(ValueError, match="shape"):
        compute_case_metrics(pred, ref[:10], [1], (1.0, 1.0))


# ---------------------------------------------------------------- small-object subset

def test_small_object_slices():
    ref = np.zeros((4, 30, 30), int)
    ref[0, 5:25, 5:25] = 1  # 400 px: small for threshold 500
    ref[1, 0:30, 0:30] = 1  # 900 px: not small
    ref[2, 10:13, 10:13] = 1  # 9 px, missed by the prediction -> HD95 undefined
    # slice 3: empty reference -> not a unit
    pred = ref.copy()
    pred[2] = 0
    pred[3, 0:2, 0:2] = 1
    units = small_object_metrics(pred, ref, [1], (3.0, 0.5, 0.5), 500)[1]
    assert [u["index"] for u in units] == [0, 2]
    assert [u["ref_size"] for u in units] == [400, 9]
    assert units[0]["Dice"] == 1.0 and units[0]["HD95"] == 0.0
    assert units[1]["Dice"] == 0.0 and math.isnan(units[1]["HD95"]) and units[1]["empty"] == PRED_EMPTY
    # whole-case unit: the case has 1309 reference voxels
    assert small_object_metrics(pred, ref, [1], (3.0, 0.5, 0.5), 500, unit="case")[1] == []
    assert len(small_object_metrics(pred, ref, [1], None, 2000, unit="case")[1]) == 1
    # a plain 2D image is one slice
    units_2d = small_object_metrics(pred[0], ref[0], [1], (0.5, 0.5), 500)[1]
    assert [u["ref_size"] for u in units_2d] == [400]
