"""Configuration parts of the experiment trainers, one per piece of their class names.

An experiment trainer is ``class nnUNetTrainerHiDiff_<parts>(<Part mixins>, nnUNetTrainerHiDiff_paper)``: the
paper's configuration (nnunetv2_hidiff.training.variants) with the parts its name lists, each part a few class
attributes. Mixins come first in the bases, so their values win over the paper's. Nothing here has methods.
"""


class W8:
    """``_w8``: refiner stage widths 8·2^s instead of the paper's 32·2^s."""
    refiner_width = 8


class Joint:
    """``_joint``: one refiner forward/backward per iteration updates both networks (not Algorithm 1's two)."""
    joint_step = True


class Bce1:
    """``_bce1``: a BCE share (λ_bce = 1) in L_diff, calibrating ε̂ where y_t carries no noise."""
    lambda_bce = 1.0


class Res:
    """``_res``: the prior-residual refiner head (starts as the segmentor, learns corrections)."""
    prior_residual = True


class Real:
    """``_real``: a real-valued refiner (no XNOR layers), X-Former kept."""
    binary_refiner = False


class TT:
    """``_tT``: the refiner learns only at t = T (the one step a 1-step sampler runs); it predicts with 1 step and
    its decision tries no other step count."""
    min_train_timestep = 10  # = num_diffusion_steps (T)
    inference_steps, decision_extra_steps = 1, ()


class CpuWarm500:
    """``_cpuWarm500``: 20 × 25 iterations (5 validation iterations per epoch) from a trained segmentor loaded
    whole through nnUNet_HiDiff_pretrained_segmentor (nnUNetTrainerBaseline_5epochs of the same fold), no warm-up,
    no mirroring test-time augmentation."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 20, 25, 5
    warmup_epochs, inference_mirroring = 0, False


class CpuWarm100:
    """``_cpuWarm100``: 4 × 25 iterations from a trained segmentor (nnUNetTrainerBaseline_cpu400), 5 DDIM steps at
    prediction, no warm-up, no mirroring test-time augmentation."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 4, 25, 5
    warmup_epochs, inference_steps, inference_mirroring = 0, 5, False


class CpuBench:
    """``_cpuBench``: 6 × 25 iterations from scratch (1 warm-up epoch by the default 16 %), 5 DDIM steps at
    prediction, no mirroring test-time augmentation."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 6, 25, 5
    inference_steps, inference_mirroring = 5, False


class Cpu1750:
    """``_cpu1750``: 70 × 25 iterations from scratch in one schedule (= 1250 + 500 of the warm protocol; HiDiff:
    the default 16 % segmentor warm-up, 11 epochs), no mirroring test-time augmentation."""
    budget_epochs, budget_iterations_per_epoch, budget_val_iterations_per_epoch = 70, 25, 5
    inference_mirroring = False
