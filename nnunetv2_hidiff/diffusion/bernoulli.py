"""The Bernoulli forward process and its posterior (paper Sec. II-B.1, Eq. 3-7).

Conventions used in this module:
- masks, priors and probabilities are tensors (B, K, *spatial) with K channels, each channel an
  independent Bernoulli variable (one-hot ground truth incl. background; softmax prior);
- time steps ``t`` are int64 tensors (B,) with values in 1..T (t = 0 is the clean mask);
- the schedule is kept in float64 and cast to the data's dtype when it is broadcast.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .schedule import make_alphas

# Smallest denominator in Eq. 7. θ1 + θ2 is 0 only for events of probability 0 under the
# forward process, e.g. y_t = 1 where y0 = 0 and p = 0 (nothing can switch that pixel on). Such
# inputs still occur in practice (hard priors, saturated softmax, ŷ0 from the network), and
# 0/0 would give NaN that poisons every gradient of the batch. With the floor the posterior of an
# impossible event becomes θ2 / EPS = 0 (θ2 is 0 too there), a finite and harmless value.
POSTERIOR_EPS = 1e-12


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t]`` per batch element and shape it (B, 1, 1, ...) to broadcast over ``like``.

    values: (T+1,) float64 schedule; t: (B,) int64; like: (B, K, *spatial). Returns like.dtype.
    """
    out = values.to(like.device)[t.to(like.device).long()].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


class BernoulliDiffusion:
    """Bernoulli diffusion whose noise is drawn towards the segmentor prior p = f(x).

    Forward step (Eq. 4):  q(y_t | y_{t-1}, p) = B(α_t·y_{t-1} + (1 − α_t)·p)
    Marginal (Eq. 6):      q(y_t | y0, p)      = B(ᾱ_t·y0 + (1 − ᾱ_t)·p)
    Posterior (Eq. 7):     q(y_{t-1} | y_t, y0, p) = B(φ_post(y_t, y0, p))

    Args:
        num_steps: T, the number of diffusion steps (the paper uses 10).
        schedule: "cosine" (paper, s = 0.008) or "linear".
        s: offset of the cosine schedule.
    """

    def __init__(self, num_steps: int = 10, schedule: str = "cosine", s: float = 0.008):
        self.num_steps = int(num_steps)
        self.schedule = schedule
        self.s = s
        self.alphas = make_alphas(self.num_steps, schedule, s)  # float64 (T+1,), alphas[0] = 1
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)  # float64 (T+1,), alpha_bars[0] = 1

    def __repr__(self) -> str:
        return f"BernoulliDiffusion(num_steps={self.num_steps}, schedule={self.schedule!r}, s={self.s})"

    def _check_t(self, t: torch.Tensor) -> None:
        if t.dtype not in (torch.int64, torch.int32) or t.dim() != 1:
            raise TypeError(f"t must be an int64 tensor of shape (B,), got {t.dtype} {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.num_steps):
            raise ValueError(f"t must lie in 1..{self.num_steps}, got min {int(t.min())} max {int(t.max())}")

    def sample_timesteps(self, batch_size: int, device=None, generator: Optional[torch.Generator] = None,
                         low: int = 1):
        """t ~ U{low..T}, int64 (B,) (Algorithm 1: low = 1)."""
        if not 1 <= low <= self.num_steps:
            raise ValueError(f"the lowest training timestep must lie in 1..T = {self.num_steps}, got {low}")
        return torch.randint(low, self.num_steps + 1, (batch_size,), device=device, generator=generator)

    def q_mean(self, y0: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(y_t | y0, p): ᾱ_t·y0 + (1 − ᾱ_t)·p  (Eq. 6). Shapes (B, K, *spatial)."""
        self._check_t(t)
        ab = extract(self.alpha_bars, t, y0)
        return ab * y0 + (1 - ab) * prior

    def noise_probability(self, y0: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """P(ε = 1) = (1 − ᾱ_t)·|p − y0| for a hard y0 (Sec. II-B.1, below Eq. 6)."""
        self._check_t(t)
        return (1 - extract(self.alpha_bars, t, y0)) * (prior - y0).abs()

    def q_sample(self, y0: torch.Tensor, prior: torch.Tensor, t: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draw y_t ~ q(y_t | y0, p) through the noise: ε ~ B((1 − ᾱ_t)|p − y0|), y_t = y0 ⊕ ε.

        y0: hard {0,1} mask (B, K, *spatial); prior: probabilities, same shape; t: (B,).
        Returns (y_t, eps), both with y0's dtype and values in {0, 1}.
        For hard y0 this has exactly the law of Eq. 6: if y0 = 1, P(y_t = 1) = 1 − (1 − ᾱ_t)(1 − p)
        = ᾱ_t + (1 − ᾱ_t)p; if y0 = 0, P(y_t = 1) = (1 − ᾱ_t)p.
        """
        probs = self.noise_probability(y0, prior, t).clamp(0, 1)
        eps = torch.bernoulli(probs, generator=generator)
        y_t = (y0 + eps) % 2  # XOR of {0,1} tensors, differentiable-free and dtype-preserving
        return y_t, eps

    def posterior(self, y_t: torch.Tensor, y0: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """P(y_{t-1} = 1 | y_t, y0, p), the Bernoulli posterior of Eq. 7.

        y_t: {0,1} (B, K, *spatial); y0: clean mask, may be soft (ŷ0 = |y_t − ε̂|, Eq. 10);
        prior: p ∈ [0, 1]; t: (B,) in 1..T. Returns probabilities of y_t's shape, never NaN.

        With L = |1 − y_t − p| (= p if y_t = 1, 1 − p if y_t = 0), Eq. 7 reads
            θ2 = [α_t·y_t + (1 − α_t)·L] · [ᾱ_{t-1}·y0 + (1 − ᾱ_{t-1})·p]            (y_{t-1} = 1)
            θ1 = [α_t·(1 − y_t) + (1 − α_t)·L] · [ᾱ_{t-1}·(1 − y0) + (1 − ᾱ_{t-1})·(1 − p)]
            posterior = θ2 / (θ1 + θ2)   (the ℓ1 normalisation over the two channels).
        """
        self._check_t(t)
        a = extract(self.alphas, t, y_t)
        ab_prev = extract(self.alpha_bars, t - 1, y_t)
        like = (1 - y_t - prior).abs()  # L(y_t, p), the (1 − α_t) term of both likelihoods
        # Eq. 7: likelihood q(y_t | y_{t-1}=v, p) times the marginal q(y_{t-1}=v | y0, p), v ∈ {0, 1}
        theta_1 = (a * (1 - y_t) + (1 - a) * like) * (ab_prev * (1 - y0) + (1 - ab_prev) * (1 - prior))
        theta_2 = (a * y_t + (1 - a) * like) * (ab_prev * y0 + (1 - ab_prev) * prior)
        # see POSTERIOR_EPS: the sum vanishes only on zero-probability events
        return theta_2 / (theta_1 + theta_2).clamp_min(POSTERIOR_EPS)

    def model_posterior(self, y_t: torch.Tensor, eps_hat: torch.Tensor, prior: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """p_θ(y_{t-1} = 1 | y_t, p) = φ_post(y_t, |y_t − ε̂|, p): the calibration function F_C (Eq. 9-10)."""
        return self.posterior(y_t, calibrate(y_t, eps_hat), prior, t)


def calibrate(y_t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """ŷ0 = |y_t − ε̂| (Eq. 10, step (i) of F_C): the mask implied by the predicted noise.

    y_t: {0,1}; eps_hat: predicted noise probabilities in [0, 1]; same shape (B, K, *spatial).
    """
    return (y_t - eps_hat).abs()


def prior_eps_logits(y_t: torch.Tensor, prior: torch.Tensor, alpha_bar: torch.Tensor,
                     p_floor: float = 1e-3) -> torch.Tensor:
    """ε-logits of the refiner that knows nothing beyond the prior: y0 ~ B(p) a priori, updated by y_t.

    With y_t ~ q(y_t | y0, p) = B(ᾱ_t·y0 + (1 − ᾱ_t)·p) (Eq. 6) and y0 ~ B(p), Bayes gives
        logit P(y0 = 1 | y_t = 1, p) = log(ᾱ_t + (1 − ᾱ_t)·p) − log(1 − ᾱ_t) − log(1 − p)
        logit P(y0 = 1 | y_t = 0, p) = log p + log(1 − ᾱ_t) − log(ᾱ_t + (1 − ᾱ_t)·(1 − p))
    and ε = y0 ⊕ y_t, so logit P(ε = 1) = (1 − 2·y_t)·logit P(y0 = 1 | y_t, p). At t = T (ᾱ_T ≈ 0) this is
    logit p: one reverse step from y_T returns p itself. A refiner adding a residual to this (in ŷ0-logit space)
    starts as its segmentor and only has to learn where p is wrong (networks/refiner.py, ``prior_residual``).

    y_t: {0,1} (B, K, *sp); prior: p (B, K, *sp), clamped to [p_floor, 1 − p_floor] so that a residual of a
    few logits can still overturn a saturated softmax; alpha_bar: ᾱ_t broadcastable to y_t (e.g. (B, 1, 1, 1)).
    Returns float32 logits of y_t's shape.
    """
    p = prior.float().clamp(p_floor, 1 - p_floor)
    ab = alpha_bar.float().clamp(0, 1)
    nb = (1 - ab).clamp_min(1e-6)
    y = y_t.float()
    on = torch.log(ab + nb * p) - torch.log(nb) - torch.log1p(-p)  # y_t = 1
    off = torch.log(p) + torch.log(nb) - torch.log(ab + nb * (1 - p))  # y_t = 0
    return (1 - 2 * y) * torch.where(y > 0.5, on, off)

