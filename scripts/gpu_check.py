#!/usr/bin/env python
"""What only a CUDA machine can show, through nnU-Net's own commands on the tests' tiny dataset:

  train      nnUNetv2_train with the smoke HiDiff trainer, torch.compile on (nnU-Net's CUDA default, or as
             nnUNet_compile says) and mixed precision (autocast + grad scalers, always on for CUDA)
  keys       the checkpoint's weights carry no compile/DDP wrapper prefix
  resume     nnUNetv2_train --c loads that checkpoint and finishes
  predict    nnUNetv2_predict -device cuda writes masks
  same-mask  the CUDA masks equal nnUNetv2_predict -device cpu's for the same seed (share of equal voxels)
  ddp        nnUNetv2_train -num_gpus 2 (only when two GPUs are visible)

One line per check with its time; exit status 0 when every check passed, 1 otherwise, 2 without CUDA.

    python scripts/gpu_check.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER = "nnUNetTrainerHiDiff_smoke"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); these checks need an NVIDIA GPU "
              "and a CUDA build of torch. Nothing was run.")
        return 2
    print(f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"nnUNet_compile={os.environ.get('nnUNet_compile', '(unset: on)')}")
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_dataset import BIN, make_raw_dataset, nnunet_env, plan_and_preprocess

    work = args.keep or Path(tempfile.mkdtemp(prefix="hidiff_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []

    def check(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            detail = fn() or ""
            status = "ok"
        except Exception as e:  # one line per failed check; the others still run
            detail, status = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}", "FAIL"
        results.append(status == "ok")
        print(f"[{status:4}] {name:10} {time.perf_counter() - start:8.1f} s  {detail}", flush=True)

    def cli(name, cli_args, env, log):
        proc = subprocess.run([str(BIN / name), *map(str, cli_args)], env=env, capture_output=True, text=True)
        (work / f"{log}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} exited {proc.returncode}; see {work / (log + '.log')}")
        return proc

    env = {}

    def setup():
        make_raw_dataset(work / "raw")
        plan_and_preprocess(work)
        env.update(nnunet_env(work), nnUNet_n_proc_DA="2")
        return f"tiny dataset in {work}"

    fold = work / "results" / "Dataset990_Tiny" / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    images = work / "raw" / "Dataset990_Tiny" / "imagesTs"

    def train():
        cli("nnUNetv2_train", ["990", "2d", "0", "-tr", TRAINER, "-device", "cuda"], env, "train")
        log = next(fold.glob("training_log_*.txt")).read_text()
        return "torch.compile used" if "Using torch.compile" in log else "torch.compile NOT used (nnUNet_compile?)"

    def keys():
        weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
        bad = [k for k in weights if k.startswith(("_orig_mod.", "module."))]
        if bad:
            raise AssertionError(f"{len(bad)} prefixed keys, e.g. {bad[0]}")
        return f"{len(weights)} clean keys"

    def resume():
        cli("nnUNetv2_train", ["990", "2d", "0", "-tr", TRAINER, "-device", "cuda", "--c"], env, "resume")

    def predict():
        for device in ("cuda", "cpu"):
            cli("nnUNetv2_predict", ["-i", images, "-o", work / f"pred_{device}", "-d", "990", "-c", "2d", "-f", "0",
                                     "-tr", TRAINER, "-device", device, "-npp", "1", "-nps", "1"], env,
                f"predict_{device}")

    def same_mask():
        import numpy as np
        import SimpleITK as sitk

        equal = total = 0
        for f in sorted((work / "pred_cuda").glob("*.nii.gz")):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "pred_cpu" / f.name)))
            equal, total = equal + int((a == b).sum()), total + a.size
        if total == 0 or equal / total < 0.999:
            raise AssertionError(f"only {equal}/{total} voxels agree between CUDA and CPU")
        return f"{equal}/{total} voxels agree"

    def ddp():
        if torch.cuda.device_count() < 2:
            return "skipped: one GPU visible"
        cli("nnUNetv2_train", ["990", "2d", "1", "-tr", TRAINER, "-num_gpus", "2"], env, "ddp")
        return "2 ranks"

    check("setup", setup)
    for name, fn in (("train", train), ("keys", keys), ("resume", resume), ("predict", predict),
                     ("same-mask", same_mask), ("ddp", ddp)):
        check(name, fn)
    print(f"gpu_check: {sum(results)}/{len(results)} checks passed; logs in {work}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
