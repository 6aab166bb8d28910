"""The mask-level diagnostics of issue 12 on hand-made masks and probabilities: benchmarks/refined_changes.py,
label_changes.py, threshold_sweep.py and compare_outputs.py give exact numbers and one clear error per bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tiny_dataset import REPO


def _run_seg_ref_gt(script: str, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """Run benchmarks/SCRIPT on tmp_path/{seg,ref,gt} plus ``extra`` arguments."""
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), str(tmp_path / "seg"),
                           str(tmp_path / "ref"), str(tmp_path / "gt"), *extra], capture_output=True, text=True)


def _seg_ref_gt_json(script: str, tmp_path, *extra: str):
    """Run benchmarks/SCRIPT on tmp_path/{seg,ref,gt} (plus ``extra`` arguments) with --json; its parsed JSON output."""
    out = tmp_path / "changes.json"
    res = _run_seg_ref_gt(script, tmp_path, *extra, "--json", str(out))
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def test_refined_changes_counts_and_combinations(tmp_path):
    """benchmarks/refined_changes.py on hand-made masks: the added/removed counts and the union are exact."""
    from PIL import Image
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:7] = 1  # a vertical vessel, 20 pixels
    seg = gt.copy()
    seg[5:15, 6] = 0  # the segmentor misses half of it (10 pixels)
    seg[0, 0] = 1  # and has one distant false positive
    ref = gt.copy()  # refinement finds the missed half ...
    ref[5, 5] = 0  # ... loses one true pixel ...
    ref[19, 19] = 1  # ... and adds one false positive; the distant false positive at (0, 0) is removed
    for name, arr in (("seg", seg), ("ref", ref), ("gt", gt)):
        (tmp_path / name).mkdir()
        Image.fromarray(arr * 255).save(tmp_path / name / "case.png")
    r = _seg_ref_gt_json("refined_changes.py", tmp_path)
    assert (r["added_foreground"], r["added_background"], r["removed_foreground"], r["removed_background"]) == \
        (10, 1, 1, 1)
    union = seg.astype(bool) | ref.astype(bool)
    inter = (union & gt.astype(bool)).sum()
    assert r["outputs"]["union"]["dice"] == pytest.approx(2 * inter / (union.sum() + gt.sum()))
    assert r["outputs"]["segmentor"]["dice"] == pytest.approx(2 * 10 / (11 + 20))
    # the segmentor plus the refined components it does not reach: the missed half touches the segmentor's half,
    # so only the new false positive at (19, 19) is added
    plus_new = seg.astype(bool).copy()
    plus_new[19, 19] = True
    inter = (plus_new & gt.astype(bool)).sum()
    assert r["outputs"]["segmentor + new refined components"]["dice"] == \
        pytest.approx(2 * inter / (plus_new.sum() + gt.sum()))


def test_label_changes_transitions_accuracies_and_break_even(tmp_path):
    """benchmarks/label_changes.py on hand-made 3-class NIfTI labels: exact transitions, flip and addition/removal
    accuracies, and break-even points that predict the sign of the Dice change; one clear error for a missing case."""
    import SimpleITK as sitk
    gt = np.zeros((2, 12, 12), np.uint8)
    gt[:, 2:6, 2:6] = 1   # class 1: 2 x 16 voxels
    gt[:, 7:10, 7:10] = 2  # class 2: 2 x 9 voxels
    seg = gt.copy()
    seg[:, 2:6, 6] = 1     # class 1 too wide by one column: 8 false positives
    ref = seg.copy()
    ref[:, 2:6, 6] = 0     # refinement removes them (8 right removals) ...
    ref[:, 2, 2:4] = 0     # ... and 4 true class-1 voxels (wrong removals)
    ref[:, 10, 7:10] = 2   # and adds 6 class-2 voxels the reference calls background (wrong additions)
    for name, arr in (("seg", seg), ("ref", ref), ("gt", gt)):
        (tmp_path / name).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name / "case_000.nii.gz"))
    r = _seg_ref_gt_json("label_changes.py", tmp_path)
    assert r["cases"] == 1 and r["changed_per_case"] == 18 and r["flip_accuracy"] == pytest.approx(8 / 18)
    assert {(t["segmentor"], t["refined"], t["reference"]): t["pixels"] for t in r["transitions_per_case"]} == \
        {(1, 0, 0): 8, (1, 0, 1): 4, (0, 2, 0): 6}
    c1, c2 = r["classes"]["1"], r["classes"]["2"]
    assert (c1["removed_per_case"], c1["removal_accuracy"], c1["added_per_case"]) == (12, pytest.approx(8 / 12), 0)
    assert (c2["added_per_case"], c2["addition_accuracy"], c2["removed_per_case"]) == (6, 0.0, 0)
    d1 = 2 * 32 / (40 + 32)
    assert c1["segmentor_dice"] == pytest.approx(d1) and c1["removal_break_even"] == pytest.approx(1 - d1 / 2)
    assert c1["refined_dice"] == pytest.approx(2 * 28 / (28 + 32)) and c2["refined_dice"] == pytest.approx(2 * 18 / 42)
    # removals right more often than break-even raise Dice; additions below it lower it
    assert c1["removal_accuracy"] > c1["removal_break_even"] and c1["refined_dice"] > c1["segmentor_dice"]
    assert c2["addition_accuracy"] < c2["addition_break_even"] and c2["refined_dice"] < c2["segmentor_dice"]
    (tmp_path / "gt" / "case_000.nii.gz").unlink()
    res = _run_seg_ref_gt("label_changes.py", tmp_path)
    assert res.returncode != 0 and "case_000.nii.gz: missing" in res.stderr and "Traceback" not in res.stderr

    # --probabilities: the changes binned by the refined probability of the refined label (nnU-Net's .npz files)
    prob = np.eye(3)[ref].transpose(3, 0, 1, 2).astype(np.float32)  # one-hot where refinement is sure
    def set_conf(index, label, p):
        prob[(slice(None),) + index] = (1 - p) / 2
        prob[(label,) + index] = p
    set_conf((slice(None), slice(2, 6), 6), 0, 0.75)   # the 8 right removals, confident
    set_conf((slice(None), 2, slice(2, 4)), 0, 0.55)   # the 4 wrong removals, barely
    set_conf((slice(None), 10, slice(7, 10)), 2, 0.65)  # the 6 wrong additions
    sitk.WriteImage(sitk.GetImageFromArray(gt), str(tmp_path / "gt" / "case_000.nii.gz"))  # removed above
    (tmp_path / "prob").mkdir()
    np.savez(tmp_path / "prob" / "case_000.npz", probabilities=prob)
    bins = {(b["low"], b["high"]): b for b in _seg_ref_gt_json("label_changes.py", tmp_path, "--probabilities",
                                                                str(tmp_path / "prob"))["confidence"]}
    assert (bins[(0.5, 0.6)]["remove_per_case"], bins[(0.5, 0.6)]["remove_accuracy"]) == (4, 0.0)
    assert (bins[(0.6, 0.7)]["add_per_case"], bins[(0.6, 0.7)]["add_accuracy"]) == (6, 0.0)
    assert (bins[(0.7, 0.8)]["remove_per_case"], bins[(0.7, 0.8)]["remove_accuracy"]) == (8, 1.0)
    assert sum(b["add_per_case"] + b["remove_per_case"] for b in bins.values()) == 18
    np.savez(tmp_path / "prob" / "case_000.npz", probabilities=prob[:, :1])
    res = _run_seg_ref_gt("label_changes.py", tmp_path, "--probabilities", str(tmp_path / "prob"))
    assert res.returncode != 0 and "case_000.npz: probabilities of shape" in res.stderr and "Traceback" not in res.stderr


def test_threshold_sweep_scores_thresholds_means_and_unions_exactly(tmp_path):
    """benchmarks/threshold_sweep.py on hand-made probabilities: each mask is probability > τ, the mean, the
    union and the gated combinations are of the named folders, Dice is exact; a file of the wrong shape and a
    malformed gate get one clear error."""
    from PIL import Image
    gt = np.zeros((6, 6), np.uint8)
    gt[1:5, 2:4] = 1                                   # 8 pixels
    a = np.zeros((6, 6), np.float32)
    a[1:5, 2] = 0.9                                    # a: half of it confidently ...
    a[1:5, 3] = 0.42                                   # ... the other half just below 0.5
    b = np.zeros((6, 6), np.float32)
    b[1:5, 3] = 0.8                                    # b: the other half
    b[0, 0] = 0.6                                      # and a false positive
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt * 255).save(tmp_path / "gt" / "c1.png")
    for name, p in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "c1.npz", probabilities=np.stack([1 - p, p])[:, None])  # (K, 1, H, W)
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "threshold_sweep.py"), str(tmp_path / "gt"), "--probabilities",
           f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--thresholds", "0.5", "0.4", "--average", "a,b",
           "--union", "a,b", "--gated", "a,b", "--gates", "0.7,1", "0.5,1", "0.5,0.5", "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())["outputs"]
    assert r["a > 0.5"]["dice"] == pytest.approx(2 * 4 / (4 + 8))
    assert r["a > 0.4"]["dice"] == pytest.approx(1.0)  # the lower threshold recovers the other half
    assert r["b > 0.5"]["dice"] == pytest.approx(2 * 4 / (5 + 8))
    assert r["mean(a, b) > 0.5"]["dice"] == pytest.approx(2 * 4 / (4 + 8))   # (0.42 + 0.8) / 2 = 0.61, 0.9 / 2 = 0.45
    assert r["mean(a, b) > 0.4"]["dice"] == pytest.approx(1.0)
    assert r["a > 0.5 or b > 0.5"]["dice"] == pytest.approx(2 * 8 / (9 + 8))
    # gated, a = segmentor, b = refined: b adds column 3 at 0.8 and a false pixel at 0.6, and removes column 2 at 1.0
    assert r["gated(a, b, 0.7/1)"]["dice"] == pytest.approx(1.0)            # only the confident addition
    assert r["gated(a, b, 0.5/1)"]["dice"] == r["a > 0.5 or b > 0.5"]["dice"]  # the union
    assert r["gated(a, b, 0.5/0.5)"]["dice"] == r["b > 0.5"]["dice"]          # the refined output
    bad = subprocess.run([*cmd[:-2], "--gates", "0.5"], capture_output=True, text=True)
    assert bad.returncode != 0 and "expected two probabilities ADD,REMOVE" in bad.stderr
    np.savez(tmp_path / "b" / "c1.npz", probabilities=np.zeros((2, 1, 5, 6)))
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "c1.npz: probabilities of shape" in res.stderr and "Traceback" not in res.stderr


def test_compare_outputs_scores_folders_against_the_reference(tmp_path):
    """benchmarks/compare_outputs.py on hand-made masks: exact Dice inside the FOV, differences against the
    reference, and one clear error for a folder that lacks a case."""
    from PIL import Image
    gt = np.zeros((10, 10), np.uint8)
    gt[2:8, 4:6] = 1  # 12 pixels
    a = gt.copy()
    a[2:8, 5] = 0  # half of it: Dice 2*6/(6+12)
    b = gt.copy()  # all of it
    fov = np.ones_like(gt)
    for name, arr in (("gt", gt), ("a", a), ("b", b), ("fov", fov)):
        (tmp_path / name).mkdir()
        for case in ("x.png", "y.png"):
            Image.fromarray(arr * 255).save(tmp_path / name / case)
    out = tmp_path / "cmp.json"
    script = str(REPO / "benchmarks" / "compare_outputs.py")
    res = subprocess.run([sys.executable, script, str(tmp_path / "gt"), f"full={tmp_path / 'b'}", "--fov",
                          str(tmp_path / "fov"), "--reference", f"half={tmp_path / 'a'}", "--json", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())["outputs"]
    assert r["half"]["dice"] == pytest.approx(12 / 18) and r["full"]["dice"] == pytest.approx(1.0)
    assert r["full"]["dice_diff"] == pytest.approx(1 - 12 / 18) and r["full"]["dice_better"] == 2
    (tmp_path / "b" / "y.png").unlink()
    res = subprocess.run([sys.executable, script, str(tmp_path / "gt"), f"full={tmp_path / 'b'}",
                          "--reference", f"half={tmp_path / 'a'}"], capture_output=True, text=True)
    assert res.returncode != 0 and "y.png: missing" in res.stderr
