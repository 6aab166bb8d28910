"""Aggregation for summary.md's small-object section (paper Tables VII/VIII), from the summaries'
``hidiff_small_objects``.

``nnunetv2_hidiff.evaluation`` writes, per fold (or per test-set evaluation) and class, the metrics pooled over the
*small units*: 2D slices (or whole cases) whose reference size is > 0 and below a threshold. Only these per-fold
aggregates are stored (results.csv has no per-unit rows), so this section aggregates them:

* per fold and class: the summary's unit means (``Dice``, ``HD95``; NaN-ignoring mean over the fold's small units);
* per fold, foreground: NaN-ignoring mean over the classes that have small units in that fold;
* per trainer and class: mean ± sample std over folds of those per-fold values; units and undefined HD95 are summed;
* difference to the reference trainer: paired t-test over the folds' values (small units are not paired across
  trainers case by case here, so there is no Wilcoxon test).
"""
from __future__ import annotations

from typing import Dict, Tuple

from .collect import FOREGROUND
from .stats import nan_mean

# (trainer, split, fold, output) -> class -> per-class report; the report relabels the trainer per output (one
# series per trainer and output, see report.series_view), so these functions select by trainer and split only
SmallObjects = Dict[Tuple[str, ...], Dict[str, dict]]


def small_fold_values(small: SmallObjects, trainer: str, split: str, metric: str, cls: str) -> Dict[str, float]:
    """{fold: value of ``metric`` on the small units} for one class or ``"foreground"``; folds without small units
    of that class are left out."""
    out = {}
    for (t, s, fold, *_), per_class in small.items():
        if t != trainer or s != split:
            continue
        with_units = {c: m for c, m in per_class.items() if int(m.get("n_units", 0)) > 0}
        if cls == FOREGROUND:
            if with_units:
                out[fold] = nan_mean([float(m[metric]) for m in with_units.values()])
        elif cls in with_units:
            out[fold] = float(with_units[cls][metric])
    return out


def small_counts(small: SmallObjects, trainer: str, split: str, cls: str) -> Tuple[int, int]:
    """(small units, small units with undefined HD95), summed over folds (and classes for ``"foreground"``)."""
    units = undefined = 0
    for (t, s, *_), per_class in small.items():
        if t == trainer and s == split:
            for c, m in per_class.items():
                if cls in (FOREGROUND, c):
                    units += int(m.get("n_units", 0))
                    undefined += int(m.get("n_hd95_undefined", 0))
    return units, undefined
