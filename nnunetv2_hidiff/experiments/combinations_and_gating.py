"""Experiment trainers: decisions that also try gated combinations of the segmentor and refined outputs.

Question: a refined label change helps Dice only if it is right more often than a break-even (D/2 for additions,
1 − D/2 for removals, benchmarks/label_changes.py); does taking only the confident changes (networks/combine.py,
combine "gated") clear it? Write-up: docs/experiments/combinations_and_gating.md. Verdict: no gate helps; the
refiner changes labels almost only where its own probability of the new label is below 0.7.
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_paper

from ._parts import TT, W8, Bce1, CpuWarm500, Joint, Res


class nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_gated_cpuWarm500(TT, W8, Joint, Bce1, Res, CpuWarm500,
                                                                nnUNetTrainerHiDiff_paper):
    """The t = T run whose decision also tries six gates: all additions with removals above 0.7, 0.8 or 0.9;
    additions above 0.6, 0.7 or 0.8 and no removals (on DRIVE the refined additions are right often enough, its
    removals are not). Evidence: benchmark_results/Dataset902_DRIVE_issue12/tT_gated_fold0/."""
    decision_gates = ((0.5, 0.7), (0.5, 0.8), (0.5, 0.9), (0.6, 1.0), (0.7, 1.0), (0.8, 1.0))


class nnUNetTrainerHiDiff_w8_joint_bce1_res_gated_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500,
                                                             nnUNetTrainerHiDiff_paper):
    """The uniform-t run predicting with 1 step, whose decision also tries eight gates: additions alone, removals
    alone, or both above 0.7-0.9 (on 901 the refiner's label changes are right about as often as wrong).
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/gated_folds012/."""
    inference_steps, decision_extra_steps = 1, ()
    decision_gates = ((0.7, 1.0), (0.8, 1.0), (0.9, 1.0), (1.0, 0.7), (1.0, 0.8), (1.0, 0.9), (0.8, 0.8), (0.9, 0.9))


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
