"""nnU-Net trainers for HiDiff (the classes `trainers/` re-exports for nnUNet_extTrainer)."""
from .trainer import HiDiffConfigurationError, nnUNetTrainerHiDiff
from .variants import *  # noqa: F401,F403
