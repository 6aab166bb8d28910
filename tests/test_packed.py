"""Bit-packed XNOR-popcount inference (networks/packed.py, xnor_kernels.c) against the simulated ±1 float path."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_hidiff.networks import packed
from nnunetv2_hidiff.networks.blocks import RefinerBlock

CPU_ISAS = [name for level, name in packed.ISA_NAMES.items()
            if packed.library() is not None and level <= packed.library().hidiff_xnor_best_isa()]


def test_a_kernel_loads_here():
    """CI builds the extension (setup.py); without it the tests below would only check the fallback."""
    assert packed.library() is not None and packed.isa() in packed.ISA_NAMES.values()
    assert "scalar" in CPU_ISAS


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    assert packed.set_isa(request.param) == request.param
    yield request.param
    packed.set_isa(None)


@pytest.mark.parametrize("b, c, o, h, w, k, stride, pad", [
    (2, 8, 16, 12, 9, 3, 1, 1),      # a multiple of 8 channels, non-square
    (1, 13, 7, 9, 11, 3, 2, 1),      # odd channels, stride 2, odd sizes
    (2, 70, 65, 6, 5, 3, 1, 1),      # more than 64 channels: several words per tap
    (1, 3, 5, 6, 7, 1, 1, 0),        # 1x1, no padding
    (1, 300, 9, 5, 4, 3, 1, 1),      # more than 31 words: the AVX2 byte accumulator is flushed
    (3, 16, 8, 4, 3, 3, (2, 1), 1),  # anisotropic stride
    (2, 40, 33, 20, 17, 3, 1, 1),    # > 256 pixels (packing blocks), 32 + 1 output channels (AVX-512 blocks)
])
def test_packed_conv_equals_the_simulated_conv(isa, b, c, o, h, w, k, stride, pad):
    g = torch.Generator().manual_seed(c * o + h)
    weight = torch.randn(o, c, k, k, generator=g)
    weight[0, 0, 0, 0] = 0.0  # sign(0) = −1 on both paths
    x = torch.randn(b, c, h, w, generator=g)
    thr = torch.randn(b, c, generator=g) * 0.3
    x[0, 0, 0, 0] = thr[0, 0]  # exactly at the threshold: −1 on both paths
    scale, bias = torch.randn(o, generator=g), torch.randn(o, generator=g)  # negative scales too (BN γ < 0)
    stride = (stride, stride) if isinstance(stride, int) else stride
    sim_in = torch.where(x > thr[:, :, None, None], 1.0, -1.0)
    sim_w = torch.where(weight > 0, 1.0, -1.0)
    expected = F.conv2d(sim_in, sim_w, None, stride, pad) * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    out = packed.PackedConv2d(weight, scale, bias, stride, (pad, pad), (1, 1))(x, thr)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cr", [5, 10])  # residual channels: a channel repeat (o % cr) and the identity
def test_packed_conv_fuses_the_residual_and_ta(isa, cr):
    g = torch.Generator().manual_seed(cr)
    b, c, o, h, w = 2, 9, 10, 13, 70  # > 64 columns: full blocks (vector epilogue) and a partial one
    weight, x = torch.randn(o, c, 3, 3, generator=g), torch.randn(b, c, h, w, generator=g)
    scale, bias = torch.randn(o, generator=g), torch.randn(o, generator=g)
    residual = torch.randn(b, cr, h, w, generator=g)
    gamma, zeta, slope = torch.randn(b, o, generator=g), torch.randn(b, o, generator=g), torch.randn(o, generator=g)
    conv = packed.PackedConv2d(weight, scale, bias, (1, 1), (1, 1), (1, 1))
    plain = conv(x)
    v = plain + residual.repeat(1, o // cr, 1, 1) - gamma[:, :, None, None]  # what RefinerBlock's torch ops do
    expected = F.prelu(v, slope) + zeta[:, :, None, None]
    torch.testing.assert_close(conv(x, None, residual, (gamma, zeta, slope)), expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(conv(x, None, residual), plain + residual.repeat(1, o // cr, 1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        conv(x, None, torch.randn(b, 3, h, w))


@pytest.mark.parametrize("c1, c2, o, low, size", [
    (8, 8, 8, (9, 70), (9, 70)),    # a fusion block: same size, pairs (> 64 columns: the vector epilogue)
    (16, 8, 8, (5, 35), (10, 70)),  # a decoder block: ×2 upsampling, groups of 3 straddling the two sources
    (8, 7, 5, (6, 9), (6, 18)),     # odd second source (its last byte half used), anisotropic ×(1, 2)
])
def test_packed_conv_of_a_concatenation_equals_the_concatenated_conv(isa, c1, c2, o, low, size):
    g = torch.Generator().manual_seed(c1 + c2 + o)
    b = 2
    weight = torch.randn(o, c1 + c2, 3, 3, generator=g)
    x, skip = torch.randn(b, c1, *low, generator=g), torch.randn(b, c2, *size, generator=g)
    thr = torch.randn(b, c1 + c2, generator=g) * 0.3
    scale, bias = torch.randn(o, generator=g), torch.randn(o, generator=g)
    gamma, zeta, slope = torch.randn(b, o, generator=g), torch.randn(b, o, generator=g), torch.randn(o, generator=g)
    cat = torch.cat([F.interpolate(x, size=size, mode="nearest"), skip], dim=1)
    conv = packed.PackedConv2d(weight, scale, bias, (1, 1), (1, 1), (1, 1))
    residual = cat.view(b, o, (c1 + c2) // o, *size).mean(dim=2)  # what ChannelResize does
    v = conv(cat, thr) + residual - gamma[:, :, None, None]
    expected = F.prelu(v, slope) + zeta[:, :, None, None]
    fused = conv(x, thr, None, (gamma, zeta, slope), skip=skip, group_mean=True)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x, thr, skip=skip), conv(cat, thr))  # the packing alone is exact
    with pytest.raises(ValueError, match="multiple of 8 channels"):
        conv(x[:, :c1 - 1], thr, skip=torch.randn(b, c2 + 1, *size))


@pytest.mark.parametrize("c_low, c_skip, c_out, low, size", [
    (16, 8, 8, (5, 7), (10, 14)),   # decoder block (3C → C, ×2)
    (8, 8, 8, (9, 70), (9, 70)),    # fusion block (2C → C)
    (6, 6, 6, (4, 5), (8, 10)),     # first source not a multiple of 8 channels: the concatenation is built
])
def test_refiner_block_merge_forward_packed_equals_simulated(c_low, c_skip, c_out, low, size):
    torch.manual_seed(1)
    emb = torch.randn(2, 4)
    h, skip = torch.randn(2, c_low, *low), torch.randn(2, c_skip, *size)
    blk = RefinerBlock(2, c_low + c_skip, c_out, 4, binary=True)
    torch.nn.init.normal_(blk.tb.threshold.weight)
    torch.nn.init.normal_(blk.act.shifts.weight)
    torch.nn.init.normal_(blk.act.slope)
    blk.norm.running_mean.normal_()
    blk.norm.running_var.uniform_(0.5, 2)
    blk.eval()
    with torch.no_grad():
        reference = blk(torch.cat([F.interpolate(h, size=size, mode="nearest"), skip], dim=1), emb)
        blk.packed = False
        simulated = blk.merge_forward(h, skip, emb)
        blk.packed = True
        calls, conv = [], blk.packed_conv()
        blk.packed_conv = lambda: lambda *a, **k: (calls.append("skip" in k), conv(*a, **k))[1]
        fast = blk.merge_forward(h, skip, emb)
    torch.testing.assert_close(simulated, reference)
    torch.testing.assert_close(fast, simulated, rtol=1e-5, atol=1e-5)
    assert calls == [c_low % 8 == 0]  # packed from both tensors, or from their concatenation


@pytest.mark.parametrize("c_in, c_out, stride, size", [
    (12, 24, (2, 1), (10, 7)),  # channel repeat, divisible stride (the sliced pooling)
    (24, 12, (1, 1), (9, 70)),  # channel mean (left to torch), > 64 columns
    (12, 12, (2, 2), (9, 7)),   # identity, odd sizes: torch's ceil-mode pooling
])
def test_refiner_block_packed_equals_simulated_and_follows_updates(c_in, c_out, stride, size):
    torch.manual_seed(0)
    emb = torch.randn(2, 4)
    x = torch.randn(2, c_in, *size)
    blk = RefinerBlock(2, c_in, c_out, 4, stride=stride, binary=True)
    torch.nn.init.normal_(blk.tb.threshold.weight)
    torch.nn.init.normal_(blk.act.shifts.weight)  # TA with non-zero γ(t), ζ(t)
    torch.nn.init.normal_(blk.act.slope)
    blk.norm.running_mean.normal_()
    blk.norm.running_var.uniform_(0.5, 2)
    torch.nn.init.normal_(blk.norm.weight)
    blk.eval()
    state = {k: v.clone() for k, v in blk.state_dict().items()}
    corrections = []
    for update in (lambda: None, lambda: blk.conv.weight.mul_(-1), lambda: blk.norm.running_mean.add_(1),
                   lambda: blk.load_state_dict(state), lambda: blk.load_state_dict(state)):
        with torch.no_grad():
            update()
            blk.packed = False
            simulated = blk(x, emb)
            blk.packed = True
            fast = blk(x, emb)
        torch.testing.assert_close(fast, simulated, rtol=1e-5, atol=1e-5)
        assert len(blk.__dict__["_packed_cache"]) == 1  # stale weight versions are dropped
        corrections.append(blk.packed_conv()._corrections)
    # nnU-Net's predictor reloads the same weights for every case: the padding corrections are handed over, and
    # recomputed whenever the signs change (the sign flip, and the reload after it)
    assert corrections[2] is corrections[1] and corrections[4] is corrections[3]
    assert corrections[1] is not corrections[0] and corrections[3] is not corrections[2]


def test_network_switch_and_environment_variable(tiny_hidiff_network):
    from nnunetv2_hidiff.training.inference_settings import apply_inference_settings

    net = tiny_hidiff_network.eval()
    assert not net.packed
    apply_inference_settings(net, {"nnUNet_HiDiff_packed": "1"})
    assert net.packed
    x = torch.randn(2, 1, 56, 40, generator=torch.Generator().manual_seed(3))
    net.refine, net.steps = True, 1
    with torch.no_grad():
        fast = net(x)
        net.packed = False
        simulated = net(x)
    torch.testing.assert_close(fast, simulated, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="nnUNet_HiDiff_packed"):
        apply_inference_settings(net, {"nnUNet_HiDiff_packed": "yes"})


@pytest.fixture
def tiny_hidiff_network():
    """The 901 plan's network with a width-8 binary refiner (non-trivial BN statistics)."""
    from pathlib import Path

    from nnunetv2_hidiff.networks.factory import build_hidiff_network_from_plans

    torch.manual_seed(0)
    plans = Path(__file__).parent / "data" / "plans" / "Dataset901_Hippocampus_nnUNetPlans.json"
    net = build_hidiff_network_from_plans(str(plans), "2d", 1, 3, enable_deep_supervision=False, binary=True,
                                          refiner_width=8, refiner_max_width=16, prior_residual=False,
                                          packed_inference=False)
    with torch.no_grad():
        for m in net.refiner.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.normal_(0, 0.3)
    return net


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_without_the_built_extension_the_source_is_compiled_once_into_the_cache(tmp_path):
    code = """
        from nnunetv2_hidiff.networks import packed
        packed._built_extension = lambda: None
        print(packed.isa())
    """
    proc = _python(code, {"nnUNet_HiDiff_kernel_cache": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in packed.ISA_NAMES.values()
    assert len(list(tmp_path.glob("xnor_*.so"))) == 1


def test_without_any_kernel_one_warning_and_the_simulated_path(tmp_path):
    code = """
        import warnings
        from nnunetv2_hidiff.networks import packed
        packed._built_extension = lambda: None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert packed.library() is None and packed.library() is None and packed.isa() is None
        print(len(caught), caught[0].message)
    """
    proc = _python(code, {"nnUNet_HiDiff_kernel_cache": str(tmp_path), "CC": "/nonexistent/cc"})
    assert proc.returncode == 0, proc.stderr
    count, message = proc.stdout.split(" ", 1)
    assert count == "1" and "simulated" in message


@pytest.mark.parametrize("openmp", [True, False])
def test_threaded_packing_and_popcount_equal_one_thread(monkeypatch, openmp):
    """The stages split over threads (pixel, row and column slices) give the single-thread result: with OpenMP
    (torch's own pool, when the kernels were built with it) and with the thread-pool fallback."""
    if openmp and not packed.library().hidiff_xnor_openmp():
        pytest.fail("the kernels were built without OpenMP here (setup.py and packed.py build with -fopenmp)")
    if not openmp:
        monkeypatch.setattr(packed.library(), "hidiff_xnor_openmp", lambda: 0)
    g = torch.Generator().manual_seed(5)
    weight, x = torch.randn(24, 20, 3, 3, generator=g), torch.randn(3, 20, 23, 17, generator=g)
    thr, scale, bias = torch.randn(3, 20, generator=g), torch.rand(24, generator=g), torch.randn(24, generator=g)
    conv = packed.PackedConv2d(weight, scale, bias, (2, 1), (1, 1), (1, 1))
    single = conv(x, thr)
    monkeypatch.setattr(packed, "MIN_WORK_PER_THREAD", 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert packed._parts(10 ** 6) == 3
        torch.testing.assert_close(conv(x, thr), single, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)
