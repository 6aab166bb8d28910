"""Evaluate a prediction folder against a reference folder and write an extended nnU-Net summary.json.

nnU-Net's own keys are computed by nnU-Net's per-case ``compute_metrics`` and aggregated exactly as its
``compute_metrics_on_folder`` does (``metric_per_case[i]["metrics"][label]`` with Dice, IoU, TP, FP, FN, TN, n_pred,
n_ref; ``mean`` = nanmean over cases; ``foreground_mean`` = mean of the class means), so every tool that reads nnU-Net
summaries keeps working; a test checks equality with ``compute_metrics_on_folder2``. We call the per-case function
from our own worker instead of ``compute_metrics_on_folder`` itself because the latter always starts its own
``multiprocessing.Pool`` (even for one process): that doubled the process start-up, and a Pool can block forever
(e.g. when a worker dies mid-task; we hit such a hang on the shared CPU machine). Our pass runs in-process for
``num_processes=1`` and otherwise in a ``ProcessPoolExecutor``, which raises instead of hanging. We add:

* per case and class: ``HD95`` (physical units), ``Sensitivity``, ``Specificity``, ``Accuracy`` and, with a FOV
  folder, ``Dice_FOV`` / ``IoU_FOV``; per case ``hidiff_empty`` = {class: empty-mask category}. With a FOV folder
  all added metrics are computed inside the FOV while nnU-Net's keys stay whole-image (so they remain comparable to
  nnU-Net's summaries).
* the same keys' NaN-ignoring means in ``mean[label]`` and ``foreground_mean`` (``foreground_mean`` is the mean of
  the class means, as nnU-Net computes it).
* top level: ``hidiff_settings`` (conventions, empty-mask rules, FOV folder, thresholds), ``hidiff_nan_ratio``
  (per class counts of the empty-mask categories and the HD95 NaN ratio) and ``hidiff_small_objects`` (paper
  Tables VII/VIII subset).

The file is written to a temporary file in the same folder and moved into place with ``os.replace``, so an
existing summary.json is never replaced by a half-written one.
"""
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subfiles

from nnunetv2_hidiff.atomic import atomic_path
from nnunetv2_hidiff.evaluation.metrics import (EMPTY_MASK_RULES, HD95_CONVENTIONS, SMALL_OBJECT_UNITS,
                                                LabelOrRegion, compute_case_metrics, empty_counts, nan_mean,
                                                small_object_metrics)

ADDED_CASE_KEYS = ("HD95", "Sensitivity", "Specificity", "Accuracy")
FOV_CASE_KEYS = ("Dice_FOV", "IoU_FOV")


class EvaluationError(Exception):
    """Bad evaluation input (missing folder/file, file mismatch, shape mismatch). The message names the problem."""


def _read_seg(rw, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    """Segmentation without the channel axis, and its spacing (one value per remaining axis)."""
    try:
        seg, props = rw.read_seg(fname)
    except Exception as e:  # readers raise anything from RuntimeError to OSError on broken files
        raise EvaluationError(f"{fname}: cannot be read ({type(e).__name__}: {e})") from None
    spacing = np.asarray(props["spacing"], dtype=np.float64)
    seg = seg[0]
    if spacing.shape != (seg.ndim,):
        raise EvaluationError(f"{fname}: spacing {tuple(spacing)} does not match the image dimensions {seg.shape}")
    return seg, spacing


def evaluate_case(ref_file: str, pred_file: str, fov_file: Optional[str], rw,
                  labels_or_regions: Sequence[LabelOrRegion], ignore_label: Optional[int],
                  small_threshold: int, small_unit: str, slice_axis: int, hd95_convention: str) -> dict:
    """nnU-Net's and our metrics for one case (may run in a worker process). Spacing is from the reference image."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics

    ref, spacing = _read_seg(rw, ref_file)
    pred, pred_spacing = _read_seg(rw, pred_file)
    if pred.shape != ref.shape:
        raise EvaluationError(f"{pred_file}: shape {pred.shape} does not match the reference {ref_file} "
                              f"shape {ref.shape}")
    if not np.allclose(pred_spacing, spacing, rtol=1e-3, atol=1e-6):
        raise EvaluationError(f"{pred_file}: spacing {tuple(pred_spacing)} does not match the reference "
                              f"{ref_file} spacing {tuple(spacing)}")
    fov = None
    if fov_file is not None:
        fov, _ = _read_seg(rw, fov_file)
        if fov.shape != ref.shape:
            raise EvaluationError(f"{fov_file}: FOV mask shape {fov.shape} does not match the reference "
                                  f"{ref_file} shape {ref.shape}")
    ignore = (ref == ignore_label) if ignore_label is not None else None
    metrics = compute_case_metrics(pred, ref, labels_or_regions, spacing, fov, ignore, hd95_convention)
    small = {}
    if small_threshold > 0:
        small = small_object_metrics(pred, ref, labels_or_regions, spacing, small_threshold, small_unit,
                                     slice_axis, fov, ignore, hd95_convention)
    nnunet = compute_metrics(ref_file, pred_file, rw, labels_or_regions, ignore_label)
    return {"prediction_file": pred_file, "nnunet": nnunet, "metrics": metrics, "small_objects": small}


def _check_inputs(folder_ref: str, folder_pred: str, file_ending: str, fov_folder: Optional[str],
                  chill: bool) -> Tuple[List[str], Optional[List[str]]]:
    for name, folder in (("reference", folder_ref), ("prediction", folder_pred), ("FOV", fov_folder)):
        if folder is not None and not isdir(folder):
            raise EvaluationError(f"{folder}: {name} folder does not exist")
    files_pred = subfiles(folder_pred, suffix=file_ending, join=False)
    files_ref = subfiles(folder_ref, suffix=file_ending, join=False)
    if not files_pred:
        raise EvaluationError(f"{folder_pred}: no prediction files ending in {file_ending}")
    extra = sorted(set(files_pred) - set(files_ref))
    if extra:
        raise EvaluationError(f"{join(folder_pred, extra[0])}: no reference file with this name in {folder_ref} "
                              f"({len(extra)} prediction file(s) without reference; {len(files_pred)} predictions, "
                              f"{len(files_ref)} references)")
    missing = sorted(set(files_ref) - set(files_pred))
    if missing and not chill:
        raise EvaluationError(f"{join(folder_ref, missing[0])}: no prediction with this name in {folder_pred} "
                              f"({len(missing)} reference file(s) not predicted; {len(files_pred)} predictions, "
                              f"{len(files_ref)} references; use --chill to evaluate only the predicted cases)")
    fov_files = None
    if fov_folder is not None:
        fov_files = [join(fov_folder, f) for f in files_pred]
        absent = [f for f in fov_files if not isfile(f)]
        if absent:
            raise EvaluationError(f"{absent[0]}: FOV mask missing ({len(absent)} of {len(fov_files)} missing)")
    return files_pred, fov_files


def _run_cases(args: List[tuple], num_processes: int) -> List[dict]:
    if num_processes <= 1 or len(args) == 1:
        return [evaluate_case(*a) for a in args]
    try:
        with ProcessPoolExecutor(min(num_processes, len(args)), mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(evaluate_case, *zip(*args)))
    except BrokenProcessPool:
        raise EvaluationError(f"a worker process died while evaluating {len(args)} cases: out of memory (retry "
                              f"with fewer processes, -np), or the spawned workers could not import the main "
                              f"module (a script read from stdin, or one that runs its command without "
                              f"`if __name__ == '__main__':`; their tracebacks are above)") from None


def _nnunet_aggregate(per_case: List[dict], labels_or_regions: Sequence[LabelOrRegion]) -> dict:
    """The aggregation of nnunetv2's compute_metrics_on_folder, unchanged (nanmean per class, mean over classes)."""
    metric_list = list(per_case[0]["metrics"][labels_or_regions[0]].keys())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN class
        means = {r: {m: np.nanmean([c["metrics"][r][m] for c in per_case]) for m in metric_list}
                 for r in labels_or_regions}
        foreground_mean = {m: np.mean([means[k][m] for k in means if k != 0 and k != "0"]) for m in metric_list}
    return {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground_mean}


def _merge(nnunet_result: dict, ours: List[dict], labels_or_regions: Sequence[LabelOrRegion],
           use_fov: bool) -> None:
    """Add our per-case keys and their means to nnU-Net's result dict (in place)."""
    by_file = {o["prediction_file"]: o for o in ours}
    for case in nnunet_result["metric_per_case"]:
        m_ours = by_file[case["prediction_file"]]["metrics"]
        # kept outside "metrics" so that every value in there stays numeric
        case["hidiff_empty"] = {_label_key(r): m_ours[r]["empty"] for r in labels_or_regions}
        for r in labels_or_regions:
            case["metrics"][r].update({k: m_ours[r][k] for k in ADDED_CASE_KEYS})
            if use_fov:
                case["metrics"][r].update({"Dice_FOV": m_ours[r]["Dice"], "IoU_FOV": m_ours[r]["IoU"]})
    keys = ADDED_CASE_KEYS + (FOV_CASE_KEYS if use_fov else ())
    for r in labels_or_regions:
        for k in keys:
            nnunet_result["mean"][r][k] = nan_mean([c["metrics"][r][k] for c in nnunet_result["metric_per_case"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in keys:  # same rule as nnU-Net's foreground_mean: plain mean of the class means
            nnunet_result["foreground_mean"][k] = float(np.mean([nnunet_result["mean"][r][k]
                                                                 for r in labels_or_regions]))


def _label_key(r: LabelOrRegion) -> str:
    return str(r)  # identical to nnunetv2.evaluation.evaluate_predictions.label_or_region_to_key


def _nan_ratio_report(ours: List[dict], labels_or_regions: Sequence[LabelOrRegion]) -> dict:
    return {_label_key(r): empty_counts([o["metrics"][r]["empty"] for o in ours]) for r in labels_or_regions}


def _small_objects_report(ours: List[dict], labels_or_regions: Sequence[LabelOrRegion], threshold: int,
                          unit: str, slice_axis: int) -> dict:
    per_class = {}
    for r in labels_or_regions:
        units = [u for o in ours for u in o["small_objects"].get(r, [])]
        counts = empty_counts([u["empty"] for u in units])
        per_class[_label_key(r)] = {
            "n_units": len(units),
            "n_cases": sum(1 for o in ours if o["small_objects"].get(r)),
            "Dice": nan_mean([u["Dice"] for u in units]),
            "IoU": nan_mean([u["IoU"] for u in units]),
            "HD95": nan_mean([u["HD95"] for u in units]),
            "n_hd95_undefined": counts["n_hd95_undefined"],
            "hd95_nan_ratio": counts["hd95_nan_ratio"],
        }
    with_units = [v for v in per_class.values() if v["n_units"] > 0]
    return {
        "threshold": threshold,
        "unit": unit,
        "slice_axis": slice_axis if unit == "slice" else None,
        "definition": f"{unit}s whose reference size (valid pixels/voxels of the class) is > 0 and < {threshold}",
        "per_class": per_class,
        # mean over the classes that have small units (a class without small objects is not a failure)
        "foreground_mean": {k: nan_mean([v[k] for v in with_units]) for k in ("Dice", "IoU", "HD95")},
    }


def write_summary_atomically(result: dict, output_file: str) -> None:
    """nnU-Net's save_summary_json into a temporary file next to ``output_file``, then ``os.replace``."""
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json

    out_dir = os.path.dirname(os.path.abspath(output_file))
    if not isdir(out_dir):
        raise EvaluationError(f"{output_file}: output folder {out_dir} does not exist")
    with atomic_path(output_file) as tmp:
        save_summary_json(result, tmp)


def evaluate_folder(folder_ref: str, folder_pred: str, dataset_json_file: str, plans_file: str,
                    output_file: Optional[str] = None, fov_folder: Optional[str] = None,
                    small_threshold: int = 500, small_unit: str = "slice", slice_axis: int = 0,
                    hd95_convention: str = "medpy", num_processes: int = 2, chill: bool = False) -> dict:
    """nnU-Net's compute_metrics_on_folder2 plus our metrics; writes ``output_file`` (default pred/summary.json).

    ``small_threshold`` <= 0 disables the small-object report. Raises EvaluationError on bad input.
    Returns the result dict (label/region keys are ints/tuples, as with nnU-Net's compute_metrics_on_folder).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if hd95_convention not in HD95_CONVENTIONS:
        raise EvaluationError(f"unknown HD95 convention {hd95_convention!r}, expected one of {HD95_CONVENTIONS}")
    if small_unit not in SMALL_OBJECT_UNITS:
        raise EvaluationError(f"unknown small-object unit {small_unit!r}, expected one of {SMALL_OBJECT_UNITS}")
    for name, f in (("dataset.json", dataset_json_file), ("plans", plans_file)):
        if not isfile(f):
            raise EvaluationError(f"{f}: {name} file does not exist")
    try:
        dataset_json = load_json(dataset_json_file)
        file_ending = dataset_json["file_ending"]
        label_manager = PlansManager(plans_file).get_label_manager(dataset_json)
    except Exception as e:
        raise EvaluationError(f"{dataset_json_file} / {plans_file}: cannot be used "
                              f"({type(e).__name__}: {e})") from None
    if output_file is None:
        output_file = join(folder_pred, "summary.json")
    if not output_file.endswith(".json"):
        raise EvaluationError(f"{output_file}: output file must end with .json")

    files_pred, fov_files = _check_inputs(folder_ref, folder_pred, file_ending, fov_folder, chill)
    rw = determine_reader_writer_from_dataset_json(dataset_json, join(folder_ref, files_pred[0]))()
    labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    ignore_label = label_manager.ignore_label

    # every case is validated (readable, shapes, spacing) before nnU-Net's metrics run, for clear error messages
    args = [(join(folder_ref, f), join(folder_pred, f), None if fov_files is None else fov_files[i], rw, labels,
             ignore_label, small_threshold, small_unit, slice_axis, hd95_convention)
            for i, f in enumerate(files_pred)]
    ours = _run_cases(args, num_processes)
    result = _nnunet_aggregate([o["nnunet"] for o in ours], labels)
    _merge(result, ours, labels, fov_folder is not None)
    result["hidiff_settings"] = {
        "hd95_convention": hd95_convention,
        "hd95_units": "physical (image spacing)",
        "surface_definition": "mask XOR binary_erosion(mask), face connectivity, image border is background",
        "empty_mask_rules": EMPTY_MASK_RULES,
        "fov_folder": None if fov_folder is None else os.path.abspath(fov_folder),
        "fov_restricted_keys": list(ADDED_CASE_KEYS + FOV_CASE_KEYS) if fov_folder is not None else [],
        "reference_folder": os.path.abspath(folder_ref),
    }
    result["hidiff_nan_ratio"] = _nan_ratio_report(ours, labels)
    if small_threshold > 0:
        result["hidiff_small_objects"] = _small_objects_report(ours, labels, small_threshold, small_unit,
                                                               slice_axis)
    recursive_fix_for_json_export(result)
    write_summary_atomically(result, output_file)
    return result


def evaluate_fold(fold_folder: str, folder: str = "validation", **kwargs) -> dict:
    """Extend a trained fold's ``<folder>/summary.json`` in place (nnU-Net's results layout; ``folder`` is
    ``validation`` or, for HiDiff folds, ``validation_refined`` / ``validation_segmentor``).

    Uses ``<trainer_dir>/dataset.json``, ``<trainer_dir>/plans.json`` and
    ``$nnUNet_preprocessed/<dataset>/gt_segmentations`` as reference, exactly what nnU-Net's validation uses;
    only the fold's own (predicted) cases are evaluated unless chill=False is passed.
    """
    from nnunetv2.paths import nnUNet_preprocessed

    trainer_dir = os.path.dirname(os.path.abspath(fold_folder))
    plans_file, dataset_json_file = join(trainer_dir, "plans.json"), join(trainer_dir, "dataset.json")
    validation = join(fold_folder, folder)
    if not isdir(validation):
        raise EvaluationError(f"{validation}: fold has no validation folder (run the validation first)")
    if not isfile(plans_file):
        raise EvaluationError(f"{plans_file}: plans file of the trained model does not exist")
    if not nnUNet_preprocessed.is_set():
        raise EvaluationError("nnUNet_preprocessed is not set; it is needed to find gt_segmentations")
    folder_ref = join(nnUNet_preprocessed.get(), load_json(plans_file)["dataset_name"], "gt_segmentations")
    kwargs.setdefault("output_file", join(validation, "summary.json"))
    kwargs.setdefault("chill", True)  # a fold's validation predicts only that fold's cases, as in nnU-Net
    return evaluate_folder(folder_ref, validation, dataset_json_file, plans_file, **kwargs)
