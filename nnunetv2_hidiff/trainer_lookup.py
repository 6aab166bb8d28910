"""Every trainer class of this package by name: the product's (nnunetv2_hidiff.training) and the experiments'
(nnunetv2_hidiff.experiments). nnU-Net finds the same classes through the folder printed by
``nnunetv2_hidiff_trainers`` (nnUNet_extTrainer); this is the lookup for the package's own tools."""
from __future__ import annotations

import inspect
from typing import Dict


def all_trainers() -> Dict[str, type]:
    """{class name: class} of every nnUNetTrainer subclass this package defines."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_hidiff import experiments
    from nnunetv2_hidiff.training import trainer, variants

    found = {}
    for module in (trainer, variants, experiments):
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj is not nnUNetTrainer
                    and obj.__module__.startswith("nnunetv2_hidiff.")):
                found[name] = obj
    return found


def trainer_class(name: str) -> type:
    """The class called ``name``; KeyError naming the problem if this package has none."""
    trainers = all_trainers()
    if name not in trainers:
        raise KeyError(f"nnunetv2_hidiff has no trainer class {name!r} (see docs/reference/trainers.md)")
    return trainers[name]
