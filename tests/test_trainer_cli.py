"""End to end through nnU-Net's own command-line entry points: train, kill and --c, predict, and the other
commands the README promises with a HiDiff trainer: -f all, --val, --val_best, --npz, nnUNetv2_ensemble and
nnUNetv2_find_best_configuration's ensembling of HiDiff with a plain nnU-Net (the last tests re-validate fold 0,
so they come last)."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tiny_dataset import BIN, nnunet_env, run_cli

TRAINER_DIR = "nnUNetTrainerHiDiff_smoke__nnUNetPlans__2d"
HIDIFF, PLAIN = "nnUNetTrainerHiDiff_smoke", "nnUNetTrainerBaseline_smoke"


@pytest.fixture(scope="module")
def trained(tiny_nnunet):
    """One smoke training of fold 0 with the real nnUNetv2_train."""
    env = nnunet_env(tiny_nnunet)
    proc = run_cli("nnUNetv2_train", ["990", "2d", "0", "-tr", "nnUNetTrainerHiDiff_smoke", "-device", "cpu"], env)
    return tiny_nnunet, env, proc


def test_smoke_training_writes_checkpoint_validation_and_progress(trained):
    root, _, proc = trained
    fold = root / "results" / "Dataset990_Tiny" / TRAINER_DIR / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert not (fold / "checkpoint_latest.pth").exists()  # nnU-Net removes it after the final one
    assert (fold / "progress.png").stat().st_size > 10_000
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    assert "HD95" in summary["foreground_mean"] and "hidiff_nan_ratio" in summary  # our metrics were added
    logs = list(fold.glob("training_log_*.txt"))
    assert len(logs) == 1, logs  # no other test wrote into this fold before the training
    log = logs[0].read_text()
    assert "refiner L_diff" in log and "HiDiff:" in log


def test_validation_keeps_both_outputs_and_stores_the_decision(trained):
    """Segmentor alone and refined are validated into their own folders; validation/ holds the decided one; the
    decision is in the fold record and in checkpoint_final.pth (so nnUNetv2_predict follows it)."""
    import torch

    from nnunetv2_hidiff.training.fold_record import read_fold_record

    root, _, _ = trained
    fold = root / "results" / "Dataset990_Tiny" / TRAINER_DIR / "fold_0"
    summaries = {name: json.loads((fold / name / "summary.json").read_text())
                 for name in ("validation", "validation_refined", "validation_segmentor", "validation_refined_1steps",
                              "validation_combined", "validation_combined_1steps", "validation_union",
                              "validation_union_1steps", "validation_gated_a500_r800",
                              "validation_gated_a500_r800_1steps")}
    assert all("HD95" in s["foreground_mean"] for s in summaries.values())
    record = read_fold_record(fold)
    assert record["trainer"] == "nnUNetTrainerHiDiff_smoke" and record["kind"] == "hidiff"
    assert record["budget"] == {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
                                "warmup_epochs": 0, "batch_size": 2}
    assert record["warm_start"] is None and record["seconds_per_iteration"] > 0
    for output, folder in (("segmentor", "validation_segmentor"), ("refined", "validation_refined")):
        entry = record["validation"][output]
        assert entry["folder"] == folder and entry["cases"] == len(summaries[folder]["metric_per_case"])
        assert entry["dice"] == summaries[folder]["foreground_mean"]["Dice"] and entry["seconds_per_case"] > 0
    decision = record["decision"]
    assert decision["checkpoint"] == "checkpoint_final.pth"
    folders = {"none": "validation_refined", "new_components": "validation_combined", "union": "validation_union",
               "gated": "validation_gated_a500_r800"}
    chosen = ("validation_segmentor" if not decision["refine"] else
              folders[decision["combine"]] + ("" if decision["steps"] == 2 else f"_{decision['steps']}steps"))
    assert summaries["validation"]["foreground_mean"] == summaries[chosen]["foreground_mean"]
    assert record["validation"]["refined_1steps"]["folder"] == "validation_refined_1steps"  # decision_extra_steps
    assert record["validation"]["combined_1steps"]["combine"] == "new_components"  # decision_combine
    assert record["validation"]["union"]["combine"] == "union"
    gated = record["validation"]["gated_a500_r800_1steps"]  # decision_gates
    assert gated["combine"] == "gated" and gated["gate"] == [0.5, 0.8] and gated["steps"] == 1
    assert gated["folder"] == "validation_gated_a500_r800_1steps"
    assert summaries[gated["folder"]]["foreground_mean"]["Dice"] == gated["dice"]
    # segmentor alone; 2 steps (the default) and 1 step, each refined, in both combinations with the segmentor
    # and gated
    assert len(decision["candidates"]) == 9
    assert ("gate" in decision) == (decision["refine"] and decision["combine"] == "gated")
    stored = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]["_extra_state"]
    assert _same_output(stored["decision"], decision)
    assert stored["decision"]["samples"] == 1 and stored["decision"]["transition"] == "renoise"
    assert stored["config"]["refiner_width"] == 8 and stored["trainer"] == HIDIFF


def _same_output(stored: dict, decision: dict) -> bool:
    """A decision stored in a checkpoint names the output the fold record's decision names."""
    from nnunetv2_hidiff.training.fold_record import output_key

    return output_key(stored) == output_key(decision) and (not decision["refine"] or all(
        stored[k] is not None for k in ("steps", "transition", "samples", "seed")))


def _decision(combine=None, gate=None):
    """A stored decision: the segmentor alone (combine None), else refinement at the smoke trainer's 2 steps."""
    if combine is None:
        return {"refine": False}
    return {"refine": True, "steps": 2, "combine": combine, "gate": gate, "transition": "renoise", "samples": 1,
            "seed": 0}


# a stored decision, the environment that forces the same output, one that forces another output
DECISION_MODES = [(_decision(), {"nnUNet_HiDiff_refine": "0"}, {"nnUNet_HiDiff_refine": "1"}),
                  (_decision("none"), {"nnUNet_HiDiff_refine": "1"}, {"nnUNet_HiDiff_refine": "0"}),
                  (_decision("new_components"), {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_combine": "new_components"},
                   {"nnUNet_HiDiff_refine": "1"}),
                  (_decision("union"), {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_combine": "union"},
                   {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_combine": "new_components"}),
                  (_decision("average"), {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_combine": "average"},
                   {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_combine": "union"}),
                  # gate (0, 0): every refined label that differs, on the segmentor's probabilities where both agree
                  (_decision("gated", [0, 0]), {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_combine": "gated",
                                                "nnUNet_HiDiff_gate": "0,0"},
                   {"nnUNet_HiDiff_refine": "1"})]


def _predict_decisions_cli(model, images, out, env) -> None:
    run_cli("nnUNetv2_predict_from_modelfolder", ["-i", images, "-m", model, "-f", "0", "-device", "cpu",
                                                  "--disable_tta", "-npp", "1", "-nps", "1", "--save_probabilities",
                                                  "-o", out], env)


@pytest.fixture(scope="module")
def forced_predictions(trained, tmp_path_factory):
    """The output of every forced setting in DECISION_MODES, predicted once from a copy of the fold whose
    checkpoint says "segmentor alone": a forced setting does not depend on the stored decision."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from nnunetv2_hidiff.training.validation import write_decision_into_checkpoint

    root, env, _ = trained
    tmp = tmp_path_factory.mktemp("forced")
    model = tmp / "model"
    shutil.copytree(root / "results" / "Dataset990_Tiny" / TRAINER_DIR, model)
    write_decision_into_checkpoint(str(model / "fold_0" / "checkpoint_final.pth"), _decision())
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    settings = {json.dumps(forced, sort_keys=True): forced for _, forced, _ in DECISION_MODES}
    outputs = {key: tmp / f"forced_{i}" for i, key in enumerate(settings)}
    with ThreadPoolExecutor(2) as pool:  # separate processes; two at a time keeps the suite short
        list(pool.map(lambda key: _predict_decisions_cli(model, images, outputs[key], dict(env, **settings[key])),
                      settings))
    return lambda setting: outputs[json.dumps(setting, sort_keys=True)]


@pytest.mark.parametrize("decision,forced,other", DECISION_MODES)
def test_prediction_follows_the_stored_decision_unless_forced(trained, forced_predictions, tmp_path, decision, forced,
                                                              other):
    """A fold whose checkpoint says "segmentor alone" (or "refine", or "segmentor + new refined components")
    predicts exactly what the forced setting predicts; forcing another setting changes the output."""
    import shutil

    from nnunetv2_hidiff.training.validation import write_decision_into_checkpoint

    root, env, _ = trained
    model = tmp_path / "model"
    shutil.copytree(root / "results" / "Dataset990_Tiny" / TRAINER_DIR, model)
    write_decision_into_checkpoint(str(model / "fold_0" / "checkpoint_final.pth"), decision)
    _predict_decisions_cli(model, root / "raw" / "Dataset990_Tiny" / "imagesTs", tmp_path / "decided", env)
    npzs = sorted((tmp_path / "decided").glob("*.npz"))
    assert npzs
    for npz in npzs:
        decided = np.load(npz)["probabilities"]
        np.testing.assert_array_equal(decided, np.load(forced_predictions(forced) / npz.name)["probabilities"])
        assert not np.array_equal(decided, np.load(forced_predictions(other) / npz.name)["probabilities"])


def test_export_writes_a_small_prediction_only_fold_that_predicts_like_the_original(trained, tmp_path):
    """nnunetv2_hidiff_export: float16 weights, no training state; they load strictly into the network nnU-Net's
    predictor builds and give the original's output up to float16 rounding; nnUNetv2_predict_from_modelfolder
    predicts with the exported folder; a missing fold is one clear error."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_hidiff.training.variants import nnUNetTrainerHiDiff_smoke

    root, env, _ = trained
    model = root / "results" / "Dataset990_Tiny" / TRAINER_DIR
    out = tmp_path / "exported"
    run_cli("nnunetv2_hidiff_export", ["-i", model, "-f", "0", "-o", out], env)
    original = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    slim = torch.load(out / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert set(slim) == {"trainer_name", "init_args", "inference_allowed_mirroring_axes", "network_weights",
                         "exported_by"}
    assert slim["network_weights"]["_extra_state"] == original["network_weights"]["_extra_state"]
    assert all(v.dtype == torch.float16 for v in slim["network_weights"].values()
               if torch.is_tensor(v) and torch.is_floating_point(v))
    assert (out / "fold_0" / "checkpoint_final.pth").stat().st_size < \
        (model / "fold_0" / "checkpoint_final.pth").stat().st_size / 3
    assert (out / "plans.json").is_file() and (out / "fold_0" / "hidiff_fold.json").is_file()

    pm = PlansManager(str(out / "plans.json"))
    nets = []
    for weights in (original["network_weights"], slim["network_weights"]):
        net = nnUNetTrainerHiDiff_smoke.build_network_architecture(pm, pm.get_configuration("2d"), 1, 3,
                                                                   enable_deep_supervision=False)
        net.load_state_dict(weights)  # strict, as the predictor loads
        nets.append(net.eval())
    x = torch.randn(1, 1, *pm.get_configuration("2d").patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for net in nets:
            net.refine = False
        torch.testing.assert_close(nets[1](x), nets[0](x), rtol=0.02, atol=0.02)

    # --packed: 1 bit per binary weight (+ a float32 scale per output channel); with --fp32 the refined output is
    # the original's up to float rounding, since sign(W)·mean|W| is all a binary layer uses
    packed = tmp_path / "packed"
    run_cli("nnunetv2_hidiff_export", ["-i", model, "-f", "0", "-o", packed, "--packed", "--fp32"], env)
    one_bit = torch.load(packed / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    bits = [k for k in one_bit if k.endswith(".weight_bits")]
    assert bits and all(k.startswith("refiner.") and one_bit[k].dtype == torch.uint8 for k in bits)
    assert not any(k[:-len("_bits")] in one_bit for k in bits)
    net = nnUNetTrainerHiDiff_smoke.build_network_architecture(pm, pm.get_configuration("2d"), 1, 3,
                                                               enable_deep_supervision=False)
    net.load_state_dict(one_bit)  # strict, as the predictor loads
    with torch.no_grad():
        nets[0].refine = net.refine = True
        torch.testing.assert_close(net.eval()(x), nets[0](x), rtol=1e-4, atol=1e-4)
        assert not torch.equal(nets[0](x), nets[0].segmentor(x))  # the refinement did run

    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    run_cli("nnUNetv2_predict_from_modelfolder", ["-i", images, "-o", tmp_path / "pred", "-m", packed, "-f", "0",
                                                  "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    _check_predictions(tmp_path / "pred", images)
    from nnunetv2_hidiff.cli.export import ExportError, prediction_network
    for name in ("nnUNetTrainer", "nnUNetTrainerHiDiff_real_smoke"):  # nothing binary to pack
        with pytest.raises(ExportError, match=f"--packed needs a binary HiDiff trainer.*{name}"):
            prediction_network(model, {"trainer_name": name, "init_args": {"configuration": "2d"}})
    # an experiment trainer (nnunetv2_hidiff.experiments) is found like a product one: its binary layers pack
    experiment = prediction_network(model, {"trainer_name": "nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500",
                                            "init_args": {"configuration": "2d"}})
    assert experiment.refiner.prior_residual and any("Binary" in type(m).__name__ for m in experiment.modules())
    proc = subprocess.run([str(BIN / "nnunetv2_hidiff_export"), "-i", str(model), "-f", "3", "-o", str(tmp_path / "x")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "fold_3/checkpoint_final.pth: not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def _check_predictions(out_dir, raw_images):
    for img in sorted(raw_images.glob("*_0000.nii.gz")):
        pred = out_dir / img.name.replace("_0000.nii.gz", ".nii.gz")
        assert pred.is_file(), pred
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred)))
        assert seg.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(img))).shape
        assert set(np.unique(seg)) <= {0, 1, 2}


def test_predict_with_refinement_through_nnunet_cli(trained, tmp_path):
    root, env, _ = trained
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    env = dict(env, nnUNet_HiDiff_steps="2", nnUNet_HiDiff_samples="2")
    run_cli("nnUNetv2_predict", ["-i", images, "-o", tmp_path / "refined", "-d", "990", "-c", "2d", "-f", "0",
                                 "-tr", "nnUNetTrainerHiDiff_smoke", "-device", "cpu", "--disable_tta",
                                 "-npp", "1", "-nps", "1"], env)
    _check_predictions(tmp_path / "refined", images)


def test_hidiff_predict_wrapper_options(trained, tmp_path):
    root, env, _ = trained
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    common = ["-i", images, "-d", "990", "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerHiDiff_smoke",
              "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    run_cli("nnunetv2_hidiff_predict", ["--no-refine", "--", "-o", tmp_path / "plain", *common], env)
    _check_predictions(tmp_path / "plain", images)
    bad = subprocess.run([str(BIN / "nnunetv2_hidiff_predict"), "--steps", "0", "--", "-o", tmp_path / "x", *common],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps must be at least 1" in bad.stderr
    bad_gate = subprocess.run([str(BIN / "nnunetv2_hidiff_predict"), "--combine", "gated", "--gate", "0.5", "--",
                               "-o", tmp_path / "x", *common], env=env, capture_output=True, text=True)
    assert bad_gate.returncode == 2 and "--gate='0.5' must be two probabilities" in bad_gate.stderr
    too_many = subprocess.run([str(BIN / "nnUNetv2_predict"), "-o", tmp_path / "y", *common],
                              env=dict(env, nnUNet_HiDiff_steps="11"), capture_output=True, text=True)
    assert too_many.returncode != 0 and "nnUNet_HiDiff_steps=11 must lie in 1..10" in too_many.stderr


def test_kill_and_continue(tiny_nnunet, tmp_path):
    """Kill a 3-epoch training once an epoch checkpoint exists; --c resumes from there and finishes."""
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "three_epochs.py").write_text(
        "from nnunetv2_hidiff.training import nnUNetTrainerHiDiff_smoke\n\n\n"
        "class nnUNetTrainerHiDiff_test3epochs(nnUNetTrainerHiDiff_smoke):\n"
        "    budget_epochs = 3\n")
    env = nnunet_env(tiny_nnunet, ext_trainers=[tmp_path / "ext"])
    args = [str(BIN / "nnUNetv2_train"), "990", "2d", "1", "-tr", "nnUNetTrainerHiDiff_test3epochs", "-device", "cpu"]
    fold = tiny_nnunet / "results" / "Dataset990_Tiny" / "nnUNetTrainerHiDiff_test3epochs__nnUNetPlans__2d" / "fold_1"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (fold / "checkpoint_latest.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (fold / "checkpoint_latest.pth").exists(), "no epoch checkpoint was written before the timeout"
    import torch
    epoch = torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"]
    assert epoch in (1, 2)
    run_cli("nnUNetv2_train", [*args[1:], "--c"], env)
    assert (fold / "checkpoint_final.pth").exists()
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 3
    assert len(final["logging"]["refiner_losses"]) == 3
    logs = sorted(fold.glob("training_log_*.txt"))
    resumed_log = logs[-1].read_text()
    assert f"Epoch {epoch}" in resumed_log and "Epoch 0\n" not in resumed_log


def test_find_best_configuration_uses_the_decided_validation_output(trained):
    """nnU-Net's own model selection reads validation/ (the decided output) of a HiDiff fold, decides
    postprocessing on it and writes its inference instructions naming the HiDiff trainer."""
    root, env, _ = trained
    run_cli("nnUNetv2_find_best_configuration", ["990", "-c", "2d", "-tr", "nnUNetTrainerHiDiff_smoke", "-f", "0",
                                                 "--disable_ensembling", "-np", "1"], env)
    out = root / "results" / "Dataset990_Tiny"
    best = json.loads((out / "inference_information.json").read_text())
    assert best["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == "nnUNetTrainerHiDiff_smoke"
    decided = json.loads((out / TRAINER_DIR / "fold_0" / "validation" / "summary.json").read_text())
    assert best["best_model_or_ensemble"]["result_on_crossval_pre_pp"] == pytest.approx(
        decided["foreground_mean"]["Dice"])
    assert (out / TRAINER_DIR / "crossval_results_folds_0" / "postprocessing.pkl").is_file()


def _folder(results, trainer, fold):
    return results / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"


def test_fold_all_trains_validates_and_predicts(trained, tmp_path):
    root, env, _ = trained
    run_cli("nnUNetv2_train", ["990", "2d", "all", "-tr", HIDIFF, "-device", "cpu"], env)
    fold = _folder(root / "results" / "Dataset990_Tiny", HIDIFF, "all")
    record = json.loads((fold / "hidiff_fold.json").read_text())
    assert record["decision"]["refine"] in (True, False) and (fold / "checkpoint_final.pth").is_file()
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    run_cli("nnUNetv2_predict", ["-i", images, "-o", tmp_path, "-d", "990", "-c", "2d", "-f", "all", "-tr", HIDIFF,
                                 "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    for img in images.glob("*_0000.nii.gz"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / img.name.replace("_0000", ""))))
        assert set(np.unique(seg)) <= {0, 1, 2}


def test_val_with_best_checkpoint_and_npz(trained, tmp_path):
    """--val --val_best --npz: validation only, from checkpoint_best.pth, with probabilities; the decision goes
    into the checkpoint that was validated (checkpoint_best.pth), the record says so, and the pooled decision
    (nnunetv2_hidiff_decide) writes into that checkpoint too."""
    root, env, _ = trained
    fold = _folder(root / "results" / "Dataset990_Tiny", HIDIFF, "0")
    final_before = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    run_cli("nnUNetv2_train", ["990", "2d", "0", "-tr", HIDIFF, "-device", "cpu", "--val", "--val_best", "--npz"], env)
    record = json.loads((fold / "hidiff_fold.json").read_text())
    best = torch.load(fold / "checkpoint_best.pth", weights_only=False)["network_weights"]
    decision = record["decision"]
    assert _same_output(best["_extra_state"]["decision"], decision)
    assert decision["checkpoint"] == "checkpoint_best.pth"
    final_after = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    tensors = [k for k in final_before if torch.is_tensor(final_before[k])]
    assert all(torch.equal(final_before[k], final_after[k]) for k in tensors)  # the same weights, now undecided
    assert final_after["_extra_state"]["decision"] is None
    # the pooled decision of this one fold, on a copy whose checkpoint_best.pth holds another decision
    from nnunetv2_hidiff.cli.decide import main as decide_main

    copy = tmp_path / "model" / "fold_0"
    shutil.copytree(fold, copy)
    checkpoint = torch.load(copy / "checkpoint_best.pth", weights_only=False)
    checkpoint["network_weights"]["_extra_state"]["decision"] = {**_decision("none"), "steps": 7}
    torch.save(checkpoint, copy / "checkpoint_best.pth")
    decide_main(["-i", str(copy.parent), "-f", "0", "--min-dice-gain", "-1"])
    pooled = json.loads((copy / "hidiff_fold.json").read_text())["decision"]
    assert pooled["pooled"]["folds"] == ["fold_0"] and pooled["checkpoint"] == "checkpoint_best.pth"
    written = torch.load(copy / "checkpoint_best.pth", weights_only=False)["network_weights"]
    assert _same_output(written["_extra_state"]["decision"], pooled)
    untouched = torch.load(copy / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert all(torch.equal(final_before[k], untouched[k]) for k in tensors)
    assert untouched["_extra_state"]["decision"] is None
    for name in ("validation", "validation_segmentor", "validation_refined"):
        npz = sorted((fold / name).glob("*.npz"))
        assert npz and all(np.load(f)["probabilities"].shape[0] == 3 for f in npz), name


def test_hidiff_and_plain_nnunet_ensemble(trained, tmp_path):
    """nnUNetv2_ensemble averages the two models' predicted probabilities (nnUNetv2_predict --save_probabilities),
    and nnU-Net's model selection evaluates HiDiff, plain nnU-Net and their ensemble on the validation cases."""
    root, env, _ = trained
    results = root / "results" / "Dataset990_Tiny"
    run_cli("nnUNetv2_train", ["990", "2d", "0", "-tr", PLAIN, "-device", "cpu", "--npz"], env)
    images = root / "raw" / "Dataset990_Tiny" / "imagesTs"
    for trainer in (HIDIFF, PLAIN):
        run_cli("nnUNetv2_predict", ["-i", images, "-o", tmp_path / trainer, "-d", "990", "-c", "2d", "-f", "0",
                                     "-tr", trainer, "-device", "cpu", "--save_probabilities", "-npp", "1",
                                     "-nps", "1"], env)
    run_cli("nnUNetv2_ensemble", ["-i", tmp_path / HIDIFF, tmp_path / PLAIN, "-o", tmp_path / "ensemble",
                                  "-np", "1", "--save_npz"], env)
    cases = sorted(p.name for p in (tmp_path / HIDIFF).glob("*.nii.gz"))
    assert len(cases) == 2 and sorted(p.name for p in (tmp_path / "ensemble").glob("*.nii.gz")) == cases
    for case in cases:
        probabilities = [np.load(tmp_path / d / case.replace(".nii.gz", ".npz"))["probabilities"]
                         for d in (HIDIFF, PLAIN, "ensemble")]
        np.testing.assert_allclose(probabilities[2], (probabilities[0] + probabilities[1]) / 2, atol=1e-3)
    run_cli("nnUNetv2_find_best_configuration", ["990", "-c", "2d", "-tr", HIDIFF, PLAIN, "-f", "0", "-np", "1"], env)
    info = json.loads((results / "inference_information.json").read_text())
    names = list(info["all_results"])
    assert any(n.startswith("ensemble") for n in names), names
    assert any(HIDIFF in n for n in names) and any(PLAIN in n for n in names)
