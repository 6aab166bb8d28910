"""HiDiff's final validation: both outputs, and the per-fold decision whether refinement is used by default.

nnU-Net decides postprocessing on the validation cases of each fold; HiDiff decides refinement the same way.
``validate_and_decide`` runs nnU-Net's own validation (sliding window, export, summary.json) once with the
segmentor alone and once per refinement candidate, keeps each result in its own folder, and then

* decides: refinement (with the best candidate's steps, refined output or, with ``decision_combine``, the
  segmentor's output plus the refined components it does not reach, or plus all refined foreground, or, with
  ``decision_gates``, the refined label only where its refined probability exceeds a gate) only if it
  raises the mean foreground Dice and does not worsen the mean foreground HD95 against the segmentor alone;
  otherwise the segmentor alone;
* puts the decided output into ``validation/`` (what nnU-Net's find_best_configuration, postprocessing and
  ensembling read);
* stores the decision in the network (``HiDiffNetwork.inference_decision``, part of the state dict, so
  ``nnUNetv2_predict`` follows it per fold), in the validated checkpoint file, and in the fold record.

Folder and record names: fold_record.py.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from os.path import isdir, isfile, join
from typing import Callable, List, Optional

import torch

from nnunetv2_hidiff.atomic import atomic_torch_save

from .common import extend_validation_summary
from .distributed import barrier, broadcast_object
from nnunetv2_hidiff.networks.combine import (COMBINE_AVERAGE, COMBINE_GATED, COMBINE_NEW_COMPONENTS, COMBINE_NONE,
                                              COMBINE_UNION, check_gate, gate_name)

from .fold_record import (VALIDATION, VALIDATION_AVERAGE, VALIDATION_COMBINED, VALIDATION_GATED, VALIDATION_REFINED,
                          VALIDATION_SEGMENTOR, VALIDATION_UNION, output_key, update_fold_record)

COMBINED_FOLDERS = {COMBINE_NEW_COMPONENTS: VALIDATION_COMBINED, COMBINE_UNION: VALIDATION_UNION,
                    COMBINE_AVERAGE: VALIDATION_AVERAGE}


def replace_folder(source: str, target: str, move: bool = False) -> None:
    """Make ``target`` a copy of ``source`` (or ``source`` itself with move=True); the old ``target`` is
    removed only once the new one is complete."""
    staging = f"{target}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if move:
        os.replace(source, staging)
    else:
        shutil.copytree(source, staging)
    old = f"{target}.old"
    shutil.rmtree(old, ignore_errors=True)
    if isdir(target):
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _score(summary: Optional[dict], fallback_folder: str) -> dict:
    """Mean foreground Dice and HD95 of an (extended) summary; nnU-Net's summary.json if ours failed."""
    if summary is None and isfile(join(fallback_folder, "summary.json")):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        summary = load_json(join(fallback_folder, "summary.json"))
    fg = (summary or {}).get("foreground_mean", {})
    nan = float("nan")
    return {"dice": float(fg.get("Dice", nan)), "hd95": float(fg.get("HD95", nan))}


def decide(segmentor: dict, candidates: List[dict], min_dice_gain: float = 0.0) -> dict:
    """Choose among the refined candidates (dicts with refine, steps, dice, hd95, optional combine and gate) against the
    segmentor alone: the candidate with the highest Dice (then the lowest HD95) among those that beat the
    segmentor's Dice by more than ``min_dice_gain`` without a higher HD95 (an HD95 that only one side lacks
    counts as worse for that side)."""
    def hd95_not_worse(c: dict) -> bool:
        a, b = c["hd95"], segmentor["hd95"]
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b) or math.isnan(b)
        return a <= b

    better = [c for c in candidates if c["dice"] > segmentor["dice"] + min_dice_gain and hd95_not_worse(c)]
    if not better:
        return {"refine": False, "steps": 0, "combine": COMBINE_NONE,
                "reason": "no refined candidate raised the foreground Dice without worsening HD95"}
    best = max(better, key=lambda c: (c["dice"], -c["hd95"] if not math.isnan(c["hd95"]) else -math.inf))
    combine, gate = best.get("combine", COMBINE_NONE), best.get("gate")
    how = {COMBINE_NONE: "", COMBINE_NEW_COMPONENTS: " (the segmentor plus the refined components it does not reach)",
           COMBINE_UNION: " (the segmentor's foreground plus the refined foreground)",
           COMBINE_AVERAGE: " (the mean of the segmentor's and the refined probabilities)",
           COMBINE_GATED: " (the refined label where its refined probability exceeds {} on the segmentor's "
                          "background, {} elsewhere)".format(*(gate or ("?", "?")))}[combine]
    chosen = {"refine": True, "steps": best["steps"], "combine": combine}
    return {**chosen, **({"gate": list(check_gate(gate))} if combine == COMBINE_GATED else {}),
            "reason": f"refinement with {best['steps']} steps{how} raised the foreground Dice "
                      f"{segmentor['dice']:.4f} -> {best['dice']:.4f} (HD95 {segmentor['hd95']:.3f} -> "
                      f"{best['hd95']:.3f})"}


def write_decision_into_checkpoint(path: str, decision: torch.Tensor, gate: Optional[torch.Tensor] = None) -> None:
    """Store the decision buffer (and the gate buffer) in an existing checkpoint file (atomically), so
    nnUNetv2_predict sees it."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["network_weights"]["inference_decision"] = decision.detach().cpu().clone()
    if gate is not None:
        checkpoint["network_weights"]["inference_gate"] = gate.detach().cpu().clone()
    atomic_torch_save(checkpoint, path)


def validate_and_decide(trainer, run_validation: Callable[[bool], None], save_probabilities: bool = False) -> dict:
    """See the module docstring. ``run_validation(save_probabilities)`` is nnU-Net's perform_actual_validation
    for ``trainer.network`` (= the HiDiffNetwork, EMA refiner applied by the caller). Returns the decision."""
    net = trainer.hidiff
    out = trainer.output_folder
    forced_refine, forced_steps, steps_before = net.refine, net.steps_forced, net.num_inference_steps
    n_cases = len(trainer.do_split()[1])
    default_steps = net.num_inference_steps
    runs = [("segmentor", VALIDATION_SEGMENTOR, False, 0, COMBINE_NONE, None),
            ("refined", VALIDATION_REFINED, True, default_steps, COMBINE_NONE, None)]
    runs += [(f"refined_{k}steps", f"{VALIDATION_REFINED}_{k}steps", True, int(k), COMBINE_NONE, None)
             for k in trainer.decision_extra_steps if int(k) != default_steps]
    combines = tuple(getattr(trainer, "decision_combine", ()))
    unknown = [c for c in combines if c not in COMBINED_FOLDERS]
    if unknown:
        raise ValueError(f"{type(trainer).__name__}.decision_combine: {unknown} not among {tuple(COMBINED_FOLDERS)}")
    gates = [check_gate(g) for g in getattr(trainer, "decision_gates", ())]
    if net.output_space == "log":  # per-class (softmax) outputs; region-based models try the refined output only
        refined_runs = [r for r in runs if r[2] and r[4] == COMBINE_NONE]
        runs += [(r[0].replace("refined", COMBINED_FOLDERS[c][len("validation_"):]),
                  r[1].replace(VALIDATION_REFINED, COMBINED_FOLDERS[c]), True, r[3], c, None)
                 for c in combines for r in refined_runs]
        runs += [(r[0].replace("refined", f"gated_{gate_name(g)}"),
                  r[1].replace(VALIDATION_REFINED, f"{VALIDATION_GATED}_{gate_name(g)}"), True, r[3], COMBINE_GATED, g)
                 for g in gates for r in refined_runs]
    forced_combine, forced_gate = net.combine, net.gate
    scores, record = {}, {}
    try:
        for name, folder, refine, steps, combine, gate in runs:
            net.refine, net.steps_forced, net.combine, net.gate = refine, refine, combine, gate
            if refine:
                net.num_inference_steps = steps
            start = time.perf_counter()
            run_validation(save_probabilities)  # under DDP: every rank predicts its share, rank 0 summarises
            seconds = time.perf_counter() - start
            if trainer.local_rank == 0:  # scores and folders are rank 0's (the others get them below)
                scores[name] = _score(extend_validation_summary(trainer, VALIDATION), join(out, VALIDATION))
                replace_folder(join(out, VALIDATION), join(out, folder), move=name == "segmentor")
                record[name] = {"folder": folder, "cases": n_cases, "refine": refine, "steps": steps,
                                "combine": combine, **({"gate": list(gate)} if gate else {}),
                                "seconds_per_case": round(seconds / max(n_cases, 1), 4), **scores[name]}
                trainer.print_to_log_file(f"Validation, {name}: foreground Dice {scores[name]['dice']:.4f}, "
                                          f"HD95 {scores[name]['hd95']:.4f}, {seconds / max(n_cases, 1):.2f} s/case")
            barrier()  # no rank writes the next run into validation/ before rank 0 has moved this one
    finally:
        net.refine, net.steps_forced, net.num_inference_steps = forced_refine, forced_steps, steps_before
        net.combine, net.gate = forced_combine, forced_gate
    scores, record = broadcast_object((scores, record))
    candidates = [{k: r[k] for k in ("refine", "steps", "combine", "gate", "dice", "hd95") if k in r}
                  for name, r in record.items() if name != "segmentor"]
    decision = decide(record["segmentor"], candidates, trainer.decision_min_dice_gain)
    decision["candidates"] = [{"refine": False, "steps": 0, "combine": COMBINE_NONE, **scores["segmentor"]},
                              *candidates]
    steps = decision["steps"] if decision["steps"] != default_steps else 0
    net.set_decision(decision["refine"], steps, decision["combine"], decision.get("gate"))
    trainer.print_to_log_file(f"Refinement decision: {'refine' if decision['refine'] else 'segmentor alone'} "
                              f"({decision['reason']})")
    if trainer.local_rank == 0:
        chosen = next(r["folder"] for r in record.values() if output_key(r) == output_key(decision))
        replace_folder(join(out, chosen), join(out, VALIDATION))
        checkpoint = trainer.validated_checkpoint or join(out, "checkpoint_final.pth")
        if isfile(checkpoint):
            write_decision_into_checkpoint(checkpoint, net.inference_decision, net.inference_gate)
        decision["checkpoint"] = os.path.basename(checkpoint)  # the file that carries it (pooled_decision.py)
        update_fold_record(out, validation=record, decision=decision)
    barrier()
    return decision
