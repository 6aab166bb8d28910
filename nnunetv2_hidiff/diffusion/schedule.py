"""Noise schedules for the Bernoulli diffusion, computed in float64.

All functions return ``alpha_bars`` of shape (T+1,) with ``alpha_bars[0] = 1`` so that
``alpha_bars[t]`` is ᾱ_t for the 1-based time steps t = 1..T used throughout the package.
"""
from __future__ import annotations

import math

import torch

MAX_BETA = 0.999  # improved-diffusion's clipping: keeps ᾱ_T > 0 so no posterior term is exactly 0


def betas_from_alpha_bar_fn(num_steps: int, alpha_bar_fn, max_beta: float = MAX_BETA) -> torch.Tensor:
    """β_t = min(1 − ᾱ(t/T) / ᾱ((t−1)/T), max_beta) for t = 1..T, as a float64 tensor (T,)."""
    betas = [min(1.0 - alpha_bar_fn(t / num_steps) / alpha_bar_fn((t - 1) / num_steps), max_beta)
             for t in range(1, num_steps + 1)]
    return torch.tensor(betas, dtype=torch.float64)


def cosine_alpha_bar(s: float = 0.008):
    """The cosine schedule of Nichol & Dhariwal used by the paper (Sec. III-A.2).

    ᾱ(u) = cos²((u + s)/(1 + s) · π/2) / cos²(s/(1 + s) · π/2),  u = t/T ∈ [0, 1].
    Note: this is the *squared* cosine ("cosine2" in the authors' code), which is what the paper writes.
    """
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2 / f0


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear β schedule rescaled to T steps (DDPM's 1e-4..0.02 at T = 1000), float64 (T,)."""
    scale = 1000.0 / num_steps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=torch.float64)
    return betas.clamp(max=MAX_BETA)


def make_alphas(num_steps: int, schedule: str = "cosine", s: float = 0.008) -> torch.Tensor:
    """α_t for t = 0..T as float64 (T+1,), with α_0 = 1 as a padding entry.

    schedule: "cosine" (the paper's, squared cosine with offset ``s``) or "linear".
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if schedule == "cosine":
        betas = betas_from_alpha_bar_fn(num_steps, cosine_alpha_bar(s))
    elif schedule == "linear":
        betas = linear_betas(num_steps)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine' or 'linear'")
    # Clip from below too: a β of exactly 0 would make the forward step the identity and
    # the posterior degenerate (the first cosine β is ~1e-4, far above this floor).
    betas = betas.clamp(min=1e-8)
    return torch.cat([torch.ones(1, dtype=torch.float64), 1.0 - betas])
