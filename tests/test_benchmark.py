"""nnunetv2_hidiff_benchmark end to end: smoke trainers, 2 folds and the held-out test set of the tiny dataset.

The benchmark writes into its own nnUNet_results folder (the raw/preprocessed data of the session fixture are
shared), so folds trained by other test modules into the fixture's results tree do not interfere. The HiDiff
trainer's folds contribute two outputs (``validation_refined/`` and ``validation_segmentor/``, see
nnunetv2_hidiff.training.fold_record); the test set is predicted twice for it (refined and segmentor alone).
"""
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_hidiff.benchmark.collect import CSV_COLUMNS, read_csv
from nnunetv2_hidiff.benchmark.report import fmt_speed
from nnunetv2_hidiff.benchmark.stats import nan_mean, nan_std
from tiny_dataset import BIN, nnunet_env

BASE, HIDIFF = "nnUNetTrainerBaseline_smoke", "nnUNetTrainerHiDiff_smoke"
TRAINERS = (BASE, HIDIFF)
ALONE = f"{HIDIFF}, its segmentor alone"
# the series of summary.md: label -> (trainer, output)
SERIES = {BASE: (BASE, "segmentor"), HIDIFF: (HIDIFF, "refined"), ALONE: (HIDIFF, "segmentor")}
OUTPUTS = {BASE: ("segmentor",), HIDIFF: ("refined", "segmentor")}  # validated per fold, predicted on the test set
TEST_ONLY = {BASE: (), HIDIFF: ("decided",)}  # the test set as each fold's decision says
SUMMARY_FOLDER = {(BASE, "segmentor"): "validation", (HIDIFF, "refined"): "validation_refined",
                  (HIDIFF, "segmentor"): "validation_segmentor"}
CLASSES = ("a", "b")
DATASET = "Dataset990_Tiny"


def _validation_rows(folder):
    """The validation rows of results.csv with NaN spelled "nan", so that two reads of one NaN compare equal (a tiny
    model that misses a class has an undefined HD95; NaN != NaN would fail a list comparison on such a machine)."""
    return [dataclasses.replace(r, value="nan") if isinstance(r.value, float) and math.isnan(r.value) else r
            for r in read_csv(folder / "results.csv") if r.split == "validation"]


def _run(args, env, timeout=1500):
    return subprocess.run([str(BIN / "nnunetv2_hidiff_benchmark"), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _checkpoint_mtimes(results: Path):
    return {p: p.stat().st_mtime_ns for p in sorted(results.glob(f"{DATASET}/*/fold_*/checkpoint_final.pth"))}


@pytest.fixture(scope="module")
def bench(tiny_nnunet, tmp_path_factory):
    results = tmp_path_factory.mktemp("benchmark_results")
    env = dict(nnunet_env(tiny_nnunet), nnUNet_results=str(results))
    raw = tiny_nnunet / "raw" / DATASET
    out = results / "bench"
    args = ["-d", "990", "--trainers", *TRAINERS, "--folds", "0", "1", "--test-images", raw / "imagesTs",
            "--test-labels", raw / "labelsTs", "--disable-tta", "-np", "1", "-o", out]
    proc = _run(args, env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return {"root": tiny_nnunet, "results": results, "env": env, "out": out, "args": args, "proc": proc}


def _table(md: str, first_header_cell: str, after: str = "") -> list:
    """Rows (lists of cells) of the first markdown table whose header starts with ``first_header_cell`` and that
    comes after the line containing ``after``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    for i in range(start, len(lines)):
        if lines[i].startswith(f"| {first_header_cell} |"):
            rows = []
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table starting with {first_header_cell!r} after {after!r}")


def _mean_std(cell: str):
    mean, std = cell.split(" ± ")
    return float(mean), (math.nan if std == "n/a" else float(std))


def _fold_means(rows, label, metric, cls, split="validation"):
    """{fold: mean} of one series (a SERIES label) and class."""
    trainer, output = SERIES[label]
    by_fold = {}
    for r in rows:
        if (r.trainer, r.output, r.metric, r.cls, r.split) == (trainer, output, metric, cls, split):
            by_fold.setdefault(r.fold, []).append(r.value)
    return {f: nan_mean(v) for f, v in by_fold.items()}


def _fg_fold_means(rows, label, metric):
    per_class = [_fold_means(rows, label, metric, c) for c in CLASSES]
    return {f: nan_mean([pc[f] for pc in per_class]) for f in ("0", "1")}


def _summary_file(bench, trainer, output, fold):
    return (bench["results"] / DATASET / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
            / SUMMARY_FOLDER[(trainer, output)] / "summary.json")


def _record(bench, trainer, fold):
    path = bench["results"] / DATASET / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" / "hidiff_fold.json"
    return json.loads(path.read_text())


def test_outputs_exist_and_csv_is_complete(bench):
    out, root = bench["out"], bench["root"]
    for name in ("results.csv", "summary.md", "benchmark.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    with open(out / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == CSV_COLUMNS and header == ["trainer", "fold", "class", "case", "metric", "value", "split",
                                                       "output"]
    rows = read_csv(out / "results.csv")
    splits = json.loads((root / "pre" / DATASET / "splits_final.json").read_text())
    for t in TRAINERS:
        for output in OUTPUTS[t]:
            for fold in (0, 1):
                for cls in CLASSES:
                    for metric in ("Dice", "IoU", "HD95", "Sensitivity", "Accuracy"):
                        cases = {r.case for r in rows if (r.trainer, r.fold, r.cls, r.metric, r.split, r.output)
                                 == (t, str(fold), cls, metric, "validation", output)}
                        assert cases == set(splits[fold]["val"]), (t, output, fold, cls, metric)
        for output in OUTPUTS[t] + TEST_ONLY[t]:
            test_cases = {r.case for r in rows if r.trainer == t and r.split == "test" and r.output == output}
            assert test_cases == {"tiny_006", "tiny_007"}, (t, output)
        assert {r.fold for r in rows if r.trainer == t and r.split == "test"} == {"ensemble"}
        assert {r.output for r in rows if r.trainer == t} == set(OUTPUTS[t] + TEST_ONLY[t])
        assert not any(r.output in TEST_ONLY[t] for r in rows if r.trainer == t and r.split == "validation")
    assert {r.trainer for r in rows} == set(TRAINERS)
    # one row per case × class × metric and output: no duplicates
    keys = [(r.trainer, r.fold, r.cls, r.case, r.metric, r.split, r.output) for r in rows]
    assert len(keys) == len(set(keys))


def test_csv_values_match_the_fold_summaries(bench):
    """Baseline rows from validation/, HiDiff refined rows from validation_refined/ and segmentor rows from
    validation_segmentor/ (the fold layout of nnunetv2_hidiff.training.fold_record)."""
    rows = read_csv(bench["out"] / "results.csv")
    value = {(r.trainer, r.output, r.fold, r.cls, r.case, r.metric): r.value for r in rows if r.split == "validation"}
    for (t, output) in SUMMARY_FOLDER:
        for fold in (0, 1):
            summary = json.loads(_summary_file(bench, t, output, fold).read_text())
            assert "HD95" in summary["foreground_mean"]  # the benchmark makes sure every fold has our metrics
            for case in summary["metric_per_case"]:
                cid = os.path.basename(case["reference_file"])[: -len(".nii.gz")]
                for key, cls in (("1", "a"), ("2", "b")):
                    for metric in ("Dice", "HD95", "TP"):
                        expected = case["metrics"][key][metric]
                        got = value[(t, output, str(fold), cls, cid, metric)]
                        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
        assert _record(bench, t, 0)["kind"] == ("hidiff" if t == HIDIFF else "baseline")


def test_summary_md_is_consistent_with_the_csv(bench):
    out = bench["out"]
    rows = read_csv(out / "results.csv")
    md = (out / "summary.md").read_text()
    assert "nnunetv2_hidiff_benchmark -d 990 --trainers" in md  # the command line
    # per trainer and class: mean ± std over folds of the per-fold means
    table = _table(md, "Trainer", after="## Cross-validation")
    seen = set()
    for trainer, cls, n_folds, dice, hd95, _ in table:
        if cls == "foreground":
            dice_folds = list(_fg_fold_means(rows, trainer, "Dice").values())
            hd_folds = list(_fg_fold_means(rows, trainer, "HD95").values())
        else:
            dice_folds = list(_fold_means(rows, trainer, "Dice", cls).values())
            hd_folds = list(_fold_means(rows, trainer, "HD95", cls).values())
        assert n_folds == "2"
        m, s = _mean_std(dice)
        # nan_ok: a class whose HD95 is defined on one fold only has no std (the tiny models miss classes)
        assert m == pytest.approx(nan_mean(dice_folds), abs=6e-5, nan_ok=True)
        assert s == pytest.approx(nan_std(dice_folds), abs=6e-5, nan_ok=True)
        m, s = _mean_std(hd95)
        assert m == pytest.approx(nan_mean(hd_folds), abs=6e-4, nan_ok=True)
        assert s == pytest.approx(nan_std(hd_folds), abs=6e-4, nan_ok=True)
        seen.add((trainer, cls))
    assert seen == {(t, c) for t in SERIES for c in (*CLASSES, "foreground")}
    # per-fold table
    for label, fold, n_cases, dice, hd95 in _table(md, "Trainer", after="Per fold"):
        trainer, output = SERIES[label]
        case_ids = {r.case for r in rows if (r.trainer, r.output, r.fold, r.split)
                    == (trainer, output, fold, "validation")}
        assert int(n_cases) == len(case_ids)
        assert float(dice) == pytest.approx(_fg_fold_means(rows, label, "Dice")[fold], abs=6e-5)
    # differences: Wilcoxon n = cases with both values finite, mean difference = HiDiff (refined, and its segmentor
    # alone) − baseline
    diffs = _table(md, "Comparison", after="## Differences")
    assert len(diffs) == 2 * 2 * (len(CLASSES) + 1)
    for comparison, cls, metric, n, mean_diff, _, n_folds, fold_diff, _ in diffs:
        other = comparison[: -len(f" − {BASE}")]
        assert comparison.endswith(f" − {BASE}") and other in (HIDIFF, ALONE)
        if cls == "foreground":
            continue
        ref = {(r.fold, r.case): r.value for r in rows
               if (r.trainer, r.cls, r.metric, r.split) == (BASE, cls, metric, "validation")}
        oth = {(r.fold, r.case): r.value for r in rows
               if (r.trainer, r.output, r.cls, r.metric, r.split) == (*SERIES[other], cls, metric, "validation")}
        pairs = [oth[k] - ref[k] for k in ref if k in oth and np.isfinite(ref[k]) and np.isfinite(oth[k])]
        # folds where both means are finite (a tiny model can miss a class on a whole fold: HD95 undefined there)
        folds_diff = [d for d in (_fold_means(rows, other, metric, cls)[f] - _fold_means(rows, BASE, metric, cls)[f]
                                  for f in ("0", "1")) if np.isfinite(d)]
        assert int(n) == len(pairs) and n_folds == str(len(folds_diff))
        if pairs:
            assert float(mean_diff) == pytest.approx(np.mean(pairs), abs=6e-5)
        if folds_diff:
            assert float(fold_diff) == pytest.approx(np.mean(folds_diff), abs=6e-5)
        else:
            assert fold_diff == "n/a"
    # held-out test set: mean ± std over the test cases
    test_table = _table(md, "Trainer", after="## Held-out test set")
    assert {row[0] for row in test_table} == set(SERIES)
    for label, folds, cls, n_cases, dice, hd95, _ in test_table:
        assert folds == "0, 1" and n_cases == "2"
        if cls == "foreground":
            continue
        values = [r.value for r in rows if (r.trainer, r.output, r.cls, r.metric, r.split)
                  == (*SERIES[label], cls, "Dice", "test")]
        m, s = _mean_std(dice)
        assert m == pytest.approx(nan_mean(values), abs=6e-5) and s == pytest.approx(nan_std(values), abs=6e-5)
    assert "## Wall time" in md and "measured: folds 0, 1" in md
    assert "both empty" in md  # the empty-mask rules are summarised


def test_refined_vs_segmentor_decision_and_speed_sections(bench):
    """The HiDiff sections of summary.md against the CSV rows and the folds' hidiff_fold.json."""
    rows = read_csv(bench["out"] / "results.csv")
    md = (bench["out"] / "summary.md").read_text()
    seg, ref = _fg_fold_means(rows, ALONE, "Dice"), _fg_fold_means(rows, HIDIFF, "Dice")
    per_fold = _table(md, "Trainer", after="## Refined vs its own segmentor")
    assert [(row[0], row[1]) for row in per_fold] == [(HIDIFF, "0"), (HIDIFF, "1")]
    for _, fold, dice_seg, dice_ref, dice_diff, *_ in per_fold:
        assert float(dice_seg) == pytest.approx(seg[fold], abs=6e-5)
        assert float(dice_ref) == pytest.approx(ref[fold], abs=6e-5)
        assert float(dice_diff) == pytest.approx(ref[fold] - seg[fold], abs=1.1e-4)
    tests = {(row[1], row[2]): row for row in _table(md, "Trainer", after="Refined − segmentor over")}
    assert set(tests) == {("validation", "Dice"), ("validation", "HD95"), ("test", "Dice"), ("test", "HD95")}
    helped = sum(ref[f] - seg[f] > 1e-12 for f in ("0", "1"))
    assert tests[("validation", "Dice")][3] == f"{helped} of 2 folds"
    assert float(tests[("validation", "Dice")][8]) == pytest.approx(np.mean([ref[f] - seg[f] for f in ref]), abs=6e-5)
    # the decision: each fold's record, and the validation result of what it chose
    decisions = _table(md, "Trainer", after="## The decision")
    assert [(row[0], row[1]) for row in decisions] == [(HIDIFF, "0"), (HIDIFF, "1")]
    for _, fold, refine, steps, _, dice, _ in decisions:
        record = _record(bench, HIDIFF, fold)
        decision, combine = record["decision"], record["decision"].get("combine", "none")
        gate = decision.get("gate")
        gated = f", gate {gate[0]:g} / {gate[1]:g}" if gate else ""  # a gated fold names its chosen gate
        expected = "no" if not decision["refine"] else "yes" + (
            "" if combine == "none" else f" (combined with the segmentor: {combine}{gated})")
        assert refine == expected and steps.split()[0] == str(decision["steps"])
        other_steps = decision["steps"] != record["validation"]["refined"]["steps"]
        if decision["refine"] and (combine != "none" or other_steps):  # not the refined rows: from the fold record
            chosen = next(v["dice"] for v in record["validation"].values() if v.get("refine")
                          and v.get("combine") == combine and v.get("steps") == decision["steps"]
                          and v.get("gate") == gate)
        else:
            chosen = (ref if decision["refine"] else seg)[fold]
        assert float(dice) == pytest.approx(chosen, abs=6e-5)
    # speed: from the records (median over folds) and the measured test predictions
    speed = {(row[0], row[1]): row[2:] for row in _table(md, "Trainer", after="## Speed")}
    assert set(speed) == {(BASE, "segmentor"), (HIDIFF, "refined"), (HIDIFF, "segmentor"), (HIDIFF, "decided")}
    for t in TRAINERS:
        per_iteration = np.median([_record(bench, t, f)["seconds_per_iteration"] for f in (0, 1)])
        assert speed[(t, OUTPUTS[t][0])][0] == fmt_speed(per_iteration)
    for output in ("refined", "segmentor"):
        per_case = np.median([_record(bench, HIDIFF, f)["validation"][output]["seconds_per_case"] for f in (0, 1)])
        assert speed[(HIDIFF, output)][1] == fmt_speed(per_case)
        marker = json.loads((bench["out"] / "test" / f"{HIDIFF}__{output}" / ".benchmark_prediction.json").read_text())
        assert speed[(HIDIFF, output)][2] == fmt_speed(marker["seconds"] / 2)
    assert speed[(BASE, "segmentor")][1] == "—"  # the Baseline validates once, unmeasured
    assert speed[(BASE, "segmentor")][2] != "—"
    # the Budget column: from the records
    status = {row[0]: row[1] for row in _table(md, "Trainer", after="Reference trainer")}
    assert status == {BASE: "1 epoch × 2 iterations", HIDIFF: "1 epoch × 2 iterations"}


def test_the_test_set_as_decided_follows_the_fold_decisions(bench):
    """``test/<HiDiff>__decided`` is predicted with no setting forced: where both folds decided alike it is the
    forced prediction of that output, file for file; the decision section's test table matches the CSV."""
    decisions = [_record(bench, HIDIFF, f)["decision"] for f in (0, 1)]
    test = bench["out"] / "test"
    decided = sorted((test / f"{HIDIFF}__decided").glob("*.nii.gz"))
    assert [p.name for p in decided] == ["tiny_006.nii.gz", "tiny_007.nii.gz"]
    same = {(bool(d["refine"]), d.get("combine", "none"), d["steps"] if d["refine"] else 0) for d in decisions}
    refined_steps = {_record(bench, HIDIFF, f)["validation"]["refined"]["steps"] for f in (0, 1)}
    if same == {(False, "none", 0)}:
        forced = "segmentor"
    elif len(same) == 1 and next(iter(same))[1] == "none" and {next(iter(same))[2]} == refined_steps:
        forced = "refined"
    else:
        forced = None  # the folds disagree (or combine): the ensemble mixes outputs, no forced run to compare with
    if forced:
        for p in decided:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(test / f"{HIDIFF}__{forced}" / p.name)))
            assert np.array_equal(a, b), (p.name, forced, decisions)
    rows = read_csv(bench["out"] / "results.csv")
    md = (bench["out"] / "summary.md").read_text()
    table = {row[1]: row for row in _table(md, "Trainer", after="Test set: the fold ensemble predicted")}
    assert set(table) == {"Dice", "HD95"}
    for metric, digits in (("Dice", 4), ("HD95", 3)):
        per_case = {}
        for r in rows:
            if (r.trainer, r.output, r.metric, r.split) == (HIDIFF, "decided", metric, "test"):
                per_case.setdefault(r.case, []).append(r.value)
        mean = nan_mean([nan_mean(v) for v in per_case.values()])
        if math.isfinite(mean):
            assert float(table[metric][4].split(" ± ")[0]) == pytest.approx(mean, abs=10 ** -digits)


def test_small_object_table_matches_the_fold_summaries(bench):
    """summary.md's small-object rows: mean ± std over folds of each fold summary's hidiff_small_objects."""
    md = (bench["out"] / "summary.md").read_text()
    table = _table(md, "Trainer", after="## Small objects")
    validation = [row for row in table if row[1] == "validation"]
    assert {(row[0], row[2]) for row in validation} == {(t, c) for t in SERIES for c in (*CLASSES, "foreground")}
    for label, _, cls, n_folds, units, dice, hd95, ratio, diff, _ in validation:
        reports = []
        for fold in (0, 1):
            summary_file = _summary_file(bench, *SERIES[label], fold)
            reports.append(json.loads(summary_file.read_text())["hidiff_small_objects"])
        if cls == "foreground":
            dice_folds = [r["foreground_mean"]["Dice"] for r in reports]
            n_units = sum(r["per_class"][k]["n_units"] for r in reports for k in ("1", "2"))
        else:
            key = {"a": "1", "b": "2"}[cls]
            dice_folds = [r["per_class"][key]["Dice"] for r in reports]
            n_units = sum(r["per_class"][key]["n_units"] for r in reports)
        assert n_folds == "2" and int(units) == n_units > 0
        m, s = _mean_std(dice)
        assert m == pytest.approx(nan_mean(dice_folds), abs=6e-5) and s == pytest.approx(nan_std(dice_folds), abs=6e-5)
        assert (diff == "–") == (label == BASE)
    assert "slices whose reference size" in md


def test_png_logs_and_progress(bench):
    out, proc = bench["out"], bench["proc"]
    data = (out / "benchmark.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert len([n for n in logs if "__train__" in n]) == 4 and len([n for n in logs if "__predict__" in n]) == 4
    for output in ("refined", "segmentor", "decided"):
        assert len([n for n in logs if n.startswith(f"{HIDIFF}__test-{output}__predict__")]) == 1
    assert "nnUNetv2_train" in (out / "logs" / logs[0]).read_text().splitlines()[0]
    assert "Epoch 0" not in proc.stdout  # nnU-Net's output goes to the logs, not the terminal
    assert f"{HIDIFF} fold 1: train done" in proc.stdout
    assert "benchmark:" in proc.stderr and "job" in proc.stderr  # tqdm bar


def test_collect_only_reproduces_the_csv_without_training(bench):
    out, env, results = bench["out"], bench["env"], bench["results"]
    before_csv = (out / "results.csv").read_bytes()
    before_logs = sorted((out / "logs").iterdir())
    before_ckpt = _checkpoint_mtimes(results)
    assert len(before_ckpt) == 4
    proc = _run([*bench["args"], "--collect-only"], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "results.csv").read_bytes() == before_csv
    assert sorted((out / "logs").iterdir()) == before_logs
    assert _checkpoint_mtimes(results) == before_ckpt
    assert "(reused)" in proc.stdout
    md = (out / "summary.md").read_text()
    assert "--collect-only" in md and "measured: folds 0, 1" in md  # timings.json keeps the measured times


def test_test_fov_restricts_the_added_metrics(bench, tmp_path):
    """--test-fov: Dice_FOV rows appear and summary.md reports them; predictions are reused from the copy."""
    out = tmp_path / "bench_fov"
    shutil.copytree(bench["out"], out)
    labels = bench["root"] / "raw" / DATASET / "labelsTs"
    fov = tmp_path / "fov"
    fov.mkdir()
    for f in labels.glob("*.nii.gz"):
        ref = sitk.ReadImage(str(f))
        mask = np.zeros_like(sitk.GetArrayFromImage(ref))
        mask[:, :, : mask.shape[2] // 2] = 1  # left half of each slice
        im = sitk.GetImageFromArray(mask)
        im.CopyInformation(ref)
        sitk.WriteImage(im, str(tmp_path / "fov" / f.name))
    args = [a if a != bench["out"] else out for a in bench["args"]]
    proc = _run([*args, "--collect-only", "--test-fov", fov], bench["env"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_csv(out / "results.csv")
    fov_rows = [r for r in rows if r.split == "test" and r.metric == "Dice_FOV"]
    assert len(fov_rows) == 4 * 2 * 2  # (baseline, HiDiff refined, segmentor alone, as decided) × cases × classes
    md = (out / "summary.md").read_text()
    assert "FOV masks" in md and "| Dice_FOV |" in md
    for label, _, cls, _, dice, _, _ in _table(md, "Trainer", after="## Held-out test set"):
        if cls != "foreground":
            values = [r.value for r in fov_rows if (r.trainer, r.output, r.cls) == (*SERIES[label], cls)]
            assert _mean_std(dice)[0] == pytest.approx(nan_mean(values), abs=6e-5)


def test_test_folds_choose_the_ensemble(bench, tmp_path):
    """--test-folds 1: the test set is predicted again with fold 1 alone (the fold-0+1 predictions are not
    reused), for both trainers and both outputs of HiDiff, and summary.md names the fold; validation rows are
    unchanged."""
    out = tmp_path / "bench_fold1"
    shutil.copytree(bench["out"], out)
    args = [a if a != bench["out"] else out for a in bench["args"]]
    proc = _run([*args, "--collect-only", "--test-folds", "1"], bench["env"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, folder, refine in ((BASE, BASE, None), (f"{HIDIFF} (refined)", f"{HIDIFF}__refined", "1"),
                                 (f"{HIDIFF} (segmentor)", f"{HIDIFF}__segmentor", "0"),
                                 (f"{HIDIFF} (decided)", f"{HIDIFF}__decided", "decision")):
        assert f"{name}: test set predicted with folds [1] in" in proc.stdout
        marker = json.loads((out / "test" / folder / ".benchmark_prediction.json").read_text())
        assert marker["inputs"]["folds"] == [1] and marker["inputs"].get("nnUNet_HiDiff_refine") == refine
    md = (out / "summary.md").read_text()
    assert {row[1] for row in _table(md, "Trainer", after="## Held-out test set")} == {"1"}
    assert _validation_rows(out) == _validation_rows(bench["out"])


def test_failed_training_is_reported_and_the_rest_is_collected(bench, tmp_path):
    """A trainer that crashes: message with the log file, exit 1, the other trainer's folds still reported."""
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "broken.py").write_text(
        "from nnunetv2_hidiff.training import nnUNetTrainerBaseline_smoke\n\n\n"
        "class nnUNetTrainerBroken_smoke(nnUNetTrainerBaseline_smoke):\n"
        "    def initialize(self):\n"
        "        raise RuntimeError('deliberately broken trainer')\n")
    # the user's nnUNet_extTrainer is kept (after ours) in the subprocesses
    env = dict(bench["env"], nnUNet_extTrainer=str(ext))
    out = tmp_path / "bench_broken"
    proc = _run(["-d", "990", "--trainers", BASE, "nnUNetTrainerBroken_smoke", "--folds", "0", "-np", "1", "-o", out],
                env)
    assert proc.returncode == 1, proc.stderr[-4000:]
    log = next((out / "logs").glob("nnUNetTrainerBroken_smoke__fold0__train__*.log"))
    assert f"nnUNetTrainerBroken_smoke fold 0: train FAILED (exit code" in proc.stdout
    assert str(log) in proc.stderr
    assert "deliberately broken trainer" in log.read_text()
    md = (out / "summary.md").read_text()
    assert "## Problems" in md and "| nnUNetTrainerBroken_smoke | 1 epoch × 2 iterations | none | 0 (missing) |" in md
    rows = read_csv(out / "results.csv")
    assert {r.trainer for r in rows} == {BASE}
    assert "fewer than 2 pairs" in md  # nothing to pair with
