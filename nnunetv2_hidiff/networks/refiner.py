"""The diffusion refiner g of HiDiff (BBDM, paper Sec. II-B): a time-conditioned U-Net predicting ε̂.

The refiner's stages mirror the segmentor configured by the nnU-Net plan: same number of stages and
the same per-stage strides (anisotropic and non-square patches allowed), so that every segmentor
encoder skip has a refiner stage of exactly its resolution.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_hidiff.diffusion import prior_eps_logits

from .binary import TimestepEmbedding, cached, make_conv, mark_cached_embedding
from .blocks import FeatureFusion, RefinerBlock
from .xformer import XFormer

__all__ = ["HiDiffRefiner", "refiner_widths"]


def refiner_widths(n_stages: int, width: int = 32, max_width: int = 256) -> List[int]:
    """Channels per stage: width·2^s capped at max_width, e.g. 4 stages, 32 → [32, 64, 128, 256]."""
    return [min(width * 2 ** s, max_width) for s in range(n_stages)]


class HiDiffRefiner(nn.Module):
    """Binary (or real) Bernoulli-diffusion refiner: ε̂-logits = g(x, y_t, p, t, segmentor features).

    Layout (S = number of plan stages, w_s = refiner width of stage s):
      - time: e_t = MLP(sinusoidal(t)) (hidden 4·width, output ``cond_dim`` = 16; real), read by
        every TB/TA layer through its own linear layer (see :class:`~.binary.TimestepEmbedding`);
      - stem: real 3x3 conv of concat[image (C_in), y_t (K), p (K)] → w_0 (first layer real);
      - encoder stage s: RefinerBlock(stride = plan stride s) + (blocks_per_stage − 1) RefinerBlocks,
        then :class:`FeatureFusion` of segmentor skip s (real 1x1 projection, concat, binary 3x3);
      - bottleneck (stage S−1): with ``use_xformer`` the projected segmentor tokens f_p and the
        refiner tokens f_d go through the (B)X-Former first, and the fusion concatenates the
        *updated* f'_p to f'_d;
      - decoder stage s = S−2..0: nearest upsampling to the skip's size, concat with the encoder
        output of stage s, RefinerBlock(w_{s+1} + w_s → w_s) + (blocks_per_stage − 1) RefinerBlocks;
      - head: real 3x3 conv w_0 → K logits (last layer real).

    Binary build: every 3x3 conv inside the blocks and every X-Former projection is binary with TB/TA;
    the stem, head, 1x1 segmentor projections, BN, LayerNorm, TA and time MLP stay real.

    Head init: weights N(0, 1e-3²) and bias logit(eps_init_prob) (default 0.02), so ε̂ starts small
    (Bernoulli noise is rare: P(ε=1) = (1 − ᾱ_t)|p − y0|) and ŷ0 = |y_t − ε̂| starts ≈ y_t, i.e. the
    untrained refiner passes the prior sample through. The weights are small rather than zero so that
    gradients reach every parameter from the first step.

    Args:
        dim: number of spatial dims (2 or 3; 1 works too).
        in_channels: image channels C_in.
        num_classes: K (Bernoulli channels, background included).
        strides: per-stage strides of the segmentor (len S; ints or per-axis sequences).
        seg_channels: channels of the segmentor's encoder skips (len S).
        width, max_width: refiner widths, see :func:`refiner_widths`.
        binary: binary (BBDM) or real twin.
        use_xformer: X-Former at the bottleneck (else only the concat fusion).
        blocks_per_stage: RefinerBlocks per encoder/decoder stage (besides the fusion block).
        num_heads, mlp_ratio: X-Former heads (reduced to a divisor of the width if needed), FFN ratio.
        eps_init_prob: initial ε̂ of the head (see above).
        cond_dim: width of the time code read by the TB/TA layers (≥ T keeps them fully expressive).
        prior_residual_alpha_bars: ᾱ_0..ᾱ_T of the diffusion to make the head a residual on the prior (not in the
            paper): ε̂-logits = (1 − 2·y_t)·(logit P(y0 = 1 | y_t, p) + head), with the Bayes posterior of
            :func:`~nnunetv2_hidiff.diffusion.prior_eps_logits` and a head that starts at 0, so the untrained
            refiner returns its segmentor's p after one step from y_T and learns only corrections. None: the
            paper's direct ε̂ head (init above).
    """

    def __init__(self, dim: int, in_channels: int, num_classes: int, strides: Sequence[Union[int, Sequence[int]]],
                 seg_channels: Sequence[int], width: int = 32, max_width: int = 256, binary: bool = True,
                 use_xformer: bool = True, blocks_per_stage: int = 1, num_heads: int = 4, mlp_ratio: int = 4,
                 eps_init_prob: float = 0.02, cond_dim: int = 16,
                 prior_residual_alpha_bars: Optional[Sequence[float]] = None):
        super().__init__()
        if len(strides) != len(seg_channels):
            raise ValueError(f"need one segmentor channel count per stage: {len(strides)} strides, "
                             f"{len(seg_channels)} channel counts")
        if blocks_per_stage < 1:
            raise ValueError("blocks_per_stage must be >= 1")
        self.dim, self.in_channels, self.num_classes = dim, in_channels, num_classes
        self.binary, self.use_xformer = binary, use_xformer
        self.strides = [[int(s)] * dim if isinstance(s, int) else [int(v) for v in s] for s in strides]
        if any(len(s) != dim for s in self.strides):
            raise ValueError(f"strides {strides} do not match {dim} spatial dims")
        self.seg_channels = [int(c) for c in seg_channels]
        self.widths = refiner_widths(len(self.strides), width, max_width)
        n = len(self.widths)
        emb_dim = cond_dim
        self.time_embed = TimestepEmbedding(width, cond_dim, hidden_dim=4 * width)
        self.stem = make_conv(dim, in_channels + 2 * num_classes, self.widths[0], 3, binary=False, bias=True)

        self.encoder = nn.ModuleList()
        prev = self.widths[0]
        for s, w in enumerate(self.widths):
            blocks = [RefinerBlock(dim, prev, w, emb_dim, stride=self.strides[s], binary=binary)]
            blocks += [RefinerBlock(dim, w, w, emb_dim, binary=binary) for _ in range(blocks_per_stage - 1)]
            self.encoder.append(nn.ModuleList(blocks))
            prev = w
        self.fusions = nn.ModuleList(FeatureFusion(dim, w, c, emb_dim, binary=binary)
                                     for w, c in zip(self.widths, self.seg_channels))
        bottleneck = self.widths[-1]
        heads = num_heads if bottleneck % num_heads == 0 else math.gcd(bottleneck, num_heads)
        self.xformer = XFormer(bottleneck, emb_dim, heads, mlp_ratio, binary) if use_xformer else None

        self.decoder = nn.ModuleList()
        for s in range(n - 1):
            blocks = [RefinerBlock(dim, self.widths[s + 1] + self.widths[s], self.widths[s], emb_dim, binary=binary)]
            blocks += [RefinerBlock(dim, self.widths[s], self.widths[s], emb_dim, binary=binary)
                       for _ in range(blocks_per_stage - 1)]
            self.decoder.append(nn.ModuleList(blocks))

        self.head = make_conv(dim, self.widths[0], num_classes, 3, binary=False, bias=True)
        nn.init.normal_(self.head.weight, std=1e-3)
        self.prior_residual = prior_residual_alpha_bars is not None
        if self.prior_residual:  # not persistent: the state dict is the same as the direct head's
            self.register_buffer("alpha_bars", torch.as_tensor(prior_residual_alpha_bars, dtype=torch.float32),
                                 persistent=False)
        nn.init.constant_(self.head.bias, 0.0 if self.prior_residual
                          else math.log(eps_init_prob / (1 - eps_init_prob)))

    def project_features(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The segmentor skips projected to the refiner's widths (one per stage). They depend neither on y_t
        nor on t, so a reverse chain computes them once and passes them to every step (``projected=``)."""
        if len(features) != len(self.widths):
            raise ValueError(f"expected {len(self.widths)} segmentor feature maps, got {len(features)}")
        return [fusion.project(f) for fusion, f in zip(self.fusions, features)]

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """e_t for t (B,). At inference (eval mode, no autograd) kept per distinct t (and weights), so that the TB/TA
        layers compute their time codes once per t instead of at every step of every patch (binary.time_code)."""
        if self.training or torch.is_grad_enabled():
            return self.time_embed(t)
        params = tuple((p.data_ptr(), p._version) for p in self.time_embed.parameters())
        key = (tuple(t.tolist()), str(t.device), torch.is_autocast_enabled(t.device.type), params)
        return cached(self, "_time_embedding_cache", key, lambda: mark_cached_embedding(self.time_embed(t)))

    def forward(self, x: torch.Tensor, y_t: torch.Tensor, prior: torch.Tensor, t: Union[torch.Tensor, int],
                features: Optional[Sequence[torch.Tensor]] = None,
                projected: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Predict the logits of the Bernoulli noise ε̂ (ε̂ = sigmoid of the output).

        x: image (B, C_in, *sp); y_t: diffusion state {0,1} (B, K, *sp); prior: p (B, K, *sp);
        t: int64 (B,) in 1..T (a python int or 0-dim tensor is broadcast to the batch);
        features: the segmentor's encoder skips, one per stage, features[s] of shape
        (B, seg_channels[s], *sp_s) (detach them or not: the caller decides).
        projected: :meth:`project_features` of those skips, computed once per chain (then ``features`` may
        be None); identical results either way.
        Returns ε̂ logits (B, K, *sp).
        """
        if projected is None:
            projected = self.project_features(features)
        b = x.shape[0]
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((b,), int(t), dtype=torch.long, device=x.device)
        emb = self.time_embedding(t.to(x.device))
        h = self.stem(torch.cat([x, y_t.to(x.dtype), prior.to(x.dtype)], dim=1))

        skips = []
        last = len(self.widths) - 1
        for s in range(len(self.widths)):
            for block in self.encoder[s]:
                h = block(h, emb)
            f = projected[s]
            if s == last and self.xformer is not None:
                h, f = self.xformer(h, f, emb)  # (f'_d, f'_p)
            h = self.fusions[s].merge(h, f, emb)
            skips.append(h)

        for s in range(last - 1, -1, -1):
            first, *rest = self.decoder[s]
            h = first.merge_forward(h, skips[s], emb)  # concat[nearest-upsampled h, skip] → block
            for block in rest:
                h = block(h, emb)
        if h.shape[2:] != x.shape[2:]:  # only if the plan's first stride is not 1
            h = F.interpolate(h, size=x.shape[2:], mode="nearest")
        out = self.head(h)
        if self.prior_residual:
            ab = self.alpha_bars[t.to(self.alpha_bars.device)].view(-1, *([1] * (out.dim() - 1)))
            out = (1 - 2 * y_t.float()) * out.float() + prior_eps_logits(y_t, prior, ab)  # float32 under autocast too
        return out
