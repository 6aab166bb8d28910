"""What a HiDiff or Baseline trainer writes into its fold folder for other components to read.

Components (the benchmark, the predictor's decision, users' scripts) learn about a finished fold from
these files only, never from log text or source code:

``fold_k/hidiff_fold.json`` (FOLD_RECORD), a JSON object updated during training and validation:
    trainer                 class name
    kind                    "hidiff" or "baseline"
    budget                  {"epochs", "iterations_per_epoch", "val_iterations_per_epoch", "warmup_epochs",
                             "batch_size"}
    warm_start              path of the segmentor checkpoint the fold started from, or null
    oof_priors              {"j": checkpoint} of the other folds' segmentors whose out-of-fold priors the
                            refiner learned from (oof_priors.py); absent when off
    seconds_per_iteration   median over epochs of (training-loop seconds / iterations), or null
    validation              {"segmentor": {...}, "refined": {...}} for HiDiff folds: per output the
                            folder name, the number of cases, seconds per case and foreground Dice/HD95
    decision                HiDiff folds after validation: {"refine": bool, "steps": int, "combine": str,
                             ["gate": [add, remove],] "reason": str, "checkpoint": the checkpoint file in the
                             fold folder that carries the decision (absent before 2026-12-06),
                             "candidates": [{"refine", "steps", "combine", ["gate",] "dice", "hd95"}, ...],
                             after nnunetv2_hidiff_decide also "pooled": {"folds", "cases"},
                             "fold_decision": the fold's own decision it replaced and "checkpoint_rewritten":
                             {"from", "to"}, the file_identity of that checkpoint as training left it and as the
                             decision left it}
                            (combine: "none", the refined output, "new_components", the segmentor's output
                            plus the refined components it does not reach, "union", plus all refined
                            foreground, "average", the mean of both outputs' probabilities, or "gated", the
                            refined label where its refined probability exceeds gate[0] on the segmentor's
                            background and gate[1] elsewhere; absent in records before 2026-12-05)
The validation outputs of a HiDiff fold:
    fold_k/validation/              nnU-Net's folder: the output as decided (what find_best_configuration,
                                    postprocessing and ensembling read)
    fold_k/validation_refined/      refinement forced on (default steps)
    fold_k/validation_segmentor/    the segmentor alone
    fold_k/validation_refined_{k}steps/, validation_{combined,union,average}[_{k}steps]/,
    fold_k/validation_gated_a{add}_r{remove}[_{k}steps]/: the other candidates of the decision
each with nnU-Net's summary.json extended by the HiDiff metrics (HD95 & co).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Union

from nnunetv2_hidiff.atomic import atomic_write_bytes

FOLD_RECORD = "hidiff_fold.json"
VALIDATION = "validation"
VALIDATION_REFINED = "validation_refined"
VALIDATION_SEGMENTOR = "validation_segmentor"
VALIDATION_COMBINED = "validation_combined"  # the segmentor plus the refined components it does not reach
VALIDATION_UNION = "validation_union"  # the segmentor's foreground plus the refined foreground
VALIDATION_AVERAGE = "validation_average"  # the mean of the segmentor's and the refined probabilities
VALIDATION_GATED = "validation_gated"  # + _a{add}_r{remove} (per mille): the refined label where it exceeds the gate
OUTPUT_FOLDERS = {"refined": VALIDATION_REFINED, "segmentor": VALIDATION_SEGMENTOR}


def output_key(entry: dict) -> tuple:
    """Which output a validation entry, candidate or decision names: (refine, steps, combine, gate); steps count only
    when refining, a missing combine is "none" (records before 2026-12-05), the gate is a tuple or ()."""
    gate = entry.get("gate")
    return (bool(entry.get("refine")), entry.get("steps") if entry.get("refine") else 0,
            entry.get("combine", "none"), tuple(gate) if gate else ())


def file_identity(path: Union[str, Path]) -> Optional[List[int]]:
    """[mtime_ns, size] of a file, None if it is absent: tells whether a checkpoint was rewritten."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def read_fold_record(folder: Union[str, Path]) -> Optional[dict]:
    """The fold's record, or None when the fold has none (older runs, foreign trainers) or it is unreadable."""
    path = Path(folder) / FOLD_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def update_fold_record(folder: Union[str, Path], **updates) -> dict:
    """Merge ``updates`` (top-level keys) into the fold's record and write it atomically; returns the record."""
    record = read_fold_record(folder) or {}
    record.update(updates)
    atomic_write_bytes(Path(folder) / FOLD_RECORD, (json.dumps(record, indent=2, default=str) + "\n").encode())
    return record
