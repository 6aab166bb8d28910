"""Runs HiDiff training on a CPU process group (gloo), as nnU-Net's -num_gpus runs it on GPUs (run_ddp).

    python ddp_worker.py MODE WORLD_SIZE OUT_DIR

The nnU-Net paths come from the environment (the tiny dataset of the tests). Modes:
  warmup  segmentor-only steps on fixed batches, each rank taking its share of the batch (rows rank::world);
          with WORLD_SIZE 1 the same steps on the whole batch: the reference a DDP run must match
  steps   warmup, then HiDiff steps (refiner step, then segmentor step) on a fresh trainer, rank 1 getting a
          NaN batch once
  clean   HiDiff steps of the refiner_batches = "clean" variant, rank 1 getting a NaN clean batch once
  train   nnU-Net's own route for fold 2: get_trainer_from_args, run_training, perform_actual_validation
Each rank writes OUT_DIR/rank<r>.pt with what the test compares.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STEPS = 3


def _params(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _share(batch: dict, rank: int, world: int) -> dict:
    return {"data": batch["data"][rank::world], "target": [t[rank::world] for t in batch["target"]]}


def _steps(rank: int, world: int, warmup: bool) -> dict:
    """STEPS training steps of a fresh smoke trainer on this rank's share of fixed batches."""
    from trainer_utils import make_batch, make_trainer

    trainer = make_trainer("nnUNetTrainerHiDiff_smoke")
    trainer.initialize()
    trainer.network = trainer.hidiff
    trainer.hidiff.train()
    if warmup:
        trainer.num_warmup_epochs = 10
    initial = _params(trainer.hidiff)
    skipped, draws = [], []
    for step in range(STEPS):
        batch = _share(make_batch(trainer, seed=step, batch_size=4), rank, world)
        if not warmup and step == 1 and rank == 1:
            batch["data"] = batch["data"] * float("nan")  # only this rank's batch is bad
        # what this rank's diffusion generator would draw next (a copy of its state; it is not advanced)
        draws.append(torch.rand(4, generator=torch.Generator().set_state(trainer.diffusion_rng.get_state())))
        skipped.append(trainer.train_step(batch)["skipped"])
    ema = trainer.refiner_ema.shadow
    return dict(initial=initial, final=_params(trainer.hidiff), skipped=skipped, draws=draws,
                ema={k: ema[k].clone() for k, _ in trainer.hidiff.refiner.named_parameters()},
                segmentor_wrapped=trainer.segmentor_ddp is not None, refiner_wrapped=trainer.refiner_ddp is not None)


def _clean_steps(rank: int, world: int) -> dict:
    """STEPS steps of the unaugmented-refiner-batch variant (refiner_batches = "clean"), rank 1's clean batch NaN once."""
    from trainer_utils import make_batch, make_trainer

    trainer = make_trainer("nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500")
    trainer.initialize()
    trainer.network = trainer.hidiff
    trainer.hidiff.train()
    clean = [_share(make_batch(trainer, seed=100 + step, batch_size=4), rank, world) for step in range(STEPS)]
    if rank == 1:
        clean[1]["data"] = clean[1]["data"] * float("nan")  # only this rank's clean batch is bad
    trainer.clean_batches = iter(clean)
    initial = _params(trainer.hidiff)
    skipped = [trainer.train_step(_share(make_batch(trainer, seed=step, batch_size=4), rank, world))["skipped"]
               for step in range(STEPS)]
    return dict(initial=initial, final=_params(trainer.hidiff), skipped=skipped,
                refiner_wrapped=trainer.refiner_ddp is not None)


def run(rank: int, mode: str, world: int, out: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    torch.manual_seed(0)
    result = {}
    if mode == "train":
        from nnunetv2.run.run_training import get_trainer_from_args

        trainer = get_trainer_from_args("990", "2d", 2, "nnUNetTrainerHiDiff_smoke", "nnUNetPlans",
                                        device=torch.device("cpu"))
        trainer.run_training()
        trainer.perform_actual_validation(False)
        result.update(batch_size=trainer.batch_size, output_folder=trainer.output_folder,
                      is_ddp=trainer.is_ddp, device=str(trainer.device))
    elif mode == "clean":
        result["clean"] = _clean_steps(rank, world)
    else:
        result["warmup"] = _steps(rank, world, warmup=True)
        if mode == "steps":
            result["hidiff"] = _steps(rank, world, warmup=False)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    mode, world, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(out, exist_ok=True)
    if world == 1:
        run(0, mode, 1, out)
    else:
        mp.spawn(run, args=(mode, world, out), nprocs=world, join=True)


if __name__ == "__main__":
    main()
