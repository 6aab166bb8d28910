"""Benchmark pieces without training: paired-test rules, budgets, fold states, CSV format, CLI input errors."""
import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from nnunetv2_hidiff.benchmark import cli
from nnunetv2_hidiff.benchmark.budget import (FROM_CLASS, FROM_RECORDS, BenchmarkError, Budget, check_equal_budgets,
                                              find_trainer_class, records_budget, resolve_trainers, trainer_budget)
from nnunetv2_hidiff.benchmark.collect import (CSV_COLUMNS, Row, collect_summary, csv_text, format_value,
                                               label_names, read_csv, sort_rows, write_csv)
from nnunetv2_hidiff.benchmark.report import (FOREGROUND, ReportInput, describe_warm_start, fold_means,
                                              render_markdown)
from nnunetv2_hidiff.benchmark.runner import (COMPLETE, INTERRUPTED, MISSING, NEEDS_VALIDATION, Job,
                                              checkpoint_training_seconds, ext_trainer_path, fold_state,
                                              refreshed, train_command, warm_start_source)
from nnunetv2_hidiff.benchmark.stats import nan_mean, nan_std, ttest_paired, wilcoxon_paired

NAN = float("nan")


# ---------------------------------------------------------------- stats
def test_paired_tests_use_other_minus_reference():
    ref = {c: 0.5 for c in "abcdef"}
    better = {c: 0.5 + 0.1 * (i + 1) for i, c in enumerate("abcdef")}
    w = wilcoxon_paired(ref, better)
    assert w.n == 6 and w.mean_diff == pytest.approx(0.35) and 0 < w.p < 0.05
    assert wilcoxon_paired(better, ref).mean_diff == pytest.approx(-0.35)
    t = ttest_paired(ref, better)
    assert t.n == 6 and t.mean_diff == pytest.approx(0.35) and 0 < t.p < 0.05


def test_paired_tests_drop_nan_and_unmatched_pairs():
    ref = {"a": 1.0, "b": NAN, "c": 3.0, "d": 4.0, "only_ref": 9.0}
    oth = {"a": 2.0, "b": 5.0, "c": NAN, "d": 6.0, "only_other": 1.0}
    w = wilcoxon_paired(ref, oth)
    assert w.n == 2 and w.mean_diff == pytest.approx(1.5)  # pairs a and d only
    assert w.p is not None and 0 < w.p <= 1


def test_paired_tests_not_applicable_rules():
    one = wilcoxon_paired({"a": 1.0}, {"a": 2.0})
    assert one.n == 1 and one.p is None and "fewer than 2" in one.note and one.mean_diff == 1.0
    none = ttest_paired({"a": NAN}, {"a": 2.0})
    assert none.n == 0 and none.p is None and math.isnan(none.mean_diff)
    zeros = wilcoxon_paired({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert zeros.p is None and "all differences are 0" in zeros.note and zeros.mean_diff == 0
    constant = ttest_paired({"0": 0.5, "1": 0.7}, {"0": 0.6, "1": 0.8})  # scipy would say p = 0
    assert constant.p is None and "constant" in constant.note and constant.mean_diff == pytest.approx(0.1)
    # some zero differences are fine for the Wilcoxon test (dropped, as in the original procedure)
    assert wilcoxon_paired({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0}).p is not None


def test_nan_mean_and_std():
    assert nan_mean([1.0, NAN, 3.0]) == 2.0 and math.isnan(nan_mean([NAN]))
    assert nan_std([1.0, 3.0, NAN]) == pytest.approx(math.sqrt(2)) and math.isnan(nan_std([1.0, NAN]))


# ---------------------------------------------------------------- budgets
@pytest.mark.parametrize("name, expected, val_iterations, warmup", [
    ("nnUNetTrainerBaseline_smoke", (1, 2), 1, None), ("nnUNetTrainerHiDiff_smoke", (1, 2), 1, 0),
    ("nnUNetTrainerBaseline_5epochs", (5, 250), 50, None), ("nnUNetTrainerHiDiff_50epochs", (50, 250), 50, 8),
    ("nnUNetTrainerHiDiff_real_5epochs", (5, 250), 50, 1), ("nnUNetTrainerHiDiff", (1000, 250), 50, 160),
    ("nnUNetTrainerHiDiff_demo", (4, 25), 5, 1), ("nnUNetTrainerBaseline_cpu400", (16, 25), 5, None),
    ("nnUNetTrainer", (1000, 250), 50, None),
])
def test_budgets_of_our_trainers_come_from_class_attributes(name, expected, val_iterations, warmup):
    budget = trainer_budget(find_trainer_class(name))
    assert budget == Budget(*expected) and budget.known and budget.source == FROM_CLASS
    assert (budget.val_iterations_per_epoch, budget.warmup_epochs) == (val_iterations, warmup)


def test_budget_string():
    assert str(Budget(5, 250)) == "5 epochs × 250 iterations"
    assert str(Budget(1, 1, warmup_epochs=0)) == "1 epoch × 1 iteration"
    assert str(Budget(50, 250, warmup_epochs=8)) == "50 epochs × 250 iterations (8 warm-up epochs)"
    assert str(Budget(None, 250)) == "? epochs × 250 iterations"


def test_foreign_trainers_have_unknown_budgets_until_their_records_say(tmp_path):
    """nnU-Net's variants and user trainers: no source is read, so nothing is known without fold records."""
    assert not trainer_budget(find_trainer_class("nnUNetTrainer_5epochs")).known
    (tmp_path / "mine.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
        "class nnUNetTrainerMine_7(nnUNetTrainer):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        self.num_epochs = 7\n")
    mine = find_trainer_class("nnUNetTrainerMine_7", str(tmp_path))
    assert trainer_budget(mine) == Budget(None, None) and not trainer_budget(mine).known
    record = {"kind": "baseline", "budget": {"epochs": 7, "iterations_per_epoch": 250,
                                             "val_iterations_per_epoch": 50, "warmup_epochs": 0, "batch_size": 2}}
    budget = trainer_budget(mine, {0: record, 1: None})
    assert budget == Budget(7, 250) and budget.source == FROM_RECORDS and budget.val_iterations_per_epoch == 50


def test_budgets_from_fold_records():
    def rec(epochs, iterations=25, warmup=0):
        return {"budget": {"epochs": epochs, "iterations_per_epoch": iterations, "val_iterations_per_epoch": 5,
                           "warmup_epochs": warmup, "batch_size": 32}}

    hidiff = find_trainer_class("nnUNetTrainerHiDiff_cpuBench")  # class: 6 × 25, 1 warm-up epoch
    assert trainer_budget(hidiff, {}) == Budget(6, 25) and trainer_budget(hidiff, {0: None}).source == FROM_CLASS
    # the records win over the class attributes (they say what the folds were trained with), e.g. a warm start
    warm = trainer_budget(hidiff, {0: rec(4), 1: rec(4), 2: {"kind": "hidiff"}})
    assert warm == Budget(4, 25) and warm.warmup_epochs == 0 and str(warm) == "4 epochs × 25 iterations"
    # warm-up epochs that differ between folds are not compared, and not shown
    assert records_budget({0: rec(4, warmup=1), 1: rec(4, warmup=0)}) == Budget(4, 25)
    assert records_budget({0: rec(4, warmup=1), 1: rec(4, warmup=0)}).warmup_epochs is None
    disagree = records_budget({1: rec(6), 0: rec(4)})
    assert not disagree.known
    assert str(disagree) == ("? epochs × ? iterations (the fold records disagree: fold 0: 4 epochs × 25 iterations, "
                             "fold 1: 6 epochs × 25 iterations)")
    assert records_budget({0: None, 1: {"kind": "hidiff", "budget": "garbage"}}) is None
    budgets = resolve_trainers(["nnUNetTrainerBaseline_cpuBench", "nnUNetTrainerHiDiff_cpuBench"],
                               records={"nnUNetTrainerHiDiff_cpuBench": {0: rec(4)}})
    assert budgets == {"nnUNetTrainerBaseline_cpuBench": Budget(6, 25), "nnUNetTrainerHiDiff_cpuBench": Budget(4, 25)}
    with pytest.raises(BenchmarkError, match="different training budgets"):
        check_equal_budgets(budgets)


def test_budget_check():
    check_equal_budgets({"a": Budget(5, 250), "b": Budget(5, 250)})
    with pytest.raises(BenchmarkError, match="different training budgets.*--allow-unequal-budgets"):
        check_equal_budgets({"a": Budget(5, 250), "b": Budget(50, 250)})
    with pytest.raises(BenchmarkError, match="cannot determine the training budget of b"):
        check_equal_budgets({"a": Budget(5, 250), "b": Budget(None, 250)})
    with pytest.raises(BenchmarkError, match="unknown trainer 'nnUNetTrainerDoesNotExist'"):
        resolve_trainers(["nnUNetTrainerDoesNotExist"])
    with pytest.raises(BenchmarkError, match="more than once"):
        resolve_trainers(["nnUNetTrainerHiDiff_smoke", "nnUNetTrainerHiDiff_smoke"])


# ---------------------------------------------------------------- runner
def test_fold_states_and_commands(tmp_path):
    fold = tmp_path / "fold_0"
    assert fold_state(fold) == MISSING
    fold.mkdir()
    (fold / "checkpoint_best.pth").touch()
    assert fold_state(fold) == INTERRUPTED
    (fold / "checkpoint_latest.pth").touch()
    assert fold_state(fold) == INTERRUPTED
    (fold / "checkpoint_final.pth").touch()
    assert fold_state(fold) == NEEDS_VALIDATION
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text("{}")
    assert fold_state(fold) == COMPLETE
    cmd = train_command("Dataset990_Tiny", "2d", Job("T", 3, fold, INTERRUPTED), "P", "cpu")
    assert cmd[0].endswith("nnUNetv2_train") and cmd[1:] == ["Dataset990_Tiny", "2d", "3", "-tr", "T", "-p", "P",
                                                             "-device", "cpu", "--c"]
    assert train_command("D", "2d", Job("T", 0, fold, NEEDS_VALIDATION), "P", "cpu")[-1] == "--val"
    assert train_command("D", "2d", Job("T", 0, fold, MISSING), "P", "cpu")[-1] == "cpu"


def test_a_fold_is_planned_again_just_before_it_runs(tmp_path):
    """Planned as missing; another process then starts it (resume) and later finishes it (not run again)."""
    fold = tmp_path / "fold_1"
    planned = Job("T", 1, fold, fold_state(fold))
    assert planned.action == "train"
    fold.mkdir()
    (fold / "checkpoint_latest.pth").touch()
    assert refreshed(planned).action == "resume"
    (fold / "checkpoint_final.pth").touch()
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text("{}")
    again = refreshed(planned)
    assert again.state == COMPLETE and again.action is None
    assert (again.trainer, again.fold, again.folder) == ("T", 1, fold)


def test_warm_start_is_read_from_the_fold_record(tmp_path):
    """The record's ``warm_start``; the training log is not read (the trainer's message there is for humans)."""
    fold = tmp_path / "fold_2"
    fold.mkdir()
    path = "/r/Dataset9_X/nnUNetTrainerBaseline__P__2d/fold_2/checkpoint_final.pth"
    (fold / "training_log_2026_01_01_00_00_01.txt").write_text(
        f"2026-01-01 00:00:01.5: Loaded the whole segmentor from {path}: no segmentor warm-up. \n"
        "2026-01-01 00:00:02.0: Epoch 0 \n")
    assert warm_start_source(fold) is None  # no record
    (fold / "hidiff_fold.json").write_text("{not json")
    assert warm_start_source(fold) is None  # unreadable record
    (fold / "hidiff_fold.json").write_text(json.dumps({"kind": "hidiff", "warm_start": None}))
    assert warm_start_source(fold) is None  # from scratch
    (fold / "hidiff_fold.json").write_text(json.dumps({"kind": "hidiff", "warm_start": "/seg/fold_2/final.pth"}))
    assert warm_start_source(fold) == "/seg/fold_2/final.pth"


def test_warm_start_in_the_budget_column():
    assert describe_warm_start({}) == ""
    same = {f: f"/r/B/fold_{f}/checkpoint_final.pth" for f in (0, 1)}
    assert describe_warm_start(same) == ", after a warm start (folds 0, 1) from `/r/B/fold_{fold}/checkpoint_final.pth`"
    mixed = {0: "/a.pth", 3: "/b.pth"}
    assert describe_warm_start(mixed) == ", after a warm start (folds 0, 3) from fold 0: `/a.pth`; fold 3: `/b.pth`"
    inp = ReportInput(dataset="D", configuration="2d", plans="P", trainers=["A", "B"], folds=[0, 1], command="cmd",
                      rows=_rows(), nan_counts={}, budgets={"A": "4 epochs", "B": "1 epoch"}, warm_starts={"B": same})
    md = render_markdown(inp)
    assert "| A | 4 epochs | 0, 1 | none |" in md
    assert "| B | 1 epoch, after a warm start (folds 0, 1) from `/r/B/fold_{fold}/checkpoint_final.pth` |" in md


def test_ensemble_folds_for_the_test_set():
    assert cli.ensemble_folds([2, 0, 1], None) == [0, 1, 2]
    assert cli.ensemble_folds([0, 1, 2], [0]) == [0]
    assert cli.ensemble_folds([0, 1, 2], [2, 0, 2]) == [0, 2]
    assert cli.ensemble_folds([0, 2], [0, 1]) == []  # fold 1 not complete: no smaller, incomparable ensemble
    assert cli.ensemble_folds([], None) == []


def test_ext_trainer_path_prepends_ours_and_keeps_the_users(tmp_path):
    ours = tmp_path / "ours"
    assert ext_trainer_path(ours, {}) == str(ours)
    user = os.pathsep.join(["/a", str(ours), "/b"])
    assert ext_trainer_path(ours, {"nnUNet_extTrainer": user}) == os.pathsep.join([str(ours), "/a", "/b"])


def test_checkpoint_training_seconds(tmp_path):
    ckpt = tmp_path / "checkpoint_final.pth"
    torch.save({"logging": {"epoch_start_timestamps": [10.0, 20.0], "epoch_end_timestamps": [15.0, 22.5]}}, ckpt)
    assert checkpoint_training_seconds(ckpt) == pytest.approx(7.5)
    assert checkpoint_training_seconds(tmp_path / "missing.pth") is None


# ---------------------------------------------------------------- collect / csv / report
def _summary():
    def m(dice, hd):
        return {"Dice": dice, "IoU": dice, "TP": 3, "HD95": hd}
    return {
        "metric_per_case": [
            {"reference_file": "/x/c1.nii.gz", "prediction_file": "/p/c1.nii.gz",
             "metrics": {"1": m(0.5, 2.0), "2": m(NAN, NAN)}, "hidiff_empty": {"1": "none", "2": "both_empty"}},
            {"reference_file": "/x/c2.nii.gz", "prediction_file": "/p/c2.nii.gz",
             "metrics": {"1": m(0.7, NAN), "2": m(0.0, NAN)}},
        ],
        "hidiff_nan_ratio": {"1": {"n": 2, "n_both_empty": 0, "n_hd95_undefined": 1},
                             "2": {"n": 2, "n_both_empty": 1, "n_hd95_undefined": 1}},
    }


def test_collect_rows_and_csv_format(tmp_path):
    ds = {"labels": {"background": 0, "left": 1, "right": 2}, "file_ending": ".nii.gz"}
    c = collect_summary(_summary(), "T", "0", "validation", ds, output="refined")
    assert len(c.rows) == 2 * 2 * 4 and c.nan_counts["right"]["n_both_empty"] == 1 and c.output == "refined"
    assert {r.case for r in c.rows} == {"c1", "c2"} and {r.cls for r in c.rows} == {"left", "right"}
    seg = collect_summary(_summary(), "T", "0", "validation", ds)  # plain trainers: the segmentor's output
    assert {r.output for r in seg.rows} == {"segmentor"} and {r.output for r in c.rows} == {"refined"}
    write_csv(sort_rows(seg.rows + c.rows, ["T"]), tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == CSV_COLUMNS and CSV_COLUMNS[-1] == "output"
    assert ["T", "0", "right", "c1", "Dice", "nan", "validation", "refined"] in lines  # NaN is written as "nan"
    assert ["T", "0", "left", "c1", "TP", "3", "validation", "segmentor"] in lines  # integers stay integers
    assert [line[-1] for line in lines[1:]] == ["refined"] * 16 + ["segmentor"] * 16  # refined rows first
    back = read_csv(tmp_path / "results.csv")
    assert len(back) == 2 * len(c.rows) and math.isnan(next(r.value for r in back if r.cls == "right"
                                                            and r.case == "c1" and r.metric == "Dice"))
    assert sort_rows(back, ["T"]) == back and back[0].output == "refined"
    assert format_value(0.1) == "0.1" and format_value(NAN) == "nan"
    assert csv_text([]) == ",".join(CSV_COLUMNS) + "\n"


def test_label_names_for_labels_and_regions():
    assert label_names({"labels": {"background": 0, "vessel": 1}}) == {"0": "background", "1": "vessel"}
    assert label_names({"labels": {"background": 0, "whole": [1, 2], "core": [2]}})["(1, 2)"] == "whole"


def _rows():
    out = []
    for trainer, base in (("A", 0.5), ("B", 0.6)):
        for fold, cases in (("0", ("c1", "c2")), ("1", ("c3",))):
            for i, case in enumerate(cases):
                for cls, off in (("x", 0.0), ("y", 0.1)):
                    out.append(Row(trainer, fold, cls, case, "Dice", base + off + 0.01 * i, "validation"))
                    out.append(Row(trainer, fold, cls, case, "HD95", NAN if cls == "y" else 3.0, "validation"))
    return out


def test_fold_means_and_markdown_n_a_rules():
    rows = _rows()
    assert fold_means(rows, "A", "validation", "Dice", "x") == {"0": pytest.approx(0.505), "1": pytest.approx(0.5)}
    fg = fold_means(rows, "A", "validation", "HD95", FOREGROUND)
    assert fg == {"0": 3.0, "1": 3.0}  # the all-NaN class y is ignored
    inp = ReportInput(dataset="D", configuration="2d", plans="P", trainers=["A", "B"], folds=[0, 1], command="cmd",
                      rows=rows, nan_counts={})
    md = render_markdown(inp)
    # HD95 of class y is NaN everywhere: no pairs; B − A Dice differences are constant over folds
    assert "| B − A | y | HD95 | 0 | n/a | n/a (fewer than 2 pairs) | 0 | n/a | n/a (fewer than 2 pairs) |" in md
    assert "| B − A | x | Dice | 3 | 0.1000 | n/a (differences" not in md
    assert "n/a (differences are constant)" in md
    one_fold = ReportInput(dataset="D", configuration="2d", plans="P", trainers=["A", "B"], folds=[1],
                           command="cmd", rows=[r for r in rows if r.fold == "1"], nan_counts={})
    md1 = render_markdown(one_fold)
    assert "0.5000 ± n/a" in md1 and "| 1 | 0.1000 | n/a (fewer than 2 pairs) |" in md1


def _small(dice_a, units_a, dice_b=NAN, units_b=0, undefined=0):
    return {"x": {"Dice": dice_a, "HD95": 2.0, "n_units": units_a, "n_hd95_undefined": undefined},
            "y": {"Dice": dice_b, "HD95": NAN, "n_units": units_b, "n_hd95_undefined": 0}}


def test_small_objects_are_collected_with_label_names():
    summary = dict(_summary(), hidiff_small_objects={
        "definition": "slices whose reference size (valid pixels/voxels of the class) is > 0 and < 500",
        "per_class": {"1": {"Dice": 0.4, "n_units": 3}, "2": {"Dice": NAN, "n_units": 0}}})
    c = collect_summary(summary, "T", "0", "validation", {"labels": {"background": 0, "left": 1, "right": 2}})
    assert c.small_objects["left"] == {"Dice": 0.4, "n_units": 3} and c.small_objects["right"]["n_units"] == 0
    assert c.small_definition.startswith("slices whose")
    assert collect_summary(_summary(), "T", "0", "validation", {}).small_objects == {}


def test_small_object_section_aggregates_folds():
    small = {("A", "validation", "0"): _small(0.2, 4, 0.6, 2, undefined=1), ("A", "validation", "1"): _small(0.4, 6),
             ("B", "validation", "0"): _small(0.5, 4, 0.7, 2), ("B", "validation", "1"): _small(0.9, 6)}
    inp = ReportInput(dataset="D", configuration="2d", plans="P", trainers=["A", "B"], folds=[0, 1], command="cmd",
                      rows=_rows(), nan_counts={}, small_objects=small, small_definition="slices < 500")
    md = render_markdown(inp)
    assert "## Small objects (paper Tables VII/VIII)" in md and "Units: slices < 500." in md
    # class x: folds 0.2, 0.4 (A) and 0.5, 0.9 (B); 10 units, 1 undefined HD95 for A
    assert "| A | validation | x | 2 | 10 | 0.3000 ± 0.1414 | 2.000 ± 0.000 | 0.100 (1/10) | – | – |" in md
    assert "| B | validation | x | 2 | 10 | 0.7000 ± 0.2828 | 2.000 ± 0.000 | 0.000 (0/10) | 0.4000 |" in md
    # class y has small units in fold 0 only; foreground = mean over the classes with units, per fold
    assert "| A | validation | y | 1 | 2 | 0.6000 ± n/a | n/a ± n/a |" in md
    assert "| A | validation | foreground | 2 | 12 | 0.4000 ± 0.0000 |" in md  # fold 0: (0.2+0.6)/2, fold 1: 0.4
    none = {k: _small(NAN, 0) for k in small}
    md_none = render_markdown(ReportInput(dataset="D", configuration="2d", plans="P", trainers=["A", "B"],
                                          folds=[0, 1], command="cmd", rows=_rows(), nan_counts={},
                                          small_objects=none, small_definition="slices < 500"))
    assert "No unit is a small object (slices < 500): nothing to report." in md_none
    assert "## Small objects" not in render_markdown(ReportInput(
        dataset="D", configuration="2d", plans="P", trainers=["A"], folds=[0], command="cmd", rows=_rows(),
        nan_counts={}))


def test_nan_ratio_and_small_objects_per_output_of_a_hidiff_trainer():
    """Counts keyed (trainer, split, fold, output) land in the row of that output ("…, its segmentor alone")."""
    rows = [Row("H", "0", "x", c, "Dice", d, "validation", o)
            for o, d in (("refined", 0.7), ("segmentor", 0.6)) for c in ("c1", "c2")]
    nan_counts = {("H", "validation", "0", "refined"): {"x": {"n": 2, "n_both_empty": 0, "n_hd95_undefined": 1}},
                  ("H", "validation", "0", "segmentor"): {"x": {"n": 2, "n_both_empty": 0, "n_hd95_undefined": 0}}}
    small = {("H", "validation", "0", "refined"): {"x": {"Dice": 0.2, "HD95": 2.0, "n_units": 4}},
             ("H", "validation", "0", "segmentor"): {"x": {"Dice": 0.6, "HD95": 3.0, "n_units": 4}}}
    md = render_markdown(ReportInput(dataset="D", configuration="2d", plans="P", trainers=["H"], folds=[0],
                                     command="cmd", rows=rows, nan_counts=nan_counts, small_objects=small,
                                     small_definition="slices < 500"))
    assert "| H | x | 1 | 0.7000 ± n/a | n/a ± n/a | 0.500 (1/2) |" in md
    assert "| H, its segmentor alone | x | 1 | 0.6000 ± n/a | n/a ± n/a | 0.000 (0/2) |" in md
    assert "| H | validation | x | 1 | 4 | 0.2000 ± n/a | 2.000 ± n/a | 0.000 (0/4) | – | – |" in md
    assert "| H, its segmentor alone | validation | x | 1 | 4 | 0.6000 ± n/a | 3.000 ± n/a | 0.000 (0/4) |" in md


# ---------------------------------------------------------------- CLI input errors (exit 2, nothing trained)
@pytest.fixture
def bench_env(nnunet_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return nnunet_paths


def _error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunetv2_hidiff_benchmark: error: ") and err.count("\n") == 1
    return err


def test_cli_input_errors(bench_env, tmp_path, capsys):
    smoke = ["--trainers", "nnUNetTrainerBaseline_smoke", "nnUNetTrainerHiDiff_smoke"]
    assert "unknown dataset 977" in _error(capsys, ["-d", "977", *smoke])
    assert "unknown trainer 'nnUNetTrainerNope'" in _error(capsys, ["-d", "990", "--trainers", "nnUNetTrainerNope"])
    assert "different training budgets" in _error(capsys, ["-d", "990", "--trainers", "nnUNetTrainerBaseline_5epochs",
                                                           "nnUNetTrainerHiDiff_50epochs"])
    assert "plans file missing" in _error(capsys, ["-d", "990", "-p", "nnUNetPlans_nope", *smoke])
    assert "no complete fold" in _error(capsys, ["-d", "990", "--collect-only", *smoke])
    assert "--test-images and --test-labels go together" in _error(capsys, ["-d", "990", *smoke, "--test-images",
                                                                            str(tmp_path)])
    assert "--test-folds needs --test-images" in _error(capsys, ["-d", "990", *smoke, "--test-folds", "0"])
    labels = tmp_path / "labels"
    labels.mkdir()
    assert "--test-folds 3: not among --folds 0 1" in _error(
        capsys, ["-d", "990", *smoke, "--folds", "0", "1", "--test-folds", "0", "3", "--test-images", str(tmp_path),
                 "--test-labels", str(labels)])
    assert not (tmp_path / "results").exists()  # nothing written on input errors


def test_default_output_folder():
    out = cli.default_output(Path("/r"), "Dataset990_Tiny", ["A", "B"], "nnUNetPlans", "2d")
    assert out == Path("/r/Dataset990_Tiny/benchmark_A_vs_B__nnUNetPlans__2d")
    long = cli.default_output(Path("/r"), "D", ["x" * 80, "y" * 80], "P", "2d")
    assert len(long.name) < 60 and long.name.startswith("benchmark_")
    assert cli.DEFAULT_TRAINERS == ["nnUNetTrainerBaseline_5epochs", "nnUNetTrainerHiDiff_5epochs"]


def test_a_combined_decision_reads_its_validation_result_from_the_fold_record():
    """A fold that decided for the segmentor plus new refined components, or for plain refinement at other steps
    than its refined rows, has no row series of its own: the as-decided result is the record's validation entry
    of that output, and the decision table says so."""
    from nnunetv2_hidiff.benchmark.report_hidiff import _decided_validation, _decision_cells

    record = {"validation": {
        "refined": {"refine": True, "steps": 10, "combine": "none", "dice": 0.6, "hd95": 4.0},
        "refined_1steps": {"refine": True, "steps": 1, "combine": "none", "dice": 0.7, "hd95": 3.0},
        "combined_1steps": {"refine": True, "steps": 1, "combine": "new_components", "dice": 0.8, "hd95": 2.0},
        "combined": {"refine": True, "steps": 10, "combine": "new_components", "dice": 0.75, "hd95": 2.5}}}
    decision = {"refine": True, "steps": 1, "combine": "new_components", "reason": "r"}
    assert _decided_validation(decision, record)["dice"] == 0.8
    assert _decided_validation({**decision, "steps": 10}, record)["dice"] == 0.75
    assert _decided_validation({**decision, "combine": "none"}, record)["dice"] == 0.7  # other steps than the rows
    assert _decided_validation({**decision, "combine": "none", "steps": 10}, record) is None  # the refined rows
    assert _decided_validation({**decision, "refine": False}, record) is None
    old = {"validation": {"refined": {"refine": True, "steps": 10, "dice": 0.6, "hd95": 4.0}}}
    assert _decided_validation({"refine": True, "steps": 1}, old) is None  # records before 2026-12-05
    assert _decision_cells({**decision, "combine": "none"}, record)[1] == "1 (refined validation: 10)"
    assert _decision_cells(decision, record)[0] == "yes (combined with the segmentor: new_components)"
    # gated: each gate is its own validation entry; the decision's gate picks it and is named in the table
    record["validation"].update({
        f"gated_{name}_1steps": {"refine": True, "steps": 1, "combine": "gated", "gate": gate, "dice": d, "hd95": 2.0}
        for name, gate, d in (("a500_r900", [0.5, 0.9], 0.81), ("a500_r800", [0.5, 0.8], 0.82))})
    gated = {"refine": True, "steps": 1, "combine": "gated", "gate": [0.5, 0.8], "reason": "r"}
    assert _decided_validation(gated, record)["dice"] == 0.82
    assert _decision_cells(gated, record)[0] == "yes (combined with the segmentor: gated, gate 0.5 / 0.8)"
