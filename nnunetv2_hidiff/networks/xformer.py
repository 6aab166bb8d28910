"""X-Former / BX-Former (paper Sec. II-B.3): two cross-transformer blocks at the bottleneck.

Block 1 (refiner → segmentor): queries from the segmentor tokens f_p, keys/values from the refiner
tokens f_d, giving f'_p. Block 2 (segmentor → refiner): queries from f_d, keys/values from the
*updated* f'_p, giving f'_d, which continues in the refiner decoder. Both updated streams are
returned (the official code discards f'_p; here it is the key/value source of block 2 and is also
what the refiner concatenates at the bottleneck, see :class:`~.refiner.HiDiffRefiner`).

Token ↔ map conversions use the explicit spatial shape (no square assumption, no reshape without
transpose): tokens = map.flatten(2).transpose(1, 2); map = tokens.transpose(1, 2).reshape(B, C, *sp).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .binary import TimeActivation, TimeThreshold, make_linear

__all__ = ["CrossAttention", "FeedForward", "CrossTransformerBlock", "XFormer", "map_to_tokens",
           "tokens_to_map", "ATTENTION_THRESHOLD"]

# Fraction of the row maximum above which a binarized attention score counts as "attended"
# (the official BinaryViT-style attention uses the same 0.35).
ATTENTION_THRESHOLD = 0.35


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) → (B, N, C) with N = prod(spatial)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """(B, N, C) → (B, C, *spatial); transpose first, then reshape with the explicit spatial shape."""
    b, n, c = tokens.shape
    if n != math.prod(spatial):
        raise ValueError(f"{n} tokens cannot be reshaped to spatial shape {tuple(spatial)}")
    return tokens.transpose(1, 2).reshape(b, c, *spatial)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from x (B, Nq, C), keys/values from y (B, Nk, C) → (B, Nq, C).

    Real build: Linear Q/K/V/out projections and softmax(QKᵀ/√d)·V.
    Binary build (BX-Former):
      - the inputs of every projection are binarized by TB (time thresholds) and the Q/K/V/out
        projections are :class:`~.binary.BinaryLinear` (sign weights with per-row scale);
      - Q, K, V themselves are binarized by TB (sign with time-dependent thresholds);
      - the attention map is binary in the forward pass: A = 1[s > 0.35·max_row(s)] with
        s = Q_b·K_bᵀ/√d, normalised by its row count (≥ 1), so A·V_b is a popcount-friendly sum of
        ±1 values averaged over the attended keys. Backward goes through softmax(s) (straight-
        through). The official map is the unnormalised indicator; normalising keeps the output in
        [−1, 1] for any token count and makes forward and surrogate both rows that sum to 1.
        A softmax over the binarized scores was not used: it needs N² exponentials, i.e. real
        arithmetic on the largest tensor of the block, which defeats the binarization.
    """

    def __init__(self, dim: int, emb_dim: int, num_heads: int = 4, binary: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.binary = dim, num_heads, binary
        self.q = make_linear(dim, dim, binary)
        self.k = make_linear(dim, dim, binary)
        self.v = make_linear(dim, dim, binary)
        self.out = make_linear(dim, dim, binary)
        if binary:
            kw = dict(binary=True, channel_last=True)
            self.tb_x = TimeThreshold(dim, emb_dim, **kw)
            self.tb_y = TimeThreshold(dim, emb_dim, **kw)
            self.tb_q = TimeThreshold(dim, emb_dim, **kw)
            self.tb_k = TimeThreshold(dim, emb_dim, **kw)
            self.tb_v = TimeThreshold(dim, emb_dim, **kw)
            self.tb_out = TimeThreshold(dim, emb_dim, **kw)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)  # (B, h, N, d)

    @staticmethod
    def binary_attention(qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
        """Binarized attention on ±1 tensors (B, h, N, d): forward thresholded map, softmax backward.

        Keys whose score exceeds ATTENTION_THRESHOLD × the row's maximum are attended, with equal weights. A row
        whose maximum is ≤ 0 (the query disagrees with every key at least as much as it agrees) attends to nothing:
        its message is 0, so the block's residual passes the query's features on unchanged. This is intended (no key
        is "similar"), and kept so that trained models predict as they were validated (tests/test_networks_binary.py).
        """
        scores = qb @ kb.transpose(-2, -1) / math.sqrt(qb.shape[-1])  # (B, h, Nq, Nk)
        hard = (scores > ATTENTION_THRESHOLD * scores.amax(dim=-1, keepdim=True)).to(scores.dtype)
        hard = hard / hard.sum(dim=-1, keepdim=True).clamp_min(1.0)
        if not torch.is_grad_enabled():  # inference: the forward value only, no softmax surrogate
            return hard @ vb
        soft = scores.softmax(dim=-1)
        attn = soft + (hard - soft).detach()
        return attn @ vb

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, nq, c = x.shape
        if self.binary:
            xb, yb = self.tb_x(x, emb), self.tb_y(y, emb)
            q = self.tb_q(self.q(xb), emb)
            k = self.tb_k(self.k(yb), emb)
            v = self.tb_v(self.v(yb), emb)
            h = self.binary_attention(self._heads(q), self._heads(k), self._heads(v))
        else:
            h = F.scaled_dot_product_attention(self._heads(self.q(x)), self._heads(self.k(y)), self._heads(self.v(y)))
        h = h.transpose(1, 2).reshape(b, nq, c)
        return self.out(self.tb_out(h, emb) if self.binary else h)


class FeedForward(nn.Module):
    """Token MLP C → r·C → C with a time-dependent activation (TA) in between; binary or real.

    Binary build: TB before each (binary) linear layer. x: (B, N, C) → (B, N, C).
    """

    def __init__(self, dim: int, emb_dim: int, mlp_ratio: int = 4, binary: bool = True):
        super().__init__()
        hidden = dim * mlp_ratio
        self.tb1 = TimeThreshold(dim, emb_dim, binary=binary, channel_last=True)
        self.fc1 = make_linear(dim, hidden, binary)
        self.act = TimeActivation(hidden, emb_dim, channel_last=True)
        self.tb2 = TimeThreshold(hidden, emb_dim, binary=binary, channel_last=True)
        self.fc2 = make_linear(hidden, dim, binary)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(self.tb1(x, emb)), emb)
        return self.fc2(self.tb2(h, emb))


class CrossTransformerBlock(nn.Module):
    """CTB / BCTB: pre-norm cross-attention + feed-forward, both residual.

        x ← x + CrossAttention(LN(x), LN(y), t);   x ← x + FFN(LN(x), t)

    x: query tokens (B, Nq, C); y: key/value tokens (B, Nk, C); emb: (B, E) → (B, Nq, C).
    """

    def __init__(self, dim: int, emb_dim: int, num_heads: int = 4, mlp_ratio: int = 4, binary: bool = True):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, emb_dim, num_heads, binary)
        self.norm_ff = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, emb_dim, mlp_ratio, binary)

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(y), emb)
        return x + self.ffn(self.norm_ff(x), emb)


class XFormer(nn.Module):
    """The two-block X-Former (binary: BX-Former) fusing refiner and segmentor bottleneck features.

        f'_p = CTB_1(query = f_p, key/value = f_d)     (refiner → segmentor)
        f'_d = CTB_2(query = f_d, key/value = f'_p)    (segmentor → refiner, uses the updated f'_p)

    f_d: refiner bottleneck map (B, C, *sp_d); f_p: projected segmentor bottleneck map (B, C, *sp_p)
    (any spatial shapes, square or not, 2D or 3D); emb: (B, E). Returns (f'_d, f'_p) as maps of the
    input shapes.

    Why f'_p does not go back into the segmentor's decoder: at inference the segmentor must produce
    the prior p before y_T ~ B(p) can be drawn and before the refiner runs at all, and the refiner
    needs p as an input; feeding f'_p (which depends on y_t) into the segmentor decoder would make
    p depend on the diffusion state it initialises (a circular dependency), and p would change at
    every DDIM step. So f'_p lives inside the refiner: it is the key/value source of block 2 and is
    concatenated to f'_d at the bottleneck. The segmentor still receives the refiner's knowledge
    through the gradients of λ·L_diff in the alternate-collaborative training (paper Eq. 17).
    """

    def __init__(self, dim: int, emb_dim: int, num_heads: int = 4, mlp_ratio: int = 4, binary: bool = True):
        super().__init__()
        self.to_segmentor = CrossTransformerBlock(dim, emb_dim, num_heads, mlp_ratio, binary)
        self.to_refiner = CrossTransformerBlock(dim, emb_dim, num_heads, mlp_ratio, binary)

    def forward(self, f_d: torch.Tensor, f_p: torch.Tensor, emb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        td, tp = map_to_tokens(f_d), map_to_tokens(f_p)
        tp_new = self.to_segmentor(tp, td, emb)
        td_new = self.to_refiner(td, tp_new, emb)
        return tokens_to_map(td_new, f_d.shape[2:]), tokens_to_map(tp_new, f_p.shape[2:])
