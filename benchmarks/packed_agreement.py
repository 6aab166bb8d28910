"""Do the packed and the simulated binary refiner give the same masks on a trained fold? (issue 15; numbers only)

Predicts the same images through nnU-Net's predictor with the fold's HiDiffNetwork twice, refined with the packed
kernels and with the simulated float path (same seed), for each step count, and prints how many voxels of the
masks differ and the largest probability difference.

    xz -dk demo/model/*/fold_0/checkpoint_final.pth.xz   # the shipped model is compressed
    python benchmarks/packed_agreement.py demo/model/nnUNetTrainerHiDiff_w8_joint_bce1_cpuWarm500__nnUNetPlans_hidiffCPU__2d \\
        demo/Dataset991_HippocampusMini/imagesTr --cases 8 --steps 1 10
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a trained model folder (plans.json, dataset.json, fold_F/)")
    parser.add_argument("images", help="folder of CASE_0000.ext images")
    parser.add_argument("-f", "--fold", default="0")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_hidiff.networks import packed

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(args.model, (args.fold,), "checkpoint_final.pth")
    net = predictor.network
    reader = predictor.plans_manager.image_reader_writer_class()
    files = sorted(Path(args.images).glob("*_0000.*"))[:args.cases]
    images = [reader.read_images([str(f)]) for f in files]
    print(f"kernels: {packed.isa()}; {args.model} fold {args.fold}, {len(files)} images of {args.images}, no TTA")
    for steps in args.steps:
        differ = total = 0
        largest = 0.0
        for img, props in images:
            out = {}
            for is_packed in (False, True):
                net.refine, net.packed, net.steps = True, is_packed, steps
                out[is_packed] = predictor.predict_single_npy_array(img, props, None, None, True)
            differ += int((out[True][0] != out[False][0]).sum())
            total += out[True][0].size
            largest = max(largest, float(np.abs(out[True][1] - out[False][1]).max()))
        print(f"{steps} step(s): refined masks packed vs simulated differ at {differ} of {total} voxels; "
              f"max |Δ probability| {largest:.2e}")


if __name__ == "__main__":
    main()
