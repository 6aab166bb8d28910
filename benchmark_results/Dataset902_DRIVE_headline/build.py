"""Build this folder from the committed per-fold DRIVE records: results.csv, summary.md and benchmark/ (run from the
repository root with the project's environment: `python benchmark_results/Dataset902_DRIVE_headline/build.py`).

Inputs (nothing is trained or predicted again):

* the per-case benchmark collections of the three warm-start folds,
  ``../Dataset902_DRIVE_issue12/combine_fold0/benchmark_as_decided/results.csv``, ``combine_fold1/results.csv`` and
  ``combine_fold2/results.csv`` (trainers nnUNetTrainerBaseline_5epochs, nnUNetTrainerBaseline_cpuWarm500,
  nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500);
* the per-fold means of ``benchmarks/compare_outputs.py`` in ``combine_fold{0,1,2}/test_outputs.json``, the only
  record of the 1-step refined and union outputs that the benchmark did not predict itself.

Steps:

1. results.csv: the three collections pooled. Each one predicted the test set with a one-fold ensemble
   (``--test-folds k``), so its test rows say ``ensemble``; here they carry that fold's number k instead, which
   keeps the keys of the three folds apart (otherwise the same key would appear three times).
2. benchmark/: ``benchmarks/merge_results.py`` on that results.csv and the fold records in fold_records/
   (its summary.md covers the 12 validation images; merge_results.py renders no test section).
3. summary.md: the headline table of the test set per fold, (a) from compare_outputs.py's means, the source of the
   README table, and (b) recomputed from the per-case rows of results.csv, with every difference to the README
   table's printed values listed.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SRC = HERE.parent / "Dataset902_DRIVE_issue12"
sys.path.insert(0, str(ROOT))

from nnunetv2_hidiff.benchmark.collect import Row, read_csv, sort_rows, write_csv  # noqa: E402

BASE, CONTROL, HIDIFF = ("nnUNetTrainerBaseline_5epochs", "nnUNetTrainerBaseline_cpuWarm500",
                         "nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500")
TRAINERS = [CONTROL, HIDIFF, BASE]  # the order (and reference) of combine_fold1/2's benchmark
SOURCES = {0: SRC / "combine_fold0" / "benchmark_as_decided" / "results.csv",
           1: SRC / "combine_fold1" / "results.csv", 2: SRC / "combine_fold2" / "results.csv"}
FOLDS = (0, 1, 2)

# The README table "The three DRIVE folds together" (git show d27fa6f:README.md), as printed:
# row -> (Dice_FOV per fold, mean, HD95 px per fold, mean).
README = {
    "plain nnU-Net, 1250 iterations": ((0.8097, 0.8118, 0.8093), 0.8103, (6.14, 5.82, 6.29), 6.08),
    "plain nnU-Net, 1750 iterations (control)": ((0.8146, 0.8154, 0.8146), 0.8149, (5.43, 5.73, 5.81), 5.66),
    "HiDiff's segmentor alone": ((0.8135, 0.8157, 0.8143), 0.8145, (6.00, 5.91, 6.45), 6.12),
    "HiDiff refined alone, 1 step": ((0.8096, 0.8133, 0.8053), 0.8094, (5.49, 4.91, 5.95), 5.45),
    "HiDiff segmentor ∪ refined, 1 step": ((0.8138, 0.8153, 0.8145), 0.8145, (5.28, 5.01, 5.61), 5.30),
    "HiDiff as decided (union, segmentor, union)": ((0.8138, 0.8157, 0.8145), 0.8147, (5.28, 5.91, 5.61), 5.60),
}
# compare_outputs.py's output names per fold (test_outputs.json) for each README row.
COMPARE_NAMES = {
    "plain nnU-Net, 1250 iterations": ["plain_nnU-Net_1250it"] * 3,
    "plain nnU-Net, 1750 iterations (control)": ["plain_nnU-Net_1750it_control"] * 3,
    "HiDiff's segmentor alone": ["segmentor"] * 3,
    "HiDiff refined alone, 1 step": ["refined_1step"] * 3,
    "HiDiff segmentor ∪ refined, 1 step": ["union_1step_as_decided", "union_1step", "union_1step"],
    "HiDiff as decided (union, segmentor, union)": ["union_1step_as_decided", "as_decided", "as_decided"],
}
# (trainer, output) of results.csv for each README row, per fold; None where the benchmark did not predict it.
CSV_SERIES = {
    "plain nnU-Net, 1250 iterations": [(BASE, "segmentor")] * 3,
    "plain nnU-Net, 1750 iterations (control)": [(CONTROL, "segmentor")] * 3,
    "HiDiff's segmentor alone": [(HIDIFF, "segmentor")] * 3,
    # fold 0's forced refined test prediction ran at the decided 1 step (combine_fold0/README.md, note);
    # folds 1 and 2 predicted it at the refined validation's 10 steps.
    "HiDiff refined alone, 1 step": [(HIDIFF, "refined"), None, None],
    "HiDiff segmentor ∪ refined, 1 step": [(HIDIFF, "decided"), None, None],  # fold 0 decided the union at 1 step
    "HiDiff as decided (union, segmentor, union)": [(HIDIFF, "decided")] * 3,
    "HiDiff refined alone, 10 steps": [None, (HIDIFF, "refined"), (HIDIFF, "refined")],
}


def pooled_rows():
    rows = []
    for k, path in SOURCES.items():
        for r in read_csv(path):
            if r.split == "test":
                assert r.fold == "ensemble", (path, r)
                r = Row(r.trainer, str(k), r.cls, r.case, r.metric, r.value, r.split, r.output)
            else:
                assert r.fold == str(k), (path, r)
            rows.append(r)
    return sort_rows(rows, TRAINERS)


def csv_mean(rows, trainer, output, fold, metric):
    vals = [float(r.value) for r in rows if r.trainer == trainer and r.output == output and r.split == "test"
            and r.fold == str(fold) and r.metric == metric]
    vals = [v for v in vals if not math.isnan(v)]
    assert len(vals) == 20, (trainer, output, fold, metric, len(vals))
    return sum(vals) / len(vals)


def fmt(v, nd):
    return "n/a" if v is None else f"{v:.{nd}f}"


def table(title_cols, body):
    out = ["| " + " | ".join(title_cols) + " |", "|" + "---|" * len(title_cols)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return out


def main() -> int:
    rows = pooled_rows()
    write_csv(rows, HERE / "results.csv")
    rel = HERE.relative_to(ROOT)
    cmd = [sys.executable, "benchmarks/merge_results.py", "-d", "Dataset902_DRIVE", "-p", "nnUNetPlans_hidiffCPU",
           "--results", f"{rel}/results.csv", "--records", f"{rel}/fold_records/*.json",
           "--trainers", *TRAINERS, "-o", f"{rel}/benchmark"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    dup = HERE / "benchmark" / "results.csv"  # merge_results.py rewrites the same rows: keep one copy
    assert dup.read_bytes() == (HERE / "results.csv").read_bytes(), "merge_results.py changed the rows"
    dup.unlink()

    compare = {k: json.loads((SRC / f"combine_fold{k}" / "test_outputs.json").read_text())["outputs"] for k in FOLDS}
    lines = ["# DRIVE headline: the warm-start folds 0-2 on the 20 test images", "",
             "Written by `python benchmark_results/Dataset902_DRIVE_headline/build.py` (see README.md). Each fold's "
             "own model (no TTA) on the 20 DRIVE test images; Dice inside the FOV; mean = the mean of the three fold "
             "means.", "",
             "## (a) As in the README: benchmarks/compare_outputs.py (HD95 over the whole image, px)", "",
             "Source: `../Dataset902_DRIVE_issue12/combine_fold{0,1,2}/test_outputs.json`. This is the table of the "
             "old README's \"The three DRIVE folds together\", recomputed from the unrounded means.", ""]
    body, mismatches = [], []
    for name, names in COMPARE_NAMES.items():
        dice = [compare[k][names[k]]["dice"] for k in FOLDS]
        hd = [compare[k][names[k]]["hd95"] for k in FOLDS]
        md, mh = sum(dice) / 3, sum(hd) / 3
        body.append([name, ", ".join(fmt(v, 4) for v in dice), fmt(md, 4), ", ".join(fmt(v, 2) for v in hd),
                     fmt(mh, 2)])
        r_dice, r_md, r_hd, r_mh = README[name]
        for what, got, want, nd in ([(f"Dice fold {k}", dice[k], r_dice[k], 4) for k in FOLDS]
                                    + [("Dice mean", md, r_md, 4)]
                                    + [(f"HD95 fold {k}", hd[k], r_hd[k], 2) for k in FOLDS]
                                    + [("HD95 mean", mh, r_mh, 2)]):
            if fmt(got, nd) != fmt(want, nd):
                note = ""
                if what.endswith("mean"):  # the README averaged its rounded fold values
                    printed = r_dice if what.startswith("Dice") else r_hd
                    note = (f"; the mean of the README's rounded fold values is "
                            f"{sum(printed) / 3:.{nd + 1}f}")
                mismatches.append(f"- {name}, {what}: {fmt(got, nd)} here ({got:.5f}), {fmt(want, nd)} in the "
                                  f"README{note}")
    lines += table(["DRIVE test set, folds 0, 1, 2", "Dice_FOV per fold", "mean", "HD95 (px) per fold", "mean"],
                   body)
    lines += ["", "Differences to the README table's printed values:", ""]
    lines += mismatches or ["- none"]
    lines += ["", "## (b) From results.csv's per-case rows (the benchmark's evaluation: HD95 inside the FOV, px)", "",
              "n/a: the benchmark did not predict that output for that fold (fold 0's forced refined prediction ran "
              "at its decided 1 step, folds 1 and 2 at 10 steps; the union at 1 step is fold 0's decided output). "
              "Dice_FOV is the same evaluation as in (a); HD95 differs from (a) because the benchmark computes it "
              "inside the FOV, compare_outputs.py over the whole image.", ""]
    body = []
    for name, series in CSV_SERIES.items():
        dice = [None if s is None else csv_mean(rows, s[0], s[1], k, "Dice_FOV") for k, s in zip(FOLDS, series)]
        hd = [None if s is None else csv_mean(rows, s[0], s[1], k, "HD95") for k, s in zip(FOLDS, series)]
        full = all(v is not None for v in dice)
        body.append([name, ", ".join(fmt(v, 4) for v in dice), fmt(sum(dice) / 3, 4) if full else "n/a",
                     ", ".join(fmt(v, 2) for v in hd), fmt(sum(hd) / 3, 2) if full else "n/a"])
    lines += table(["DRIVE test set, folds 0, 1, 2", "Dice_FOV per fold", "mean", "HD95 inside the FOV (px) per fold",
                    "mean"], body)
    lines += ["", "Validation (4 images per fold), the fold records' decisions and seconds per iteration: "
              "`benchmark/summary.md` (benchmarks/merge_results.py).", ""]
    (HERE / "summary.md").write_text("\n".join(lines))
    print(f"build.py: {len(rows)} rows; wrote {rel}/results.csv, {rel}/summary.md, {rel}/benchmark/; "
          f"{len(mismatches)} differences to the README table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
