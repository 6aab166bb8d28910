"""End-to-end demo on the Hippocampus subset shipped in ``demo/`` (``./scripts/demo.sh``).

Steps: copy the dataset into a scratch nnU-Net tree; nnU-Net's own planning and preprocessing (2d);
a Bernoulli diffusion round trip on a real label slice; a short HiDiff training of fold 0
(nnUNetTrainerHiDiff_demo: 4 epochs of 25 iterations, the first one segmentor warm-up) with nnU-Net's
validation; prediction of the 6 held-out cases with and without the diffusion refinement; evaluation
of both against their labels (Dice, HD95). Each step prints the command it ran; a step whose output
already exists is reused (an interrupted training resumes with --c), so a second run is quick.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO_DATASET = REPO / "demo" / "Dataset991_HippocampusMini"
DATASET_ID = 991
TRAINER = "nnUNetTrainerHiDiff_demo"


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def nnunet_env(work: Path) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    env.setdefault("nnUNet_def_n_proc", "2")
    env["nnUNet_extTrainer"] = str(REPO / "trainers")
    return env


def run(cmd: list, env: dict) -> None:
    """Run an nnU-Net / nnunetv2_hidiff console script of this Python environment (no PATH needed)."""
    log("$ " + " ".join(cmd))
    executable = Path(sys.executable).parent / cmd[0]
    try:
        subprocess.run([str(executable), *cmd[1:]], env=env, check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"[demo] error: '{cmd[0]}' failed with exit code {e.returncode}; its output is above.")
    except FileNotFoundError:
        raise SystemExit(f"[demo] error: {executable} not found; is nnunetv2_hidiff installed in this environment "
                         f"(./scripts/setup_env.sh)?")


def copy_dataset(work: Path) -> Path:
    target = work / "nnUNet_raw" / DEMO_DATASET.name
    if not target.exists():
        if not DEMO_DATASET.exists():
            raise SystemExit(f"demo data not found at {DEMO_DATASET}")
        shutil.copytree(DEMO_DATASET, target)
        for p in target.rglob("*"):
            p.chmod(p.stat().st_mode | 0o200)
    log(f"dataset: {target} ({len(list((target / 'imagesTr').glob('*')))} training cases)")
    return target


def plan_and_preprocess(work: Path, env: dict) -> None:
    plans = work / "nnUNet_preprocessed" / DEMO_DATASET.name / "nnUNetPlans.json"
    data = work / "nnUNet_preprocessed" / DEMO_DATASET.name / "nnUNetPlans_2d"
    if plans.exists() and data.exists():
        log(f"planning/preprocessing already done: {plans}")
        return
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", env["nnUNet_def_n_proc"],
         "--verify_dataset_integrity"], env)


def diffusion_round_trip(raw: Path) -> None:
    """Forward-noise a real label slice towards a deliberately wrong prior and run the DDIM sampler
    with an oracle noise predictor: checks the maths end to end on real data (no network yet)."""
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter, shift

    from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler, BernoulliDiffusion

    label_file = sorted((raw / "labelsTr").glob("*.nii.gz"))[0]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    z = int(np.argmax((seg > 0).sum(axis=(1, 2))))
    sl = torch.from_numpy(seg[z].astype(np.int64))
    K = 3
    y0 = torch.nn.functional.one_hot(sl, K).permute(2, 0, 1)[None].double()
    # a stand-in "segmentor prior": the label shifted by 2 px and blurred, renormalised over K
    prior = np.stack([gaussian_filter(shift(y0[0, k].numpy(), (2, 2), order=0), 1.5) for k in range(K)])
    prior = torch.from_numpy(prior / prior.sum(0, keepdims=True).clip(1e-8))[None]
    diff = BernoulliDiffusion(10)
    g = torch.Generator().manual_seed(0)
    log(f"diffusion round trip on {label_file.name}, slice {z} ({tuple(sl.shape)} px, K={K})")
    for t in (1, 5, 10):
        y_t, eps = diff.q_sample(y0, prior, torch.tensor([t]), generator=g)
        log(f"  q_sample t={t:2d}: ᾱ_t={diff.alpha_bars[t].item():.4f}, flipped {eps.mean().item():.2%} of the entries")
    sampler = BernoulliDDIMSampler(diff)
    y = sampler.initial_sample(prior, generator=g)
    start_err = (y != y0).double().mean().item()
    for t in sampler.timesteps:
        y = sampler.step((y - y0).abs(), t, y, prior, generator=g).prev_sample  # oracle ε̂ = y_t ⊕ y0
    log(f"  DDIM from y_T ~ B(prior): {start_err:.2%} wrong at T, {(y != y0).double().mean().item():.2%} wrong "
        f"after {len(sampler.timesteps)} steps with an oracle noise predictor (expected 0.00%)")


def train(work: Path, env: dict) -> Path:
    fold = (work / "nnUNet_results" / DEMO_DATASET.name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0")
    if (fold / "checkpoint_final.pth").exists() and (fold / "validation" / "summary.json").exists():
        log(f"training already done: {fold}")
        return fold
    resume = ["--c"] if (fold / "checkpoint_latest.pth").exists() else []
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", *resume], env)
    return fold


def predict(work: Path, env: dict, refine: bool) -> Path:
    out = work / "predictions" / ("hidiff_refined" if refine else "segmentor_only")
    images = work / "nnUNet_raw" / DEMO_DATASET.name / "imagesTs"
    if out.exists() and len(list(out.glob("*.nii.gz"))) == len(list(images.glob("*.nii.gz"))):
        log(f"predictions already there: {out}")
        return out
    hidiff_options = ["--refine"] if refine else ["--no-refine"]  # both forced: show the two, whatever the decision
    run(["nnunetv2_hidiff_predict", *hidiff_options, "--", "-i", str(images), "-o", str(out), "-d", str(DATASET_ID),
         "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    return out


def evaluate(work: Path, predictions: Path) -> dict:
    from nnunetv2_hidiff.evaluation.folder import evaluate_folder

    trained = work / "nnUNet_results" / DEMO_DATASET.name / f"{TRAINER}__nnUNetPlans__2d"
    labels = work / "nnUNet_raw" / DEMO_DATASET.name / "labelsTs"
    return evaluate_folder(str(labels), str(predictions), str(trained / "dataset.json"), str(trained / "plans.json"),
                           num_processes=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="demo_output", help="scratch folder for the nnU-Net trees")
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(work)
    raw = copy_dataset(work)
    plan_and_preprocess(work, env)
    diffusion_round_trip(raw)
    fold = train(work, env)
    val = json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]
    log(f"fold 0 validation (5 cases): Dice {val['Dice']:.3f}, HD95 {val.get('HD95', float('nan')):.2f} mm")
    rows = []
    for refine in (False, True):
        result = evaluate(work, predict(work, env, refine))
        rows.append(("HiDiff (refined)" if refine else "segmentor only", result["foreground_mean"], result["mean"]))
    log("held-out cases (6), foreground mean over Anterior/Posterior:")
    log(f"  {'prediction':18s} {'Dice':>6s} {'HD95 mm':>8s}  per class Dice")
    for name, fg, per_class in rows:
        dice_per_class = ", ".join(f"{per_class[k]['Dice']:.3f}" for k in sorted(per_class, key=str))
        log(f"  {name:18s} {fg['Dice']:6.3f} {fg.get('HD95', float('nan')):8.2f}  {dice_per_class}")
    log(f"done. Results under {work}. This is a 4-short-epoch training on 19 cases: it shows the pipeline "
        "works end to end, not how good HiDiff is (see the README's benchmark section for that).")


if __name__ == "__main__":
    sys.exit(main())
