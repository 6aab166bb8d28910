"""Dice and HD95 of foreground probabilities at several thresholds: is a gain more than a shift of the threshold?

    python benchmarks/threshold_sweep.py LABELS_DIR --probabilities NAME=DIR [NAME=DIR ...] [--fov FOV_DIR]
        [--thresholds 0.5 0.45 0.4 0.35] [--average A,B] [--union A,B] [--gated A,B --gates 0.5,0.8 ...]
        [--label 1] [--json out.json]

Each DIR holds nnU-Net's ``--save_probabilities`` output (``CASE.npz`` with ``probabilities``, classes first) for
the cases of LABELS_DIR (same names, any format SimpleITK reads; PNG masks stored as 0/255 count as label 1).
For every NAME and threshold τ the mask is ``probability of --label > τ``; ``--average A,B`` adds the mean of A's and
B's probabilities at every τ, and ``--union A,B`` the union of A > 0.5 and B > 0.5 (what HiDiff's ``union``
combination predicts, here on the whole image instead of per sliding-window patch). ``--gated A,B`` with
``--gates ADD,REMOVE ...`` adds HiDiff's ``gated`` combination of segmentor A with refined B for each gate (binary:
B's label where it differs from A's at 0.5 and B's probability of its label exceeds ADD where A says background,
REMOVE where A says foreground; also whole-image). Dice is computed inside the FOV when given, HD95 in pixels (this
package's metric), both averaged over cases.

Why: refinement that adds foreground lowers HD95 (missed fragments get closer to the reference) and, where the
additions are right often enough, raises Dice. Lowering the threshold of a plain segmentor does the same. A refined
output only adds information if it beats the segmentor (and plain nnU-Net) at *every* threshold, not just at 0.5.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from _labels import read_label_image, read_probabilities  # benchmarks/ is the script's folder


def _label(path: str, label: int) -> np.ndarray:
    image = read_label_image(path, "threshold_sweep")
    return image > 0 if path.endswith(".png") and image.max() == 255 else image == label


def _probabilities(path: str, label: int, shape) -> np.ndarray:
    p = read_probabilities(path, "threshold_sweep", shape)
    if not 0 <= label < p.shape[0]:
        sys.exit(f"threshold_sweep: {path}: has {p.shape[0]} classes, --label {label} is not one of them")
    return p[label]


def _pair(text: str, names) -> tuple:
    parts = text.split(",")
    if len(parts) != 2 or any(p not in names for p in parts):
        sys.exit(f"threshold_sweep: {text!r}: expected two of the --probabilities names {sorted(names)}, as A,B")
    return tuple(parts)


def _gate(text: str) -> tuple:
    try:
        add, remove = (float(v) for v in text.split(","))
    except ValueError:
        sys.exit(f"threshold_sweep: --gates {text!r}: expected two probabilities ADD,REMOVE, e.g. 0.5,0.8")
    if not (0 <= add <= 1 and 0 <= remove <= 1):
        sys.exit(f"threshold_sweep: --gates {text!r}: probabilities must lie in [0, 1]")
    return add, remove


def main(argv=None) -> int:
    from nnunetv2_hidiff.evaluation.metrics import dice, hd95

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("labels_dir")
    ap.add_argument("--probabilities", nargs="+", required=True, metavar="NAME=DIR")
    ap.add_argument("--fov", default=None)
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.45, 0.4, 0.35])
    ap.add_argument("--average", action="append", default=[], metavar="A,B")
    ap.add_argument("--union", action="append", default=[], metavar="A,B")
    ap.add_argument("--gated", action="append", default=[], metavar="A,B")
    ap.add_argument("--gates", nargs="+", default=[], metavar="ADD,REMOVE")
    ap.add_argument("--label", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    folders = {}
    for spec in args.probabilities:
        name, _, folder = spec.partition("=")
        if not name or not os.path.isdir(folder):
            sys.exit(f"threshold_sweep: {spec!r}: expected NAME=DIR with an existing folder")
        folders[name] = folder
    averages = [_pair(a, folders) for a in args.average]
    unions = [_pair(u, folders) for u in args.union]
    gated = [_pair(g, folders) for g in args.gated]
    if gated and not args.gates:
        sys.exit("threshold_sweep: --gated needs --gates ADD,REMOVE [...]")
    gates = [_gate(g) for g in args.gates]
    if not os.path.isdir(args.labels_dir):
        sys.exit(f"threshold_sweep: {args.labels_dir}: not a folder")
    labels = sorted(f for f in os.listdir(args.labels_dir) if not f.startswith("."))
    cases = {}
    for f in labels:
        case = f.split(".")[0]
        if all(os.path.isfile(os.path.join(d, case + ".npz")) for d in folders.values()):
            cases[case] = f
    if not cases:
        sys.exit(f"threshold_sweep: no case of {args.labels_dir} has a .npz in every --probabilities folder")
    scores: dict = {}
    for case, f in sorted(cases.items()):
        gt = _label(os.path.join(args.labels_dir, f), args.label)
        fov = _label(os.path.join(args.fov, f), 1) if args.fov else None
        p = {n: _probabilities(os.path.join(d, case + ".npz"), args.label, gt.shape) for n, d in folders.items()}
        masks = {}
        for t in args.thresholds:
            for n in folders:
                masks[f"{n} > {t:g}"] = p[n] > t
            for a, b in averages:
                masks[f"mean({a}, {b}) > {t:g}"] = (p[a] + p[b]) / 2 > t
        for a, b in unions:
            masks[f"{a} > 0.5 or {b} > 0.5"] = (p[a] > 0.5) | (p[b] > 0.5)
        for a, b in gated:
            seg, ref = p[a] > 0.5, p[b] > 0.5
            confidence = np.maximum(p[b], 1 - p[b])
            for add, remove in gates:
                take = (ref != seg) & (confidence > np.where(seg, remove, add))
                masks[f"gated({a}, {b}, {add:g}/{remove:g})"] = np.where(take, ref, seg)
        for name, m in masks.items():
            scores.setdefault(name, []).append((float(dice(m, gt, fov)), float(hd95(m, gt))))
    result = {"cases": sorted(cases), "outputs": {k: {"dice": float(np.nanmean([v[0] for v in vals])),
                                                       "hd95": float(np.nanmean([v[1] for v in vals])),
                                                       "per_case": vals} for k, vals in scores.items()}}
    print(f"{len(cases)} cases; Dice{'_FOV' if args.fov else ''} / HD95 (px), means over cases")
    for k, v in result["outputs"].items():
        print(f"  {k:36s} {v['dice']:.4f} / {v['hd95']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
