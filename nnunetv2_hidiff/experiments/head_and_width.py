"""Experiment trainers: refiner width, the refiner head, the joint step, the BCE share, binarization, the optimiser.

Question: which refiner configuration refines best at a CPU budget, and what does each piece cost? These runs
chose today's default (nnUNetTrainerHiDiff: width 8, joint step, BCE share, residual head, 1 step). Write-up:
docs/experiments/head_and_width.md. Every class is the paper's configuration plus the parts its name lists
(_parts.py); their results stay reproducible by name.
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_paper

from ._parts import W8, Bce1, CpuWarm500, Joint, Real, Res


class nnUNetTrainerHiDiff_adamw(nnUNetTrainerHiDiff_paper):
    """The paper's optimiser for the segmentor too (AdamW 1e-4 instead of nnU-Net's SGD recipe).
    Evidence: none committed (an early comparison, old README only)."""
    segmentor_optimizer = "adamw"


class nnUNetTrainerHiDiff_real_adamw(Real, nnUNetTrainerHiDiff_paper):
    """_adamw with a real-valued refiner. Evidence: none committed."""
    segmentor_optimizer = "adamw"


class nnUNetTrainerHiDiff_joint(Joint, nnUNetTrainerHiDiff_paper):
    """Does one joint refiner pass per iteration train as well as Algorithm 1's two? Evidence: the cost tables of
    docs/results/speed.md."""


class nnUNetTrainerHiDiff_real_joint(Real, Joint, nnUNetTrainerHiDiff_paper):
    """_joint with a real-valued refiner. No committed result."""


class nnUNetTrainerHiDiff_w16(nnUNetTrainerHiDiff_paper):
    """A refiner of stage widths 16·2^s: what does a smaller refiner cost and save? Evidence: docs/results/speed.md."""
    refiner_width = 16


class nnUNetTrainerHiDiff_w8(W8, nnUNetTrainerHiDiff_paper):
    """Stage widths 8·2^s (the cost table). Evidence: docs/results/speed.md."""


class nnUNetTrainerHiDiff_real_w8(Real, W8, nnUNetTrainerHiDiff_paper):
    """_w8 with a real-valued refiner (the cost table). Evidence: docs/results/speed.md."""


class nnUNetTrainerHiDiff_w8_joint(W8, Joint, nnUNetTrainerHiDiff_paper):
    """Width 8 with the joint step: the speed issue's candidate (training step 1.45× nnU-Net's on 901).
    Evidence: docs/results/speed.md."""


class nnUNetTrainerHiDiff_res(Res, nnUNetTrainerHiDiff_paper):
    """The paper's configuration with the prior-residual head. No committed result (the head's results are those of
    _w8_joint_bce1_res_cpuWarm500)."""


class nnUNetTrainerHiDiff_w8_joint_cpuWarm500(W8, Joint, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """Does the fast candidate refine? Warm-start protocol, T steps at prediction.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/hidiff_fold_w8_joint_cpuWarm500_fold0.json."""


class nnUNetTrainerHiDiff_w8_joint_bce1_cpuWarm500(W8, Joint, Bce1, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """ε̂ calibrated on entries without noise (issue 12, finding 4); the model the old demo shipped.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/w8_joint_bce1/ and the sampler ablations there."""


class nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500(W8, Joint, Bce1, Res, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """A refiner that starts as its segmentor and learns only corrections: the measured configuration that became
    the default (which predicts with 1 step; this class with T). Evidence:
    benchmark_results/Dataset901_Hippocampus_issue12/w8_joint_bce1_res_5folds/ (and w8_joint_bce1_res*/),
    benchmark_results/Dataset902_DRIVE_issue12/warm_fold0/ and combine_fold*/."""


class nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500(Real, W8, Joint, Bce1, Res, CpuWarm500,
                                                            nnUNetTrainerHiDiff_paper):
    """The real-valued twin of _w8_joint_bce1_res_cpuWarm500: what does binarization cost?
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/real_refiner/."""


class nnUNetTrainerHiDiff_joint_bce1_cpuWarm500(Joint, Bce1, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """The paper's width 32 with the joint step and BCE share: does the width-8 refiner refine as well?
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/ (sampler_ablation_joint_bce1_*,
    joint_bce1_cpuWarm500_fold0_*)."""


class nnUNetTrainerHiDiff_joint_bce1_res_cpuWarm500(Joint, Bce1, Res, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """Width 32 with the residual head: what does width 8 give up? (issue 14)
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/width8_vs_32/, width8_vs_32_fold3/."""


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
