"""nnunetv2_hidiff_export: one trained fold as a small, prediction-only nnU-Net model folder.

    nnunetv2_hidiff_export -i $nnUNet_results/Dataset901_Hippocampus/<trainer>__<plans>__2d -f 0 -o OUT [--fp32]

OUT receives plans.json, dataset.json and fold_<f>/ with a checkpoint_final.pth that holds only what
``nnUNetv2_predict`` reads (trainer name, init args, mirroring axes, network weights incl. the refinement decision),
the weights in float16 by default (nnU-Net's predictor loads them into its float32 network), plus the fold's
``hidiff_fold.json`` and validation ``summary.json`` files when present. No optimiser, EMA or RNG state: the
result cannot be resumed with ``--c``, only predicted with. OUT is used as the ``nnUNet_results/DatasetXXX_Name/
<trainer>__<plans>__<configuration>`` folder of the machine that predicts (the demo ships one this way).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

KEPT_KEYS = ("trainer_name", "init_args", "inference_allowed_mirroring_axes")


class ExportError(Exception):
    pass


def slim_checkpoint(checkpoint: dict, half: bool = True) -> dict:
    """The prediction-only part of an nnU-Net / HiDiff checkpoint; floating weights in float16 if ``half``."""
    missing = [k for k in ("trainer_name", "init_args", "network_weights") if k not in checkpoint]
    if missing:
        raise ExportError(f"not an nnU-Net checkpoint (no {', '.join(missing)})")
    out = {k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint}
    out["network_weights"] = {k: (v.half() if half and torch.is_floating_point(v) else v).detach().clone()
                              for k, v in checkpoint["network_weights"].items()}
    out["exported_by"] = "nnunetv2_hidiff_export" + (" (float16 weights)" if half else "")
    return out


def export_fold(model_folder: Path, fold: str, output: Path, half: bool = True,
                checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Write the slim fold of ``model_folder`` into ``output``; returns the written checkpoint's path."""
    model_folder, output = Path(model_folder), Path(output)
    source = model_folder / f"fold_{fold}" / checkpoint_name
    for needed in (model_folder / "plans.json", model_folder / "dataset.json", source):
        if not needed.is_file():
            raise ExportError(f"{needed}: not found (expected an nnU-Net training output folder with fold_{fold})")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ExportError(f"{source}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    try:
        slim = slim_checkpoint(checkpoint, half)
    except ExportError as e:
        raise ExportError(f"{source}: {e}") from None
    target_fold = output / f"fold_{fold}"
    target_fold.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model_folder / name, output / name)
    for extra in ("hidiff_fold.json", "validation/summary.json"):
        if (source.parent / extra).is_file():
            (target_fold / extra).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.parent / extra, target_fold / extra)
    target = target_fold / "checkpoint_final.pth"
    tmp = target.with_name(target.name + ".tmp")
    torch.save(slim, tmp)
    os.replace(tmp, target)  # never a half-written checkpoint over a good one
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nnunetv2_hidiff_export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", required=True, type=Path, help="the trained model folder (<trainer>__<plans>__<config>)")
    parser.add_argument("-f", required=True, help="the fold (0..4 or all)")
    parser.add_argument("-o", required=True, type=Path, help="output model folder")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name in the fold folder")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16)")
    args = parser.parse_args(argv)
    try:
        target = export_fold(args.i, args.f, args.o, half=not args.fp32, checkpoint_name=args.chk)
    except ExportError as e:
        sys.exit(f"nnunetv2_hidiff_export: error: {e}")
    print(f"{target} ({target.stat().st_size / 2 ** 20:.1f} MiB)")


if __name__ == "__main__":
    main()
