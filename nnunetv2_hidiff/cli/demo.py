"""End-to-end demo on the Hippocampus subset shipped in ``demo/`` (``./scripts/demo.sh``).

1. Pipeline check (a short run of the default configuration, not a good model): copy the dataset into a scratch
   nnU-Net tree; nnU-Net's planning and preprocessing (2d); a Bernoulli diffusion round trip on a real label slice;
   a short training of fold 0 (nnUNetTrainerHiDiff_demo: 4 epochs of 25 iterations, the first one segmentor
   warm-up) with nnU-Net's validation and the per-fold refinement decision; refined prediction of the 6 held-out
   cases with nnunetv2_hidiff_predict --refine; evaluation against their labels (Dice, HD95).
2. The model shipped in ``demo/model`` (fold 0 of Dataset901 in the default configuration at the CPU budget,
   exported with nnunetv2_hidiff_export; see demo/model/README.md) predicts the same 6 held-out cases three times
   with plain nnUNetv2_predict_from_modelfolder: the segmentor alone (nnUNet_HiDiff_refine=0), refined at the
   model's default steps (nnUNet_HiDiff_refine=1 nnUNet_HiDiff_steps=N), and as decided (no variable set: the
   fold's stored decision, what a user gets). One table gives mean Dice, mean HD95 and seconds per case of each,
   one line the fold's decision and its reason, and demo_output/demo_overlay.png one row per held-out case
   (image, reference, segmentor, refined, as decided, each with its Dice).

About 6 minutes on 2 CPU cores. Each step prints the command it ran and its time; a step whose output already exists is reused (an interrupted
training resumes with --c), so a second run is quick.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO_DATASET = REPO / "demo" / "Dataset991_HippocampusMini"
DATASET_ID = 991
TRAINER = "nnUNetTrainerHiDiff_demo"
SHIPPED_MODEL = REPO / "demo" / "model"
LABELS = (1, 2)  # Hippocampus: anterior, posterior
# the overlay's panels, left to right; "image" and "reference" are special, the others name predictions
OVERLAY_PANELS = ("image", "reference", "segmentor alone", "refined", "as decided")
STEP_SECONDS: Dict[str, tuple] = {}  # name: (wall s, CPU s, load average)


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def step(name: str):
    """Time one step of the demo (printed at once and in the summary at the end): wall and CPU seconds, and the
    machine's load average (other work on the machine slows every step)."""
    log(f"--- {name}")
    start, cpu = time.perf_counter(), cpu_seconds()
    yield
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    STEP_SECONDS[name] = (wall, cpu, os.getloadavg()[0])
    log(f"--- {name}: {wall:.0f} s ({cpu:.0f} CPU s; load average {os.getloadavg()[0]:.1f})")


def shown(path: Path) -> str:
    """A path as a user would type it from the current folder (relative below it, else absolute)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def nnunet_env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_HiDiff_")}  # "as decided" = unset
    env.update(nnUNet_raw=shown(work / "nnUNet_raw"), nnUNet_preprocessed=shown(work / "nnUNet_preprocessed"),
               nnUNet_results=shown(work / "nnUNet_results"), nnUNet_extTrainer=shown(REPO / "trainers"))
    env.setdefault("nnUNet_def_n_proc", "2")
    return env


def run(cmd: list, env: dict, extra_env: Optional[dict] = None, cases: int = 0) -> Optional[float]:
    """Run an nnU-Net / nnunetv2_hidiff console script of this Python environment (no PATH needed), printing the
    command line as a user would type it. With ``cases``: returns the prediction's seconds per case, from nnU-Net's
    first case to the process's end (process start and model loading excluded)."""
    extra_env = extra_env or {}
    log("$ " + " ".join([*(f"{k}={v}" for k, v in extra_env.items()), *cmd]))
    executable = Path(sys.executable).parent / cmd[0]
    if not executable.exists():
        raise SystemExit(f"[demo] error: {executable} not found; is nnunetv2_hidiff installed in this environment "
                         f"(./scripts/setup_env.sh)?")
    first = None
    with subprocess.Popen([str(executable), *cmd[1:]], env={**env, **extra_env, "PYTHONUNBUFFERED": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            if first is None and line.startswith("perform_everything_on_device"):  # the first case starts
                first = time.perf_counter()
            sys.stdout.write(line)
        sys.stdout.flush()
    if process.returncode:
        raise SystemExit(f"[demo] error: '{cmd[0]}' failed with exit code {process.returncode}; its output is above.")
    return (time.perf_counter() - first) / cases if cases and first is not None else None


# ---------------------------------------------------------------------------------------------- pipeline check
def copy_dataset(work: Path) -> Path:
    target = work / "nnUNet_raw" / DEMO_DATASET.name
    if not target.exists():
        if not DEMO_DATASET.exists():
            raise SystemExit(f"demo data not found at {DEMO_DATASET}")
        shutil.copytree(DEMO_DATASET, target)
        for p in target.rglob("*"):
            p.chmod(p.stat().st_mode | 0o200)
    log(f"dataset: {shown(target)} ({len(list((target / 'imagesTr').glob('*')))} training cases)")
    return target


def plan_and_preprocess(work: Path, env: dict) -> None:
    plans = work / "nnUNet_preprocessed" / DEMO_DATASET.name / "nnUNetPlans.json"
    data = work / "nnUNet_preprocessed" / DEMO_DATASET.name / "nnUNetPlans_2d"
    if plans.exists() and data.exists():
        log(f"planning/preprocessing already done: {shown(plans)}")
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
        log(f"training already done: {shown(fold)}")
        return fold
    resume = ["--c"] if (fold / "checkpoint_latest.pth").exists() else []
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", *resume], env)
    return fold


def held_out(work: Path, what: str = "imagesTs") -> Path:
    return work / "nnUNet_raw" / DEMO_DATASET.name / what


def predict(work: Path, env: dict, out: Path, cmd: list, extra_env: Optional[dict] = None) -> Optional[float]:
    """Run a prediction command into ``out`` (reused when complete); seconds per case, None when reused."""
    n = len(list(held_out(work).glob("*.nii.gz")))
    if out.exists() and len(list(out.glob("*.nii.gz"))) == n:
        log(f"predictions already there: {shown(out)}")
        return None
    return run(cmd, env, extra_env, cases=n)


def evaluate(work: Path, model: Path, predictions: Path) -> dict:
    """Extended nnU-Net summary of a prediction folder against the held-out labels; ``model``: the folder with the
    dataset.json and plans.json."""
    from nnunetv2_hidiff.evaluation.folder import evaluate_folder

    return evaluate_folder(str(held_out(work, "labelsTs")), str(predictions), str(model / "dataset.json"),
                           str(model / "plans.json"), num_processes=1)


# ---------------------------------------------------------------------------------------------- shipped model
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


def default_steps(record: dict, trainer_name: str) -> int:
    """The steps the model refines with when nothing is forced and its decision stores none: the fold's "refined"
    validation run, else the trainer's inference_steps (None: T)."""
    refined = record.get("validation", {}).get("refined", {})
    if refined.get("steps"):
        return int(refined["steps"])
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(trainer_name)
    return int(cls.inference_steps or cls.num_diffusion_steps)


def _steps(n: int) -> str:
    return f"{n} step" + ("" if n == 1 else "s")


COMBINE_WORDS = {"none": "refined", "new_components": "segmentor + new refined components",
                 "union": "segmentor + refined foreground", "average": "mean of segmentor and refined",
                 "gated": "refined where gated"}


def decided_output(decision: dict) -> str:
    """Short name of the output a fold's decision selects, e.g. 'segmentor alone', 'refined, 1 step'."""
    if not decision.get("refine"):
        return "segmentor alone"
    name = COMBINE_WORDS.get(decision.get("combine", "none"), decision.get("combine"))
    if decision.get("combine") == "gated" and decision.get("gate"):
        name += " " + ",".join(str(g) for g in decision["gate"])
    return f"{name}, {_steps(int(decision['steps']))}"


def decision_line(record: dict) -> str:
    """One line: which output the fold decided and why (from hidiff_fold.json's "decision" and "validation")."""
    decision = record["decision"]
    cases = record.get("validation", {}).get("segmentor", {}).get("cases")
    where = f"on its {cases} validation cases" if cases else "on its validation cases"
    line = f"the fold decided {where}: {decided_output(decision)}, because {decision['reason']}"
    refined = [c for c in decision.get("candidates", []) if c.get("refine")]
    segmentor = next((c for c in decision.get("candidates", []) if not c.get("refine")), None)
    chosen = [c for c in refined if all(c.get(k, "none") == decision.get(k, "none") for k in ("steps", "combine"))]
    if decision.get("refine") and chosen and segmentor:  # the reason rounds to 4 decimals
        line += (f" (Dice {chosen[0]['dice'] - segmentor['dice']:+.6f}, "
                 f"HD95 {chosen[0]['hd95'] - segmentor['hd95']:+.6f} mm)")
    if not decision.get("refine"):
        if refined and segmentor:
            best = max(refined, key=lambda c: c["dice"] if not math.isnan(c["dice"]) else -math.inf)
            line += (f" (segmentor Dice {segmentor['dice']:.4f}, HD95 {segmentor['hd95']:.3f}; best refined "
                     f"candidate {decided_output(best)}: Dice {best['dice']:.4f}, HD95 {best['hd95']:.3f})")
    return line


def results_table(rows: Sequence[dict]) -> List[str]:
    """rows: dicts with name, dice, hd95 (foreground means) and seconds (per case, None: not measured)."""
    width = max([len("output")] + [len(r["name"]) for r in rows])
    lines = [f"{'output':{width}s}  {'Dice':>6s}  {'HD95 mm':>7s}  {'s/case':>6s}"]
    for r in rows:
        seconds = f"{r['seconds']:6.2f}" if r.get("seconds") is not None else f"{'-':>6s}"
        lines.append(f"{r['name']:{width}s}  {r['dice']:6.3f}  {r['hd95']:7.2f}  {seconds}")
    return lines


def report(title: str, rows: Sequence[dict]) -> None:
    log(title)
    for line in results_table(rows):
        log("  " + line)


def row(name: str, summary: dict, seconds: Optional[float]) -> dict:
    fg = summary["foreground_mean"]
    return {"name": name, "dice": fg["Dice"], "hd95": fg.get("HD95", float("nan")), "seconds": seconds}


def seconds_per_case(measured: Optional[float], folder: Path) -> Optional[float]:
    """The measured time, else the one a previous run stored next to the predictions (a reused folder)."""
    stored = folder / "demo_seconds_per_case.json"
    if measured is not None:
        stored.write_text(json.dumps(measured))
        return measured
    return json.loads(stored.read_text()) if stored.is_file() else None


# ---------------------------------------------------------------------------------------------- overlay
def mean_dice(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int] = LABELS) -> float:
    """Mean over the labels of their Dice (a label absent from both is left out; NaN if all are)."""
    from nnunetv2_hidiff.evaluation.metrics import dice, nan_mean

    return nan_mean([dice(prediction == k, reference == k) for k in labels])


def draw_overlay(rows: Sequence[dict], target: Path, panels: Sequence[str] = OVERLAY_PANELS,
                 title: str = "") -> List[List[str]]:
    """One figure row per entry of ``rows`` (dicts: name, z, image (2d), reference (2d label map), layers {panel name:
    2d label map, or a float map drawn as a heat map, e.g. an uncertainty}, case_dice {panel name: Dice of the whole
    case}), one panel per name in ``panels``; label maps are labelled with their Dice against the reference on the
    slice and on the case. Returns the panel labels, row by row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = matplotlib.colors.ListedColormap([(0, 0, 0, 0), (1.0, 0.35, 0.1, 0.55), (0.1, 0.6, 1.0, 0.55)])
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(2.3 * len(panels), 2.5 * len(rows) + 0.4),
                             squeeze=False)
    labels = []
    for r, ax_row in zip(rows, axes):
        labels.append([])
        for ax, panel in zip(ax_row, panels):
            ax.imshow(r["image"], cmap="gray")
            layer = r["reference"] if panel == "reference" else r.get("layers", {}).get(panel)
            label = panel
            if panel == "image":
                label = f"{r['name']}, slice {r['z']}"
            elif layer is None:
                label = f"{panel}\n(not available)"
            elif np.issubdtype(np.asarray(layer).dtype, np.floating):
                ax.imshow(layer, cmap="magma", alpha=0.6, interpolation="nearest")
            else:
                ax.imshow(layer, cmap=colours, vmin=0, vmax=2, interpolation="nearest")
                if panel != "reference":
                    case = r.get("case_dice", {}).get(panel)
                    label += f"\nDice {mean_dice(layer, r['reference']):.3f} slice" + \
                             (f", {case:.3f} case" if case is not None else "")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
            labels[-1].append(label)
    fig.suptitle(title or "orange: anterior, blue: posterior; Dice: mean over both", fontsize=9)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return labels


def overlay_png(work: Path, predictions: Dict[str, Path], target: Path, panels: Sequence[str] = OVERLAY_PANELS,
                max_cases: Optional[int] = None) -> Path:
    """Per held-out case (one figure row each), the slice with the most reference foreground: ``panels`` of
    ``predictions`` ({panel name: prediction folder})."""
    import SimpleITK as sitk

    def read(path: Path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    rows = []
    for label in sorted(held_out(work, "labelsTs").glob("*.nii.gz"))[:max_cases]:
        reference = read(label)
        z = int(np.argmax((reference > 0).sum(axis=(1, 2))))
        image = read(held_out(work) / label.name.replace(".nii.gz", "_0000.nii.gz"))
        volumes = {name: read(folder / label.name) for name, folder in predictions.items()}
        rows.append({"name": label.name.replace(".nii.gz", ""), "z": z, "image": image[z], "reference": reference[z],
                     "layers": {name: v[z] for name, v in volumes.items()},
                     "case_dice": {name: mean_dice(v, reference) for name, v in volumes.items()}})
    draw_overlay(rows, target, panels)
    return target


# ---------------------------------------------------------------------------------------------- main
def pipeline_check(work: Path, env: dict) -> None:
    with step("copy the dataset"):
        raw = copy_dataset(work)
    with step("plan and preprocess"):
        plan_and_preprocess(work, env)
    with step("diffusion round trip"):
        diffusion_round_trip(raw)
    with step("pipeline check: train (4 x 25 iterations) and validate"):
        fold = train(work, env)
    record = json.loads((fold / "hidiff_fold.json").read_text())
    log(decision_line(record))
    rows = [{"name": f"{name} (validation, {r['cases']} cases)", "dice": r["dice"], "hd95": r["hd95"],
             "seconds": r["seconds_per_case"]}
            for name, r in (("segmentor alone", record["validation"]["segmentor"]),
                            (f"refined, {_steps(record['validation']['refined']['steps'])}",
                             record["validation"]["refined"]))]
    with step("pipeline check: predict the held-out cases (refined) and evaluate"):
        out = work / "predictions" / "hidiff_refined"
        seconds = predict(work, env, out, [
            "nnunetv2_hidiff_predict", "--refine", "--", "-i", shown(held_out(work)), "-o", shown(out),
            "-d", str(DATASET_ID), "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "0", "-nps", "0"])
        rows.append(row("refined (6 held-out cases)", evaluate(work, fold.parent, out), seconds_per_case(seconds, out)))
    report("pipeline check, foreground mean over anterior/posterior:", rows)
    log("(4 short epochs on 19 cases: this shows that the pipeline works, not how good HiDiff is)")


def shipped_model_demo(work: Path, env: dict) -> None:
    with step("shipped model: unpack"):
        model = shipped_model(work)
    record = json.loads((model / "fold_0" / "hidiff_fold.json").read_text())
    steps = default_steps(record, record.get("trainer", model.name.split("__")[0]))
    log(f"shipped model: {shown(model)} (from demo/model; Dataset901 fold 0; the 6 held-out cases are in its "
        f"validation split, so it never trained on them)")
    outputs = (("segmentor alone", "segmentor_only", {"nnUNet_HiDiff_refine": "0"}),
               (f"refined, {_steps(steps)}", "refined",
                {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_steps": str(steps)}),
               (f"as decided ({decided_output(record['decision'])})", "as_decided", {}))
    rows, folders = [], {}
    with step("shipped model: predict (3 x 6 cases) and evaluate"):
        for (name, folder, extra_env), panel in zip(outputs, OVERLAY_PANELS[2:]):
            out = work / "predictions_shipped" / folder
            seconds = predict(work, env, out, ["nnUNetv2_predict_from_modelfolder", "-i", shown(held_out(work)),
                                               "-o", shown(out), "-m", shown(model), "-f", "0", "-device", "cpu",
                                               "-npp", "1", "-nps", "1"], extra_env)
            rows.append(row(name, evaluate(work, model, out), seconds_per_case(seconds, out)))
            folders[panel] = out
    report("shipped model, 6 held-out cases, foreground mean over anterior/posterior (s/case: prediction only, "
           "process start and model loading excluded):", rows)
    log(decision_line(record))
    with step("overlay"):
        png = overlay_png(work, folders, work / "demo_overlay.png")
    log(f"overlay (one row per held-out case: {', '.join(OVERLAY_PANELS)}): {shown(png)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="demo_output", help="scratch folder for the nnU-Net trees")
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(work)
    dropped = sorted(k for k in os.environ if k.startswith("nnUNet_HiDiff_"))
    if dropped:
        log(f"ignoring {', '.join(dropped)} from your environment (the demo sets what it forces)")
    log("environment of every command below: " + " ".join(
        f"{k}={env[k]}" for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")))
    started, cpu_started = time.perf_counter(), cpu_seconds()
    pipeline_check(work, env)
    shipped_model_demo(work, env)
    log("time per step:   wall    CPU  load")
    for name, (wall, cpu, load) in STEP_SECONDS.items():
        log(f"  {wall:6.0f} s {cpu:6.0f} s  {load:4.1f}  {name}")
    log(f"  {time.perf_counter() - started:6.0f} s {cpu_seconds() - cpu_started:6.0f} s        total")
    log(f"done. Results under {shown(work)}.")


if __name__ == "__main__":
    sys.exit(main())
