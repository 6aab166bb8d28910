"""Data model, series, per-fold aggregation and formatting shared by the summary.md sections (report.py,
report_hidiff.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

from .collect import DECIDED, FOREGROUND, REFINED, SEGMENTOR, TEST, VALIDATION, Row, primary_output
from .small_objects import SmallObjects
from .stats import PairedResult, nan_mean, nan_std

HD95 = "HD95"

HOW_TO_READ = """\
- **Dice** (higher is better) and **HD95** (95th-percentile Hausdorff distance in physical units, i.e. the image
  spacing, usually mm; lower is better) come from each fold's `validation/summary.json` (plain nnU-Net and
  Baseline trainers) or, for HiDiff trainers, `validation_refined/summary.json` (refinement on: the row of the
  trainer itself) and `validation_segmentor/summary.json` (the row "…, its segmentor alone"; `validation/` of an
  older HiDiff fold counts as refined), all extended by `nnunetv2_hidiff.evaluation` (nnU-Net's own keys are
  unchanged). Every metric here can be recomputed from `results.csv` (column `output`: refined, segmentor, or
  decided for the test set as decided).
- **Per-fold mean**: NaN-ignoring mean over the fold's validation cases. **mean ± std**: over folds of the per-fold
  means (sample std, ddof = 1; "n/a" with one fold). **foreground**: NaN-ignoring mean over the classes.
- **Empty masks** (per case and class): reference and prediction both empty → Dice, IoU, HD95 are NaN (nothing to
  segment; ignored by the means, never scored as 1); exactly one empty → Dice = 0 and HD95 = NaN (a distance to an
  empty set is undefined). The **HD95 NaN ratio** = cases with undefined HD95 / cases that are not both empty; read
  it next to HD95, because a model that misses objects entirely gets no HD95 penalty for them.
- **Differences** are `trainer − reference` (positive Dice difference = better, positive HD95 difference = worse).
  Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided) over the cases paired by (fold, case id): each case is
  validated once per trainer because both use nnU-Net's splits; pairs with a NaN on either side are dropped.
  Paired t-test (scipy.stats.ttest_rel, two-sided) over the per-fold means, folds paired. "n/a": fewer than 2
  pairs, all differences 0, or constant differences. p-values are not corrected for multiple comparisons; with
  few folds/cases they are weak evidence either way.
- **Refined vs its own segmentor**: the same tests with the differences refined − segmentor of one HiDiff model
  (positive Dice / negative HD95 difference = refinement helped). **As decided**: per fold the output the fold's
  decision (`hidiff_fold.json`) picks for prediction; without a decision, refined. On the test set "as decided" is
  measured: the fold ensemble predicted with no setting forced (`test/<trainer>__decided`, output `decided`).
- **Speed**: seconds per training iteration and per validation case from the folds' `hidiff_fold.json` (median over
  the folds that have one; "—" where unknown); seconds per test case = wall time of the `nnUNetv2_predict` run
  (start-up and the fold ensemble included) / test cases.
"""


@dataclass(frozen=True)
class Prediction:
    """One measured test-set prediction run: wall seconds (None if unknown) for ``cases`` cases."""
    seconds: Optional[float]
    cases: int

    @property
    def seconds_per_case(self) -> Optional[float]:
        return self.seconds / self.cases if self.seconds is not None and self.cases else None


@dataclass
class ReportInput:
    dataset: str
    configuration: str
    plans: str
    trainers: List[str]
    folds: List[int]
    command: str
    rows: List[Row]
    # (trainer, split, fold, output) -> class -> counts; a 3-tuple key counts as the trainer's primary output
    nan_counts: Dict[Tuple[str, ...], Dict[str, dict]]
    budgets: Dict[str, str] = field(default_factory=dict)
    warm_starts: Dict[str, Dict[int, str]] = field(default_factory=dict)  # trainer -> fold -> segmentor checkpoint
    wall_times: Dict[str, List[Tuple[int, Optional[float], str]]] = field(default_factory=dict)
    test_predictions: Dict[Tuple[str, str], Prediction] = field(default_factory=dict)  # (trainer, output) -> run
    test_folds: Dict[str, List[int]] = field(default_factory=dict)
    test_fov: Optional[str] = None
    test_images: Optional[str] = None
    missing: Dict[str, List[str]] = field(default_factory=dict)  # trainer -> ["2 (interrupted)", ...]
    problems: List[str] = field(default_factory=list)
    small_objects: SmallObjects = field(default_factory=dict)  # keyed like nan_counts -> class -> report
    small_definition: str = ""
    generated: str = ""
    hidiff: List[str] = field(default_factory=list)  # HiDiff trainers (also: any trainer with refined rows)
    records: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # trainer -> fold -> hidiff_fold.json

    @property
    def reference(self) -> str:
        return self.trainers[0]

    def hidiff_trainers(self) -> List[str]:
        refined = {r.trainer for r in self.rows if r.output == REFINED}
        return [t for t in self.trainers if t in self.hidiff or t in refined]


# ---------------------------------------------------------------- series
def segmentor_label(trainer: str) -> str:
    """The series of a HiDiff trainer's segmentor alone."""
    return f"{trainer}, its segmentor alone"


def series_view(inp: ReportInput) -> ReportInput:
    """``inp`` with one "trainer" per series: the trainers (HiDiff: refined) and, after each HiDiff trainer, its
    segmentor alone; rows, empty-mask counts, small objects and test folds relabelled accordingly. The test set's
    as-decided rows (output ``decided``) are no series: the decision section reports them."""
    hidiff = set(inp.hidiff_trainers())
    labels = [x for t in inp.trainers for x in ([t, segmentor_label(t)] if t in hidiff else [t])]

    def label(trainer: str, output: Optional[str]) -> str:
        out = output or primary_output(trainer, trainer in hidiff)
        return segmentor_label(trainer) if trainer in hidiff and out == SEGMENTOR else trainer

    def relabel_keys(data: Dict[Tuple[str, ...], Dict[str, dict]]) -> Dict[Tuple[str, ...], Dict[str, dict]]:
        return {(label(k[0], k[3] if len(k) > 3 else None), *k[1:3]): v for k, v in data.items()}

    rows = [replace(r, trainer=label(r.trainer, r.output)) for r in inp.rows if r.output != DECIDED]
    return replace(inp, trainers=labels, rows=rows,
                   nan_counts=relabel_keys(inp.nan_counts), small_objects=relabel_keys(inp.small_objects),
                   test_folds={label(t, o): f for t, f in inp.test_folds.items() for o in (REFINED, SEGMENTOR)},
                   hidiff=[])


# ---------------------------------------------------------------- aggregation
def classes(rows: Sequence[Row]) -> List[str]:
    seen: Dict[str, None] = {}
    for r in rows:
        seen.setdefault(r.cls, None)
    return list(seen)


def fold_key(fold: str) -> tuple:
    """Sort key: fold numbers in numeric order, then names (``ensemble``)."""
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)


def folds_of(rows: Sequence[Row], trainer: str, split: str = VALIDATION) -> List[str]:
    return sorted({r.fold for r in rows if r.trainer == trainer and r.split == split}, key=fold_key)


def case_values(rows: Sequence[Row], trainer: str, split: str, metric: str, cls: str) -> Dict[Tuple[str, str], float]:
    """{(fold, case): value} of one class, or of the per-case foreground mean for ``cls == FOREGROUND``."""
    if cls != FOREGROUND:
        return {(r.fold, r.case): float(r.value) for r in rows
                if r.trainer == trainer and r.split == split and r.metric == metric and r.cls == cls}
    per_case: Dict[Tuple[str, str], List[float]] = {}
    for r in rows:
        if r.trainer == trainer and r.split == split and r.metric == metric:
            per_case.setdefault((r.fold, r.case), []).append(float(r.value))
    return {k: nan_mean(v) for k, v in per_case.items()}


def fold_means(rows: Sequence[Row], trainer: str, split: str, metric: str, cls: str) -> Dict[str, float]:
    """{fold: per-fold mean} of one class, or the foreground mean (NaN-ignoring mean of the class means)."""
    if cls == FOREGROUND:
        per_class = [fold_means(rows, trainer, split, metric, c) for c in classes(rows)]
        folds = sorted({f for pc in per_class for f in pc})
        return {f: nan_mean([pc.get(f, math.nan) for pc in per_class]) for f in folds}
    by_fold: Dict[str, List[float]] = {}
    for (fold, _), v in case_values(rows, trainer, split, metric, cls).items():
        by_fold.setdefault(fold, []).append(v)
    return {f: nan_mean(v) for f, v in by_fold.items()}


def nan_ratio(counts: Dict[Tuple[str, ...], Dict[str, dict]], trainer: str, split: str,
              cls: str) -> Tuple[int, int]:
    """(cases with undefined HD95, cases not both empty), pooled over the folds (all classes for FOREGROUND); keys
    select by trainer (a series label, see series_view) and split."""
    undefined = defined_or_not = 0
    for (t, s, *_), per_class in counts.items():
        if t != trainer or s != split:
            continue
        for c, cnt in per_class.items():
            if cls in (FOREGROUND, c):
                undefined += int(cnt.get("n_hd95_undefined", 0))
                defined_or_not += int(cnt.get("n", 0)) - int(cnt.get("n_both_empty", 0))
    return undefined, defined_or_not


# ---------------------------------------------------------------- formatting
def fmt(x: Optional[float], digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_mean_std(values: Sequence[float], digits: int = 4) -> str:
    return f"{fmt(nan_mean(values), digits)} ± {fmt(nan_std(values), digits)}"


def fmt_p(res: PairedResult) -> str:
    if res.p is None:
        return res.note or "n/a"
    return f"{res.p:.4g}"


def fmt_ratio(num: int, den: int) -> str:
    return f"{num / den:.3f} ({num}/{den})" if den else "n/a (0/0)"


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_speed(seconds: Optional[float]) -> str:
    """Seconds per iteration or case; "—" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    return f"{seconds:.0f} s" if seconds >= 100 else f"{seconds:.3g} s"


def cell(text) -> str:
    """Free text (e.g. a decision's reason) made safe for a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _dice_metric(split: str, fov: Optional[str]) -> str:
    return "Dice_FOV" if split == TEST and fov else "Dice"


# ---------------------------------------------------------------- markdown
