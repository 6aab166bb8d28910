"""Out-of-fold priors (training/oof_priors.py): the refiner learns from the segmentors that left each case out."""
import json
from pathlib import Path

import pytest
import torch

from trainer_utils import make_batch, make_trainer


def _splits():
    cases = [f"c{i}" for i in range(10)]
    return [{"train": [c for c in cases if c not in cases[2 * k:2 * k + 2]], "val": cases[2 * k:2 * k + 2]}
            for k in range(5)]


def test_case_folds_maps_every_training_case_to_the_fold_that_left_it_out():
    from nnunetv2_hidiff.training.oof_priors import case_folds

    mapping = case_folds(_splits(), 1)
    assert mapping == {"c0": 0, "c1": 0, "c4": 2, "c5": 2, "c6": 3, "c7": 3, "c8": 4, "c9": 4}
    bad = _splits()
    bad[0]["val"] = ["c0"]  # c1 is then in no validation split
    with pytest.raises(RuntimeError, match="1 training case.*c1.*in no other fold's validation split"):
        case_folds(bad, 1)
    with pytest.raises(RuntimeError, match="fold 7"):
        case_folds(_splits(), 7)


def _plain_checkpoints(tr, folder, folds, seed=0):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    nets = {}
    for j in folds:
        torch.manual_seed(seed + j)
        net = nnUNetTrainer.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                                       tr.label_manager.num_segmentation_heads, True)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.2)
        torch.save({"network_weights": net.state_dict()}, folder / f"plain_fold{j}.pth")
        net.decoder.deep_supervision = False
        nets[j] = net.eval()
    return nets


def test_training_prior_comes_from_the_fold_that_never_saw_the_case(nnunet_paths, tmp_path, monkeypatch):
    from nnunetv2_hidiff.training.fold_record import read_fold_record
    from nnunetv2_hidiff.training.oof_priors import OutOfFoldPriors, oof_template

    tr = make_trainer()
    tr.initialize()
    tr.do_split()  # writes splits_final.json, as training does
    splits = json.loads(Path(tr.preprocessed_dataset_folder_base, "splits_final.json").read_text())
    others = [j for j in range(len(splits)) if j != tr.fold]
    nets = _plain_checkpoints(tr, tmp_path, others)
    assert oof_template(tr) is None  # off by default
    monkeypatch.setenv("nnUNet_HiDiff_oof_priors", str(tmp_path / "plain_fold{fold}.pth"))
    tr.oof_priors = OutOfFoldPriors.load(tr, oof_template(tr))
    assert read_fold_record(tr.output_folder)["oof_priors"] == {
        str(j): str(tmp_path / f"plain_fold{j}.pth") for j in tr.oof_priors.networks}

    keys = sorted(splits[tr.fold]["train"])[:2]
    folds_of = [next(j for j in others if k in splits[j]["val"]) for k in keys]
    tr.network = tr.hidiff
    tr.hidiff.train()
    batch = make_batch(tr)
    s = tr.prepare_diffusion(batch["data"], batch["target"], keys)
    for i, j in enumerate(folds_of):
        with torch.no_grad():
            expected = torch.softmax(nets[j](batch["data"][i:i + 1]), 1)
        torch.testing.assert_close(s["prior"][i:i + 1], expected)
    own = torch.softmax(tr.hidiff.top_logits(s["seg"].logits).detach(), 1)
    assert not torch.allclose(s["prior"], own)
    assert not s["prior"].requires_grad  # the refiner's input; the segmentor trains through its features
    # the refiner trains on it; the segmentor's L_disc + L_diff step still updates the segmentor
    loss, ok = tr.refiner_step(batch["data"], s)
    assert ok and torch.isfinite(loss.total)
    loss, ok = tr.segmentor_step(batch["data"], s)
    assert ok and torch.isfinite(loss)

    with pytest.raises(RuntimeError, match="is not a training case of this fold"):
        tr.prepare_diffusion(batch["data"], batch["target"], [splits[tr.fold]["val"][0]] * 2)
    with pytest.raises(RuntimeError, match="need the case identifiers"):
        tr.prepare_diffusion(batch["data"], batch["target"])
    (tmp_path / f"plain_fold{others[-1]}.pth").unlink()
    with pytest.raises(RuntimeError, match=f"plain_fold{others[-1]}.pth: cannot read the segmentor checkpoint"):
        OutOfFoldPriors.load(tr, oof_template(tr))
    monkeypatch.setenv("nnUNet_HiDiff_oof_priors", str(tmp_path / "plain.pth"))
    with pytest.raises(RuntimeError, match="must contain {fold}"):
        oof_template(tr)


def test_the_oof_variant_reads_the_baseline_folds_of_the_same_plan(nnunet_paths, monkeypatch):
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2_hidiff.training.oof_priors import oof_template

    monkeypatch.delenv("nnUNet_HiDiff_oof_priors", raising=False)
    tr = make_trainer("nnUNetTrainerHiDiff_w8_joint_bce1_res_oof_cpuWarm500")
    expected = get_output_folder("990", "nnUNetTrainerBaseline_5epochs", "nnUNetPlans", "2d", fold=2)
    assert oof_template(tr).replace("{fold}", "2") == f"{expected}/checkpoint_final.pth"
