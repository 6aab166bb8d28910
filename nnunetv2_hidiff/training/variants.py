"""The product's trainer variants: what a user chooses between (docs/reference/trainers.md).

nnUNetTrainerHiDiff (trainer.py) is the configuration measured best (width 8, joint step, BCE share, residual
head, 1 prediction step), _realRefiner its real-valued twin, _cpu the same at this project's CPU budget;
nnUNetTrainerHiDiff_paper is the paper's. The trainers of this project's studies live apart, in
nnunetv2_hidiff.experiments (one module per question), and stay findable by name.

Table X ablations of the paper (V5 is the full model, = nnUNetTrainerHiDiff_paper):
    V1 real refiner, BCE (γ = 0), no X-Former, no alternate training (only the refiner learns after warm-up)
    V2 V1 + alternate-collaborative training
    V3 V2 with the focal loss (γ = 2)
    V4 V3 + X-Former                     (= nnUNetTrainerHiDiff_real)
    V5 V4 binarized                      (= nnUNetTrainerHiDiff_paper)
Budgets (nnU-Net epochs of 250 iterations; the same budgets exist for the plain nnU-Net baseline,
nnUNetTrainerBaseline_*), the demo's pipeline check, and smoke variants that run one tiny epoch for tests and CI.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from .common import (apply_budget, apply_inference_mirroring, extend_validation_summary, record_epoch_time,
                     start_epoch_timer, write_start_record)
from .checkpointing import load_whole_segmentor
from .trainer import nnUNetTrainerHiDiff


class nnUNetTrainerHiDiff_paper(nnUNetTrainerHiDiff):
    """The paper's configuration (the default until 2026-12-03): stage widths 32·2^s, Algorithm 1's two refiner
    passes, L_diff = KL + focal, the paper's ε̂ head, T DDIM steps at prediction."""
    refiner_width, joint_step, lambda_bce, prior_residual, inference_steps = 32, False, 0.0, False, None


class nnUNetTrainerHiDiff_realRefiner(nnUNetTrainerHiDiff):
    """The default configuration with a real-valued refiner and X-Former (_real is the paper's, width 32)."""
    binary_refiner = False


class nnUNetTrainerHiDiff_cpu(nnUNetTrainerHiDiff):
    """The default configuration at this project's CPU budget: 20 × 25 iterations (5 validation iterations per
    epoch) from a trained plain nnU-Net segmentor (nnUNetTrainerBaseline_5epochs of the same plan and fold, loaded
    whole through nnUNet_HiDiff_pretrained_segmentor), no mirroring test-time augmentation. Only the budget and
    the mirroring differ from nnUNetTrainerHiDiff; the shipped demo model is a fold of it."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 20, 25, 5
    warmup_epochs, inference_mirroring = 0, False


class nnUNetTrainerHiDiff_real(nnUNetTrainerHiDiff_paper):
    binary_refiner = False


class nnUNetTrainerHiDiff_V1(nnUNetTrainerHiDiff_paper):
    binary_refiner, use_xformer, focal_gamma, alternate_training = False, False, 0.0, False


class nnUNetTrainerHiDiff_V2(nnUNetTrainerHiDiff_paper):
    binary_refiner, use_xformer, focal_gamma = False, False, 0.0


class nnUNetTrainerHiDiff_V3(nnUNetTrainerHiDiff_paper):
    binary_refiner, use_xformer = False, False


class nnUNetTrainerHiDiff_V4(nnUNetTrainerHiDiff_real):
    pass


class nnUNetTrainerHiDiff_V5(nnUNetTrainerHiDiff_paper):
    pass


# ---- budgets: nnU-Net epochs (250 iterations each) ----
class nnUNetTrainerHiDiff_5epochs(nnUNetTrainerHiDiff_paper):
    budget_epochs = 5


class nnUNetTrainerHiDiff_50epochs(nnUNetTrainerHiDiff_paper):
    budget_epochs = 50


class nnUNetTrainerHiDiff_real_5epochs(nnUNetTrainerHiDiff_real):
    budget_epochs = 5


class nnUNetTrainerHiDiff_real_50epochs(nnUNetTrainerHiDiff_real):
    budget_epochs = 50


# ---- smoke: one tiny epoch, no warm-up, a narrow refiner, 2 DDIM steps, no mirroring TTA; _joint_smoke with
# the joint step ----
class nnUNetTrainerHiDiff_smoke(nnUNetTrainerHiDiff_paper):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 1, 2, 1
    warmup_epochs, refiner_width, inference_steps, inference_mirroring = 0, 8, 2, False
    decision_extra_steps, decision_gates = (1,), ((0.5, 0.8),)


class nnUNetTrainerHiDiff_real_smoke(nnUNetTrainerHiDiff_smoke):
    binary_refiner = False


class nnUNetTrainerHiDiff_joint_smoke(nnUNetTrainerHiDiff_smoke):
    joint_step = True


# ---- the demo's pipeline check (./scripts/demo.sh): the default configuration for 4 short epochs (the first one
# segmentor warm-up), no mirroring TTA ----
class nnUNetTrainerHiDiff_demo(nnUNetTrainerHiDiff):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 4, 25, 5
    warmup_epochs, inference_mirroring = 1, False
    decision_extra_steps = ()  # the demo shows both outputs anyway; keep its validation short


# ---- the plain nnU-Net baseline at the same budgets ----
class nnUNetTrainerBaseline(nnUNetTrainer):
    """Plain nnU-Net with the budget attributes of nnUNetTrainerHiDiff (None = nnU-Net's defaults), its
    inference_mirroring switch (False: no mirroring TTA in validation and prediction), the extended validation
    summary and the fold record (fold_record.py: kind "baseline", budget, seconds per iteration)."""
    budget_epochs = budget_iterations_per_epoch = budget_val_iterations_per_epoch = None
    inference_mirroring = True
    # the _cpuWarm controls: start from the whole network in nnUNet_HiDiff_pretrained_segmentor ("{fold}" = this
    # fold), like the HiDiff warm runs, and record it in the fold record (nnU-Net's -pretrained_weights skips the
    # segmentation heads)
    warm_start_from_env = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget(self)
        self.save_every = 1  # checkpoint_latest.pth every epoch, so a killed run resumes with --c
        self.warm_start_source = None

    def initialize(self):
        super().initialize()
        path = os.environ.get("nnUNet_HiDiff_pretrained_segmentor") if self.warm_start_from_env else None
        if path:
            path = path.replace("{fold}", str(self.fold))
            net = self.network.module if self.is_ddp else self.network
            load_whole_segmentor(getattr(net, "_orig_mod", net), path, self.device)  # compiled: its module
            self.warm_start_source = path
            self.print_to_log_file(f"Loaded the whole network from {path} (warm start).")

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        apply_inference_mirroring(self)
        return result

    def on_train_start(self):
        super().on_train_start()
        write_start_record(self, "baseline", warm_start=self.warm_start_source)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        start_epoch_timer(self)

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        record_epoch_time(self)

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        extend_validation_summary(self)


class nnUNetTrainerBaseline_5epochs(nnUNetTrainerBaseline):
    budget_epochs = 5


class nnUNetTrainerBaseline_50epochs(nnUNetTrainerBaseline):
    budget_epochs = 50


class nnUNetTrainerBaseline_smoke(nnUNetTrainerBaseline):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 1, 2, 1
