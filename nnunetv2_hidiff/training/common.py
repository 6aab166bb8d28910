"""Helpers shared by the HiDiff trainer and the plain nnU-Net Baseline trainers: budgets, mirroring, the
extended validation summary, and the fold record (fold_record.py) with epoch timing."""
from __future__ import annotations

import enum
import time
from statistics import median

import torch

from nnunetv2_hidiff.networks.config import HiDiffConfigurationError  # noqa: F401 (raised here; imported from here)

from .distributed import all_ranks
from .fold_record import read_fold_record, update_fold_record


def check_supported(name: str, plans: dict, configuration: str, dataset_json: dict) -> None:
    """Refuse what the HiDiff trainer cannot train (before nnU-Net's __init__ creates any file)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    patch_size = plans_manager.get_configuration(configuration).patch_size
    label_manager = plans_manager.get_label_manager(dataset_json)
    if len(patch_size) != 2:
        raise HiDiffConfigurationError(
            f"{name} supports 2d configurations only; configuration '{configuration}' has a "
            f"{len(patch_size)}D patch. Train with '-c 2d'.")
    if label_manager.has_regions:
        raise HiDiffConfigurationError(
            f"{name} does not support region-based training (dataset.json 'regions_class_order'); "
            f"use plain labels.")
    if label_manager.has_ignore_label:
        raise HiDiffConfigurationError(
            f"{name} does not support an ignore label (dataset.json label 'ignore'): the diffusion "
            f"target y0 needs a class for every pixel.")


def start_message(trainer) -> str:
    """The training log's line with the HiDiff configuration (for people; programs read the fold record)."""
    t = trainer
    return (f"HiDiff: {t.hidiff_config()}, λ_diff={t.lambda_diff}, λ_focal={t.lambda_focal}, γ={t.focal_gamma}, "
            f"λ_bce={t.lambda_bce}, boundary weight={t.boundary_weight}, "
            f"training t ~ U{{{t.min_train_timestep}..T}}, alternate={t.alternate_training}, joint={t.joint_step}, "
            f"segmentor optimiser={t.segmentor_optimizer}, "
            f"prior τ_max={t.prior_temperature_max}, prior logit noise={t.prior_logit_noise}, out-of-fold "
            f"priors={t.oof_priors.sources if t.oof_priors else None}, refiner batches={t.refiner_batches}, "
            f"warm-up epochs={t.num_warmup_epochs}, refiner EMA={t.refiner_ema_decay}")


class StepStatus(enum.Enum):
    """What an optimizer step did; only OK is truthy. OVERFLOW: the loss was finite but the grad scaler found
    inf/NaN in the scaled gradients (mixed precision's normal way to lower its scale), NONFINITE: anything else."""
    OK = "ok"
    NONFINITE = "nonfinite"
    OVERFLOW = "overflow"

    def __bool__(self) -> bool:
        return self is StepStatus.OK


def optimizer_step(loss, optimizers, modules, scaler) -> StepStatus:
    """Backward + clipped step (nnU-Net's clip at 12 per module) of one optimizer/module or of several sharing
    one backward pass (and one grad scaler); changes nothing unless the loss and every gradient are finite.
    Under DDP the ranks decide together (a rank that skipped the backward would leave the others waiting in
    its all-reduce); after the backward the averaged gradients are the same on every rank."""
    optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
    modules = list(modules) if isinstance(modules, (list, tuple)) else [modules]
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    if not all_ranks(bool(torch.isfinite(loss)), loss.device):
        return StepStatus.NONFINITE
    if scaler is not None:
        scaler.scale(loss).backward()
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
    else:
        loss.backward()
    norms = [torch.nn.utils.clip_grad_norm_(module.parameters(), 12) for module in modules]
    if not all(torch.isfinite(n) for n in norms):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # lowers the scale (unscale_ recorded the inf)
            return StepStatus.OVERFLOW
        return StepStatus.NONFINITE
    for optimizer in optimizers:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    if scaler is not None:
        scaler.update()
    return StepStatus.OK


def track_nonfinite(trainer, status) -> int:
    """Count skipped steps in a row; stop with a clear message after trainer.max_nonfinite_in_a_row
    (grad-scaler overflows with a finite loss are mixed precision's normal business and count only towards
    trainer.max_overflow_in_a_row, each halving the scale). Returns 1 for a skipped step, else 0."""
    if status:
        trainer.nonfinite_in_a_row = trainer.overflow_in_a_row = 0
        return 0
    overflow = status is StepStatus.OVERFLOW
    if overflow:
        trainer.overflow_in_a_row += 1
    else:
        trainer.nonfinite_in_a_row += 1
    count, limit = ((trainer.overflow_in_a_row, trainer.max_overflow_in_a_row) if overflow
                    else (trainer.nonfinite_in_a_row, trainer.max_nonfinite_in_a_row))
    what = "Gradient overflow under mixed precision" if overflow else "Non-finite loss or gradient"
    trainer.print_to_log_file(f"{what} in epoch {trainer.current_epoch}: step skipped ({count} in a row).")
    if count >= limit:
        raise RuntimeError(
            f"{count} training steps in a row had a non-finite loss or gradient "
            f"(limit {'max_overflow_in_a_row' if overflow else 'max_nonfinite_in_a_row'}={limit}); stopping. "
            f"Check the preprocessed data for NaN/Inf and consider a lower learning rate. The last good "
            f"checkpoint is {trainer.output_folder}/checkpoint_latest.pth (resume with --c).")
    return 1


def apply_budget(trainer) -> None:
    """Apply the class attributes budget_epochs / budget_iterations_per_epoch /
    budget_val_iterations_per_epoch (None keeps nnU-Net's 1000 / 250 / 50)."""
    for attr, target in (("budget_epochs", "num_epochs"), ("budget_iterations_per_epoch", "num_iterations_per_epoch"),
                         ("budget_val_iterations_per_epoch", "num_val_iterations_per_epoch")):
        if getattr(trainer, attr, None) is not None:
            setattr(trainer, target, getattr(trainer, attr))


def apply_inference_mirroring(trainer) -> None:
    """Honour the class attribute inference_mirroring (False: no mirroring TTA in validation and prediction).
    Call after nnU-Net's configure_rotation_dummyDA_mirroring_and_inital_patch_size."""
    if not trainer.inference_mirroring:
        trainer.inference_allowed_mirroring_axes = None


def extend_validation_summary(trainer, folder: str = "validation"):
    """Add HD95, sensitivity, accuracy, NaN ratios and the small-object report to the fold's
    ``<folder>/summary.json`` (nnU-Net's keys are kept). Returns the result, or None after logging a failure
    (nnU-Net's own summary is already complete at this point)."""
    from os.path import join

    from nnunetv2.configuration import default_num_processes

    from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_fold

    if trainer.local_rank != 0:
        return None
    try:
        result = evaluate_fold(trainer.output_folder, num_processes=default_num_processes,
                               output_file=join(trainer.output_folder, folder, "summary.json"), folder=folder)
        trainer.print_to_log_file(f"HiDiff metrics added to {folder}/summary.json: foreground HD95",
                                  result["foreground_mean"].get("HD95"))
        return result
    except EvaluationError as e:
        trainer.print_to_log_file(f"Could not add HiDiff metrics to {folder}/summary.json: {e}")
        return None


def perturbed_prior(logits: torch.Tensor, temperature_max: float = 1.0, logit_noise: float = 0.0,
                    generator=None) -> torch.Tensor:
    """softmax((logits + N(0, logit_noise²)) / τ) over dim 1 with τ ~ U[1, temperature_max] per sample: a prior
    as unsure as the segmentor's priors on unseen cases, for the refiner's training (1, 0 = plain softmax).
    Differentiable in the logits; random numbers from ``generator``."""
    z = logits.float()
    if logit_noise > 0:
        z = z + logit_noise * torch.randn(z.shape, generator=generator, device=z.device)
    if temperature_max > 1:
        u = torch.rand((z.shape[0],) + (1,) * (z.dim() - 1), generator=generator, device=z.device)
        z = z / (1 + (temperature_max - 1) * u)
    return torch.softmax(z, dim=1)


def pseudo_dice_counts(output: torch.Tensor, target: torch.Tensor) -> dict:
    """nnU-Net's hard tp/fp/fn per foreground class of a batch (logits (B, K, *sp), labels (B, 1, *sp))."""
    axes = [0] + list(range(2, output.ndim))
    predicted = torch.zeros(output.shape, device=output.device, dtype=torch.float32)
    predicted.scatter_(1, output.argmax(1, keepdim=True), 1)
    onehot = torch.zeros_like(predicted).scatter_(1, target.long(), 1)
    tp = (predicted * onehot).sum(axes)[1:]
    fp = (predicted * (1 - onehot)).sum(axes)[1:]
    fn = ((1 - predicted) * onehot).sum(axes)[1:]
    return {"tp_hard": tp.cpu().numpy(), "fp_hard": fp.cpu().numpy(), "fn_hard": fn.cpu().numpy()}


def budget_record(trainer, warmup_epochs: int = 0) -> dict:
    return {"epochs": trainer.num_epochs, "iterations_per_epoch": trainer.num_iterations_per_epoch,
            "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch, "warmup_epochs": warmup_epochs,
            "batch_size": trainer.batch_size}


def write_start_record(trainer, kind: str, warm_start=None, warmup_epochs: int = 0, **extra) -> None:
    """Record trainer, kind, budget, warm start (and ``extra`` keys) when training starts (rank 0)."""
    if trainer.local_rank == 0:
        update_fold_record(trainer.output_folder, trainer=trainer.__class__.__name__, kind=kind,
                           budget=budget_record(trainer, warmup_epochs), warm_start=warm_start, **extra)


def start_epoch_timer(trainer) -> None:
    trainer._train_loop_start = time.perf_counter()


def record_epoch_time(trainer) -> None:
    """Append this epoch's training-loop seconds per iteration to the fold record (rank 0); the record keeps
    every epoch's value and their median (so ``--c`` continues the list)."""
    start = getattr(trainer, "_train_loop_start", None)
    if start is None or trainer.local_rank != 0:
        return
    per_iteration = (time.perf_counter() - start) / max(trainer.num_iterations_per_epoch, 1)
    previous = (read_fold_record(trainer.output_folder) or {}).get("epoch_seconds_per_iteration", [])
    values = [v for v in previous if isinstance(v, (int, float))][: trainer.current_epoch] + [round(per_iteration, 4)]
    update_fold_record(trainer.output_folder, epoch_seconds_per_iteration=values,
                       seconds_per_iteration=round(median(values), 4))
