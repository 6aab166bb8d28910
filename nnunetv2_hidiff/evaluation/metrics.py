"""Per-case segmentation metrics for HiDiff: Dice, IoU, HD95 (physical units), sensitivity, specificity, accuracy.

Pure numpy/scipy. Nothing here reads files or imports nnU-Net, so every function can be unit-tested on arrays.

Masks
-----
A label is ``seg == label``; a region (tuple of labels, nnU-Net's region training) is the union of its labels.
Metrics are computed on the masks restricted to the *valid region*: inside ``fov_mask`` (if given) and outside
``ignore_mask`` (nnU-Net's ignore label, if given). TP/FP/FN/TN therefore only count valid voxels.

Empty-mask rules (per case, or per slice in the small-object subset, and per class)
---------------------------------------------------------------------------------
``EMPTY_MASK_RULES`` below is the text written into summary.json; in short:

* both masks empty ("both_empty"): Dice = IoU = HD95 = NaN, Sensitivity = NaN. There is nothing to segment and
  nothing was predicted, so no overlap or distance can be measured. This is nnU-Net's Dice rule
  (``tp + fp + fn == 0`` gives NaN). Counted as ``n_both_empty``; never scored as 1 or 0.
* exactly one mask empty ("ref_empty": a false-positive case, "pred_empty": a missed case): Dice = IoU = 0
  (the formulas give 0), HD95 = NaN because a distance to an empty set is undefined. Counted as
  ``n_hd95_undefined`` (the paper's "NaN ratio"). Sensitivity is NaN when the reference is empty, 0 when the
  prediction is.
* Accuracy and Specificity are defined whenever the valid region is non-empty.
* Means ignore NaN (``np.nanmean``); the NaN counts are reported next to them.

This is deliberately *not* the official HiDiff code's convention (both empty -> Dice 1 and HD95 = 1, one empty
-> HD95 None; see official-code-notes row 27 / pitfall 16).

HD95
----
Surface voxels: ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, connectivity))`` with
``border_value=0``, i.e. with the default ``connectivity=1`` a voxel of the mask is on the surface when at least one
of its 2*ndim face neighbours is background or lies outside the array (medpy's definition).
Directed distances: for every surface voxel of A, the Euclidean distance in physical units to the nearest surface
voxel of B, via ``scipy.ndimage.distance_transform_edt(~surface_B, sampling=spacing)``.

Two conventions exist for combining the two directions:

* ``"medpy"`` (default): the 95th percentile of the *union* of both directed distance sets,
  ``percentile(concat(d(pred->ref), d(ref->pred)), 95)``. This is what ``medpy.metric.binary.hd95`` computes, and
  medpy is what the paper's baselines (TransUNet protocol, ref. [6]) and the official HiDiff code use.
* ``"max"``: ``max(p95(d(pred->ref)), p95(d(ref->pred)))``, MONAI's ``compute_hausdorff_distance(percentile=95)``.

Both use numpy's default (linear) percentile interpolation. Axes of length 1 are dropped before computing
surfaces, so a 2D image stored as a (1, H, W) volume (nnU-Net's layout for 2D data, with a dummy spacing of 999
on the first axis) is measured in 2D instead of every pixel becoming a surface voxel.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

LabelOrRegion = Union[int, Tuple[int, ...]]

HD95_CONVENTIONS = ("medpy", "max")

BOTH_EMPTY = "both_empty"
REF_EMPTY = "ref_empty"  # reference empty, prediction not: a false-positive case
PRED_EMPTY = "pred_empty"  # prediction empty, reference not: a missed case
NOT_EMPTY = "none"

EMPTY_MASK_RULES = (
    "Per case (or slice) and class, on masks restricted to the FOV / outside the ignore label: "
    "both reference and prediction empty -> Dice, IoU, HD95 and Sensitivity are NaN (counted in n_both_empty); "
    "exactly one empty -> Dice = IoU = 0 and HD95 = NaN (counted in n_hd95_undefined, split into n_ref_empty = "
    "false-positive cases and n_pred_empty = missed cases); Sensitivity is NaN if the reference is empty. "
    "Accuracy/Specificity are defined whenever the valid region is non-empty. Means ignore NaN. "
    "hd95_nan_ratio = n_hd95_undefined / (n - n_both_empty). No metric is ever set to 1 for empty masks."
)


def region_or_label_to_mask(segmentation: np.ndarray, region_or_label: LabelOrRegion) -> np.ndarray:
    """Boolean mask of a label (int) or a region (tuple of labels), like nnU-Net's function of the same name."""
    if np.isscalar(region_or_label):
        return segmentation == region_or_label
    return np.isin(segmentation, np.asarray(region_or_label))


def empty_status(pred: np.ndarray, ref: np.ndarray) -> str:
    """One of ``BOTH_EMPTY``, ``REF_EMPTY``, ``PRED_EMPTY``, ``NOT_EMPTY`` for two boolean masks."""
    has_pred, has_ref = bool(np.any(pred)), bool(np.any(ref))
    if not has_pred and not has_ref:
        return BOTH_EMPTY
    if not has_ref:
        return REF_EMPTY
    if not has_pred:
        return PRED_EMPTY
    return NOT_EMPTY


def confusion_counts(pred: np.ndarray, ref: np.ndarray, valid: Optional[np.ndarray] = None) -> Tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two boolean masks, counting only voxels where ``valid`` is True."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if valid is not None:
        pred = pred & valid
        ref = ref & valid
        n = int(np.count_nonzero(valid))
    else:
        n = pred.size
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    return tp, fp, fn, n - tp - fp - fn


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def dice(pred: np.ndarray, ref: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """2TP / (2TP + FP + FN); NaN if both masks are empty."""
    tp, fp, fn, _ = confusion_counts(pred, ref, valid)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou(pred: np.ndarray, ref: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """TP / (TP + FP + FN) (Jaccard); NaN if both masks are empty."""
    tp, fp, fn, _ = confusion_counts(pred, ref, valid)
    return _ratio(tp, tp + fp + fn)


def sensitivity(pred: np.ndarray, ref: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """TP / (TP + FN) (recall); NaN if the reference is empty."""
    tp, _, fn, _ = confusion_counts(pred, ref, valid)
    return _ratio(tp, tp + fn)


def specificity(pred: np.ndarray, ref: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """TN / (TN + FP); NaN if the reference covers the whole valid region."""
    _, fp, _, tn = confusion_counts(pred, ref, valid)
    return _ratio(tn, tn + fp)


def accuracy(pred: np.ndarray, ref: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """(TP + TN) / N over the valid region (pixel accuracy of the binary mask); NaN if N == 0."""
    tp, fp, fn, tn = confusion_counts(pred, ref, valid)
    return _ratio(tp + tn, tp + fp + fn + tn)


def _prepare_pair(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]]):
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (pred.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not match mask dimensionality {pred.ndim}")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    # drop axes of length 1 (dummy axis of 2D data, see module docstring); keep at least one axis
    keep = [i for i, s in enumerate(pred.shape) if s > 1] or [0]
    new_shape = tuple(pred.shape[i] for i in keep)
    return pred.reshape(new_shape), ref.reshape(new_shape), spacing[keep]


def surface_mask(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Surface voxels of a boolean mask: ``mask XOR binary_erosion(mask)`` (voxels outside the array are background)."""
    mask = np.asarray(mask, dtype=bool)
    footprint = generate_binary_structure(mask.ndim, connectivity)
    return mask ^ binary_erosion(mask, structure=footprint, iterations=1, border_value=0)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a 1-voxel margin.

    Distances between the two surfaces never leave this box and the margin keeps every surface decision identical
    (a voxel at the array border stays at the crop border), so this only saves time on large images.
    """
    coords = np.nonzero(pred | ref)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    return pred[box], ref[box]


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None,
                      connectivity: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (d(pred->ref), d(ref->pred)) in physical units. Both masks must be non-empty."""
    pred, ref, spacing = _prepare_pair(pred, ref, spacing)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances are undefined for an empty mask")
    pred, ref = _crop_to_union(pred, ref)
    pred_surface = surface_mask(pred, connectivity)
    ref_surface = surface_mask(ref, connectivity)
    d_pred_to_ref = distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    d_ref_to_pred = distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return d_pred_to_ref, d_ref_to_pred


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None, connectivity: int = 1,
         convention: str = "medpy") -> float:
    """95th-percentile Hausdorff distance in the units of ``spacing`` (voxels if None).

    NaN if either mask is empty (see the empty-mask rules). ``convention`` is "medpy" (percentile of the union of
    both directed distance sets, the default) or "max" (max of the two directed percentiles, MONAI).
    """
    if convention not in HD95_CONVENTIONS:
        raise ValueError(f"unknown HD95 convention {convention!r}, expected one of {HD95_CONVENTIONS}")
    pred, ref, spacing = _prepare_pair(pred, ref, spacing)
    if not pred.any() or not ref.any():
        return float("nan")
    d_pr, d_rp = surface_distances(pred, ref, spacing, connectivity)
    if convention == "medpy":
        return float(np.percentile(np.concatenate([d_pr, d_rp]), 95))
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None,
                   valid: Optional[np.ndarray] = None, hd95_convention: str = "medpy") -> dict:
    """All metrics of one binary mask pair restricted to ``valid``; HD95 uses the restricted masks."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if valid is not None:
        pred = pred & valid
        ref = ref & valid
    tp, fp, fn, tn = confusion_counts(pred, ref)
    if valid is not None:
        tn -= int(pred.size - np.count_nonzero(valid))  # voxels outside the valid region are not negatives
    return {
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "IoU": _ratio(tp, tp + fp + fn),
        "HD95": hd95(pred, ref, spacing, convention=hd95_convention),
        "Sensitivity": _ratio(tp, tp + fn),
        "Specificity": _ratio(tn, tn + fp),
        "Accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "TP": tp, "FP": fp, "FN": fn, "TN": tn,
        "n_pred": tp + fp, "n_ref": tp + fn,
        "empty": empty_status(pred, ref),
    }


def _valid_region(shape: Tuple[int, ...], fov_mask: Optional[np.ndarray],
                  ignore_mask: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if fov_mask is None and ignore_mask is None:
        return None
    valid = np.ones(shape, dtype=bool)
    for mask, name in ((fov_mask, "fov_mask"), (ignore_mask, "ignore_mask")):
        if mask is not None and np.shape(mask) != shape:
            raise ValueError(f"{name} shape {np.shape(mask)} != segmentation shape {shape}")
    if fov_mask is not None:
        valid &= np.asarray(fov_mask) != 0
    if ignore_mask is not None:
        valid &= ~np.asarray(ignore_mask, dtype=bool)
    return valid


def compute_case_metrics(pred_seg: np.ndarray, ref_seg: np.ndarray, labels_or_regions: Sequence[LabelOrRegion],
                         spacing: Optional[Sequence[float]], fov_mask: Optional[np.ndarray] = None,
                         ignore_mask: Optional[np.ndarray] = None,
                         hd95_convention: str = "medpy") -> Dict[LabelOrRegion, dict]:
    """Metrics of one case for every label/region.

    Args:
        pred_seg, ref_seg: integer label maps of identical shape (spatial axes only, no channel axis).
        labels_or_regions: e.g. ``[1, 2]`` or ``[(1, 2, 3), (2, 3)]``.
        spacing: voxel spacing per axis of the arrays (physical units for HD95).
        fov_mask: optional; only voxels where it is non-zero are evaluated.
        ignore_mask: optional boolean mask of voxels to exclude (nnU-Net's ignore label).
    Returns:
        ``{label_or_region: binary_metrics(...)}``.
    """
    pred_seg = np.asarray(pred_seg)
    ref_seg = np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"prediction shape {pred_seg.shape} != reference shape {ref_seg.shape}")
    valid = _valid_region(ref_seg.shape, fov_mask, ignore_mask)
    return {r: binary_metrics(region_or_label_to_mask(pred_seg, r), region_or_label_to_mask(ref_seg, r), spacing,
                              valid, hd95_convention)
            for r in labels_or_regions}


SMALL_OBJECT_UNITS = ("slice", "case")


def small_object_metrics(pred_seg: np.ndarray, ref_seg: np.ndarray, labels_or_regions: Sequence[LabelOrRegion],
                         spacing: Optional[Sequence[float]], max_ref_size: int, unit: str = "slice",
                         slice_axis: int = 0, fov_mask: Optional[np.ndarray] = None,
                         ignore_mask: Optional[np.ndarray] = None,
                         hd95_convention: str = "medpy") -> Dict[LabelOrRegion, List[dict]]:
    """Metrics on the small-object subset of paper Tables VII/VIII.

    A *unit* is a 2D slice along ``slice_axis`` (``unit="slice"``, the paper's protocol: organ/tumour pixel count
    in the 2D slice below the threshold; a 2D image is a single slice) or the whole case (``unit="case"``). A unit
    enters the subset for a class when its reference size (valid voxels) satisfies ``0 < size < max_ref_size``.
    Units with an empty reference are not small objects and are skipped, so "both empty" never occurs here.

    Returns ``{label_or_region: [{"index", "ref_size", "Dice", "IoU", "HD95", "empty"}, ...]}`` where ``index`` is
    the slice index (None for ``unit="case"``). A 2D array (no slice axis) counts as a single slice.
    """
    if unit not in SMALL_OBJECT_UNITS:
        raise ValueError(f"unknown small-object unit {unit!r}, expected one of {SMALL_OBJECT_UNITS}")
    pred_seg = np.asarray(pred_seg)
    ref_seg = np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"prediction shape {pred_seg.shape} != reference shape {ref_seg.shape}")
    spacing = np.ones(ref_seg.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if unit == "slice" and ref_seg.ndim == 2:  # a plain 2D array is one slice
        pred_seg, ref_seg, spacing, slice_axis = pred_seg[None], ref_seg[None], np.r_[1.0, spacing], 0
        fov_mask = None if fov_mask is None else np.asarray(fov_mask)[None]
        ignore_mask = None if ignore_mask is None else np.asarray(ignore_mask)[None]
    valid = _valid_region(ref_seg.shape, fov_mask, ignore_mask)
    keys = ("Dice", "IoU", "HD95", "empty")
    out = {}
    for r in labels_or_regions:
        pred = region_or_label_to_mask(pred_seg, r)
        ref = region_or_label_to_mask(ref_seg, r)
        if valid is not None:
            pred &= valid
            ref &= valid
        units = []
        if unit == "case":
            size = int(np.count_nonzero(ref))
            if 0 < size < max_ref_size:
                m = binary_metrics(pred, ref, spacing, None, hd95_convention)
                units.append({"index": None, "ref_size": size, **{k: m[k] for k in keys}})
        else:
            other_axes = tuple(i for i in range(ref.ndim) if i != slice_axis)
            sizes = np.count_nonzero(ref, axis=other_axes)
            slice_spacing = np.delete(spacing, slice_axis)
            for s in np.flatnonzero((sizes > 0) & (sizes < max_ref_size)):
                m = binary_metrics(np.take(pred, s, axis=slice_axis), np.take(ref, s, axis=slice_axis),
                                   slice_spacing, None, hd95_convention)
                units.append({"index": int(s), "ref_size": int(sizes[s]), **{k: m[k] for k in keys}})
        out[r] = units
    return out


def nan_mean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without a RuntimeWarning) if there is no finite value."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def empty_counts(statuses: Sequence[str]) -> dict:
    """Counts of the empty-mask categories and the HD95 NaN ratio (see EMPTY_MASK_RULES)."""
    statuses = list(statuses)
    n = len(statuses)
    n_both = statuses.count(BOTH_EMPTY)
    n_ref_empty = statuses.count(REF_EMPTY)
    n_pred_empty = statuses.count(PRED_EMPTY)
    n_undefined = n_ref_empty + n_pred_empty
    return {
        "n": n,
        "n_both_empty": n_both,
        "n_ref_empty": n_ref_empty,
        "n_pred_empty": n_pred_empty,
        "n_hd95_undefined": n_undefined,
        "hd95_nan_ratio": _ratio(n_undefined, n - n_both),
    }
