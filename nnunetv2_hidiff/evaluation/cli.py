"""``nnunetv2_hidiff_evaluate``: nnUNetv2_evaluate_folder plus HD95, sensitivity, accuracy, NaN ratios and the
small-object subset. Writes an extended summary.json (nnU-Net's keys unchanged, ours added)."""
import argparse
import math
import sys
from typing import List, Optional

from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_fold, evaluate_folder
from nnunetv2_hidiff.evaluation.metrics import HD95_CONVENTIONS, SMALL_OBJECT_UNITS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunetv2_hidiff_evaluate",
        description="Evaluate a prediction folder against a reference folder (Dice, IoU, HD95 in physical units, "
                    "sensitivity, specificity, accuracy, NaN ratios, small-object subset) and write an extended "
                    "nnU-Net summary.json. Either -ref/-pred/-djfile/-pfile or -fold.")
    p.add_argument("-ref", help="folder with reference segmentations")
    p.add_argument("-pred", help="folder with predicted segmentations")
    p.add_argument("-djfile", help="dataset.json")
    p.add_argument("-pfile", help="plans.json")
    p.add_argument("-fold", help="a trained fold folder (…/Trainer__Plans__config/fold_k): extends its "
                                 "validation/summary.json using the trainer's dataset.json/plans.json and "
                                 "$nnUNet_preprocessed/<dataset>/gt_segmentations")
    p.add_argument("-o", default=None, help="output .json (default: PRED/summary.json)")
    p.add_argument("--fov-folder", default=None,
                   help="folder with FOV masks named like the predictions (e.g. DRIVE fovTs); our metrics are "
                        "computed inside the masks only")
    p.add_argument("--small-threshold", type=int, default=500,
                   help="small-object subset: reference size per unit < this many pixels (paper: 500 for organs, "
                        "100 for tumours); 0 disables. Default: 500")
    p.add_argument("--small-unit", choices=SMALL_OBJECT_UNITS, default="slice",
                   help="unit of the small-object subset: 2D slice (paper) or whole case. Default: slice")
    p.add_argument("--slice-axis", type=int, default=0,
                   help="slice axis of the image array (nnU-Net order, 0 = z for .nii.gz). Default: 0")
    p.add_argument("--hd95-convention", choices=HD95_CONVENTIONS, default="medpy",
                   help="medpy: 95th percentile of both directions pooled (default, as the paper's tooling); "
                        "max: max of the two directed 95th percentiles (MONAI)")
    p.add_argument("-np", type=int, default=2, help="number of processes. Default: 2")
    p.add_argument("--chill", action="store_true", help="do not fail if some reference cases were not predicted")
    return p


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _print_report(result: dict, output: str) -> None:
    print(f"{'class':>10} {'Dice':>8} {'IoU':>8} {'HD95':>9} {'NaNratio':>8} {'Sens':>8} {'Acc':>8}")
    for r, m in result["mean"].items():
        nan_ratio = result["hidiff_nan_ratio"][str(r)]["hd95_nan_ratio"]
        print(f"{str(r):>10} {_fmt(m['Dice']):>8} {_fmt(m['IoU']):>8} {_fmt(m['HD95']):>9} {_fmt(nan_ratio):>8} "
              f"{_fmt(m['Sensitivity']):>8} {_fmt(m['Accuracy']):>8}")
    fg = result["foreground_mean"]
    print(f"{'fg mean':>10} {_fmt(fg['Dice']):>8} {_fmt(fg['IoU']):>8} {_fmt(fg['HD95']):>9}")
    small = result.get("hidiff_small_objects")
    if small is not None:
        print(f"small objects ({small['definition']}):")
        for r, m in small["per_class"].items():
            print(f"{r:>10} n={m['n_units']:<6} Dice {_fmt(m['Dice'])}  HD95 {_fmt(m['HD95'])} "
                  f"(NaN ratio {_fmt(m['hd95_nan_ratio'])})")
    print(f"summary written to {output}")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    kwargs = dict(fov_folder=args.fov_folder, small_threshold=args.small_threshold, small_unit=args.small_unit,
                  slice_axis=args.slice_axis, hd95_convention=args.hd95_convention, num_processes=args.np,
                  chill=args.chill)
    try:
        if args.fold is not None:
            if any(a is not None for a in (args.ref, args.pred, args.djfile, args.pfile)):
                raise EvaluationError("-fold cannot be combined with -ref/-pred/-djfile/-pfile")
            if args.o is not None:
                kwargs["output_file"] = args.o
            result = evaluate_fold(args.fold, **kwargs)
            output = args.o or f"{args.fold}/validation/summary.json"
        else:
            missing = [f for f, v in (("-ref", args.ref), ("-pred", args.pred), ("-djfile", args.djfile),
                                      ("-pfile", args.pfile)) if v is None]
            if missing:
                raise EvaluationError(f"missing argument(s) {' '.join(missing)} (or use -fold)")
            result = evaluate_folder(args.ref, args.pred, args.djfile, args.pfile, args.o, **kwargs)
            output = args.o or f"{args.pred}/summary.json"
    except EvaluationError as e:
        print(f"nnunetv2_hidiff_evaluate: error: {e}", file=sys.stderr)
        return 2
    _print_report(result, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
