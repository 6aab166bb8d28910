"""Thin re-export for nnU-Net in a clone: point nnUNet_extTrainer at this folder.

    export nnUNet_extTrainer=/path/to/clone/trainers
    nnUNetv2_train 901 2d 0 -tr nnUNetTrainerHiDiff -device cpu

An installed package (wheel or editable) ships the same folder: ``export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers)``
points at nnunetv2_hidiff/nnunet_trainers/, whose module this file re-exports. The classes live in the installed
package (nnunetv2_hidiff.training, nnunetv2_hidiff.experiments); nnU-Net imports this file to find them by name and
unloads it afterwards, so nothing else belongs here.
"""
from nnunetv2_hidiff.nnunet_trainers.hidiff_trainers import *  # noqa: F401,F403
