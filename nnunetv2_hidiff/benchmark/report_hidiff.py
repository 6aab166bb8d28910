"""summary.md sections about HiDiff itself: each trainer's refined output against its own segmentor, the
per-fold refine decision with the as-decided means, and speed (seconds per training iteration and per case)."""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from .collect import DECIDED, FOREGROUND, REFINED, SEGMENTOR, TEST, VALIDATION
from .report_base import (HD95, ReportInput, _dice_metric, _table, case_values, cell, fmt, fmt_mean_std, fmt_p,
                          fmt_speed, fold_key, fold_means, segmentor_label)
from .stats import paired_differences, ttest_paired, wilcoxon_paired

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
        decision = fold_decision(inp, trainer, f)
        entry = _decided_validation(decision, inp.records.get(trainer, {}).get(f, {}))
        if entry is not None:  # not a row series (a combination, or other steps): the fold mean from the record
            out[f] = float(entry.get("dice" if metric == "Dice" else "hd95", math.nan))
            continue
        out[f] = (refined if refines(decision) else segmentor).get(f, math.nan)
    return out


def _validation(record: dict) -> dict:
    """The fold record's validation entries ({} where it has none)."""
    return record.get("validation") if isinstance(record.get("validation"), dict) else {}


def refined_steps(record: dict) -> Optional[int]:
    """The steps of the fold's refined validation (the ``refined`` rows), None where the record does not say."""
    refined = _validation(record).get(REFINED)
    return refined.get("steps") if isinstance(refined, dict) else None


def _decided_validation(decision: Optional[dict], record: dict) -> Optional[dict]:
    """The record's validation entry of the output a refining fold decided for when no row series holds it: a
    combination of the segmentor with the refined output (networks/combine.py: new_components, union, gated), or
    plain refinement at other steps than the refined validation's (whose rows are the ``refined`` series).
    None for any other decision, and where the record has no such entry (records before 2026-12-05)."""
    if not decision or not decision.get("refine"):
        return None
    validation = _validation(record)
    combine = decision.get("combine", "none")
    if combine == "none":
        validated = refined_steps(record)
        if validated is None or validated == decision.get("steps"):
            return None
    return next((v for v in validation.values() if isinstance(v, dict) and v.get("refine")
                 and v.get("combine", "none") == combine and v.get("steps") == decision.get("steps")
                 and v.get("gate") == decision.get("gate")), None)


def _decision_cells(decision: Optional[dict], record: dict) -> List[str]:
    """Refine, Steps and Reason cells; Steps notes the refined validation's steps when the decided ones differ
    (the refined rows are at those; the as-decided result is the record's entry at the decided steps, where the
    record has one)."""
    if decision is None:
        return ["— (no decision: refined)", "—", "—"]
    refine = decision.get("refine")
    steps = decision.get("steps")
    steps_cell = "—" if steps is None else str(steps)
    validated = refined_steps(record)
    if refine and steps is not None and validated is not None and validated != steps:
        steps_cell += f" (refined validation: {validated})"
    refine_cell = "yes" if refine else ("no" if refine is not None else "—")
    if refine and decision.get("combine", "none") != "none":
        gate = decision.get("gate")
        gated = f", gate {gate[0]:g} / {gate[1]:g}" if gate else ""
        refine_cell += f" (combined with the segmentor: {decision['combine']}{gated})"
    return [refine_cell, steps_cell,
            cell(decision.get("reason") or "—")]


def _decision_section(inp: ReportInput, view: ReportInput) -> List[str]:
    """What each HiDiff fold decided (refine or not, steps) and the validation result of that choice."""
    hidiff = inp.hidiff_trainers()
    if not hidiff:
        return []
    lines = ["## The decision: refine or not", "",
             "After its validation each HiDiff fold decides whether its predictions are refined, and with how many "
             "steps (`decision` in `fold_k/hidiff_fold.json`; `nnUNet_HiDiff_refine=1/0` overrides it at prediction "
             "time). \"As decided\": per fold the foreground result of the chosen output (the refined rows, the "
             "segmentor alone, or, for a fold that combines or refines at other steps than the refined rows, the "
             "fold record's validation result of that output); refined where a fold has no decision.", ""]
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
    return lines + [""] + _decided_test_lines(inp, view, hidiff)


def _decided_test_lines(inp: ReportInput, view: ReportInput, hidiff: Sequence[str]) -> List[str]:
    """The test set predicted as decided (output ``decided``) next to the same ensemble's segmentor alone and
    refined output; as decided − segmentor over the test cases (Wilcoxon). Empty without such rows."""
    decided_rows = [r for r in inp.rows if r.output == DECIDED and r.split == TEST]
    table = []
    for t in hidiff:
        for metric in (_dice_metric(TEST, inp.test_fov), HD95):
            decided = case_values(decided_rows, t, TEST, metric, FOREGROUND)
            if not decided:
                continue
            segmentor = case_values(view.rows, segmentor_label(t), TEST, metric, FOREGROUND)
            refined = case_values(view.rows, t, TEST, metric, FOREGROUND)
            w = wilcoxon_paired(segmentor, decided)
            digits = 3 if metric == HD95 else 4
            table.append([t, metric, *(fmt_mean_std(list(v.values()), digits) for v in (segmentor, refined, decided)),
                          fmt(w.mean_diff, digits), _helped(segmentor, decided, metric, "cases"), fmt_p(w)])
    if not table:
        return []
    lines = ["Test set: the fold ensemble predicted as decided (no setting forced; each fold follows its own "
             "decision) next to the same ensemble's segmentor alone and refined output; foreground mean ± std over "
             "the test cases; difference as decided − segmentor, Wilcoxon over the cases:", ""]
    lines += _table(["Trainer", "Metric", "Segmentor alone", "Refined", "As decided", "Mean diff (decided − seg.)",
                     "Decided better", "Wilcoxon p"], table)
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
        if t in hidiff and (t, DECIDED) in inp.test_predictions:
            outputs.append(DECIDED)
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
