"""Bit-packed XNOR-popcount inference for the binarized refiner's 2D convolutions (issue 15).

The kernels are C (``xnor_kernels.c``), compiled by the package's build into ``nnunetv2_hidiff/_xnor*.so`` (an
optional extension: without a compiler the install still succeeds) and loaded here with ctypes. When that file
is missing (a source checkout that was never built) the same source is compiled once with the system C compiler
into ``$nnUNet_HiDiff_kernel_cache`` (default ``~/.cache/nnunetv2_hidiff``). If neither works, :func:`library`
returns None after one warning and the refiner keeps its simulated (float ±1) path.

:class:`PackedConv2d` is the packed form of one binary conv followed by eval-mode BatchNorm, with the preceding
time threshold (TB) fused into the packing:

    y[b, o, n] = s[o] · (K − 2·popcount(W_bits[o] XOR A_bits[b, n]) + corr[o, n]) + β[o]

with A_bits = 1[x > α(t)] (taps in the zero padding packed as −1), corr[o, n] the sum of sign(W) over the padded
taps of pixel n (0 inside the image, computed once per input size), s = mean|W| · γ/√(σ²+ε) and β the folded BN
bias. The integer part is exact; the
result equals the simulated conv up to float rounding of the scale multiplication.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

__all__ = ["ISA_NAMES", "PackedConv2d", "isa", "library", "set_isa"]

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512-vpopcntdq"}
_SOURCE = Path(__file__).with_name("xnor_kernels.c")
_ABI = 12
_state = {"lib": None, "tried": False}

_P, _I = ctypes.c_void_p, ctypes.c_int


def _declare(lib):
    lib.hidiff_xnor_abi.restype = _I
    lib.hidiff_xnor_isa.restype = _I
    lib.hidiff_xnor_set_isa.restype, lib.hidiff_xnor_set_isa.argtypes = _I, [_I]
    lib.hidiff_pack_weight.restype = None
    lib.hidiff_pack_weight.argtypes = [_P, _I, _I, _I, _I, _I, _I, _P]
    lib.hidiff_xnor_conv.restype = _I
    lib.hidiff_xnor_conv.argtypes = [_P, _I, _I, _P, _I, _I, _I, _I, _I, _I, _P, _P, _I, _P, _P, _P]
    lib.hidiff_pack_signs.restype = None
    lib.hidiff_pack_signs.argtypes = [_P, _P, _I, _I, _I, _I, _I, _I, _P, _I, _I]
    lib.hidiff_pack_columns.restype = None
    lib.hidiff_pack_columns.argtypes = [_P] + [_I] * 17 + [_P]
    lib.hidiff_xnor_openmp.restype = _I
    lib.hidiff_pack_signs_par.restype = None
    lib.hidiff_pack_signs_par.argtypes = [_P, _P, _I, _I, _I, _I, _I, _P, _I, _I]
    lib.hidiff_pack_columns_par.restype = None
    lib.hidiff_pack_columns_par.argtypes = [_P] + [_I] * 16 + [_P]
    lib.hidiff_group_mean.restype = lib.hidiff_group_mean_par.restype = None
    lib.hidiff_group_mean.argtypes = [_P, _P] + [_I] * 10 + [_P]
    lib.hidiff_group_mean_par.argtypes = [_P, _P] + [_I] * 9 + [_P]
    lib.hidiff_xnor_conv_par.restype = _I
    lib.hidiff_xnor_conv_par.argtypes = [_P, _I, _I, _P, _I, _I, _I, _I, _P, _P, _I, _P, _I, _P, ctypes.c_long, _P]
    return lib


class _Epilogue(ctypes.Structure):
    """xnor_kernels.c's hidiff_epilogue: what the kernel applies to the popcounts before it stores them."""
    _fields_ = [("scale", _P), ("bias", _P), ("res", _P), ("gamma", _P), ("zeta", _P), ("slope", _P), ("cr", _I)]


def _built_extension() -> Optional[Path]:
    spec = importlib.util.find_spec("nnunetv2_hidiff._xnor")
    return Path(spec.origin) if spec is not None and spec.origin else None


def _compile_into_cache() -> Path:
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("nnUNet_HiDiff_kernel_cache", Path.home() / ".cache" / "nnunetv2_hidiff"))
    target = cache / f"xnor_{digest}.so"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        compiler = os.environ.get("CC", "cc")
        base = [compiler, "-O3", "-shared", "-fPIC", "-o", str(tmp), str(_SOURCE)]
        for cmd in (base + ["-fopenmp"], base):  # OpenMP when the compiler has it (see xnor_kernels.c)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                break
        if proc.returncode != 0:
            raise OSError(f"'{' '.join(cmd)}' failed: {proc.stderr.strip()[-300:]}")
        os.replace(tmp, target)
    return target


def library():
    """The loaded kernel library, or None (after one warning) when no compiled kernel can be loaded."""
    if _state["tried"]:
        return _state["lib"]
    _state["tried"] = True
    errors = []
    for where in (_built_extension, _compile_into_cache):
        try:
            path = where()
            if path is None:
                continue
            lib = _declare(ctypes.CDLL(str(path)))
            if lib.hidiff_xnor_abi() != _ABI:
                raise OSError(f"{path}: kernel ABI {lib.hidiff_xnor_abi()}, expected {_ABI}")
            _state["lib"] = lib
            return lib
        except (OSError, FileNotFoundError) as e:
            errors.append(str(e))
    warnings.warn("nnunetv2_hidiff: no packed XNOR kernel could be loaded, the binary refiner uses its simulated "
                  f"float path ({'; '.join(errors) or 'no built extension and no C compiler'})", stacklevel=2)
    return None


def isa() -> Optional[str]:
    """The instruction set the kernels use now ('avx512-vpopcntdq', 'avx2', 'scalar'), None without kernels."""
    lib = library()
    return None if lib is None else ISA_NAMES[lib.hidiff_xnor_isa()]


def set_isa(name: Optional[str]) -> Optional[str]:
    """Force a lower instruction set (tests, benchmarks); None restores the best one. Returns the one in use."""
    lib = library()
    if lib is None:
        return None
    level = -1 if name is None else {v: k for k, v in ISA_NAMES.items()}[name]
    return ISA_NAMES[lib.hidiff_xnor_set_isa(level)]


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


_POOL = {}
MIN_WORK_PER_THREAD = 1 << 18  # popcount words per thread below which threads cost more than they save


def _parts(work: int) -> int:
    """How many threads a conv of ``work`` popcount words gets: torch's intra-op thread count, fewer when small."""
    return max(1, min(torch.get_num_threads(), work // MIN_WORK_PER_THREAD))


def _run(parts: int, total: int, fn) -> None:
    """fn(start, stop, part) over ``parts`` contiguous slices of range(total), in parallel when parts > 1."""
    if parts <= 1 or total < 2:
        fn(0, total, 0)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = _POOL.get(parts)
    if pool is None:
        pool = _POOL[parts] = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="hidiff_xnor")
    bounds = [total * i // parts for i in range(parts + 1)]
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], i) for i in range(1, parts)]
    fn(bounds[0], bounds[1], 0)  # the calling thread does the first slice instead of waiting
    for f in futures:
        f.result()


class PackedConv2d:
    """A 2D binary conv + eval BN, packed. ``weight``: the conv's real weight (O, C, kh, kw) (only its signs are
    used); ``scale``/``bias`` (O,): the per-output-channel scale and bias applied to the integer result.
    ``previous``: an earlier PackedConv2d of the same layer whose padding corrections are reused when its signs and
    geometry are the same (they depend on nothing else)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, stride, padding, dilation,
                 previous: Optional["PackedConv2d"] = None):
        lib = library()
        if lib is None:
            raise RuntimeError("no packed XNOR kernel available")
        self.lib = lib
        w = weight.detach().float().contiguous()
        self.out_channels, self.in_channels, self.kh, self.kw = w.shape
        self.taps = self.in_channels * self.kh * self.kw
        self.words = (self.kh * self.kw * ((self.in_channels + 7) // 8) * 8 + 63) // 64
        self.o_pad = (self.out_channels + 7) // 8 * 8
        self.w_t = torch.empty(self.words * self.o_pad, dtype=torch.int64)
        lib.hidiff_pack_weight(_ptr(w), self.out_channels, self.in_channels, self.kh, self.kw, self.words,
                               self.o_pad, _ptr(self.w_t))
        self.sign = torch.where(w > 0, 1.0, -1.0)  # for the border corrections (small: O·C·kh·kw)
        self.scale = scale.detach().float().contiguous()
        self.bias = bias.detach().float().contiguous()
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self._corrections = {}
        if (previous is not None and (previous.stride, previous.padding, previous.dilation) ==
                (self.stride, self.padding, self.dilation) and previous.sign.shape == self.sign.shape
                and torch.equal(previous.sign, self.sign)):
            self._corrections = previous._corrections

    def nbytes(self) -> int:
        """Storage of the packed weights and the float scale and bias."""
        return self.w_t.numel() * 8 + (self.scale.numel() + self.bias.numel()) * 4

    def padding_correction(self, h: int, w: int):
        """The padding correction per input size: (bidx (Ho·Wo,) int32, corr (O, nb) int32). corr = the sum of
        sign(W) over the taps of each output pixel that fall into the zero padding (the kernel packs them as −1,
        the simulated conv multiplies them by 0); only the nb border pixels have one, bidx[n] = their column in
        corr, −1 inside the image."""
        if (h, w) not in self._corrections:
            # the input is all ones inside the image, so the channels can be summed first: a 1-channel conv with
            # the per-tap sums of sign(W) (integers, exact in float32)
            tap_sums = self.sign.sum(dim=1, keepdim=True)
            valid = torch.nn.functional.conv2d(torch.ones(1, 1, h, w), tap_sums, None, self.stride, self.padding,
                                               self.dilation)[0]
            corr = (tap_sums.sum(dim=(1, 2, 3)).view(-1, 1, 1) - valid).flatten(1).round().to(torch.int32)
            taps_inside = torch.nn.functional.conv2d(torch.ones(1, 1, h, w), torch.ones(1, 1, self.kh, self.kw), None,
                                                     self.stride, self.padding, self.dilation)[0, 0].flatten()
            border = taps_inside < self.kh * self.kw  # the pixels with a tap in the padding (only they have a corr)
            bidx = torch.full((corr.shape[1],), -1, dtype=torch.int32)
            where = border.nonzero().flatten()
            bidx[where] = torch.arange(where.numel(), dtype=torch.int32)
            self._corrections[(h, w)] = (bidx, corr[:, where].contiguous())
        return self._corrections[(h, w)]

    def __call__(self, x: torch.Tensor, threshold: Optional[torch.Tensor] = None,
                 residual: Optional[torch.Tensor] = None, activation=None, skip: Optional[torch.Tensor] = None,
                 group_mean: bool = False) -> torch.Tensor:
        """x (B, C, H, W) float32 on the CPU; threshold (B, C) or None (0): bit = x > threshold.

        ``skip`` (B, C2, H2, W2): the conv's input is then the concatenation [x nearest-upsampled to H2 x W2 (integer
        factors), skip] (a decoder block; a fusion block when the sizes are equal), packed from both tensors side by
        side without building it (x needs a multiple of 8 channels; threshold is then (B, C + C2)).
        Fused into the kernel's output pass (what a RefinerBlock does after its conv, same float operations in the
        same order): ``residual`` (B, Cr, Ho, Wo) with O a multiple of Cr, added to output channel o from channel
        o % Cr (the shortcut's channel repeat), or ``group_mean``: the shortcut's channel mean of the (concatenated)
        input, stride 1, input channels a multiple of O; then ``activation`` = (gamma (B, O), zeta (B, O),
        slope (O,)): TA, prelu(v − gamma, slope) + zeta."""
        x = x.detach().float().contiguous()
        b, c1, h1, w1 = x.shape
        if skip is not None:
            skip = skip.detach().float().contiguous()
            _, c2, h, w = skip.shape
            if skip.shape[0] != b or c1 % 8 or h % h1 or w % w1:
                raise ValueError(f"cannot pack the concatenation of {tuple(x.shape)} (upsampled) and "
                                 f"{tuple(skip.shape)}: the first needs a multiple of 8 channels and integer factors")
        else:
            c2, h, w = 0, h1, w1
        c = c1 + c2
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        ho = (h + 2 * ph - dh * (self.kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (self.kw - 1) - 1) // sw + 1
        n = ho * wo
        thr = None if threshold is None else threshold.detach().float().expand(b, c).contiguous()
        thr1, thr2 = (None, None) if thr is None else (thr[:, :c1].contiguous(), thr[:, c1:].contiguous())
        # the epilogue points into tensors that local names keep alive until the kernels return
        ep = _Epilogue(_ptr(self.scale), _ptr(self.bias), None, None, None, None, 1)
        if residual is not None:
            residual = residual.detach().float().contiguous()
            if (residual.dim() != 4 or residual.shape[0] != b or tuple(residual.shape[2:]) != (ho, wo)
                    or self.out_channels % residual.shape[1]):
                raise ValueError(f"residual {tuple(residual.shape)} does not fit the output "
                                 f"({b}, {self.out_channels}, {ho}, {wo})")
            ep.res, ep.cr = _ptr(residual), residual.shape[1]
        elif group_mean:
            if (ho, wo) != (h, w) or c % self.out_channels:
                raise ValueError(f"a channel-mean shortcut needs stride 1 and input channels ({c}) a multiple of the "
                                 f"output channels ({self.out_channels})")
            residual = torch.empty(b, self.out_channels, h, w)
            args = (_ptr(x), None if skip is None else _ptr(skip), b, c1, c2, h1, w1, h, w, c // self.out_channels)
            rows = b * self.out_channels
            if self.lib.hidiff_xnor_openmp():
                self.lib.hidiff_group_mean_par(*args, _parts(rows * h * w * c // self.out_channels // 64),
                                               _ptr(residual))
            else:
                _run(_parts(rows * h * w * c // self.out_channels // 64), rows,
                     lambda r0, r1, _: self.lib.hidiff_group_mean(*args, r0, r1, _ptr(residual)))
            ep.res, ep.cr = _ptr(residual), self.out_channels
        if activation is not None:
            gamma, zeta, slope = (v.detach().float().contiguous() for v in activation)
            gamma, zeta = (v.expand(b, self.out_channels).contiguous() for v in (gamma, zeta))
            slope = slope.expand(self.out_channels).contiguous()
            ep.gamma, ep.zeta, ep.slope = _ptr(gamma), _ptr(zeta), _ptr(slope)
        e = ctypes.addressof(ep)
        cbt = (c + 7) // 8
        signs = torch.empty(b, h, w, cbt, dtype=torch.uint8)
        bits = torch.empty(b * n * self.words, dtype=torch.int64)
        out = torch.empty(b, self.out_channels, ho, wo)
        (bidx, corr), lib = self.padding_correction(h, w), self.lib
        parts = _parts(b * n * self.out_channels * self.words)
        stride = max(64 * self.out_channels, 128 * self.words)
        scratch = torch.empty(parts, stride, dtype=torch.int32)
        openmp = lib.hidiff_xnor_openmp()

        def pack(src, t, hh, ww, dst, off):  # the sign bytes of one source into dst (B, hh, ww, its bytes per pixel)
            cc, t_ptr, cb = src.shape[1], None if t is None else _ptr(t), dst.shape[-1]
            if openmp:  # torch's own OpenMP threads (see xnor_kernels.c)
                lib.hidiff_pack_signs_par(_ptr(src), t_ptr, b, cc, hh, ww, parts, _ptr(dst), cb, off)
            else:  # a thread pool; the C calls release the GIL
                _run(parts, hh * ww, lambda p0, p1, _: lib.hidiff_pack_signs(_ptr(src), t_ptr, b, cc, hh, ww, p0, p1,
                                                                            _ptr(dst), cb, off))

        if (h1, w1) == (h, w):
            pack(x, thr1, h, w, signs, 0)
        else:  # pack x at its own size, then repeat its bytes (8 channels each) over the upsampling factors
            low = torch.empty(b, h1, w1, c1 // 8, dtype=torch.uint8)
            pack(x, thr1, h1, w1, low, 0)
            fy, fx = h // h1, w // w1
            signs.view(b, h1, fy, w1, fx, cbt)[..., :c1 // 8].copy_(low.view(b, h1, 1, w1, 1, c1 // 8).expand(
                b, h1, fy, w1, fx, c1 // 8))
        if skip is not None:
            pack(skip, thr2, h, w, signs, c1 // 8)
        if openmp:
            lib.hidiff_pack_columns_par(_ptr(signs), b, c, h, w, self.kh, self.kw, sh, sw, ph, pw, dh, dw, ho, wo,
                                        self.words, parts, _ptr(bits))
            lib.hidiff_xnor_conv_par(_ptr(self.w_t), self.out_channels, self.o_pad, _ptr(bits), self.words, b, n,
                                     self.taps, _ptr(bidx), _ptr(corr), corr.shape[1], e, parts, _ptr(scratch),
                                     stride, _ptr(out))
            return out
        _run(parts, ho, lambda r0, r1, _: lib.hidiff_pack_columns(_ptr(signs), b, c, h, w, self.kh, self.kw, sh, sw,
                                                                   ph, pw, dh, dw, ho, wo, self.words, r0, r1,
                                                                   _ptr(bits)))
        _run(parts, n, lambda n0, n1, i: lib.hidiff_xnor_conv(
            _ptr(self.w_t), self.out_channels, self.o_pad, _ptr(bits), self.words, b, n, n0, n1, self.taps, _ptr(bidx),
            _ptr(corr), corr.shape[1], e, _ptr(scratch[i]), _ptr(out)))
        return out


if __name__ == "__main__":  # python -m nnunetv2_hidiff.networks.packed: which kernel loads here
    print(f"packed XNOR kernels: {isa() or 'not available'}", file=sys.stderr)
