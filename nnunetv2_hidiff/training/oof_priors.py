"""Out-of-fold priors for the refiner's training (issue 12; not in the paper).

The refiner learns to remove the noise (1 − ᾱ_t)|p − y0|, where p is its segmentor's prior. On the training batch
that prior comes from a segmentor that is fitting those very cases; at test time it comes from a segmentor that has
never seen the case. nnU-Net's cascade meets the same problem by training a stage on the previous stage's
cross-validation predictions; this module does the same for the refiner: for a training case of fold k, the prior
is predicted by the segmentor of the fold j ≠ k whose *validation* split holds the case (a network that has never
seen it), on the same augmented patch the trainer's own segmentor sees. Only the refiner's inputs change: the
segmentor still trains on L_disc (+ λ_diff·L_diff through the features it gives the refiner), and prediction and
validation use the fold's own segmentor as always.

As in the cascade, the other folds' segmentors were trained on fold k's validation cases; the refiner never sees
those cases or their labels, only those networks' predictions on fold k's training cases.

Where the segmentors come from (first match wins):
  nnUNet_HiDiff_oof_priors    environment variable: a checkpoint path with "{fold}" in it
  trainer.oof_prior_trainer   class attribute: a plain nnU-Net trainer name whose fold folders of the same dataset,
                              plans and configuration hold checkpoint_final.pth (nnU-Net's get_output_folder)
Every other fold's checkpoint must exist: a missing or foreign one is one clear error naming the file.
"""
from __future__ import annotations

import os
from os.path import join
from typing import Dict, List, Optional, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, load_json

from .checkpointing import load_whole_segmentor
from .common import HiDiffConfigurationError
from .fold_record import update_fold_record

ENV_VAR = "nnUNet_HiDiff_oof_priors"


def oof_template(trainer) -> Optional[str]:
    """The checkpoint path template ("{fold}" in it) of the trainer's out-of-fold segmentors, or None (off)."""
    template = os.environ.get(ENV_VAR) or None
    if template is None and getattr(trainer, "oof_prior_trainer", None):
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        folder = get_output_folder(trainer.plans_manager.dataset_name, trainer.oof_prior_trainer,
                                   trainer.plans_manager.plans_name, trainer.configuration_name)
        template = join(folder, "fold_{fold}", "checkpoint_final.pth")
    if template is not None and "{fold}" not in template:
        raise HiDiffConfigurationError(f"{ENV_VAR}={template}: the path must contain {{fold}}, one checkpoint "
                                       f"per cross-validation fold")
    return template


def case_folds(splits: List[dict], fold: int) -> Dict[str, int]:
    """case → the fold j ≠ ``fold`` whose validation split holds it, for every training case of ``fold``."""
    if not 0 <= fold < len(splits):
        raise HiDiffConfigurationError(f"out-of-fold priors need fold {fold} of splits_final.json, which has "
                                       f"{len(splits)} splits")
    own_val = set(splits[fold]["val"])
    mapping = {case: j for j, split in enumerate(splits) if j != fold for case in split["val"]
               if case not in own_val}
    missing = sorted(set(splits[fold]["train"]) - set(mapping))
    if missing:
        raise HiDiffConfigurationError(
            f"out-of-fold priors: {len(missing)} training case(s) of fold {fold} ({', '.join(missing[:3])} ...) are "
            f"in no other fold's validation split, so no segmentor has left them out (splits_final.json must be "
            f"a cross-validation, as nnU-Net's own)")
    return mapping


class OutOfFoldPriors:
    """The other folds' segmentors (eval mode, no gradients) and which training case each one predicts."""

    def __init__(self, networks: Dict[int, torch.nn.Module], case_to_fold: Dict[str, int],
                 sources: Dict[int, str]):
        self.networks, self.case_to_fold, self.sources = networks, case_to_fold, sources

    @classmethod
    def load(cls, trainer, template: str, record: bool = True) -> "OutOfFoldPriors":
        """The other folds' segmentors for ``trainer.fold``; ``record``: name them in the fold record (training)."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        splits_file = join(trainer.preprocessed_dataset_folder_base, "splits_final.json")
        if not isfile(splits_file):
            raise HiDiffConfigurationError(f"{splits_file}: missing; out-of-fold priors need nnU-Net's "
                                           f"cross-validation splits (train the other folds first)")
        mapping = case_folds(load_json(splits_file), trainer.fold)
        networks, sources = {}, {}
        for j in sorted(set(mapping.values())):
            path = template.replace("{fold}", str(j))
            net = nnUNetTrainer.build_network_architecture(
                trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
                trainer.label_manager.num_segmentation_heads, False).to(trainer.device)
            load_whole_segmentor(net, path, trainer.device)
            networks[j], sources[j] = net.eval().requires_grad_(False), path
        if record and trainer.local_rank == 0:  # what the benchmark and users read (fold_record.py)
            update_fold_record(trainer.output_folder, oof_priors={str(j): p for j, p in sources.items()})
        return cls(networks, mapping, sources)

    @torch.no_grad()
    def replace(self, data: torch.Tensor, keys: Optional[Sequence[str]], logits: torch.Tensor) -> torch.Tensor:
        """The logits of ``data`` (B, C, *sp), each sample's from the segmentor that never saw its case, in the shape
        and dtype of ``logits`` (the trainer's own segmentor's); no gradient path into any segmentor."""
        if keys is None:
            raise HiDiffConfigurationError("out-of-fold priors need the case identifiers of each training batch "
                                           "('keys', which nnU-Net's data loader provides)")
        unknown = [k for k in keys if k not in self.case_to_fold]
        if unknown:
            raise HiDiffConfigurationError(f"out-of-fold priors: case {unknown[0]} is not a training case of this "
                                           f"fold in splits_final.json")
        out = torch.empty_like(logits)
        for j, net in self.networks.items():
            idx = [i for i, k in enumerate(keys) if self.case_to_fold[k] == j]
            if idx:
                out[idx] = net(data[idx]).to(out.dtype)
        return out
