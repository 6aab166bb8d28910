"""Experiment trainers: the CPU budgets and warm-start protocols, and the run-to-run spread measured with them.

Question: at what CPU budget is a plain nnU-Net fold stable, and what does HiDiff do on top of it? The protocols,
in the order they were used: _cpuBench (6 × 25 iterations from scratch), _cpuWarm100 (16 × 25 plain iterations,
then 4 × 25 HiDiff iterations), the issue-12 protocol (nnUNetTrainerBaseline_5epochs, 1250 iterations, then
_cpuWarm500, 20 × 25 HiDiff iterations) and HiDiff from scratch with the same total (_cpu1750). Write-up:
docs/experiments/budgets_and_spread.md (_cpu1750 against its plain control:
docs/experiments/equal_cost_controls.md). The product's CPU trainer is nnUNetTrainerHiDiff_cpu (training/variants.py).
"""
from nnunetv2_hidiff.training.variants import nnUNetTrainerBaseline, nnUNetTrainerHiDiff_paper

from ._parts import W8, Bce1, Cpu1750, CpuBench, CpuWarm100, CpuWarm500, Joint, Real, Res


class nnUNetTrainerHiDiff_cpuBench(CpuBench, nnUNetTrainerHiDiff_paper):
    """The first CPU benchmark budget (paper configuration).
    Evidence: benchmark_results/Dataset902_DRIVE_cpuBench/ (superseded by the issue-12 protocol)."""


class nnUNetTrainerHiDiff_real_cpuBench(Real, CpuBench, nnUNetTrainerHiDiff_paper):
    """_cpuBench with a real-valued refiner. Evidence: benchmark_results/Dataset902_DRIVE_cpuBench/ (superseded)."""


class nnUNetTrainerBaseline_cpuBench(nnUNetTrainerBaseline):
    """Plain nnU-Net at the _cpuBench budget. Evidence: benchmark_results/Dataset902_DRIVE_cpuBench/ (superseded)."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 6, 25, 5
    inference_mirroring = False


class nnUNetTrainerBaseline_cpu400(nnUNetTrainerBaseline):
    """16 × 25 iterations: the segmentor that nnUNetTrainerHiDiff_cpuWarm100 starts from.
    Evidence: benchmark_results/Dataset901_Hippocampus_cpuWarm/ (superseded by the issue-12 protocol)."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 16, 25, 5
    inference_mirroring = False


class nnUNetTrainerHiDiff_cpuWarm100(CpuWarm100, nnUNetTrainerHiDiff_paper):
    """The first warm-start protocol (paper configuration), from nnUNetTrainerBaseline_cpu400.
    Evidence: benchmark_results/Dataset901_Hippocampus_cpuWarm/ (superseded)."""


class nnUNetTrainerHiDiff_real_cpuWarm100(Real, CpuWarm100, nnUNetTrainerHiDiff_paper):
    """_cpuWarm100 with a real-valued refiner. Evidence: benchmark_results/Dataset901_Hippocampus_cpuWarm/."""


class nnUNetTrainerHiDiff_cpuWarm500(CpuWarm500, nnUNetTrainerHiDiff_paper):
    """The issue-12 protocol with the paper's configuration (width 32, Algorithm 1, T steps).
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/ (width and sampler studies)."""


class nnUNetTrainerHiDiff_real_cpuWarm500(Real, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """The issue-12 protocol with the paper's real-valued configuration. No committed result."""


class nnUNetTrainerHiDiff_cpu1750(Cpu1750, nnUNetTrainerHiDiff_paper):
    """The paper's configuration from scratch with the issue-12 protocol's 1750 iterations. No committed result."""


class nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750(W8, Joint, Bce1, Res, Cpu1750, nnUNetTrainerHiDiff_paper):
    """From scratch, the same 1750 iterations as nnUNetTrainerBaseline_5epochs + _cpuWarm500 (the default 16 %
    segmentor warm-up: 11 of 70 epochs); run without nnUNet_HiDiff_pretrained_segmentor.
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/scratch_vs_plain1750/ and
    hidiff_fold_w8_joint_bce1_res_cpu1750_fold*.json there."""


class nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm2000(W8, Joint, Bce1, Res, CpuWarm500, nnUNetTrainerHiDiff_paper):
    """4× the refiner iterations (80 × 25): does a longer run learn corrections, or stay the identity?
    Evidence: benchmark_results/Dataset901_Hippocampus_issue12/hidiff_fold_w8_joint_bce1_res_cpuWarm2000_fold0.json."""
    budget_epochs = 80


__all__ = [name for name, obj in list(globals().items())
           if name.startswith("nnUNetTrainer") and getattr(obj, "__module__", None) == __name__]
