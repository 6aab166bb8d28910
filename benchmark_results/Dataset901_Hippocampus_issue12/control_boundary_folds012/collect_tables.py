"""collect_tables.txt: per 901 fold, every output of the control, the uniform-t run and the boundary run, with paired
tests against the control and against each run's own segmentor (benchmarks/paired_runs.py's per_case and paired).

    python collect_tables.py 0 1 2 > collect_tables.txt      (nnUNet_results as for the training)
"""
import json, os, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from paired_runs import per_case, paired

R = Path(os.environ["nnUNet_results"]) / "Dataset901_Hippocampus"
P = "nnUNetPlans_hidiffCPU__2d"
def fold(tr, f): return R / f"{tr}__{P}" / f"fold_{f}"
BASE, CTRL = "nnUNetTrainerBaseline_5epochs", "nnUNetTrainerBaseline_cpuWarm500"
GATED, BND = "nnUNetTrainerHiDiff_w8_joint_bce1_res_gated_cpuWarm500", "nnUNetTrainerHiDiff_w8_joint_bce1_res_boundary4_cpuWarm500"

def decided_folder(fd):
    rec = json.loads((fd / "hidiff_fold.json").read_text())
    d = rec["decision"]
    for v in rec["validation"].values():
        if (v["refine"], v["steps"] if v["refine"] else 0, v.get("combine", "none"), v.get("gate")) == \
                (d["refine"], d["steps"], d.get("combine", "none"), d.get("gate")):
            return v["folder"], d
    raise SystemExit(f"{fd}: decision has no folder")

def hd(a, b):
    d = np.array([b[k] - a[k] for k in a if k in b and np.isfinite(a[k]) and np.isfinite(b[k])])
    from scipy.stats import wilcoxon
    p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
    return f"{d.mean():+.3f} mm (lower on {(d < 0).sum()}/{d.size}, higher on {(d > 0).sum()}, p={p:.3g})"

rows = {}
for f in sys.argv[1:]:
    f = int(f)
    out = {}
    out["plain nnU-Net, 1250 it. (TTA)"] = fold(BASE, f) / "validation"
    out["plain nnU-Net continued to 1750 it. (control)"] = fold(CTRL, f) / "validation"
    for name, tr in (("uniform-t run (gated)", GATED), ("boundary4", BND)):
        fd = fold(tr, f)
        if not (fd / "hidiff_fold.json").is_file() or "decision" not in json.loads((fd / "hidiff_fold.json").read_text()):
            continue
        out[f"{name}: segmentor"] = fd / "validation_segmentor"
        out[f"{name}: refined 1 step"] = fd / "validation_refined"
        if (fd / "validation_union").is_dir():
            out[f"{name}: union"] = fd / "validation_union"
        folder, d = decided_folder(fd)
        out[f"{name}: as decided ({'segmentor' if not d['refine'] else d.get('combine') + (str(d.get('gate')) if d.get('gate') else '')})"] = fd / folder
    data = {}
    print(f"== fold {f}")
    for k, v in out.items():
        m = per_case(v / "summary.json")
        data[k] = m
        print(f"  {k:60s} {np.nanmean(list(m['Dice'].values())):.5f} / {np.nanmean(list(m['HD95'].values())):.3f}")
    ctrl = data["plain nnU-Net continued to 1750 it. (control)"]
    for k in data:
        if k.startswith(("uniform", "boundary")) and ("segmentor" in k or "decided" in k):
            print(f"  {k} − control: Dice {paired(ctrl['Dice'], data[k]['Dice'])}; HD95 {hd(ctrl['HD95'], data[k]['HD95'])}")
    for name in ("uniform-t run (gated)", "boundary4"):
        if f"{name}: segmentor" in data:
            s = data[f"{name}: segmentor"]
            for k in data:
                if k.startswith(name) and ("refined" in k or "union" in k):
                    print(f"  {k} − its segmentor: Dice {paired(s['Dice'], data[k]['Dice'])}; HD95 {hd(s['HD95'], data[k]['HD95'])}")
    if "boundary4: refined 1 step" in data:
        print(f"  boundary4 refined − uniform refined: Dice {paired(data['uniform-t run (gated): refined 1 step']['Dice'], data['boundary4: refined 1 step']['Dice'])}")
