"""Every trainer of nnunetv2_hidiff, re-exported for nnU-Net's search of ``nnUNet_extTrainer`` (see this folder's
``__init__``). nnU-Net imports this file by its bare name and unloads it afterwards, so nothing else belongs here.
"""
from nnunetv2_hidiff.training.trainer import nnUNetTrainerHiDiff  # noqa: F401
from nnunetv2_hidiff.training.variants import *  # noqa: F401,F403
from nnunetv2_hidiff.experiments import *  # noqa: F401,F403
