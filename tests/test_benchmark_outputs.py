"""Benchmark with synthetic fold folders (no training, no prediction): the output column, both outputs of a HiDiff
fold, the refined-vs-segmentor, decision and speed sections, and the test set predicted twice for HiDiff.

The folds are fabricated as our trainers write them (nnunetv2_hidiff.training.fold_record): summary.json files in
nnU-Net's format, extended by the HiDiff metrics, in ``validation_refined/`` and ``validation_segmentor/``, plus
``hidiff_fold.json``. The test set's ``nnUNetv2_predict`` runs and their evaluation are replaced by fakes that
write what the real ones would.
"""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel, wilcoxon

from nnunetv2_hidiff.benchmark import cli
from nnunetv2_hidiff.benchmark.collect import CSV_COLUMNS, DECIDED, REFINED, SEGMENTOR, read_csv

DATASET = "Dataset991_Fake"
BASE, HIDIFF, LEGACY = "nnUNetTrainerBaseline_smoke", "nnUNetTrainerHiDiff_smoke", "nnUNetTrainerHiDiff_real_smoke"
FOLD_CASES = {0: ("c0", "c1"), 1: ("c2", "c3")}
TEST_CASES = ("t0", "t1")
# per output: case -> (Dice, HD95) of the single class "a"
VALUES = {
    (BASE, SEGMENTOR): {"c0": (0.40, 6.0), "c1": (0.50, 7.0), "c2": (0.60, 4.0), "c3": (0.70, 5.0)},
    (HIDIFF, SEGMENTOR): {"c0": (0.50, 4.0), "c1": (0.60, 6.0), "c2": (0.70, 3.0), "c3": (0.80, 5.0)},
    (HIDIFF, REFINED): {"c0": (0.60, 3.0), "c1": (0.70, 5.0), "c2": (0.72, 3.5), "c3": (0.78, 5.5)},
    (LEGACY, REFINED): {"c0": (0.30, 9.0), "c1": (0.40, 8.0), "c2": (0.50, 7.0), "c3": (0.60, 6.0)},
}
TEST_VALUES = {  # prediction folder name -> case -> (Dice, HD95)
    BASE: {"t0": (0.50, 5.0), "t1": (0.60, 4.0)},
    f"{HIDIFF}__refined": {"t0": (0.70, 3.0), "t1": (0.80, 2.0)},
    f"{HIDIFF}__segmentor": {"t0": (0.65, 3.5), "t1": (0.75, 2.5)},
    f"{HIDIFF}__decided": {"t0": (0.66, 3.0), "t1": (0.77, 2.0)},
    f"{LEGACY}__refined": {"t0": (0.40, 6.0), "t1": (0.45, 6.5)},
    f"{LEGACY}__segmentor": {"t0": (0.42, 6.0), "t1": (0.47, 6.5)},
    f"{LEGACY}__decided": {"t0": (0.40, 6.0), "t1": (0.45, 6.5)},
}
PREDICT_SECONDS = {None: 2.0, "1": 10.0, "0": 4.0}  # by nnUNet_HiDiff_refine
FORCED = {"nnUNet_HiDiff_combine": "union", "nnUNet_HiDiff_steps": "3"}  # set by the user: as decided drops them
BUDGET = {"epochs": 3, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "warmup_epochs": 0,
          "batch_size": 2}
DECISIONS = {0: {"refine": True, "steps": 2, "reason": "Dice +0.100, HD95 not worse",
                 "candidates": [{"refine": False, "steps": 0, "dice": 0.55, "hd95": 5.0}]},
             1: {"refine": False, "steps": 0, "reason": "no Dice gain | HD95 worse", "candidates": []}}


def nnunet_summary(values: dict) -> dict:
    """nnU-Net's summary.json (one foreground label "1") extended as nnunetv2_hidiff.evaluation does."""
    per_case = [{"reference_file": f"/gt/{case}.nii.gz", "prediction_file": f"/pred/{case}.nii.gz",
                 "metrics": {"1": {"Dice": d, "IoU": d / (2 - d), "TP": 10, "HD95": h}}}
                for case, (d, h) in sorted(values.items())]
    mean = {"Dice": float(np.mean([d for d, _ in values.values()])),
            "HD95": float(np.mean([h for _, h in values.values()]))}
    return {"metric_per_case": per_case, "mean": {"1": mean}, "foreground_mean": mean,
            "hidiff_nan_ratio": {"1": {"n": len(values), "n_both_empty": 0, "n_hd95_undefined": 0}}}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def hidiff_record(fold: int, warm_start=None) -> dict:
    return {"trainer": HIDIFF, "kind": "hidiff", "budget": BUDGET, "warm_start": warm_start,
            "seconds_per_iteration": {0: 0.5, 1: 0.7}[fold],
            "validation": {"segmentor": {"folder": "validation_segmentor", "cases": 2, "refine": False, "steps": 0,
                                         "seconds_per_case": {0: 0.2, 1: 0.4}[fold], "dice": 0.5, "hd95": 5.0},
                           "refined": {"folder": "validation_refined", "cases": 2, "refine": True, "steps": 2,
                                       "seconds_per_case": {0: 1.5, 1: 2.5}[fold], "dice": 0.6, "hd95": 4.0}},
            "decision": DECISIONS[fold]}


def trainer_dir(results: Path, trainer: str) -> Path:
    return results / DATASET / f"{trainer}__nnUNetPlans__2d"


def make_folds(results: Path) -> None:
    """Complete folds 0 and 1 of BASE (record kind baseline), HIDIFF (new layout, records) and LEGACY (older
    layout: only validation/, no record)."""
    for trainer in (BASE, HIDIFF, LEGACY):
        tdir = trainer_dir(results, trainer)
        write_json(tdir / "dataset.json", {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"})
        write_json(tdir / "plans.json", {"dataset_name": DATASET})
        for fold, cases in FOLD_CASES.items():
            folder = tdir / f"fold_{fold}"
            folder.mkdir(parents=True)
            (folder / "checkpoint_final.pth").write_bytes(b"not a real checkpoint")
            if trainer == BASE:
                values = VALUES[(BASE, SEGMENTOR)]
                write_json(folder / "validation" / "summary.json", nnunet_summary({c: values[c] for c in cases}))
                write_json(folder / "hidiff_fold.json", {"trainer": BASE, "kind": "baseline", "budget": BUDGET,
                                                         "warm_start": None,
                                                         "seconds_per_iteration": {0: 0.2, 1: 0.4}[fold]})
            elif trainer == HIDIFF:
                for output, sub in ((REFINED, "validation_refined"), (SEGMENTOR, "validation_segmentor")):
                    values = VALUES[(HIDIFF, output)]
                    write_json(folder / sub / "summary.json", nnunet_summary({c: values[c] for c in cases}))
                decided = REFINED if DECISIONS[fold]["refine"] else SEGMENTOR
                values = VALUES[(HIDIFF, decided)]
                write_json(folder / "validation" / "summary.json", nnunet_summary({c: values[c] for c in cases}))
                write_json(folder / "hidiff_fold.json",
                           hidiff_record(fold, f"/r/{DATASET}/Seg__P__2d/fold_{fold}/checkpoint_final.pth"))
            else:
                values = VALUES[(LEGACY, REFINED)]
                write_json(folder / "validation" / "summary.json", nnunet_summary({c: values[c] for c in cases}))


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """nnU-Net paths in tmp_path with DATASET's complete folds; test images; fake prediction and evaluation."""
    for name in ("raw", "pre", "results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"nnUNet_{'preprocessed' if name == 'pre' else name}", str(tmp_path / name))
    results = tmp_path / "results"
    make_folds(results)
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    images.mkdir()
    labels.mkdir()
    for case in TEST_CASES:
        (images / f"{case}_0000.nii.gz").write_bytes(b"")
        (labels / f"{case}.nii.gz").write_bytes(b"")
    calls, forced = [], []
    for k, v in FORCED.items():
        monkeypatch.setenv(k, v)

    def fake_run_logged(cmd, env, log_file):
        """nnUNetv2_predict: writes the case files into -o and takes PREDICT_SECONDS."""
        calls.append((list(cmd), env.get("nnUNet_HiDiff_refine")))
        forced.append({k: env[k] for k in FORCED if k in env})
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("$ " + " ".join(cmd) + "\n")
        out = Path(cmd[cmd.index("-o") + 1])
        for case in TEST_CASES:
            (out / f"{case}.nii.gz").write_bytes(b"")
        return 0, PREDICT_SECONDS[env.get("nnUNet_HiDiff_refine")]

    def fake_evaluate_folder(folder_ref, folder_pred, dataset_json_file, plans_file, fov_folder=None, **kwargs):
        summary = nnunet_summary(TEST_VALUES[Path(folder_pred).name])
        write_json(Path(folder_pred) / "summary.json", summary)
        return summary

    import nnunetv2_hidiff.evaluation.folder as folder_module

    monkeypatch.setattr(cli, "run_logged", fake_run_logged)
    monkeypatch.setattr(folder_module, "evaluate_folder", fake_evaluate_folder)
    out = tmp_path / "bench"
    # LEGACY has no record: its class says 1 × 2, the others' records 3 × 2
    argv = ["-d", "991", "--trainers", BASE, HIDIFF, LEGACY, "--folds", "0", "1", "--collect-only",
            "--allow-unequal-budgets", "--test-images", str(images), "--test-labels", str(labels), "-np", "1",
            "-o", str(out)]
    return {"results": results, "out": out, "argv": argv, "calls": calls, "forced": forced}


@pytest.fixture
def bench(fake_env, capsys):
    assert cli.main(fake_env["argv"]) == 0, capsys.readouterr().err
    md = (fake_env["out"] / "summary.md").read_text()
    return dict(fake_env, md=md, rows=read_csv(fake_env["out"] / "results.csv"), stdout=capsys.readouterr().out)


def table(md: str, first_header_cell: str, after: str) -> list:
    """Rows (lists of cells) of the first table starting with ``first_header_cell`` after the line ``after``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    for i in range(start, len(lines)):
        if lines[i].startswith(f"| {first_header_cell} |"):
            rows = []
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
            return rows
    raise AssertionError(f"no table starting with {first_header_cell!r} after {after!r}")


def fold_mean(trainer, output, fold, metric):
    values = VALUES[(trainer, output)]
    return float(np.mean([values[c][0 if metric == "Dice" else 1] for c in FOLD_CASES[fold]]))


# ---------------------------------------------------------------- results.csv
def test_output_column_and_both_outputs_of_a_hidiff_fold(bench):
    out, rows = bench["out"], bench["rows"]
    with open(out / "results.csv", newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == CSV_COLUMNS and CSV_COLUMNS[-1] == "output"
        raw = list(reader)
    assert ["nnUNetTrainerHiDiff_smoke", "0", "a", "c0", "Dice", "0.6", "validation", "refined"] in raw
    assert ["nnUNetTrainerHiDiff_smoke", "0", "a", "c0", "Dice", "0.5", "validation", "segmentor"] in raw
    outputs = {(r.trainer, r.split, r.output) for r in rows}
    assert outputs == {(BASE, "validation", SEGMENTOR), (BASE, "test", SEGMENTOR),
                       (HIDIFF, "validation", REFINED), (HIDIFF, "validation", SEGMENTOR),
                       (HIDIFF, "test", REFINED), (HIDIFF, "test", SEGMENTOR), (HIDIFF, "test", DECIDED),
                       (LEGACY, "validation", REFINED),  # older layout: validation/ only, counted as refined
                       (LEGACY, "test", REFINED), (LEGACY, "test", SEGMENTOR), (LEGACY, "test", DECIDED)}
    for (trainer, output), values in VALUES.items():
        got = {r.case: r.value for r in rows if (r.trainer, r.output, r.metric, r.split)
               == (trainer, output, "Dice", "validation")}
        assert got == {c: d for c, (d, _) in values.items()}, (trainer, output)
    # the decided copy in validation/ of the HiDiff folds is not collected a second time
    keys = [(r.trainer, r.fold, r.cls, r.case, r.metric, r.split, r.output) for r in rows]
    assert len(keys) == len(set(keys))
    # sorted: trainer order, then refined before segmentor
    hidiff_outputs = [r.output for r in rows if r.trainer == HIDIFF]
    assert hidiff_outputs == sorted(hidiff_outputs, key=[REFINED, SEGMENTOR, DECIDED].index)


def test_test_set_is_predicted_refined_and_segmentor_alone_for_hidiff(bench):
    out, calls, rows = bench["out"], bench["calls"], bench["rows"]
    by_trainer = {}
    for cmd, refine in calls:
        by_trainer.setdefault(cmd[cmd.index("-tr") + 1], []).append((refine, Path(cmd[cmd.index("-o") + 1]).name))
    assert by_trainer == {BASE: [(None, BASE)],
                          **{t: [("1", f"{t}__refined"), ("0", f"{t}__segmentor"), (None, f"{t}__decided")]
                             for t in (HIDIFF, LEGACY)}}
    # the user's forced settings reach every prediction except the as-decided ones
    names = [Path(cmd[cmd.index("-o") + 1]).name for cmd, _ in calls]
    assert [f for f, n in zip(bench["forced"], names) if n.endswith("__decided")] == [{}, {}]
    assert all(f == FORCED for f, n in zip(bench["forced"], names) if not n.endswith("__decided"))
    for name, refine in ((f"{HIDIFF}__refined", "1"), (f"{HIDIFF}__segmentor", "0"), (f"{HIDIFF}__decided", "decision")):
        marker = json.loads((out / "test" / name / ".benchmark_prediction.json").read_text())
        assert marker["inputs"]["nnUNet_HiDiff_refine"] == refine
        assert marker["seconds"] == PREDICT_SECONDS[refine if refine != "decision" else None]
    assert "nnUNet_HiDiff_refine" not in json.loads((out / "test" / BASE / ".benchmark_prediction.json").read_text())[
        "inputs"]
    for name, values in TEST_VALUES.items():
        trainer, _, output = name.partition("__")
        got = {r.case: r.value for r in rows if (r.trainer, r.output, r.metric, r.split, r.fold)
               == (trainer, output or SEGMENTOR, "Dice", "test", "ensemble")}
        assert got == {c: d for c, (d, _) in values.items()}, name
    assert f"{HIDIFF} (refined): test set predicted with folds [0, 1] in 10 s" in bench["stdout"]
    assert f"{HIDIFF} (segmentor): test set predicted with folds [0, 1] in 4 s" in bench["stdout"]
    assert f"{HIDIFF} (decided): test set predicted with folds [0, 1] in 2 s" in bench["stdout"]


def test_both_test_predictions_are_reused_and_redone_separately(bench, capsys):
    out, calls = bench["out"], bench["calls"]
    n_calls, before = len(calls), (out / "results.csv").read_bytes()
    assert cli.main(bench["argv"]) == 0
    assert len(calls) == n_calls  # everything reused
    stdout = capsys.readouterr().out
    assert f"{HIDIFF} (refined): test set predicted with folds [0, 1] (reused)" in stdout
    assert f"{HIDIFF} (segmentor): test set predicted with folds [0, 1] (reused)" in stdout
    assert f"{HIDIFF} (decided): test set predicted with folds [0, 1] (reused)" in stdout
    assert (out / "results.csv").read_bytes() == before
    # a marker that no longer matches (here: the segmentor-alone one names another setting) is predicted again
    marker = out / "test" / f"{HIDIFF}__segmentor" / ".benchmark_prediction.json"
    data = json.loads(marker.read_text())
    data["inputs"]["nnUNet_HiDiff_refine"] = "1"
    marker.write_text(json.dumps(data))
    assert cli.main(bench["argv"]) == 0
    assert [(c[c.index("-tr") + 1], r) for c, r in calls[n_calls:]] == [(HIDIFF, "0")]


def test_an_old_csv_without_the_output_column_is_read_with_primary_outputs(tmp_path):
    old = tmp_path / "results.csv"
    old.write_text("trainer,fold,class,case,metric,value,split\n"
                   f"{BASE},0,a,c0,Dice,0.5,validation\n"
                   f"{HIDIFF},0,a,c0,Dice,0.6,validation\n"
                   "nnUNetTrainer,ensemble,a,t0,HD95,nan,test\n")
    rows = read_csv(old)
    assert [(r.trainer, r.output) for r in rows] == [(BASE, SEGMENTOR), (HIDIFF, REFINED),
                                                     ("nnUNetTrainer", SEGMENTOR)]
    assert rows[1].value == 0.6 and math.isnan(rows[2].value)


# ---------------------------------------------------------------- summary.md
def test_main_tables_show_refined_and_a_segmentor_alone_row(bench):
    md = bench["md"]
    cv = {(row[0], row[1]): row for row in table(md, "Trainer", after="## Cross-validation")}
    alone = f"{HIDIFF}, its segmentor alone"
    assert [k for k in cv if k[1] == "a"] == [(BASE, "a"), (HIDIFF, "a"), (alone, "a"), (LEGACY, "a")]
    for label, trainer, output in ((HIDIFF, HIDIFF, REFINED), (alone, HIDIFF, SEGMENTOR)):
        folds = [fold_mean(trainer, output, f, "Dice") for f in (0, 1)]
        assert cv[(label, "a")][3] == f"{np.mean(folds):.4f} ± {np.std(folds, ddof=1):.4f}"
    assert cv[(f"{LEGACY}, its segmentor alone", "–")][2] == "0"  # older layout: no segmentor rows
    diffs = {(row[0], row[1], row[2]): row for row in table(md, "Comparison", after="## Differences")}
    seg_minus_base = [fold_mean(HIDIFF, SEGMENTOR, f, "Dice") - fold_mean(BASE, SEGMENTOR, f, "Dice")
                      for f in (0, 1)]
    assert diffs[(f"{alone} − {BASE}", "a", "Dice")][7] == f"{np.mean(seg_minus_base):.4f}"
    test_rows = {row[0]: row for row in table(md, "Trainer", after="## Held-out test set") if row[2] == "a"}
    assert test_rows[alone][4] == "0.7000 ± 0.0707" and test_rows[HIDIFF][4] == "0.7500 ± 0.0707"


def test_refined_vs_its_own_segmentor_section(bench):
    md = bench["md"]
    assert "## Refined vs its own segmentor" in md
    per_fold = {(row[0], row[1]): row for row in table(md, "Trainer", after="## Refined vs its own segmentor")}
    assert set(per_fold) == {(HIDIFF, "0"), (HIDIFF, "1"), (LEGACY, "0"), (LEGACY, "1")}
    # fold 0: segmentor Dice (0.5 + 0.6) / 2, refined (0.6 + 0.7) / 2; HD95 5.0 → 4.0
    assert per_fold[(HIDIFF, "0")][2:] == ["0.5500", "0.6500", "0.1000", "5.000", "4.000", "-1.000"]
    assert per_fold[(HIDIFF, "1")][2:] == ["0.7500", "0.7500", "0.0000", "4.000", "4.500", "0.500"]
    assert per_fold[(LEGACY, "0")][2:] == ["n/a", "0.3500", "n/a", "n/a", "8.500", "n/a"]
    tests = {(row[0], row[1], row[2]): row for row in table(md, "Trainer", after="Refined − segmentor over")}
    seg, ref = VALUES[(HIDIFF, SEGMENTOR)], VALUES[(HIDIFF, REFINED)]
    cases = sorted(seg)
    dice_diffs = [ref[c][0] - seg[c][0] for c in cases]
    dice = tests[(HIDIFF, "validation", "Dice")]
    assert dice[3] == "1 of 2 folds"  # fold 1: no change is not help
    assert dice[4] == "4" and dice[5] == f"{np.mean(dice_diffs):.4f}"
    assert dice[6] == f"{wilcoxon(dice_diffs).pvalue:.4g}"
    seg_folds = [fold_mean(HIDIFF, SEGMENTOR, f, "Dice") for f in (0, 1)]
    ref_folds = [fold_mean(HIDIFF, REFINED, f, "Dice") for f in (0, 1)]
    assert dice[7] == "2" and dice[8] == "0.0500" and dice[9] == f"{ttest_rel(ref_folds, seg_folds).pvalue:.4g}"
    hd = tests[(HIDIFF, "validation", "HD95")]
    hd_diffs = [ref[c][1] - seg[c][1] for c in cases]
    assert hd[3] == "1 of 2 folds" and hd[5] == f"{np.mean(hd_diffs):.4f}"  # fold 0 lower HD95: helped
    test_dice = tests[(HIDIFF, "test", "Dice")]
    assert test_dice[3] == "2 of 2 cases" and test_dice[4] == "2" and test_dice[5] == "0.0500"
    assert test_dice[7:] == ["–", "–", "–"]
    assert tests[(LEGACY, "validation", "Dice")][3:5] == ["0 of 0 folds", "0"]


def test_decision_section_and_as_decided_result(bench):
    md = bench["md"]
    per_fold = {(row[0], row[1]): row for row in table(md, "Trainer", after="## The decision")}
    assert per_fold[(HIDIFF, "0")][2:] == ["yes", "2", "Dice +0.100, HD95 not worse", "0.6500", "4.000"]
    # fold 1 keeps the segmentor alone; a "|" in the reason is escaped for the table
    assert per_fold[(HIDIFF, "1")][2:4] == ["no", "0"] and per_fold[(HIDIFF, "1")][5:] == ["0.7500", "4.000"]
    assert "no Dice gain \\| HD95 worse" in md
    assert per_fold[(LEGACY, "0")][2:] == ["— (no decision: refined)", "—", "—", "0.3500", "8.500"]
    summary = {row[0]: row for row in table(md, "Trainer", after="Mean ± std over folds of the as-decided")}
    decided = [0.65, 0.75]
    assert summary[HIDIFF] == [HIDIFF, "2", "1 of 2", f"{np.mean(decided):.4f} ± {np.std(decided, ddof=1):.4f}",
                               "4.000 ± 0.000"]
    assert summary[LEGACY][2] == "2 of 2 (2 without a decision)"  # older folds always refined
    # the test set as decided (measured, output "decided") against the same ensemble's segmentor alone and refined
    test = {(row[0], row[1]): row[2:] for row in table(md, "Trainer", after="Test set: the fold ensemble predicted")}
    seg, ref, dec = (TEST_VALUES[f"{HIDIFF}__{o}"] for o in ("segmentor", "refined", "decided"))
    dice_w = wilcoxon([dec[c][0] - seg[c][0] for c in TEST_CASES])
    assert test[(HIDIFF, "Dice")] == [
        *(f"{np.mean([v[c][0] for c in TEST_CASES]):.4f} ± {np.std([v[c][0] for c in TEST_CASES], ddof=1):.4f}"
          for v in (seg, ref, dec)),
        f"{np.mean([dec[c][0] - seg[c][0] for c in TEST_CASES]):.4f}", "2 of 2 cases", f"{dice_w.pvalue:.4g}"]
    assert test[(HIDIFF, "HD95")][2:5] == ["2.500 ± 0.707", "-0.500", "2 of 2 cases"]
    assert test[(LEGACY, "Dice")][3:5] == ["-0.0200", "0 of 2 cases"]
    # the as-decided rows are no series of their own: the main test table keeps refined and segmentor alone
    assert not any("decided" in row[0] for row in table(md, "Trainer", after="## Held-out test set"))


def test_speed_section(bench):
    rows = {(row[0], row[1]): row[2:] for row in table(bench["md"], "Trainer", after="## Speed")}
    # median over folds: iterations 0.5/0.7 (HiDiff), 0.2/0.4 (Baseline); validation per case from the records;
    # test: PREDICT_SECONDS / 2 test cases
    assert rows[(BASE, SEGMENTOR)] == ["0.3 s", "—", "1 s"]
    assert rows[(HIDIFF, REFINED)] == ["0.6 s", "2 s", "5 s"]
    assert rows[(HIDIFF, SEGMENTOR)] == ["", "0.3 s", "2 s"]
    assert rows[(LEGACY, REFINED)] == ["—", "—", "5 s"]
    wall = {row[0]: row for row in table(bench["md"], "Trainer", after="## Wall time")}
    assert rows[(HIDIFF, DECIDED)] == ["", "—", "1 s"]
    assert wall[HIDIFF][-1] == "10.0 s (refined) + 4.0 s (segmentor) + 2.0 s (decided)" and wall[BASE][-1] == "2.0 s"


def test_budget_and_warm_start_come_from_the_records(bench):
    status = {row[0]: row for row in table(bench["md"], "Trainer", after="Reference trainer")}
    # the records say 3 × 2 (the classes say 1 × 2): the folds were trained with what the records say
    assert status[BASE][1] == "3 epochs × 2 iterations"
    assert status[HIDIFF][1] == ("3 epochs × 2 iterations, after a warm start (folds 0, 1) from "
                                 f"`/r/{DATASET}/Seg__P__2d/fold_{{fold}}/checkpoint_final.pth`")
    assert status[LEGACY][1] == "1 epoch × 2 iterations"  # no record: the class attributes


def test_unequal_budgets_from_records_are_refused(fake_env, capsys):
    argv = [a for a in fake_env["argv"] if a not in ("--allow-unequal-budgets", LEGACY)]
    record_file = trainer_dir(fake_env["results"], HIDIFF) / "fold_1" / "hidiff_fold.json"
    record = json.loads(record_file.read_text())
    record["budget"] = dict(BUDGET, epochs=4)
    record_file.write_text(json.dumps(record))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot determine the training budget of {HIDIFF}" in err
    assert "the fold records disagree: fold 0: 3 epochs × 2 iterations, fold 1: 4 epochs × 2 iterations" in err
    assert not fake_env["out"].exists()


def test_a_hidiff_fold_missing_one_output_is_a_problem(fake_env, capsys):
    import shutil

    shutil.rmtree(trainer_dir(fake_env["results"], HIDIFF) / "fold_1" / "validation_segmentor")
    assert cli.main(fake_env["argv"]) == 1
    err = capsys.readouterr().err
    assert "fold_1/validation_segmentor/summary.json missing, so no segmentor rows" in err
    rows = read_csv(fake_env["out"] / "results.csv")
    assert {(r.fold, r.output) for r in rows if r.trainer == HIDIFF and r.split == "validation"} == {
        ("0", REFINED), ("0", SEGMENTOR), ("1", REFINED)}


def test_figure_has_a_bar_series_per_output(bench):
    data = (bench["out"] / "benchmark.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from nnunetv2_hidiff.benchmark.report import series_view, ReportInput

    inp = ReportInput(dataset="D", configuration="2d", plans="P", trainers=[BASE, HIDIFF], folds=[0, 1],
                      command="cmd", rows=bench["rows"], nan_counts={}, hidiff=[HIDIFF])
    assert series_view(inp).trainers == [BASE, HIDIFF, f"{HIDIFF}, its segmentor alone"]


def test_the_forced_refined_test_prediction_uses_the_refined_validations_steps(tmp_path):
    """A fold that decided for refinement at other steps (fold 0 of DECISIONS: 2 steps, as its refined
    validation here; a record saying 5 below) must not make the forced refined test prediction use those: the
    refined test row is predicted at the refined validation's steps, unless the user set nnUNet_HiDiff_steps;
    folds that disagree leave the steps alone; the segmentor-alone and as-decided predictions get none."""
    results = tmp_path / "results"
    make_folds(results)
    tdir = trainer_dir(results, HIDIFF)
    assert cli.refined_validation_steps(tdir, [0, 1]) == 2
    assert cli.prediction_env({}, "1", 2) == {"nnUNet_HiDiff_refine": "1", "nnUNet_HiDiff_steps": "2"}
    assert cli.prediction_env({"nnUNet_HiDiff_steps": "7"}, "1", 2)["nnUNet_HiDiff_steps"] == "7"  # the user's
    assert "nnUNet_HiDiff_steps" not in cli.prediction_env({}, "0", None)
    assert cli.prediction_env({"nnUNet_HiDiff_steps": "7", "X": "y"}, cli.FOLLOW_DECISION) == {"X": "y"}
    assert cli.prediction_env({"nnUNet_HiDiff_gate": "0.5,1"}, cli.FOLLOW_DECISION) == {}  # the decided gate applies
    record = json.loads((tdir / "fold_1" / "hidiff_fold.json").read_text())
    record["validation"]["refined"]["steps"] = 5
    write_json(tdir / "fold_1" / "hidiff_fold.json", record)
    assert cli.refined_validation_steps(tdir, [0, 1]) is None
    assert cli.refined_validation_steps(tdir, [1]) == 5
    assert cli.prediction_env({}, "1", None) == {"nnUNet_HiDiff_refine": "1"}


def test_pooled_decision_is_made_before_collecting_and_the_test_set_follows_it(fake_env, capsys):
    """--pooled-decision: one decision over both folds' validation cases is written into each HiDiff fold (the
    refined output, pooled Dice 0.705 against 0.65 at a lower HD95, although fold 1 had decided otherwise); the
    summary and the as-decided test prediction follow it; a measured training time stays valid; a HiDiff trainer
    without records cannot take part and is reported; a second run writes nothing and reuses every prediction."""
    import torch

    from nnunetv2_hidiff.benchmark.runner import TimingStore
    from nnunetv2_hidiff.training.fold_record import read_fold_record

    hdir = trainer_dir(fake_env["results"], HIDIFF)
    for fold in (0, 1):
        torch.save({"network_weights": {"_extra_state": {"format": 1, "trainer": HIDIFF, "config": {},
                                                         "decision": {"refine": False}}}},
                   hdir / f"fold_{fold}" / "checkpoint_final.pth")
    store = TimingStore(fake_env["out"] / "timings.json")
    store.record(HIDIFF, 1, hdir / "fold_1", 3600.0)
    fake_env["out"].mkdir()
    store.save()
    argv = fake_env["argv"] + ["--pooled-decision"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert f"{HIDIFF}: pooled decision over folds 0, 1: refine (none, 2 steps); written into 2 fold(s)" in captured.out
    assert f"{LEGACY}: no pooled decision: " in captured.err and "no validated HiDiff decision" in captured.err
    for fold in (0, 1):
        record = read_fold_record(hdir / f"fold_{fold}")["decision"]
        assert record["refine"] and record["pooled"] == {"folds": ["fold_0", "fold_1"], "cases": 4}
        assert record["fold_decision"]["refine"] == DECISIONS[fold]["refine"]
        weights = torch.load(hdir / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)["network_weights"]
        stored = weights["_extra_state"]["decision"]  # refine at 2 steps, every setting named
        assert (stored["refine"], stored["steps"], stored["combine"], stored["samples"]) == (True, 2, "none", 1)
        assert (json.loads((hdir / f"fold_{fold}" / "validation" / "summary.json").read_text())
                == json.loads((hdir / f"fold_{fold}" / "validation_refined" / "summary.json").read_text()))
    md = (fake_env["out"] / "summary.md").read_text()
    decisions = {row[1]: row for row in table(md, "Trainer", after="## The decision: refine or not") if row[0] == HIDIFF}
    assert set(decisions) == {"0", "1"} and all("pooled over 2 folds (4 cases)" in row[4] for row in decisions.values())
    assert "measured: folds 1" in md  # the decision rewrote checkpoint_final.pth; the measured time survives
    n_calls = len(fake_env["calls"])
    assert cli.main(argv) == 1
    assert "every fold already carried it" in capsys.readouterr().out
    assert len(fake_env["calls"]) == n_calls  # no checkpoint rewritten, so every test prediction is reused
