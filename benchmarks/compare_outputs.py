"""Per-image Dice (inside the FOV when given) and HD95 of several prediction folders of the same 2d cases, each
against a reference output folder, with paired Wilcoxon tests (issue 12: the outputs a HiDiff fold can predict).

    python benchmarks/compare_outputs.py LABELS_DIR --fov FOV_DIR --reference segmentor=DIR name=DIR ... [--json out]

PNG label images, one foreground class (foreground > 0); the metrics are this package's (dice with the FOV as
valid region, hd95 in pixels with connectivity-1 surfaces), as in benchmarks/refined_changes.py.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from scipy.stats import wilcoxon

from nnunetv2_hidiff.evaluation.metrics import dice, hd95


def _load(path: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(path)) > 0
    except (OSError, ValueError) as e:
        sys.exit(f"compare_outputs: {path}: cannot read it as an image ({e})")


def _named(spec: str):
    name, sep, folder = spec.partition("=")
    if not sep or not name or not os.path.isdir(folder):
        sys.exit(f"compare_outputs: {spec!r}: expected NAME=FOLDER with an existing folder")
    return name, folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("labels_dir")
    ap.add_argument("outputs", nargs="+", help="NAME=FOLDER of predictions")
    ap.add_argument("--reference", required=True, help="NAME=FOLDER the others are compared with")
    ap.add_argument("--fov", default=None, help="FOV masks (same file names): Dice inside the FOV")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ref_name, ref_dir = _named(args.reference)
    outputs = [(ref_name, ref_dir)] + [_named(s) for s in args.outputs]
    cases = sorted(f for f in os.listdir(ref_dir) if f.endswith(".png"))
    if not cases:
        sys.exit(f"compare_outputs: {ref_dir}: no .png predictions")
    per_case = {name: [] for name, _ in outputs}
    for c in cases:
        gt = _load(os.path.join(args.labels_dir, c))
        fov = _load(os.path.join(args.fov, c)) if args.fov else None
        for name, folder in outputs:
            path = os.path.join(folder, c)
            if not os.path.isfile(path):
                sys.exit(f"compare_outputs: {path}: missing (every folder needs the reference's cases)")
            mask = _load(path)
            if mask.shape != gt.shape:
                sys.exit(f"compare_outputs: {path}: shape {mask.shape}, label {gt.shape}")
            per_case[name].append((dice(mask, gt, fov), hd95(mask, gt)))
    result = {"cases": len(cases), "reference": ref_name, "outputs": {}}
    ref = np.array(per_case[ref_name])
    print(f"{len(cases)} cases; differences against {ref_name}, Wilcoxon over cases")
    for name, _ in outputs:
        v = np.array(per_case[name])
        entry = {"dice": float(np.nanmean(v[:, 0])), "hd95": float(np.nanmean(v[:, 1]))}
        line = f"  {name:28s} Dice{'_FOV' if args.fov else ''} {entry['dice']:.4f}  HD95 {entry['hd95']:.3f}"
        if name != ref_name:
            d = v - ref
            for k, metric in enumerate(("dice", "hd95")):
                nz = d[:, k][np.isfinite(d[:, k])]
                p = float(wilcoxon(nz).pvalue) if np.count_nonzero(nz) else 1.0
                better = int((nz > 0).sum() if metric == "dice" else (nz < 0).sum())
                entry[f"{metric}_diff"], entry[f"{metric}_p"], entry[f"{metric}_better"] = float(nz.mean()), p, better
            line += (f"   ΔDice {entry['dice_diff']:+.4f} (better on {entry['dice_better']}, p {entry['dice_p']:.2g})"
                     f"  ΔHD95 {entry['hd95_diff']:+.3f} (better on {entry['hd95_better']}, p {entry['hd95_p']:.2g})")
        result["outputs"][name] = entry
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
