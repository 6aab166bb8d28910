"""Folder evaluation: extended summary.json on tiny synthetic .nii.gz / .png cases, and CLI error handling."""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_hidiff.evaluation.cli import main
from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_folder
from nnunetv2_hidiff.evaluation.metrics import hd95

PLANS = Path(__file__).parent / "data" / "plans" / "Dataset901_Hippocampus_nnUNetPlans.json"
NNUNET_KEYS = {"Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"}
OUR_KEYS = {"HD95", "Sensitivity", "Specificity", "Accuracy"}
SPACING_ZYX = (3.0, 0.5, 0.8)


def _write_nii(arr: np.ndarray, fname: Path, spacing_zyx=SPACING_ZYX):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(img, str(fname))


def _dataset_json(tmp: Path, file_ending: str, labels=None) -> Path:
    labels = labels or {"background": 0, "anterior": 1, "posterior": 2}
    f = tmp / "dataset.json"
    f.write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 3,
                             "file_ending": file_ending}))
    return f


def _cases():
    """Three (ref, pred) pairs of shape (4, 16, 16): a perfect case, a shifted one, one with empty classes."""
    ref0 = np.zeros((4, 16, 16), np.uint8)
    ref0[1:3, 3:9, 3:9] = 1
    ref0[1:3, 9:13, 9:13] = 2
    ref1 = ref0.copy()
    pred1 = np.roll(ref0, 2, axis=2)
    ref2 = np.zeros_like(ref0)
    ref2[2, 4:8, 4:8] = 1  # class 2 absent in reference and prediction -> both empty
    pred2 = np.zeros_like(ref0)  # class 1 missed -> HD95 undefined
    return {"case_0": (ref0, ref0.copy()), "case_1": (ref1, pred1), "case_2": (ref2, pred2)}


@pytest.fixture()
def nii_folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    cases = _cases()
    for name, (ref, pred) in cases.items():
        _write_nii(ref, ref_dir / f"{name}.nii.gz")
        _write_nii(pred, pred_dir / f"{name}.nii.gz")
    return tmp_path, ref_dir, pred_dir, _dataset_json(tmp_path, ".nii.gz"), cases


class _SerialPool:
    """Stand-in for multiprocessing's spawn Pool so nnU-Net's reference evaluation runs in-process in the test."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, iterable):
        return [fn(*a) for a in iterable]


class _SerialContext:
    Pool = _SerialPool


def test_summary_keeps_nnunet_keys_and_adds_ours(nii_folders, monkeypatch):
    from nnunetv2.evaluation import evaluate_predictions

    tmp, ref_dir, pred_dir, dj, cases = nii_folders
    # nnU-Net alone (its compute_metrics_on_folder), for comparison of its keys
    monkeypatch.setattr(evaluate_predictions.multiprocessing, "get_context", lambda *a, **k: _SerialContext())
    evaluate_predictions.compute_metrics_on_folder2(str(ref_dir), str(pred_dir), str(dj), str(PLANS),
                                                    str(tmp / "nnunet.json"), num_processes=1)
    monkeypatch.undo()
    ours_out = tmp / "summary.json"
    evaluate_folder(str(ref_dir), str(pred_dir), str(dj), str(PLANS), str(ours_out), small_threshold=40,
                    num_processes=1)
    nn, s = json.loads((tmp / "nnunet.json").read_text()), json.loads(ours_out.read_text())

    assert set(nn) <= set(s)
    assert {"hidiff_settings", "hidiff_nan_ratio", "hidiff_small_objects"} <= set(s)
    assert len(s["metric_per_case"]) == 3
    for case_nn, case in zip(nn["metric_per_case"], s["metric_per_case"]):
        assert case["prediction_file"] == case_nn["prediction_file"]
        for label in ("1", "2"):
            assert set(case["metrics"][label]) == NNUNET_KEYS | OUR_KEYS
            for k in NNUNET_KEYS:  # nnU-Net's values are untouched
                a, b = case["metrics"][label][k], case_nn["metrics"][label][k]
                assert (math.isnan(a) and math.isnan(b)) or a == b
    for label in ("1", "2"):
        assert set(s["mean"][label]) == NNUNET_KEYS | OUR_KEYS
        for k in NNUNET_KEYS:
            assert s["mean"][label][k] == pytest.approx(nn["mean"][label][k], nan_ok=True)
    for k in NNUNET_KEYS:
        assert s["foreground_mean"][k] == pytest.approx(nn["foreground_mean"][k], nan_ok=True)

    # HD95 in physical units from the image spacing
    by_case = {Path(c["prediction_file"]).name.split(".")[0]: c for c in s["metric_per_case"]}
    ref1, pred1 = cases["case_1"]
    expected = hd95(pred1 == 1, ref1 == 1, SPACING_ZYX)
    assert by_case["case_1"]["metrics"]["1"]["HD95"] == pytest.approx(expected)
    assert expected == pytest.approx(1.6)  # a 2-voxel shift along x (0.8 mm)
    assert by_case["case_0"]["metrics"]["1"]["HD95"] == 0.0
    # empty-mask rules in the file
    assert math.isnan(by_case["case_2"]["metrics"]["1"]["HD95"]) and by_case["case_2"]["metrics"]["1"]["Dice"] == 0
    assert math.isnan(by_case["case_2"]["metrics"]["2"]["Dice"])
    assert by_case["case_2"]["hidiff_empty"] == {"1": "pred_empty", "2": "both_empty"}
    nr1, nr2 = s["hidiff_nan_ratio"]["1"], s["hidiff_nan_ratio"]["2"]
    assert (nr1["n"], nr1["n_hd95_undefined"], nr1["n_both_empty"]) == (3, 1, 0)
    assert nr1["hd95_nan_ratio"] == pytest.approx(1 / 3)
    assert (nr2["n_both_empty"], nr2["n_hd95_undefined"], nr2["hd95_nan_ratio"]) == (1, 0, 0.0)
    assert s["mean"]["1"]["HD95"] == pytest.approx(np.mean([0.0, expected]))

    # small objects: slices with 0 < class size < 40 px: class 1 has 36-px slices in case 0/1 and a 16-px slice
    # in case 2 (missed); class 2 has 16-px slices in case 0/1
    small = s["hidiff_small_objects"]
    assert small["threshold"] == 40 and small["unit"] == "slice"
    assert small["per_class"]["1"]["n_units"] == 5 and small["per_class"]["1"]["n_hd95_undefined"] == 1
    assert small["per_class"]["1"]["hd95_nan_ratio"] == pytest.approx(1 / 5)
    assert small["per_class"]["2"]["n_units"] == 4


def test_png_with_fov_mask(tmp_path):
    from skimage import io

    ref_dir, pred_dir, fov_dir = tmp_path / "ref", tmp_path / "pred", tmp_path / "fov"
    for d in (ref_dir, pred_dir, fov_dir):
        d.mkdir()
    ref = np.zeros((24, 20), np.uint8)
    ref[8:16, 2:18] = 1
    pred = ref.copy()
    pred[0:2, :] = 1  # false positives outside the FOV
    fov = np.ones_like(ref)
    fov[0:4] = 0
    for d, a in ((ref_dir, ref), (pred_dir, pred), (fov_dir, fov)):
        io.imsave(str(d / "drive_01.png"), a, check_contrast=False)
    dj = _dataset_json(tmp_path, ".png", {"background": 0, "vessel": 1})
    s = evaluate_folder(str(ref_dir), str(pred_dir), str(dj), str(PLANS), fov_folder=str(fov_dir),
                        num_processes=1)
    m = s["metric_per_case"][0]["metrics"][1]
    assert m["Dice"] < 1  # nnU-Net's key: whole image
    assert m["Dice_FOV"] == 1.0 and m["Accuracy"] == 1.0 and m["HD95"] == 0.0
    assert s["hidiff_settings"]["fov_folder"] == str(fov_dir)
    assert (pred_dir / "summary.json").is_file()  # default output like nnUNetv2_evaluate_folder


def _cli(tmp, ref_dir, pred_dir, dj, *extra):
    return main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-djfile", str(dj), "-pfile", str(PLANS),
                 "-np", "1", *extra])


def test_cli_errors_are_one_line_and_keep_existing_summary(nii_folders, capsys):
    tmp, ref_dir, pred_dir, dj, _ = nii_folders
    good = pred_dir / "summary.json"
    good.write_text('{"good": true}')

    assert _cli(tmp, tmp / "nope", pred_dir, dj) == 2
    assert "nope: reference folder does not exist" in capsys.readouterr().err

    _write_nii(np.zeros((4, 16, 15)), pred_dir / "case_0.nii.gz")  # shape mismatch
    assert _cli(tmp, ref_dir, pred_dir, dj) == 2
    err = capsys.readouterr().err
    assert "case_0.nii.gz: shape (4, 16, 15) does not match the reference" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    os.remove(pred_dir / "case_0.nii.gz")  # file count mismatch
    assert _cli(tmp, ref_dir, pred_dir, dj) == 2
    assert "case_0.nii.gz: no prediction with this name" in capsys.readouterr().err

    (pred_dir / "extra.nii.gz").write_bytes(b"")
    assert _cli(tmp, ref_dir, pred_dir, dj, "--chill") == 2
    assert "extra.nii.gz: no reference file with this name" in capsys.readouterr().err
    os.remove(pred_dir / "extra.nii.gz")

    assert _cli(tmp, ref_dir, pred_dir, dj, "--chill", "--fov-folder", str(tmp)) == 2
    assert "FOV mask missing" in capsys.readouterr().err

    assert good.read_text() == '{"good": true}'  # never replaced by a failed run
    assert [p.name for p in pred_dir.iterdir() if p.name.startswith(".summary_")] == []

    # --chill evaluates the remaining cases and replaces the file
    # (-np 2 also runs our per-case pass in spawned worker processes)
    assert _cli(tmp, ref_dir, pred_dir, dj, "--chill", "--small-threshold", "0", "-np", "2") == 0
    s = json.loads(good.read_text())
    assert len(s["metric_per_case"]) == 2 and "hidiff_small_objects" not in s
    assert "summary written to" in capsys.readouterr().out


def test_evaluation_error_is_picklable_for_worker_processes():
    import pickle

    e = pickle.loads(pickle.dumps(EvaluationError("x.nii.gz: broken")))
    assert isinstance(e, EvaluationError) and str(e) == "x.nii.gz: broken"


def test_cli_fold_extends_validation_summary(tmp_path, monkeypatch, capsys):
    """-fold uses nnU-Net's results layout: trainer dir plans/dataset.json + preprocessed gt_segmentations."""
    name = "Dataset901_Hippocampus"
    gt = tmp_path / "pre" / name / "gt_segmentations"
    fold = tmp_path / "res" / name / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    (fold / "validation").mkdir(parents=True)
    gt.mkdir(parents=True)
    shutil.copy(PLANS, fold.parent / "plans.json")
    _dataset_json(fold.parent, ".nii.gz")
    for case, (ref, pred) in list(_cases().items())[:2]:
        _write_nii(ref, gt / f"{case}.nii.gz")
        _write_nii(pred, fold / "validation" / f"{case}.nii.gz")
    (fold / "validation" / "summary.json").write_text('{"from": "nnU-Net validation"}')
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert main(["-fold", str(fold), "-np", "1"]) == 0
    s = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(s["metric_per_case"]) == 2 and s["metric_per_case"][1]["metrics"]["1"]["HD95"] == pytest.approx(1.6)
    assert s["hidiff_settings"]["reference_folder"] == str(gt)
    assert main(["-fold", str(fold), "-ref", str(gt)]) == 2
    assert "cannot be combined" in capsys.readouterr().err
