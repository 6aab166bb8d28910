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
* stores the decision, with every setting it was validated with (steps, combine, gate, transition, samples,
  seed), in the network (``HiDiffNetwork.decision``, in its state dict's ``_extra_state``, so ``nnUNetv2_predict``
  follows it per fold), in the checkpoint file that was validated, and in the fold record; any other checkpoint
  file of the fold loses a decision it carried (it was made on outputs that ``validation/`` no longer holds), so it
  predicts the segmentor alone;
* puts the decided candidate's ``predicted_next_stage/`` files (nnU-Net's cascade input, written on every
  validation run) in place, so a following stage gets the decided output.

The trainer's network ignores the nnUNet_HiDiff_* prediction variables (inference_settings), so every candidate
runs with the trainer's own configuration, whatever the shell holds.

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
from nnunetv2_hidiff.networks.hidiff_network import FORCEABLE

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


SAMPLER_KEYS = ("transition", "samples", "seed")  # what a refined candidate and a refining decision also name


def decide(segmentor: dict, candidates: List[dict], min_dice_gain: float = 0.0,
           max_hd95_increase: float = 0.0) -> dict:
    """Choose among the refined candidates (dicts with refine, steps, dice, hd95, optional combine, gate, transition,
    samples, seed) against the segmentor alone: the candidate with the highest Dice (then the lowest HD95) among
    those that beat the segmentor's Dice by more than ``min_dice_gain`` with an HD95 at most ``max_hd95_increase``
    higher (an HD95 that only one side lacks counts as worse for that side; inf accepts any HD95)."""
    def hd95_not_worse(c: dict) -> bool:
        a, b = c["hd95"], segmentor["hd95"]
        if math.isinf(max_hd95_increase):
            return True
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b) or math.isnan(b)
        return a <= b + max_hd95_increase

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
    chosen = {"refine": True, "steps": best["steps"], "combine": combine,
              **{k: best[k] for k in SAMPLER_KEYS if best.get(k) is not None}}
    return {**chosen, **({"gate": list(check_gate(gate))} if combine == COMBINE_GATED else {}),
            "reason": f"refinement with {best['steps']} steps{how} raised the foreground Dice "
                      f"{segmentor['dice']:.4f} -> {best['dice']:.4f} (HD95 {segmentor['hd95']:.3f} -> "
                      f"{best['hd95']:.3f})"}


def write_decision_into_checkpoint(path: str, decision: Optional[dict], config: Optional[dict] = None) -> None:
    """Store ``decision`` (a decision dict, or None: no decision) and, if given, the ``config`` it was made with in the
    network state of an existing checkpoint file (atomically), so nnUNetv2_predict follows it. Settings the decision does not name (transition, samples, seed of
    records written before 2026-12-07) come from the configuration stored in the checkpoint. A checkpoint written
    before the configuration was stored gets the decision alone; its configuration is then the loading class's."""
    from nnunetv2_hidiff.networks.hidiff_network import DECISION_FORMAT

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    weights = checkpoint["network_weights"]
    state = dict(weights.get("_extra_state") or {"format": DECISION_FORMAT, "trainer": checkpoint.get("trainer_name"),
                                                   "config": {}})
    weights.pop("inference_decision", None)  # the buffers of checkpoints written before 2026-12-07
    weights.pop("inference_gate", None)
    if config is not None:
        state["config"] = config
    if decision is not None:
        config = state.get("config") or {}
        defaults = {"transition": config.get("inference_transition"), "samples": config.get("inference_samples"),
                    "seed": config.get("inference_seed")}
        keys = ("refine", "steps", "combine", "gate", *SAMPLER_KEYS)
        decision = {k: decision.get(k) if decision.get(k) is not None else defaults.get(k) for k in keys}
        if decision["refine"] and None in (decision["transition"], decision["samples"], decision["seed"]):
            from nnunetv2_hidiff.networks import HiDiffConfig

            fallback = HiDiffConfig.defaults()  # neither the record nor the checkpoint says: the defaults
            decision = {**decision, **{k: decision[k] if decision[k] is not None else fallback[f"inference_{k}"]
                                       for k in SAMPLER_KEYS}}
    state["decision"] = decision
    weights["_extra_state"] = state
    atomic_torch_save(checkpoint, path)


def stored_decision(path: str) -> Optional[dict]:
    """The decision a checkpoint file carries (None: none), as the network will read it."""
    state = torch.load(path, map_location="cpu", weights_only=False)["network_weights"].get("_extra_state") or {}
    return state.get("decision")


CHECKPOINT_FILES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


def _next_stage_folders(trainer) -> List[str]:
    names = trainer.configuration_manager.next_stage_names or []
    return [join(trainer.output_folder_base, "predicted_next_stage", n) for n in names]


def _stash_next_stage(trainer, keys: List[str], target: str) -> None:
    """Move this fold's files of nnU-Net's predicted_next_stage/ (written by the run just done) under ``target``."""
    for folder in _next_stage_folders(trainer):
        stash = join(target, "predicted_next_stage", os.path.basename(folder))
        shutil.rmtree(stash, ignore_errors=True)
        os.makedirs(stash)
        for name in os.listdir(folder) if isdir(folder) else []:
            if os.path.splitext(name)[0] in keys:
                os.replace(join(folder, name), join(stash, name))


def _restore_next_stage(trainer, source: str) -> None:
    for folder in _next_stage_folders(trainer):
        stash = join(source, "predicted_next_stage", os.path.basename(folder))
        for name in os.listdir(stash) if isdir(stash) else []:
            shutil.copy2(join(stash, name), join(folder, name))


def validate_and_decide(trainer, run_validation: Callable[[bool], None], save_probabilities: bool = False) -> dict:
    """See the module docstring. ``run_validation(save_probabilities)`` is nnU-Net's perform_actual_validation
    for ``trainer.network`` (= the HiDiffNetwork, EMA refiner applied by the caller). Returns the decision."""
    net = trainer.hidiff
    config = trainer.hidiff_configuration  # the class's (a --val after a class change validates the new candidates)
    net.config = config  # its architecture is the loaded weights' (checked at load); stored with the decision
    out = trainer.output_folder
    keys = list(trainer.do_split()[1])
    n_cases = len(keys)
    default_steps = config.default_steps
    sampler = {"transition": config.inference_transition, "samples": config.inference_samples,
               "seed": config.inference_seed}
    runs = [("segmentor", VALIDATION_SEGMENTOR, False, 0, COMBINE_NONE, None),
            ("refined", VALIDATION_REFINED, True, default_steps, COMBINE_NONE, None)]
    runs += [(f"refined_{k}steps", f"{VALIDATION_REFINED}_{k}steps", True, int(k), COMBINE_NONE, None)
             for k in config.decision_extra_steps if int(k) != default_steps]
    gates = [check_gate(g) for g in config.decision_gates]
    if net.output_space == "log":  # per-class (softmax) outputs; region-based models try the refined output only
        refined_runs = [r for r in runs if r[2] and r[4] == COMBINE_NONE]
        runs += [(r[0].replace("refined", COMBINED_FOLDERS[c][len("validation_"):]),
                  r[1].replace(VALIDATION_REFINED, COMBINED_FOLDERS[c]), True, r[3], c, None)
                 for c in config.decision_combine for r in refined_runs]
        runs += [(r[0].replace("refined", f"gated_{gate_name(g)}"),
                  r[1].replace(VALIDATION_REFINED, f"{VALIDATION_GATED}_{gate_name(g)}"), True, r[3], COMBINE_GATED, g)
                 for g in gates for r in refined_runs]
    forced_before = {k: getattr(net, k) for k in FORCEABLE}
    scores, record = {}, {}
    try:
        for name, folder, refine, steps, combine, gate in runs:
            # every setting forced: neither a decision loaded with the weights (--val) nor the shell changes a run
            net.force(refine=refine, steps=steps if refine else None, combine=combine, gate=gate, **sampler)
            start = time.perf_counter()
            run_validation(save_probabilities)  # under DDP: every rank predicts its share, rank 0 summarises
            seconds = time.perf_counter() - start
            if trainer.local_rank == 0:  # scores and folders are rank 0's (the others get them below)
                scores[name] = _score(extend_validation_summary(trainer, VALIDATION), join(out, VALIDATION))
                replace_folder(join(out, VALIDATION), join(out, folder), move=name == "segmentor")
                _stash_next_stage(trainer, keys, join(out, folder))
                record[name] = {"folder": folder, "cases": n_cases, "refine": refine, "steps": steps,
                                "combine": combine, **({"gate": list(gate)} if gate else {}),
                                **(sampler if refine else {}),
                                "seconds_per_case": round(seconds / max(n_cases, 1), 4), **scores[name]}
                trainer.print_to_log_file(f"Validation, {name}: foreground Dice {scores[name]['dice']:.4f}, "
                                          f"HD95 {scores[name]['hd95']:.4f}, {seconds / max(n_cases, 1):.2f} s/case")
            barrier()  # no rank writes the next run into validation/ before rank 0 has moved this one
    finally:
        net.force(**forced_before)
    scores, record = broadcast_object((scores, record))
    candidates = [{k: r[k] for k in ("refine", "steps", "combine", "gate", *SAMPLER_KEYS, "dice", "hd95") if k in r}
                  for name, r in record.items() if name != "segmentor"]
    decision = decide(record["segmentor"], candidates, config.decision_min_dice_gain, config.decision_max_hd95_increase)
    decision["candidates"] = [{"refine": False, "steps": 0, "combine": COMBINE_NONE, **scores["segmentor"]},
                              *candidates]
    net.set_decision(decision)
    trainer.print_to_log_file(f"Refinement decision: {'refine' if decision['refine'] else 'segmentor alone'} "
                              f"({decision['reason']})")
    if trainer.local_rank == 0:
        chosen = next(r["folder"] for r in record.values() if output_key(r) == output_key(decision))
        replace_folder(join(out, chosen), join(out, VALIDATION))
        _restore_next_stage(trainer, join(out, chosen))
        checkpoint = trainer.validated_checkpoint or join(out, "checkpoint_final.pth")
        if isfile(checkpoint):
            write_decision_into_checkpoint(checkpoint, net.decision, config.to_dict())
        for other in CHECKPOINT_FILES:  # decisions made on outputs validation/ no longer holds
            path = join(out, other)
            if isfile(path) and os.path.abspath(path) != os.path.abspath(checkpoint) and stored_decision(path):
                write_decision_into_checkpoint(path, None)
        decision["checkpoint"] = os.path.basename(checkpoint)  # the file that carries it (pooled_decision.py)
        update_fold_record(out, validation=record, decision=decision)
    barrier()
    return decision
