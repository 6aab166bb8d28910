"""summary.md and benchmark.png from the collected rows (every metric shown is recomputed from results.csv's rows;
decisions, warm starts and speeds come from the folds' ``hidiff_fold.json`` records and the measured predictions).

Series: every trainer is one series with its primary output (HiDiff: ``refined``; others: ``segmentor``); each
HiDiff trainer adds the series "<trainer>, its segmentor alone" (its ``segmentor`` rows). The tables of the
cross-validation, the differences, the test set, the small objects and the figure are computed per series
(:func:`series_view`).

Aggregation (the same rules in the markdown's "How to read this"):

* per-fold mean of a class: NaN-ignoring mean over the fold's validation cases;
* per-fold foreground mean: NaN-ignoring mean of the fold's class means (nnU-Net's ``foreground_mean`` is the
  plain mean of the class means; they agree unless a class mean is NaN);
* per trainer and class: mean ± sample std (ddof=1) of the per-fold means over folds;
* per-case foreground value (for the Wilcoxon test of the "foreground" row): NaN-ignoring mean over classes;
* HD95 NaN ratio: pooled over the folds' cases, ``n_hd95_undefined / (n − n_both_empty)`` from the summaries'
  ``hidiff_nan_ratio``.
"""
from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from nnunetv2_hidiff.atomic import atomic_write_bytes, atomic_write_text

from .collect import FOREGROUND, REFINED, SEGMENTOR, TEST, VALIDATION, Row, primary_output
from .small_objects import SmallObjects, small_counts, small_fold_values
from .stats import PairedResult, nan_mean, nan_std, paired_differences, ttest_paired, wilcoxon_paired

HD95 = "HD95"

HOW_TO_READ = """\
- **Dice** (higher is better) and **HD95** (95th-percentile Hausdorff distance in physical units, i.e. the image
  spacing, usually mm; lower is better) come from each fold's `validation/summary.json` (plain nnU-Net and
  Baseline trainers) or, for HiDiff trainers, `validation_refined/summary.json` (refinement on: the row of the
  trainer itself) and `validation_segmentor/summary.json` (the row "…, its segmentor alone"; `validation/` of an
  older HiDiff fold counts as refined), all extended by `nnunetv2_hidiff.evaluation` (nnU-Net's own keys are
  unchanged). Every metric here can be recomputed from `results.csv` (column `output`: refined or segmentor).
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
  decision (`hidiff_fold.json`) picks for prediction; without a decision, refined.
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
    segmentor alone; rows, empty-mask counts, small objects and test folds relabelled accordingly."""
    hidiff = set(inp.hidiff_trainers())
    labels = [x for t in inp.trainers for x in ([t, segmentor_label(t)] if t in hidiff else [t])]

    def label(trainer: str, output: Optional[str]) -> str:
        out = output or primary_output(trainer, trainer in hidiff)
        return segmentor_label(trainer) if trainer in hidiff and out == SEGMENTOR else trainer

    def relabel_keys(data: Dict[Tuple[str, ...], Dict[str, dict]]) -> Dict[Tuple[str, ...], Dict[str, dict]]:
        return {(label(k[0], k[3] if len(k) > 3 else None), *k[1:3]): v for k, v in data.items()}

    return replace(inp, trainers=labels, rows=[replace(r, trainer=label(r.trainer, r.output)) for r in inp.rows],
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
def _validation_section(inp: ReportInput) -> List[str]:
    rows, cls_list = inp.rows, classes(inp.rows) + [FOREGROUND]
    lines = ["## Cross-validation (nnU-Net folds)", "",
             "Per trainer and class: mean ± std over folds of the per-fold means (validation cases of each fold). "
             "HiDiff trainers: the refined output; the row \"…, its segmentor alone\" is the same models without "
             "refinement.", ""]
    table = []
    for t in inp.trainers:
        folds = folds_of(rows, t)
        if not folds:
            table.append([t, "–", "0", "n/a", "n/a", "n/a"])
            continue
        for c in cls_list:
            dice = fold_means(rows, t, VALIDATION, "Dice", c)
            hd = fold_means(rows, t, VALIDATION, HD95, c)
            table.append([t, c, str(len(folds)), fmt_mean_std(list(dice.values())),
                          fmt_mean_std(list(hd.values()), 3), fmt_ratio(*nan_ratio(inp.nan_counts, t, VALIDATION, c))])
    lines += _table(["Trainer", "Class", "Folds", "Dice", "HD95", "HD95 NaN ratio"], table)
    lines += ["", "Per fold (foreground = mean over classes; the bars of benchmark.png):", ""]
    per_fold = []
    for t in inp.trainers:
        dice = fold_means(rows, t, VALIDATION, "Dice", FOREGROUND)
        hd = fold_means(rows, t, VALIDATION, HD95, FOREGROUND)
        for f in folds_of(rows, t):
            n_cases = len({r.case for r in rows if r.trainer == t and r.split == VALIDATION and r.fold == f})
            per_fold.append([t, f, str(n_cases), fmt(dice.get(f)), fmt(hd.get(f), 3)])
    lines += _table(["Trainer", "Fold", "Cases", "Dice (foreground)", "HD95 (foreground)"], per_fold)
    return lines + [""]


def _difference_rows(inp: ReportInput, split: str, with_folds: bool) -> List[List[str]]:
    out = []
    cls_list = classes(inp.rows) + [FOREGROUND]
    for other in inp.trainers[1:]:
        for c in cls_list:
            for metric in (_dice_metric(split, inp.test_fov), HD95):
                ref_cases = case_values(inp.rows, inp.reference, split, metric, c)
                oth_cases = case_values(inp.rows, other, split, metric, c)
                w = wilcoxon_paired(ref_cases, oth_cases)
                row = [f"{other} − {inp.reference}", c, metric, str(w.n), fmt(w.mean_diff), fmt_p(w)]
                if with_folds:
                    tt = ttest_paired(fold_means(inp.rows, inp.reference, split, metric, c),
                                      fold_means(inp.rows, other, split, metric, c))
                    row += [str(tt.n), fmt(tt.mean_diff), fmt_p(tt)]
                out.append(row)
    return out


def _differences_section(inp: ReportInput) -> List[str]:
    lines = [f"## Differences (trainer − {inp.reference}), cross-validation", ""]
    if len(inp.trainers) < 2:
        return lines + ["n/a (one trainer)", ""]
    lines += _table(["Comparison", "Class", "Metric", "Wilcoxon n (cases)", "Mean diff (cases)", "Wilcoxon p",
                     "t-test n (folds)", "Mean diff (folds)", "t-test p"], _difference_rows(inp, VALIDATION, True))
    return lines + [""]


def _wall_time_section(inp: ReportInput) -> List[str]:
    lines = ["## Wall time", "",
             "*measured*: the `nnUNetv2_train` subprocess of a fresh training started by this benchmark (start-up, "
             "all epochs and the final validation); *checkpoint*: folds trained earlier or resumed, the sum of the "
             "epoch durations logged in `checkpoint_final.pth` (training epochs only, so somewhat lower).", ""]
    table = []
    for t in inp.trainers:
        entries = inp.wall_times.get(t, [])
        known = [s for _, s, _ in entries if s is not None]
        sources = []
        for src in ("measured", "checkpoint"):
            folds = [str(f) for f, s, so in entries if so == src and s is not None]
            if folds:
                sources.append(f"{src}: folds {', '.join(folds)}")
        unknown = [str(f) for f, s, _ in entries if s is None]
        if unknown:
            sources.append(f"unknown: folds {', '.join(unknown)}")
        row = [t, str(len(entries)), fmt_duration(sum(known)) if known else "n/a",
               fmt_duration(sum(known) / len(known)) if known else "n/a", "; ".join(sources) or "–"]
        if inp.test_images:
            row.append(_test_wall_time(inp, t))
        table.append(row)
    header = ["Trainer", "Folds", "Total", "Mean per fold", "Source"]
    if inp.test_images:
        header.append("Test prediction")
    return lines + _table(header, table) + [""]


def _test_wall_time(inp: ReportInput, trainer: str) -> str:
    runs = [(o, inp.test_predictions[(trainer, o)]) for o in (REFINED, SEGMENTOR)
            if (trainer, o) in inp.test_predictions]
    if len(runs) <= 1:
        return fmt_duration(runs[0][1].seconds) if runs else "n/a"
    return " + ".join(f"{fmt_duration(run.seconds)} ({o})" for o, run in runs)


def _test_section(inp: ReportInput) -> List[str]:
    rows = inp.rows
    dice_metric = _dice_metric(TEST, inp.test_fov)
    lines = ["## Held-out test set", "",
             f"Images: `{inp.test_images}`; each trainer predicts with the ensemble of the folds in the "
             f"Folds column (`nnUNetv2_predict -f ...`; `--test-folds`, by default its complete folds). "
             f"Mean ± std over the test cases."]
    if inp.test_fov:
        lines.append(f"FOV masks: `{inp.test_fov}`: Dice_FOV, HD95, Sensitivity, Specificity and Accuracy are "
                     f"computed inside the FOV (Dice/IoU in results.csv stay whole-image, as nnU-Net computes them).")
    lines.append("")
    table = []
    for t in inp.trainers:
        folds = inp.test_folds.get(t)
        if not folds:
            table.append([t, "–", "–", "0", "n/a", "n/a", "n/a"])
            continue
        for c in classes(rows) + [FOREGROUND]:
            dice = case_values(rows, t, TEST, dice_metric, c)
            hd = case_values(rows, t, TEST, HD95, c)
            table.append([t, ", ".join(map(str, folds)), c, str(len(dice)), fmt_mean_std(list(dice.values())),
                          fmt_mean_std(list(hd.values()), 3), fmt_ratio(*nan_ratio(inp.nan_counts, t, TEST, c))])
    lines += _table(["Trainer", "Folds", "Class", "Cases", dice_metric, "HD95", "HD95 NaN ratio"], table)
    if len(inp.trainers) >= 2:
        lines += ["", f"Differences (trainer − {inp.reference}) on the test cases, Wilcoxon over cases:", ""]
        lines += _table(["Comparison", "Class", "Metric", "n (cases)", "Mean diff", "Wilcoxon p"],
                        _difference_rows(inp, TEST, False))
    return lines + [""]


def _small_objects_section(inp: ReportInput) -> List[str]:
    """Empty when no summary carried a small-object report (``small_threshold`` <= 0)."""
    small, definition, trainers = inp.small_objects, inp.small_definition, inp.trainers
    if not small:
        return []
    lines = ["## Small objects (paper Tables VII/VIII)", "",
             f"Units: {definition or 'see the summaries'}. Per trainer and class: mean ± std over folds of the "
             f"per-fold means over the small units; Units and the HD95 NaN ratio are summed over folds. "
             f"Difference: trainer − {trainers[0]} over the folds, paired t-test.", ""]
    splits = [VALIDATION] + ([TEST] if inp.test_images else [])
    table = []
    for split in splits:
        for t in trainers:
            for c in classes(inp.rows) + [FOREGROUND]:
                units, undefined = small_counts(small, t, split, c)
                if units == 0:
                    continue
                dice = small_fold_values(small, t, split, "Dice", c)
                hd = small_fold_values(small, t, split, "HD95", c)
                row = [t, split, c, str(len(dice)), str(units), fmt_mean_std(list(dice.values())),
                       fmt_mean_std(list(hd.values()), 3), fmt_ratio(undefined, units)]
                if t == trainers[0] or split == TEST:
                    row += ["–", "–"]
                else:
                    tt = ttest_paired(small_fold_values(small, trainers[0], split, "Dice", c), dice)
                    row += [fmt(tt.mean_diff), fmt_p(tt)]
                table.append(row)
    if not table:
        return lines[:2] + [f"No unit is a small object ({definition or 'see the summaries'}): nothing to report.",
                            ""]
    lines += _table(["Trainer", "Split", "Class", "Folds", "Units", "Dice", "HD95", "HD95 NaN ratio",
                     "Dice diff (folds)", "t-test p"], table)
    return lines + [""]


# ---------------------------------------------------------------- HiDiff: refined vs segmentor, decision, speed
def _fold_pair(view: ReportInput, trainer: str, split: str, metric: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Per-fold foreground means of a HiDiff trainer's segmentor alone and its refined output (``view``: the
    series view)."""
    return (fold_means(view.rows, segmentor_label(trainer), split, metric, FOREGROUND),
            fold_means(view.rows, trainer, split, metric, FOREGROUND))


def _helped(segmentor: Dict, refined: Dict, metric: str, unit: str) -> str:
    """On how many of the paired folds (or cases) refinement improved ``metric`` (Dice up, HD95 down)."""
    _, diffs = paired_differences(segmentor, refined)
    better = int((diffs > 0).sum() if metric != HD95 else (diffs < 0).sum())
    return f"{better} of {diffs.size} {unit}"


def _refined_vs_segmentor_rows(inp: ReportInput, view: ReportInput, trainer: str) -> List[List[str]]:
    out = []
    splits = [VALIDATION] + ([TEST] if inp.test_images else [])
    for split in splits:
        for metric in (_dice_metric(split, inp.test_fov), HD95):
            seg_cases = case_values(view.rows, segmentor_label(trainer), split, metric, FOREGROUND)
            ref_cases = case_values(view.rows, trainer, split, metric, FOREGROUND)
            w = wilcoxon_paired(seg_cases, ref_cases)
            row = [trainer, split, metric]
            if split == VALIDATION:
                seg_folds, ref_folds = _fold_pair(view, trainer, split, metric)
                tt = ttest_paired(seg_folds, ref_folds)
                row += [_helped(seg_folds, ref_folds, metric, "folds"), str(w.n), fmt(w.mean_diff), fmt_p(w),
                        str(tt.n), fmt(tt.mean_diff), fmt_p(tt)]
            else:
                row += [_helped(seg_cases, ref_cases, metric, "cases"), str(w.n), fmt(w.mean_diff), fmt_p(w),
                        "–", "–", "–"]
            out.append(row)
    return out


def _refined_vs_segmentor_section(inp: ReportInput, view: ReportInput) -> List[str]:
    """Each HiDiff trainer's refined output against its own segmentor (same models, same cases)."""
    hidiff = inp.hidiff_trainers()
    if not hidiff:
        return []
    lines = ["## Refined vs its own segmentor", "",
             "Per HiDiff trainer and fold: foreground Dice and HD95 of the segmentor alone (`validation_segmentor/`) "
             "and of the refined output (`validation_refined/`); differences are refined − segmentor (Dice up and "
             "HD95 down = refinement helped).", ""]
    per_fold = []
    for t in hidiff:
        dice_seg, dice_ref = _fold_pair(view, t, VALIDATION, "Dice")
        hd_seg, hd_ref = _fold_pair(view, t, VALIDATION, HD95)
        for f in sorted(set(dice_seg) | set(dice_ref), key=fold_key):
            ds, dr, hs, hr = (d.get(f, math.nan) for d in (dice_seg, dice_ref, hd_seg, hd_ref))
            per_fold.append([t, f, fmt(ds), fmt(dr), fmt(dr - ds), fmt(hs, 3), fmt(hr, 3), fmt(hr - hs, 3)])
    lines += _table(["Trainer", "Fold", "Dice segmentor", "Dice refined", "Dice diff", "HD95 segmentor",
                     "HD95 refined", "HD95 diff"], per_fold)
    lines += ["", "Refined − segmentor over the cases (Wilcoxon) and the folds (paired t-test), foreground:", ""]
    rows = [r for t in hidiff for r in _refined_vs_segmentor_rows(inp, view, t)]
    lines += _table(["Trainer", "Split", "Metric", "Refinement helped", "Wilcoxon n (cases)", "Mean diff (cases)",
                     "Wilcoxon p", "t-test n (folds)", "Mean diff (folds)", "t-test p"], rows)
    return lines + [""]


def fold_decision(inp: ReportInput, trainer: str, fold: str) -> Optional[dict]:
    """The ``decision`` of a fold's record, None without one."""
    decision = inp.records.get(trainer, {}).get(fold, {}).get("decision")
    return decision if isinstance(decision, dict) else None


def refines(decision: Optional[dict]) -> bool:
    """Whether a fold's predictions are refined by default: its decision, refined without one (what the trainers
    predicted before they decided)."""
    return decision is None or decision.get("refine") is None or bool(decision["refine"])


def decided_fold_means(inp: ReportInput, view: ReportInput, trainer: str, metric: str) -> Dict[str, float]:
    """{fold: foreground mean of the output the fold decided for} (refined where a fold has no decision)."""
    refined = fold_means(view.rows, trainer, VALIDATION, metric, FOREGROUND)
    segmentor = fold_means(view.rows, segmentor_label(trainer), VALIDATION, metric, FOREGROUND)
    out = {}
    for f in sorted(set(refined) | set(segmentor), key=fold_key):
        out[f] = (refined if refines(fold_decision(inp, trainer, f)) else segmentor).get(f, math.nan)
    return out


def _decision_cells(decision: Optional[dict], record: dict) -> List[str]:
    """Refine, Steps and Reason cells; Steps notes the refined validation's steps when the decided ones differ
    (the as-decided result then uses the refined validation, at its own steps)."""
    if decision is None:
        return ["— (no decision: refined)", "—", "—"]
    refine = decision.get("refine")
    steps = decision.get("steps")
    steps_cell = "—" if steps is None else str(steps)
    validation = record.get("validation")
    refined = validation.get(REFINED) if isinstance(validation, dict) else None
    validated = refined.get("steps") if isinstance(refined, dict) else None
    if refine and steps is not None and validated is not None and validated != steps:
        steps_cell += f" (refined validation: {validated})"
    return ["yes" if refine else ("no" if refine is not None else "—"), steps_cell,
            cell(decision.get("reason") or "—")]


def _decision_section(inp: ReportInput, view: ReportInput) -> List[str]:
    """What each HiDiff fold decided (refine or not, steps) and the validation result of that choice."""
    hidiff = inp.hidiff_trainers()
    if not hidiff:
        return []
    lines = ["## The decision: refine or not", "",
             "After its validation each HiDiff fold decides whether its predictions are refined, and with how many "
             "steps (`decision` in `fold_k/hidiff_fold.json`; `nnUNet_HiDiff_refine=1/0` overrides it at prediction "
             "time). \"As decided\": per fold the foreground result of the chosen output (refined rows at the "
             "refined validation's steps, or the segmentor alone); refined where a fold has no decision.", ""]
    per_fold, summary = [], []
    for t in hidiff:
        dice = decided_fold_means(inp, view, t, "Dice")
        hd = decided_fold_means(inp, view, t, HD95)
        n_refine = n_none = 0
        for f in dice:
            decision = fold_decision(inp, t, f)
            n_none += decision is None
            n_refine += refines(decision)
            record = inp.records.get(t, {}).get(f, {})
            per_fold.append([t, f, *_decision_cells(decision, record), fmt(dice[f]), fmt(hd.get(f), 3)])
        refined_folds = f"{n_refine} of {len(dice)}" + (f" ({n_none} without a decision)" if n_none else "")
        summary.append([t, str(len(dice)), refined_folds, fmt_mean_std(list(dice.values())),
                        fmt_mean_std(list(hd.values()), 3)])
    lines += _table(["Trainer", "Fold", "Refine", "Steps", "Reason", "Dice (fg), as decided",
                     "HD95 (fg), as decided"], per_fold)
    lines += ["", "Mean ± std over folds of the as-decided per-fold results:", ""]
    lines += _table(["Trainer", "Folds", "Folds that refine", "Dice (fg), as decided", "HD95 (fg), as decided"],
                    summary)
    return lines + [""]


def _median(values: Sequence) -> Optional[float]:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))]
    return statistics.median(nums) if nums else None


def seconds_per_iteration(inp: ReportInput, trainer: str) -> Optional[float]:
    """Median over the trainer's fold records of ``seconds_per_iteration``; None when no record has it."""
    return _median([r.get("seconds_per_iteration") for r in inp.records.get(trainer, {}).values()])


def validation_seconds_per_case(inp: ReportInput, trainer: str, output: str) -> Optional[float]:
    """Median over the trainer's fold records of ``validation[output].seconds_per_case``; None when unknown."""
    values = []
    for record in inp.records.get(trainer, {}).values():
        validation = record.get("validation")
        entry = validation.get(output) if isinstance(validation, dict) else None
        if isinstance(entry, dict):
            values.append(entry.get("seconds_per_case"))
    return _median(values)


def _speed_section(inp: ReportInput) -> List[str]:
    lines = ["## Speed", "",
             "Seconds per training iteration: median over the folds' `hidiff_fold.json` (`seconds_per_iteration`, "
             "the training loop only). Seconds per predicted case: validation from the same records (median over "
             "folds); test: wall time of the `nnUNetv2_predict` run (start-up and the fold ensemble included) / "
             "test cases. \"—\": unknown (no record, e.g. plain nnU-Net or older folds).", ""]
    hidiff = set(inp.hidiff_trainers())
    table = []
    for t in inp.trainers:
        outputs = [REFINED, SEGMENTOR] if t in hidiff else [SEGMENTOR]
        for i, output in enumerate(outputs):
            row = [t, output, fmt_speed(seconds_per_iteration(inp, t)) if i == 0 else "",
                   fmt_speed(validation_seconds_per_case(inp, t, output))]
            if inp.test_images:
                run = inp.test_predictions.get((t, output))
                row.append(fmt_speed(run.seconds_per_case if run else None))
            table.append(row)
    header = ["Trainer", "Output", "s / training iteration", "Validation s / case"]
    if inp.test_images:
        header.append("Test s / case")
    return lines + _table(header, table) + [""]


def describe_warm_start(sources: Dict[int, str]) -> str:
    """Budget-cell suffix for folds that started from a trained segmentor: one path with ``fold_{fold}`` when the
    folds' paths differ only by their fold folder, else one path per fold."""
    if not sources:
        return ""
    folds = sorted(sources)
    generic = {sources[f].replace(f"fold_{f}", "fold_{fold}") for f in folds}
    where = (f"`{generic.pop()}`" if len(generic) == 1
             else "; ".join(f"fold {f}: `{sources[f]}`" for f in folds))
    return f", after a warm start (folds {', '.join(map(str, folds))}) from {where}"


def render_markdown(inp: ReportInput) -> str:
    lines = [f"# HiDiff benchmark: {inp.dataset} ({inp.configuration}, {inp.plans})", ""]
    if inp.generated:
        lines += [f"Generated {inp.generated} by:", ""]
    lines += ["```", inp.command, "```", "",
              f"Reference trainer: `{inp.reference}` (differences are other − reference). "
              f"Requested folds: {', '.join(map(str, inp.folds))}.", ""]
    status = []
    for t in inp.trainers:
        done = folds_of(inp.rows, t)
        missing = inp.missing.get(t, [])
        budget = inp.budgets.get(t, "?") + describe_warm_start(inp.warm_starts.get(t, {}))
        status.append([t, budget, ", ".join(done) or "none", ", ".join(missing) or "none"])
    lines += _table(["Trainer", "Budget", "Folds collected", "Folds missing"], status) + [""]
    view = series_view(inp)
    lines += _validation_section(view) + _differences_section(view)
    lines += _refined_vs_segmentor_section(inp, view) + _decision_section(inp, view)
    if inp.test_images:
        lines += _test_section(view)
    lines += _small_objects_section(view) + _speed_section(inp) + _wall_time_section(inp)
    if inp.problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in inp.problems] + [""]
    lines += ["## How to read this", "", HOW_TO_READ]
    return "\n".join(lines)


def write_markdown(inp: ReportInput, path: Path) -> None:
    atomic_write_text(path, render_markdown(inp))


# ---------------------------------------------------------------- figure
def write_figure(inp: ReportInput, path: Path) -> None:
    """Two panels (Dice, HD95): per-fold foreground means as grouped bars, one colour per series (trainer, and a
    HiDiff trainer's segmentor alone)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    inp = series_view(inp)

    all_folds = sorted({f for t in inp.trainers for f in folds_of(inp.rows, t)}, key=lambda f: int(f))
    fig = Figure(figsize=(max(6.0, 1.6 * len(all_folds) * max(1, len(inp.trainers)) / 2 + 4), 4.2))
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(inp.trainers))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric, title in ((axes[0], "Dice", "Dice (foreground mean, higher is better)"),
                              (axes[1], HD95, "HD95 (foreground mean, lower is better)")):
        for i, t in enumerate(inp.trainers):
            means = fold_means(inp.rows, t, VALIDATION, metric, FOREGROUND)
            xs = [j + (i - (len(inp.trainers) - 1) / 2) * width for j in range(len(all_folds))]
            vals = [means.get(f, math.nan) for f in all_folds]
            ax.bar(xs, [v if math.isfinite(v) else 0.0 for v in vals], width * 0.95, label=t,
                   color=colors[i % len(colors)])
            for x, v in zip(xs, vals):
                if not math.isfinite(v):
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(range(len(all_folds)))
        ax.set_xticklabels([f"fold {f}" for f in all_folds])
        ax.set_title(title, fontsize=9)
        if metric == "Dice":
            ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.suptitle(f"{inp.dataset} {inp.configuration} ({inp.plans}): validation per fold", fontsize=10)
    n_legend_rows = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0, 0.06 * n_legend_rows, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
