"""Binary building blocks of the HiDiff refiner (paper Sec. II-B.2) and their real-valued twins.

Conventions:
- feature maps are (B, C, *spatial) with 1, 2 or 3 spatial dims; token tensors are (B, N, C);
- ``emb`` is the time embedding e_t (B, E) produced by :class:`TimestepEmbedding`;
- "binary" modules compute in ±1 in the forward pass and use surrogate gradients backwards:
  activations: sign with the ApproxSign derivative 2 − 2|x| on |x| < 1 (Bi-Real Net);
  weights: sign(W)·mean|W| per output channel (XNOR-Net, scale detached) with a clipped
  straight-through estimator (gradient passed where |W| ≤ 1).
- every binary module has a real twin with the same parameters and the same topology, selected by
  ``binary=False``, so that one refiner definition gives both the binary and the real build.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ApproxSign", "BinaryConv2d", "BinaryConv3d", "BinaryLinear", "TimeThreshold", "TimeActivation",
    "TimestepEmbedding", "binarize_activation", "binarize_weight", "binary_sign", "conv_nd", "make_conv",
    "make_linear", "pack_binary_weights", "pack_sign_bits", "sinusoidal_embedding", "unpack_sign_weight",
]


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x > 0, −1 where x ≤ 0 (Eq. 15 with the threshold already subtracted); never 0."""
    return (x > 0).to(x.dtype).mul_(2).sub_(1)  # ~10x faster on CPU than torch.where with filled tensors


class ApproxSign(torch.autograd.Function):
    """sign forward; ApproxSign (Bi-Real Net) backward: d/dx ≈ 2 − 2|x| for |x| < 1, else 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


class _BinarizeWeight(torch.autograd.Function):
    """W_b = α·sign(W), α = mean|W| over all dims but the first (detached); clipped STE backward."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return binary_sign(w) * weight_scale(w)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad_output * (w.abs() <= 1).to(grad_output.dtype)


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale mean|W| of shape (C_out, 1, ..., 1), detached from the graph."""
    return w.detach().abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """sign(W) · mean|W| per output channel, with the clipped straight-through gradient."""
    return _BinarizeWeight.apply(w)


class _CachedBinaryWeight:
    """``binary_weight()``: sign(W)·mean|W| of ``self.weight``; without autograd (prediction, validation) the
    result is cached until the weight changes (its version counter moves on every in-place update:
    optimizer steps, load_state_dict), so the refiner's T steps per patch do not re-binarize every layer."""

    def binary_weight(self) -> torch.Tensor:
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return binarize_weight(w)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self.__dict__.get("_binary_weight_key") != key:
            self.__dict__["_binary_weight_cache"] = (binary_sign(w) * weight_scale(w)).detach()
            self.__dict__["_binary_weight_key"] = key
        return self.__dict__["_binary_weight_cache"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also load a 1-bit checkpoint (:func:`pack_binary_weights`): ``weight_bits`` + ``weight_scale`` become
        the weight ±mean|W|, which binarizes to exactly the stored sign(W)·mean|W|."""
        if prefix + "weight_bits" in state_dict:
            bits = state_dict.pop(prefix + "weight_bits")
            scale = state_dict.pop(prefix + "weight_scale", None)
            state_dict[prefix + "weight"] = unpack_sign_weight(bits, scale, self.weight.shape, prefix + "weight")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def pack_sign_bits(w: torch.Tensor) -> torch.Tensor:
    """1[W > 0] (the sign convention of :func:`binary_sign`), flattened, 8 weights a byte (uint8, MSB first)."""
    return torch.from_numpy(np.packbits((w.detach() > 0).cpu().numpy().reshape(-1)))


def unpack_sign_weight(bits: torch.Tensor, scale: Optional[torch.Tensor], shape, name: str = "weight") -> torch.Tensor:
    """±scale per output channel, float32, of ``shape``, from :func:`pack_sign_bits` and :func:`weight_scale`."""
    n = math.prod(shape)
    if bits.dtype != torch.uint8 or bits.numel() != (n + 7) // 8 or scale is None or scale.numel() != shape[0]:
        raise RuntimeError(f"{name}: a 1-bit weight of shape {tuple(shape)} needs {(n + 7) // 8} uint8 bytes and "
                           f"{shape[0]} scales, got {bits.numel()} {bits.dtype} bytes and "
                           f"{None if scale is None else scale.numel()} scales")
    signs = torch.from_numpy(np.unpackbits(bits.cpu().numpy(), count=n).astype(np.float32)).mul_(2).sub_(1)
    return signs.view(shape) * scale.float().cpu().view(-1, *([1] * (len(shape) - 1)))


def pack_binary_weights(network: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` of ``network`` with each binary layer's weight (modules with ``is_binary``) stored as 1 bit per
    weight (``<name>.weight_bits``) plus its float32 scale mean|W| per output channel (``<name>.weight_scale``).
    Every binary layer loads it back (``load_state_dict``, strict) into the same sign(W)·mean|W|; training state
    is lost (W itself is not kept), so this is for prediction only."""
    out = dict(state_dict)
    for name, m in network.named_modules():
        if getattr(m, "is_binary", False) and f"{name}.weight" in out:
            w = out.pop(f"{name}.weight").float()
            out[f"{name}.weight_bits"] = pack_sign_bits(w)
            out[f"{name}.weight_scale"] = weight_scale(w).reshape(-1).clone()
    return out


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    """sign(x) ∈ {−1, +1} with the ApproxSign gradient."""
    return ApproxSign.apply(x)


def conv_nd(dim: int):
    """F.conv1d / conv2d / conv3d for ``dim`` spatial dimensions."""
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dim]


def _conv_cls(dim: int):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]


class _BinaryConvMixin(_CachedBinaryWeight):
    """Forward of a binary convolution: conv(x, sign(W)·mean|W|) + bias.

    The input is expected to be binarized already (by a :class:`TimeThreshold`), so that the product
    is the XNOR/popcount of Eq. 14 times a per-output-channel real scale.
    """

    is_binary = True

    def _init_binary(self):
        # Symmetric init (the official code draws all-positive weights, i.e. every kernel starts as
        # all +1: pitfall 10). PyTorch's default uniform(±1/sqrt(fan_in)) is symmetric and keeps the
        # weights far inside the |W| ≤ 1 STE window; the bias starts at 0 (official: torch.empty).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class BinaryConv2d(_BinaryConvMixin, nn.Conv2d):
    """2D binary convolution; x: (B, C_in, H, W) in ±1 → (B, C_out, H', W')."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_binary()


class BinaryConv3d(_BinaryConvMixin, nn.Conv3d):
    """3D binary convolution; x: (B, C_in, D, H, W) in ±1 → (B, C_out, D', H', W')."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_binary()


class BinaryConv1d(_BinaryConvMixin, nn.Conv1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_binary()


class BinaryLinear(_CachedBinaryWeight, nn.Linear):
    """Binary linear layer: x (…, C_in) in ±1 → x @ (sign(W)·mean|W|)ᵀ + b, (…, C_out).

    Used for the Q/K/V, output and FFN projections of the BX-Former. Unlike the official
    QuantizeLinear the weight row is not mean-centred before the sign (same estimator as the convs).
    """

    is_binary = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.bias)


def make_conv(dim: int, in_ch: int, out_ch: int, kernel_size: Union[int, Sequence[int]] = 3,
              stride: Union[int, Sequence[int]] = 1, binary: bool = False, bias: bool = False) -> nn.Module:
    """A 'same'-padded convolution (odd kernel), binary or real."""
    ks = [kernel_size] * dim if isinstance(kernel_size, int) else list(kernel_size)
    padding = [k // 2 for k in ks]
    stride = [stride] * dim if isinstance(stride, int) else list(stride)
    if binary:
        cls = {1: BinaryConv1d, 2: BinaryConv2d, 3: BinaryConv3d}[dim]
    else:
        cls = _conv_cls(dim)
    return cls(in_ch, out_ch, ks, stride=stride, padding=padding, bias=bias)


def make_linear(in_features: int, out_features: int, binary: bool = False, bias: bool = True) -> nn.Module:
    return BinaryLinear(in_features, out_features, bias) if binary else nn.Linear(in_features, out_features, bias)


def _channel_view(v: torch.Tensor, x: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """Broadcast a per-sample, per-channel tensor v (B, C) against x ((B, C, *sp) or (B, N, C))."""
    if channel_last:
        return v.view(v.shape[0], *([1] * (x.dim() - 2)), v.shape[1])
    return v.view(*v.shape, *([1] * (x.dim() - 2)))


_TIME_KEYS = itertools.count()


def mark_cached_embedding(emb: torch.Tensor) -> torch.Tensor:
    """Tag a time embedding that a refiner keeps for reuse (see HiDiffRefiner.time_embedding) with a key that no
    other tensor will ever carry, so that TB/TA layers may cache what they compute from it."""
    emb._hidiff_time_key = next(_TIME_KEYS)
    return emb


def cached(owner: nn.Module, name: str, key, compute, max_entries: int = 64):
    """``compute()`` memoised in ``owner``'s own dict (not a buffer: not saved, not moved), at most ``max_entries``
    entries (1 for values keyed on weight versions: an older version never comes back)."""
    cache = owner.__dict__.setdefault(name, {})
    value = cache.get(key)
    if value is None:
        if len(cache) >= max_entries:
            cache.clear()
        value = cache[key] = compute()
    return value


def time_code(module: nn.Module, linear: nn.Linear, emb: torch.Tensor) -> torch.Tensor:
    """linear(SiLU(e_t)) of a TB/TA layer. At inference (eval mode, no autograd) and for a tagged embedding it is
    computed once per embedding and weights (the refiner's T steps per patch reuse the same few values of t)."""
    key = getattr(emb, "_hidiff_time_key", None)
    if key is None or module.training or torch.is_grad_enabled():
        return linear(F.silu(emb))
    key = (key, linear.weight.data_ptr(), linear.weight._version, linear.bias._version)
    return cached(module, "_time_code_cache", key, lambda: linear(F.silu(emb)))


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    lin = nn.Linear(in_features, out_features)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class TimeThreshold(nn.Module):
    """TB, the time-dependent binarization of Eq. 15: u_b = +1 if u > α(t) else −1, per channel.

    α(t) = Linear(SiLU(e_t)) (zero-initialized, so it starts as plain sign). The real twin
    (``binary=False``) returns the shifted input u − α(t) without the sign.

    x: (B, C, *spatial) or, with ``channel_last=True``, tokens (B, N, C); emb: (B, E). Same shape out.
    """

    def __init__(self, channels: int, emb_dim: int, binary: bool = True, channel_last: bool = False):
        super().__init__()
        self.binary = binary
        self.channel_last = channel_last
        self.threshold = _zero_linear(emb_dim, channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        alpha = _channel_view(time_code(self, self.threshold, emb), x, self.channel_last)
        if self.binary and not torch.is_grad_enabled():  # inference: x > α(t) ⟺ x − α(t) > 0, exactly
            return torch.gt(x, alpha).to(torch.result_type(x, alpha)).mul_(2).sub_(1)
        u = x - alpha
        return binarize_activation(u) if self.binary else u


class TimeActivation(nn.Module):
    """TA, the time-dependent activation of Eq. 16 (an RPReLU whose shifts depend on t):

        TA(u) = u − γ(t) + ζ(t)          if u > γ(t)
                β·(u − γ(t)) + ζ(t)      otherwise

    γ(t), ζ(t) = Linear(SiLU(e_t)) (one zero-initialized layer giving both), β a learnable
    per-channel slope (init 0.25). Real-valued in both builds.
    x: (B, C, *spatial) or tokens (B, N, C) with ``channel_last=True``; emb: (B, E).
    """

    def __init__(self, channels: int, emb_dim: int, init_slope: float = 0.25, channel_last: bool = False):
        super().__init__()
        self.channel_last = channel_last
        self.shifts = _zero_linear(emb_dim, 2 * channels)
        self.slope = nn.Parameter(torch.full((channels,), float(init_slope)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, zeta = time_code(self, self.shifts, emb).chunk(2, dim=1)
        z = x - _channel_view(gamma, x, self.channel_last)
        if self.channel_last:
            act = torch.where(z > 0, z, self.slope * z)
        else:
            act = F.prelu(z, self.slope)  # the same piecewise-linear map, fused (channel dim 1)
        return act + _channel_view(zeta, x, self.channel_last)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of integer time steps t (B,) → (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """e_t = MLP(sinusoidal(t)): int64 (B,) with values in 1..T → (B, emb_dim), real-valued.

    sinusoidal(t) has ``base_dim`` features, the hidden layer ``hidden_dim`` (default 4·base_dim, as
    the official 4C). ``emb_dim`` is the width of the code that every TB/TA layer reads; it can be
    small (the refiner uses 16): t takes only T distinct values, so a per-channel function of t is
    a C×T table and a linear layer on a code of dim ≥ T can represent any such table, while each
    TB/TA layer costs emb_dim·C real parameters (with 128 they would outweigh the binary weights).
    """

    def __init__(self, base_dim: int, emb_dim: int, hidden_dim: Optional[int] = None):
        super().__init__()
        self.base_dim = base_dim
        hidden_dim = hidden_dim or 4 * base_dim
        self.mlp = nn.Sequential(nn.Linear(base_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.base_dim))
