"""What each refinement decision rule would choose on the folds already validated (issue 12, item 5).

    python benchmarks/decision_rules.py RECORD.json [RECORD.json ...] [--min-dice-gain G ...] [--json out]

RECORD: a fold record (hidiff_fold.json, or a committed copy) whose ``decision.candidates`` hold the segmentor
alone and every refined candidate of that fold's validation. The rules are the trainer's own ``decide`` with
``min_dice_gain`` G: a candidate is chosen only if its Dice exceeds the segmentor's + G and its HD95 is not higher;
G = 0 is the default (``nnUNetTrainerHiDiff.decision_min_dice_gain``), a negative G tolerates that Dice loss.
Nothing is re-predicted: this reads the validation scores the trainer wrote.
"""
import argparse
import json
import os
import sys

from nnunetv2_hidiff.networks.combine import gate_name
from nnunetv2_hidiff.training.fold_record import output_key
from nnunetv2_hidiff.training.validation import decide


def _candidates(path: str):
    try:
        with open(path) as f:
            record = json.load(f)
        cands = record["decision"]["candidates"]
    except (OSError, ValueError) as e:
        sys.exit(f"decision_rules: {path}: cannot read it as JSON ({e})")
    except (KeyError, TypeError):
        sys.exit(f"decision_rules: {path}: no decision.candidates (not a validated HiDiff fold record)")
    seg = [c for c in cands if not c["refine"]]
    if len(seg) != 1:
        sys.exit(f"decision_rules: {path}: expected one segmentor-alone candidate, found {len(seg)}")
    return seg[0], [c for c in cands if c["refine"]]


def _label(choice: dict) -> str:
    if not choice["refine"]:
        return "segmentor"
    gate = f" {gate_name(choice['gate'])}" if choice.get("gate") else ""
    return f"{choice['combine']}{gate} {choice['steps']} steps"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--min-dice-gain", type=float, nargs="+", default=[0.0, -0.001])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for path in a.records:
        seg, cands = _candidates(path)
        row = {"record": path, "segmentor": {"dice": seg["dice"], "hd95": seg["hd95"]}, "rules": {}}
        for g in a.min_dice_gain:
            d = decide(seg, cands, g)
            chosen = seg if not d["refine"] else next(
                c for c in cands if output_key(c) == output_key(d))
            row["rules"][str(g)] = {"choice": _label(d), "refine": d["refine"], "steps": d["steps"],
                                    "combine": d["combine"], **({"gate": d["gate"]} if "gate" in d else {}),
                                    "dice": chosen["dice"], "hd95": chosen["hd95"]}
        rows.append(row)
    head = "record | segmentor Dice / HD95 | " + " | ".join(f"min_dice_gain {g}" for g in a.min_dice_gain)
    print(head)
    for row in rows:
        cells = [f"{r['choice']}: {r['dice']:.4f} / {r['hd95']:.3f}" for r in row["rules"].values()]
        print(f"{os.path.basename(row['record'])} | {row['segmentor']['dice']:.4f} / {row['segmentor']['hd95']:.3f} | "
              + " | ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
