"""Trainer variants: configuration in the class name, one or two class attributes each.

nnUNetTrainerHiDiff (trainer.py) is the configuration measured best (width 8, joint step, BCE share, residual
head, 1 prediction step), _realRefiner its real-valued twin; nnUNetTrainerHiDiff_paper is the paper's. Every other
variant below was named, and measured (README, committed CSVs), when the paper's configuration was the default, so
they all derive from _paper and keep the configuration their name had: their results stay reproducible by name.

Table X ablations of the paper (V5 is the full model, = nnUNetTrainerHiDiff_paper):
    V1 real refiner, BCE (γ = 0), no X-Former, no alternate training (only the refiner learns after warm-up)
    V2 V1 + alternate-collaborative training
    V3 V2 with the focal loss (γ = 2)
    V4 V3 + X-Former                     (= nnUNetTrainerHiDiff_real)
    V5 V4 binarized                      (= nnUNetTrainerHiDiff_paper)
Budgets for CPUs (same budgets exist for the plain nnU-Net baseline, nnUNetTrainerBaseline_*), and a
smoke variant that runs one tiny epoch for tests and CI.
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


class nnUNetTrainerHiDiff_real(nnUNetTrainerHiDiff_paper):
    binary_refiner = False


# ---- the paper's optimiser for the segmentor too (AdamW 1e-4); the default is nnU-Net's SGD recipe ----
class nnUNetTrainerHiDiff_adamw(nnUNetTrainerHiDiff_paper):
    segmentor_optimizer = "adamw"


class nnUNetTrainerHiDiff_real_adamw(nnUNetTrainerHiDiff_real):
    segmentor_optimizer = "adamw"


# ---- one refiner pass per iteration for both networks (instead of Algorithm 1's two) ----
class nnUNetTrainerHiDiff_joint(nnUNetTrainerHiDiff_paper):
    joint_step = True


class nnUNetTrainerHiDiff_real_joint(nnUNetTrainerHiDiff_real):
    joint_step = True


# ---- smaller refiners (issue "HiDiff at nnU-Net's cost"): stage widths w·2^s instead of 32·2^s ----
class nnUNetTrainerHiDiff_w16(nnUNetTrainerHiDiff_paper):
    refiner_width = 16


class nnUNetTrainerHiDiff_w8(nnUNetTrainerHiDiff_paper):
    refiner_width = 8


class nnUNetTrainerHiDiff_real_w8(nnUNetTrainerHiDiff_real):
    refiner_width = 8


class nnUNetTrainerHiDiff_w8_joint(nnUNetTrainerHiDiff_w8):
    joint_step = True


# ---- training priors perturbed to look like priors on unseen cases (logits / τ, τ ~ U[1, 3]; logit noise) ----
class nnUNetTrainerHiDiff_priorTemp3(nnUNetTrainerHiDiff_paper):
    prior_temperature_max = 3.0


class nnUNetTrainerHiDiff_priorNoise1(nnUNetTrainerHiDiff_paper):
    prior_logit_noise = 1.0


class nnUNetTrainerHiDiff_res(nnUNetTrainerHiDiff_paper):
    prior_residual = True  # the refiner head is a residual on the prior's Bayes posterior (starts as the segmentor)


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


# ---- the demo (./scripts/demo.sh): 4 short epochs (the first one warm-up), no mirroring TTA ----
class nnUNetTrainerHiDiff_demo(nnUNetTrainerHiDiff_paper):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 4, 25, 5
    warmup_epochs, inference_mirroring = 1, False
    decision_extra_steps = ()  # the demo shows both outputs anyway; keep its validation short


# ---- CPU benchmark budget (README, "Real results"): 6 epochs × 25 iterations = 150 iterations
# (HiDiff: 1 warm-up epoch), 5 DDIM steps, no mirroring TTA in validation. The Baseline twin below.
class nnUNetTrainerHiDiff_cpuBench(nnUNetTrainerHiDiff_paper):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 6, 25, 5
    inference_steps, inference_mirroring = 5, False


class nnUNetTrainerHiDiff_real_cpuBench(nnUNetTrainerHiDiff_cpuBench):
    binary_refiner = False


# ---- CPU warm-start protocol (the paper pre-trains the segmentor): set
# nnUNet_HiDiff_pretrained_segmentor=<.../nnUNetTrainerBaseline_cpu400__.../fold_{fold}/checkpoint_final.pth>;
# then 4 × 25 HiDiff iterations, 5 DDIM steps, no mirroring TTA.
class nnUNetTrainerHiDiff_cpuWarm100(nnUNetTrainerHiDiff_paper):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 4, 25, 5
    warmup_epochs, inference_steps, inference_mirroring = 0, 5, False


class nnUNetTrainerHiDiff_real_cpuWarm100(nnUNetTrainerHiDiff_cpuWarm100):
    binary_refiner = False


# ---- CPU warm-start protocol of issue 12: a stable segmentor (nnUNetTrainerBaseline_5epochs, 1250 iterations)
# then 20 × 25 = 500 HiDiff iterations with the default prediction settings, no mirroring TTA. From scratch with
# the same total (1250 + 500 = 1750 = 70 × 25 iterations, the default 16 % segmentor warm-up): _cpu1750.
class nnUNetTrainerHiDiff_cpuWarm500(nnUNetTrainerHiDiff_paper):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 20, 25, 5
    warmup_epochs, inference_mirroring = 0, False


class nnUNetTrainerHiDiff_real_cpuWarm500(nnUNetTrainerHiDiff_cpuWarm500):
    binary_refiner = False


class nnUNetTrainerHiDiff_cpu1750(nnUNetTrainerHiDiff_paper):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 70, 25, 5
    inference_mirroring = False


class nnUNetTrainerHiDiff_w8_joint_cpuWarm500(nnUNetTrainerHiDiff_cpuWarm500):
    refiner_width, joint_step = 8, True  # the speed issue's candidate (train step 1.45x nnU-Net's on 901)


class nnUNetTrainerHiDiff_w8_joint_bce1_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_cpuWarm500):
    lambda_bce = 1.0  # ε̂ calibrated on entries without noise (issue 12, finding 4)


class nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_cpuWarm500):
    prior_residual = True  # issue 12: a refiner that starts as its segmentor and learns only corrections


class nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    binary_refiner = False  # the real-valued twin of the binary refiner above: what does binarization cost?


class nnUNetTrainerHiDiff_w8_joint_bce1_res_oof_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    """The refiner learns from out-of-fold priors: those of the plain nnU-Net folds (the warm starts of the other
    folds) that left each training case out, as nnU-Net's cascade trains on cross-validation predictions."""
    oof_prior_trainer = "nnUNetTrainerBaseline_5epochs"


class nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    """The refiner learns on unaugmented batches of the training cases (clean_batches.py); the segmentor keeps
    training on nnU-Net's augmented batches, on L_disc alone."""
    refiner_batches = "clean"


class nnUNetTrainerHiDiff_w8_joint_bce1_res_priorTemp3_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    prior_temperature_max = 3.0  # the training-prior ablation (issue 12): softened priors, errors at the boundaries


class nnUNetTrainerHiDiff_w8_joint_bce1_res_priorTemp2Noise2_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    # DRIVE's training priors are cleaner than its validation priors (noise rate 0.63x, argmax errors 4.4 % vs 7.7 %,
    # benchmarks/noise_rates.py on fold 0); tau_max 2 with N(0, 2) logit noise matches the argmax errors (7.75 %)
    prior_temperature_max, prior_logit_noise = 2.0, 2.0


class nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    # the refiner learns only at t = T, the one step the 1-step sampler runs (from y_T ~ B(p)). It never sees t < T,
    # so it predicts with 1 step and its decision tries no other (4 validation runs instead of 13)
    min_train_timestep = nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500.num_diffusion_steps  # T
    inference_steps, decision_extra_steps = 1, ()


class nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_gated_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_cpuWarm500):
    """The t = T run whose decision also tries gated combinations (networks/combine.py): the refined label only where
    its refined probability exceeds a gate, all additions with confident removals, or confident additions alone.
    It follows the Dice break-even of relabelled pixels (benchmarks/label_changes.py): on DRIVE the refined additions
    are right often enough and its removals are not; on 901 most additions are not either."""
    decision_gates = ((0.5, 0.7), (0.5, 0.8), (0.5, 0.9), (0.6, 1.0), (0.7, 1.0), (0.8, 1.0))


class nnUNetTrainerHiDiff_w8_joint_bce1_res_gated_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    """The uniform-t run (901's better refiner) predicting with 1 step, whose decision also tries gated combinations:
    confident additions alone, confident removals alone, or both. On 901 the refiner's label changes are right
    about as often as wrong overall (benchmarks/label_changes.py); do its confident ones clear the Dice break-even?"""
    inference_steps, decision_extra_steps = 1, ()
    decision_gates = ((0.7, 1.0), (0.8, 1.0), (0.9, 1.0), (1.0, 0.7), (1.0, 0.8), (1.0, 0.9), (0.8, 0.8), (0.9, 0.9))


class nnUNetTrainerHiDiff_w8_joint_bce1_res_boundary4_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    """The uniform-t run whose L_diff weighs the pixels within one pixel of the reference's class boundaries 5×
    (boundary_weight 4): on 901 the segmentor's errors on unseen cases are boundary voxels, which the refiner
    relabels about as often wrongly as rightly; does a loss that puts its capacity there help? 1 step, no gates."""
    inference_steps, decision_extra_steps, boundary_weight = 1, (), 4.0


class nnUNetTrainerHiDiff_w8_res_tT_discOnly_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_cpuWarm500):
    """The t = T refiner (λ_bce 1 as above) next to a segmentor that trains on L_disc alone, as plain nnU-Net: its
    segmentor is then the control's, and any gain of the refined or combined output is the refiner's own."""
    joint_step, lambda_diff = False, 0.0  # alternate steps; the segmentor step has no L_diff term


class nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_lambdaDiff03_cpuWarm500(nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_cpuWarm500):
    """Between the two above: the joint step with λ_diff = 0.3. The segmentor's L_diff share (λ_diff = 1) makes it
    complementary to its refiner but costs it HD95 (and Dice on DRIVE fold 0); none (λ_diff = 0) keeps the segmentor
    plain but leaves the refiner little to add. The refiner's own updates are AdamW's, which the scale of its loss
    hardly changes, so λ_diff mostly sets how hard the segmentor is pulled towards its refiner."""
    lambda_diff = 0.3


class nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    """From scratch, the same 1750 iterations as nnUNetTrainerBaseline_5epochs + _cpuWarm500 (the default 16 %
    segmentor warm-up: 11 of 70 epochs); run without nnUNet_HiDiff_pretrained_segmentor."""
    budget_epochs, warmup_epochs = 70, None


class nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm2000(nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500):
    budget_epochs = 80  # 4x the refiner iterations: does a longer run learn corrections, or stay the identity?


class nnUNetTrainerHiDiff_joint_bce1_cpuWarm500(nnUNetTrainerHiDiff_cpuWarm500):
    joint_step, lambda_bce = True, 1.0  # the paper's width 32: does the width-8 refiner above refine as well?


class nnUNetTrainerHiDiff_joint_bce1_res_cpuWarm500(nnUNetTrainerHiDiff_joint_bce1_cpuWarm500):
    prior_residual = True  # the paper's width 32 with the residual head: what does width 8 give up? (issue 14)


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


class nnUNetTrainerBaseline_cpuBench(nnUNetTrainerBaseline):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 6, 25, 5
    inference_mirroring = False


class nnUNetTrainerBaseline_cpu400(nnUNetTrainerBaseline):
    """16 × 25 iterations: the segmentor that nnUNetTrainerHiDiff_cpuWarm100 starts from."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 16, 25, 5
    inference_mirroring = False


class nnUNetTrainerBaseline_cpuWarm500(nnUNetTrainerBaseline):
    """The control of the HiDiff _cpuWarm500 runs: plain nnU-Net continued from the same checkpoint
    (nnUNet_HiDiff_pretrained_segmentor) for the same 20 × 25 iterations, so that HiDiff's segmentor and plain
    nnU-Net are compared at the same total budget."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 20, 25, 5
    inference_mirroring, warm_start_from_env = False, True


class nnUNetTrainerBaseline_cpuWarm700(nnUNetTrainerBaseline_cpuWarm500):
    """The equal-time control of the HiDiff _cpuWarm500 runs: plain nnU-Net continued from the same checkpoint for
    28 × 25 iterations, 1.4× the 500 (a HiDiff iteration costs 1.3-1.5× plain nnU-Net's on 901 on the CPU)."""
    budget_epochs = 28


class nnUNetTrainerBaseline_cpu1750(nnUNetTrainerBaseline):
    """The control of nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750 (HiDiff from scratch): plain nnU-Net with the
    same 70 × 25 iterations in one poly schedule and the same validation settings (no mirroring TTA)."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 70, 25, 5
    inference_mirroring = False


class nnUNetTrainerBaseline_smoke(nnUNetTrainerBaseline):
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 1, 2, 1
