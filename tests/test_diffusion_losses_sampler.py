"""Losses (Eq. 11-13) and the Bernoulli DDIM sampler (Algorithm 2)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunetv2_hidiff.diffusion import (BernoulliDDIMSampler, BernoulliDiffusion, bernoulli_kl, boundary_band,
                                       calibrate, diffusion_loss, focal_loss_with_logits, respaced_timesteps)

T = 10


def test_bernoulli_kl_closed_form():
    q = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.0, 1.0], dtype=torch.float64)
    p = torch.tensor([0.1, 0.2, 0.6, 0.3, 0.4, 0.8], dtype=torch.float64)
    got = bernoulli_kl(q, p)
    for qi, pi, gi in zip(q.tolist(), p.tolist(), got.tolist()):
        exp = (qi * math.log(qi / pi) if qi > 0 else 0) + ((1 - qi) * math.log((1 - qi) / (1 - pi)) if qi < 1 else 0)
        assert gi == pytest.approx(exp, abs=2e-7)  # the log clamp costs at most ~1e-7
    assert got[0] == 0 and got[3] == 0  # identical distributions
    assert torch.all(got[[1, 2, 4, 5]] > 0)
    assert torch.isfinite(bernoulli_kl(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))).all()


def test_focal_gamma0_is_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 7, 5, generator=g) * 4
    target = (torch.rand(3, 2, 7, 5, generator=g) > 0.7).float()
    assert torch.allclose(focal_loss_with_logits(logits, target, gamma=0),
                          F.binary_cross_entropy_with_logits(logits, target), atol=1e-6)


def test_focal_gamma2_formula_and_downweighting():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.8, 2.5], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    pr = 1 / (1 + np.exp(-logits.numpy()))
    y = target.numpy()
    expected = np.mean(-(y * (1 - pr) ** 2 * np.log(pr) + (1 - y) * pr ** 2 * np.log(1 - pr)))  # Eq. 12
    assert focal_loss_with_logits(logits, target, gamma=2).item() == pytest.approx(expected, rel=1e-10)
    # well-classified pixels count less than under BCE
    assert focal_loss_with_logits(logits, target, 2) < focal_loss_with_logits(logits, target, 0)
    # finite for saturated logits
    assert torch.isfinite(focal_loss_with_logits(torch.tensor([80.0, -80.0]), torch.tensor([0.0, 1.0]), 2))


def make_batch(K=3, shape=(6, 5), B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y0 = F.one_hot(torch.randint(0, K, (B, *shape), generator=g), K).movedim(-1, 1).float()
    p = torch.softmax(torch.randn(B, K, *shape, generator=g) * 2, 1)
    return y0, p, g


def test_diffusion_loss_terms():
    d = BernoulliDiffusion(T)
    y0, p, g = make_batch()
    t = torch.tensor([1, 3, 7, 10])
    y_t, eps = d.q_sample(y0, p, t, generator=g)
    # a near-perfect noise predictor: logits of ±20 at the true noise
    perfect = (eps * 2 - 1) * 20
    out = diffusion_loss(d, perfect, eps, y_t, y0, p, t)
    assert out.kl.item() < 1e-6 and out.focal.item() < 1e-6
    bad = -perfect
    worse = diffusion_loss(d, bad, eps, y_t, y0, p, t)
    assert worse.kl > 1 and worse.focal > 1
    assert worse.total.item() == pytest.approx(worse.kl.item() + worse.focal.item(), rel=1e-6)
    half = diffusion_loss(d, bad, eps, y_t, y0, p, t, lambda_focal=0.5)
    assert half.total.item() == pytest.approx(half.kl.item() + 0.5 * half.focal.item(), rel=1e-6)
    # the BCE share: λ_bce·BCE(ε̂, ε) on top; on "easy" entries (ε = 0) with ε̂ = 0.04 its gradient is 100x the
    # focal term's (γ = 2), which is what calibrates ε̂ there
    with_bce = diffusion_loss(d, bad, eps, y_t, y0, p, t, lambda_bce=2.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(bad, eps)
    assert with_bce.total.item() == pytest.approx(worse.total.item() + 2.0 * bce.item(), rel=1e-6)
    small = torch.full((1000,), torch.logit(torch.tensor(0.04)).item(), requires_grad=True)
    zeros = torch.zeros(1000)
    torch.nn.functional.binary_cross_entropy_with_logits(small, zeros).backward()
    g_bce = small.grad.abs().mean()
    small.grad = None
    from nnunetv2_hidiff.diffusion.losses import focal_loss_with_logits
    focal_loss_with_logits(small, zeros, 2.0).backward()
    assert g_bce > 20 * small.grad.abs().mean()


def test_boundary_band_marks_pixels_next_to_another_class():
    labels = torch.zeros(1, 5, 6, dtype=torch.long)
    labels[0, 1:3, 1:4] = 1  # a 2×3 block of class 1
    labels[0, :, 5] = 2  # the last column is class 2
    band = boundary_band(F.one_hot(labels, 3).movedim(-1, 1).float())
    # rows 0-3, columns 0-4: the block and its 8-neighbourhood; columns 4 and 5: both sides of class 2's edge
    expected = torch.tensor([[1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1]], dtype=torch.float32)
    assert band.shape == (1, 1, 5, 6)
    torch.testing.assert_close(band[0, 0], expected)
    # one class everywhere: no boundary, the image border is none
    assert boundary_band(torch.ones(2, 1, 4, 4, 3)).sum() == 0


def test_boundary_weight_gives_boundary_pixels_weight_one_plus_beta():
    d = BernoulliDiffusion(T)
    y0, p, g = make_batch(K=2, shape=(8, 8))
    t = torch.tensor([2, 4, 7, 10])
    y_t, eps = d.q_sample(y0, p, t, generator=g)
    logits = torch.randn(y0.shape, generator=g)
    plain = diffusion_loss(d, logits, eps, y_t, y0, p, t, lambda_bce=1.0)
    assert diffusion_loss(d, logits, eps, y_t, y0, p, t, lambda_bce=1.0, boundary_weight=0.0).total == plain.total
    assert 0 < boundary_band(y0).mean() < 1
    weighted = diffusion_loss(d, logits, eps, y_t, y0, p, t, lambda_bce=1.0, boundary_weight=3.0)
    w = (1 + 3.0 * boundary_band(y0)).expand_as(y0)
    kl = (w * bernoulli_kl(d.posterior(y_t, y0, p, t), d.posterior(y_t, calibrate(y_t, torch.sigmoid(logits)), p,
                                                                     t))).sum() / w.sum()
    bce = (w * F.binary_cross_entropy_with_logits(logits, eps, reduction="none")).sum() / w.sum()
    lp, l1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    focal = (w * -(eps * l1mp.exp() ** 2 * lp + (1 - eps) * lp.exp() ** 2 * l1mp)).sum() / w.sum()
    torch.testing.assert_close(weighted.kl, kl)
    torch.testing.assert_close(weighted.focal, focal)
    torch.testing.assert_close(weighted.total, kl + focal + bce)
    assert not torch.isclose(weighted.total, plain.total)


def test_diffusion_loss_gradients_reach_prior_and_refiner_output():
    d = BernoulliDiffusion(T)
    y0, p, g = make_batch(K=2)
    # saturated priors (exact 0/1 entries) are the NaN risk of the authors' code
    p = torch.where(torch.rand(p.shape, generator=g) > 0.5, y0, p).requires_grad_(True)
    t = torch.tensor([1, 2, 9, 10])
    y_t, eps = d.q_sample(y0, p.detach(), t, generator=g)
    logits = torch.randn(y0.shape, generator=g).requires_grad_(True)
    out = diffusion_loss(d, logits, eps, y_t, y0, p, t)
    out.total.backward()
    assert torch.isfinite(out.total) and torch.isfinite(p.grad).all() and torch.isfinite(logits.grad).all()
    assert p.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


def test_respacing():
    assert respaced_timesteps(10, 10) == list(range(10, 0, -1))
    assert respaced_timesteps(10, 1) == [10]
    r = respaced_timesteps(10, 4)
    assert r[0] == 10 and r[-1] == 1 and r == sorted(set(r), reverse=True)
    with pytest.raises(ValueError):
        respaced_timesteps(10, 11)


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("final", ["mean", "sample"])
@pytest.mark.parametrize("shape", [(2, 1, 8, 7), (2, 4, 8, 7), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("transition", BernoulliDDIMSampler.TRANSITIONS)
def test_ddim_with_perfect_noise_predictor_recovers_y0(steps, final, shape, transition):
    d = BernoulliDiffusion(T)
    g = torch.Generator().manual_seed(steps)
    y0 = (torch.rand(shape, generator=g) > 0.6).float()
    p = torch.rand(shape, generator=g)
    p[0] = 0.0 if shape[1] > 1 else 1.0  # hard priors are allowed
    sampler = BernoulliDDIMSampler(d, num_inference_steps=steps, final=final, transition=transition)
    y = sampler.initial_sample(p, generator=g)
    for t in sampler.timesteps:
        eps_hat = (y - y0).abs()  # the oracle knows the noise: y_t XOR y0
        out = sampler.step(eps_hat, t, y, p, generator=g)
        assert torch.equal(out.pred_y0, y0)
        y = out.prev_sample
    assert torch.equal(y, y0)


def test_ddim_step_is_independent_of_prior_and_preserves_marginals():
    d = BernoulliDiffusion(T)
    sampler = BernoulliDDIMSampler(d, num_inference_steps=4, transition="sample")  # 10 -> 7 -> 4 -> 1 -> 0
    n = 100000
    y0 = torch.tensor([0.0, 1.0]).repeat(n // 2).view(n, 1)
    p = torch.full_like(y0, 0.35)
    g = torch.Generator().manual_seed(3)
    t, t_prev = 7, sampler.previous_timestep(7)
    assert t_prev == 4
    y_t, _ = d.q_sample(y0, p, torch.full((n,), t), generator=g)
    eps_hat = (y_t - y0).abs()
    m1 = sampler.step(eps_hat, t, y_t, p).prev_mean
    m2 = sampler.step(eps_hat, t, y_t, torch.rand(p.shape, generator=g)).prev_mean
    assert torch.allclose(m1, m2, atol=1e-6)  # coefficient of p is 0 with sigma_t of Algorithm 2
    # with a perfect predictor, E[y_{t'}] equals Eq. 6 at t' (the DDIM marginal property)
    for v in (0.0, 1.0):
        sel = y0[:, 0] == v
        expected = d.q_mean(y0[sel][:1], p[sel][:1], torch.tensor([t_prev])).item()
        assert m1[sel].mean().item() == pytest.approx(expected, abs=0.01)


def test_sampler_rejects_unknown_step_and_bad_final():
    d = BernoulliDiffusion(T)
    s = BernoulliDDIMSampler(d, num_inference_steps=3)
    with pytest.raises(ValueError, match="timesteps"):
        s.step(torch.zeros(1, 1), 5, torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="final"):
        BernoulliDDIMSampler(d, final="argmax")
    with pytest.raises(ValueError, match="transition"):
        BernoulliDDIMSampler(d, transition="mean")


def test_transition_threshold_is_the_mode_and_sample_draws_from_the_mean():
    """Same Bernoulli mean either way; "threshold" takes 1[m > 0.5], "sample" draws B(m)."""
    d = BernoulliDiffusion(T)
    n = 200000
    y_t = torch.zeros(n, 1)
    y_t[: n // 2] = 1.0
    eps_hat = torch.full_like(y_t, 0.1)  # slightly unsure: ŷ0 = 0.1 where y_t = 0, 0.9 where y_t = 1
    p = torch.full_like(y_t, 0.5)
    g = torch.Generator().manual_seed(0)
    outs = {tr: BernoulliDDIMSampler(d, transition=tr).step(eps_hat, 5, y_t, p, generator=g)
            for tr in ("threshold", "sample")}
    assert torch.equal(outs["threshold"].prev_mean, outs["sample"].prev_mean)
    m = outs["threshold"].prev_mean
    assert torch.equal(outs["threshold"].prev_sample, (m > 0.5).float())
    assert torch.equal(outs["threshold"].prev_sample, y_t)  # a 10 % doubt flips nothing
    flips = (outs["sample"].prev_sample != y_t).float().mean().item()
    expected = torch.minimum(m, 1 - m).mean().item()  # B(m) disagrees with the mode this often
    assert expected > 0.01 and flips == pytest.approx(expected, abs=0.005)


def test_last_step_is_the_same_for_every_transition():
    d = BernoulliDiffusion(T)
    g = torch.Generator().manual_seed(1)
    y_t = (torch.rand(3, 2, 5, 5, generator=g) > 0.5).float()
    eps_hat = torch.rand(3, 2, 5, 5, generator=g)
    p = torch.rand(3, 2, 5, 5, generator=g)
    for transition in BernoulliDDIMSampler.TRANSITIONS:
        out = BernoulliDDIMSampler(d, transition=transition).step(eps_hat, 1, y_t, p)
        assert torch.equal(out.prev_sample, calibrate(y_t, eps_hat)), transition


def test_default_transition_renoises_onto_the_forward_marginal():
    """"renoise": y_{t'} ~ B(ᾱ_{t'}·ŷ0 + (1 − ᾱ_{t'})·p) (Eq. 6 around ŷ0); "renoise_threshold" takes its mode."""
    d = BernoulliDiffusion(T)
    assert BernoulliDDIMSampler(d).transition == "renoise"
    n = 200000
    g = torch.Generator().manual_seed(5)
    y_t = (torch.rand(n, 1, generator=g) > 0.5).float()
    eps_hat = torch.rand(n, 1, generator=g) * 0.3
    p = torch.rand(n, 1, generator=g)
    ab = float(d.alpha_bars[4])
    expected = ab * calibrate(y_t, eps_hat) + (1 - ab) * p
    for transition in ("renoise", "renoise_fresh"):
        sampler = BernoulliDDIMSampler(d, num_inference_steps=4, transition=transition)  # 10 -> 7 -> 4 -> 1
        y_start = sampler.initial_sample(p, generator=g)
        assert abs(y_start.mean().item() - p.mean().item()) < 0.005  # y_T ~ B(p)
        out = sampler.step(eps_hat, 7, y_t, p, generator=g)
        assert torch.allclose(out.prev_mean, expected, atol=1e-6)
        assert set(out.prev_sample.unique().tolist()) <= {0.0, 1.0}
        assert (out.prev_sample - expected).mean().abs().item() < 0.005  # drawn from B(mean)
        assert ((out.prev_sample - expected) * (p - 0.5)).mean().abs().item() < 0.005
    # "renoise" draws every state with the chain's one uniform field: 1[u < mean]
    sampler = BernoulliDDIMSampler(d, num_inference_steps=4)
    y_start = sampler.initial_sample(p, generator=g)
    out = sampler.step(eps_hat, 7, y_t, p, generator=g)
    u_lo = torch.where(y_start == 1, 0.0, p)  # y_T = 1[u < p] bounds u on each side of p
    u_hi = torch.where(y_start == 1, p, 1.0)
    assert not ((out.prev_sample == 1) & (expected <= u_lo)).any()
    assert not ((out.prev_sample == 0) & (expected > u_hi)).any()
    mode = BernoulliDDIMSampler(d, num_inference_steps=4, transition="renoise_threshold").step(eps_hat, 7, y_t, p)
    assert torch.equal(mode.prev_sample, (expected > 0.5).float())


def _chain(transition: str, steps: int, perturb_at=None, seed: int = 0):
    """Run the sampler with a fake refiner (ε̂ a fixed function of y_t and t); at step ``perturb_at`` ε̂ is
    replaced by 1 − ε̂. Returns the final ŷ0."""
    d = BernoulliDiffusion(T)
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 24, 20)
    prior = torch.softmax(3 * torch.randn(shape, generator=g), dim=1)
    sampler = BernoulliDDIMSampler(d, num_inference_steps=steps, transition=transition)
    chain = torch.Generator().manual_seed(seed + 1)
    y = sampler.initial_sample(prior, generator=chain)
    for t in sampler.timesteps:
        eps_hat = 0.05 + 0.1 * y * (t / T)  # a refiner that is a little unsure where the state is on
        if t == perturb_at:
            eps_hat = 1 - eps_hat
        out = sampler.step(eps_hat, t, y, prior, generator=chain)
        y = out.prev_sample
    return out.pred_y0


@pytest.mark.parametrize("steps", [10, 5, 2])
def test_every_refiner_call_of_the_default_chain_can_change_the_result(steps):
    sampler = BernoulliDDIMSampler(BernoulliDiffusion(T), num_inference_steps=steps)
    reference = _chain(sampler.transition, steps)
    for t in sampler.timesteps:
        assert not torch.equal(_chain(sampler.transition, steps, perturb_at=t), reference), f"step t={t} is wasted"


def test_the_old_thresholded_chain_wastes_the_steps_where_sigma_exceeds_one_half():
    """The reason "threshold" is no longer the default: with σ_t > 0.5 (t = 10…4 at T = 10) the state 1[m > 0.5]
    equals y_t whatever ε̂ is."""
    reference = _chain("threshold", 10)
    wasted = [t for t in range(10, 0, -1) if torch.equal(_chain("threshold", 10, perturb_at=t), reference)]
    assert set(wasted) >= {10, 9, 8, 7, 6, 5, 4}


def test_calibration_eq10():
    y_t = torch.tensor([0.0, 0.0, 1.0, 1.0])
    eps_hat = torch.tensor([0.1, 0.9, 0.1, 0.9])
    assert torch.allclose(calibrate(y_t, eps_hat), torch.tensor([0.1, 0.9, 0.9, 0.1]))
