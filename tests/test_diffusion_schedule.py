"""Schedule values against the paper's closed form (Sec. III-A.2)."""
import math

import pytest
import torch

from nnunetv2_hidiff.diffusion import BernoulliDiffusion


def paper_alpha_bar(t, T, s=0.008):
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f(t / T) / f(0)


@pytest.mark.parametrize("T", [1, 2, 10, 50, 1000])
def test_cosine_schedule_matches_closed_form(T):
    d = BernoulliDiffusion(num_steps=T)
    assert d.alphas.dtype == torch.float64 and d.alpha_bars.dtype == torch.float64
    assert d.alphas.shape == (T + 1,) and d.alpha_bars.shape == (T + 1,)
    assert d.alphas[0] == 1 and d.alpha_bars[0] == 1
    # before the last step the clipping of beta at 0.999 is inactive for these T
    for t in range(1, T):
        assert d.alpha_bars[t].item() == pytest.approx(paper_alpha_bar(t, T), rel=1e-12, abs=1e-15)
    # the last step's beta would be exactly 1 (cos(pi/2) = 0); it is clipped to 0.999
    assert d.alpha_bars[T].item() == pytest.approx(d.alpha_bars[T - 1].item() * 0.001, rel=1e-9)
    assert torch.all(d.alpha_bars[1:] > 0)
    assert torch.all(d.alpha_bars[1:] < d.alpha_bars[:-1])  # strictly decreasing
    assert torch.all((d.alphas > 0) & (d.alphas <= 1))
    assert torch.allclose(torch.cumprod(d.alphas, 0), d.alpha_bars, rtol=0, atol=1e-15)
    assert not torch.isnan(d.alphas).any()


def test_cosine_T10_values():
    # the "cosine2" row of the official-code notes: 0.972, 0.899, 0.787, 0.648, 0.494, ...
    d = BernoulliDiffusion(10)
    expected = [0.972, 0.899, 0.787, 0.648, 0.494, 0.341, 0.203, 0.094, 0.024]
    assert d.alpha_bars[1:10].tolist() == pytest.approx(expected, abs=1e-3)


def test_linear_schedule_is_valid_for_short_chains():
    d = BernoulliDiffusion(10, schedule="linear")
    assert torch.all(d.alphas > 0) and torch.all(d.alpha_bars[1:] < d.alpha_bars[:-1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        BernoulliDiffusion(10, schedule="cosine3")
    with pytest.raises(ValueError, match="num_steps"):
        BernoulliDiffusion(0)
    d = BernoulliDiffusion(10)
    y = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="1..10"):
        d.q_mean(y, y, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="1..10"):
        d.q_mean(y, y, torch.tensor([11, 3]))
    with pytest.raises(TypeError, match="int64"):
        d.q_mean(y, y, torch.tensor([1.0, 3.0]))
