"""Evaluation for HiDiff: Dice/IoU/HD95 (physical units), sensitivity/accuracy, NaN ratios, small-object subset.

``metrics`` is pure numpy/scipy; ``folder`` evaluates prediction folders and extends nnU-Net's summary.json.
"""
from nnunetv2_hidiff.evaluation.metrics import (EMPTY_MASK_RULES, accuracy, compute_case_metrics, dice, hd95, iou,
                                                sensitivity, small_object_metrics, specificity)

__all__ = ["EMPTY_MASK_RULES", "accuracy", "compute_case_metrics", "dice", "hd95", "iou", "sensitivity",
           "small_object_metrics", "specificity"]
