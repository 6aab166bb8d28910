"""Seconds per training iteration of nnUNetTrainer vs the HiDiff trainers, and predict seconds per case
with and without refinement, measured in one process on this machine (a benchmark, not a test).

    nnUNet_preprocessed=... nnUNet_results=/tmp/scratch_results nnUNet_extTrainer=trainers \\
        python benchmarks/train_speed.py -d 901 -p nnUNetPlans_hidiffCPU --iterations 5 --cases 3

Training: each trainer is built by nnU-Net (get_trainer_from_args), its data loaders are started
(on_train_start), one step is run to warm up, then --iterations steps are timed (the diffusion terms are
forced on: no warm-up). "s/iter" is the train_step time alone; "s/batch load" the time to fetch a batch.
An nnU-Net epoch is 250 iterations. Prediction: nnU-Net's sliding-window predictor (Gaussian weighting,
mirroring TTA as configured) on --cases preprocessed cases, HiDiff with refinement (T = 10 DDIM steps,
1 sample) and without (segmentor only). Weights are untrained: speed does not depend on them.
Use a scratch nnUNet_results: on_train_end writes a checkpoint there.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def time_training(name, dataset, plans, iterations):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(dataset, "2d", 0, name, plans, device=torch.device("cpu"))
    trainer.on_train_start()
    if hasattr(trainer, "num_warmup_epochs"):
        trainer.num_warmup_epochs = 0
    trainer.network.train()
    load, step = [], []
    for i in range(iterations + 1):
        t0 = time.perf_counter()
        batch = next(trainer.dataloader_train)
        t1 = time.perf_counter()
        trainer.train_step(batch)
        t2 = time.perf_counter()
        if i:  # the first step warms up allocators and kernels
            load.append(t1 - t0)
            step.append(t2 - t1)
    result = dict(trainer=name, batch=trainer.batch_size, patch=list(trainer.configuration_manager.patch_size),
                  s_per_iter=float(np.median(step)), s_load=float(np.median(load)))
    trainer.disable_checkpointing = True
    trainer.on_train_end()
    return trainer, result


def time_prediction(trainer, cases, refine):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    network = getattr(trainer, "hidiff", trainer.network)
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    if hasattr(network, "refine"):
        network.refine = refine
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    _, val_keys = trainer.do_split()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys[:cases])
    seconds = []
    for key in dataset.identifiers:
        data = torch.from_numpy(dataset.load_case(key)[0][:])
        t0 = time.perf_counter()
        predictor.predict_sliding_window_return_logits(data)
        seconds.append(time.perf_counter() - t0)
    return float(np.mean(seconds)), int(data.shape[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", default="901")
    parser.add_argument("-p", default="nnUNetPlans_hidiffCPU")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerHiDiff",
                                                          "nnUNetTrainerHiDiff_paper"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'trainer':28s} {'batch':>5s} {'patch':>9s} {'s/iter':>7s} {'s/epoch(250)':>12s} {'s/batch load':>12s}"
          f" {'predict s/case':>15s}")
    for name in args.trainers:
        trainer, r = time_training(name, args.d, args.p, args.iterations)
        preds = []
        for refine in ((True, False) if hasattr(trainer, "hidiff") else (False,)):
            sec, slices = time_prediction(trainer, args.cases, refine)
            preds.append(f"{sec:.1f}" + (" (refined)" if refine else " (no refine)" if hasattr(trainer, "hidiff") else ""))
        print(f"{name:28s} {r['batch']:5d} {'x'.join(map(str, r['patch'])):>9s} {r['s_per_iter']:7.2f} "
              f"{250 * r['s_per_iter']:12.0f} {r['s_load']:12.2f}  {', '.join(preds)}", flush=True)


if __name__ == "__main__":
    main()
