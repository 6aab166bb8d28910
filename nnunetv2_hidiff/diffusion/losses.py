"""Diffusion objective of HiDiff: L_diff = L_KL + λ_focal·L_focal (Eq. 11-13).

All losses are means over every element (B, K, *spatial), in nats; with a boundary weight (not in the paper),
weighted means whose weights are larger near the reference's class boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bernoulli import BernoulliDiffusion, calibrate

PROB_EPS = 1e-7  # keeps log() finite where a predicted probability saturates at 0 or 1


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor, eps: float = PROB_EPS) -> torch.Tensor:
    """Element-wise KL(B(q) ‖ B(p)) = q·log(q/p) + (1 − q)·log((1 − q)/(1 − p)), in nats.

    Both arguments may be exactly 0 or 1. The logarithms see values clamped to [eps, 1 − eps]
    while the weights q and 1 − q do not, so 0·log 0 counts as 0 and, unlike xlogy(q, q), the
    gradient with respect to q stays finite at q = 0 (q carries gradients to the prior).
    The clamp changes the value by at most about eps per element.
    """
    q_log = q.clamp(eps, 1 - eps)
    p_log = p.clamp(eps, 1 - eps)
    return q * (q_log.log() - p_log.log()) + (1 - q) * ((1 - q_log).log() - (1 - p_log).log())


def boundary_band(y0: torch.Tensor) -> torch.Tensor:
    """1 where a pixel lies within one pixel (3×3 or 3×3×3 neighbourhood) of a class boundary of the one-hot
    reference y0 (B, K, *spatial), else 0; shape (B, 1, *spatial). Image borders are not boundaries."""
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[y0.ndim - 2]
    y = y0.float()
    mixed = pool(y, 3, stride=1, padding=1) - -pool(-y, 3, stride=1, padding=1)  # dilation − erosion, per class
    return mixed.amax(1, keepdim=True)


def _mean(loss: torch.Tensor, weight) -> torch.Tensor:
    """The mean of ``loss``, or its weighted mean sum(w·loss) / sum(w) with ``weight`` broadcast to its shape."""
    if weight is None:
        return loss.mean()
    w = weight.expand_as(loss)
    return (w * loss).sum() / w.sum()


def focal_loss_with_logits(eps_logits: torch.Tensor, eps: torch.Tensor, gamma: float = 2.0,
                           weight=None) -> torch.Tensor:
    """Eq. 12, mean over all elements (weighted by ``weight`` when given); the refiner's output is given as
    logits of ε̂.

    −[ε·(1 − ε̂)^γ·log ε̂ + (1 − ε)·ε̂^γ·log(1 − ε̂)],  ε̂ = sigmoid(logits).
    γ = 0 gives binary cross-entropy (L_BCE of BerDiff). log-sigmoid keeps it finite for any logit.
    """
    log_p = F.logsigmoid(eps_logits)  # log ε̂
    log_1mp = F.logsigmoid(-eps_logits)  # log(1 − ε̂)
    if gamma == 0:
        loss = -(eps * log_p + (1 - eps) * log_1mp)
    else:
        loss = -(eps * torch.exp(gamma * log_1mp) * log_p + (1 - eps) * torch.exp(gamma * log_p) * log_1mp)
    return _mean(loss, weight)


@dataclass
class DiffusionLoss:
    """The terms of L_diff for one batch (scalars)."""
    total: torch.Tensor
    kl: torch.Tensor
    focal: torch.Tensor


def diffusion_loss(diffusion: BernoulliDiffusion, eps_logits: torch.Tensor, eps: torch.Tensor,
                   y_t: torch.Tensor, y0: torch.Tensor, prior: torch.Tensor, t: torch.Tensor,
                   gamma: float = 2.0, lambda_focal: float = 1.0, lambda_bce: float = 0.0,
                   boundary_weight: float = 0.0) -> DiffusionLoss:
    """L_diff = KL(q(y_{t-1} | y_t, y0, p) ‖ p_θ(y_{t-1} | y_t, p)) + λ_focal·Focal(ε̂, ε)  (Eq. 11-13)
    [+ λ_bce·BCE(ε̂, ε), not in the paper: with γ = 2 the focal term hardly moves a small ε̂ on the many entries
    without noise towards 0, and a residual ε̂ there makes every sampled chain collapse; BCE calibrates them].
    boundary_weight β > 0 (not in the paper): every term becomes a weighted mean with weight 1 + β on the pixels
    within one pixel of y0's class boundaries (``boundary_band``) and 1 elsewhere, where a segmentor's errors on
    unseen cases lie (issue 12); β = 0 is the plain mean.

    eps_logits: refiner output (B, K, *spatial), ε̂ = sigmoid(eps_logits); eps: the true noise;
    y_t, y0 (hard), prior p: (B, K, *spatial); t: (B,) in 1..T.
    One refiner forward serves both terms (the authors' code runs the network twice).
    At t = 1 the target posterior is the point mass at y0 (ᾱ_0 = 1), so the KL term equals the
    decoder negative log-likelihood −log p_θ(y0 | y_1, p); no separate t = 0 branch is needed.
    Gradients reach the prior p (through both posteriors) when it is not detached, as in the
    segmentor step of Algorithm 1.
    """
    eps_hat = torch.sigmoid(eps_logits)
    target = diffusion.posterior(y_t, y0, prior, t)  # Eq. 7
    predicted = diffusion.posterior(y_t, calibrate(y_t, eps_hat), prior, t)  # Eq. 9-10
    weight = 1 + boundary_weight * boundary_band(y0) if boundary_weight else None
    kl = _mean(bernoulli_kl(target, predicted), weight)  # Eq. 11
    focal = focal_loss_with_logits(eps_logits, eps, gamma, weight)  # Eq. 12
    total = kl + lambda_focal * focal  # Eq. 13
    if lambda_bce:
        bce = F.binary_cross_entropy_with_logits(eps_logits.float(), eps.float(), reduction="none")
        total = total + lambda_bce * _mean(bce, weight)
    return DiffusionLoss(total=total, kl=kl, focal=focal)
