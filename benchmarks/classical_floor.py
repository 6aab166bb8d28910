"""A segmentation floor with no learning for DRIVE-like vessel data (issue 12: the baseline must clearly beat it).

    python benchmarks/classical_floor.py -d 902 --split test  -o /tmp/floor_ts [--json floor_ts.json]
    python benchmarks/classical_floor.py -d 902 --split train -o /tmp/floor_tr [--folds 0 1 2 3 4]

The filter, per image: the green channel, an 11×11 black top-hat (grey closing minus the image: dark, thin
structures such as vessels light up), a Gaussian blur with σ 0.7, then the top 12 % of the FOV's pixels are
called vessel (``--tophat``, ``--sigma``, ``--top``). Nothing is fitted, so the training images are as unseen
as the test images: with ``--split train`` the script also reports the floor per cross-validation fold of
nnU-Net's ``splits_final.json`` (the fold's validation cases), the numbers to put next to each fold's
segmentor.

Masks are written with nnU-Net's reader/writer into ``-o`` and scored by this project's evaluation
(``nnunetv2_hidiff.evaluation.evaluate_folder`` with the FOV folder: Dice_FOV and HD95 as in the benchmark's
test-set rows; HD95 is not FOV-restricted in its surface definition, see the README). nnU-Net's environment
variables must be set; the dataset's raw folder must have ``fovTs`` / ``fovTr``. Numbers only, no asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def vessel_floor(green: np.ndarray, fov: np.ndarray, tophat: int = 11, sigma: float = 0.7,
                 top: float = 0.12) -> np.ndarray:
    """Binary vessel mask (uint8) of one 2d green channel: black top-hat, blur, the top ``top`` share of the FOV."""
    from scipy import ndimage

    if green.shape != fov.shape:
        raise ValueError(f"green channel {green.shape} and FOV {fov.shape} differ in shape")
    inside = fov > 0
    if not inside.any():
        raise ValueError("the FOV mask is empty")
    response = ndimage.gaussian_filter(ndimage.black_tophat(green.astype(np.float64), size=(tophat, tophat)), sigma)
    threshold = np.quantile(response[inside], 1.0 - top)
    return ((response > threshold) & inside).astype(np.uint8)


def _mean(result: dict, key: str, cases=None) -> float:
    vals = [c["metrics"][1][key] for c in result["metric_per_case"]
            if cases is None or os.path.basename(c["prediction_file"])[:-4] in cases]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", default="902")
    ap.add_argument("-p", "--plans", default="nnUNetPlans", help="plans whose label manager scores the masks")
    ap.add_argument("--split", choices=("test", "train"), default="test")
    ap.add_argument("-o", "--output", required=True, help="folder for the masks and summary.json")
    ap.add_argument("--folds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="with --split train")
    ap.add_argument("--tophat", type=int, default=11)
    ap.add_argument("--sigma", type=float, default=0.7)
    ap.add_argument("--top", type=float, default=0.12)
    ap.add_argument("--green-channel", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from batchgenerators.utilities.file_and_folder_operations import join, load_json, maybe_mkdir_p, subfiles
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_folder

    try:
        name = maybe_convert_to_dataset_name(args.dataset)
    except RuntimeError as e:
        sys.exit(f"dataset {args.dataset}: {e}")
    raw = join(nnUNet_raw, name)
    suffix = "Ts" if args.split == "test" else "Tr"
    images, labels, fovs = (join(raw, f"{k}{suffix}") for k in ("images", "labels", "fov"))
    for folder in (images, labels, fovs):
        if not os.path.isdir(folder):
            sys.exit(f"{folder}: folder missing (the floor needs images, labels and FOV masks)")
    dataset_json = load_json(join(raw, "dataset.json"))
    ending = dataset_json["file_ending"]
    cases = [f[:-len(ending)] for f in subfiles(labels, suffix=ending, join=False)]
    if not cases:
        sys.exit(f"{labels}: no {ending} labels")
    rw = determine_reader_writer_from_dataset_json(dataset_json, join(images, f"{cases[0]}_0000{ending}"))()
    maybe_mkdir_p(args.output)
    for case in cases:
        image_file = join(images, f"{case}_0000{ending}")
        try:
            image, props = rw.read_images([image_file])
            fov, _ = rw.read_seg(join(fovs, case + ending))
            mask = vessel_floor(image[args.green_channel, 0], fov[0, 0], args.tophat, args.sigma, args.top)
        except (OSError, RuntimeError, ValueError, IndexError) as e:
            sys.exit(f"{image_file}: {type(e).__name__}: {e}")
        rw.write_seg(mask[None], join(args.output, case + ending), props)
    try:
        result = evaluate_folder(labels, args.output, join(raw, "dataset.json"),
                                 join(nnUNet_preprocessed, name, args.plans + ".json"), fov_folder=fovs,
                                 small_threshold=0, num_processes=1)
    except EvaluationError as e:
        sys.exit(str(e))
    report = {"dataset": name, "split": args.split, "cases": len(cases),
              "filter": {"tophat": args.tophat, "sigma": args.sigma, "top": args.top,
                         "green_channel": args.green_channel},
              "Dice_FOV": _mean(result, "Dice_FOV"), "Dice": _mean(result, "Dice"), "HD95": _mean(result, "HD95")}
    print(f"{name} {args.split}, {len(cases)} images, classical floor (top-hat {args.tophat}, σ {args.sigma}, "
          f"top {args.top:.0%} of the FOV): Dice_FOV {report['Dice_FOV']:.4f}  Dice {report['Dice']:.4f}  "
          f"HD95 {report['HD95']:.2f}")
    if args.split == "train":
        splits_file = join(nnUNet_preprocessed, name, "splits_final.json")
        if not os.path.isfile(splits_file):
            sys.exit(f"{splits_file}: missing (run nnU-Net's training once to create the folds)")
        splits = load_json(splits_file)
        report["folds"] = {}
        for f in args.folds:
            val = set(splits[f]["val"])
            row = {"cases": sorted(val), "Dice_FOV": _mean(result, "Dice_FOV", val),
                   "Dice": _mean(result, "Dice", val), "HD95": _mean(result, "HD95", val)}
            report["folds"][str(f)] = row
            print(f"  fold {f} validation ({len(val)} images): Dice_FOV {row['Dice_FOV']:.4f}  Dice (whole image, as "
                  f"nnU-Net's validation) {row['Dice']:.4f}  HD95 {row['HD95']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
