"""1-bit checkpoints (issue 15): bytes on disk of a HiDiff network's weights as nnunetv2_hidiff_export writes them.

For each plan (nnU-Net's default plans of the full datasets, tests/data/plans) and trainer, the network the
predictor builds is saved the way ``nnunetv2_hidiff_export`` saves it (cli/export.slim_checkpoint): float32
(``--fp32``), float16 (default), and with the binary layers packed to 1 bit per weight (``--packed``, float16 for the
rest, float32 scales). Printed per part: the segmentor, the refiner, and the refiner's binary layers alone, next to
the accounting's theoretical size of the refiner's parameters (binary weights at 1 bit, the rest float32, no BN
statistics; nnunetv2_hidiff_accounting).

    python benchmarks/packed_size.py --dataset 901 902 --trainer nnUNetTrainerHiDiff

Weights are random: sizes do not depend on the values (torch.save stores raw tensors; no compression).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cost_ratios import PLANS  # noqa: E402
from packed_speed import build  # noqa: E402


def saved_bytes(weights: dict) -> int:
    buf = io.BytesIO()
    torch.save(weights, buf)
    return buf.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["901", "902"], choices=sorted(PLANS))
    parser.add_argument("--trainer", nargs="+", default=["nnUNetTrainerHiDiff"])
    args = parser.parse_args()

    from nnunetv2_hidiff.cli.export import slim_checkpoint
    from nnunetv2_hidiff.networks.accounting import module_storage_bits

    mib = 2 ** 20
    print(f"{'dataset':8} {'trainer':34} {'part':14} {'fp32 MiB':>9} {'fp16 MiB':>9} {'packed MiB':>10} "
          f"{'theory MiB':>10}")
    for dataset in args.dataset:
        for trainer in args.trainer:
            net, _ = build(trainer, dataset, None)
            state = net.state_dict()
            binary = {n for n, m in net.named_modules() if getattr(m, "is_binary", False)}
            ckpt = {"trainer_name": trainer, "init_args": {"configuration": "2d"}, "network_weights": state}
            variants = {
                "fp32": slim_checkpoint(ckpt, half=False)["network_weights"],
                "fp16": slim_checkpoint(ckpt, half=True)["network_weights"],
                "packed": slim_checkpoint(ckpt, half=True, network=net)["network_weights"],
            }
            theory = module_storage_bits(net.refiner)
            parts = {
                "segmentor": lambda k: k.startswith("segmentor."),
                "refiner": lambda k: k.startswith("refiner."),
                "refiner binary": lambda k: k.startswith("refiner.") and k.rsplit(".", 1)[0] in binary,
            }
            for part, keep in parts.items():
                sizes = {v: saved_bytes({k: t for k, t in w.items() if keep(k)}) / mib for v, w in variants.items()}
                th = f"{theory['bits'] / 8 / mib:10.2f}" if part == "refiner" else f"{'':10}"
                print(f"{dataset:8} {trainer:34} {part:14} {sizes['fp32']:9.2f} {sizes['fp16']:9.2f} "
                      f"{sizes['packed']:10.2f} {th}")


if __name__ == "__main__":
    main()
