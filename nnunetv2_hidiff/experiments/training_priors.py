"""Experiment trainers: the priors the refiner learns from.

Question: the refiner learns from the segmentor's priors on its own training cases, which are cleaner than its
priors on unseen cases; do training priors that look like unseen ones (softened, noisy, out-of-fold, unaugmented)
make refinement help? Write-up: docs/experiments/training_priors.md. Verdict: none does.
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_paper

from ._parts import W8, Bce1, CpuWarm500, Joint, Res


class nnUNetTrainerHiDiff_priorTemp3(nnUNetTrainerHiDiff_paper):
    """The paper's configuration with softened training priors (logits / τ, τ ~ U[1, 3]). No committed result."""
    prior_temperature_max = 3.0


class nnUNetTrainerHiDiff_priorNoise1(nnUNetTrainerHiDiff_paper):
    """The paper's configuration with N(0, 1) logit noise on the training priors. No committed result."""
    prior_logit_noise = 1.0


class nnUNetTrainerHiDiff_w8_joint_bce1_res_oof_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500,
                                                           nnUNetTrainerHiDiff_paper):
    """The refiner learns from out-of-fold priors: those of the plain nnU-Net folds (the warm starts of the other
    folds) that left each training case out, as nnU-Net's cascade trains on cross-validation predictions.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/training_priors_folds01/."""
    oof_prior_trainer = "nnUNetTrainerBaseline_5epochs"


class nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500,
                                                             nnUNetTrainerHiDiff_paper):
    """The refiner learns on unaugmented batches of the training cases (clean_batches.py); the segmentor keeps
    training on nnU-Net's augmented batches, on L_disc alone.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/training_priors_folds01/."""
    refiner_batches = "clean"


class nnUNetTrainerHiDiff_w8_joint_bce1_res_priorTemp3_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500,
                                                                  nnUNetTrainerHiDiff_paper):
    """Softened training priors (τ ~ U[1, 3]): the training-prior ablation next to _oof.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/training_priors_folds01/."""
    prior_temperature_max = 3.0


class nnUNetTrainerHiDiff_w8_joint_bce1_res_priorTemp2Noise2_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500,
                                                                        nnUNetTrainerHiDiff_paper):
    """DRIVE's training priors are cleaner than its validation priors (noise rate 0.63×, argmax errors 4.4 % vs
    7.7 %, benchmarks/noise_rates.py on fold 0); τ_max 2 with N(0, 2) logit noise matches the argmax errors
    (7.75 %). Evidence: benchmark_results/Dataset902_DRIVE_issue12/warm_fold0/."""
    prior_temperature_max, prior_logit_noise = 2.0, 2.0


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
