"""Forward process and posterior (Eq. 3-7) against closed forms, brute-force Bayes and simulation."""
import itertools

import numpy as np
import pytest
import torch

from nnunetv2_hidiff.diffusion import BernoulliDiffusion

T = 10


@pytest.fixture(scope="module")
def diff():
    return BernoulliDiffusion(T)


def one_hot(labels, K):
    return torch.nn.functional.one_hot(labels, K).movedim(-1, 1).double()


def test_q_mean_is_eq6(diff):
    g = torch.Generator().manual_seed(0)
    y0 = one_hot(torch.randint(0, 3, (4, 5, 6), generator=g), 3)
    p = torch.rand(y0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 4, 9, 10])
    m = diff.q_mean(y0, p, t)
    for b in range(4):
        ab = diff.alpha_bars[t[b]].item()
        assert torch.allclose(m[b], ab * y0[b] + (1 - ab) * p[b], atol=1e-12)


def test_marginal_equals_composition_of_one_step_kernels(diff):
    # Eq. 4 applied t times (exact probability propagation) must give Eq. 6.
    for y0, p in itertools.product([0.0, 1.0], [0.0, 0.2, 0.7, 1.0]):
        prob = y0
        for t in range(1, T + 1):
            a = diff.alphas[t].item()
            prob = prob * (a * 1 + (1 - a) * p) + (1 - prob) * ((1 - a) * p)  # P(y_t = 1)
            expected = diff.q_mean(torch.full((1, 1), y0, dtype=torch.float64),
                                   torch.full((1, 1), p, dtype=torch.float64), torch.tensor([t]))
            assert prob == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("t_val", [1, 5, 10])
def test_q_sample_frequencies_match_q_mean(diff, t_val):
    n = 40000
    g = torch.Generator().manual_seed(t_val)
    probs = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    # y0 in {0,1} x prior in probs, repeated n times along the batch
    y0 = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 2, 1, 1).expand(n, 2, 5, 1).contiguous()
    p = probs.view(1, 1, 5, 1).expand(n, 2, 5, 1).contiguous()
    t = torch.full((n,), t_val, dtype=torch.long)
    y_t, eps = diff.q_sample(y0, p, t, generator=g)
    assert set(torch.unique(y_t).tolist()) <= {0.0, 1.0} and set(torch.unique(eps).tolist()) <= {0.0, 1.0}
    assert torch.equal(y_t, (y0 != eps).double())  # y_t = y0 XOR eps
    freq = y_t.mean(0)
    expected = diff.q_mean(y0[:1], p[:1], t[:1])[0]
    tol = 4.5 * torch.sqrt(expected * (1 - expected) / n) + 1e-12
    assert torch.all((freq - expected).abs() <= tol), (freq, expected)
    ab = diff.alpha_bars[t_val].item()
    eps_expected = (1 - ab) * (p[0] - y0[0]).abs()
    eps_tol = 4.5 * torch.sqrt(eps_expected * (1 - eps_expected) / n) + 1e-12
    assert torch.all((eps.mean(0) - eps_expected).abs() <= eps_tol)


def bayes_posterior(y_t, y0, p, t, alphas, alpha_bars):
    """P(y_{t-1}=1 | y_t, y0, p) by enumerating y_{t-1} in {0,1} (y0 soft = B(y0) mixture)."""
    joint = []
    for v in (0, 1):
        a = alphas[t]
        p_yt1 = a * v + (1 - a) * p  # Eq. 4/5: P(y_t = 1 | y_{t-1} = v)
        lik = p_yt1 if y_t == 1 else 1 - p_yt1
        prior_prev = 0.0
        for y0v, w in ((1, y0), (0, 1 - y0)):  # marginalise a soft y0
            m = alpha_bars[t - 1] * y0v + (1 - alpha_bars[t - 1]) * p  # Eq. 6 at t-1
            prior_prev += w * (m if v == 1 else 1 - m)
        joint.append(lik * prior_prev)
    return joint[1] / (joint[0] + joint[1])


def test_posterior_matches_bruteforce_bayes(diff):
    alphas, abars = diff.alphas.tolist(), diff.alpha_bars.tolist()
    rng = np.random.default_rng(0)
    cases = []
    for t in [1, 2, 5, 9, 10]:
        for y_t in (0, 1):
            for y0 in (0.0, 1.0, 0.3, 0.85):
                for p in (0.05, 0.5, 0.93, float(rng.uniform(0.01, 0.99))):
                    cases.append((y_t, y0, p, t))
    y_t = torch.tensor([c[0] for c in cases], dtype=torch.float64).view(-1, 1)
    y0 = torch.tensor([c[1] for c in cases], dtype=torch.float64).view(-1, 1)
    p = torch.tensor([c[2] for c in cases], dtype=torch.float64).view(-1, 1)
    t = torch.tensor([c[3] for c in cases])
    got = diff.posterior(y_t, y0, p, t).view(-1)
    for i, c in enumerate(cases):
        assert got[i].item() == pytest.approx(bayes_posterior(*c, alphas, abars), abs=1e-12), c


@pytest.mark.parametrize("t_val", [2, 6, 10])
def test_posterior_matches_simulated_chain(diff, t_val):
    # Independent of Eq. 7: simulate y_{t-1} ~ q(.|y0,p), y_t ~ q(.|y_{t-1},p), count.
    g = torch.Generator().manual_seed(1)
    n = 200000
    for y0, p in [(1.0, 0.3), (0.0, 0.6)]:
        ab_prev = diff.alpha_bars[t_val - 1].item()
        a = diff.alphas[t_val].item()
        y_prev = torch.bernoulli(torch.full((n,), ab_prev * y0 + (1 - ab_prev) * p, dtype=torch.float64), generator=g)
        y_t = torch.bernoulli(a * y_prev + (1 - a) * p, generator=g)
        for v in (0, 1):
            sel = y_t == v
            freq = y_prev[sel].mean().item()
            exact = diff.posterior(torch.tensor([[float(v)]], dtype=torch.float64),
                                   torch.tensor([[y0]], dtype=torch.float64),
                                   torch.tensor([[p]], dtype=torch.float64), torch.tensor([t_val])).item()
            se = max((exact * (1 - exact) / sel.sum().item()) ** 0.5, 1e-4)
            assert abs(freq - exact) < 5 * se, (y0, p, v, freq, exact)


def test_posterior_at_t1_returns_hard_y0(diff):
    y0 = torch.tensor([[0.0], [1.0], [0.0], [1.0]], dtype=torch.float64)
    y_t = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    p = torch.full_like(y0, 0.4)
    post = diff.posterior(y_t, y0, p, torch.ones(4, dtype=torch.long))
    assert torch.allclose(post, y0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_posterior_never_nan_for_extreme_priors(diff, dtype):
    vals = torch.tensor([0.0, 1.0], dtype=dtype)
    combos = torch.cartesian_prod(vals, torch.tensor([0.0, 1.0, 0.5], dtype=dtype), vals)  # y_t, y0, p
    for t in range(1, T + 1):
        tt = torch.full((combos.shape[0],), t, dtype=torch.long)
        post = diff.posterior(combos[:, 0:1], combos[:, 1:2], combos[:, 2:3], tt)
        assert torch.isfinite(post).all() and (post >= 0).all() and (post <= 1).all()
    # gradients are finite too, for a prior on the boundary
    p = torch.tensor([[0.0], [1.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([[1.0], [0.0]], dtype=dtype)
    diff.posterior(y, 1 - y, p, torch.tensor([3, 10])).sum().backward()
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("shape", [(2, 1, 5, 6), (2, 4, 5, 6), (2, 3, 4, 5, 6)])
def test_shapes_k1_k4_and_3d(diff, shape):
    g = torch.Generator().manual_seed(2)
    y0 = (torch.rand(shape, generator=g) > 0.5).float()
    p = torch.rand(shape, generator=g)
    t = torch.tensor([1, T])
    y_t, eps = diff.q_sample(y0, p, t, generator=g)
    assert y_t.shape == shape and eps.shape == shape and y_t.dtype == torch.float32
    post = diff.posterior(y_t, y0, p, t)
    assert post.shape == shape and torch.isfinite(post).all()
    # at t = T nearly all of y0 is forgotten: q_mean ≈ p
    assert torch.allclose(diff.q_mean(y0, p, t)[1], p[1], atol=1e-4)


def test_prior_eps_logits_are_bayes_with_y0_drawn_from_the_prior(diff):
    """logit P(ε = 1 | y_t, p) when y0 ~ B(p) and y_t ~ q(y_t | y0, p) (Eq. 6), enumerated by hand."""
    from nnunetv2_hidiff.diffusion import prior_eps_logits

    abars = diff.alpha_bars.tolist()
    for t in range(1, T + 1):
        for y_t in (0, 1):
            for p in (0.002, 0.1, 0.5, 0.8, 0.997):
                ab = abars[t]
                joint = {}
                for y0 in (0, 1):
                    q1 = ab * y0 + (1 - ab) * p  # P(y_t = 1 | y0, p)
                    joint[y0] = (p if y0 else 1 - p) * (q1 if y_t else 1 - q1)
                eps1 = joint[1 - y_t] / (joint[0] + joint[1])  # ε = 1 ⇔ y0 ≠ y_t
                got = torch.sigmoid(prior_eps_logits(torch.tensor([float(y_t)]), torch.tensor([p]),
                                                     torch.tensor([ab]), p_floor=1e-4)).item()
                assert got == pytest.approx(eps1, rel=1e-4, abs=1e-6), (t, y_t, p)
    # at t = T (ᾱ_T ≈ 0) y_t carries nothing: ŷ0 = |y_t − ε̂| is p itself, whatever y_t is
    p = torch.tensor([0.05, 0.3, 0.9])
    for y_t in (torch.zeros(3), torch.ones(3)):
        eps = torch.sigmoid(prior_eps_logits(y_t, p, torch.tensor(abars[T])))
        torch.testing.assert_close((y_t - eps).abs(), p, atol=2e-3, rtol=0)
