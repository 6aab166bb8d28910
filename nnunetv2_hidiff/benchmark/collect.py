"""Read nnU-Net summary.json files (extended by nnunetv2_hidiff.evaluation) into long-format rows; write results.csv.

results.csv has the columns ``trainer, fold, class, case, metric, value, split, output``:

* ``fold``: the fold number for cross-validation rows, ``ensemble`` for the held-out test set;
* ``class``: the label name from dataset.json (``a``, ``vessel`` …; the summary's label key, e.g. ``1`` or
  ``(1, 2)``, when the name cannot be found);
* ``case``: the case identifier (file name without the dataset's file ending);
* ``metric``: every per-case metric of the summary (nnU-Net's Dice, IoU, TP, FP, FN, TN, n_pred, n_ref and our
  HD95, Sensitivity, Specificity, Accuracy, with a FOV also Dice_FOV, IoU_FOV);
* ``value``: as written by the evaluation: integers as integers, floats with full precision (``repr``), and an
  undefined value (see the empty-mask rules) as the string ``nan`` (``float("nan")`` and pandas read it back);
* ``split``: ``validation`` or ``test``;
* ``output``: ``refined`` or ``segmentor``: which output of the trainer was evaluated. A HiDiff fold contributes
  both, from ``validation_refined/summary.json`` and ``validation_segmentor/summary.json`` (a fold of the older
  layout, with only ``validation/summary.json``, counts as ``refined``); the test set is predicted with
  ``nnUNet_HiDiff_refine=1`` and ``=0``, and a third time, output ``decided``, with none of
  ``nnUNet_HiDiff_refine/_combine/_steps`` set, i.e. as each fold's decision says (its validation counterpart is
  the fold record's, see the summary's decision section). Plain nnU-Net and Baseline rows are ``segmentor``. A results.csv written
  before this column existed is read with each trainer's primary output (:func:`primary_output`).

A trainer is HiDiff (:func:`is_hidiff`) when its fold records (``hidiff_fold.json``) say kind ``hidiff``, or,
without records, when its name starts with ``nnUNetTrainerHiDiff``.

Rows are sorted (trainer in the given order, output (refined first), split, fold, case, class and metric in the
summary's order) so that the same summaries always give a byte-identical file. Files are written to a temporary
file and moved into place.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from nnunetv2_hidiff.atomic import atomic_write_text

CSV_COLUMNS = ("trainer", "fold", "class", "case", "metric", "value", "split", "output")
VALIDATION, TEST = "validation", "test"
ENSEMBLE = "ensemble"
FOREGROUND = "foreground"  # the mean over classes, next to the class names in the report
REFINED, SEGMENTOR = "refined", "segmentor"
OUTPUT_ORDER = (REFINED, SEGMENTOR)  # the outputs a HiDiff fold validates (validation_refined/, _segmentor/)
DECIDED = "decided"  # test set only: predicted as each fold's decision says (no setting forced)
HIDIFF_PREFIX = "nnUNetTrainerHiDiff"


def is_hidiff(trainer: str, records: Iterable[Optional[dict]] = ()) -> bool:
    """Whether ``trainer`` is a HiDiff trainer: its fold records' ``kind`` when any record has one (``"hidiff"``),
    else its name (``nnUNetTrainerHiDiff...``)."""
    kinds = {r.get("kind") for r in records if isinstance(r, dict) and r.get("kind")}
    if kinds:
        return "hidiff" in kinds
    return trainer.startswith(HIDIFF_PREFIX)


def primary_output(trainer: str, hidiff: Optional[bool] = None) -> str:
    """The output the main tables show: ``refined`` for HiDiff trainers, ``segmentor`` for the others
    (``hidiff`` None: decided by the name, as for a results.csv without the output column)."""
    return REFINED if (is_hidiff(trainer) if hidiff is None else hidiff) else SEGMENTOR


@dataclass(frozen=True)
class Row:
    trainer: str
    fold: str
    cls: str
    case: str
    metric: str
    value: Union[int, float]
    split: str
    output: str = SEGMENTOR


@dataclass
class Collected:
    """The rows of one summary.json plus its per-class empty-mask counts (``hidiff_nan_ratio``) and small-object
    report (``hidiff_small_objects``)."""
    trainer: str
    fold: str
    split: str
    output: str = SEGMENTOR
    rows: List[Row] = field(default_factory=list)
    nan_counts: Dict[str, dict] = field(default_factory=dict)  # class -> counts (n, n_both_empty, ...)
    small_objects: Dict[str, dict] = field(default_factory=dict)  # class -> hidiff_small_objects["per_class"][key]
    small_definition: str = ""


def label_names(dataset_json: dict) -> Dict[str, str]:
    """Summary label key (``"1"``, ``"(1, 2)"``) -> label name from dataset.json's ``labels``."""
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            key = str(tuple(int(v) for v in value)) if len(value) > 1 else str(int(value[0]))
        else:
            key = str(int(value))
        names.setdefault(key, name)
    return names


def case_id(path: str, file_ending: str) -> str:
    base = os.path.basename(path)
    return base[: -len(file_ending)] if file_ending and base.endswith(file_ending) else os.path.splitext(base)[0]


def _number(value) -> Union[int, float]:
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    return float(value)


def collect_summary(summary: dict, trainer: str, fold: str, split: str, dataset_json: dict,
                    output: str = SEGMENTOR) -> Collected:
    """Long-format rows (one per case × class × metric) of an nnU-Net summary dict of one output."""
    file_ending = dataset_json.get("file_ending", "")
    names = label_names(dataset_json)
    out = Collected(trainer, str(fold), split, output)
    for case in summary.get("metric_per_case", []):
        cid = case_id(case.get("reference_file") or case["prediction_file"], file_ending)
        for key, metrics in case["metrics"].items():
            cls = names.get(str(key), str(key))
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) or value is None:
                    out.rows.append(Row(trainer, str(fold), cls, cid, metric, _number(value), split, output))
    for key, counts in (summary.get("hidiff_nan_ratio") or {}).items():
        out.nan_counts[names.get(str(key), str(key))] = counts
    small = summary.get("hidiff_small_objects") or {}
    for key, report in (small.get("per_class") or {}).items():
        out.small_objects[names.get(str(key), str(key))] = report
    out.small_definition = small.get("definition", "")
    return out


def load_summary(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def has_hidiff_metrics(summary: dict) -> bool:
    """Whether nnunetv2_hidiff.evaluation already extended this summary (HD95 etc.)."""
    return "HD95" in summary.get("foreground_mean", {}) and "hidiff_nan_ratio" in summary


def sort_rows(rows: Iterable[Row], trainer_order: Sequence[str]) -> List[Row]:
    """Trainers in the given order, then output (refined, segmentor, decided), split, fold (numbers first), case, and class and
    metric in the order they first appear (the summary's label and metric order)."""
    rows = list(rows)
    order = {t: i for i, t in enumerate(trainer_order)}
    output_order = {o: i for i, o in enumerate(OUTPUT_ORDER + (DECIDED,))}
    split_order = {VALIDATION: 0, TEST: 1}
    cls_pos: Dict[str, int] = {}
    metric_pos: Dict[str, int] = {}
    for r in rows:
        cls_pos.setdefault(r.cls, len(cls_pos))
        metric_pos.setdefault(r.metric, len(metric_pos))

    def fold_key(f: str):
        return (0, int(f), "") if f.isdigit() else (1, 0, f)

    return sorted(rows, key=lambda r: (order.get(r.trainer, len(order)), r.trainer, output_order.get(r.output, 9),
                                       r.output, split_order.get(r.split, 9), fold_key(r.fold), r.case,
                                       cls_pos[r.cls], metric_pos[r.metric]))


def format_value(value: Union[int, float]) -> str:
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else repr(float(value))


def csv_text(rows: Iterable[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r.trainer, r.fold, r.cls, r.case, r.metric, format_value(r.value), r.split, r.output])
    return buf.getvalue()


def read_csv(path: Path) -> List[Row]:
    """Rows of a results.csv (values as floats); a file without the ``output`` column (written before it existed)
    gets each trainer's primary output."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return [Row(d["trainer"], d["fold"], d["class"], d["case"], d["metric"], float(d["value"]), d["split"],
                    d.get("output") or primary_output(d["trainer"])) for d in reader]


def write_csv(rows: Iterable[Row], path: Path) -> None:
    atomic_write_text(path, csv_text(rows))


def metric_values(rows: Iterable[Row], trainer: str, split: str, metric: str, cls: Optional[str] = None,
                  fold: Optional[str] = None, output: Optional[str] = None) -> Dict[tuple, float]:
    """{(fold, case[, class]): value} for one trainer, split and metric (optionally one class / fold / output)."""
    out = {}
    for r in rows:
        if r.trainer == trainer and r.split == split and r.metric == metric and (cls is None or r.cls == cls) \
                and (fold is None or r.fold == fold) and (output is None or r.output == output):
            out[(r.fold, r.case) if cls is not None else (r.fold, r.case, r.cls)] = float(r.value)
    return out
