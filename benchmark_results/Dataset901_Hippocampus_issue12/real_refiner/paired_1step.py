"""Per-case comparison on one fold of 901 where the real-valued refiner, the binary gated run and the equal-budget
controls all start from the same Baseline_5epochs checkpoint (folds 0-2 of this machine): real 1 step - binary 1 step,
the real run's 1-step combinations against its segmentor, and its segmentor against plain nnU-Net given the same
iterations (cpuWarm500) and the same time (cpuWarm700). The outputs are found through each fold record's
`validation` entries (steps, combine), not by folder name. Run from the repository root with nnUNet_results set:

    python benchmark_results/Dataset901_Hippocampus_issue12/real_refiner/paired_1step.py 0
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from paired_runs import paired, per_case  # noqa: E402

fold = int(sys.argv[1])
root = Path(os.environ["nnUNet_results"]) / "Dataset901_Hippocampus"


def fold_dir(trainer):
    return root / f"{trainer}__nnUNetPlans_hidiffCPU__2d" / f"fold_{fold}"


def output(trainer, steps, combine="none"):
    d = fold_dir(trainer)
    entries = json.loads((d / "hidiff_fold.json").read_text())["validation"].values()
    e = next(e for e in entries if e["steps"] == steps and e.get("combine", "none") == combine)
    return per_case(d / e["folder"] / "summary.json")["Dice"]


def control(trainer):
    return per_case(fold_dir(trainer) / "validation" / "summary.json")["Dice"]


real, binary = "nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500", "nnUNetTrainerHiDiff_w8_joint_bce1_res_gated_cpuWarm500"
seg = output(real, 0)
print(f"901 fold {fold}, per-case foreground Dice, paired (Wilcoxon); same Baseline_5epochs fold-{fold} checkpoint for all runs")
print("real refined 1 step − binary refined 1 step:", paired(output(binary, 1), output(real, 1)))
print("real segmentor + new refined components, 1 step − its segmentor:", paired(seg, output(real, 1, "new_components")))
print("real segmentor ∪ refined, 1 step − its segmentor:", paired(seg, output(real, 1, "union")))
for c in ("nnUNetTrainerBaseline_cpuWarm500", "nnUNetTrainerBaseline_cpuWarm700"):
    print(f"real segmentor − {c}:", paired(control(c), seg))
