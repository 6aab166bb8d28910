"""Rows for results.csv (the benchmark's long format, column `output`) from the fold folders of the 2026-12-04 H200
run, whose HiDiff final validations were cut off by the call's time limit (see README.md beside this file).

    python collect_partial_validation.py RESULTS_DIR OUT_CSV

RESULTS_DIR is a copy of the run's nnUNet_results in which each finished validation run sits in the folder its
trainer would have moved it to (validation_segmentor, validation_refined); each is evaluated with the package's own
evaluate_fold (nnU-Net's metrics + HD95 against $nnUNet_preprocessed/Dataset902_DRIVE/gt_segmentations) and
collected with the benchmark's collect_summary.
"""
import glob
import json
import os
import sys
from pathlib import Path

from nnunetv2_hidiff.benchmark.collect import collect_summary, load_summary, write_csv
from nnunetv2_hidiff.evaluation.folder import evaluate_fold

if __name__ == "__main__":
    root, out_csv = sys.argv[1], Path(sys.argv[2])
    rows = []
    for v in sorted(glob.glob(os.path.join(root, "Dataset902_DRIVE", "*", "fold_*", "validation*"))):
        trainer = v.split(os.sep)[-3].split("__")[0]
        fold, folder = v.split(os.sep)[-2].split("_")[1], v.split(os.sep)[-1]
        if folder == "validation" and "HiDiff" in trainer:
            continue  # an unfinished run (no summary)
        evaluate_fold(os.path.dirname(v), folder, num_processes=2)
        summary = load_summary(Path(v) / "summary.json")
        dataset_json = json.load(open(os.path.join(os.path.dirname(os.path.dirname(v)), "dataset.json")))
        output = "refined" if folder.startswith("validation_refined") else "segmentor"
        rows += collect_summary(summary, trainer, fold, "validation", dataset_json, output=output).rows
        fg = summary["foreground_mean"]
        print(f"{trainer} fold {fold} {output}: {len(summary['metric_per_case'])} cases, Dice {fg['Dice']:.4f}, "
              f"HD95 {fg['HD95']:.3f}")
    write_csv(rows, out_csv)
