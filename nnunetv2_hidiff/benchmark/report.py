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
from pathlib import Path
from typing import Dict, List

from nnunetv2_hidiff.atomic import atomic_write_bytes, atomic_write_text

from .collect import DECIDED, FOREGROUND, REFINED, SEGMENTOR, TEST, VALIDATION
from .report_base import (HD95, HOW_TO_READ, Prediction, ReportInput, _dice_metric, _table,  # noqa: F401 (re-exported)
                          case_values, classes, fmt, fmt_duration, fmt_mean_std, fmt_p, fmt_ratio, fmt_speed,
                          fold_means, folds_of, nan_ratio, series_view)
from .report_hidiff import _decision_section, _refined_vs_segmentor_section, _speed_section
from .small_objects import small_counts, small_fold_values
from .stats import ttest_paired, wilcoxon_paired


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
    runs = [(o, inp.test_predictions[(trainer, o)]) for o in (REFINED, SEGMENTOR, DECIDED)
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
