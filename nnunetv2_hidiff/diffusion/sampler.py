"""Bernoulli DDIM sampler (paper Algorithm 2), in the style of diffusers' schedulers.

The sampler never calls a network: the caller computes ε̂ for (y_t, t) and hands it to ``step``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .bernoulli import BernoulliDiffusion, calibrate


@dataclass
class SamplerStepOutput:
    """Result of one reverse step.

    prev_sample: y_{t_prev} (B, K, *spatial): a {0,1} state (sampled or thresholded, see
        ``transition``), or at the last step ŷ0 itself
        (final="mean") or a sample of it (final="sample").
    pred_y0: ŷ0 = |y_t − ε̂| (Eq. 10), soft.
    prev_mean: the Bernoulli mean that prev_sample was drawn from.
    """
    prev_sample: torch.Tensor
    pred_y0: torch.Tensor
    prev_mean: torch.Tensor


def uniform(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """U[0, 1) of ``like``'s shape on ``like``'s device, drawn on the generator's device: with a CPU generator
    the numbers (hence the refined masks) are the same whether the chain runs on the CPU or on a GPU, whose
    generators produce other streams for the same seed."""
    device = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, device=device, dtype=torch.float32).to(like.device)


def bernoulli(mean: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A Bernoulli sample 1[u < mean] with u from :func:`uniform` (device-independent like it)."""
    return (uniform(mean, generator) < mean).to(mean.dtype)


def respaced_timesteps(num_steps: int, num_inference_steps: int) -> List[int]:
    """Evenly spaced descending subsequence of 1..T with T first, e.g. T=10, n=4 → [10, 7, 4, 1]."""
    if not 1 <= num_inference_steps <= num_steps:
        raise ValueError(f"num_inference_steps must be in 1..{num_steps}, got {num_inference_steps}")
    if num_inference_steps == 1:
        return [num_steps]
    points = torch.linspace(num_steps, 1, num_inference_steps, dtype=torch.float64).round().long()
    return [int(v) for v in points]


class BernoulliDDIMSampler:
    """DDIM for the prior-conditioned Bernoulli diffusion (Algorithm 2, DDIM branch).

    From y_t and ŷ0 = |y_t − ε̂| the next state is drawn as
        y_{t'} ~ B(σ·y_t + (ᾱ_{t'} − σ·ᾱ_t)·ŷ0 + ((1 − ᾱ_{t'}) − σ·(1 − ᾱ_t))·p),
        σ = (1 − ᾱ_{t'}) / (1 − ᾱ_t),
    where t' is the next step of the (possibly respaced) sequence (t' = t − 1 without respacing).
    With this σ the coefficient of p is exactly 0 and the other two sum to 1, so the mean is a
    convex combination of y_t and ŷ0. At the last step t' = 0, ᾱ_0 = 1, σ = 0 and the mean is ŷ0.

    How the intermediate state y_{t'} (t' > 0) is formed:
        transition="renoise" (default): y_{t'} ~ q(y_{t'} | ŷ0, p) = B(ᾱ_{t'}·ŷ0 + (1 − ᾱ_{t'})·p), the forward
            marginal (Eq. 6) around the current estimate ŷ0, drawn as 1[u < ᾱ_{t'}·ŷ0 + (1 − ᾱ_{t'})·p] with
            one uniform field u per chain (the one that drew y_T = 1[u < p] in :meth:`initial_sample`). Every
            intermediate state is distributed like the states the refiner was trained on, and, because u is
            shared, a change of ε̂ at any step moves the thresholds of all later states in the same direction
            and so reaches the final ŷ0 (with fresh draws per step, the ᾱ_{t'}-sized influence of the early,
            noisy steps mostly drowns in new noise). The deterministic-noise analogue of DDIM's η = 0.
        transition="renoise_fresh": the same marginal with a fresh draw at every step.
        transition="renoise_threshold": y_{t'} = 1[ᾱ_{t'}·ŷ0 + (1 − ᾱ_{t'})·p > 0.5], its most likely state.
        transition="sample": y_{t'} ~ B(m), m the DDIM mean above: Algorithm 2 verbatim. On real data this
            chain collapses: the refiner is trained on forward-process states, in which y_t can differ from
            y0 only where the prior p differs from y0, so a pixel with y_t = 1 and p ≈ 0 means "foreground"
            to it; a residual ε̂ of a few percent on confident background flips that share of all pixels at
            every step, and the refiner confirms the flips (README, "Sampler").
        transition="threshold": y_{t'} = 1[m > 0.5] (the default until v0.1). Whenever σ > 0.5 this state
            equals y_t whatever ε̂ is (with T = 10: at t = 10…4), so most refiner calls cannot change the
            result; kept for comparison.
    The start y_T ~ B(p) is a sample in every mode, so different seeds give different chains.

    Args:
        diffusion: the BernoulliDiffusion whose schedule the refiner was trained with.
        num_inference_steps: how many of the T steps to visit (1..T); default T.
        final: "mean" returns ŷ0 (soft probabilities) at the last step; "sample" returns B(ŷ0).
        transition: one of TRANSITIONS, see above.
    """

    TRANSITIONS = ("renoise", "renoise_fresh", "renoise_threshold", "sample", "threshold")
    DEFAULT_TRANSITION = "renoise"

    def __init__(self, diffusion: BernoulliDiffusion, num_inference_steps: Optional[int] = None,
                 final: str = "mean", transition: str = DEFAULT_TRANSITION):
        if final not in ("mean", "sample"):
            raise ValueError(f"final must be 'mean' or 'sample', got {final!r}")
        if transition not in self.TRANSITIONS:
            raise ValueError(f"transition must be one of {self.TRANSITIONS}, got {transition!r}")
        self.diffusion = diffusion
        self.final = final
        self.transition = transition
        self.set_timesteps(num_inference_steps or diffusion.num_steps)
        self._noise: Optional[torch.Tensor] = None  # the chain's uniform field (transition "renoise")

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the respaced sequence, e.g. 10 → [10, 9, ..., 1]."""
        self.timesteps = respaced_timesteps(self.diffusion.num_steps, num_inference_steps)
        self._previous = {t: (self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0)
                          for i, t in enumerate(self.timesteps)}

    def previous_timestep(self, t: int) -> int:
        return self._previous[int(t)]

    def initial_sample(self, prior: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """y_T ~ B(p), the start of the reverse chain (Algorithm 2), drawn as 1[u < p]; u (uniform, p's shape)
        is kept as this chain's noise field for transition "renoise"."""
        self._noise = uniform(prior, generator)
        return (self._noise < prior.clamp(0, 1)).to(prior.dtype)

    def _chain_noise(self, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if self._noise is None or self._noise.shape != like.shape or self._noise.device != like.device:
            self._noise = uniform(like, generator)
        return self._noise

    def step(self, eps_hat: torch.Tensor, t: int, y_t: torch.Tensor, prior: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> SamplerStepOutput:
        """One reverse step from t to the previous step of the sequence.

        eps_hat: predicted noise probabilities (B, K, *spatial); t: current step (python int, one of
        self.timesteps); y_t: current state; prior: p. Returns SamplerStepOutput.
        """
        t = int(t)
        if t not in self._previous:
            raise ValueError(f"t={t} is not one of this sampler's timesteps {self.timesteps}")
        t_prev = self._previous[t]
        ab = self.diffusion.alpha_bars
        ab_t, ab_prev = float(ab[t]), float(ab[t_prev])
        y0_hat = calibrate(y_t, eps_hat)  # Eq. 10
        if self.transition.startswith("renoise"):
            mean = ab_prev * y0_hat + (1 - ab_prev) * prior  # Eq. 6 around ŷ0; = ŷ0 at t' = 0
        else:
            sigma = (1 - ab_prev) / (1 - ab_t)  # σ_t of Algorithm 2
            coef_prior = (1 - ab_prev) - sigma * (1 - ab_t)  # 0 up to rounding; kept to mirror Algorithm 2
            mean = sigma * y_t + (ab_prev - sigma * ab_t) * y0_hat + coef_prior * prior
        mean = mean.clamp(0, 1)
        if t_prev == 0:
            prev = mean if self.final == "mean" else bernoulli(mean, generator)
        elif self.transition == "renoise":
            prev = (self._chain_noise(mean, generator) < mean).to(mean.dtype)
        elif self.transition in ("sample", "renoise_fresh"):
            prev = bernoulli(mean, generator)
        else:
            prev = (mean > 0.5).to(mean.dtype)
        return SamplerStepOutput(prev_sample=prev, pred_y0=y0_hat, prev_mean=mean)
