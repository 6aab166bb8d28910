"""``nnunetv2_hidiff_benchmark`` (or ``python -m nnunetv2_hidiff.benchmark``): did HiDiff beat plain nnU-Net?

Trains what is missing with nnU-Net's own ``nnUNetv2_train`` (per trainer and fold, on nnU-Net's splits; an
interrupted fold is resumed with ``--c``, a fold whose validation was interrupted is validated with ``--val``;
each fold's state is read again just before its run, so a fold finished meanwhile by another process is not
trained twice),
collects every fold's validation metrics (adding HD95 etc. to summaries that lack them), optionally predicts a
held-out test set with each trainer's fold ensemble (``--test-folds``), and writes into one folder:

* ``results.csv``: trainer, fold, class, case, metric, value, split, output (long format, see collect.py);
* ``summary.md``: mean ± std over folds per trainer and class (HiDiff trainers: refined, and their segmentor
  alone), paired tests, refined vs segmentor per HiDiff trainer, the folds' refine decisions and the as-decided
  result, speed, wall time, the command line;
* ``benchmark.png``: per-fold Dice and HD95, trainers (and HiDiff segmentors alone) side by side;
* ``logs/``: one log file per nnU-Net subprocess; ``timings.json``: measured training times; ``test/``: test-set
  predictions (reused while the folds and images are unchanged): ``test/<trainer>`` for plain trainers,
  ``test/<trainer>__refined``, ``test/<trainer>__segmentor`` and ``test/<trainer>__decided`` for HiDiff trainers,
  predicted with ``nnUNet_HiDiff_refine=1``, ``=0``, and with none of the prediction settings (each fold as its
  decision says).

A HiDiff fold (see nnunetv2_hidiff.training.fold_record) contributes its ``validation_refined/`` and
``validation_segmentor/`` summaries; budgets, warm starts, decisions and speeds come from the folds'
``hidiff_fold.json`` records.

Exit status: 0 = everything ran and was collected; 1 = some training/prediction/evaluation failed (the results of
the rest are still written; the messages name the log files); 2 = bad input (unknown dataset or trainer,
missing preprocessed data, unequal budgets, nothing to collect).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from nnunetv2_hidiff.training.inference_settings import ENV_COMBINE, ENV_GATE, ENV_REFINE, ENV_STEPS

from .budget import BenchmarkError, check_equal_budgets, resolve_trainers
from .collect import (DECIDED, ENSEMBLE, REFINED, SEGMENTOR, TEST, VALIDATION, Collected, collect_summary,
                      has_hidiff_metrics, is_hidiff, load_summary, sort_rows, write_csv)
from .report import Prediction, ReportInput, write_figure, write_markdown
from .report_hidiff import refined_steps
from .runner import (COMPLETE, Job, JobResult, TimingStore, checkpoint_id, cli_path, fold_folder, fold_records,
                     fold_state, fold_wall_time, log_name, pool_decision, refreshed, run_logged, subprocess_env,
                     train_command, trainers_dir, validation_outputs, warm_start_source)

PROG = "nnunetv2_hidiff_benchmark"
DEFAULT_TRAINERS = ["nnUNetTrainerBaseline_5epochs", "nnUNetTrainerHiDiff_5epochs"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compare trainers (default: plain nnU-Net vs HiDiff at the same epoch budget) on nnU-Net's "
                    "cross-validation folds: train missing folds with nnUNetv2_train (resuming interrupted ones), "
                    "collect the validation metrics, and write results.csv, summary.md and benchmark.png.",
        epilog="The default trainers train 5 epochs (a quick CPU look, not a converged model); for a real comparison "
               "pick larger equal budgets, e.g. --trainers nnUNetTrainerBaseline_50epochs nnUNetTrainerHiDiff_50epochs "
               "(or the unsuffixed trainers for nnU-Net's 1000 epochs).")
    p.add_argument("-d", "--dataset", required=True, help="dataset ID or DatasetXXX_Name")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration. Default: 2d")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    p.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS,
                   help="trainers to compare; the first is the reference of the differences. "
                        f"Default: {' '.join(DEFAULT_TRAINERS)}")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds. Default: 0 1 2 3 4")
    p.add_argument("--collect-only", action="store_true",
                   help="train nothing: collect the complete folds and report the others as missing (a test set "
                        "is still predicted, or its earlier predictions reused, from the complete folds)")
    p.add_argument("--allow-unequal-budgets", action="store_true",
                   help="compare trainers whose epochs × iterations differ (or cannot be determined)")
    p.add_argument("-o", "--output", help="output folder. Default: $nnUNet_results/<Dataset>/"
                                          "benchmark_<T1>_vs_<T2>__<plans>__<configuration>")
    p.add_argument("--test-images", help="held-out images (nnU-Net naming, CASE_0000.ext) to predict with each "
                                         "trainer's fold ensemble")
    p.add_argument("--test-labels", help="reference segmentations of --test-images")
    p.add_argument("--test-fov", help="FOV masks of the test cases (same file names as the labels): HD95, "
                                      "Sensitivity, Specificity, Accuracy and Dice_FOV are computed inside the FOV")
    p.add_argument("--test-folds", nargs="+", type=int, default=None,
                   help="folds whose ensemble predicts the test set, the same for every trainer (a subset of "
                        "--folds). Default: each trainer's complete folds")
    p.add_argument("--pooled-decision", action="store_true",
                   help="before collecting, make each HiDiff trainer's refinement decision on the pooled validation "
                        "cases of all --folds and write it into every fold, as nnunetv2_hidiff_decide does (this "
                        "changes the models: the test set as decided follows it)")
    p.add_argument("--disable-tta", action="store_true", help="test prediction without mirroring TTA (faster)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="Default: cpu")
    p.add_argument("-np", "--num-processes", type=int, default=None,
                   help="processes for evaluation and prediction. Default: $nnUNet_def_n_proc or 2")
    return p


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def _status(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


# ---------------------------------------------------------------- input checks
def _dataset_name(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset if dataset.startswith("Dataset") else int(dataset))
    except ValueError:
        raise BenchmarkError(f"dataset {dataset!r} is neither an ID nor a DatasetXXX_Name") from None
    except RuntimeError:
        raise BenchmarkError(f"unknown dataset {dataset}: not found in $nnUNet_raw, $nnUNet_preprocessed or "
                             f"$nnUNet_results") from None


def _check_preprocessed(dataset_name: str, plans: str, configuration: str) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = os.environ.get("nnUNet_preprocessed")
    if not pre:
        raise BenchmarkError("nnUNet_preprocessed is not set (training needs the preprocessed data)")
    plans_file = Path(pre) / dataset_name / f"{plans}.json"
    if not plans_file.is_file():
        raise BenchmarkError(f"{plans_file}: plans file missing; run nnUNetv2_plan_and_preprocess -d <ID> -c "
                             f"{configuration} (or nnunetv2_hidiff_plan for derived plans) first")
    try:
        data_id = PlansManager(str(plans_file)).get_configuration(configuration).data_identifier
    except Exception:
        raise BenchmarkError(f"{plans_file}: has no configuration {configuration!r}") from None
    if not (Path(pre) / dataset_name / data_id).is_dir():
        raise BenchmarkError(f"{Path(pre) / dataset_name / data_id}: preprocessed data missing; run "
                             f"nnUNetv2_preprocess -d <ID> -plans_name {plans} -c {configuration} first")


def _check_test_args(args) -> None:
    if bool(args.test_images) != bool(args.test_labels):
        raise BenchmarkError("--test-images and --test-labels go together")
    if args.test_fov and not args.test_images:
        raise BenchmarkError("--test-fov needs --test-images and --test-labels")
    if args.test_folds is not None:
        if not args.test_images:
            raise BenchmarkError("--test-folds needs --test-images and --test-labels")
        outside = sorted(set(args.test_folds) - set(args.folds))
        if outside:
            raise BenchmarkError(f"--test-folds {' '.join(map(str, outside))}: not among --folds "
                                 f"{' '.join(map(str, sorted(set(args.folds))))}")
    for opt in ("test_images", "test_labels", "test_fov"):
        value = getattr(args, opt)
        if value and not Path(value).is_dir():
            raise BenchmarkError(f"--{opt.replace('_', '-')} {value}: not a folder")


def default_output(results: Path, dataset_name: str, trainers: Sequence[str], plans: str, configuration: str) -> Path:
    name = "_vs_".join(trainers)
    if len(name) > 120:
        name = hashlib.sha1("\n".join(trainers).encode()).hexdigest()[:12]
    return results / dataset_name / f"benchmark_{name}__{plans}__{configuration}"


# ---------------------------------------------------------------- test set
def _test_cases(images: Path, file_ending: str) -> List[str]:
    suffix = "_0000" + file_ending
    return sorted(p.name[: -len(suffix)] for p in images.iterdir() if p.name.endswith(suffix))


FOLLOW_DECISION = "decision"  # the `refine` of a prediction that forces no setting: each fold follows its decision
FORCING_VARIABLES = (ENV_REFINE, ENV_COMBINE, ENV_GATE, ENV_STEPS)  # the settings that override a fold's decision
_OUTPUT_OF_REFINE = {"1": REFINED, "0": SEGMENTOR, FOLLOW_DECISION: DECIDED}


def test_outputs(hidiff: bool) -> List[Tuple[str, Optional[str]]]:
    """(output, value of nnUNet_HiDiff_refine) per test-set prediction of a trainer: HiDiff trainers predict
    refined (``1``), with the segmentor alone (``0``) and as decided (:data:`FOLLOW_DECISION`: none of
    :data:`FORCING_VARIABLES` set); the others once, with the environment as it is."""
    return [(REFINED, "1"), (SEGMENTOR, "0"), (DECIDED, FOLLOW_DECISION)] if hidiff else [(SEGMENTOR, None)]


def test_prediction_dir(out: Path, trainer: str, refine: Optional[str]) -> Path:
    """``test/<trainer>`` (plain trainers), ``test/<trainer>__refined`` / ``__segmentor`` / ``__decided``
    (HiDiff)."""
    if refine is None:
        return out / "test" / trainer
    return out / "test" / f"{trainer}__{_OUTPUT_OF_REFINE[refine]}"


def refined_validation_steps(trainer_dir: Path, folds: Sequence[int]) -> Optional[int]:
    """The steps of the folds' refined validation (``validation.refined.steps`` of their records), if they all
    name the same; else None."""
    steps = {refined_steps(r or {}) for r in fold_records(trainer_dir, folds).values()}
    return steps.pop() if len(steps) == 1 and isinstance(next(iter(steps)), int) else None


def prediction_env(env: Dict[str, str], refine: Optional[str], refined_steps: Optional[int] = None) -> Dict[str, str]:
    """The environment of a test-set prediction: ``env`` as it is (None), with nnUNet_HiDiff_refine set (``1``,
    ``0``), or without any of :data:`FORCING_VARIABLES` (:data:`FOLLOW_DECISION`). The forced refined prediction
    (``1``) uses ``refined_steps`` (the steps of the refined validation) unless the user set nnUNet_HiDiff_steps:
    otherwise a fold that decided for refinement at other steps would predict the test set at those, and the
    test set's refined row would not be the validation's."""
    if refine is None:
        return dict(env)
    if refine == FOLLOW_DECISION:
        return {k: v for k, v in env.items() if k not in FORCING_VARIABLES}
    out = dict(env, nnUNet_HiDiff_refine=refine)
    if refine == "1" and refined_steps and not env.get(ENV_STEPS):
        out[ENV_STEPS] = str(refined_steps)
    return out


def _predict_test(args, dataset_name: str, trainer: str, trainer_dir: Path, folds: List[int], out_dir: Path,
                  logs: Path, env: Dict[str, str], n_proc: int, file_ending: str,
                  refine: Optional[str] = None) -> tuple:
    """Predict (or reuse) the test set with the ensemble of ``folds`` (``refine``: the value of
    nnUNet_HiDiff_refine, :data:`FOLLOW_DECISION` to unset the forcing variables, None to leave the environment
    as it is; see :func:`prediction_env`); returns (ok, seconds or None, log or None,
    number of cases). The seconds of a reused prediction are those measured when it was made."""
    images = Path(args.test_images).resolve()
    cases = _test_cases(images, file_ending)
    if not cases:
        raise BenchmarkError(f"--test-images {images}: no files named CASE_0000{file_ending}")
    expected = {
        "images": str(images), "cases": cases, "folds": folds, "disable_tta": bool(args.disable_tta),
        "checkpoints": {str(f): checkpoint_id(fold_folder(trainer_dir, f)) for f in folds},
    }
    if refine is not None:
        expected["nnUNet_HiDiff_refine"] = refine
    env = prediction_env(env, refine, refined_validation_steps(trainer_dir, folds) if refine == "1" else None)
    if refine == "1" and env.get(ENV_STEPS):
        expected[ENV_STEPS] = env[ENV_STEPS]
    marker = out_dir / ".benchmark_prediction.json"
    if marker.is_file() and all((out_dir / (c + file_ending)).is_file() for c in cases):
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = None
        if previous and previous.get("inputs") == expected:
            return True, previous.get("seconds"), None, len(cases)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cmd = [cli_path("nnUNetv2_predict"), "-i", str(images), "-o", str(out_dir), "-d", dataset_name,
           "-c", args.configuration, "-p", args.plans, "-tr", trainer, "-f", *map(str, folds),
           "-device", args.device, "-npp", str(n_proc), "-nps", str(n_proc)]
    if args.disable_tta:
        cmd.append("--disable_tta")
    label = "test" if refine is None else f"test-{_OUTPUT_OF_REFINE[refine]}"
    log = logs / log_name(trainer, label, "predict")
    rc, seconds = run_logged(cmd, env, log)
    if rc != 0 or not all((out_dir / (c + file_ending)).is_file() for c in cases):
        return False, seconds, log, len(cases)
    from nnunetv2_hidiff.atomic import atomic_write_text

    atomic_write_text(marker, json.dumps({"inputs": expected, "seconds": seconds}, indent=2) + "\n")
    return True, seconds, log, len(cases)


def ensemble_folds(complete: Sequence[int], requested: Optional[Sequence[int]]) -> List[int]:
    """The folds that predict the test set: ``requested`` if all of them are complete (else none: a smaller
    ensemble than asked for would not be comparable between trainers), by default every complete fold."""
    if requested is None:
        return sorted(complete)
    return sorted(set(requested)) if set(requested) <= set(complete) else []


def _add_hidiff_metrics(fold: Path, prediction_folder: Path, n_proc: int) -> None:
    """Extend a validation output's summary.json with HD95 & co. (nnU-Net's fold layout: that fold's cases
    against ``$nnUNet_preprocessed/<dataset>/gt_segmentations``). Raises EvaluationError."""
    from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_fold, evaluate_folder

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its reader/writer choice
        if prediction_folder.name == "validation":
            evaluate_fold(str(fold), num_processes=n_proc, chill=True)
            return
        trainer_dir = fold.parent
        pre = os.environ.get("nnUNet_preprocessed")
        if not pre:
            raise EvaluationError("nnUNet_preprocessed is not set; it is needed to find gt_segmentations")
        try:
            dataset = json.loads((trainer_dir / "plans.json").read_text())["dataset_name"]
        except (OSError, ValueError, KeyError) as e:
            raise EvaluationError(f"{trainer_dir / 'plans.json'}: cannot read the dataset name ({e})") from None
        evaluate_folder(str(Path(pre) / dataset / "gt_segmentations"), str(prediction_folder),
                        str(trainer_dir / "dataset.json"), str(trainer_dir / "plans.json"),
                        num_processes=n_proc, chill=True)


def _collect_fold(j: Job, hidiff: bool, record: Optional[dict], dataset_json: dict, n_proc: int,
                  problems: List[str]) -> List[Collected]:
    """The validation rows of a complete fold, one Collected per output (HiDiff: refined and segmentor)."""
    from nnunetv2_hidiff.evaluation.folder import EvaluationError
    from nnunetv2_hidiff.training.fold_record import OUTPUT_FOLDERS

    outputs = validation_outputs(j.folder, hidiff)
    if hidiff and (record or {}).get("kind") == "hidiff":
        found = {f.parent.name for _, f in outputs}
        for output, folder in OUTPUT_FOLDERS.items():
            if folder not in found:
                problems.append(f"{j.trainer} fold {j.fold}: {j.folder / folder / 'summary.json'} missing, so "
                                f"no {output} rows (validate the fold again: nnUNetv2_train ... --val)")
    out = []
    for output, summary_file in outputs:
        summary = load_summary(summary_file)
        if not has_hidiff_metrics(summary):
            try:
                _add_hidiff_metrics(j.folder, summary_file.parent, n_proc)
                summary = load_summary(summary_file)
                _status(f"{j.trainer} fold {j.fold}: HD95 etc. added to {summary_file}")
            except EvaluationError as e:
                problems.append(f"{j.trainer} fold {j.fold}: could not add HD95 etc. to {summary_file}: {e}")
        out.append(collect_summary(summary, j.trainer, str(j.fold), VALIDATION, dataset_json, output))
    return out


def _pool_decisions(trainers: Sequence[str], trainer_dirs: Dict[str, Path], folds: List[int],
                    problems: List[str]) -> None:
    """--pooled-decision: one decision per HiDiff trainer over all requested folds (all of them complete)."""
    from nnunetv2_hidiff.training.pooled_decision import PooledDecisionError

    records = {t: fold_records(trainer_dirs[t], folds) for t in trainers}
    for t, is_h in _trainers_hidiff(trainers, records).items():
        if not is_h:
            continue
        incomplete = [f for f in folds if fold_state(fold_folder(trainer_dirs[t], f)) != COMPLETE]
        if incomplete:
            problems.append(f"{t}: no pooled decision: fold(s) {', '.join(map(str, incomplete))} not complete")
            continue
        try:
            _status(f"{t}: " + pool_decision(trainer_dirs[t], folds))
        except PooledDecisionError as e:
            problems.append(f"{t}: no pooled decision: {e}")


def _trainers_hidiff(trainers: Sequence[str], records: Dict[str, Dict[int, Optional[dict]]]) -> Dict[str, bool]:
    return {t: is_hidiff(t, records.get(t, {}).values()) for t in trainers}


# ---------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = " ".join([PROG] + [shlex.quote(a) for a in argv])
    try:
        return _run(args, command)
    except BenchmarkError as e:
        return _fail(str(e))


def _run(args, command: str) -> int:
    from tqdm import tqdm

    from nnunetv2_hidiff.evaluation.folder import EvaluationError, evaluate_folder

    if not os.environ.get("nnUNet_results"):
        raise BenchmarkError("nnUNet_results is not set")
    folds = sorted(set(args.folds))
    if any(f < 0 for f in folds):
        raise BenchmarkError(f"folds must be >= 0, got {args.folds}")
    dataset_name = _dataset_name(str(args.dataset))
    results = Path(os.environ["nnUNet_results"])
    out = Path(args.output) if args.output else default_output(results, dataset_name, args.trainers, args.plans,
                                                               args.configuration)
    ours = trainers_dir()
    env = subprocess_env(ours)
    trainer_dirs = {t: results / dataset_name / f"{t}__{args.plans}__{args.configuration}" for t in args.trainers}
    records = {t: fold_records(trainer_dirs[t], folds) for t in args.trainers}
    budgets = resolve_trainers(args.trainers, env["nnUNet_extTrainer"], records)
    if not args.allow_unequal_budgets:
        check_equal_budgets(budgets)
    _check_test_args(args)
    if not args.collect_only:
        _check_preprocessed(dataset_name, args.plans, args.configuration)
    n_proc = args.num_processes or int(os.environ.get("nnUNet_def_n_proc", "2") or 2)

    jobs = [Job(t, f, fold_folder(trainer_dirs[t], f), fold_state(fold_folder(trainer_dirs[t], f)))
            for t in args.trainers for f in folds]
    if args.collect_only and not any(j.state == COMPLETE for j in jobs):
        raise BenchmarkError(f"--collect-only: no complete fold of {', '.join(args.trainers)} (folds "
                             f"{', '.join(map(str, folds))}) under {results / dataset_name}")
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    timings = TimingStore(out / "timings.json")
    problems: List[str] = []
    to_run = [] if args.collect_only else [j for j in jobs if j.state != COMPLETE]
    for j in jobs:
        if j.state == COMPLETE:
            _status(f"{j.trainer} fold {j.fold}: complete, collecting")
        elif args.collect_only:
            _status(f"{j.trainer} fold {j.fold}: {j.state.replace('_', ' ')}, reported as missing (--collect-only)")
    hidiff = _trainers_hidiff(args.trainers, records)  # again after training: new folds bring records
    n_test = sum(len(test_outputs(hidiff[t])) for t in args.trainers) if args.test_images else 0
    if to_run:
        _status(f"{len(to_run)} nnUNetv2_train run(s) needed: "
                + ", ".join(f"{j.action} {j.trainer} fold {j.fold}" for j in to_run) + f"; logs in {logs}")
    dataset_json = None

    bar = tqdm(total=len(to_run) + n_test, unit="job", desc="benchmark", file=sys.stderr, dynamic_ncols=True,
               disable=(len(to_run) + n_test == 0))
    try:
        for planned in to_run:
            j = refreshed(planned)
            if j.action is None:
                _status(f"{j.trainer} fold {j.fold}: completed by another process meanwhile, not run again")
                bar.update(1)
                continue
            bar.set_postfix_str(f"{j.action} {j.trainer} fold {j.fold}")
            log = logs / log_name(j.trainer, f"fold{j.fold}", j.action)
            rc, seconds = run_logged(train_command(dataset_name, args.configuration, j, args.plans, args.device),
                                     env, log)
            res = JobResult(j, rc, seconds, log)
            if res.ok:
                if j.action == "train":
                    timings.record(j.trainer, j.fold, j.folder, seconds)
                    timings.save()
                _status(f"{j.trainer} fold {j.fold}: {j.action} done in {seconds:.0f} s (log: {log})")
            else:
                why = (f"exit code {rc}" if rc != 0
                       else "finished without checkpoint_final.pth + validation/summary.json")
                msg = f"{j.trainer} fold {j.fold}: {j.action} FAILED ({why}); see {log}"
                problems.append(msg)
                _status(msg)
            bar.update(1)

        if args.pooled_decision:
            _pool_decisions(args.trainers, trainer_dirs, folds, problems)

        # ---- collect validation
        collected: List[Collected] = []
        missing: Dict[str, List[str]] = {t: [] for t in args.trainers}
        wall: Dict[str, list] = {t: [] for t in args.trainers}
        complete_folds: Dict[str, List[int]] = {t: [] for t in args.trainers}
        warm_starts: Dict[str, Dict[int, str]] = {}
        records = {t: fold_records(trainer_dirs[t], folds) for t in args.trainers}
        hidiff = _trainers_hidiff(args.trainers, records)
        for j in jobs:
            state = fold_state(j.folder)
            if state != COMPLETE:
                missing[j.trainer].append(f"{j.fold} ({state.replace('_', ' ')})")
                continue
            if dataset_json is None:
                dataset_json = json.loads((trainer_dirs[j.trainer] / "dataset.json").read_text())
            collected += _collect_fold(j, hidiff[j.trainer], records[j.trainer][j.fold], dataset_json, n_proc,
                                       problems)
            complete_folds[j.trainer].append(j.fold)
            source = warm_start_source(j.folder)
            if source:
                warm_starts.setdefault(j.trainer, {})[j.fold] = source
            wall[j.trainer].append((j.fold, *fold_wall_time(timings, j.trainer, j.fold, j.folder)))
        if not collected:
            raise BenchmarkError("no fold could be collected (all runs failed?); see the messages above")

        # ---- held-out test set
        test_predictions: Dict[Tuple[str, str], Prediction] = {}
        test_folds: Dict[str, List[int]] = {}
        if args.test_images:
            file_ending = dataset_json["file_ending"]
            for t in args.trainers:
                outputs = test_outputs(hidiff[t])
                ensemble = ensemble_folds(complete_folds[t], args.test_folds)
                if not ensemble:
                    incomplete = sorted(set(args.test_folds or []) - set(complete_folds[t]))
                    problems.append(f"{t}: no test-set prediction: " + (
                        f"--test-folds {' '.join(map(str, incomplete))} not complete" if incomplete
                        else "no complete fold"))
                    bar.update(len(outputs))
                    continue
                test_folds[t] = ensemble
                for output, refine in outputs:
                    name = t if refine is None else f"{t} ({output})"
                    bar.set_postfix_str(f"test {name}")
                    pred_dir = test_prediction_dir(out, t, refine)
                    ok, seconds, log, n_cases = _predict_test(args, dataset_name, t, trainer_dirs[t], ensemble,
                                                              pred_dir, logs, env, n_proc, file_ending, refine)
                    test_predictions[(t, output)] = Prediction(seconds, n_cases)
                    bar.update(1)
                    if not ok:
                        msg = f"{name}: test-set prediction FAILED; see {log}"
                        problems.append(msg)
                        _status(msg)
                        continue
                    _status(f"{name}: test set predicted with folds {ensemble}"
                            + (f" in {seconds:.0f} s (log: {log})" if log else " (reused)"))
                    try:
                        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its reader/writer choice
                            evaluate_folder(args.test_labels, str(pred_dir), str(trainer_dirs[t] / "dataset.json"),
                                            str(trainer_dirs[t] / "plans.json"), fov_folder=args.test_fov,
                                            num_processes=n_proc)
                    except EvaluationError as e:
                        problems.append(f"{name}: test-set evaluation failed: {e}")
                        continue
                    summary = load_summary(pred_dir / "summary.json")  # the JSON form (string label keys)
                    collected.append(collect_summary(summary, t, ENSEMBLE, TEST, dataset_json, output))
    finally:
        bar.close()

    # ---- write
    rows = sort_rows([r for c in collected for r in c.rows], args.trainers)
    budgets = resolve_trainers(args.trainers, env["nnUNet_extTrainer"], records)  # now with the new folds' records
    report = ReportInput(
        dataset=dataset_name, configuration=args.configuration, plans=args.plans, trainers=list(args.trainers),
        folds=folds, command=command, rows=rows,
        nan_counts={(c.trainer, c.split, c.fold, c.output): c.nan_counts for c in collected},
        small_objects={(c.trainer, c.split, c.fold, c.output): c.small_objects for c in collected
                       if c.small_objects},
        small_definition=next((c.small_definition for c in collected if c.small_definition), ""),
        budgets={t: str(b) for t, b in budgets.items()}, warm_starts=warm_starts, wall_times=wall,
        test_predictions=test_predictions, test_folds=test_folds,
        test_fov=args.test_fov, test_images=args.test_images, missing=missing, problems=problems,
        generated=time.strftime("%Y-%m-%d %H:%M:%S"), hidiff=[t for t in args.trainers if hidiff[t]],
        records={t: {str(f): records[t][f] for f in complete_folds[t] if records[t][f]} for t in args.trainers})
    write_csv(rows, out / "results.csv")
    write_markdown(report, out / "summary.md")
    write_figure(report, out / "benchmark.png")
    print(f"{PROG}: wrote {out / 'results.csv'}, {out / 'summary.md'}, {out / 'benchmark.png'}")
    if problems:
        print(f"{PROG}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    return 0

