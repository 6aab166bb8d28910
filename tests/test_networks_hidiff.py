"""HiDiffNetwork, refiner and factory on real and synthesized nnU-Net plans (no dataset folders)."""
import copy
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nnunetv2_hidiff.networks import (HiDiffNetwork, account, build_hidiff_network, build_hidiff_network_from_plans)
from nnunetv2_hidiff.networks.accounting import count_macs, module_storage_bits, run as accounting_run
from nnunetv2_hidiff.networks.binary import BinaryConv2d, TimeActivation, TimeThreshold

PLANS = Path(__file__).parent / "data" / "plans"
HIPPO_PLANS = PLANS / "Dataset901_Hippocampus_nnUNetPlans.json"
HIPPO_DATASET = PLANS / "Dataset901_Hippocampus_dataset.json"
DRIVE_PLANS = PLANS / "Dataset902_DRIVE_nnUNetPlans.json"

TINY = dict(refiner_width=8, refiner_max_width=16, prior_residual=False, inference_steps=None,  # T steps
            packed_inference=False)


def _synth_plans(strides, patch, features, conv_dim=2):
    """The 901 plan with its 2d configuration replaced by a synthesized one (n stages = len(strides))."""
    plans = json.loads(HIPPO_PLANS.read_text())
    cfg = plans["configurations"]["2d"]
    n = len(strides)
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(n_stages=n, features_per_stage=features, strides=strides,
                kernel_sizes=[[3] * conv_dim] * n, n_conv_per_stage=[1] * n, n_conv_per_stage_decoder=[1] * (n - 1))
    if conv_dim == 3:
        arch.update(conv_op="torch.nn.modules.conv.Conv3d", norm_op="torch.nn.modules.instancenorm.InstanceNorm3d")
    cfg["patch_size"] = patch
    return plans


SYNTH = {
    "4st_64x48_aniso": ([[1, 1], [2, 2], [2, 2], [2, 1]], [64, 48], [4, 8, 16, 16]),
    "5st_96x40": ([[1, 1], [2, 2], [2, 2], [2, 1], [2, 1]], [96, 40], [4, 8, 8, 16, 16]),
    "6st_64x48": ([[1, 1], [2, 2], [2, 2], [2, 2], [2, 1], [1, 2]], [64, 48], [4, 8, 8, 16, 16, 16]),
    "7st_128x64": ([[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 1], [2, 2]], [128, 64], [4, 4, 8, 8, 16, 16, 16]),
}


def _build(plans, binary=True, use_xformer=True, ds=True, k=3, c_in=1, **kw):
    opts = dict(TINY, **kw)
    return build_hidiff_network_from_plans(plans, "2d", c_in, k, enable_deep_supervision=ds, binary=binary,
                                           use_xformer=use_xformer, **opts)


def _patch(plans):
    return plans["configurations"]["2d"]["patch_size"] if isinstance(plans, dict) else \
        json.loads(Path(plans).read_text())["configurations"]["2d"]["patch_size"]


@pytest.mark.parametrize("name", sorted(SYNTH))
@pytest.mark.parametrize("binary", [True, False])
def test_shapes_follow_the_plan(name, binary):
    strides, patch, features = SYNTH[name]
    net = _build(_synth_plans(strides, patch, features), binary=binary, use_xformer=(name != "5st_96x40"))
    x = torch.randn(2, 1, *patch)
    net.train()
    seg = net.segment(x)
    assert isinstance(seg.logits, list) and seg.logits[0].shape == (2, 3, *patch)
    assert len(seg.features) == len(strides) == len(net.refiner.encoder)
    # refiner strides are the plan's strides, stage by stage
    assert net.refiner.strides == strides
    p = net.prior_from_logits(seg.logits)
    torch.testing.assert_close(p.sum(1), torch.ones(2, *patch))
    y = torch.bernoulli(p)
    eps_logits = net.refiner_forward(x, y, p, torch.tensor([1, 10]), seg.features)
    assert eps_logits.shape == (2, 3, *patch)
    net.eval()
    out = net(x)
    assert out.shape == (2, 3, *patch) and torch.isfinite(out).all()


def test_real_plans_901_and_902_shapes():
    net = _build(str(HIPPO_PLANS))  # 4 stages, 56x40 -> bottleneck 7x5
    x = torch.randn(2, 1, 56, 40)
    seg = net.segment(x)
    assert [tuple(f.shape[2:]) for f in seg.features] == [(56, 40), (28, 20), (14, 10), (7, 5)]
    assert net.refiner_forward(x, torch.zeros(2, 3, 56, 40), net.prior_from_logits(seg.logits), 5,
                               seg.features).shape == (2, 3, 56, 40)
    net = _build(str(DRIVE_PLANS), k=2, c_in=3, ds=False)  # 8 stages; small patch keeps it fast
    x = torch.randn(1, 3, 256, 128)
    seg = net.segment(x)
    assert len(seg.features) == 8 and seg.features[-1].shape[2:] == (2, 1)
    net.eval()
    assert net(x).shape == (1, 2, 256, 128)


def test_3d_plan_works():
    plans = _synth_plans([[1, 1, 1], [2, 2, 2], [1, 2, 2]], [8, 16, 12], [4, 8, 8], conv_dim=3)
    net = _build(plans)
    x = torch.randn(2, 1, 8, 16, 12)
    net.eval()
    out = net(x)
    assert out.shape == (2, 3, 8, 16, 12) and torch.isfinite(out).all()


def _randomize_zero_inits(module, gen):
    """The TB/TA linear layers start at zero (so no gradient flows *through* them at step 0);
    give them random values to check that every parameter is connected to the loss."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, TimeThreshold):
                m.threshold.weight.normal_(0, 0.1, generator=gen)
            elif isinstance(m, TimeActivation):
                m.shifts.weight.normal_(0, 0.1, generator=gen)


@pytest.mark.parametrize("binary", [True, False])
def test_gradients_reach_every_parameter(binary):
    strides, patch, features = SYNTH["4st_64x48_aniso"]
    net = _build(_synth_plans(strides, patch, features), binary=binary)
    g = torch.Generator().manual_seed(0)
    _randomize_zero_inits(net, g)
    net.train()
    x = torch.randn(2, 1, *patch, generator=g)
    seg = net.segment(x)
    p = net.prior_from_logits(seg.logits)
    y = torch.bernoulli(p.detach(), generator=g)
    eps = net.refiner_forward(x, y, p, torch.tensor([2, 9]), seg.features)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in seg.logits)
    loss = loss + (eps * torch.randn(eps.shape, generator=g)).sum()
    loss.backward()
    missing = [n for n, prm in net.named_parameters() if prm.grad is None or prm.grad.abs().sum() == 0]
    assert not missing, missing
    assert any(isinstance(m, BinaryConv2d) for m in net.modules()) == binary


def test_gradients_connected_at_initialisation():
    """At the real initialisation every parameter is in the graph (zero-init layers get zero grads)."""
    net = _build(str(HIPPO_PLANS))
    x = torch.randn(2, 1, 56, 40)
    seg = net.segment(x)
    p = net.prior_from_logits(seg.logits)
    eps = net.refiner_forward(x, torch.bernoulli(p.detach()), p, torch.tensor([3, 4]), seg.features)
    (eps.square().mean() + sum(o.square().mean() for o in seg.logits)).backward()
    assert all(prm.grad is not None for prm in net.parameters())
    assert net.refiner.head.weight.grad.abs().sum() > 0 and net.refiner.stem.weight.grad.abs().sum() > 0


def test_eps_starts_small():
    net = _build(str(HIPPO_PLANS))
    x = torch.randn(2, 1, 56, 40)
    net.eval()
    with torch.no_grad():
        seg = net.segment(x)
        p = net.prior_from_logits(seg.logits)
        eps = torch.sigmoid(net.refiner_forward(x, torch.bernoulli(p), p, 10, seg.features))
    assert 0.0 < eps.mean().item() < 0.1


def test_train_forward_is_segmentor_output_and_eval_forward_drop_in():
    net = _build(str(HIPPO_PLANS))
    x = torch.randn(2, 1, 56, 40)
    net.train()
    out = net(x)
    ref = net.segmentor(x)
    assert isinstance(out, list) and len(out) == len(ref)
    for a, b in zip(out, ref):
        assert a.shape == b.shape
    net.eval()
    net.refine = True  # as a fold that decided to refine
    net.set_deep_supervision(False)  # what nnU-Net's predictor has (network built without DS)
    logits = net(x)
    seg_logits = net.segmentor(x)
    assert logits.shape == seg_logits.shape == (2, 3, 56, 40)
    assert torch.isfinite(logits).all() and logits.max() <= 0  # log-probabilities
    labels = torch.softmax(logits, 1).argmax(1)
    assert labels.shape == (2, 56, 40)
    net.refine = False
    torch.testing.assert_close(net(x), seg_logits)


def test_same_seed_same_output_and_seed_matters():
    net = _build(str(HIPPO_PLANS), ds=False)
    net.eval()
    net.force(refine=True, samples=2)
    x = torch.randn(2, 1, 56, 40)
    a, b = net(x), net(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    net.seed = 1
    assert not torch.equal(a, net(x))
    net.seed = 0
    net.transition = "sample"  # an untrained refiner never crosses 0.5, so "threshold" keeps y_T
    a = net(x)
    net.steps = 3
    assert not torch.equal(a, net(x))


@pytest.mark.parametrize("transition", ["renoise", "threshold", "sample"])
def test_eval_chain_with_identity_refiner_returns_log_of_prior_sample(transition):
    """Oracle for the sampling plumbing: if ε̂ ≡ 0 every step keeps y_t (for "renoise" because the shared
    uniform field u that drew y_T = 1[u < p] stays on the same side of ᾱ·y_T + (1 − ᾱ)·p), so the output must be
    log(clamp(y_T)) with y_T = 1[u < p], u drawn from torch.Generator().manual_seed(seed)."""
    net = _build(str(HIPPO_PLANS), ds=False)
    with torch.no_grad():
        net.refiner.head.weight.zero_()
        net.refiner.head.bias.fill_(-200.0)
    net.eval()
    net.force(refine=True, seed=7, transition=transition)
    x = torch.randn(2, 1, 56, 40)
    out = net(x)
    with torch.no_grad():
        p = torch.softmax(net.segmentor(x), 1)
    y_T = (torch.rand(p.shape, generator=torch.Generator().manual_seed(7)) < p).float()
    torch.testing.assert_close(out, torch.log(y_T.clamp_min(1e-6)))
    net.output_space = "logit"
    torch.testing.assert_close(net(x), torch.logit(y_T, eps=1e-6))


def test_transition_setting_changes_the_chain_and_is_read_from_the_environment():
    from nnunetv2_hidiff.training.inference_settings import apply_inference_settings

    net = _build(str(HIPPO_PLANS), ds=False)
    net.eval()
    net.refine = True
    assert net.settings()["transition"] == "renoise"  # the default (docs/method.md, "Sampler")
    x = torch.randn(2, 1, 56, 40)
    a = net(x)
    apply_inference_settings(net, {"nnUNet_HiDiff_transition": "sample", "nnUNet_HiDiff_steps": "4"})
    assert net.transition == "sample" and net.steps == 4 and net.settings()["steps"] == 4
    net.steps = 10
    assert not torch.equal(a, net(x))
    with pytest.raises(ValueError, match="nnUNet_HiDiff_transition='mean' must be one of"):
        apply_inference_settings(net, {"nnUNet_HiDiff_transition": "mean"})


def test_state_dict_is_single_and_reloadable():
    """segmentor.*, refiner.* and _extra_state (the configuration, the trainer, the decision) in one state dict."""
    net = _build(str(HIPPO_PLANS))
    sd = net.state_dict()
    assert all(k.startswith(("segmentor.", "refiner.")) for k in sd if k != "_extra_state")
    assert sd["_extra_state"] == {"format": 1, "trainer": None, "config": net.config.to_dict(), "decision": None}
    assert json.loads(json.dumps(sd["_extra_state"])) == sd["_extra_state"]  # plain data
    assert any(k.startswith("refiner.xformer.") for k in sd)
    other = _build(str(HIPPO_PLANS), ds=False)
    other.load_state_dict(sd)  # strict: deep supervision on/off share keys
    x = torch.randn(1, 1, 56, 40)
    net.eval()
    other.eval()
    net.refine = other.refine = True
    net.segmentor.decoder.deep_supervision = False
    torch.testing.assert_close(net(x), other(x))
    assert not hasattr(copy.deepcopy(net).diffusion, "state_dict")


def test_factory_signature_matches_nnunet_trainer():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    ours = list(inspect.signature(build_hidiff_network).parameters.values())
    theirs = list(inspect.signature(nnUNetTrainer.build_network_architecture).parameters.values())
    assert [p.name for p in ours[:len(theirs)]] == [p.name for p in theirs]
    assert ours[len(theirs) - 1].default == theirs[-1].default
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in ours[len(theirs):])
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(str(HIPPO_PLANS))
    net = build_hidiff_network(pm, pm.get_configuration("2d"), 1, 3, False, num_diffusion_steps=4,
                               decision_extra_steps=(1, 2), **TINY)
    assert isinstance(net, HiDiffNetwork) and net.config.default_steps == 4 and net.num_classes == 3
    # the segmentor is the plan's network, as nnU-Net builds it
    assert type(net.segmentor).__name__ == "PlainConvUNet"
    assert net.segmentor.encoder.output_channels == [32, 64, 128, 256]


def test_from_plans_reads_channels_from_dataset_json():
    net = build_hidiff_network_from_plans(str(HIPPO_PLANS), "2d", dataset_json=str(HIPPO_DATASET), **TINY)
    assert net.num_classes == 3 and net.refiner.in_channels == 1


def test_accounting_oracles_on_a_tiny_module():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = BinaryConv2d(4, 8, 3, padding=1, bias=False)
            self.r = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.r(self.b(x))

    m = Tiny()
    bits = module_storage_bits(m)
    assert bits["binary_bits"] == 8 * 4 * 9 + 32 * 8
    assert bits["real_bits"] == 32 * (8 * 2 + 2)
    assert bits["bits_if_real"] == 32 * (8 * 4 * 9 + 8 * 2 + 2)
    macs = count_macs(m, lambda: m(torch.zeros(1, 4, 10, 10)))
    assert macs == {"binary_macs": 8 * 100 * 4 * 9, "real_macs": 2 * 100 * 8}


def test_accounting_binary_storage_at_most_one_eighth_of_real_hippocampus_2d():
    plans = json.loads(HIPPO_PLANS.read_text())
    reports = {}
    for binary in (True, False):
        net = build_hidiff_network_from_plans(plans, "2d", 1, 3, enable_deep_supervision=False, binary=binary,
                                              refiner_width=32, prior_residual=False)  # the paper's (Table XI)
        reports[binary] = account(net, [56, 40], 1)
        n_params = sum(p.numel() for p in net.refiner.parameters())
        assert reports[binary]["refiner"]["storage_mb_real"] == pytest.approx(4 * n_params / 2 ** 20)
    b, r = reports[True]["refiner"], reports[False]["refiner"]
    assert b["storage_mb"] <= r["storage_mb"] / 8
    assert r["binary_macs"] == 0 and b["binary_macs"] > 0
    assert b["flops_per_step"] < r["flops_per_step"] / 8
    # same topology: the binary build has the real twin's MACs, just binarized
    assert b["flops_per_step_real"] == pytest.approx(r["flops_per_step"], rel=0.01)
    assert reports[True]["segmentor"] == reports[False]["segmentor"]


def test_accounting_cli(capsys):
    res = accounting_run(["--plans", str(HIPPO_PLANS), "--dataset-json", str(HIPPO_DATASET), "-c", "2d",
                          "--patch-size", "32", "24", "--width", "8", "--max-width", "16"])
    out = capsys.readouterr().out
    assert "refiner binary" in out and "refiner real" in out and "segmentor" in out
    assert res["binary"]["patch_size"] == [32, 24]
    assert math.isfinite(res["binary"]["total_flops"])


def test_drop_in_for_nnunet_sliding_window_predictor():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(str(HIPPO_PLANS))
    cm = pm.get_configuration("2d")
    net = build_hidiff_network(pm, cm, 1, 3, False, **TINY)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, None, json.loads(HIPPO_DATASET.read_text()), "nnUNetTrainer", (1,))
    image = torch.randn(1, 2, 70, 50)  # (c, slices, x, y): 2 slices, 2x2 tiles of 56x40, mirroring on
    logits = predictor.predict_sliding_window_return_logits(image)
    assert logits.shape == (3, 2, 70, 50) and torch.isfinite(logits).all()
    seg = predictor.label_manager.apply_inference_nonlin(logits).argmax(0)
    assert seg.shape == (2, 70, 50)


def test_residual_encoder_unet_plan_works():
    plans = json.loads(HIPPO_PLANS.read_text())
    arch = plans["configurations"]["2d"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kw = arch["arch_kwargs"]
    kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    kw["n_conv_per_stage_decoder"] = [1, 1, 1]
    net = _build(plans, ds=False)
    assert type(net.segmentor).__name__ == "ResidualEncoderUNet"
    net.eval()
    out = net(torch.randn(2, 1, 56, 40))
    assert out.shape == (2, 3, 56, 40) and torch.isfinite(out).all()


def test_predict_wrapper_parses_transition():
    from nnunetv2_hidiff.cli.predict import parse

    args, rest = parse(["--transition", "sample", "--steps", "3", "--", "-i", "a", "-o", "b"])
    assert args.transition == "sample" and args.steps == 3 and rest == ["-i", "a", "-o", "b"]
    with pytest.raises(SystemExit):
        parse(["--transition", "mean"])
    args, _ = parse(["--combine", "new_components", "-i", "a"])
    assert args.combine == "new_components"
    with pytest.raises(SystemExit):
        parse(["--combine", "all"])


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("samples", [1, 3])
def test_cached_batched_chain_equals_the_straightforward_chain(binary, k, samples):
    """The optimised chain (segmentor skips projected once per chain, all samples in one batch) gives exactly
    what a plain loop gives: every step calls the refiner with the raw skips, samples stacked the same way."""
    from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler

    net = _build(str(HIPPO_PLANS), binary=binary, ds=False, k=k)
    with torch.no_grad():  # a refiner that predicts some noise, so the chain actually moves
        net.refiner.head.bias.fill_(-1.0)
        net.refiner.head.weight.normal_(0, 0.3)
    net.eval()
    net.force(refine=True, samples=samples, steps=4)
    x = torch.randn(2, 1, 56, 40)  # non-square
    with torch.no_grad():
        seg = net.segment(x)
        prior = net.prior_from_logits(seg.logits)
        fast = net.refine_prior(x, prior, seg.features)
        sampler = BernoulliDDIMSampler(net.diffusion, num_inference_steps=4)
        g = torch.Generator().manual_seed(net.settings()["seed"])
        rep = lambda v: torch.cat([v] * samples)  # noqa: E731
        xs, ps, fs = rep(x), rep(prior), [rep(f) for f in seg.features]
        y = sampler.initial_sample(ps, generator=g)
        for t in sampler.timesteps:
            out = sampler.step(torch.sigmoid(net.refiner(xs, y, ps, t, fs).float()), t, y, ps, generator=g)
            y = out.prev_sample
        slow = out.pred_y0.view(samples, *x.shape[:1], *out.pred_y0.shape[1:]).mean(0)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast.shape == (2, k, 56, 40) and not torch.equal(fast.round(), prior.round())


def test_refinement_noise_is_drawn_on_the_cpu_whatever_the_device(monkeypatch):
    """nnunetv2_hidiff_predict / nnUNetv2_predict with -device cuda must give the CPU's masks for the same seed:
    CUDA generators give other streams for a seed, so every random field of the chain is drawn by a CPU
    generator and moved to the tensors' device (checked here with torch's 'meta' device standing in for a GPU;
    scripts/gpu_check.sh compares real CPU and CUDA outputs)."""
    from nnunetv2_hidiff.diffusion import sampler as sampler_module

    g = torch.Generator().manual_seed(3)
    like = torch.empty(2, 3, 5, 4, device="meta")
    u = sampler_module.uniform(like, g)
    assert u.device.type == "meta" and u.shape == like.shape
    torch.testing.assert_close(sampler_module.uniform(torch.empty(2, 3, 5, 4), torch.Generator().manual_seed(3)),
                               torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(3)))
    seen = []
    original = sampler_module.uniform
    monkeypatch.setattr(sampler_module, "uniform", lambda like, generator=None: seen.append(
        (generator.device.type, like.device.type)) or original(like, generator))
    net = _build(str(HIPPO_PLANS), ds=False)
    net.eval()
    net.refine = True
    for transition in ("renoise", "sample"):
        net.transition = transition
        with torch.no_grad():
            net(torch.randn(1, 1, 56, 40))
    assert seen and all(gen == "cpu" for gen, _ in seen)


@pytest.mark.parametrize("binary", [True, False])
def test_time_codes_cached_at_inference_equal_fresh_ones_and_follow_weight_changes(binary):
    """At inference the refiner keeps e_t per t and every TB/TA layer its α(t), γ(t), ζ(t): the outputs equal the
    uncached computation (autograd on), for every t, and a weight change (an optimizer step, load_state_dict,
    the EMA swap) is seen at the next call."""
    net = _build(str(HIPPO_PLANS), binary=binary, ds=False)
    with torch.no_grad():  # non-zero time codes, so that a stale cache would show
        for m in net.refiner.modules():
            if isinstance(m, torch.nn.Linear) and m.weight.shape[1] == 16:
                m.weight.normal_(0, 0.5)
                m.bias.normal_(0, 0.5)
    net.eval()
    x = torch.randn(2, 1, 56, 40)
    with torch.no_grad():
        seg = net.segment(x)
        prior = net.prior_from_logits(seg.logits)
        y = torch.bernoulli(prior)
        projected = net.refiner.project_features(seg.features)

    def cached(t):
        with torch.no_grad():
            return net.refiner(x, y, prior, t, projected=projected)

    def fresh(t):
        return net.refiner(x, y, prior, t, projected=projected).detach()  # autograd on: no cache

    for t in (10, 3, torch.tensor([2, 7]), 10, 3):  # tolerance: inference folds BN into the convs (float rounding)
        torch.testing.assert_close(cached(t), fresh(t), rtol=1e-5, atol=1e-5)
    assert net.refiner.__dict__.get("_time_embedding_cache")
    state = {k: v.clone() for k, v in net.refiner.state_dict().items()}
    with torch.no_grad():
        for m in net.refiner.modules():
            if isinstance(m, torch.nn.Linear) and m.weight.shape[1] == 16:
                m.bias.add_(0.3)
    torch.testing.assert_close(cached(3), fresh(3), rtol=1e-5, atol=1e-5)
    net.refiner.load_state_dict(state)
    torch.testing.assert_close(cached(3), fresh(3), rtol=1e-5, atol=1e-5)


def test_prior_residual_refiner_starts_as_its_segmentor_and_learns_a_residual():
    """prior_residual: the untrained refiner's one step from y_T returns p (up to the head's 1e-3 init), so the
    refined argmax is the segmentor's; the state dict has the same keys as the paper's head, and a non-zero head
    moves ŷ0 in logit space the same way whatever y_t is."""
    torch.manual_seed(0)
    net = _build(str(HIPPO_PLANS), ds=False, prior_residual=True)
    plain = _build(str(HIPPO_PLANS), ds=False)
    assert net.refiner.prior_residual and not plain.refiner.prior_residual
    assert net.state_dict().keys() == plain.state_dict().keys()
    net.eval()
    x = torch.randn(2, 1, 56, 40)
    with torch.no_grad():
        seg = net.segment(x)
        p = net.prior_from_logits(seg.logits)
        y0 = net.refine_prior(x, p, seg.features, steps=1)
        torch.testing.assert_close(y0, p.clamp(1e-3, 1 - 1e-3), atol=5e-3, rtol=0)
        net.refiner.head.weight.zero_()  # exactly the Bayes posterior: the refined argmax is the segmentor's
        y0 = net.refine_prior(x, p, seg.features, steps=1)
        torch.testing.assert_close(y0, p.clamp(1e-3, 1 - 1e-3), atol=1e-4, rtol=0)  # ᾱ_T is tiny, not 0
        top2 = p.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4
        assert clear.float().mean() > 0.95 and torch.equal(y0.argmax(1)[clear], p.argmax(1)[clear])
        net.refiner.head.bias.fill_(2.0)  # +2 on the ŷ0 logit of every class
        y_t = torch.bernoulli(p)
        eps = torch.sigmoid(net.refiner_forward(x, y_t, p, 10, seg.features))
        y0_hat = (y_t - eps).abs()
        torch.testing.assert_close(torch.logit(y0_hat, eps=1e-7), torch.logit(p.clamp(1e-3, 1 - 1e-3)) + 2.0,
                                   atol=5e-3, rtol=0)
