"""How much does the refiner change a trained HiDiff model's validation result?

    python benchmarks/segmentor_vs_refined.py -d 901 -p nnUNetPlans_hidiffCPU -tr nnUNetTrainerHiDiff_cpuWarm100 \
        --folds 0 1 2 3 4

For every fold that has finished (``validation/summary.json`` exists), predicts the fold's validation cases
again with ``nnUNet_HiDiff_refine=0`` (the same network's segmentor alone, no mirroring TTA, as the
benchmark trainers validate) and evaluates them with nnunetv2_hidiff's metrics on the whole image, as the fold's
summary.json was (no FOV restriction, so both columns are computed the same way). It prints, per fold, the
foreground-mean Dice and HD95 of the segmentor alone next to the refined values from the fold's own
``validation/summary.json``, and the mean over folds. Environment: nnUNet_raw, nnUNet_preprocessed,
nnUNet_results and nnUNet_extTrainer as for training. Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True)
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-c", default="2d")
    parser.add_argument("-tr", required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("-np", type=int, default=1)
    args = parser.parse_args()

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2_hidiff.evaluation.folder import evaluate_folder

    name = maybe_convert_to_dataset_name(args.d)
    raw = Path(os.environ["nnUNet_raw"]) / name
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    trainer_dir = Path(os.environ["nnUNet_results"]) / name / f"{args.tr}__{args.p}__{args.c}"
    splits = load_json(str(pre / "splits_final.json"))
    file_ending = load_json(str(raw / "dataset.json"))["file_ending"]
    bin_dir = Path(sys.executable).parent
    rows = []
    for fold in args.folds:
        summary_file = trainer_dir / f"fold_{fold}" / "validation" / "summary.json"
        if not summary_file.is_file():
            print(f"fold {fold}: not finished, skipped")
            continue
        refined = json.loads(summary_file.read_text())["foreground_mean"]
        cases = splits[fold]["val"]
        with tempfile.TemporaryDirectory() as tmp:
            images, out = Path(tmp) / "images", Path(tmp) / "segmentor"
            images.mkdir()
            for f in sorted((raw / "imagesTr").iterdir()):
                case = f.name[: -len(file_ending)].rsplit("_", 1)[0]
                if case in cases:
                    (images / f.name).symlink_to(f)
            env = dict(os.environ, nnUNet_HiDiff_refine="0")
            cmd = [str(bin_dir / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", name, "-c", args.c,
                   "-p", args.p, "-tr", args.tr, "-f", str(fold), "-device", "cpu", "--disable_tta",
                   "-npp", str(args.np), "-nps", str(args.np)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"fold {fold}: nnUNetv2_predict failed:\n{done.stderr[-2000:]}")
            seg = evaluate_folder(str(raw / "labelsTr"), str(out), str(raw / "dataset.json"),
                                  str(pre / f"{args.p}.json"), num_processes=args.np, chill=True)["foreground_mean"]
        rows.append((fold, seg["Dice"], refined["Dice"], seg["HD95"], refined["HD95"]))
        print(f"fold {fold}: Dice segmentor {seg['Dice']:.4f} refined {refined['Dice']:.4f} | "
              f"HD95 segmentor {seg['HD95']:.3f} refined {refined['HD95']:.3f}", flush=True)
    if rows:
        n = len(rows)
        means = [sum(r[i] for r in rows) / n for i in range(1, 5)]
        print(f"mean over {n} folds: Dice segmentor {means[0]:.4f} refined {means[1]:.4f} | "
              f"HD95 segmentor {means[2]:.3f} refined {means[3]:.3f}")


if __name__ == "__main__":
    main()
