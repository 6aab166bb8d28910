"""nnunetv2_hidiff_export: one trained fold as a small, prediction-only nnU-Net model folder.

    nnunetv2_hidiff_export -i $nnUNet_results/Dataset901_Hippocampus/<trainer>__<plans>__2d -f 0 -o OUT [--fp32] [--packed]

OUT receives plans.json, dataset.json and fold_<f>/ with a checkpoint_final.pth that holds only what
``nnUNetv2_predict`` reads (trainer name, init args, mirroring axes, network weights incl. the refinement decision),
the weights in float16 by default (nnU-Net's predictor loads them into its float32 network), plus the fold's
``hidiff_fold.json`` and validation ``summary.json`` files when present. No optimiser, EMA or RNG state: the
result cannot be resumed with ``--c``, only predicted with. ``--packed`` (binary HiDiff refiners) stores every binary
layer's weight as 1 bit per weight plus one float32 scale per output channel (a 1-bit checkpoint,
networks/binary.pack_binary_weights); the binary layers load it back into the same sign(W)·mean|W|, so the refined
masks are those of the unpacked export. OUT is used as the ``nnUNet_results/DatasetXXX_Name/
<trainer>__<plans>__<configuration>`` folder of the machine that predicts (the demo ships one this way).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

KEPT_KEYS = ("trainer_name", "init_args", "inference_allowed_mirroring_axes")


class ExportError(Exception):
    pass


def slim_checkpoint(checkpoint: dict, half: bool = True, network=None) -> dict:
    """The prediction-only part of an nnU-Net / HiDiff checkpoint; floating weights in float16 if ``half``; the
    binary layers of ``network`` (the network the checkpoint's trainer builds) packed to 1 bit per weight if given."""
    missing = [k for k in ("trainer_name", "init_args", "network_weights") if k not in checkpoint]
    if missing:
        raise ExportError(f"not an nnU-Net checkpoint (no {', '.join(missing)})")
    out = {k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint}
    weights = checkpoint["network_weights"]
    if network is not None:
        from nnunetv2_hidiff.networks import pack_binary_weights

        weights = pack_binary_weights(network, weights)

    converted = {}  # nnU-Net's state dicts name one tensor several times (conv.weight = all_modules.0.weight,
    # decoder.encoder = encoder), and checkpoints may hold them as copies: store equal tensors once (torch.save
    # keeps tensors that share storage shared, and torch.load restores them so)

    def slim(k: str, v: torch.Tensor) -> torch.Tensor:  # the 1-bit layers' scales stay float32 (a few bytes)
        data = v.detach().cpu().contiguous().reshape(-1)
        key = (v.dtype, tuple(v.shape), hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest(),
               k.endswith(".weight_scale"))
        if key not in converted:
            keep = not (half and torch.is_floating_point(v)) or k.endswith(".weight_scale")
            converted[key] = (v if keep else v.half()).detach().clone()
        return converted[key]
    out["network_weights"] = {k: slim(k, v) if torch.is_tensor(v) else v for k, v in weights.items()}  # _extra_state
    out["exported_by"] = "nnunetv2_hidiff_export" + (" (float16 weights)" if half else "") + \
        (" (1-bit binary layers)" if network is not None else "")
    return out


def prediction_network(model_folder: Path, checkpoint: dict):
    """The network nnUNetv2_predict builds for this checkpoint (deep supervision off); binary layers only exist in
    HiDiff trainers, so other trainers are refused for --packed."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_hidiff.trainer_lookup import all_trainers

    name = checkpoint.get("trainer_name")
    trainer = all_trainers().get(str(name))
    if trainer is None or not getattr(trainer, "binary_refiner", False):
        raise ExportError(f"--packed needs a binary HiDiff trainer, this checkpoint is from {name}")
    pm = PlansManager(str(model_folder / "plans.json"))
    cm = pm.get_configuration(checkpoint["init_args"]["configuration"])
    dataset_json = load_json(str(model_folder / "dataset.json"))
    return trainer.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                              pm.get_label_manager(dataset_json).num_segmentation_heads,
                                              enable_deep_supervision=False)


def export_fold(model_folder: Path, fold: str, output: Path, half: bool = True,
                checkpoint_name: str = "checkpoint_final.pth", packed: bool = False) -> Path:
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
        slim = slim_checkpoint(checkpoint, half, prediction_network(model_folder, checkpoint) if packed else None)
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
    parser.add_argument("--packed", action="store_true",
                        help="store the binary refiner layers with 1 bit per weight (binary HiDiff trainers)")
    args = parser.parse_args(argv)
    try:
        target = export_fold(args.i, args.f, args.o, half=not args.fp32, checkpoint_name=args.chk,
                             packed=args.packed)
    except ExportError as e:
        sys.exit(f"nnunetv2_hidiff_export: error: {e}")
    print(f"{target} ({target.stat().st_size / 2 ** 20:.1f} MiB)")


if __name__ == "__main__":
    main()
