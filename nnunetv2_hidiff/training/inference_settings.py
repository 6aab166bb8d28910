"""Prediction-time settings of HiDiffNetwork, read from environment variables.

nnU-Net's predictor builds the network through the trainer class, so these variables are how
``nnUNetv2_predict ... -tr nnUNetTrainerHiDiff`` picks them up without retraining:

    nnUNet_HiDiff_steps    DDIM steps (1..T; default T)          e.g. 10
    nnUNet_HiDiff_samples  samples averaged per patch (default 1)
    nnUNet_HiDiff_seed     seed of the sampler (default 0)
    nnUNet_HiDiff_refine   0 to return the segmentor's prediction without refinement (default 1)
    nnUNet_HiDiff_transition  "threshold" (default) or "sample": intermediate DDIM states
                           (see nnunetv2_hidiff.diffusion.BernoulliDDIMSampler)

``nnunetv2_hidiff_predict`` sets them from --steps/--samples/--seed/--no-refine/--transition.
"""
from __future__ import annotations

import os

from nnunetv2_hidiff.diffusion import BernoulliDDIMSampler

ENV_STEPS, ENV_SAMPLES, ENV_SEED, ENV_REFINE = ("nnUNet_HiDiff_steps", "nnUNet_HiDiff_samples",
                                                "nnUNet_HiDiff_seed", "nnUNet_HiDiff_refine")
ENV_TRANSITION = "nnUNet_HiDiff_transition"
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


def apply_inference_settings(network, environ=None) -> None:
    """Set num_inference_steps, num_samples, seed, refine and transition of a HiDiffNetwork from the environment."""
    env = os.environ if environ is None else environ
    T = network.diffusion.num_steps
    network.num_inference_steps = _int_env(env, ENV_STEPS, network.num_inference_steps, 1, T)
    network.num_samples = _int_env(env, ENV_SAMPLES, network.num_samples, 1, 10_000)
    network.seed = _int_env(env, ENV_SEED, network.seed, 0, 2 ** 63 - 1)
    network.refine = bool(_int_env(env, ENV_REFINE, int(network.refine), 0, 1))
    transition = env.get(ENV_TRANSITION)
    if transition:
        if transition not in TRANSITIONS:
            raise ValueError(f"environment variable {ENV_TRANSITION}={transition!r} must be one of {TRANSITIONS}")
        network.transition = transition
