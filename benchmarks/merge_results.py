"""Merge benchmark collections of different folds into one results.csv + summary.md (prints what it wrote).

The benchmark collects folds from their fold folders under nnUNet_results. When the folds of one protocol were
trained in different sessions (machines), only the committed results.csv and hidiff_fold.json copies of the
earlier folds survive; this script pools them with a new collection and renders the benchmark's usual
summary.md from the rows alone:

    python benchmarks/merge_results.py -d Dataset901_Hippocampus -p nnUNetPlans_hidiffCPU \
        --results A/results.csv B/results.csv --records 'DIR/hidiff_fold_w8_joint_bce1_res_cpuWarm500_fold*.json' \
        --trainers nnUNetTrainerBaseline_5epochs nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 -o OUT

Rows are keyed by (trainer, fold, split, output, case, class, metric); a key present in two inputs is an error
(the same fold collected twice). The HD95 NaN ratio is recounted from the per-case rows (Dice NaN = both masks
empty; HD95 NaN with a defined Dice = one mask empty), exactly the counts the evaluation writes. What the rows do
not hold is left out and said so: the small-object section (it needs the predictions) and wall times.
``--records`` are hidiff_fold.json files (one per HiDiff fold, matched by their ``trainer``): the
decision and speed sections come from them; the fold is the record's ``fold`` key, else its folder
``fold_N`` or a ``_foldN.json`` file name.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunetv2_hidiff.benchmark.collect import read_csv, sort_rows, write_csv  # noqa: E402
from nnunetv2_hidiff.benchmark.report import ReportInput, render_markdown, write_figure  # noqa: E402


def nan_counts(rows):
    """(trainer, split, fold, output) -> class -> the evaluation's empty-mask counts, from per-case rows."""
    dice, hd = {}, {}
    for r in rows:
        key = (r.trainer, r.split, r.fold, r.output, r.cls, r.case)
        if r.metric == "Dice":
            dice[key] = r.value
        elif r.metric == "HD95":
            hd[key] = r.value
    out = {}
    for key, d in dice.items():
        per = out.setdefault(key[:4], {}).setdefault(key[4], {"n": 0, "n_both_empty": 0, "n_hd95_undefined": 0})
        per["n"] += 1
        if math.isnan(d):
            per["n_both_empty"] += 1
        elif math.isnan(hd.get(key, float("nan"))):
            per["n_hd95_undefined"] += 1
    return out


def _fold_from_path(path: Path):
    """The fold of a hidiff_fold.json: its folder fold_N, or a copy named ..._foldN.json."""
    m = re.search(r"fold_(\d+)$", path.parent.name) or re.search(r"_fold(\d+)\.json$", path.name)
    return int(m.group(1)) if m else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", required=True, help="DatasetXXX_Name (for the title)")
    ap.add_argument("-c", "--configuration", default="2d")
    ap.add_argument("-p", "--plans", default="nnUNetPlans")
    ap.add_argument("--results", nargs="+", required=True, help="results.csv files to pool")
    ap.add_argument("--records", nargs="*", default=[], help="hidiff_fold.json files (globs allowed)")
    ap.add_argument("--trainers", nargs="+", required=True, help="trainers in report order, reference first")
    ap.add_argument("--budgets", nargs="*", default=[], help="TRAINER=TEXT for the budget column")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)

    rows, seen = [], {}
    for path in args.results:
        for r in read_csv(Path(path)):
            if r.trainer not in args.trainers:
                continue
            key = (r.trainer, r.fold, r.split, r.output, r.case, r.cls, r.metric)
            if key in seen:
                print(f"merge_results: {path}: {r.trainer} fold {r.fold} {r.split} {r.output} case {r.case} is "
                      f"also in {seen[key]} (the same fold collected twice)", file=sys.stderr)
                return 2
            seen[key] = path
            rows.append(r)
    if not rows:
        print("merge_results: no rows of the given trainers", file=sys.stderr)
        return 2
    records = {}
    for pattern in args.records:
        for f in sorted(glob.glob(pattern)) or [pattern]:
            rec = json.loads(Path(f).read_text())
            fold = rec.get("fold", _fold_from_path(Path(f)))
            if fold is None:
                print(f"merge_results: {f}: no 'fold' key and no fold_N / _foldN in the path", file=sys.stderr)
                return 2
            records.setdefault(rec["trainer"], {})[str(fold)] = rec
    folds = sorted({int(r.fold) for r in rows if r.fold.isdigit()})
    warm = {t: {int(f): rec["warm_start"] for f, rec in recs.items() if isinstance(rec.get("warm_start"), str)}
            for t, recs in records.items()}
    budgets = dict(b.split("=", 1) for b in args.budgets)
    for t, recs in records.items():
        known = {(r["budget"]["epochs"], r["budget"]["iterations_per_epoch"]) for r in recs.values() if r.get("budget")}
        if t not in budgets and len(known) == 1:
            budgets[t] = "{} epochs × {} iterations".format(*known.pop())
    command = "python benchmarks/merge_results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    inp = ReportInput(
        dataset=args.dataset, configuration=args.configuration, plans=args.plans, trainers=list(args.trainers),
        folds=folds, command=command, rows=sort_rows(rows, args.trainers), nan_counts=nan_counts(rows),
        budgets=budgets, warm_starts={t: w for t, w in warm.items() if w},
        missing={t: [] for t in args.trainers}, generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        records=records,  # HiDiff trainers: those with refined rows (ReportInput.hidiff_trainers)
        problems=["pooled from results.csv files (benchmarks/merge_results.py): no small-object section and no wall "
                  "times (they need the fold folders)"])
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(inp.rows, out / "results.csv")
    (out / "summary.md").write_text(render_markdown(inp))
    write_figure(inp, out / "benchmark.png")
    print(f"merge_results: {len(rows)} rows, folds {folds}: wrote {out / 'results.csv'}, {out / 'summary.md'}, "
          f"{out / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
