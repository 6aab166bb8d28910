"""A tiny synthetic nnU-Net dataset (2 foreground labels) for fast end-to-end tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _case(rng, shape=(4, 40, 32)):
    """Image: noise + two bright discs; labels 1 and 2 on the discs. Returns (image, label)."""
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(0, 0.3, shape).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    for label, (cy, cx, r) in ((1, (rng.integers(10, 18), rng.integers(8, 14), rng.integers(4, 7))),
                               (2, (rng.integers(22, 30), rng.integers(16, 24), rng.integers(3, 6)))):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        seg[:, disc] = label
        img[:, disc] += 1.0 + 0.5 * label
    return img, seg


def _write(arr, path, spacing=(2.0, 1.0, 1.5)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing[::-1])
    sitk.WriteImage(im, str(path))


def make_raw_dataset(raw_root: Path, dataset_id: int = 990, n_train: int = 6, n_test: int = 2,
                     labels=None, seed: int = 0) -> Path:
    name = f"Dataset{dataset_id:03d}_Tiny"
    root = raw_root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train + n_test):
        img, seg = _case(rng)
        split = "Tr" if i < n_train else "Ts"
        _write(img, root / f"images{split}" / f"tiny_{i:03d}_0000.nii.gz")
        _write(seg, root / f"labels{split}" / f"tiny_{i:03d}.nii.gz")
    meta = {"channel_names": {"0": "MRI"}, "labels": labels or {"background": 0, "a": 1, "b": 2},
            "numTraining": n_train, "file_ending": ".nii.gz", "name": "Tiny"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def nnunet_env(root: Path, ext_trainers=()) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0",
               nnUNet_extTrainer=os.pathsep.join([str(REPO / "trainers"), *map(str, ext_trainers)]))
    return env


def run_cli(name: str, args, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run an installed console script (nnUNetv2_train, ...); fail with its output if it fails."""
    proc = subprocess.run([str(BIN / name), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def plan_and_preprocess(root: Path, dataset_id: int = 990, batch_size: int = 2) -> None:
    """nnU-Net's own planning + preprocessing (2d), then a small batch size in the plan."""
    env = {**nnunet_env(root), "nnUNet_n_proc_DA": "1"}  # the planner calls torch.set_num_threads(n_proc_DA)
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", dataset_id, "-c", "2d", "-np", "1"], env)
    plans_file = next((root / "pre").glob(f"Dataset{dataset_id:03d}_*")) / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["2d"]["batch_size"] = batch_size
    plans_file.write_text(json.dumps(plans, indent=2))
