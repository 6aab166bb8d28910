"""``nnunetv2_hidiff_plan``: write a derived nnU-Net plans file with another batch/patch size (see presets.py)."""
import argparse
import sys
from typing import List, Optional

from nnunetv2_hidiff.planning.presets import PlanningError, create_plans, load_preset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunetv2_hidiff_plan",
        description="Derive a new nnU-Net plans identifier from existing plans with a different batch size and/or "
                    "patch size (topology recomputed by nnU-Net's planner functions). The source plans file is never "
                    "modified; preprocessed data are shared. Use the result with -p in any nnU-Net command.")
    p.add_argument("-d", "--dataset", help="dataset ID or DatasetXXX_Name (may come from the preset)")
    p.add_argument("--preset", help="preset JSON (e.g. plans/presets/Dataset902_DRIVE_cpu.json); "
                                    "command-line options override its values")
    p.add_argument("-c", "--configuration", help="configuration to change. Default: 2d")
    p.add_argument("--batch-size", type=int, help="new batch size")
    p.add_argument("--patch-size", type=int, nargs="+", help="new patch size, e.g. 256 256")
    p.add_argument("--source-plans", help="source plans identifier. Default: nnUNetPlans")
    p.add_argument("--plans-name", help="new plans identifier. Default: <source>_hidiff_b<B>[_p<HxW>]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different plans file")
    p.add_argument("--preprocessed", help="nnUNet_preprocessed folder. Default: $nnUNet_preprocessed")
    return p


def _dataset_id(dataset) -> int:
    text = str(dataset)
    try:
        return int(text[7:10]) if text.startswith("Dataset") else int(text)
    except ValueError:
        raise PlanningError(f"dataset {text!r} is neither an ID nor a DatasetXXX_Name") from None


def _settings(args: argparse.Namespace) -> dict:
    preset = load_preset(args.preset) if args.preset else {}
    s = {"dataset": preset.get("dataset"), "configuration": preset.get("configuration", "2d"),
         "batch_size": preset.get("batch_size"), "patch_size": preset.get("patch_size"),
         "source_plans": preset.get("source_plans", "nnUNetPlans"), "plans_name": preset.get("plans_name")}
    if args.dataset is not None and s["dataset"] is not None and _dataset_id(args.dataset) != _dataset_id(s["dataset"]):
        raise PlanningError(f"-d {args.dataset} does not match the preset's dataset {s['dataset']} ({args.preset})")
    for key in ("dataset", "configuration", "batch_size", "patch_size", "source_plans", "plans_name"):
        value = getattr(args, key)
        if value is not None:
            s[key] = value
    if s["dataset"] is None:
        raise PlanningError("no dataset: give -d or a preset with a 'dataset' entry")
    return s


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        s = _settings(args)
        result = create_plans(s["dataset"], s["configuration"], s["batch_size"], s["patch_size"],
                              s["source_plans"], s["plans_name"], args.preprocessed, args.overwrite)
    except PlanningError as e:
        print(f"nnunetv2_hidiff_plan: error: {e}", file=sys.stderr)
        return 2
    d = result.derived
    print(f"{'wrote' if result.written else 'unchanged (identical file exists)'}: {result.path}")
    print(f"plans identifier: {d.plans_name} (from {s['source_plans']}), configuration {d.configuration}")
    for line in d.changes:
        print(f"  {line}")
    conf = d.plans["configurations"][d.configuration]
    data_id = conf.get("data_identifier", d.plans["hidiff_derived_from"]["data_identifier_shared"])
    dataset_id = int(d.plans["dataset_name"][7:10])
    status = "present" if result.preprocessed_data_present else \
        f"not found yet: nnUNetv2_preprocess -d {dataset_id} -c {d.configuration} -p {s['source_plans']}"
    print(f"  data_identifier: {data_id} (shared with {s['source_plans']}; preprocessed data {status})")
    print(f"use: nnUNetv2_train {dataset_id} {d.configuration} FOLD -p {d.plans_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
