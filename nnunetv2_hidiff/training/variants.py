"""Trainer variants: configuration in the class name, one or two class attributes each.

Table X ablations of the paper (V5 is the full model, = nnUNetTrainerHiDiff):
    V1 real refiner, BCE (γ = 0), no X-Former, no alternate training (only the refiner learns after warm-up)
    V2 V1 + alternate-collaborative training
    V3 V2 with the focal loss (γ = 2)
    V4 V3 + X-Former                     (= nnUNetTrainerHiDiff_real)
    V5 V4 binarized                      (= nnUNetTrainerHiDiff)
Budgets for CPUs (same budgets exist for the plain nnU-Net baseline, nnUNetTrainerBaseline_*), and a
smoke variant that runs one tiny epoch for tests and CI.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from .trainer import apply_budget, apply_inference_mirroring, extend_validation_summary, nnUNetTrainerHiDiff


class nnUNetTrainerHiDiff_real(nnUNetTrainerHiDiff):
    binary_refiner = False


class nnUNetTrainerHiDiff_V1(nnUNetTrainerHiDiff):
    binary_refiner, use_xformer, focal_gamma, alternate_training = False, False, 0.0, False


class nnUNetTrainerHiDiff_V2(nnUNetTrainerHiDiff):
    binary_refiner, use_xformer, focal_gamma = False, False, 0.0


class nnUNetTrainerHiDiff_V3(nnUNetTrainerHiDiff):
    binary_refiner, use_xformer = False, False


class nnUNetTrainerHiDiff_V4(nnUNetTrainerHiDiff_real):
    pass


class nnUNetTrainerHiDiff_V5(nnUNetTrainerHiDiff):
    pass


# ---- budgets: nnU-Net epochs (250 iterations each) ----
class nnUNetTrainerHiDiff_5epochs(nnUNetTrainerHiDiff):
    budget_epochs = 5


class nnUNetTrainerHiDiff_50epochs(nnUNetTrainerHiDiff):
    budget_epochs = 50


class nnUNetTrainerHiDiff_real_5epochs(nnUNetTrainerHiDiff_real):
    budget_epochs = 5


class nnUNetTrainerHiDiff_real_50epochs(nnUNetTrainerHiDiff_real):
    budget_epochs = 50


# ---- smoke: one tiny epoch, no warm-up, a narrow refiner, 2 DDIM steps, no mirroring TTA ----
class nnUNetTrainerHiDiff_smoke(nnUNetTrainerHiDiff):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 1, 2, 1
    warmup_epochs, refiner_width, inference_steps, inference_mirroring = 0, 8, 2, False


class nnUNetTrainerHiDiff_real_smoke(nnUNetTrainerHiDiff_smoke):
    binary_refiner = False


# ---- the demo (./scripts/demo.sh): 4 short epochs (the first one warm-up), no mirroring TTA ----
class nnUNetTrainerHiDiff_demo(nnUNetTrainerHiDiff):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 4, 25, 5
    warmup_epochs, inference_mirroring = 1, False


# ---- CPU benchmark budget (README, "Real results"): 6 epochs × 25 iterations = 150 iterations
# (HiDiff: 1 warm-up epoch), 5 DDIM steps, no mirroring TTA in validation. The Baseline twin below.
class nnUNetTrainerHiDiff_cpuBench(nnUNetTrainerHiDiff):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 6, 25, 5
    inference_steps, inference_mirroring = 5, False


class nnUNetTrainerHiDiff_real_cpuBench(nnUNetTrainerHiDiff_cpuBench):
    binary_refiner = False


# ---- CPU warm-start protocol (the paper pre-trains the segmentor): set
# nnUNet_HiDiff_pretrained_segmentor=<.../nnUNetTrainerBaseline_cpu400__.../fold_{fold}/checkpoint_final.pth>;
# then 4 × 25 HiDiff iterations, 5 DDIM steps, no mirroring TTA.
class nnUNetTrainerHiDiff_cpuWarm100(nnUNetTrainerHiDiff):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 4, 25, 5
    warmup_epochs, inference_steps, inference_mirroring = 0, 5, False


class nnUNetTrainerHiDiff_real_cpuWarm100(nnUNetTrainerHiDiff_cpuWarm100):
    binary_refiner = False


# ---- the plain nnU-Net baseline at the same budgets ----
class nnUNetTrainerBaseline(nnUNetTrainer):
    """Plain nnU-Net with the budget attributes of nnUNetTrainerHiDiff (None = nnU-Net's defaults)
    and its inference_mirroring switch (False: no mirroring TTA in validation and prediction)."""
    budget_epochs = budget_iterations_per_epoch = budget_val_iterations_per_epoch = None
    inference_mirroring = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget(self)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        apply_inference_mirroring(self)
        return result

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        extend_validation_summary(self)


class nnUNetTrainerBaseline_5epochs(nnUNetTrainerBaseline):
    budget_epochs = 5


class nnUNetTrainerBaseline_50epochs(nnUNetTrainerBaseline):
    budget_epochs = 50


class nnUNetTrainerBaseline_cpuBench(nnUNetTrainerBaseline):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 6, 25, 5
    inference_mirroring = False


class nnUNetTrainerBaseline_cpu400(nnUNetTrainerBaseline):
    """16 × 25 iterations: the segmentor that nnUNetTrainerHiDiff_cpuWarm100 starts from."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 16, 25, 5
    inference_mirroring = False


class nnUNetTrainerBaseline_smoke(nnUNetTrainerBaseline):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 1, 2, 1
