"""Thin re-export for nnU-Net: point nnUNet_extTrainer at this folder.

    export nnUNet_extTrainer=/path/to/nnunetv2_hidiff/trainers
    nnUNetv2_train 901 2d 0 -tr nnUNetTrainerHiDiff -device cpu

The classes live in the installed package (nnunetv2_hidiff.training); nnU-Net imports this file to find
them by name and unloads it afterwards, so nothing else belongs here.
"""
from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff  # noqa: F401
from nnunetv2_hidiff.training.variants import *  # noqa: F401,F403
