"""The nnU-Net commands the README promises, with a HiDiff trainer: -f all, --val, --val_best, --npz,
nnUNetv2_ensemble and nnUNetv2_find_best_configuration's ensembling of HiDiff with a plain nnU-Net
(nnUNetv2_predict_from_modelfolder and --save_probabilities: test_trainer_cli.py). Fold 1, so that the other
test modules' fold-0 models stay as they left them."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tiny_dataset import nnunet_env, run_cli

HIDIFF, PLAIN = "nnUNetTrainerHiDiff_smoke", "nnUNetTrainerBaseline_smoke"


@pytest.fixture(scope="module")
def models(tiny_nnunet):
    env = nnunet_env(tiny_nnunet)
    for fold, trainer in (("all", HIDIFF), ("1", HIDIFF), ("1", PLAIN)):
        run_cli("nnUNetv2_train", ["990", "2d", fold, "-tr", trainer, "-device", "cpu", "--npz"], env)
    return tiny_nnunet, env, tiny_nnunet / "results" / "Dataset990_Tiny"


def _folder(results, trainer, fold):
    return results / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"


def test_fold_all_trains_validates_and_predicts(models, tmp_path):
    root, env, results = models
    fold = _folder(results, HIDIFF, "all")
    record = json.loads((fold / "hidiff_fold.json").read_text())
    assert record["decision"]["refine"] in (True, False) and (fold / "checkpoint_final.pth").is_file()
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    run_cli("nnUNetv2_predict", ["-i", images, "-o", tmp_path, "-d", "990", "-c", "2d", "-f", "all", "-tr", HIDIFF,
                                 "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    for img in images.glob("*_0000.nii.gz"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / img.name.replace("_0000", ""))))
        assert set(np.unique(seg)) <= {0, 1, 2}


def test_val_with_best_checkpoint_and_npz(models):
    """--val --val_best --npz: validation only, from checkpoint_best.pth, with probabilities; the decision goes
    into the checkpoint that was validated (checkpoint_best.pth), the record says so."""
    _, env, results = models
    fold = _folder(results, HIDIFF, "1")
    final_before = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    run_cli("nnUNetv2_train", ["990", "2d", "1", "-tr", HIDIFF, "-device", "cpu", "--val", "--val_best", "--npz"], env)
    record = json.loads((fold / "hidiff_fold.json").read_text())
    best = torch.load(fold / "checkpoint_best.pth", weights_only=False)["network_weights"]
    decision = record["decision"]
    stored = decision["steps"] if decision["steps"] != 2 else 0
    assert best["inference_decision"].tolist() == [int(decision["refine"]), stored]
    final_after = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert all(torch.equal(final_before[k], final_after[k]) for k in final_before)  # not rewritten
    for name in ("validation", "validation_segmentor", "validation_refined"):
        npz = sorted((fold / name).glob("*.npz"))
        assert npz and all(np.load(f)["probabilities"].shape[0] == 3 for f in npz), name


def test_hidiff_and_plain_nnunet_ensemble(models, tmp_path):
    """nnUNetv2_ensemble averages the two models' predicted probabilities (nnUNetv2_predict --save_probabilities),
    and nnU-Net's model selection evaluates HiDiff, plain nnU-Net and their ensemble on the validation cases."""
    root, env, results = models
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    for trainer in (HIDIFF, PLAIN):
        run_cli("nnUNetv2_predict", ["-i", images, "-o", tmp_path / trainer, "-d", "990", "-c", "2d", "-f", "1",
                                     "-tr", trainer, "-device", "cpu", "--save_probabilities", "-npp", "1",
                                     "-nps", "1"], env)
    run_cli("nnUNetv2_ensemble", ["-i", tmp_path / HIDIFF, tmp_path / PLAIN, "-o", tmp_path / "ensemble",
                                  "-np", "1", "--save_npz"], env)
    cases = sorted(p.name for p in (tmp_path / HIDIFF).glob("*.nii.gz"))
    assert len(cases) == 2 and sorted(p.name for p in (tmp_path / "ensemble").glob("*.nii.gz")) == cases
    for case in cases:
        probabilities = [np.load(tmp_path / d / case.replace(".nii.gz", ".npz"))["probabilities"]
                         for d in (HIDIFF, PLAIN, "ensemble")]
        np.testing.assert_allclose(probabilities[2], (probabilities[0] + probabilities[1]) / 2, atol=1e-3)
    run_cli("nnUNetv2_find_best_configuration", ["990", "-c", "2d", "-tr", HIDIFF, PLAIN, "-f", "1", "-np", "1"], env)
    info = json.loads((results / "inference_information.json").read_text())
    names = list(info["all_results"])
    assert any(n.startswith("ensemble") for n in names), names
    assert any(HIDIFF in n for n in names) and any(PLAIN in n for n in names)
