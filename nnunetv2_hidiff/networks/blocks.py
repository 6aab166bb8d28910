"""Convolutional blocks of the HiDiff refiner, each usable binary or real (same topology).

All blocks take feature maps (B, C, *spatial) with 1-3 spatial dims and the time embedding
e_t (B, E), and are built from :mod:`.binary`'s TB (:class:`TimeThreshold`), binary/real conv and
TA (:class:`TimeActivation`).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .binary import TimeActivation, TimeThreshold, cached, make_conv, time_code

__all__ = ["ChannelResize", "FeatureFusion", "RefinerBlock", "batch_norm", "shortcut_pool"]


def batch_norm(dim: int, channels: int) -> nn.Module:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels)


def shortcut_pool(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Average-pool by ``stride`` (kernel = stride) with ceil mode, matching a 'same' strided conv.

    A 'same'-padded conv of stride s gives ceil(n / s) outputs; ceil-mode pooling gives the same
    count, also for odd sizes (nnU-Net patches are divisible by the strides, but be safe).
    """
    if all(s == 1 for s in stride):
        return x
    if x.dim() == 4 and not torch.is_grad_enabled() and all(n % s == 0 for n, s in zip(x.shape[2:], stride)):
        return _pool2d_by_slices(x, *stride)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim() - 2]
    return pool(x, kernel_size=list(stride), stride=list(stride), ceil_mode=True, count_include_pad=False)


def _pool2d_by_slices(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """avg_pool2d(x, (sh, sw)) for sizes divisible by the stride, as sums of strided slices: 2.6x faster than
    torch's CPU avg_pool2d on one thread (DRIVE 32 × 256², 2.2 against 5.7 ms); equal up to float rounding (the
    window is summed in another order). Inference only (the training path keeps avg_pool2d)."""
    b, c, h, w = x.shape
    rows = x.view(b, c, h // sh, sh, w)
    acc = rows[:, :, :, 0]
    for i in range(1, sh):
        acc = acc + rows[:, :, :, i]
    cols = acc.reshape(b, c, h // sh, w // sw, sw)
    out = cols[..., 0]
    for j in range(1, sw):
        out = out + cols[..., j]
    return out * (1.0 / (sh * sw))


class ChannelResize(nn.Module):
    """Parameter-free channel change for residual shortcuts where possible.

    C_out a multiple of C_in: repeat channels (Bi-Real style widening); C_in a multiple of C_out:
    mean over groups of C_in/C_out consecutive channels (official 'channel mean pooling',
    generalised). Any other ratio falls back to a real 1x1 conv. Keeping shortcuts parameter-free
    matters for the binary build: a real 1x1 conv costs as much as ~7 binary 3x3 convs at 64 BOPs/FLOP.
    x: (B, C_in, *spatial) → (B, C_out, *spatial).
    """

    def __init__(self, dim: int, in_ch: int, out_ch: int):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        if in_ch == out_ch or out_ch % in_ch == 0 or in_ch % out_ch == 0:
            self.proj = None
        else:
            self.proj = make_conv(dim, in_ch, out_ch, kernel_size=1, binary=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        if self.in_ch == self.out_ch:
            return x
        if self.out_ch > self.in_ch:
            return x.repeat(1, self.out_ch // self.in_ch, *([1] * (x.dim() - 2)))
        g = self.in_ch // self.out_ch
        return x.view(x.shape[0], self.out_ch, g, *x.shape[2:]).mean(dim=2)


class RefinerBlock(nn.Module):
    """One residual block: TB → 3x3 conv (binary or real) → BN, + shortcut, → TA.

        out = TA( BN(conv(TB(x, t))) + resize(pool(x)), t )

    With ``binary=True`` TB is sign(x − α(t)) and conv uses sign(W)·mean|W| (Eq. 14-16); with
    ``binary=False`` TB is the shift x − α(t) and conv is an ordinary real conv (the real twin).
    The conv carries the stride of the plan (anisotropic strides allowed); the shortcut average-
    pools by the same stride and resizes channels without parameters when the ratio is integral.

    x: (B, C_in, *spatial) → (B, C_out, *ceil(spatial / stride)); emb: (B, E).
    """

    def __init__(self, dim: int, in_ch: int, out_ch: int, emb_dim: int, stride: Union[int, Sequence[int]] = 1,
                 binary: bool = True, kernel_size: int = 3):
        super().__init__()
        self.stride = [stride] * dim if isinstance(stride, int) else [int(s) for s in stride]
        self.tb = TimeThreshold(in_ch, emb_dim, binary=binary)
        self.conv = make_conv(dim, in_ch, out_ch, kernel_size, self.stride, binary=binary, bias=False)
        self.norm = batch_norm(dim, out_ch)
        self.shortcut = ChannelResize(dim, in_ch, out_ch)
        self.act = TimeActivation(out_ch, emb_dim)

    packed = False  # inference only: bit-packed XNOR-popcount conv (networks/packed.py), set by HiDiffNetwork.packed

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            h = self.norm(self.conv(self.tb(x, emb)))
        elif self.packed and self._packable(x):  # TB fused into the packing, BN into the scale, shortcut + TA
            return self._packed_forward(x, emb)  # into the kernel's output pass
        else:  # inference: BN folded into the conv (one op less per block; exact up to float rounding)
            h = self.conv._conv_forward(self.tb(x, emb), *self.folded_conv_bn())
        return self.act(h + self.shortcut(shortcut_pool(x, self.stride)), emb)

    def merge_forward(self, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """forward(concat[h nearest-upsampled to skip's size, skip]): a decoder or fusion block. With the packed conv
        the concatenation is never built: both tensors are packed side by side, and the shortcut's channel mean is
        read from them in the kernel's output pass."""
        if (self.packed and not (self.training or torch.is_grad_enabled()) and self._packable(skip)
                and self._packable(h) and h.shape[1] % 8 == 0 and all(s == 1 for s in self.stride)
                and all(n % m == 0 for n, m in zip(skip.shape[2:], h.shape[2:]))
                and self.shortcut.proj is None and self.shortcut.in_ch % self.shortcut.out_ch == 0):
            gamma, zeta = time_code(self.act, self.act.shifts, emb).chunk(2, dim=1)
            return self.packed_conv()(h, time_code(self.tb, self.tb.threshold, emb), None,
                                      (gamma, zeta, self.act.slope), skip=skip, group_mean=True)
        if h.shape[2:] != skip.shape[2:]:
            h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
        return self(torch.cat([h, skip], dim=1), emb)

    def _packed_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """forward() at inference with the packed conv, which also adds the shortcut (a channel repeat is left to the
        kernel: output channel o reads channel o % C_in) and applies TA in the pass that stores its output."""
        residual = shortcut_pool(x, self.stride)
        resize = self.shortcut
        if resize.proj is not None or resize.out_ch % resize.in_ch:
            residual = resize(residual)
        gamma, zeta = time_code(self.act, self.act.shifts, emb).chunk(2, dim=1)
        return self.packed_conv()(x, time_code(self.tb, self.tb.threshold, emb), residual,
                                  (gamma, zeta, self.act.slope))

    def _packable(self, x: torch.Tensor) -> bool:
        return (getattr(self.conv, "is_binary", False) and x.dim() == 4 and x.device.type == "cpu"
                and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and self.conv.padding_mode == "zeros" and self.conv.groups == 1)

    def _conv_bn_key(self):
        conv, bn = self.conv, self.norm
        return tuple((v.data_ptr(), v._version, v.dtype, v.device)
                     for v in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var))

    @torch.no_grad()
    def packed_conv(self):
        """The binary conv + eval BN as a :class:`~.packed.PackedConv2d` (signs of W; scale mean|W|·γ/√(σ²+ε);
        bias β − μ·γ/√(σ²+ε)), cached like :meth:`folded_conv_bn`."""
        from .binary import weight_scale
        from .packed import PackedConv2d

        conv = self.conv
        # nnU-Net's predictor loads the state dict again for every case, which bumps the versions: the previous
        # packed conv hands over its per-size padding corrections when its signs are the same
        previous = next(iter(self.__dict__.get("_packed_cache", {}).values()), None)

        def compute():
            bn_scale, bias = self._bn_fold()
            scale = weight_scale(conv.weight).flatten() * bn_scale
            return PackedConv2d(conv.weight, scale, bias, conv.stride, conv.padding, conv.dilation, previous)

        return cached(self, "_packed_cache", self._conv_bn_key(), compute, max_entries=1)

    @torch.no_grad()
    def folded_conv_bn(self):
        """(weight, bias) of conv followed by eval-mode BN: W·γ/√(σ²+ε), β − μ·γ/√(σ²+ε). For a binary conv the
        fold only changes the per-output-channel scale of sign(W), so the layer stays sign times a scale. Cached
        until the conv weight or a BN tensor changes (optimizer steps, load_state_dict, running-stat updates)."""
        conv = self.conv

        def compute():
            w = conv.binary_weight() if getattr(conv, "is_binary", False) else conv.weight
            scale, bias = self._bn_fold()
            return w * scale.view(-1, *([1] * (w.dim() - 1))), bias

        return cached(self, "_folded_cache", self._conv_bn_key(), compute, max_entries=1)

    def _bn_fold(self):
        """Eval-mode BN after the conv as a per-output-channel (scale, bias): γ/√(σ²+ε), β − μ·scale (+ conv bias)."""
        conv, bn = self.conv, self.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return scale, bias


class FeatureFusion(nn.Module):
    """Inject a segmentor feature map into the refiner at the same resolution (official ConcatLayer idea).

        f = BN(Conv1x1_real(seg_feat))            (project segmentor channels to the refiner's)
        out = RefinerBlock(concat[h, f])          (binary or real 3x3, 2C → C, mean-pool shortcut)

    Unlike the official ConcatLayer this uses a 1x1 real projection instead of a full real ResBlock
    with GroupNorm-32 (so any segmentor width works, and the real cost stays small), and the
    projection can be computed separately (:meth:`project`) so that the X-Former can update the
    projected segmentor tokens before they are concatenated.

    h: (B, C, *sp); seg_feat: (B, C_seg, *sp) (same spatial size); emb: (B, E) → (B, C, *sp).
    """

    def __init__(self, dim: int, channels: int, seg_channels: int, emb_dim: int, binary: bool = True):
        super().__init__()
        self.proj = nn.Sequential(make_conv(dim, seg_channels, channels, kernel_size=1, binary=False),
                                  batch_norm(dim, channels))
        self.block = RefinerBlock(dim, 2 * channels, channels, emb_dim, stride=1, binary=binary)

    def project(self, seg_feat: torch.Tensor) -> torch.Tensor:
        """(B, C_seg, *sp) → (B, C, *sp)."""
        return self.proj(seg_feat)

    def merge(self, h: torch.Tensor, projected: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if projected.shape[2:] != h.shape[2:]:
            raise ValueError(f"segmentor feature {tuple(projected.shape[2:])} and refiner feature "
                             f"{tuple(h.shape[2:])} must have the same spatial size")
        return self.block.merge_forward(h, projected, emb)

    def forward(self, h: torch.Tensor, seg_feat: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.merge(h, self.project(seg_feat), emb)
