"""The real-valued refiner (nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500) on 901, one row per run from the
fold records: segmentor alone, refined at 1 and 10 steps, the best segmentor+refined combination at 1 step, and the
decision. Run from the repository root; prints markdown."""
import json
import sys
from pathlib import Path

import numpy as np

from nnunetv2_hidiff.training.pooled_decision import describe

R = Path("benchmark_results/Dataset901_Hippocampus_issue12")
RUNS = [  # fold, run label, record
    (0, "2026-12-02, earlier machine", R / "hidiff_fold_real_w8_joint_bce1_res_cpuWarm500_fold0.json"),
    (1, "2026-12-03, earlier machine", R / "hidiff_fold_real_w8_joint_bce1_res_cpuWarm500_fold1.json"),
    (0, "2026-12-06, rerun", R / "real_refiner/hidiff_real_fold0_record.json"),
    (1, "2026-12-06, rerun", R / "real_refiner/hidiff_real_fold1_record.json"),
    (2, "2026-12-06", R / "real_refiner/hidiff_real_fold2_record.json"),
    (3, "2026-12-06", R / "real_refiner/hidiff_real_fold3_record.json"),
    (4, "2026-12-06", R / "real_refiner/hidiff_real_fold4_record.json"),
]


def entry(v, combine, steps):
    return next((e for e in v.values() if e.get("combine", "none") == combine and e["steps"] == steps
                 and e.get("refine", True)), None)


def decided(d, seg, v):
    """The fold's decision, and what it gained on the validation cases when it refines."""
    if not d["refine"]:
        return "segmentor"  # the table's short word for describe()'s "segmentor alone"
    e = entry(v, d.get("combine", "none"), d["steps"])
    return f"{describe(d)}: {e['dice'] - seg['dice']:+.5f} / {e['hd95']:.3f}"


rows, latest = [], {}  # latest: the last run listed per fold (the reruns of folds 0 and 1)
for fold, label, path in RUNS:
    if not path.is_file():
        continue
    rec = json.loads(path.read_text())
    v = rec["validation"]
    seg = v["segmentor"]
    r1, r10 = entry(v, "none", 1), entry(v, "none", 10)
    combos = [e for e in (entry(v, "new_components", 1), entry(v, "union", 1)) if e]
    best = max(combos, key=lambda e: e["dice"]) if combos else None
    d = rec["decision"]
    cells = [str(fold), label, f"{seg['dice']:.4f} / {seg['hd95']:.2f}",
             f"{r1['dice'] - seg['dice']:+.4f} / {r1['hd95']:.2f}",
             f"{r10['dice'] - seg['dice']:+.4f} / {r10['hd95']:.2f}",
             (f"{best['combine']}: {best['dice'] - seg['dice']:+.4f} / {best['hd95']:.2f}" if best else "— (not validated)"),
             decided(d, seg, v), f"{rec['seconds_per_iteration']:.2f}"]
    rows.append(cells)
    latest[fold] = (seg, r1, r10)
print("| Fold | Run | Segmentor alone: Dice / HD95 | Refined 1 step: ΔDice / HD95 | Refined 10 steps: ΔDice / HD95 "
      "| Best combination at 1 step: ΔDice / HD95 | Decided | s / iteration |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
if len(latest) == 5:
    seg = np.mean([s["dice"] for s, _, _ in latest.values()])
    d1 = [r1["dice"] - s["dice"] for s, r1, _ in latest.values()]
    d10 = [r10["dice"] - s["dice"] for s, _, r10 in latest.values()]
    print(f"\nThe last run per fold (one machine), 5 folds: segmentor {seg:.4f}; refined 1 step {np.mean(d1):+.4f} "
          f"(worse on {sum(x < 0 for x in d1)} of 5 folds), 10 steps {np.mean(d10):+.4f} "
          f"(worse on {sum(x < 0 for x in d10)} of 5)")
