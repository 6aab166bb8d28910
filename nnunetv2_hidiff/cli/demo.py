"""End-to-end demo on the Hippocampus subset shipped in ``demo/`` (``./scripts/demo.sh``).

Steps: copy the dataset into a scratch nnU-Net tree; nnU-Net's own planning and preprocessing (2d);
a Bernoulli diffusion round trip on a real label slice; a short HiDiff training of fold 0
(nnUNetTrainerHiDiff_demo: 4 epochs of 25 iterations, the first one segmentor warm-up) with nnU-Net's
validation; prediction of the 6 held-out cases with and without the diffusion refinement; evaluation
of both against their labels (Dice, HD95). That short training is a pipeline check. Then the model shipped in
``demo/model`` (a Dataset901 fold-0 model trained by the documented protocol, exported with
nnunetv2_hidiff_export) predicts the same held-out cases with plain nnUNetv2_predict_from_modelfolder, refinement
forced off and on; both are evaluated, and a PNG overlay (image, reference, segmentor, refined) is written. Each step prints the command it ran; a step whose output
already exists is reused (an interrupted training resumes with --c), so a second run is quick.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO_DATASET = REPO / "demo" / "Dataset991_HippocampusMini"
DATASET_ID = 991
TRAINER = "nnUNetTrainerHiDiff_demo"
SHIPPED_MODEL = REPO / "demo" / "model"


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


def shipped_model(work: Path) -> Path:
    """demo/model/<trainer>__<plans>__2d, the exported fold-0 model of Dataset901 (see demo/model/README.md), copied
    into the work folder with its xz-compressed checkpoint unpacked (xz keeps the repository small)."""
    import lzma

    folders = sorted(p for p in SHIPPED_MODEL.glob("*__*__*") if (p / "fold_0" / "checkpoint_final.pth.xz").is_file())
    if len(folders) != 1:
        raise SystemExit(f"[demo] error: expected one exported model folder in {SHIPPED_MODEL}, found {len(folders)}")
    target = work / "shipped_model" / folders[0].name
    checkpoint = target / "fold_0" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        shutil.copytree(folders[0], target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.xz"))
        tmp = checkpoint.with_name(checkpoint.name + ".tmp")
        with lzma.open(folders[0] / "fold_0" / "checkpoint_final.pth.xz") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(checkpoint)
    return target


def predict_shipped(work: Path, env: dict, model: Path, refine: bool) -> Path:
    """Plain nnU-Net prediction with the shipped model; refinement forced on or off (nnUNet_HiDiff_refine)."""
    out = work / "predictions_shipped" / ("hidiff_refined" if refine else "segmentor_only")
    images = work / "nnUNet_raw" / DEMO_DATASET.name / "imagesTs"
    if out.exists() and len(list(out.glob("*.nii.gz"))) == len(list(images.glob("*.nii.gz"))):
        log(f"predictions already there: {out}")
        return out
    started = time.perf_counter()
    run(["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0",
         "-device", "cpu", "-npp", "1", "-nps", "1"], dict(env, nnUNet_HiDiff_refine=str(int(refine))))
    seconds = time.perf_counter() - started
    n = len(list(images.glob("*.nii.gz")))
    log(f"  {seconds:.1f} s for {n} cases ({seconds / n:.2f} s per case, process start included)")
    return out


def overlay_png(work: Path, predictions: dict, target: Path) -> Path:
    """One held-out slice (the one with the most reference foreground): image, reference, segmentor, refined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    raw = work / "nnUNet_raw" / DEMO_DATASET.name
    best = None
    for label in sorted((raw / "labelsTs").glob("*.nii.gz")):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
        z = int(np.argmax((ref > 0).sum(axis=(1, 2))))
        if best is None or (ref[z] > 0).sum() > best[2]:
            best = (label.name, z, int((ref[z] > 0).sum()))
    name, z, _ = best
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTs" / name.replace(".nii.gz", "_0000.nii.gz"))))[z]
    panels = [("image", None), ("reference", raw / "labelsTs" / name)]
    panels += [(title, folder / name) for title, folder in predictions.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2))
    colours = matplotlib.colors.ListedColormap([(0, 0, 0, 0), (1.0, 0.35, 0.1, 0.55), (0.1, 0.6, 1.0, 0.55)])
    for ax, (title, path) in zip(axes, panels):
        ax.imshow(image, cmap="gray")
        if path is not None:
            ax.imshow(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[z], cmap=colours, vmin=0, vmax=2,
                      interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{name.replace('.nii.gz', '')}, slice {z} (orange: anterior, blue: posterior)", fontsize=9)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def report(title: str, rows) -> None:
    log(title)
    log(f"  {'prediction':18s} {'Dice':>6s} {'HD95 mm':>8s}  per class Dice")
    for name, fg, per_class in rows:
        dice_per_class = ", ".join(f"{per_class[k]['Dice']:.3f}" for k in sorted(per_class, key=str))
        log(f"  {name:18s} {fg['Dice']:6.3f} {fg.get('HD95', float('nan')):8.2f}  {dice_per_class}")


def evaluate_folder_of(model: Path, work: Path, predictions: Path) -> dict:
    from nnunetv2_hidiff.evaluation.folder import evaluate_folder

    labels = work / "nnUNet_raw" / DEMO_DATASET.name / "labelsTs"
    return evaluate_folder(str(labels), str(predictions), str(model / "dataset.json"), str(model / "plans.json"),
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
    report("pipeline check, held-out cases (6), foreground mean over Anterior/Posterior:", rows)
    log("(a 4-short-epoch training on 19 cases: it shows that the pipeline works, not how good HiDiff is)")

    model = shipped_model(work)
    log(f"shipped model: {model.name} from demo/model (Dataset901 fold 0; the 6 held-out cases are in its validation "
        f"split, so it never trained on them)")
    rows, predictions = [], {}
    for refine in (False, True):
        out = predict_shipped(work, env, model, refine)
        predictions["HiDiff (refined)" if refine else "segmentor only"] = out
        result = evaluate_folder_of(model, work, out)
        rows.append(("HiDiff (refined)" if refine else "segmentor only", result["foreground_mean"], result["mean"]))
    report("shipped model, held-out cases (6), foreground mean over Anterior/Posterior:", rows)
    png = overlay_png(work, predictions, work / "demo_overlay.png")
    log(f"overlay (image, reference, segmentor, refined): {png}")
    log(f"done. Results under {work}.")


if __name__ == "__main__":
    sys.exit(main())
