"""Refiner batches without augmentation (training/clean_batches.py, refiner_batches = "clean")."""
import copy

import numpy as np
import pytest
import torch

from trainer_utils import changed, make_batch, make_trainer, snapshot

CLEAN = "nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500"


def test_clean_batches_are_unaugmented_training_cases(nnunet_paths):
    from nnunetv2_hidiff.training.clean_batches import clean_training_batches
    from nnunetv2_hidiff.training.fold_record import read_fold_record

    plain = make_trainer("nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500")
    assert clean_training_batches(plain) is None  # off by default
    tr = make_trainer(CLEAN)
    tr.initialize()
    loader = clean_training_batches(tr)
    assert read_fold_record(tr.output_folder)["refiner_batches"] == "clean"
    dataset_tr, dataset_val = tr.get_tr_and_val_datasets()
    patch = tuple(tr.configuration_manager.patch_size)
    for _ in range(3):
        batch = next(loader)
        keys = set(batch["keys"])
        assert keys <= set(dataset_tr.identifiers) and not keys & set(dataset_val.identifiers)
        assert tuple(batch["data"].shape) == (tr.batch_size, 1, *patch)
        assert isinstance(batch["target"], list)  # deep-supervision targets, as the training batches
        for i, key in enumerate(batch["keys"]):
            stored = np.unique(np.asarray(dataset_tr.load_case(key)[0]))
            values = np.unique(batch["data"][i].numpy())
            # no interpolation and no intensity augmentation: every value is a stored one (or the padding 0)
            assert np.isin(values[values != 0], stored).all(), key


def test_clean_step_trains_the_segmentor_like_nnunet_and_the_refiner_on_the_clean_batch(nnunet_paths):
    tr = make_trainer(CLEAN)
    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    assert tr.num_warmup_epochs == 0 and tr.diffusion_active()
    clean, augmented = make_batch(tr, seed=11), make_batch(tr, seed=12)
    tr.clean_batches = iter([clean])
    seen, prepare = [], tr.prepare_diffusion

    def spy(data, target, keys=None):
        seen.append((data, torch.is_grad_enabled(), tr.hidiff.segmentor.training))
        return prepare(data, target, keys)

    tr.prepare_diffusion = spy
    seg0, ref0 = snapshot(tr.hidiff.segmentor), snapshot(tr.hidiff.refiner)
    opt0 = copy.deepcopy(tr.optimizer.state_dict())
    out = tr.train_step(augmented)
    assert out["skipped"] == 0 and all(np.isfinite(out[k]) for k in ("loss", "refiner_loss", "refiner_kl"))
    # the refiner's sample comes from the clean batch only, its prior from the segmentor in eval mode, no gradients
    assert len(seen) == 1 and torch.equal(seen[0][0], clean["data"]) and seen[0][1:] == (False, False)
    assert tr.hidiff.segmentor.training
    ref_params = {n for n, _ in tr.hidiff.refiner.named_parameters()}
    assert ref_params & changed(ref0, tr.hidiff.refiner)
    after = snapshot(tr.hidiff.segmentor)
    assert changed(seg0, tr.hidiff.segmentor)

    # the segmentor's update is exactly nnU-Net's L_disc step on the augmented batch (no L_diff gradient)
    tr.hidiff.segmentor.load_state_dict(seg0)
    tr.optimizer.load_state_dict(opt0)
    tr.num_warmup_epochs = 10 ** 6  # the warm-up step: L_disc alone
    tr.train_step(augmented)
    assert not changed(after, tr.hidiff.segmentor)
    assert len(seen) == 1


def test_clean_step_reports_overflows_and_bad_clean_batches(nnunet_paths, monkeypatch):
    """A grad-scaler overflow in the clean step counts as an overflow (CUDA mixed precision's normal business), not
    as a non-finite step; a clean batch with NaN is skipped (refiner unchanged) and counted."""
    from nnunetv2_hidiff.training import clean_batches
    from nnunetv2_hidiff.training.common import StepStatus

    tr = make_trainer(CLEAN)
    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    monkeypatch.setattr(clean_batches, "optimizer_step", lambda *a, **k: StepStatus.OVERFLOW)
    tr.clean_batches = iter([make_batch(tr, seed=13)])
    assert tr.train_step(make_batch(tr, seed=14))["skipped"] == 1
    assert (tr.overflow_in_a_row, tr.nonfinite_in_a_row) == (1, 0)
    monkeypatch.undo()
    bad = make_batch(tr, seed=15)
    bad["data"][0, 0, 0, 0] = float("nan")
    tr.clean_batches = iter([bad])
    ref0 = snapshot(tr.hidiff.refiner)
    out = tr.train_step(make_batch(tr, seed=16))
    assert out["skipped"] == 1 and tr.nonfinite_in_a_row == 1 and np.isnan(out["refiner_loss"])
    assert not changed(ref0, tr.hidiff.refiner)


def test_unknown_choices_are_refused():
    from nnunetv2_hidiff.networks.config import HiDiffConfig
    from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff

    class Clean(nnUNetTrainerHiDiff):
        refiner_batches = "clean"

    class Raw(nnUNetTrainerHiDiff):
        refiner_batches = "raw"

    class Adam(nnUNetTrainerHiDiff):
        segmentor_optimizer = "adam"

    assert HiDiffConfig.from_attributes(Clean).refiner_batches == "clean"
    with pytest.raises(RuntimeError, match="Raw: refiner_batches must be one of .*'clean'.*got 'raw'"):
        HiDiffConfig.from_attributes(Raw)
    with pytest.raises(RuntimeError, match="Adam: segmentor_optimizer must be one of"):
        HiDiffConfig.from_attributes(Adam)
