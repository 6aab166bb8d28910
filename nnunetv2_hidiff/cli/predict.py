"""``nnunetv2_hidiff_predict``: nnUNetv2_predict with HiDiff's prediction-time options.

    nnunetv2_hidiff_predict --steps 5 --samples 4 -- -i imgs -o out -d 901 -c 2d -f 0 -tr nnUNetTrainerHiDiff

Everything after the HiDiff options (an optional ``--`` separates them) is passed to nnU-Net's own
``nnUNetv2_predict`` unchanged. The options become the nnUNet_HiDiff_* environment variables that the
HiDiff trainers read when nnU-Net's predictor builds the network (see
nnunetv2_hidiff.training.inference_settings), so plain ``nnUNetv2_predict`` honours them as well.
"""
from __future__ import annotations

import argparse
import os
import sys

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
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
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
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    sys.argv = ["nnUNetv2_predict"] + rest
    predict_entry_point()


if __name__ == "__main__":
    main()
