"""What refinement changes, from two prediction folders of the same cases (issue 12 diagnostics).

    python benchmarks/refined_changes.py SEGMENTOR_DIR REFINED_DIR LABELS_DIR [--fov FOV_DIR] [--json out.json]

E.g. a HiDiff fold's ``validation_segmentor`` and ``validation_refined`` against the raw labelsTr, or the
benchmark's ``test/<trainer>__segmentor`` and ``__refined`` against labelsTs with the FOV masks. 2d label images
(PNG, foreground > 0; one foreground class). Prints, as means per case:

  * the pixels refinement adds and removes, split into reference foreground and background;
  * Dice (inside the FOV when given) and HD95 (pixels, connectivity-1 surfaces, this package's metric) of the
    segmentor, the refined mask, their union, the segmentor plus the refined components it does not reach (what
    ``combine = "new_components"`` predicts, here on the whole image instead of per sliding-window patch), the
    segmentor's components that touch the refined mask, and the segmentor's pixels within distance d of the
    refined mask (d = 0, 1, 2, 3, 5, 8): post-hoc combinations that tell whether the refined HD95 comes from
    pixels refinement adds or from pixels it removes.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from scipy import ndimage

import torch

from nnunetv2_hidiff.evaluation.metrics import dice, hd95
from nnunetv2_hidiff.networks.combine import new_components

DISTANCES = (0, 1, 2, 3, 5, 8)


def _load(path: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(path)) > 0
    except (OSError, ValueError) as e:
        sys.exit(f"refined_changes: {path}: cannot read it as an image ({e})")


def combinations(seg: np.ndarray, ref: np.ndarray) -> dict:
    out = {"segmentor": seg, "refined": ref, "union": seg | ref}
    new = new_components(torch.from_numpy(seg)[None], torch.from_numpy(ref)[None])[0].numpy()
    out["segmentor + new refined components"] = seg | new
    lab, _ = ndimage.label(seg, structure=np.ones((3, 3)))
    touching = np.unique(lab[ref & seg])
    out["segmentor components touching refined"] = np.isin(lab, touching[touching > 0])
    dist = ndimage.distance_transform_edt(~ref)
    for d in DISTANCES:
        out[f"segmentor within {d} px of refined"] = seg & (dist <= d)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("segmentor_dir")
    ap.add_argument("refined_dir")
    ap.add_argument("labels_dir")
    ap.add_argument("--fov", default=None, help="FOV masks (same file names): Dice inside the FOV")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cases = sorted(f for f in os.listdir(args.refined_dir) if f.endswith(".png"))
    if not cases:
        sys.exit(f"refined_changes: {args.refined_dir}: no .png predictions")
    counts = np.zeros(4)
    scores: dict = {}
    for c in cases:
        seg = _load(os.path.join(args.segmentor_dir, c))
        ref = _load(os.path.join(args.refined_dir, c))
        gt = _load(os.path.join(args.labels_dir, c))
        fov = _load(os.path.join(args.fov, c)) if args.fov else None
        if not seg.shape == ref.shape == gt.shape:
            sys.exit(f"refined_changes: {c}: shapes differ (segmentor {seg.shape}, refined {ref.shape}, label {gt.shape})")
        added, removed = ref & ~seg, seg & ~ref
        counts += [(added & gt).sum(), (added & ~gt).sum(), (removed & gt).sum(), (removed & ~gt).sum()]
        for name, mask in combinations(seg, ref).items():
            scores.setdefault(name, []).append((dice(mask, gt, fov), hd95(mask, gt)))
    n = len(cases)
    result = {"cases": n, "added_foreground": counts[0] / n, "added_background": counts[1] / n,
              "removed_foreground": counts[2] / n, "removed_background": counts[3] / n,
              "outputs": {k: {"dice": float(np.nanmean([v[0] for v in vals])),
                              "hd95": float(np.nanmean([v[1] for v in vals]))} for k, vals in scores.items()}}
    print(f"{n} cases; per case refinement adds {result['added_foreground']:.0f} foreground and "
          f"{result['added_background']:.0f} background pixels, removes {result['removed_foreground']:.0f} "
          f"foreground and {result['removed_background']:.0f} background pixels")
    for k, v in result["outputs"].items():
        print(f"  {k:40s} Dice{'_FOV' if args.fov else ''} {v['dice']:.4f}  HD95 {v['hd95']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
