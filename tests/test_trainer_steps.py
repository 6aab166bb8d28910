"""In-process checks of nnUNetTrainerHiDiff's training step, checkpoints and error handling."""
import json
import os

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer_utils import changed, make_batch, make_trainer, snapshot


def test_refiner_step_changes_only_refiner_and_segmentor_step_only_segmentor(trainer):
    batch = make_batch(trainer)
    s = trainer.prepare_diffusion(batch["data"], batch["target"])
    seg0, ref0 = snapshot(trainer.hidiff.segmentor), snapshot(trainer.hidiff.refiner)
    ema0 = {k: v.clone() for k, v in trainer.refiner_ema.shadow.items()}
    loss, ok = trainer.refiner_step(batch["data"], s)
    assert ok and torch.isfinite(loss.total)
    assert not changed(seg0, trainer.hidiff.segmentor)
    ref_params = {n for n, _ in trainer.hidiff.refiner.named_parameters()}
    assert ref_params & changed(ref0, trainer.hidiff.refiner), "the refiner step did not update the refiner"
    assert any(not torch.equal(ema0[k], trainer.refiner_ema.shadow[k]) for k in ref_params)

    seg1, ref1 = snapshot(trainer.hidiff.segmentor), snapshot(trainer.hidiff.refiner)
    loss, ok = trainer.segmentor_step(batch["data"], s)
    assert ok and torch.isfinite(loss)
    assert not changed(ref1, trainer.hidiff.refiner), "g must be frozen (weights and BN statistics) in step 2"
    assert changed(seg1, trainer.hidiff.segmentor)
    assert all(p.requires_grad for p in trainer.hidiff.refiner.parameters())


def test_diffusion_term_reaches_segmentor_gradients(trainer):
    batch = make_batch(trainer, seed=1)
    s = trainer.prepare_diffusion(batch["data"], batch["target"])
    grads = []
    for lam in (0.0, 1.0):
        trainer.lambda_diff = lam
        trainer.optimizer.zero_grad()
        s = trainer.prepare_diffusion(batch["data"], batch["target"])
        loss = s["l_disc"] + lam * trainer._l_diff(batch["data"], s, s["prior"], s["seg"].features).total
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.hidiff.segmentor.parameters() if p.grad is not None]))
    assert not torch.allclose(grads[0], grads[1])


def test_checkpoint_resume_gives_identical_next_step(trainer, nnunet_paths, tmp_path):
    b1, b2 = make_batch(trainer, seed=2), make_batch(trainer, seed=3)
    trainer.train_step(b1)
    trainer.train_step(b1)
    ckpt = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(ckpt)
    expected = trainer.train_step(b2)

    resumed = make_trainer()
    resumed.load_checkpoint(ckpt)
    resumed.hidiff.train()
    got = resumed.train_step(b2)
    for key in ("loss", "refiner_loss", "refiner_kl", "refiner_focal"):
        assert got[key] == expected[key], key
    for a, b in zip(trainer.hidiff.state_dict().values(), resumed.hidiff.state_dict().values()):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b
    assert resumed.current_epoch == 1


def test_checkpoint_write_is_atomic(trainer, tmp_path):
    ckpt = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(ckpt))
    good = ckpt.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("simulated crash while writing")

    trainer.my_init_kwargs = dict(trainer.my_init_kwargs, poison=Unpicklable())
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.save_checkpoint(str(ckpt))
    assert ckpt.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_nan_batch_is_skipped_and_repeated_nans_stop_training(trainer):
    batch = make_batch(trainer, seed=4)
    batch["data"][0, 0, 3, 3] = float("nan")
    before = snapshot(trainer.hidiff)
    out = trainer.train_step(batch)
    assert out["skipped"] == 1 and trainer.nonfinite_in_a_row == 1
    assert not changed(before, trainer.hidiff)
    trainer.train_step(make_batch(trainer, seed=5))  # a good batch resets the counter
    assert trainer.nonfinite_in_a_row == 0
    with pytest.raises(RuntimeError, match="non-finite loss"):
        for _ in range(trainer.max_nonfinite_in_a_row):
            trainer.train_step(batch)


def test_epoch_end_logs_refiner_losses(trainer):
    outs = [trainer.train_step(make_batch(trainer, seed=i)) for i in range(2)]
    trainer.on_train_epoch_end(outs)
    assert trainer.logger.get_value("refiner_losses", step=-1) == pytest.approx(
        sum(o["refiner_loss"] for o in outs) / 2)
    assert trainer.logger.get_value("nonfinite_steps", step=-1) == 0


def test_checkpoint_of_another_trainer_is_refused(trainer, tmp_path):
    plain = {"network_weights": {}, "trainer_name": "nnUNetTrainer", "init_args": {}}
    path = tmp_path / "plain.pth"
    torch.save(plain, path)
    with pytest.raises(RuntimeError, match="not by a HiDiff trainer.*nnUNet_HiDiff_pretrained_segmentor"):
        trainer.load_checkpoint(str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read the checkpoint"):
        trainer.load_checkpoint(str(path))


def test_checkpoint_of_another_hidiff_configuration_is_refused(trainer, nnunet_paths, tmp_path):
    path = str(tmp_path / "binary.pth")
    trainer.save_checkpoint(path)
    real = make_trainer("nnUNetTrainerHiDiff_real_smoke")
    with pytest.raises(RuntimeError, match="'binary_refiner': True"):
        real.load_checkpoint(path)


def _plain_checkpoint(tr, path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain = nnUNetTrainer.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                                     tr.label_manager.num_segmentation_heads, True)
    for p in plain.parameters():
        torch.nn.init.normal_(p)
    torch.save({"network_weights": plain.state_dict()}, path)
    return plain.state_dict()


def test_pretrained_weights_flag_loads_segmentor_but_keeps_warmup(nnunet_paths, tmp_path):
    """nnU-Net's -pretrained_weights loads everything but the segmentation heads (by nnU-Net's design),
    so the segmentor warm-up must stay."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    tr = make_trainer("nnUNetTrainerHiDiff_5epochs")
    tr.initialize()
    assert tr.num_warmup_epochs == 1
    plain = _plain_checkpoint(tr, tmp_path / "plain.pth")
    load_pretrained_weights(tr.network, str(tmp_path / "plain.pth"))  # exactly what -pretrained_weights does
    seg = tr.hidiff.segmentor.state_dict()
    for k, v in plain.items():
        assert torch.equal(seg[k], v) != (".seg_layers." in k), k
    assert tr.num_warmup_epochs == 1


def test_pretrained_segmentor_loads_everything_and_skips_warmup(nnunet_paths, tmp_path, monkeypatch):
    tr = make_trainer("nnUNetTrainerHiDiff_5epochs")
    plain = _plain_checkpoint(tr, tmp_path / f"plain_fold{tr.fold}.pth")
    # "{fold}" is replaced by the trainer's fold: one setting serves a whole cross-validation
    monkeypatch.setenv("nnUNet_HiDiff_pretrained_segmentor", str(tmp_path / "plain_fold{fold}.pth"))
    tr.initialize()
    seg = tr.hidiff.segmentor.state_dict()
    assert all(torch.equal(seg[k], v) for k, v in plain.items())
    assert tr.num_warmup_epochs == 0
    # the fold record names the checkpoint, which is how the benchmark reports a warm start
    from nnunetv2_hidiff.training.fold_record import read_fold_record

    assert read_fold_record(tr.output_folder)["warm_start"] == str(tmp_path / f"plain_fold{tr.fold}.pth")
    monkeypatch.setenv("nnUNet_HiDiff_pretrained_segmentor", str(tmp_path / "missing.pth"))
    with pytest.raises(RuntimeError, match="missing.pth: cannot read the segmentor checkpoint"):
        make_trainer("nnUNetTrainerHiDiff_5epochs").initialize()
    torch.save({"network_weights": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    monkeypatch.setenv("nnUNet_HiDiff_pretrained_segmentor", str(tmp_path / "other.pth"))
    with pytest.raises(RuntimeError, match="other.pth: not a segmentor of this plan"):
        make_trainer("nnUNetTrainerHiDiff_5epochs").initialize()


def test_baseline_warm_control_loads_the_whole_network_and_records_it(nnunet_paths, tmp_path, monkeypatch):
    """nnUNetTrainerBaseline_cpuWarm500 (the budget control of the HiDiff warm runs) starts from the whole network
    in nnUNet_HiDiff_pretrained_segmentor and records it in the fold record; plain Baseline trainers ignore it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_hidiff.training.fold_record import read_fold_record

    tr = make_trainer("nnUNetTrainerBaseline_cpuWarm500")
    plain = _plain_checkpoint(tr, tmp_path / f"plain_fold{tr.fold}.pth")
    monkeypatch.setenv("nnUNet_HiDiff_pretrained_segmentor", str(tmp_path / "plain_fold{fold}.pth"))
    tr.initialize()
    weights = tr.network.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in plain.items())  # the segmentation heads too
    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: None)  # no data loaders here
    tr.on_train_start()
    record = read_fold_record(tr.output_folder)
    assert record["warm_start"] == str(tmp_path / f"plain_fold{tr.fold}.pth")
    assert record["kind"] == "baseline" and record["budget"]["epochs"] == 20

    other = make_trainer("nnUNetTrainerBaseline_smoke")
    other.initialize()
    assert other.warm_start_source is None
    assert not all(torch.equal(other.network.state_dict()[k], v) for k, v in plain.items())

    monkeypatch.setenv("nnUNet_HiDiff_pretrained_segmentor", str(tmp_path / "missing.pth"))
    with pytest.raises(RuntimeError, match="missing.pth: cannot read the segmentor checkpoint"):
        make_trainer("nnUNetTrainerBaseline_cpuWarm500").initialize()


@pytest.mark.parametrize("change, message", [
    ("ignore", "ignore label"),
    ("regions", "region-based"),
])
def test_unsupported_label_setups_are_refused(nnunet_paths, change, message):
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2_hidiff.training import nnUNetTrainerHiDiff_smoke

    pre = os.path.join(os.environ["nnUNet_preprocessed"], maybe_convert_to_dataset_name(990))
    plans = dict(json.load(open(os.path.join(pre, "nnUNetPlans.json"))), continue_training=False)
    dataset = json.load(open(os.path.join(pre, "dataset.json")))
    if change == "ignore":
        dataset["labels"]["ignore"] = 3
    else:
        dataset["labels"] = {"background": 0, "ab": [1, 2], "b": 2}
        dataset["regions_class_order"] = [1, 2]
    results = Path(os.environ["nnUNet_results"])
    fold = results / "Dataset990_Tiny" / "nnUNetTrainerHiDiff_smoke__nnUNetPlans__2d" / "fold_0"
    logs_before = sorted(fold.glob("training_log_*.txt"))
    with pytest.raises(RuntimeError, match=message):
        nnUNetTrainerHiDiff_smoke(plans, "2d", 0, dataset, torch.device("cpu"))
    assert sorted(fold.glob("training_log_*.txt")) == logs_before  # refused before nnU-Net writes anything


def test_3d_configuration_is_refused(nnunet_paths):
    with pytest.raises(RuntimeError, match="supports 2d configurations only"):
        make_trainer(configuration="3d_fullres")
    # refused before nnU-Net's __init__ creates the output folder
    assert not (Path(os.environ["nnUNet_results"]) / "Dataset990_Tiny"
                / "nnUNetTrainerHiDiff_smoke__nnUNetPlans__3d_fullres").exists()


@pytest.mark.parametrize("name, budget", [("nnUNetTrainerBaseline_cpuBench", (6, 25, 5)),
                                          ("nnUNetTrainerHiDiff_cpuBench", (6, 25, 5)),
                                          ("nnUNetTrainerHiDiff_real_cpuBench", (6, 25, 5)),
                                          ("nnUNetTrainerBaseline_cpu400", (16, 25, 5)),
                                          ("nnUNetTrainerHiDiff_cpuWarm100", (4, 25, 5)),
                                          ("nnUNetTrainerHiDiff_real_cpuWarm100", (4, 25, 5)),
                                          ("nnUNetTrainerBaseline_cpu1750", (70, 25, 5)),
                                          ("nnUNetTrainerBaseline_cpuWarm700", (28, 25, 5)),
                                          ("nnUNetTrainerBaseline_5epochs", (5, 250, 50))])
def test_benchmark_variants_budget_and_mirroring(nnunet_paths, name, budget):
    """The CPU benchmark trainers: equal budgets, and no mirroring TTA in validation for all of them
    (HiDiff and Baseline alike), while the other variants keep nnU-Net's mirroring."""
    tr = make_trainer(name)
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == budget
    tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    if "_cpu" in name:
        assert tr.inference_allowed_mirroring_axes is None
    else:
        assert tr.inference_allowed_mirroring_axes == (0, 1)
    if "HiDiff" in name:
        assert tr.inference_steps == 5
        assert tr.num_warmup_epochs == (0 if "Warm" in name else 1)


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_joint_step_updates_both_networks_with_one_refiner_pass(nnunet_paths):
    tr = make_trainer("nnUNetTrainerHiDiff_joint_smoke")
    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    calls = _count_calls(tr.hidiff.refiner)
    seg0, ref0 = snapshot(tr.hidiff.segmentor), snapshot(tr.hidiff.refiner)
    ema0 = {k: v.clone() for k, v in tr.refiner_ema.shadow.items()}
    out = tr.train_step(make_batch(tr, seed=4))
    assert len(calls) == 1 and out["skipped"] == 0
    assert all(torch.isfinite(torch.tensor(out[k])) for k in ("loss", "refiner_loss", "refiner_kl", "refiner_focal"))
    ref_params = {n for n, _ in tr.hidiff.refiner.named_parameters()}
    assert changed(seg0, tr.hidiff.segmentor) and ref_params & changed(ref0, tr.hidiff.refiner)
    assert any(not torch.equal(ema0[k], tr.refiner_ema.shadow[k]) for k in ref_params)
    calls.clear()
    tr.joint_step = False  # Algorithm 1: the refiner runs twice (refiner step, then frozen in the segmentor step)
    tr.train_step(make_batch(tr, seed=5))
    assert len(calls) == 2


def test_disc_only_segmentor_step_runs_no_refiner_and_still_trains_both(nnunet_paths):
    """λ_diff = 0 with alternate steps (the ``_discOnly`` variant): the segmentor trains on L_disc alone, as plain
    nnU-Net, so the refiner runs once per iteration (its own step) and both networks still learn."""
    tr = make_trainer("nnUNetTrainerHiDiff_joint_smoke")
    tr.joint_step, tr.lambda_diff = False, 0.0
    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    calls = _count_calls(tr.hidiff.refiner)
    seg0, ref0 = snapshot(tr.hidiff.segmentor), snapshot(tr.hidiff.refiner)
    out = tr.train_step(make_batch(tr, seed=6))
    assert len(calls) == 1 and out["skipped"] == 0 and torch.isfinite(torch.tensor(out["refiner_loss"]))
    ref_params = {n for n, _ in tr.hidiff.refiner.named_parameters()}
    assert changed(seg0, tr.hidiff.segmentor) and ref_params & changed(ref0, tr.hidiff.refiner)
    from nnunetv2_hidiff.experiments import nnUNetTrainerHiDiff_w8_res_tT_discOnly_cpuWarm500 as v
    assert (v.joint_step, v.lambda_diff, v.min_train_timestep) == (False, 0.0, 10)


def _joint_smoke_trainer(**attributes):
    """An initialized joint-step smoke trainer (seed 0) with ``attributes`` set before initialize, in train mode."""
    torch.manual_seed(0)
    tr = make_trainer("nnUNetTrainerHiDiff_joint_smoke")
    for name, value in attributes.items():
        setattr(tr, name, value)
    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    return tr


def test_intermediate_lambda_diff_joint_step_reports_the_weighted_loss(nnunet_paths):
    """The ``_lambdaDiff03`` variant: the t = T refiner with the joint step at λ_diff = 0.3. One step trains both
    networks, and the reported loss is L_disc + 0.3·L_diff, so L_diff enters the segmentor's loss at that weight."""
    from nnunetv2_hidiff.experiments import nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_lambdaDiff03_cpuWarm500 as v
    assert (v.joint_step, v.lambda_diff, v.min_train_timestep, v.inference_steps) == (True, 0.3, 10, 1)
    losses = {}
    for lam in (0.3, 1.0):
        tr = _joint_smoke_trainer(lambda_diff=lam)
        seg0 = snapshot(tr.hidiff.segmentor)
        torch.manual_seed(1)
        losses[lam] = tr.train_step(make_batch(tr, seed=7))
        assert losses[lam]["skipped"] == 0 and changed(seg0, tr.hidiff.segmentor)
    # same initialisation, batch and noise: L_disc = loss - λ·L_diff is the same for both weights
    l_disc = {lam: o["loss"] - lam * o["refiner_loss"] for lam, o in losses.items()}
    assert losses[0.3]["refiner_loss"] == pytest.approx(losses[1.0]["refiner_loss"], rel=1e-5)
    assert l_disc[0.3] == pytest.approx(l_disc[1.0], rel=1e-5, abs=1e-6)
    assert losses[0.3]["loss"] < losses[1.0]["loss"]


def test_boundary_weight_changes_only_the_diffusion_term_of_a_joint_step(nnunet_paths):
    """The ``_boundary4`` variant: L_diff weighs y0's boundary band 5×. Same initialisation, batch and noise: the
    reported L_diff differs from the unweighted one, L_disc does not, and both networks still train."""
    from nnunetv2_hidiff.training.common import start_message
    from nnunetv2_hidiff.experiments import nnUNetTrainerHiDiff_w8_joint_bce1_res_boundary4_cpuWarm500 as v
    assert (v.boundary_weight, v.inference_steps, tuple(v.decision_extra_steps)) == (4.0, 1, ())
    losses = {}
    for beta in (0.0, 4.0):
        tr = _joint_smoke_trainer(boundary_weight=beta)
        seg0, ref0 = snapshot(tr.hidiff.segmentor), snapshot(tr.hidiff.refiner)
        batch = make_batch(tr, seed=7)  # random labels put every pixel on a boundary: use one block per image
        block = torch.zeros_like(batch["target"][0])
        h, w = block.shape[-2:]
        block[..., h // 4:h // 2, w // 4:w // 2] = 1
        batch["target"] = [F.interpolate(block, size=tg.shape[-2:], mode="nearest") for tg in batch["target"]]
        torch.manual_seed(1)
        losses[beta] = tr.train_step(batch)
        assert losses[beta]["skipped"] == 0 and changed(seg0, tr.hidiff.segmentor) and changed(ref0, tr.hidiff.refiner)
        assert f"boundary weight={beta}" in start_message(tr)
    l_disc = {beta: o["loss"] - o["refiner_loss"] for beta, o in losses.items()}  # λ_diff = 1
    assert l_disc[0.0] == pytest.approx(l_disc[4.0], rel=1e-5, abs=1e-6)
    assert losses[0.0]["refiner_loss"] != pytest.approx(losses[4.0]["refiner_loss"], rel=1e-3)


@pytest.mark.parametrize("name", ["nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_cpuWarm500",
                                  "nnUNetTrainerHiDiff_w8_res_tT_discOnly_cpuWarm500",
                                  "nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_lambdaDiff03_cpuWarm500"])
def test_t_equals_T_variants_predict_and_decide_at_one_step(nnunet_paths, name):
    """A refiner trained only at t = T never saw t < T: the _tT_ variants predict with 1 step, and their validation
    decides among the segmentor and the 1-step outputs only."""
    tr = make_trainer(name)
    assert tr.min_train_timestep == tr.num_diffusion_steps and tuple(tr.decision_extra_steps) == ()
    net = type(tr).build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                              tr.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    assert net.num_inference_steps == 1


@pytest.mark.parametrize("name, t_low", [("nnUNetTrainerHiDiff_w8_joint_bce1_res_tT_gated_cpuWarm500", 10),
                                         ("nnUNetTrainerHiDiff_w8_joint_bce1_res_gated_cpuWarm500", 1)])
def test_gated_variants_decide_among_distinct_valid_gates_at_one_step(nnunet_paths, name, t_low):
    """The gated variants: distinct, valid gates (each becomes a validation run), tried on the 1-step output only;
    the uniform-t one trains at every t, the _tT_ one at t = T."""
    from nnunetv2_hidiff.networks.combine import check_gate, gate_name

    tr = make_trainer(name)
    names = [gate_name(check_gate(g)) for g in tr.decision_gates]
    assert len(names) >= 6 and len(set(names)) == len(names)
    assert tuple(tr.decision_extra_steps) == () and tr.min_train_timestep == t_low
    net = type(tr).build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                              tr.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    assert net.num_inference_steps == 1 and net.refiner.prior_residual


DEFAULT_KEYS = ("refiner_width", "joint_step", "lambda_bce", "prior_residual", "inference_steps", "binary_refiner")


def test_default_is_the_measured_configuration_and_paper_keeps_the_papers(nnunet_paths):
    """nnUNetTrainerHiDiff = the configuration measured on 901 (issue 14: width 8, joint step, BCE share, residual
    head, 1 step); _paper = the paper's; variants named before the switch keep the configuration of their name."""
    from nnunetv2_hidiff.trainer_lookup import all_trainers

    v = all_trainers()
    tr = make_trainer("nnUNetTrainerHiDiff")
    assert tuple(getattr(tr, k) for k in DEFAULT_KEYS) == (8, True, 1.0, True, 1, True)
    measured = v["nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500"]
    assert all(getattr(measured, k) == getattr(tr, k) for k in DEFAULT_KEYS if k != "inference_steps")
    paper = v["nnUNetTrainerHiDiff_paper"]
    assert tuple(getattr(paper, k) for k in DEFAULT_KEYS) == (32, False, 0.0, False, None, True)
    for name in ("real", "w8", "joint", "V5", "cpuBench", "cpuWarm500", "smoke"):
        cls = v[f"nnUNetTrainerHiDiff_{name}"]
        assert issubclass(cls, paper) and cls.lambda_bce == 0.0 and not cls.prior_residual
    assert v["nnUNetTrainerHiDiff_joint_bce1_res_cpuWarm500"].refiner_width == 32
    for name in ("demo", "cpu"):  # the demo's pipeline check and the CPU product trainer: the default's configuration
        cls = v[f"nnUNetTrainerHiDiff_{name}"]
        assert tuple(getattr(cls, k) for k in DEFAULT_KEYS) == (8, True, 1.0, True, 1, True)
    twin = v["nnUNetTrainerHiDiff_realRefiner"]  # the default's real-valued twin
    assert tuple(getattr(twin, k) for k in DEFAULT_KEYS) == (8, True, 1.0, True, 1, False)

    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    tr.num_warmup_epochs = 0  # nnU-Net's 1000 epochs: 160 of segmentor warm-up otherwise
    calls = _count_calls(tr.hidiff.refiner)
    out = tr.train_step(make_batch(tr, seed=6))
    assert len(calls) == 1 and out["skipped"] == 0 and torch.isfinite(torch.tensor(out["refiner_loss"]))
    net = type(tr).build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                              tr.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    assert net.num_inference_steps == 1 and net.refiner.prior_residual
    net.load_state_dict(tr.hidiff.state_dict())  # strict, as nnU-Net's predictor loads it
    net.eval()
    with torch.no_grad():
        x = make_batch(tr, seed=7)["data"][:1]
        assert net(x).shape == (1, tr.label_manager.num_segmentation_heads, *x.shape[2:])
    paper = v["nnUNetTrainerHiDiff_paper"].build_network_architecture(
        tr.plans_manager, tr.configuration_manager, 1, tr.label_manager.num_segmentation_heads, False)
    with pytest.raises(RuntimeError, match="trained with another refiner configuration: refiner.*nnUNetTrainerHiDiff_paper"):
        paper.load_state_dict(tr.hidiff.state_dict())


def test_segmentor_trains_with_nnunets_sgd_by_default_and_adamw_as_a_variant(nnunet_paths):
    tr = make_trainer("nnUNetTrainerHiDiff_smoke")
    tr.initialize()
    sgd = tr.optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.99
    assert sgd.defaults["lr"] == 1e-2 and sgd.defaults["weight_decay"] == 3e-5
    assert {id(p) for p in sgd.param_groups[0]["params"]} == {id(p) for p in tr.hidiff.segmentor.parameters()}
    assert isinstance(tr.refiner_optimizer, torch.optim.AdamW) and tr.refiner_optimizer.defaults["lr"] == 1e-4
    from nnunetv2_hidiff.experiments import nnUNetTrainerHiDiff_adamw

    assert nnUNetTrainerHiDiff_adamw.segmentor_optimizer == "adamw"
    tr = make_trainer("nnUNetTrainerHiDiff_adamw")
    tr.initialize()
    assert isinstance(tr.optimizer, torch.optim.AdamW) and tr.optimizer.defaults["lr"] == 1e-4


def test_perturbed_prior_is_less_confident_and_differentiable():
    from nnunetv2_hidiff.training.common import perturbed_prior

    logits = (torch.randn(4, 3, 8, 6) * 4).requires_grad_(True)
    plain = perturbed_prior(logits)
    torch.testing.assert_close(plain, torch.softmax(logits, 1))
    g = torch.Generator().manual_seed(0)
    soft = perturbed_prior(logits, temperature_max=3.0, generator=g)
    assert soft.max(1).values.mean() < plain.max(1).values.mean()  # flatter: higher temperature
    noisy = perturbed_prior(logits, logit_noise=1.0, generator=g)
    assert not torch.allclose(noisy, plain) and torch.allclose(noisy.sum(1), torch.ones(4, 8, 6))
    (soft.sum() + (noisy * torch.randn_like(noisy)).sum()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_pseudo_dice_is_the_segmentors_in_every_epoch(trainer):
    """checkpoint_best is chosen on one output throughout: the segmentor's (no refiner call in validation_step)."""
    from nnunetv2_hidiff.training.common import pseudo_dice_counts

    calls = _count_calls(trainer.hidiff.refiner)
    trainer.hidiff.eval()
    batch = make_batch(trainer, seed=6)
    out = trainer.validation_step(batch)
    assert calls == []
    with torch.no_grad():
        logits = trainer.hidiff.top_logits(trainer.hidiff.segment(batch["data"]).logits)
    expected = pseudo_dice_counts(logits, batch["target"][0])
    for key in ("tp_hard", "fp_hard", "fn_hard"):
        assert (out[key] == expected[key]).all()


@pytest.mark.parametrize("name, budget, warmup", [("nnUNetTrainerHiDiff_cpuWarm500", (20, 25, 5), 0),
                                                  ("nnUNetTrainerHiDiff_real_cpuWarm500", (20, 25, 5), 0),
                                                  ("nnUNetTrainerHiDiff_cpu1750", (70, 25, 5), 11),
                                                  ("nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500", (20, 25, 5), 0),
                                                  ("nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm2000", (80, 25, 5), 0),
                                                  ("nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500", (20, 25, 5), 0),
                                                  ("nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750", (70, 25, 5), 11),
                                                  ("nnUNetTrainerHiDiff_joint_bce1_res_cpuWarm500", (20, 25, 5), 0)])
def test_issue12_protocol_variants(nnunet_paths, name, budget, warmup):
    tr = make_trainer(name)
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == budget
    assert tr.num_warmup_epochs == warmup and tr.inference_steps is None
    residual = "_res_" in name  # the prior-residual head is part of the checkpoint's HiDiff configuration
    assert tr.hidiff_config().get("prior_residual", False) is residual
    net = type(tr).build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                              tr.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    assert net.refiner.prior_residual is residual
    assert tr.refiner_width == (8 if "_w8_" in name else 32)
    tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert tr.inference_allowed_mirroring_axes is None


def test_compiled_network_writes_clean_checkpoints_that_load_strictly(nnunet_paths, tmp_path, monkeypatch):
    """nnU-Net compiles the network when _do_i_compile() is True (its CUDA default). Forced here on CPU: the
    checkpoint keys carry no "_orig_mod." prefix, a fresh uncompiled network (what nnUNetv2_predict builds) loads
    them strictly, --c loads them, and prefixed keys of older GPU checkpoints are accepted too."""
    from nnunetv2_hidiff.training import nnUNetTrainerHiDiff_smoke

    monkeypatch.setattr(nnUNetTrainerHiDiff_smoke, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(nnUNetTrainerHiDiff_smoke, "compile_backend", "eager")
    tr = make_trainer("nnUNetTrainerHiDiff_smoke")
    tr.initialize()
    assert type(tr.hidiff).__name__ == "HiDiffNetwork"
    tr.on_train_start()
    tr.train_step(make_batch(tr, seed=7))  # through the in-place compiled encoder/decoder (eager backend)
    ckpt = str(tmp_path / "checkpoint_final.pth")
    tr.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert not any(k.startswith("_orig_mod.") for k in saved["network_weights"])
    fresh = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                          tr.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    fresh.load_state_dict(saved["network_weights"])  # strict, as nnU-Net's predictor loads
    saved["network_weights"] = {f"_orig_mod.{k}": v for k, v in saved["network_weights"].items()}
    monkeypatch.setattr(nnUNetTrainerHiDiff_smoke, "_do_i_compile", lambda self: False)
    other = make_trainer("nnUNetTrainerHiDiff_smoke")
    other.load_checkpoint(saved)
    loaded = other.hidiff.state_dict()
    for k, v in fresh.state_dict().items():  # network_weights carry the EMA refiner, --c restores the raw one
        if not torch.is_tensor(v):
            continue
        expected = saved["hidiff"]["refiner_weights"][k[len("refiner."):]] if k.startswith("refiner.") else v
        assert torch.equal(loaded[k], expected), k


def test_min_train_timestep_restricts_the_training_timesteps(trainer):
    """``min_train_timestep`` = T (the ``_tT`` variants): every training sample is at t = T, the step the 1-step
    sampler runs; the default draws the whole range 1..T."""
    batch = make_batch(trainer, seed=4)
    T = trainer.hidiff.diffusion.num_steps
    drawn = torch.cat([trainer.prepare_diffusion(batch["data"], batch["target"])["t"] for _ in range(8)])
    assert drawn.min() >= 1 and drawn.max() <= T and len(drawn.unique()) > 1
    try:
        trainer.min_train_timestep = T
        drawn = torch.cat([trainer.prepare_diffusion(batch["data"], batch["target"])["t"] for _ in range(4)])
        assert (drawn == T).all()
        trainer.min_train_timestep = T + 1
        with pytest.raises(ValueError, match="lowest training timestep"):
            trainer.prepare_diffusion(batch["data"], batch["target"])
    finally:
        del trainer.min_train_timestep  # back to the class attribute
