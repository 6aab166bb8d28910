"""``nnunetv2_hidiff_decide``: one refinement decision for all folds, on their pooled validation cases.

    nnunetv2_hidiff_decide -i $nnUNet_results/Dataset902_DRIVE/nnUNetTrainerHiDiff__nnUNetPlans__2d -f 0 1 2 3 4

Each trained HiDiff fold has decided on its own validation cases whether prediction refines (and how); with few
validation cases per fold (DRIVE: 4) that choice is noisy. Run this once the folds are trained, as nnU-Net decides
postprocessing on the pooled cross-validation (``nnUNetv2_find_best_configuration``): it pools every output that all
folds validated, applies the same rule (refine only if the pooled foreground Dice rises by more than
``--min-dice-gain`` without a higher HD95) and writes that one decision into every fold (``validation/``, the
checkpoint that nnUNetv2_predict loads, ``hidiff_fold.json``; the fold's own decision is kept there as
``fold_decision``). Nothing is predicted again. ``--dry-run`` prints the decision without writing it.
"""
from __future__ import annotations

import argparse
import sys
from os.path import isdir, join

from nnunetv2_hidiff.training.pooled_decision import (PooledDecisionError, apply_pooled_decision, decide_pooled,
                                                      describe)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nnunetv2_hidiff_decide", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", required=True, help="the trained model folder (<trainer>__<plans>__<configuration>)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="the folds to pool (default 0..4)")
    parser.add_argument("--min-dice-gain", type=float, default=0.0,
                        help="the pooled Dice gain a refined output must exceed (default 0, nnU-Net's rule)")
    parser.add_argument("--dry-run", action="store_true", help="print the decision, write nothing")
    args = parser.parse_args(argv)
    folds = [join(args.i, f"fold_{f}") for f in args.f]
    missing = [f for f in folds if not isdir(f)]
    if missing:
        sys.exit(f"nnunetv2_hidiff_decide: {missing[0]}: no such fold folder")
    try:
        decision, records = decide_pooled(folds, args.min_dice_gain)
    except PooledDecisionError as e:
        sys.exit(f"nnunetv2_hidiff_decide: {e}")
    print(f"Pooled decision: {describe(decision)} ({decision['reason']})")
    for fold, record in records.items():
        print(f"  {fold}: its own decision was {describe(record['decision'].get('fold_decision', record['decision']))}")
    if args.dry_run:
        return
    written = sum(apply_pooled_decision(fold, record, decision) for fold, record in records.items())
    print(f"Written into {written} folds" + (f" ({len(records) - written} already carried it)."
                                             if written < len(records) else "."))


if __name__ == "__main__":
    main()
