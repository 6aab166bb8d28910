"""Experiment trainers: training only the step that runs (t = T), and the segmentor's share of L_diff.

Question: the 1-step sampler runs one refiner call at t = T from y_T ~ B(p); does a refiner trained only there
refine better than one trained on t ~ U{1..T}? And how hard should the segmentor be pulled towards its refiner
(λ_diff)? Write-up: docs/experiments/t_equals_T.md.
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_paper

from ._parts import TT, W8, Bce1, CpuWarm500, Joint, Res


class nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_cpuWarm500(TT, W8, Joint, Bce1, Res, CpuWarm500,
                                                          nnUNetTrainerHiDiff_paper):
    """The refiner learns only at t = T, predicts with 1 step, decides among 1-step outputs (4 validation runs
    instead of 13). Evidence: benchmark_results/Dataset902_DRIVE_issue12/tT_fold0/, tT_fold1/, tT_fold2/,
    tT_average_folds012/; benchmark_results/Dataset901_Hippocampus_issue12/tT_fold0/, tT_fold1/."""


class nnUNetTrainerHiDiff_w8_res_tT_discOnly_cpuWarm500(TT, W8, Bce1, Res, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """The t = T refiner next to a segmentor that trains on L_disc alone, as plain nnU-Net (alternate steps,
    λ_diff = 0): any gain of the refined or combined output is then the refiner's own.
    Evidence: benchmark_results/Dataset902_DRIVE_issue12/tT_discOnly_fold1/."""
    joint_step, lambda_diff = False, 0.0


class nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_lambdaDiff03_cpuWarm500(TT, W8, Joint, Bce1, Res, CpuWarm500,
                                                                       nnUNetTrainerHiDiff_paper):
    """Between the two above: the joint step with λ_diff = 0.3. λ_diff = 1 makes the segmentor complementary to
    its refiner but costs it HD95 (and Dice on DRIVE fold 0); λ_diff = 0 keeps it plain but leaves the refiner
    little to add. Evidence: benchmark_results/Dataset902_DRIVE_issue12/tT_lambdaDiff03_fold0/, _fold1/, _fold2/."""
    lambda_diff = 0.3


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
