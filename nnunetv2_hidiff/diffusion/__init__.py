"""Bernoulli diffusion maths of HiDiff: pure torch, no network, no nnU-Net.

Tensors are (B, K, *spatial) with K independent Bernoulli channels; time steps are int64 (B,) in 1..T.
"""
from .bernoulli import BernoulliDiffusion, calibrate, extract, prior_eps_logits
from .losses import DiffusionLoss, bernoulli_kl, boundary_band, diffusion_loss, focal_loss_with_logits
from .sampler import BernoulliDDIMSampler, SamplerStepOutput, respaced_timesteps
from .schedule import make_alphas

__all__ = [
    "BernoulliDiffusion", "BernoulliDDIMSampler", "DiffusionLoss", "SamplerStepOutput", "bernoulli_kl",
    "boundary_band", "calibrate", "diffusion_loss", "extract", "focal_loss_with_logits", "make_alphas",
    "prior_eps_logits", "respaced_timesteps",
]
