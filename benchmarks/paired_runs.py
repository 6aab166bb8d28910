"""Per-case comparison of HiDiff runs of one fold, read from the validation folders the trainer writes.

    python benchmarks/paired_runs.py -d 901 -p nnUNetPlans_hidiffCPU -f 0 \\
        nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 nnUNetTrainerHiDiff_w8_joint_bce1_res_oof_cpuWarm500

For each run: the foreground Dice / HD95 (mean over classes per case, then over cases, as nnU-Net's
``foreground_mean``) of its segmentor alone and of each refined output (``validation_refined_{1,2,5}steps``,
``validation_refined``), and refined − segmentor per case (mean, cases better / worse, Wilcoxon signed-rank p).
With two runs, also run 2 − run 1 on each output (meaningful when both warm-start from the same checkpoint, so
that the only difference is the trainer's configuration, or, for two runs of one trainer, chance). A run is a trainer
name (its fold under nnUNet_results) or the path of a fold folder. A plain nnU-Net fold (record kind "baseline", e.g.
``nnUNetTrainerBaseline_cpuWarm500``, the equal-budget control) has one output, its ``validation/``, which is
compared as ``validation_segmentor``. Numbers only, no asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict

import numpy as np

from nnunetv2_hidiff.benchmark.report_base import fmt_p
from nnunetv2_hidiff.benchmark.stats import paired_differences, wilcoxon_paired

FOLDERS = ("validation_segmentor", "validation_refined_1steps", "validation_refined_2steps",
           "validation_refined_5steps", "validation_refined")


def per_case(summary: Path) -> Dict[str, Dict[str, float]]:
    """{metric: {case file: mean over classes}} for Dice and HD95 from an nnU-Net summary.json."""
    try:
        cases = json.loads(summary.read_text())["metric_per_case"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{summary}: not a readable nnU-Net summary.json ({e})")
    return {metric: {Path(c["reference_file"]).name:
                     float(np.nanmean([c["metrics"][k][metric] for k in sorted(c["metrics"])])) for c in cases}
            for metric in ("Dice", "HD95")}


def paired(a: Dict[str, float], b: Dict[str, float]) -> str:
    """b − a over the cases where both are finite (the benchmark's own pairing and Wilcoxon test)."""
    _, d = paired_differences(a, b)
    if not d.size:
        return "no finite pairs"
    return (f"{d.mean():+.4f} (better {int((d > 0).sum())}/{d.size}, worse {int((d < 0).sum())}, "
            f"Wilcoxon p={fmt_p(wilcoxon_paired(a, b))})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", required=True, help="dataset id or name (folder under nnUNet_results)")
    ap.add_argument("-p", default="nnUNetPlans")
    ap.add_argument("-c", default="2d")
    ap.add_argument("-f", required=True, help="fold")
    ap.add_argument("trainers", nargs="+", help="trainer names, or fold folders (e.g. an earlier run moved aside)")
    args = ap.parse_args()
    results = os.environ.get("nnUNet_results")
    if not results:
        sys.exit("nnUNet_results is not set")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    dataset = maybe_convert_to_dataset_name(args.d)
    data = {}
    for tr in args.trainers:
        # a trainer name, or the path of a fold folder (two runs of one trainer: move the first run's fold aside)
        fold = (Path(tr) if Path(tr).is_dir()
                else Path(results) / dataset / f"{tr}__{args.p}__{args.c}" / f"fold_{args.f}")
        record = fold / "hidiff_fold.json"
        if not record.is_file():
            sys.exit(f"{record}: missing (not a finished HiDiff fold)")
        rec = json.loads(record.read_text())
        decision = rec.get("decision", {})
        print(f"== {tr} fold {args.f}: decided refine={decision.get('refine')} steps={decision.get('steps')}, "
              f"{rec.get('seconds_per_iteration')} s/iteration")
        # a plain nnU-Net fold has one output, validation/: the segmentor
        outputs = {FOLDERS[0]: "validation"} if rec.get("kind") == "baseline" else {name: name for name in FOLDERS}
        for name, folder_name in outputs.items():
            folder = fold / folder_name
            if not (folder / "summary.json").is_file():
                continue
            metrics = per_case(folder / "summary.json")
            dice, hd = metrics["Dice"], metrics["HD95"]
            data[(tr, name)] = dice
            line = f"  {name:28s} Dice {np.nanmean(list(dice.values())):.4f} HD95 {np.nanmean(list(hd.values())):.3f}"
            if name != FOLDERS[0] and (tr, FOLDERS[0]) in data:
                line += "  vs segmentor " + paired(data[(tr, FOLDERS[0])], dice)
            print(line)
    if len(args.trainers) == 2:
        a, b = args.trainers
        for name in FOLDERS:
            if (a, name) in data and (b, name) in data:
                print(f"  {b} − {a}, {name}: {paired(data[(a, name)], data[(b, name)])}")


if __name__ == "__main__":
    main()
