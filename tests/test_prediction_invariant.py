"""What was validated is what predicts, through nnU-Net's real command-line tools (issue 44).

For a fold that decided "segmentor alone" and for a fold forced to decide "refine", plain ``nnUNetv2_predict`` with
default settings, run on that fold's validation cases from their raw images, writes label maps identical to
``fold_k/validation/``; also (a) with nnUNet_HiDiff_* prediction variables left set while the refining fold trained,
(b) after ``--val --val_best`` with ``-chk checkpoint_best.pth`` and with the default checkpoint (which is then
undecided and predicts the segmentor alone), (c) after class defaults changed between training and prediction (an
architecture change is refused, naming the field), and (d) inside an ``nnUNetv2_ensemble`` of a HiDiff and a plain
fold. The module trains into its own nnUNet_results folder (the tiny dataset's raw and preprocessed data are shared).
"""
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tiny_dataset import BIN, nnunet_env, run_cli

SEG, REF, PLAIN = "nnUNetTrainerHiDiff_invSeg", "nnUNetTrainerHiDiff_invRef", "nnUNetTrainerBaseline_smoke"
TRAINERS = '''from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_smoke


class nnUNetTrainerHiDiff_invSeg(nnUNetTrainerHiDiff_smoke):
    decision_min_dice_gain = 1.0  # no candidate can gain more than 1 in Dice: the segmentor alone


class nnUNetTrainerHiDiff_invRef(nnUNetTrainerHiDiff_smoke):
    decision_min_dice_gain, decision_max_hd95_increase = -1.0, float("inf")  # every candidate qualifies: refine
{extra}'''
# prediction variables a user might leave set in the shell while the refining fold trains (a)
LEFT_SET = {"nnUNet_HiDiff_steps": "5", "nnUNet_HiDiff_refine": "0", "nnUNet_HiDiff_combine": "union",
            "nnUNet_HiDiff_samples": "3", "nnUNet_HiDiff_transition": "sample"}
PREDICT = ["-d", "990", "-c", "2d", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"]


def _fold(results, trainer):
    return results / "Dataset990_Tiny" / f"{trainer}__nnUNetPlans__2d" / "fold_0"


def _labels(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def _assert_same_labels(predicted, validated):
    a, b = _labels(predicted), _labels(validated)
    assert a and sorted(a) == sorted(b), (sorted(a), sorted(b))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def folds(tiny_nnunet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("invariant")
    (tmp / "ext").mkdir()
    (tmp / "ext" / "invariant_trainers.py").write_text(TRAINERS.format(extra=""))
    env = dict(nnunet_env(tiny_nnunet, ext_trainers=[tmp / "ext"]), nnUNet_results=str(tmp / "results"))
    train = ["990", "2d", "0", "-device", "cpu"]
    jobs = [(SEG, env, []), (REF, dict(env, **LEFT_SET), []), (PLAIN, env, ["--npz"])]
    with ThreadPoolExecutor(2) as pool:  # separate processes, two at a time
        procs = list(pool.map(lambda j: run_cli("nnUNetv2_train", [*train, "-tr", j[0], *j[2]], j[1]), jobs))
    splits = json.loads((tiny_nnunet / "pre" / "Dataset990_Tiny" / "splits_final.json").read_text())
    images = tmp / "validation_images"  # fold 0's validation cases, from their raw images
    images.mkdir()
    for key in splits[0]["val"]:
        shutil.copy(tiny_nnunet / "raw" / "Dataset990_Tiny" / "imagesTr" / f"{key}_0000.nii.gz", images)
    return {"env": env, "results": tmp / "results", "images": images, "tmp": tmp, "ref_log": procs[1].stdout}


def _predict(f, trainer, out, *extra, env=None):
    return run_cli("nnUNetv2_predict", ["-i", f["images"], "-o", out, "-tr", trainer, *PREDICT, *extra],
                   env or f["env"])


def test_segmentor_alone_fold_predicts_its_validation(folds):
    fold = _fold(folds["results"], SEG)
    decision = json.loads((fold / "hidiff_fold.json").read_text())["decision"]
    assert decision["refine"] is False
    stored = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]["_extra_state"]
    assert stored["decision"]["refine"] is False and stored["trainer"] == SEG
    assert stored["config"]["decision_min_dice_gain"] == 1.0
    _predict(folds, SEG, folds["tmp"] / "seg")
    _assert_same_labels(folds["tmp"] / "seg", fold / "validation")


def test_refining_fold_ignores_prediction_variables_in_training_and_predicts_its_validation(folds):
    """(a): the variables were set while the fold trained and validated: one warning line, no effect (the decision
    is made among the trainer's own candidates and names every setting); predicting without them is validation/."""
    fold = _fold(folds["results"], REF)
    record = json.loads((fold / "hidiff_fold.json").read_text())
    decision = record["decision"]
    assert decision["refine"] is True and decision["steps"] in (1, 2)  # the smoke trainer's candidates, not 5
    assert (decision["samples"], decision["seed"], decision["transition"]) == (1, 0, "renoise")
    assert record["config"]["inference_steps"] == 2 and record["config"]["num_diffusion_steps"] == 10
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert log.count("nnUNet_HiDiff_steps=5") == 1 and "ignored in training and in this trainer's validation" in log
    stored = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]["_extra_state"]
    assert {k: stored["decision"][k] for k in ("refine", "steps", "combine")} == \
        {k: decision[k] for k in ("refine", "steps", "combine")}
    _predict(folds, REF, folds["tmp"] / "ref")
    _assert_same_labels(folds["tmp"] / "ref", fold / "validation")
    assert not (fold.parent / "predicted_next_stage").exists()  # 2d has no next stage


def test_changed_class_defaults_change_nothing_a_trained_fold_predicts(folds):
    """(c): sampler and decision defaults changed after training: the stored configuration and decision win; an
    architecture change (the prior-residual head, which adds no parameters) is refused naming the field."""
    ext = folds["tmp"] / "ext" / "invariant_trainers.py"
    fold = _fold(folds["results"], REF)
    try:
        ext.write_text(TRAINERS.format(extra="    inference_steps, inference_samples, inference_seed = 7, 4, 3\n"
                                             "    inference_transition, decision_extra_steps = 'sample', (3,)\n"))
        _predict(folds, REF, folds["tmp"] / "changed")
        _assert_same_labels(folds["tmp"] / "changed", fold / "validation")
        ext.write_text(TRAINERS.format(extra="    prior_residual = True\n"))
        proc = subprocess.run([str(BIN / "nnUNetv2_predict"), "-i", str(folds["images"]), "-o",
                               str(folds["tmp"] / "arch"), "-tr", REF, *PREDICT], env=folds["env"],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        assert f"prior_residual = False in the checkpoint ({REF}), True in {REF}" in proc.stderr
        assert not list((folds["tmp"] / "arch").glob("*.nii.gz"))
        proc = subprocess.run([str(BIN / "nnunetv2_hidiff_predict"), "-i", str(folds["images"]), "-o",
                               str(folds["tmp"] / "arch"), "-tr", REF, *PREDICT], env=folds["env"],
                              capture_output=True, text=True)  # ours says it in one line, without a traceback
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"prior_residual = False in the checkpoint ({REF}), True in {REF}" in proc.stderr.strip().splitlines()[-1]
        assert not list((folds["tmp"] / "arch").glob("*.nii.gz"))
    finally:
        ext.write_text(TRAINERS.format(extra=""))


def test_val_best_decides_checkpoint_best_and_leaves_the_final_checkpoint_undecided(folds):
    """(b): after --val --val_best, -chk checkpoint_best.pth predicts validation/; checkpoint_final.pth carries no
    decision any more (its decision was made on outputs validation/ no longer holds) and predicts the segmentor
    alone, saying so."""
    fold = _fold(folds["results"], REF)
    run_cli("nnUNetv2_train", ["990", "2d", "0", "-tr", REF, "-device", "cpu", "--val", "--val_best", "--npz"],
            folds["env"])
    record = json.loads((fold / "hidiff_fold.json").read_text())
    assert record["decision"]["checkpoint"] == "checkpoint_best.pth" and record["decision"]["refine"]
    best = torch.load(fold / "checkpoint_best.pth", weights_only=False)["network_weights"]
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert best["_extra_state"]["decision"]["refine"] and final["_extra_state"]["decision"] is None
    _predict(folds, REF, folds["tmp"] / "best", "-chk", "checkpoint_best.pth")
    _assert_same_labels(folds["tmp"] / "best", fold / "validation")
    proc = _predict(folds, REF, folds["tmp"] / "final")
    assert "carries no refinement decision" in proc.stdout + proc.stderr
    # one epoch: checkpoint_best.pth and checkpoint_final.pth hold the same weights, so the undecided final
    # checkpoint's output is the validated segmentor-alone output
    assert all(torch.equal(best[k], final[k]) for k in best if torch.is_tensor(best[k]))
    _assert_same_labels(folds["tmp"] / "final", fold / "validation_segmentor")


def test_ensemble_of_a_hidiff_and_a_plain_fold_predicts_the_ensemble_of_their_validations(folds):
    """(d): nnUNetv2_ensemble of the two folds' predictions (probabilities) equals nnUNetv2_ensemble of their
    validation/ folders (after the --val_best run above, the HiDiff fold's decided checkpoint is checkpoint_best)."""
    tmp, env = folds["tmp"], folds["env"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda args: _predict(folds, *args), [
            (REF, tmp / "ens_hidiff", "--save_probabilities", "-chk", "checkpoint_best.pth"),
            (PLAIN, tmp / "ens_plain", "--save_probabilities")]))
    run_cli("nnUNetv2_ensemble", ["-i", tmp / "ens_hidiff", tmp / "ens_plain", "-o", tmp / "ens_predicted",
                                  "-np", "1"], env)
    validated = []
    for trainer in (REF, PLAIN):  # nnUNetv2_ensemble reads dataset.json and plans.json next to the outputs
        folder = tmp / f"validated_{trainer}"
        shutil.copytree(_fold(folds["results"], trainer) / "validation", folder)
        for name in ("dataset.json", "plans.json"):
            shutil.copy(tmp / "ens_hidiff" / name, folder / name)
        validated.append(folder)
    run_cli("nnUNetv2_ensemble", ["-i", *validated, "-o", tmp / "ens_validated", "-np", "1"], env)
    _assert_same_labels(tmp / "ens_predicted", tmp / "ens_validated")
