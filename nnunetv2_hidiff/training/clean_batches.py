"""Refiner batches without augmentation (issue 12; not in the paper).

The refiner learns to remove the noise (1 − ᾱ_t)|p − y0| of its segmentor's prior p. On nnU-Net's training batches
p is the prior of an *augmented* patch (rotation, scaling, gamma, noise, blur, low resolution, mirroring) drawn with
foreground oversampling; at test time it is the prior of an unaugmented image. Measured on 901
(`benchmarks/noise_rates.py`), the training priors are 1.5–1.8× as noisy as the validation priors, and out-of-fold
priors on the same augmented patches are not less noisy: the gap comes from augmentation, not from the segmentor
having seen the case. With ``refiner_batches = "clean"`` every diffusion iteration therefore does two things:

  segmentor: nnU-Net's own step (L_disc) on the augmented training batch, as plain nnU-Net trains;
  refiner:   one L_diff step on a second batch of *training* cases drawn by the loader nnU-Net uses for its
             validation batches (same patch size and foreground oversampling, no augmentation), with the
             segmentor's prior and features computed without gradients (eval mode), i.e. as at test time.

The segmentor receives no L_diff gradient in this mode (λ_diff does not apply). The clean batch costs one extra
segmentor forward without gradients; validation cases are never used. Out-of-fold priors (oof_priors.py) combine
with it: the prior of the clean batch then comes from the segmentor that left each case out.
"""
from __future__ import annotations

import torch
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from .common import StepStatus, optimizer_step
from .distributed import all_ranks
from .fold_record import update_fold_record


def clean_training_batches(trainer):
    """An endless generator of unaugmented batches of the fold's training cases, or None (mode "augmented")."""
    if trainer.refiner_batches != "clean":
        return None
    if trainer.local_rank == 0:  # what the benchmark and users read (fold_record.py)
        update_fold_record(trainer.output_folder, refiner_batches="clean")
    return unaugmented_training_loader(trainer)


def unaugmented_training_loader(trainer):
    """nnU-Net's validation-batch loader (validation transforms, the plan's patch, foreground oversampling) over
    the fold's training cases; also what benchmarks/noise_rates.py measures."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    lm = trainer.label_manager
    transforms = trainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(), is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    patch_size = trainer.configuration_manager.patch_size
    loader = nnUNetDataLoader(dataset_tr, trainer.batch_size, patch_size, patch_size, lm,
                              oversample_foreground_percent=trainer.oversample_foreground_percent,
                              sampling_probabilities=None, pad_sides=None, transforms=transforms,
                              probabilistic_oversampling=trainer.probabilistic_oversampling)
    return SingleThreadedAugmenter(loader, None)  # loading 2d slices without augmentation is cheap


def clean_train_step(trainer, data, target) -> dict:
    """One diffusion iteration in "clean" mode (module docstring): nnU-Net's segmentor step on the augmented batch
    (``data``, ``target``), then a refiner step on the next unaugmented training batch. Returns the entries of
    train_step's dict it measured (train_step's defaults, NaN, stand for the others) and "ok", the step status."""
    out = {}
    batch = next(trainer.clean_batches)
    clean_data, clean_target = trainer._to_device(batch)
    segmentor = trainer.hidiff.segmentor
    segmentor.eval()
    try:
        with torch.no_grad():
            s = trainer.prepare_diffusion(clean_data, clean_target, batch.get("keys"))
    finally:
        segmentor.train()
    # a clean batch with a non-finite loss (a bad case) is skipped and counted; under DDP by all ranks together, so
    # that no rank waits in the refiner's all-reduce while another is in the segmentor's
    ok_ref = StepStatus.NONFINITE
    if all_ranks(bool(torch.isfinite(s["l_disc"])), clean_data.device):
        l_ref, ok_ref = trainer.refiner_step(clean_data, s)
        out.update(refiner_loss=float(l_ref.total.detach()), refiner_kl=float(l_ref.kl.detach()),
                   refiner_focal=float(l_ref.focal.detach()))
    with trainer._autocast():
        l_disc = trainer.loss(trainer._segment(data).logits, target)
    ok_seg = optimizer_step(l_disc, trainer.optimizer, segmentor, trainer.grad_scaler)
    out["loss"] = float(l_disc.detach())
    # the first failed StepStatus, so that grad-scaler overflows (CUDA mixed precision) count as overflows
    return {**out, "ok": ok_ref and ok_seg}
