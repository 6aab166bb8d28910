"""The folder that nnU-Net's ``nnUNet_extTrainer`` points at, shipped inside the package so that an installed wheel
needs no clone:

    export nnUNet_extTrainer=$(nnunetv2_hidiff_trainers)
    nnUNetv2_train 901 2d 0 -tr nnUNetTrainerHiDiff

nnU-Net (``nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name``) puts this folder on ``sys.path``
for the time of the search, imports every module in it by its bare name (``hidiff_trainers``), takes the first one
that has an attribute of the requested name and removes the modules it imported from this folder afterwards. So the
folder holds only :mod:`hidiff_trainers`, which re-exports the trainer classes from the package; the classes
themselves are defined in ``nnunetv2_hidiff.training`` and ``nnunetv2_hidiff.experiments`` and stay the same
objects whichever way they are found. This ``__init__`` is never imported by that search.
"""
from pathlib import Path

FOLDER = Path(__file__).resolve().parent  # what nnunetv2_hidiff_trainers prints; imports nothing heavy
