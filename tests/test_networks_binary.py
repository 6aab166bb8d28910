"""Binary building blocks checked against explicit oracles (±1 convolutions, Eq. 15/16 by hand)."""
import math

import torch
import torch.nn.functional as F

from nnunetv2_hidiff.networks.binary import (ApproxSign, BinaryConv2d, BinaryConv3d, BinaryLinear,
                                             TimeActivation, TimeThreshold, make_conv)
from nnunetv2_hidiff.networks.blocks import ChannelResize, RefinerBlock
from nnunetv2_hidiff.networks.xformer import CrossAttention, XFormer, map_to_tokens, tokens_to_map


def _pm1(shape, gen):
    return torch.randint(0, 2, shape, generator=gen).float() * 2 - 1


def test_binary_conv2d_equals_pm1_conv_times_scale():
    g = torch.Generator().manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, stride=(2, 1), padding=1, bias=True)
    with torch.no_grad():
        conv.bias.normal_(generator=g)
    x = _pm1((2, 5, 9, 6), g)
    w = conv.weight.detach()
    scale = w.abs().mean(dim=(1, 2, 3))  # per output channel
    expected = F.conv2d(x, torch.sign(w), stride=(2, 1), padding=1) * scale.view(1, -1, 1, 1) \
        + conv.bias.detach().view(1, -1, 1, 1)
    out = conv(x)
    assert out.shape == (2, 7, 5, 6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_binary_conv3d_equals_pm1_conv_times_scale():
    g = torch.Generator().manual_seed(1)
    conv = BinaryConv3d(3, 4, 3, padding=1, bias=False)
    x = _pm1((2, 3, 4, 5, 6), g)
    w = conv.weight.detach()
    expected = F.conv3d(x, torch.sign(w), padding=1) * w.abs().mean(dim=(1, 2, 3, 4)).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_time_threshold_then_binary_conv_matches_eq15_oracle():
    """TB with a non-zero time threshold: sign(u − α(t)) with u ≤ α → −1 (Eq. 15), then ±1 conv."""
    g = torch.Generator().manual_seed(2)
    tb = TimeThreshold(4, 6, binary=True)
    with torch.no_grad():
        tb.threshold.weight.normal_(generator=g)
        tb.threshold.bias.normal_(generator=g)
    conv = make_conv(2, 4, 3, 3, binary=True)
    x = torch.randn(2, 4, 5, 5, generator=g)
    emb = torch.randn(2, 6, generator=g)
    alpha = F.silu(emb) @ tb.threshold.weight.T + tb.threshold.bias  # (B, C)
    ub = torch.where(x > alpha[:, :, None, None], 1.0, -1.0)
    assert set(ub.unique().tolist()) == {-1.0, 1.0}
    w = conv.weight.detach()
    expected = F.conv2d(ub, torch.sign(w), padding=1) * w.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    torch.testing.assert_close(conv(tb(x, emb)), expected, rtol=1e-5, atol=1e-5)


def test_binary_linear_equals_pm1_matmul_times_scale():
    g = torch.Generator().manual_seed(3)
    lin = BinaryLinear(6, 5)
    with torch.no_grad():
        lin.bias.normal_(generator=g)
    x = _pm1((3, 4, 6), g)
    w = lin.weight.detach()
    expected = (x @ torch.sign(w).T) * w.abs().mean(dim=1) + lin.bias.detach()
    torch.testing.assert_close(lin(x), expected, rtol=1e-5, atol=1e-5)


def test_approx_sign_gradient():
    x = torch.tensor([-1.5, -0.75, -0.25, 0.0, 0.5, 0.9, 1.0, 2.0], requires_grad=True)
    y = ApproxSign.apply(x)
    assert y.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1]  # 0 ≤ threshold → −1
    y.sum().backward()
    expected = [0.0, 0.5, 1.5, 2.0, 1.0, 0.2, 0.0, 0.0]  # 2 − 2|x| on |x| < 1
    torch.testing.assert_close(x.grad, torch.tensor(expected))


def test_binary_weight_gradient_is_clipped_straight_through():
    g = torch.Generator().manual_seed(4)
    conv = BinaryConv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[0, 0] = 1.7  # outside the STE window
        conv.weight[1, 2] = -3.0
    x = _pm1((2, 3, 5, 5), g)
    gout = torch.randn(2, 2, 5, 5, generator=g)
    conv(x).backward(gout)
    w = conv.weight.detach()
    wb = (torch.sign(w) * w.abs().mean(dim=(1, 2, 3), keepdim=True)).requires_grad_()
    F.conv2d(x, wb, padding=1).backward(gout)
    expected = wb.grad * (w.abs() <= 1)
    torch.testing.assert_close(conv.weight.grad, expected)
    assert conv.weight.grad[0, 0].abs().sum() == 0 and conv.weight.grad[0, 1].abs().sum() > 0


def test_binary_conv_init_is_symmetric_with_zero_bias():
    conv = BinaryConv2d(64, 64, 3, padding=1, bias=True)
    frac_pos = (conv.weight > 0).float().mean().item()
    assert 0.4 < frac_pos < 0.6
    assert conv.bias.abs().sum() == 0
    assert conv.weight.abs().max() <= 1  # inside the STE window


def test_time_activation_matches_eq16():
    g = torch.Generator().manual_seed(5)
    ta = TimeActivation(3, 4)
    with torch.no_grad():
        ta.shifts.weight.normal_(generator=g)
        ta.shifts.bias.normal_(generator=g)
        ta.slope.copy_(torch.tensor([0.25, -0.5, 2.0]))
    u = torch.randn(2, 3, 4, 4, generator=g)
    emb = torch.randn(2, 4, generator=g)
    shifts = F.silu(emb) @ ta.shifts.weight.T + ta.shifts.bias
    gamma, zeta = shifts[:, :3, None, None], shifts[:, 3:, None, None]
    beta = ta.slope.detach()[None, :, None, None]
    expected = torch.where(u > gamma, u - gamma + zeta, beta * (u - gamma) + zeta)
    torch.testing.assert_close(ta(u, emb), expected)
    # token layout (B, N, C) gives the same numbers
    tok = TimeActivation(3, 4, channel_last=True)
    tok.load_state_dict(ta.state_dict())
    torch.testing.assert_close(tok(map_to_tokens(u), emb), map_to_tokens(expected))


def test_time_modules_start_as_plain_sign_and_rprelu():
    tb, ta = TimeThreshold(3, 4), TimeActivation(3, 4)
    x, emb = torch.randn(2, 3, 5, 5), torch.randn(2, 4)
    torch.testing.assert_close(tb(x, emb), torch.where(x > 0, 1.0, -1.0))
    torch.testing.assert_close(ta(x, emb), torch.where(x > 0, x, 0.25 * x))


def test_tokens_roundtrip_non_square_uses_transpose():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    tok = map_to_tokens(x)
    assert tok.shape == (2, 20, 3)
    # token n = (h, w) row-major holds the channel vector x[:, :, h, w]
    torch.testing.assert_close(tok[:, 2 * 5 + 3], x[:, :, 2, 3])
    torch.testing.assert_close(tokens_to_map(tok, (4, 5)), x)


def test_binary_attention_forward_is_normalised_threshold_map():
    g = torch.Generator().manual_seed(6)
    qb, kb, vb = (_pm1((1, 2, 5, 8), g) for _ in range(3))
    qb.requires_grad_()
    out = CrossAttention.binary_attention(qb, kb, vb)
    s = qb.detach() @ kb.transpose(-2, -1) / math.sqrt(8)
    expected = torch.zeros_like(out)
    for h in range(2):
        for i in range(5):
            row = s[0, h, i]
            sel = [j for j in range(5) if row[j] > 0.35 * row.max()]
            expected[0, h, i] = vb[0, h, sel].mean(dim=0) if sel else 0
    torch.testing.assert_close(out.detach(), expected)
    out.sum().backward()  # softmax straight-through: a gradient exists
    assert qb.grad is not None and qb.grad.abs().sum() > 0


def test_binary_attention_row_whose_maximum_is_not_positive_attends_to_nothing():
    """A query that disagrees with every key (its row maximum ≤ 0) gets a zero message, with and without grad;
    a row with a positive maximum attends to its top keys."""
    q = torch.ones(1, 1, 2, 4)
    q[0, 0, 1] = -1  # row 1: every score is -2 (max ≤ 0)
    k = torch.ones(1, 1, 3, 4)
    v = torch.arange(12.0).view(1, 1, 3, 4)
    with torch.no_grad():
        out = CrossAttention.binary_attention(q, k, v)
    torch.testing.assert_close(out[0, 0, 1], torch.zeros(4))
    torch.testing.assert_close(out[0, 0, 0], v[0, 0].mean(0))  # all three keys tie at the maximum +2
    torch.testing.assert_close(CrossAttention.binary_attention(q.requires_grad_(), k, v).detach(), out)
    zero = torch.tensor([[[[1.0, -1, 1, -1]]]])  # scores exactly 0 against these keys: nothing attended either
    keys = torch.tensor([[[[1.0, 1, -1, -1], [1.0, -1, -1, 1]]]])
    with torch.no_grad():
        torch.testing.assert_close(CrossAttention.binary_attention(zero, keys, keys), torch.zeros(1, 1, 1, 4))


def test_xformer_is_bidirectional_and_non_square():
    torch.manual_seed(0)
    for binary in (True, False):
        xf = XFormer(8, 4, num_heads=2, binary=binary)
        f_d, f_p, emb = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5), torch.randn(2, 4)
        new_d, new_p = xf(f_d, f_p, emb)
        assert new_d.shape == f_d.shape and new_p.shape == f_p.shape
        # f'_d depends on the segmentor tokens, and f'_p on the refiner tokens
        new_d2, new_p2 = xf(f_d, f_p + torch.randn_like(f_p), emb)
        assert not torch.allclose(new_d, new_d2)
        new_d3, new_p3 = xf(f_d + torch.randn_like(f_d), f_p, emb)
        assert not torch.allclose(new_p, new_p3)


def test_xformer_block2_reads_the_updated_segmentor_tokens():
    """Wiring of the two blocks: f'_p = CTB1(f_p ← f_d), then f'_d = CTB2(f_d ← f'_p) (not ← f_p)."""
    torch.manual_seed(1)
    xf = XFormer(8, 4, num_heads=2, binary=False)
    f_d, f_p, emb = torch.randn(2, 8, 2, 3), torch.randn(2, 8, 2, 3), torch.randn(2, 4)
    td, tp = map_to_tokens(f_d), map_to_tokens(f_p)
    tp_new = xf.to_segmentor(tp, td, emb)
    td_new = xf.to_refiner(td, tp_new, emb)
    new_d, new_p = xf(f_d, f_p, emb)
    torch.testing.assert_close(new_p, tokens_to_map(tp_new, (2, 3)))
    torch.testing.assert_close(new_d, tokens_to_map(td_new, (2, 3)))
    assert not torch.allclose(new_d, tokens_to_map(xf.to_refiner(td, tp, emb), (2, 3)))


def test_channel_resize_and_block_shapes():
    x = torch.randn(2, 6, 8, 6)
    torch.testing.assert_close(ChannelResize(2, 6, 3)(x), x.view(2, 3, 2, 8, 6).mean(2))
    torch.testing.assert_close(ChannelResize(2, 6, 12)(x), torch.cat([x, x], 1))
    assert ChannelResize(2, 6, 4).proj is not None
    emb = torch.randn(2, 4)
    for binary in (True, False):
        blk = RefinerBlock(2, 6, 12, 4, stride=(2, 1), binary=binary)
        assert blk(x, emb).shape == (2, 12, 4, 6)
        blk = RefinerBlock(2, 6, 12, 4, stride=(2, 2), binary=binary)
        assert blk(torch.randn(2, 6, 7, 5), emb).shape == (2, 12, 4, 3)  # odd sizes: ceil like a strided conv


def test_cached_binary_weight_follows_weight_updates():
    """Without autograd the binarized weight is cached; in-place updates and load_state_dict refresh it."""
    from nnunetv2_hidiff.networks.binary import BinaryConv2d

    conv = BinaryConv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 5, 5).sign()
    expected = lambda: F.conv2d(x, conv.weight.sign() * conv.weight.abs().mean((1, 2, 3), keepdim=True), conv.bias,
                                padding=1)
    with torch.no_grad():
        assert torch.allclose(conv(x), expected())
        conv.weight.mul_(-0.5)  # an optimizer-like in-place update
        assert torch.allclose(conv(x), expected())
        conv.load_state_dict({"weight": torch.randn_like(conv.weight), "bias": conv.bias.clone()})
        assert torch.allclose(conv(x), expected())
    y = conv(x)  # with autograd: no cache, gradients flow
    y.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_inference_fast_paths_equal_the_training_forward():
    """Without autograd: TB compares x > α(t) directly, the attention skips its softmax surrogate and a block's BN
    is folded into its conv. Each gives the training forward's values (eval-mode BN) up to float rounding, and the
    folded conv follows updates of the conv weight and of every BN tensor."""
    torch.manual_seed(0)
    emb = torch.randn(2, 4)
    tb = TimeThreshold(6, 4)
    torch.nn.init.normal_(tb.threshold.weight)
    x = torch.randn(2, 6, 5, 7)
    x[0, 0, 0, 0] = tb.threshold(F.silu(emb))[0, 0]  # exactly at the threshold: −1 on both paths
    with torch.no_grad():
        fast = tb(x, emb)
    torch.testing.assert_close(fast, tb(x, emb).detach(), rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    qb, kb, vb = (_pm1((1, 2, 5, 8), g) for _ in range(3))
    with torch.no_grad():
        fast = CrossAttention.binary_attention(qb, kb, vb)
    torch.testing.assert_close(fast, CrossAttention.binary_attention(qb, kb, vb.requires_grad_()).detach())
    for binary in (True, False):
        blk = RefinerBlock(2, 6, 12, 4, stride=(2, 1), binary=binary)
        blk.norm.running_mean.normal_()
        blk.norm.running_var.uniform_(0.5, 2)
        torch.nn.init.normal_(blk.norm.weight)
        blk.eval()
        # in-place updates as an optimizer or load_state_dict makes them (they move the version counter)
        for update in (lambda: None, lambda: blk.conv.weight.mul_(-2), lambda: blk.norm.running_var.mul_(3),
                       lambda: blk.norm.weight.add_(1), lambda: blk.norm.bias.add_(1)):
            with torch.no_grad():
                update()
                fast = blk(x, emb)
            torch.testing.assert_close(fast, blk(x, emb).detach(), rtol=1e-5, atol=1e-5)
