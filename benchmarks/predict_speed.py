"""End-to-end prediction time per image through nnU-Net's predictor (issue 15, item 5; prints numbers).

nnU-Net's ``nnUNetPredictor`` (preprocessing, sliding window, mirroring TTA as chosen, export to a segmentation)
predicts the same images three times (four: see below) with the same HiDiffNetwork, built through the trainer's
``build_network_architecture`` from a shipped default plan: the segmentor alone (``refine = False``), the refined
output with the binary refiner simulated in float (``packed = False``), and with the bit-packed kernels
(``packed = True``), at the trainer's default prediction settings (steps, samples, transition). Weights are random
with non-trivial BatchNorm statistics: the time does not depend on them, and no trained fold is needed.

    python benchmarks/predict_speed.py --images $nnUNet_raw/Dataset902_DRIVE/imagesTs --cases 4 --threads 2

Prints seconds per image (mean over the cases after one untimed warm-up image), the kernel's instruction set, the
largest difference between the packed and the simulated refined probabilities and the share of pixels where their
masks differ, next to the share where two seeds of the packed chain differ (a fourth, timed, packed run with
``seed = 1``): with random weights ε̂ sits near its thresholds, so read the first share against the second.
Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from packed_speed import build  # noqa: E402  (the trainer's network from the shipped plan, BN statistics set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="902", choices=["901", "902"])
    parser.add_argument("--images", default=None, help="folder of CASE_0000.ext images (default: "
                                                       "$nnUNet_raw/Dataset902_DRIVE/imagesTs)")
    parser.add_argument("--cases", type=int, default=4, help="images timed (after one warm-up image)")
    parser.add_argument("--trainer", default="nnUNetTrainerHiDiff")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring (the same for every mode)")
    parser.add_argument("--steps", type=int, default=None, help="refinement steps (default: the trainer's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from cost_ratios import PLANS
    from nnunetv2_hidiff.networks import packed

    name, plans_file, dj_file = PLANS[args.dataset]
    folder = Path(args.images or Path(os.environ.get("nnUNet_raw", ".")) / name / "imagesTs")
    files = sorted(folder.glob("*_0000.*"))[:args.cases + 1]
    if len(files) < 2:
        sys.exit(f"error: {folder} has fewer than 2 images named CASE_0000.ext")
    import json

    plans, dataset_json = json.loads(plans_file.read_text()), json.loads(dj_file.read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    net, _ = build(args.trainer, args.dataset, None)
    net.steps = args.steps or net.config.default_steps
    steps, settings = net.steps, net.settings()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=not args.disable_tta, device=torch.device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False, verbose=False)
    predictor.manual_initialization(net, pm, cm, [net.state_dict()], dataset_json, args.trainer,
                                    None if args.disable_tta else (0, 1))
    reader = pm.image_reader_writer_class()
    images = [reader.read_images([str(f)]) for f in files]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels: {packed.isa()}; {name} plan "
          f"patch {cm.patch_size}, {args.trainer}: {steps} steps, {settings['samples']} sample(s), transition "
          f"{settings['transition']}, mirroring TTA {'off' if args.disable_tta else 'on'}; {len(files) - 1} images of "
          f"{folder} (+1 warm-up)")
    modes = {"segmentor alone": (False, False, 0), "refined, simulated": (True, False, 0),
             "refined, packed": (True, True, 0), "refined, packed, seed 1": (True, True, 1)}
    times, probs, segs = {}, {}, {}
    for mode, (refine, is_packed, seed) in modes.items():
        net.refine, net.packed, net.seed = refine, is_packed, seed
        seconds, out, masks = [], [], []
        for i, (img, props) in enumerate(images):
            start = time.perf_counter()
            seg, p = predictor.predict_single_npy_array(img, props, None, None, True)
            if i:
                seconds.append(time.perf_counter() - start)
                out.append(p)
                masks.append(seg)
        times[mode], probs[mode], segs[mode] = float(np.mean(seconds)), out, masks
    print(f"{'mode':24s} {'s per image':>12s} {'x segmentor':>12s}")
    for mode, t in times.items():
        print(f"{mode:24s} {t:12.2f} {t / times['segmentor alone']:11.2f}x")
    print(f"packed is {times['refined, simulated'] / times['refined, packed']:.2f}x faster than simulated; "
          f"max |Δ probability| packed vs simulated = "
          f"{max(np.abs(a - b).max() for a, b in zip(probs['refined, packed'], probs['refined, simulated'])):.2e}")
    total = sum(a.size for a in segs['refined, packed'])
    for other, why in (("refined, simulated", "float rounding at binary thresholds, README 'packed kernels'"),
                       ("refined, packed, seed 1", "the chain's own sampling noise, for scale")):
        differ = sum(int((a != b).sum()) for a, b in zip(segs['refined, packed'], segs[other]))
        print(f"refined masks, packed vs {other}: differ at {differ} of {total} pixels ({differ / total:.2e}; "
              f"{why})")


if __name__ == "__main__":
    main()
