"""``nnunetv2_hidiff_predict``: nnUNetv2_predict with HiDiff's prediction-time options.

    nnunetv2_hidiff_predict --steps 5 --samples 4 -- -i imgs -o out -d 901 -c 2d -f 0 -tr nnUNetTrainerHiDiff

Everything after the HiDiff options (an optional ``--`` separates them) is passed to nnU-Net's own
``nnUNetv2_predict`` unchanged. The options become the nnUNet_HiDiff_* environment variables that the
HiDiff trainers read when nnU-Net's predictor builds the network (see
nnunetv2_hidiff.training.inference_settings), so plain ``nnUNetv2_predict`` honours them as well.

Before nnU-Net starts, the input folder is checked against the model's dataset.json and plans.json
(nnunetv2_hidiff.cli.input_check): every bad file is named with its problem on one line and nothing is predicted
(exit status 2), or with --skip-bad-inputs the cases with a bad file are left out and the others predicted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from nnunetv2_hidiff.networks.config import HiDiffConfigurationError
from nnunetv2_hidiff.training.inference_settings import (COMBINES, ENV_COMBINE, ENV_GATE, ENV_REFINE, ENV_SAMPLES,
                                                         ENV_SEED, ENV_STEPS, ENV_TRANSITION, TRANSITIONS, parse_gate)


def parse(argv):
    parser = argparse.ArgumentParser(prog="nnunetv2_hidiff_predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="DDIM steps (1..T), forced over each fold's decision")
    parser.add_argument("--samples", type=int, help="refinement samples averaged per patch (default 1)")
    parser.add_argument("--seed", type=int, help="sampler seed (default 0)")
    refine = parser.add_mutually_exclusive_group()
    refine.add_argument("--no-refine", action="store_true", help="force the segmentor's prediction, unrefined")
    refine.add_argument("--refine", action="store_true",
                        help="force refinement on (default: each fold's decision, made on its validation cases)")
    parser.add_argument("--transition", choices=TRANSITIONS,
                        help="intermediate DDIM states: 'renoise' (default), 'renoise_threshold', 'sample' "
                             "(Algorithm 2 verbatim) or 'threshold'")
    parser.add_argument("--combine", choices=COMBINES,
                        help="'none': the refined output; 'new_components': the segmentor's output plus the refined "
                             "components it does not reach; 'union': plus all refined foreground; 'average': the "
                             "mean of both outputs' probabilities; 'gated': the refined label where its refined "
                             "probability exceeds --gate (default: each fold's decision)")
    parser.add_argument("--gate", metavar="ADD,REMOVE",
                        help="gate of --combine gated: the refined probability an addition (segmentor background) "
                             "and a removal must exceed, e.g. 0.5,0.8 (default: the gate stored with the decision)")
    parser.add_argument("--uncertainty", nargs="+", metavar="SOURCE",
                        help="also write per-voxel uncertainty maps (normalised entropy of the mean predictive "
                             "distribution) into OUT/uncertainty_<SOURCE>/ and a row per case into "
                             "OUT/uncertainty.csv; SOURCE: samples (refiner samples, HiDiff models), softmax, "
                             "mirroring, folds (at least two -f folds); see nnunetv2_hidiff.cli.uncertainty")
    parser.add_argument("--uncertainty-samples", type=int, default=None, metavar="N",
                        help="refiner samples of --uncertainty samples (default 8, at least 2)")
    parser.add_argument("--skip-bad-inputs", action="store_true",
                        help="skip the input cases with a bad file and predict the others (default: name the bad "
                             "files and predict nothing)")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if "--skip-bad-inputs" in rest:  # also after "--": nnU-Net has no such option
        args.skip_bad_inputs = True
        rest = [a for a in rest if a != "--skip-bad-inputs"]
    if args.uncertainty:
        from nnunetv2_hidiff.cli.uncertainty import SOURCES

        unknown = [u for u in args.uncertainty if u not in SOURCES]
        if unknown:
            parser.error(f"--uncertainty: unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
        args.uncertainty = list(dict.fromkeys(args.uncertainty))
    if args.uncertainty_samples is not None and not (args.uncertainty and "samples" in args.uncertainty):
        parser.error("--uncertainty-samples goes with --uncertainty samples")
    for name, value in (("--steps", args.steps), ("--samples", args.samples)):
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if args.gate is not None:
        try:
            parse_gate(args.gate, "--gate")
        except ValueError as e:
            parser.error(str(e))
    return args, rest


def main(argv=None) -> None:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    for env, value in ((ENV_STEPS, args.steps), (ENV_SAMPLES, args.samples), (ENV_SEED, args.seed),
                       (ENV_TRANSITION, args.transition), (ENV_COMBINE, args.combine), (ENV_GATE, args.gate)):
        if value is not None:
            os.environ[env] = str(value)
    if args.no_refine or args.refine:
        os.environ[ENV_REFINE] = "1" if args.refine else "0"
    good_inputs = checked_inputs(rest, args.skip_bad_inputs)
    try:
        from nnunetv2.inference.predict_from_raw_data import predict_entry_point

        sys.argv = ["nnUNetv2_predict"] + rest + (["-i", good_inputs] if good_inputs else [])  # the last -i counts
        try:
            uncertainty = uncertainty_predictor(args, rest) if args.uncertainty else None  # refused before predicting
            predict_entry_point()
            if uncertainty is not None:
                from nnunetv2_hidiff.cli.uncertainty import input_cases, write_uncertainty_maps

                predictor, known, samples = uncertainty
                cases = input_cases(good_inputs or known.i, predictor.dataset_json["file_ending"])
                write_uncertainty_maps(args.uncertainty, predictor, cases, known.o, samples)
        except HiDiffConfigurationError as e:  # a checkpoint that does not fit the -tr class: the message says why
            print(f"nnunetv2_hidiff_predict: {e}", file=sys.stderr)
            sys.exit(2)
    finally:
        if good_inputs:
            shutil.rmtree(good_inputs, ignore_errors=True)


def uncertainty_predictor(args, rest):
    """(predictor, nnU-Net's arguments, samples) for --uncertainty, the request checked first (one line and exit
    status 2 when the model cannot serve it)."""
    import torch

    from nnunetv2_hidiff.cli.input_check import model_folder
    from nnunetv2_hidiff.cli.uncertainty import (DEFAULT_SAMPLES, UncertaintyRequestError, build_predictor,
                                                 check_request)

    known = nnunet_arguments(rest)
    if known is None:
        print("nnunetv2_hidiff_predict: --uncertainty needs nnUNetv2_predict's -i, -o, -d and -c", file=sys.stderr)
        sys.exit(2)
    folds = known.f if known.f else ["0", "1", "2", "3", "4"]  # nnUNetv2_predict's default
    device = torch.device(known.device or "cuda")
    if device.type == "cpu":
        import multiprocessing

        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_predict does
    samples = args.uncertainty_samples or DEFAULT_SAMPLES
    try:
        predictor = build_predictor(model_folder(known.d, known.tr, known.p, known.c), folds,
                                    known.chk or "checkpoint_final.pth", device,
                                    float(known.step_size) if known.step_size else 0.5, not known.disable_tta)
        check_request(args.uncertainty, predictor, folds, samples)
    except (UncertaintyRequestError, FileNotFoundError) as e:
        print(f"nnunetv2_hidiff_predict: {e}", file=sys.stderr)
        sys.exit(2)
    return predictor, known, samples


class _NotParsed(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    def error(self, message):
        raise _NotParsed(message)


def nnunet_arguments(rest):
    """nnUNetv2_predict's -i, -o, -d, -c, -p, -tr in ``rest`` (its defaults for -p and -tr), or None where nnU-Net
    would not run (help, missing or malformed arguments: its own parser then says so). nnU-Net's other one-dash
    options are declared too, so that argparse does not read e.g. -device as -d evice or -chk as -c hk."""
    if "-h" in rest or "--help" in rest:
        return None
    parser = _QuietParser(add_help=False)
    for name in ("-i", "-o", "-d", "-c"):
        parser.add_argument(name)
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-tr", default="nnUNetTrainer")
    parser.add_argument("-f", nargs="+")
    for name in ("-step_size", "-chk", "-npp", "-nps", "-prev_stage_predictions", "-num_parts", "-part_id",
                 "-device"):
        parser.add_argument(name)
    parser.add_argument("--disable_tta", action="store_true")
    try:
        known, _ = parser.parse_known_args(rest)
    except _NotParsed:
        return None
    if None in (known.i, known.o, known.d, known.c):
        return None
    return known


def checked_inputs(rest, skip_bad_inputs: bool):
    """Check nnUNetv2_predict's input folder (see nnunetv2_hidiff.cli.input_check). Bad files: one line each on
    stderr, then exit status 2, or with ``skip_bad_inputs`` a temporary folder linking the good cases' files, which
    is returned (None: predict the input folder as it is)."""
    known = nnunet_arguments(rest)
    if known is None:
        return None
    from nnunetv2_hidiff.cli.input_check import MissingModel, check_model_inputs

    try:
        check = check_model_inputs(known.i, known.d, known.tr, known.p, known.c)
    except MissingModel as e:
        print(f"nnunetv2_hidiff_predict: {e}", file=sys.stderr)
        sys.exit(2)
    if check is None:  # nnU-Net cannot find the model either: its own error follows
        return None
    for path, reason in check.warnings:
        print(f"{path}: warning: {reason}", file=sys.stderr)
    for path, reason in check.problems:
        print(f"{path}: {reason}", file=sys.stderr)
    if not check.problems:
        return None
    n_files = len({path for path, _ in check.problems})
    if not check.good_cases:
        print(f"nnunetv2_hidiff_predict: no good input case in {known.i}, nothing predicted.", file=sys.stderr)
        sys.exit(2)
    if not skip_bad_inputs:
        print(f"nnunetv2_hidiff_predict: {n_files} bad input file(s) in {known.i}, nothing predicted. Fix or remove "
              f"them, or add --skip-bad-inputs to predict the other {len(check.good_cases)} case(s).",
              file=sys.stderr)
        sys.exit(2)
    folder = tempfile.mkdtemp(prefix="nnunetv2_hidiff_inputs_")
    try:
        for files in check.good_cases.values():
            for f in files:
                target = os.path.join(folder, os.path.basename(f))
                try:
                    os.symlink(os.path.abspath(f), target)
                except OSError:
                    shutil.copy2(f, target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    print(f"nnunetv2_hidiff_predict: --skip-bad-inputs: leaving out {len(check.bad_cases)} case(s) with a bad file "
          f"({', '.join(check.bad_cases) or 'badly named files only'}), predicting the other "
          f"{len(check.good_cases)}.", file=sys.stderr)
    return folder


if __name__ == "__main__":
    main()
