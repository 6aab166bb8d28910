"""Plan presets: derived nnU-Net plans identifiers with CPU- or paper-sized batch/patch (see presets.py)."""
from nnunetv2_hidiff.planning.presets import PlanningError, create_plans, derive_plans, recompute_topology

__all__ = ["PlanningError", "create_plans", "derive_plans", "recompute_topology"]
