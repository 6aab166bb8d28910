"""Prediction-time settings of HiDiffNetwork, read from environment variables.

nnU-Net's predictor builds the network through the trainer class, so these variables are how
``nnUNetv2_predict ... -tr nnUNetTrainerHiDiff`` picks them up without retraining. They act at prediction only: the
network the trainer trains and validates ignores them (the trainer writes one warning line when one is set, see
:func:`warn_prediction_variables`), so a variable left set in the training shell cannot change the decision.
Each one forces its setting over the fold's stored decision (HiDiffNetwork.settings):

    nnUNet_HiDiff_steps    DDIM steps (1..T) (default: the decision's, else the stored inference_steps)
    nnUNet_HiDiff_samples  samples averaged per patch (default: the decision's, else inference_samples)
    nnUNet_HiDiff_seed     seed of the sampler (default: the decision's, else inference_seed)
    nnUNet_HiDiff_refine   1 forces refinement on, 0 forces it off (the segmentor alone); unset: each
                           fold's stored decision (made on its validation cases; none: the segmentor alone)
    nnUNet_HiDiff_transition  intermediate DDIM states: "renoise" (default), "renoise_threshold", "sample"
                           (Algorithm 2), "threshold" (see nnunetv2_hidiff.diffusion.BernoulliDDIMSampler)
    nnUNet_HiDiff_combine  "none": the refined output; "new_components": the segmentor's output plus the refined
                           components it does not reach; "union": plus all refined foreground; "average": the
                           mean of both outputs' probabilities; "gated": the refined label where its refined
                           probability exceeds the gate (networks/combine.py); unset: the fold's decision, or
                           "none" when nnUNet_HiDiff_refine forces refinement
    nnUNet_HiDiff_gate     "ADD,REMOVE": the gate of combine "gated", two probabilities in [0, 1] (e.g. "0.5,0.8");
                           unset: the gate stored with the fold's decision
    nnUNet_HiDiff_packed   1: the binary refiner's convolutions run as bit-packed XNOR-popcount kernels (CPU);
                           0: simulated float ±1 convolutions; unset: the network's default

``nnunetv2_hidiff_predict`` sets them from --steps/--samples/--seed/--no-refine/--transition/--combine/--gate.
"""
from __future__ import annotations

import os

from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler
from nnunetv2_hidiff.networks.combine import COMBINES, check_gate

ENV_STEPS, ENV_SAMPLES, ENV_SEED, ENV_REFINE = ("nnUNet_HiDiff_steps", "nnUNet_HiDiff_samples",
                                                "nnUNet_HiDiff_seed", "nnUNet_HiDiff_refine")
ENV_TRANSITION, ENV_PACKED, ENV_COMBINE = "nnUNet_HiDiff_transition", "nnUNet_HiDiff_packed", "nnUNet_HiDiff_combine"
ENV_GATE = "nnUNet_HiDiff_gate"
TRANSITIONS = BernoulliDDIMSampler.TRANSITIONS


def _int_env(environ, name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"environment variable {name}={value} must lie in {low}..{high}")
    return value


def parse_gate(text: str, what: str = "gate"):
    """'0.5,0.8' -> (0.5, 0.8); one clear error naming ``what`` otherwise."""
    try:
        return check_gate(text.split(","))
    except ValueError:
        raise ValueError(f"{what}={text!r} must be two probabilities ADD,REMOVE in [0, 1], e.g. '0.5,0.8'") from None


PREDICTION_VARIABLES = (ENV_STEPS, ENV_SAMPLES, ENV_SEED, ENV_REFINE, ENV_TRANSITION, ENV_COMBINE, ENV_GATE, ENV_PACKED)


def apply_inference_settings(network, environ=None) -> None:
    """Force the settings of a HiDiffNetwork (steps, samples, seed, refine, transition, combine, gate, packed) that
    the environment sets; variables that are unset leave the network as it is. One ValueError names a bad value."""
    env = os.environ if environ is None else environ
    T = network.diffusion.num_steps
    if env.get(ENV_STEPS):
        network.steps = _int_env(env, ENV_STEPS, 1, 1, T)
    if env.get(ENV_SAMPLES):
        network.samples = _int_env(env, ENV_SAMPLES, 1, 1, 10_000)
    if env.get(ENV_SEED):
        network.seed = _int_env(env, ENV_SEED, 0, 0, 2 ** 63 - 1)
    if env.get(ENV_REFINE):
        network.refine = bool(_int_env(env, ENV_REFINE, 1, 0, 1))
    transition = env.get(ENV_TRANSITION)
    if transition:
        if transition not in TRANSITIONS:
            raise ValueError(f"environment variable {ENV_TRANSITION}={transition!r} must be one of {TRANSITIONS}")
        network.transition = transition
    combine = env.get(ENV_COMBINE)
    if combine:
        if combine not in COMBINES:
            raise ValueError(f"environment variable {ENV_COMBINE}={combine!r} must be one of {COMBINES}")
        network.combine = combine
    gate = env.get(ENV_GATE)
    if gate:
        network.gate = parse_gate(gate, f"environment variable {ENV_GATE}")
    if env.get(ENV_PACKED):
        network.packed = bool(_int_env(env, ENV_PACKED, 0, 0, 1))


def warn_prediction_variables(trainer, environ=None) -> list:
    """One line (training log and stderr) naming the prediction variables set while a trainer trains or validates:
    they are ignored there. Returns their names."""
    env = os.environ if environ is None else environ
    names = [f"{k}={env[k]}" for k in PREDICTION_VARIABLES if env.get(k)]
    if names and trainer.local_rank == 0:
        trainer.print_to_log_file(
            f"WARNING: {', '.join(names)}: prediction setting(s), ignored in training and in this trainer's validation "
            f"(the refinement decision is made with {type(trainer).__name__}'s own configuration); they act in "
            f"nnUNetv2_predict and nnunetv2_hidiff_predict only.")
    return names
