"""Experiment trainers: plain nnU-Net given HiDiff's budget, the controls of the warm-start and scratch runs.

Question: is HiDiff's segmentor better than plain nnU-Net because of HiDiff, or because it trained longer? Each
control continues (or starts) plain nnU-Net with the same iterations (_cpuWarm500, _cpu1750) or the same time
(_cpuWarm700: a HiDiff iteration costs 1.3-1.5× plain nnU-Net's on 901 on the CPU). Write-up:
docs/experiments/equal_cost_controls.md. Verdict: at equal time plain nnU-Net wins on 901.
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerBaseline

from ._parts import Cpu1750


class nnUNetTrainerBaseline_cpuWarm500(nnUNetTrainerBaseline):
    """Plain nnU-Net continued from the same checkpoint (nnUNet_HiDiff_pretrained_segmentor) for the same 20 × 25
    iterations as the HiDiff _cpuWarm500 runs. Evidence:
    benchmark_results/Dataset901_Hippocampus_issue12/control_boundary_folds012/, gated_folds012/;
    benchmark_results/Dataset902_DRIVE_issue12/combine_fold*/."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 20, 25, 5
    inference_mirroring, warm_start_from_env = False, True


class nnUNetTrainerBaseline_cpuWarm700(nnUNetTrainerBaseline):
    """The equal-time control: the same, continued for 28 × 25 iterations (1.4× the 500).
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/control_boundary_folds012/."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 28, 25, 5
    inference_mirroring, warm_start_from_env = False, True


class nnUNetTrainerBaseline_cpu1750(Cpu1750, nnUNetTrainerBaseline):
    """The control of nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750: plain nnU-Net from scratch with the same
    70 × 25 iterations in one poly schedule, no mirroring test-time augmentation.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/scratch_vs_plain1750/."""


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
