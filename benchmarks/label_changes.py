"""Which labels refinement changes, and how often it is right (issue 12 diagnostics; any number of classes).

    python benchmarks/label_changes.py SEGMENTOR_DIR REFINED_DIR LABELS_DIR [--fov FOV_DIR] [--binary]
        [--probabilities REFINED_NPZ_DIR] [--json out.json]

SEGMENTOR_DIR and REFINED_DIR hold label images of the same cases (e.g. a HiDiff fold's ``validation_segmentor``
and ``validation_refined_1steps``); LABELS_DIR the references under the same file names (nnU-Net's labelsTr /
labelsTs). Any format SimpleITK reads (.nii.gz, .png, ...). ``--binary``: every label > 0 is foreground (PNG masks
stored as 0/255). ``--fov``: only pixels inside these masks count.

Prints, as means per case:

  * each transition segmentor label a → refined label b (a ≠ b) with the reference label of those pixels;
  * the **flip accuracy**: the share of changed pixels where the refined label is the reference's. A change can only
    raise Dice where this is above about 1/2: below it, refinement replaces a right label more often than a wrong one;
  * the share of changed pixels within one pixel (in-plane for 3d images, where 2d models see one slice) of the
    segmentor's class boundary: how much refinement acts on boundaries rather than on whole structures;
  * per foreground class k, the same accuracy split into **additions** (pixels refinement gives to k; right where
    the reference is k) and **removals** (pixels it takes from k; right where the reference is not k), next to their
    break-even points. With D = 2TP / (2TP + FP + FN), adding n pixels of which a share a is reference k changes
    Dice by (2an − Dn) / (2TP + FP + FN + n): additions help when a > D/2, removals when the removed share that was
    not k exceeds 1 − D/2 (D: the segmentor's mean Dice of k, so the break-even points are per case approximations);
  * per foreground class, the Dice of both and in how many cases the refined one is higher;
  * with ``--probabilities`` (the refined output's nnU-Net ``.npz`` files, ``--save_probabilities``): the changes
    binned by the refined probability of the refined label, split into additions (segmentor background) and removals
    (segmentor foreground), the two sides of ``combine="gated"``'s gate: how many, and how often right, per bin.
    A gate can only help where the changes above it are right more often than the break-even points above.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scipy import ndimage

from _labels import read_label_image, read_probabilities  # benchmarks/ is the script's folder

SUFFIXES = (".nii.gz", ".nii", ".png", ".nrrd", ".mha", ".tif", ".tiff")


def _load(path: str, binary: bool) -> np.ndarray:
    image = read_label_image(path, "label_changes")
    return (image > 0).astype(np.int64) if binary else image


def boundary(label: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a change of label (4-connectivity, in-plane for 3d arrays)."""
    structure = ndimage.generate_binary_structure(2, 1)
    if label.ndim == 3:
        structure = np.stack([np.zeros_like(structure), structure, np.zeros_like(structure)])
    out = np.zeros(label.shape, dtype=bool)
    for k in np.unique(label):
        m = label == k
        out |= ndimage.binary_dilation(m, structure) & ~ndimage.binary_erosion(m, structure, border_value=1)
    return out


CONFIDENCE_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def confidence_bins(seg: np.ndarray, ref: np.ndarray, gt: np.ndarray, changed: np.ndarray, prob: np.ndarray) -> dict:
    """Changed pixels binned by the refined probability of the refined label (``prob``: (classes, *shape), summing
    to 1 over classes, as nnU-Net saves it): {"add" | "remove": [[pixels, right] per bin of CONFIDENCE_EDGES]}."""
    labels, p = ref[changed], prob[:, changed]
    conf = np.take_along_axis(p, labels[None], axis=0)[0] / np.maximum(p.sum(0), 1e-12)
    idx = np.clip(np.searchsorted(CONFIDENCE_EDGES, conf, side="right") - 1, 0, len(CONFIDENCE_EDGES) - 2)
    right, add = labels == gt[changed], seg[changed] == 0
    out = {}
    for kind, sel in (("add", add), ("remove", ~add)):
        out[kind] = [[int((sel & (idx == i)).sum()), int((sel & (idx == i) & right).sum())]
                     for i in range(len(CONFIDENCE_EDGES) - 1)]
    return out


def case_changes(seg: np.ndarray, ref: np.ndarray, gt: np.ndarray, fov=None, prob=None) -> dict:
    """Counts for one case: {"transitions": {(a, b, reference): n}, "changed", "right", "in_band"}, per-class
    Dice of both outputs and, given the refined probabilities, the changes per confidence bin."""
    inside = np.ones(seg.shape, dtype=bool) if fov is None else fov
    changed = (seg != ref) & inside
    a, b, r = seg[changed], ref[changed], gt[changed]
    keys, counts = np.unique(np.stack([a, b, r]), axis=1, return_counts=True) if changed.any() else (np.zeros((3, 0)), [])
    dice = {}
    present = set(np.unique(gt[inside]).tolist()) | set(np.unique(seg[inside]).tolist()) | set(np.unique(ref[inside]).tolist())
    for k in sorted(present - {0}):
        g = (gt == k) & inside
        d = [(2 * ((o == k) & g).sum() / max(((o == k) & inside).sum() + g.sum(), 1)) for o in (seg, ref)]
        dice[int(k)] = d
    out = {"transitions": {tuple(int(v) for v in keys[:, i]): int(counts[i]) for i in range(len(counts))},
           "changed": int(changed.sum()), "right": int((b == r).sum()),
           "in_band": int((changed & boundary(seg)).sum()), "dice": dice}
    if prob is not None:
        out["confidence"] = confidence_bins(seg, ref, gt, changed, prob)
    return out


def summarise(per_case: list) -> dict:
    n = max(len(per_case), 1)
    transitions: dict = {}
    for c in per_case:
        for key, v in c["transitions"].items():
            transitions[key] = transitions.get(key, 0) + v
    changed, right, band = (sum(c[k] for c in per_case) for k in ("changed", "right", "in_band"))
    classes = sorted({k for c in per_case for k in c["dice"]})
    per_class = {}
    for k in classes:
        pairs = [c["dice"][k] for c in per_case if k in c["dice"]]
        d_seg = float(np.mean([p[0] for p in pairs]))
        add = [(v, r == k) for (a, b, r), v in transitions.items() if a != k and b == k]
        rem = [(v, r != k) for (a, b, r), v in transitions.items() if a == k and b != k]
        share = lambda xs: sum(v for v, ok in xs if ok) / sum(v for v, _ in xs) if xs else float("nan")
        per_class[k] = {"added_per_case": sum(v for v, _ in add) / n, "addition_accuracy": share(add),
                        "addition_break_even": d_seg / 2,
                        "removed_per_case": sum(v for v, _ in rem) / n, "removal_accuracy": share(rem),
                        "removal_break_even": 1 - d_seg / 2,
                        "segmentor_dice": d_seg,
                        "refined_dice": float(np.mean([p[1] for p in pairs])),
                        "refined_higher": int(sum(p[1] > p[0] for p in pairs)),
                        "refined_lower": int(sum(p[1] < p[0] for p in pairs)), "cases": len(pairs)}
    out = {"cases": len(per_case), "changed_per_case": changed / n,
           "flip_accuracy": right / changed if changed else float("nan"),
           "in_band_share": band / changed if changed else float("nan"),
           "transitions_per_case": [{"segmentor": a, "refined": b, "reference": r, "pixels": v / n}
                                    for (a, b, r), v in sorted(transitions.items())],
           "classes": per_class}
    if per_case and all("confidence" in c for c in per_case):
        out["confidence"] = []
        for i in range(len(CONFIDENCE_EDGES) - 1):
            row = {"low": CONFIDENCE_EDGES[i], "high": CONFIDENCE_EDGES[i + 1]}
            for kind in ("add", "remove"):
                pixels, ok = (sum(c["confidence"][kind][i][j] for c in per_case) for j in (0, 1))
                row[f"{kind}_per_case"] = pixels / n
                row[f"{kind}_accuracy"] = ok / pixels if pixels else float("nan")
            out["confidence"].append(row)
    return out


def _probabilities(folder: str, case: str, shape: tuple) -> np.ndarray:
    """The refined probabilities of ``case`` (its nnU-Net .npz, classes first)."""
    stem = next(case[: -len(s)] for s in SUFFIXES if case.endswith(s))
    return read_probabilities(os.path.join(folder, stem + ".npz"), "label_changes", shape).astype(np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("segmentor_dir")
    ap.add_argument("refined_dir")
    ap.add_argument("labels_dir")
    ap.add_argument("--fov", default=None, help="FOV masks (same file names): only pixels inside count")
    ap.add_argument("--binary", action="store_true", help="every label > 0 is foreground (0/255 masks)")
    ap.add_argument("--probabilities", default=None,
                    help="the refined output's .npz files (nnU-Net --save_probabilities): changes per confidence bin")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    for d in (args.segmentor_dir, args.refined_dir, args.labels_dir, args.fov, args.probabilities):
        if d is not None and not os.path.isdir(d):
            sys.exit(f"label_changes: {d}: not a folder")
    cases = sorted(f for f in os.listdir(args.refined_dir) if f.endswith(SUFFIXES))
    if not cases:
        sys.exit(f"label_changes: {args.refined_dir}: no label images ({', '.join(SUFFIXES)})")
    per_case = []
    for c in cases:
        paths = [os.path.join(d, c) for d in (args.segmentor_dir, args.refined_dir, args.labels_dir)]
        for p in paths:
            if not os.path.isfile(p):
                sys.exit(f"label_changes: {p}: missing (every case of {args.refined_dir} needs one)")
        seg, ref, gt = (_load(p, args.binary) for p in paths)
        fov = _load(os.path.join(args.fov, c), True).astype(bool) if args.fov else None
        if not seg.shape == ref.shape == gt.shape or (fov is not None and fov.shape != seg.shape):
            sys.exit(f"label_changes: {c}: shapes differ (segmentor {seg.shape}, refined {ref.shape}, reference "
                     f"{gt.shape}{'' if fov is None else f', fov {fov.shape}'})")
        prob = _probabilities(args.probabilities, c, seg.shape) if args.probabilities else None
        per_case.append(case_changes(seg, ref, gt, fov, prob))
    s = summarise(per_case)
    print(f"{s['cases']} cases; refinement changes {s['changed_per_case']:.1f} pixels per case, "
          f"{100 * s['in_band_share']:.0f} % of them within 1 px of the segmentor's boundaries; "
          f"flip accuracy {100 * s['flip_accuracy']:.1f} % (changed pixels whose refined label is the reference's)")
    for t in s["transitions_per_case"]:
        mark = "right" if t["refined"] == t["reference"] else ("was right" if t["segmentor"] == t["reference"]
                                                               else "both wrong")
        print(f"  segmentor {t['segmentor']} -> refined {t['refined']}, reference {t['reference']}: "
              f"{t['pixels']:8.1f} per case  ({mark})")
    for k, v in s["classes"].items():
        print(f"  class {k}: Dice segmentor {v['segmentor_dice']:.4f}, refined {v['refined_dice']:.4f} "
              f"(refined higher in {v['refined_higher']}, lower in {v['refined_lower']} of {v['cases']} cases)")
        print(f"    adds {v['added_per_case']:.1f} pixels per case, {100 * v['addition_accuracy']:.1f} % right "
              f"(break-even {100 * v['addition_break_even']:.1f} %); removes {v['removed_per_case']:.1f}, "
              f"{100 * v['removal_accuracy']:.1f} % right (break-even {100 * v['removal_break_even']:.1f} %)")
    if "confidence" in s:
        print("  changes by the refined probability of the refined label (additions: segmentor background; "
              "removals: segmentor foreground):")
        for row in s["confidence"]:
            print(f"    [{row['low']:.1f}, {row['high']:.1f}{']' if row['high'] >= 1 else ')'}: adds "
                  f"{row['add_per_case']:8.1f} per case, {100 * row['add_accuracy']:5.1f} % right; removes "
                  f"{row['remove_per_case']:8.1f}, {100 * row['remove_accuracy']:5.1f} % right")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
