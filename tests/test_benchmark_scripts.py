"""The fold diagnostics benchmarks/sampler_ablation.py and benchmarks/noise_rates.py on a smoke-trained fold of the
tiny dataset: they run as scripts, write JSON with the expected keys and values in range, and their segmentor
numbers match a recomputation here, independent of the scripts' own code."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tiny_dataset import REPO, nnunet_env, run_cli

# a subclass of the smoke trainer with its own results folder (so this module shares no fold with
# test_trainer_cli.py) and a prior perturbation, which noise_rates.py must report as the trainer's own
TRAINER = "nnUNetTrainerHiDiff_benchsmoke"
TRAINER_SOURCE = (
    "from nnunetv2_hidiff.training import nnUNetTrainerHiDiff_smoke\n\n\n"
    f"class {TRAINER}(nnUNetTrainerHiDiff_smoke):\n"
    "    prior_temperature_max = 2.0\n"
    "    prior_logit_noise = 0.5\n")
PATCH = (40, 32)  # the tiny dataset's 2d patch
K = 3  # background + 2 labels
T = 10  # diffusion steps of the smoke model


@pytest.fixture(scope="module")
def trained(tiny_nnunet, tmp_path_factory):
    """One smoke training of fold 0 with the real nnUNetv2_train."""
    ext = tmp_path_factory.mktemp("bench_ext")
    (ext / "bench_smoke.py").write_text(TRAINER_SOURCE)
    env = nnunet_env(tiny_nnunet, ext_trainers=[ext])
    run_cli("nnUNetv2_train", ["990", "2d", "0", "-tr", TRAINER, "-device", "cpu"], env)
    fold = tiny_nnunet / "results" / "Dataset990_Tiny" / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    return tiny_nnunet, env, fold


def run_script(name: str, args, env: dict, expect_rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode != expect_rc:
        raise AssertionError(f"{name} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def first_val_cases(root, n: int):
    return json.loads((root / "pre" / "Dataset990_Tiny" / "splits_final.json").read_text())[0]["val"][:n]


@pytest.fixture(scope="module")
def recomputed(trained):
    """Segmentor (EMA refiner loaded too) on the first validation case of fold 0, computed here: per-case Dice
    of argmax p, mean |p − y0| per channel, and the package's own refine_prior Dice for 2 steps."""
    import torch

    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunetv2_hidiff.evaluation.metrics import dice

    root, env, fold = trained
    with pytest.MonkeyPatch.context() as mp:  # nnunetv2 reads its paths from the environment when used
        for key, value in env.items():
            if key.startswith("nnUNet"):
                mp.setenv(key, value)
        tr = get_trainer_from_args("990", "2d", 0, TRAINER, "nnUNetPlans", device=torch.device("cpu"))
        tr.load_checkpoint(str(fold / "checkpoint_final.pth"))
        cases = first_val_cases(root, 1)
        ds = tr.dataset_class(tr.preprocessed_dataset_folder, list(cases))
        xs, ys = [], []
        for case in cases:
            data, seg, _, _ = ds.load_case(case)
            data, seg = np.asarray(data[:], dtype=np.float32), np.asarray(seg[:]).astype(np.int64)
            out_d = np.zeros(data.shape[:2] + PATCH, np.float32)
            out_s = np.zeros(seg.shape[:2] + PATCH, np.int64)
            src, dst = [], []
            for n, p in zip(data.shape[2:], PATCH):  # centre crop or pad
                if n >= p:
                    src.append(slice((n - p) // 2, (n - p) // 2 + p)), dst.append(slice(0, p))
                else:
                    src.append(slice(0, n)), dst.append(slice((p - n) // 2, (p - n) // 2 + n))
            out_d[:, :, dst[0], dst[1]] = data[:, :, src[0], src[1]]
            out_s[:, :, dst[0], dst[1]] = seg[:, :, src[0], src[1]]
            xs.append(out_d.transpose(1, 0, 2, 3))
            ys.append(np.maximum(out_s[0], 0))
        x = torch.from_numpy(np.concatenate(xs))
        net = tr.hidiff
        net.eval()
        tr.set_deep_supervision_enabled(False)
        with torch.no_grad(), tr.refiner_ema.applied_to(net.refiner):
            seg = net.segment(x)
            prior = torch.softmax(net.segmentor(x).float(), 1)
            net.num_samples, net.seed, net.transition = 1, 0, "renoise"
            refined = net.refine_prior(x, prior, seg.features, steps=2).argmax(1).numpy()
        pred = prior.argmax(1).numpy()
        y = np.concatenate(ys)
        onehot = np.stack([y == k for k in range(K)], 1)
        result = {"slices": int(x.shape[0]), "cases": cases,
                  "mean_abs_diff_per_class": np.abs(prior.numpy() - onehot).mean((0, 2, 3)).tolist()}
        for name, labels in (("segmentor", pred), ("refined_2_steps", refined)):
            per_class = [dice(labels == c, y == c) for c in (1, 2)]  # one case: the case's Dice is the mean
            result[name] = {"dice_per_class": per_class, "dice": float(np.nanmean(per_class))}
        return result


def close(a, b, tol=1e-9):
    if a is None or b is None:
        return a is None and b is None or (a is None and math.isnan(b)) or (b is None and math.isnan(a))
    return abs(a - b) <= tol


def in_unit(v):
    return v is None or 0.0 <= v <= 1.0


def test_sampler_ablation_json(trained, recomputed, tmp_path):
    root, env, _ = trained
    out = tmp_path / "ablation.json"
    proc = run_script("sampler_ablation.py", ["-d", "990", "-tr", TRAINER, "--folds", "0", "0", "--cases", "1",
                                              "--steps", "2", "1", "--samples", "1", "--threads", "1",
                                              "--json", out], env)
    assert "segmentor alone" in proc.stdout and "ε̂ reliability" in proc.stdout and "mean over folds" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result) == {"settings", "folds", "mean_over_folds"} and len(result["folds"]) == 2
    fold = result["folds"][0]
    assert fold["cases"] == recomputed["cases"] and fold["slices"] == recomputed["slices"]
    assert fold["classes"] == [1, 2] and fold["class_names"] == ["a", "b"] and fold["num_diffusion_steps"] == T

    # the segmentor alone: the same Dice as recomputed here from the same slices
    seg = fold["segmentor"]
    assert all(close(a, b) for a, b in zip(seg["dice_per_class"], recomputed["segmentor"]["dice_per_class"]))
    assert close(seg["dice"], recomputed["segmentor"]["dice"])

    singles = ("segmentor", "start_sample", "one_step_from_argmax")
    for entry in [fold[k] for k in singles] + fold["chains"] + fold["chain_step_average"]:
        assert len(entry["dice_per_class"]) == 2 and all(in_unit(v) for v in entry["dice_per_class"])
        assert in_unit(entry["dice"])
    transitions = ("renoise", "renoise_fresh", "renoise_threshold", "sample", "threshold")
    configs = [(c["transition"], c["steps"], c["samples"]) for c in fold["chains"]]
    assert configs == [(t, s, 1) for t in transitions for s in (2, 1)]
    for c in fold["chains"]:
        assert len(c["trajectory"]) == c["steps"] and all(in_unit(v) for v in c["trajectory"])
        assert close(c["trajectory"][-1], c["dice"])  # the last step's ŷ0 is the final output
    # one step from the same start ends in the same ŷ0 whatever the transition (all chains share the seed)
    one_step = {c["dice"] for c in fold["chains"] if c["steps"] == 1}
    assert len(one_step) == 1
    # the default chain is exactly the package's own reverse chain (HiDiffNetwork.refine_prior, seed 0)
    default_2 = next(c for c in fold["chains"] if c["transition"] == "renoise" and c["steps"] == 2)
    assert close(default_2["dice"], recomputed["refined_2_steps"]["dice"])
    assert [(c["transition"], c["steps"]) for c in fold["chain_step_average"]] == [("renoise", 2), ("renoise", 1)]
    assert close(fold["chain_step_average"][1]["dice"], next(iter(one_step)))  # one step: nothing to average
    # (ŷ0 + p) / 2 of the default chain: one entry per step count, Dice in [0, 1]
    assert [(c["transition"], c["steps"]) for c in fold["prior_mix"]] == [("renoise", 2), ("renoise", 1)]
    assert all(in_unit(c["dice"]) and len(c["dice_per_class"]) == 2 for c in fold["prior_mix"])

    rel = fold["reliability"]
    entries = recomputed["slices"] * K * PATCH[0] * PATCH[1] * T
    assert rel["entries"] == entries and rel["bins"] == [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    counts = rel["groups"]["easy"]["count"] + rel["groups"]["rest"]["count"]
    assert sum(counts) == entries
    assert sum(row[g]["count"] for row in rel["per_t"] for g in ("easy", "rest")) == entries
    assert len(rel["per_t"]) == T and in_unit(rel["easy_share"]) and in_unit(rel["easy_mean_eps_hat"])
    for g in ("easy", "rest"):
        grp = rel["groups"][g]
        for b, (n, mean_hat, freq) in enumerate(zip(grp["count"], grp["mean_eps_hat"], grp["freq_eps"])):
            assert (n == 0) == (mean_hat is None) and in_unit(freq)
            if n:
                assert rel["bins"][b] - 1e-9 <= mean_hat <= rel["bins"][b + 1] + 1e-9
    for row in rel["per_t"]:
        for g in ("easy", "rest"):
            assert in_unit(row[g]["mean_eps_hat"]) and in_unit(row[g]["freq_eps"])
            assert in_unit(row[g]["mean_noise_probability"])
        assert row["easy"]["mean_noise_probability"] < 0.05  # easy: |p − y0| < 0.05
        assert in_unit(row["one_step_y0_hat"]["dice"])

    # --folds 0 0: the same fold twice (deterministic), so the mean equals it; reliability counts pooled
    mean = result["mean_over_folds"]
    assert mean["fold"] == [0, 0] and close(mean["segmentor"]["dice"], seg["dice"])
    assert all(close(a["dice"], b["dice"]) for a, b in zip(mean["chains"], fold["chains"]))
    assert mean["reliability"]["entries"] == 2 * entries
    assert close(mean["reliability"]["easy_mean_eps_hat"], rel["easy_mean_eps_hat"], 1e-6)


def test_noise_rates_json_and_segmentor_checkpoint(trained, recomputed, tmp_path):
    import torch

    root, env, fold = trained
    out = tmp_path / "noise.json"
    common = ["-d", "990", "-f", "0", "--cases", "1", "--batches", "2", "--threads", "1"]
    proc = run_script("noise_rates.py", [*common, "-tr", TRAINER, "--temperature-max", "1", "3",
                                         "--logit-noise", "0", "--json", out], env)
    assert "validation (eval mode, softmax)" in proc.stdout
    result = json.loads(out.read_text())["folds"][0]
    val = result["validation"]
    assert val["pixels"] == recomputed["slices"] * PATCH[0] * PATCH[1]
    assert np.allclose(val["mean_abs_diff_per_class"], recomputed["mean_abs_diff_per_class"], atol=1e-6)
    c = result["mean_one_minus_alpha_bar"]
    assert 0 < c < 1
    rows = result["training"]
    assert [(r["kind"], r["temperature_max"], r["logit_noise"]) for r in rows] == [
        ("trainer", 2.0, 0.5), ("plain", 1.0, 0.0), ("grid", 1.0, 0.0), ("grid", 3.0, 0.0)]
    unaugmented = result["training_unaugmented"]  # refiner_batches = "clean": the training cases, no augmentation
    assert "training cases unaugmented (eval, softmax)" in proc.stdout
    for r in [val, *rows, unaugmented]:
        for key in ("mean_abs_diff", "noise_rate", "wrong_share", "argmax_error_share"):
            assert in_unit(r[key])
        for key in ("mean_abs_diff_per_class", "noise_rate_per_class", "wrong_share_per_class", "class_share"):
            assert len(r[key]) == K and all(in_unit(v) for v in r[key])
        assert math.isclose(r["noise_rate"], c * r["mean_abs_diff"], rel_tol=1e-9)
        assert len(r["noise_rate_per_t"]) == T and math.isclose(np.mean(r["noise_rate_per_t"]), r["noise_rate"])
        assert math.isclose(sum(r["class_share"]), 1.0)
    for r in [*rows, unaugmented]:
        assert r["pixels"] == 2 * 2 * PATCH[0] * PATCH[1]  # 2 batches of the plan's batch size 2
    plain, grid_plain = rows[1], rows[2]
    assert plain["mean_abs_diff_per_class"] == grid_plain["mean_abs_diff_per_class"]  # same batches and logits
    assert rows[3]["mean_abs_diff"] != plain["mean_abs_diff"]  # τ_max = 3 softens the prior
    assert plain["argmax_error_share"] == rows[3]["argmax_error_share"]  # a temperature keeps the argmax

    # a plain nnU-Net checkpoint of the same segmentor, used through another HiDiff trainer with no fold folder
    weights = torch.load(fold / "checkpoint_final.pth", weights_only=False)["network_weights"]
    segmentor = {k[len("segmentor."):]: v for k, v in weights.items() if k.startswith("segmentor.")}
    plain_ckpt = tmp_path / "plain_nnunet" / "checkpoint_final.pth"
    plain_ckpt.parent.mkdir()
    torch.save({"network_weights": segmentor, "trainer_name": "nnUNetTrainer"}, plain_ckpt)
    out2 = tmp_path / "noise_plain.json"
    results_dir = root / "results" / "Dataset990_Tiny"
    before = sorted(p.name for p in results_dir.iterdir())
    run_script("noise_rates.py", [*common, "-tr", "nnUNetTrainerHiDiff_real_smoke", "--segmentor-checkpoint",
                                  plain_ckpt, "--json", out2], env)
    assert sorted(p.name for p in results_dir.iterdir()) == before  # no empty fold folder left behind
    result2 = json.loads(out2.read_text())["folds"][0]
    assert result2["model"] == str(plain_ckpt)
    for key in ("mean_abs_diff_per_class", "wrong_share_per_class", "argmax_error_share", "pixels"):
        assert result2["validation"][key] == val[key]
    assert result2["training"][0]["kind"] == "trainer" and result2["training"][0]["temperature_max"] == 1.0
    assert result2["training"][1]["mean_abs_diff_per_class"] == pytest.approx(plain["mean_abs_diff_per_class"])


def test_missing_checkpoint_is_a_clear_error(trained):
    root, env, _ = trained
    proc = run_script("sampler_ablation.py", ["-d", "990", "-tr", TRAINER, "-f", "3", "--cases", "1"], env,
                      expect_rc=2)
    assert "no checkpoint" in proc.stderr and "fold_3" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("noise_rates.py", ["-d", "990", "-tr", TRAINER, "--segmentor-checkpoint",
                                         root / "nothing.pth"], env, expect_rc=2)
    assert "does not exist" in proc.stderr


def test_gpu_check_says_plainly_that_it_needs_cuda():
    """scripts/gpu_check.py on a machine without CUDA (GPUs hidden, so it holds on any machine): one clear
    message, exit status 2, nothing run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout and "Nothing was run" in proc.stdout


def _csv(path, rows):
    lines = ["trainer,fold,class,case,metric,value,split,output"]
    lines += [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_merge_results_pools_folds_recounts_nan_and_refuses_duplicates(tmp_path):
    """benchmarks/merge_results.py: two collections of different folds become one results.csv/summary.md with
    every fold; the HD95 NaN ratio is recounted from the rows; a fold present twice is an error."""
    base, hd = "nnUNetTrainerBaseline_5epochs", "nnUNetTrainerHiDiff_x"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rows_a = [(base, 0, "L", "c1", "Dice", 0.8, "validation", "segmentor"),
              (base, 0, "L", "c1", "HD95", 2.0, "validation", "segmentor"),
              (base, 0, "L", "c2", "Dice", "nan", "validation", "segmentor"),  # both empty
              (base, 0, "L", "c2", "HD95", "nan", "validation", "segmentor"),
              (hd, 0, "L", "c1", "Dice", 0.7, "validation", "refined"),
              (hd, 0, "L", "c1", "HD95", "nan", "validation", "refined"),  # one mask empty
              (hd, 0, "L", "c1", "Dice", 0.9, "validation", "segmentor"),
              (hd, 0, "L", "c1", "HD95", 1.0, "validation", "segmentor")]
    rows_b = [(t, 1, c, k, m, v, s, o) for (t, _, c, k, m, v, s, o) in rows_a]
    _csv(a, rows_a)
    _csv(b, rows_b)
    rec = tmp_path / "hidiff_fold_x_fold1.json"
    rec.write_text(json.dumps({"trainer": hd, "warm_start": "/seg/fold_1/checkpoint_final.pth",
                               "budget": {"epochs": 3, "iterations_per_epoch": 5}}))
    out = tmp_path / "out"
    args = ["-d", "Dataset999_X", "--results", a, b, "--records", rec, "--trainers", base, hd, "-o", out]
    run_script("merge_results.py", args, dict(os.environ))
    merged = (out / "results.csv").read_text().splitlines()
    assert len(merged) == 1 + len(rows_a) + len(rows_b)
    summary = (out / "summary.md").read_text()
    assert f"| {base} | foreground | 2 |" in summary  # both folds pooled
    assert "0.000 (0/2)" in summary  # baseline: c2 both empty (not counted), c1 defined, over 2 folds
    assert "1.000 (2/2)" in summary  # refined: HD95 undefined with a defined Dice on both folds
    assert "/seg/fold_{fold}/checkpoint_final.pth" in summary  # the warm start from the record (fold from the name)
    assert "3 epochs × 5 iterations" in summary  # the budget from the record
    dup = run_script("merge_results.py", ["-d", "Dataset999_X", "--results", a, a, "--trainers", base, "-o", out],
                     dict(os.environ), expect_rc=2)
    assert "collected twice" in dup.stderr


def _summary(path, per_case):
    """An nnU-Net summary.json with two classes per case: {case: ((dice1, hd1), (dice2, hd2))}."""
    path.mkdir(parents=True, exist_ok=True)
    cases = [{"reference_file": f"/gt/{case}.nii.gz",
              "metrics": {str(k + 1): {"Dice": d, "HD95": h} for k, (d, h) in enumerate(values)}}
             for case, values in per_case.items()]
    (path / "summary.json").write_text(json.dumps({"metric_per_case": cases}))


def test_paired_runs_compares_outputs_within_and_between_runs(tmp_path):
    """benchmarks/paired_runs.py: per-case foreground means from the validation folders the trainer writes,
    refined − segmentor within a run and run 2 − run 1 between runs, counted case by case; a missing fold record is
    one clear error."""
    results = tmp_path / "results"
    plans = "nnUNetPlans"
    for tr, refined_shift in (("nnUNetTrainerHiDiff_a", 0.1), ("nnUNetTrainerHiDiff_b", -0.1)):
        fold = results / "Dataset999_X" / f"{tr}__{plans}__2d" / "fold_0"
        seg = {f"c{i}": ((0.5, 2.0), (0.7, 4.0)) for i in range(3)}
        ref = {case: ((d1 + refined_shift, h1), (d2, h2)) for case, ((d1, h1), (d2, h2)) in seg.items()}
        _summary(fold / "validation_segmentor", seg)
        _summary(fold / "validation_refined_1steps", ref)
        (fold / "hidiff_fold.json").write_text(json.dumps({"decision": {"refine": refined_shift > 0, "steps": 1},
                                                           "seconds_per_iteration": 1.0}))
    env = dict(os.environ, nnUNet_results=str(results))
    args = ["-d", "Dataset999_X", "-p", plans, "-f", "0", "nnUNetTrainerHiDiff_a", "nnUNetTrainerHiDiff_b"]
    out = run_script("paired_runs.py", args, env).stdout
    lines = out.splitlines()
    # the foreground mean is the mean over classes: (0.5 + 0.7) / 2 = 0.6, HD95 (2 + 4) / 2 = 3
    assert sum("validation_segmentor         Dice 0.6000 HD95 3.000" in line for line in lines) == 2
    assert any("validation_refined_1steps    Dice 0.6500" in line and "vs segmentor +0.0500 (better 3/3, worse 0"
               in line for line in lines)
    assert any("validation_refined_1steps    Dice 0.5500" in line and "vs segmentor -0.0500 (better 0/3, worse 3"
               in line for line in lines)
    assert any("nnUNetTrainerHiDiff_b − nnUNetTrainerHiDiff_a, validation_refined_1steps: -0.1000 (better 0/3, worse 3"
               in line for line in lines)
    # a fold folder instead of a trainer name: two runs of one trainer
    moved = tmp_path / "run1_fold0"
    (results / "Dataset999_X" / f"nnUNetTrainerHiDiff_b__{plans}__2d" / "fold_0").rename(moved)
    out = run_script("paired_runs.py", [*args[:-1], str(moved)], env).stdout
    assert f"{moved} − nnUNetTrainerHiDiff_a, validation_refined_1steps: -0.1000 (better 0/3, worse 3" \
        in out
    # a plain nnU-Net fold (the equal-budget control): its validation/ is compared with the segmentor alone, and a
    # stray validation_refined_1steps folder in it is not an output of plain nnU-Net
    plain = results / "Dataset999_X" / f"nnUNetTrainerBaseline_c__{plans}__2d" / "fold_0"
    _summary(plain / "validation", {f"c{i}": ((0.5 - 0.02 * i, 2.0), (0.7, 4.0)) for i in range(3)})
    _summary(plain / "validation_refined_1steps", {f"c{i}": ((0.1, 2.0), (0.1, 4.0)) for i in range(3)})
    (plain / "hidiff_fold.json").write_text(json.dumps({"kind": "baseline", "seconds_per_iteration": 1.0}))
    out = run_script("paired_runs.py", [*args[:-2], "nnUNetTrainerBaseline_c", "nnUNetTrainerHiDiff_a"], env).stdout
    assert "validation_segmentor         Dice 0.5900 HD95 3.000" in out  # (0.5 + 0.48 + 0.46) / 3 with 0.7, halved
    assert "nnUNetTrainerHiDiff_a − nnUNetTrainerBaseline_c, validation_segmentor: +0.0100 (better 2/3, worse 0" \
        in out
    assert "Dice 0.1000" not in out and "validation_refined_1steps:" not in out
    missing = run_script("paired_runs.py", ["-d", "Dataset999_X", "-p", plans, "-f", "1", "nnUNetTrainerHiDiff_a"],
                         env, expect_rc=1)
    assert "fold_1/hidiff_fold.json: missing" in missing.stderr and "Traceback" not in missing.stderr


def test_noise_rates_reports_a_mean_over_folds_with_unequal_pixel_counts(capsys):
    """The mean over folds of two folds with different numbers of validation slices has a fractional pixel count;
    the report prints it rounded instead of failing (it crashed on 901 folds 0 and 1, 2026-12-03)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import noise_rates
        from _fold_data import mean_over_folds
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def fold(pixels, rate):
        r = {"pixels": pixels, "argmax_error_share": rate}
        for key in ("mean_abs_diff", "noise_rate", "wrong_share"):
            r[key], r[key + "_per_class"] = rate, [rate, rate]
        return {"class_names": ["background", "x"], "num_diffusion_steps": 10, "mean_one_minus_alpha_bar": 0.5,
                "validation": r, "training": [dict(r, label="plain softmax", pixels=100)]}

    mean = mean_over_folds([fold(101, 0.01), fold(104, 0.03)])
    assert mean["validation"]["pixels"] == 102.5
    noise_rates.report(mean, "mean over folds [0, 1]")
    out = capsys.readouterr().out
    assert "validation (eval mode, softmax)" in out and " 102 " in out and "0.0200 / 0.0200 (0.0200)" in out
    assert "plain softmax 1.00" in out


def test_classical_floor_finds_dark_thin_lines_inside_the_fov_only():
    """The no-learning DRIVE floor: a dark 2-pixel line on a bright, slowly varying background is found, the mask
    takes the requested share of the FOV and nothing outside it; an empty FOV or mismatched shapes are refused."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from classical_floor import vessel_floor
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    yy, xx = np.mgrid[:64, :64]
    green = 150.0 + 0.5 * xx  # illumination gradient: a plain threshold would pick one side
    green[30:32, :] = 80.0  # the vessel, running out of the FOV at both ends
    fov = ((yy - 32) ** 2 + (xx - 32) ** 2 < 30 ** 2).astype(np.uint8)
    mask = vessel_floor(green, fov, tophat=11, sigma=0.7, top=0.05)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert not mask[fov == 0].any()
    assert abs(mask.sum() / fov.sum() - 0.05) < 0.01
    line = np.zeros_like(mask)
    line[30:32, :] = 1
    line &= fov
    # most of the mask lies on or next to the line (the blur widens it by a pixel)
    near = np.zeros_like(mask)
    near[29:33, :] = 1
    assert (mask & near).sum() / mask.sum() > 0.9 and (mask & line).sum() / line.sum() > 0.8
    with pytest.raises(ValueError, match="FOV mask is empty"):
        vessel_floor(green, np.zeros_like(fov))
    with pytest.raises(ValueError, match="differ in shape"):
        vessel_floor(green, fov[:10])


def test_evidence_902_on_a_gpu_trains_folds_side_by_side_and_resumes(tmp_path):
    """scripts/evidence_902.sh with the settings scripts/maintainer/device_evidence.sh uses on the GPU machine, run
    with stub commands that record their arguments: every fold of every trainer is trained once on cuda (an
    interrupted fold with --c, a finished one not at all), HiDiff gets its fold's baseline as the segmentor, and the
    benchmark collects with --device cuda, the given processes and the test set in the FOV, into
    HIDIFF_EVIDENCE_DIR."""
    stubs, calls = tmp_path / "bin", tmp_path / "calls.txt"
    stubs.mkdir()
    for name in ("nnUNetv2_train", "nnunetv2_hidiff_benchmark", "nnunetv2_hidiff_plan", "python"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $* seg=${{nnUNet_HiDiff_pretrained_segmentor:-}}" >> {calls}\n')
        (stubs / name).chmod(0o755)
    pre, results = tmp_path / "pre" / "Dataset902_DRIVE", tmp_path / "results" / "Dataset902_DRIVE"
    pre.mkdir(parents=True)
    (pre / "nnUNetPlans_hidiffCPU.json").write_text("{}")
    (pre / "splits_final.json").write_text("[]")
    base = results / "nnUNetTrainerBaseline_5epochs__nnUNetPlans_hidiffCPU__2d"
    (base / "fold_1").mkdir(parents=True)
    (base / "fold_1" / "checkpoint_latest.pth").write_text("")
    (base / "fold_2").mkdir()
    (base / "fold_2" / "checkpoint_final.pth").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet", "HIDIFF"))}
    env.update(nnUNet_raw="/raw", nnUNet_preprocessed=str(pre.parent), nnUNet_results=str(results.parent),
               HIDIFF_BIN=str(stubs), HIDIFF_PYTHON=str(stubs / "python"), HIDIFF_DEVICE="cuda", HIDIFF_NP="8",
               HIDIFF_PARALLEL_FOLDS="1", HIDIFF_EVIDENCE_DIR=str(tmp_path / "evidence"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "evidence_902.sh"), "0", "1", "2"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    trains = sorted(line for line in lines if line.startswith("nnUNetv2_train"))
    seg = f"seg={base}/fold_{{fold}}/checkpoint_final.pth"
    expected = [f"nnUNetv2_train 902 2d 0 -tr nnUNetTrainerBaseline_5epochs -p nnUNetPlans_hidiffCPU -device cuda seg=",
                f"nnUNetv2_train 902 2d 1 -tr nnUNetTrainerBaseline_5epochs -p nnUNetPlans_hidiffCPU -device cuda --c seg="]
    for trainer in ("nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500",
                    "nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500"):
        expected += [f"nnUNetv2_train 902 2d {f} -tr {trainer} -p nnUNetPlans_hidiffCPU -device cuda {seg}"
                     for f in range(3)]
    assert trains == sorted(expected)
    benchmarks = [line for line in lines if line.startswith("nnunetv2_hidiff_benchmark")]
    assert len(benchmarks) == 2
    for line in benchmarks:
        assert "-np 8 --device cuda" in line and "--folds 0 1 2" in line
        assert "--test-fov /raw/Dataset902_DRIVE/fovTs --test-folds 0 1 2" in line
    assert f"-o {tmp_path}/evidence/warm {seg}" in benchmarks[1]
    assert (tmp_path / "evidence" / "logs" / "nnUNetTrainerBaseline_5epochs_fold0.log").is_file()
    assert not any(line.startswith("nnunetv2_hidiff_plan") for line in lines)  # the plan exists


def test_device_console_scripts_survive_spawned_workers(tmp_path):
    """scripts/maintainer/console_scripts.py (the console scripts scripts/maintainer/device_evidence.sh writes on the
    GPU machine) must guard the call like pip's own scripts: a command whose workers are started with spawn
    (nnU-Net's and this package's pools) imports the script again in every worker. Unguarded, the first GPU run's
    benchmark failed its test-set evaluation ("a worker process died", multiprocessing's bootstrapping error in every
    worker)."""
    pkg = tmp_path / "spawn_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import multiprocessing\n\n\n"
        "def main():\n"
        "    with multiprocessing.get_context('spawn').Pool(2) as pool:\n"
        "        print('sum', sum(pool.map(abs, [-1, -2, -3])))\n"
        "    return 0\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[project.scripts]\nspawncheck = "spawn_pkg:main"\n')
    console_scripts = str(REPO / "scripts" / "maintainer" / "console_scripts.py")
    subprocess.run([sys.executable, console_scripts, str(tmp_path / "pyproject.toml"),
                    str(tmp_path / "bin")], check=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([str(tmp_path / "bin" / "spawncheck")], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["sum", "6"], res.stdout
    # the scripts of this repository's own pyproject are written and name importable targets
    written = subprocess.run([sys.executable, console_scripts, str(REPO / "pyproject.toml"),
                              str(tmp_path / "repo_bin")], capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "repo_bin" / "nnunetv2_hidiff_benchmark").is_file()


def test_decision_rules_replays_the_trainers_decision_with_a_dice_tolerance(tmp_path):
    """benchmarks/decision_rules.py: with min_dice_gain 0 a candidate that loses 0.0004 Dice is refused; with a
    tolerance of 0.001 the best-Dice candidate among those whose HD95 is not higher is chosen, never one with a
    higher HD95 or a larger Dice loss, and a gated choice reports its own gate's scores; a record without candidates
    is one clear error naming the file."""
    def cand(refine, steps, combine, d, h):
        return {"refine": refine, "steps": steps, "combine": combine, "dice": d, "hd95": h}
    rec = tmp_path / "hidiff_fold.json"
    rec.write_text(json.dumps({"decision": {"candidates": [
        cand(False, 0, "none", 0.8242, 5.90),
        cand(True, 1, "union", 0.8238, 5.09),            # −0.0004, HD95 lower: the tolerant rule's choice
        cand(True, 1, "none", 0.8236, 4.99),             # −0.0006, lower Dice than the union
        cand(True, 2, "none", 0.8245, 6.10),             # +0.0003 but HD95 higher: refused by both rules
        cand(True, 5, "new_components", 0.8200, 3.00),   # −0.0042: beyond the tolerance
        {**cand(True, 1, "gated", 0.8240, 5.20), "gate": [0.5, 0.9]},   # −0.0002
        {**cand(True, 1, "gated", 0.8241, 5.40), "gate": [0.5, 0.8]}]}}))  # −0.0001: the tolerant rule's choice
    out = tmp_path / "rules.json"
    proc = run_script("decision_rules.py", [rec, "--min-dice-gain", "0", "-0.001", "--json", out], dict(os.environ))
    rows = json.loads(out.read_text())
    strict, tolerant = rows[0]["rules"]["0.0"], rows[0]["rules"]["-0.001"]
    assert (strict["refine"], strict["choice"]) == (False, "segmentor")
    assert (tolerant["refine"], tolerant["steps"], tolerant["combine"], tolerant["gate"]) == (True, 1, "gated", [0.5, 0.8])
    assert (tolerant["dice"], tolerant["hd95"]) == (0.8241, 5.40)  # that gate's scores, not the first gated candidate's
    assert "gated a500_r800 1 steps: 0.8241 / 5.400" in proc.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"trainer": "x"}))
    err = run_script("decision_rules.py", [bad], dict(os.environ), expect_rc=1)
    assert "bad.json" in err.stderr and "decision.candidates" in err.stderr
