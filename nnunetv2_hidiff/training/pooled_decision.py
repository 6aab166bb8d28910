"""The refinement decision on the pooled cross-validation of several folds (``nnunetv2_hidiff_decide``).

Each HiDiff fold decides on its own validation cases after training (validation.py). nnU-Net decides
postprocessing on all folds' validation cases together (``nnUNetv2_find_best_configuration``); this module does the
same for refinement once the folds are trained: it pools every candidate's per-case results over the folds (each
class's nanmean over all cases, then the mean over classes, as nnU-Net's ``foreground_mean``), applies the same rule
(``validation.decide``) and writes the one decision into every fold, exactly where the fold's own decision was:
``validation/`` (a copy of the chosen candidate's folder, what find_best_configuration reads), the decision stored in
the checkpoint the fold validated, and the fold record (``decision``, with ``pooled`` and the replaced
``fold_decision``). Everything is read and checked before the first fold is written.
"""
from __future__ import annotations

import json
import math
import warnings
from os.path import basename, isfile, join
from typing import Dict, List, Sequence, Tuple

import numpy as np

import torch

from .fold_record import FOLD_RECORD, VALIDATION, file_identity, output_key, read_fold_record, update_fold_record
from .validation import SAMPLER_KEYS, decide, replace_folder, write_decision_into_checkpoint

class PooledDecisionError(ValueError):
    """A fold that cannot take part (no validated decision, a missing folder or summary); names the file."""


def _fold_outputs(fold: str) -> Tuple[dict, Dict[tuple, dict]]:
    """The fold's record and its validated outputs {key: validation entry}; raises PooledDecisionError."""
    record = read_fold_record(fold)
    if not record or "decision" not in record or not isinstance(record.get("validation"), dict):
        raise PooledDecisionError(f"{join(fold, FOLD_RECORD)}: no validated HiDiff decision in it (train the fold, "
                                  f"or run nnUNetv2_train ... --val, first)")
    outputs = {}
    for name, entry in record["validation"].items():
        if not isinstance(entry, dict) or "folder" not in entry:
            raise PooledDecisionError(f"{join(fold, FOLD_RECORD)}: validation entry {name!r} names no folder")
        outputs[output_key(entry)] = entry
    if output_key({"refine": False, "steps": 0}) not in outputs:
        raise PooledDecisionError(f"{join(fold, FOLD_RECORD)}: no validation of the segmentor alone")
    return record, outputs


def _cases(fold: str, folder: str) -> List[dict]:
    path = join(fold, folder, "summary.json")
    try:
        with open(path) as f:
            cases = json.load(f)["metric_per_case"]
        if not all(isinstance(c.get("metrics"), dict) for c in cases):
            raise KeyError("metric_per_case[...]['metrics']")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PooledDecisionError(f"{path}: not a readable nnU-Net summary.json ({type(e).__name__}: {e})") from None
    return cases


def pooled_score(cases: Sequence[dict]) -> dict:
    """Foreground Dice and HD95 of per-case summary entries pooled over folds: per class the nanmean over the cases,
    then the mean over the classes (nnU-Net's foreground_mean; HD95 as the extended summary computes it)."""
    labels = sorted({k for c in cases for k in c["metrics"] if k not in (0, "0")})
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN class
        for metric, key in (("dice", "Dice"), ("hd95", "HD95")):
            per_class = [np.nanmean([c["metrics"][k].get(key, math.nan) if k in c["metrics"] else math.nan
                                     for c in cases]) for k in labels]
            out[metric] = float(np.mean(per_class)) if per_class else math.nan
    return out


def decide_pooled(folds: Sequence[str], min_dice_gain: float = 0.0) -> Tuple[dict, Dict[str, dict]]:
    """The decision over the pooled validation cases of ``folds`` (fold folders) and each fold's record.
    Candidates are the outputs every fold validated; raises PooledDecisionError naming what is missing."""
    if not folds:
        raise PooledDecisionError("no folds given")
    fold_data = {fold: _fold_outputs(fold) for fold in folds}
    common = set.intersection(*(set(outputs) for _, outputs in fold_data.values()))
    scores, n_cases = {}, {}
    for key in sorted(common, key=repr):
        cases = [c for fold, (_, outputs) in fold_data.items() for c in _cases(fold, outputs[key]["folder"])]
        refine, steps, combine, gate = key
        entry = next(iter(fold_data.values()))[1][key]
        scores[key] = {"refine": refine, "steps": steps, "combine": combine,
                       **({"gate": list(gate)} if gate else {}),
                       **{k: entry[k] for k in SAMPLER_KEYS if refine and entry.get(k) is not None},
                       **pooled_score(cases)}
        n_cases[key] = len(cases)
    segmentor_key = output_key({"refine": False, "steps": 0})
    segmentor = scores.pop(segmentor_key)
    decision = decide(segmentor, list(scores.values()), min_dice_gain)
    cases = n_cases[segmentor_key]
    decision["reason"] = f"pooled over {len(folds)} folds ({cases} cases): {decision['reason']}"
    decision["candidates"] = [segmentor, *scores.values()]
    decision["pooled"] = {"folds": [basename(f.rstrip("/")) for f in folds], "cases": cases}
    return decision, {fold: record for fold, (record, _) in fold_data.items()}


def describe(decision: dict) -> str:
    """"segmentor alone" or "refine (combine, k steps[, gate add / remove])"."""
    if not decision["refine"]:
        return "segmentor alone"
    gate = decision.get("gate")
    return (f"refine ({decision.get('combine', 'none')}, {decision['steps']} steps"
            + (f", gate {' / '.join(map(str, gate))}" if gate else "") + ")")


def _same(a: dict, b: dict) -> bool:
    """Equal as the record stores them (JSON: tuples become lists, NaN equals NaN)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _explicit(checkpoint: str) -> bool:
    """Whether the checkpoint stores its decision explicitly (written after 2026-12-07)."""
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    return "_extra_state" in weights and "inference_decision" not in weights


_WRITTEN_KEYS = ("checkpoint", "fold_decision", "checkpoint_rewritten")  # what applying adds to the decision


def apply_pooled_decision(fold: str, record: dict, decision: dict) -> bool:
    """Write the pooled ``decision`` into one fold (its record as decide_pooled read it): validation/, the
    validated checkpoint's stored decision, the record. decide_pooled has read every candidate's summary in every
    fold, so the chosen folder exists. A fold that already carries this very decision is left untouched (False), so
    that running it again rewrites no checkpoint (the benchmark re-predicts a test set when one changes). The
    record keeps the checkpoint's identity as training left it (``checkpoint_rewritten``), so that a measured
    training time stays attached to the fold."""
    current = record["decision"]
    own = current.get("fold_decision", current)
    checkpoint = join(fold, own.get("checkpoint", "checkpoint_final.pth"))
    if "pooled" in current and _same({k: v for k, v in current.items() if k not in _WRITTEN_KEYS}, decision) \
            and (not isfile(checkpoint) or _explicit(checkpoint)):
        return False
    chosen = next(e for e in record["validation"].values() if output_key(e) == output_key(decision))
    replace_folder(join(fold, chosen["folder"]), join(fold, VALIDATION))
    rewritten = {}
    if isfile(checkpoint):
        before = file_identity(checkpoint)
        earlier = current.get("checkpoint_rewritten") or {}
        write_decision_into_checkpoint(checkpoint, decision)
        rewritten = {"checkpoint_rewritten": {"from": earlier["from"] if earlier.get("to") == before else before,
                                              "to": file_identity(checkpoint)}}
    own = {k: v for k, v in own.items() if k != "candidates"}
    update_fold_record(fold, decision={**decision, "checkpoint": basename(checkpoint), "fold_decision": own,
                                       **rewritten})
    return True
