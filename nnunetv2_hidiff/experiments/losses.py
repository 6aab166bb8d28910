"""Experiment trainers: a boundary-weighted refiner loss.

Question: on 901 the segmentor's errors on unseen cases are boundary voxels, which the refiner relabels about as
often wrongly as rightly; does an L_diff that puts its capacity there (weight 1 + β on y0's boundary band,
diffusion.boundary_band) make refinement help? Write-up: docs/experiments/equal_cost_controls.md (with the
equal-budget control). Verdict: no (−0.0025 Dice at 1 step, folds 0-2).
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_paper

from ._parts import W8, Bce1, CpuWarm500, Joint, Res


class nnUNetTrainerHiDiff_w8_joint_bce1_res_boundary4_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500,
                                                                 nnUNetTrainerHiDiff_paper):
    """The uniform-t run with L_diff weighted 5× within one pixel of the reference's class boundaries
    (boundary_weight 4), 1 step, no gates.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/control_boundary_folds012/."""
    inference_steps, decision_extra_steps, boundary_weight = 1, (), 4.0


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
