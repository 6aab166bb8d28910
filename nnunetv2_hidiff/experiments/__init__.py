"""Experiment trainers: the classes behind this project's studies (docs/experiments/), apart from the product.

A user picks among the product trainers (nnunetv2_hidiff.training: nnUNetTrainerHiDiff, _paper, _realRefiner,
the paper's V1-V5, budgets, _cpu, Baseline); the classes here each answered one question, are named by their
configuration, and stay findable by name through nnUNet_extTrainer so that every committed result reproduces.
Each module is one question (its docstring: the question, the write-up, the verdict); each class names its
evidence folder and is the paper's configuration plus the parts its name lists (_parts.py).
"""
from .combinations_and_gating import *  # noqa: F401,F403
from .cpu_protocols import *  # noqa: F401,F403
from .equal_cost_controls import *  # noqa: F401,F403
from .head_and_width import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .timesteps import *  # noqa: F401,F403
from .training_priors import *  # noqa: F401,F403

from . import (combinations_and_gating, cpu_protocols, equal_cost_controls, head_and_width, losses,  # noqa: E402
               timesteps, training_priors)

QUESTIONS = (head_and_width, training_priors, timesteps, combinations_and_gating, losses, cpu_protocols,
             equal_cost_controls)
__all__ = [name for module in QUESTIONS for name in module.__all__]
