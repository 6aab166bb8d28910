"""Helpers to build an in-process HiDiff trainer on the tiny dataset and fake batches for it."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_trainer(trainer_name: str = "nnUNetTrainerHiDiff_smoke", configuration: str = "2d", fold: int = 3):
    """In-process trainers use fold 3, which no command-line test trains: nnU-Net creates a training log in the
    fold's output folder as soon as a trainer logs anything, and the CLI tests read fold 0's log."""
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args("990", configuration, fold, trainer_name, "nnUNetPlans",
                                    device=torch.device("cpu"))
    return trainer


def make_batch(trainer, seed: int = 0, batch_size: int = 2) -> dict:
    """A batch shaped like nnU-Net's training batches: data (B,C,*patch), deep-supervision targets."""
    g = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    labels = torch.randint(0, trainer.label_manager.num_segmentation_heads, (batch_size, 1, *patch), generator=g)
    data = torch.randn(batch_size, 1, *patch, generator=g) + labels.float()
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [int(round(p * s)) for p, s in zip(patch, scale)]
        targets.append(F.interpolate(labels.float(), size=size, mode="nearest"))
    return {"data": data, "target": targets}


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def changed(before: dict, module: torch.nn.Module) -> set:
    return {k for k, v in module.state_dict().items() if torch.is_tensor(v) and not torch.equal(before[k], v)}
