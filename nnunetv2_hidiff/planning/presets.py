"""Derive a CPU-sized (or paper-sized) nnU-Net plans file from an existing one, without touching the source.

``derive_plans`` copies a plans dict, renames it and changes one configuration's ``batch_size`` and/or
``patch_size``. When the patch size changes, the network topology is recomputed with nnU-Net's own
``get_pool_and_conv_props`` (the function ``ExperimentPlanner.get_plans_for_configuration`` uses), including its
padding of the patch to a multiple of 2**n_pool per axis, so the result is what nnU-Net's planner would produce for
that patch size: n_stages, strides, kernel sizes, features per stage and conv/block counts per stage.

Preprocessed data are shared with the source plans: ``data_identifier`` is kept. nnU-Net's ``DefaultPreprocessor``
(``run_case_npy``) only uses ``transpose_forward``, ``spacing``, the normalization schemes, ``use_mask_for_norm``,
the resampling functions, the intensity properties and the labels; ``patch_size`` only sets the blosc2 chunk/block
layout in ``run_case_save`` (storage performance, not values), and ``batch_size`` is never used. Neither is changed
here except patch/batch, so ``nnUNet_preprocessed/<dataset>/<data_identifier>`` made for the source plans is valid
for the derived plans (running ``nnUNetv2_preprocess -p <derived>`` would rewrite the same values into it).

Typical use (see plans/README.md)::

    nnunetv2_hidiff_plan -d 902 --preset plans/presets/Dataset902_DRIVE_cpu.json
    nnUNetv2_train 902 2d 0 -p nnUNetPlans_hidiffCPU
"""
import json
import os
import re
from copy import deepcopy
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_hidiff.atomic import atomic_write_json

# nnU-Net's ExperimentPlanner constants (set in its __init__, which needs the raw dataset, so they are mirrored here)
FEATUREMAP_MIN_EDGE_LENGTH = 4  # ExperimentPlanner.UNet_featuremap_min_edge_length
MAX_FEATURES = {2: 512, 3: 320}  # ExperimentPlanner.UNet_max_features_2d / _3d

PRESET_KEYS = {"dataset", "source_plans", "plans_name", "configuration", "batch_size", "patch_size", "description"}
_PLANS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class PlanningError(Exception):
    """Bad planning input. The message says what is wrong and how to fix it."""


@dataclass
class DerivedPlans:
    plans: dict
    plans_name: str
    configuration: str
    changes: List[str] = field(default_factory=list)  # human-readable "what changed" lines


def default_plans_name(source_plans: str, batch_size: Optional[int], patch_size: Optional[Sequence[int]]) -> str:
    """e.g. ``nnUNetPlans_hidiff_b32`` or ``nnUNetPlans_hidiff_b4_p256x256``."""
    name = f"{source_plans}_hidiff"
    if batch_size is not None:
        name += f"_b{batch_size}"
    if patch_size is not None:
        name += "_p" + "x".join(str(int(p)) for p in patch_size)
    return name


def validate_plans_name(plans_name: str, source_plans: str) -> None:
    if not _PLANS_NAME_RE.match(plans_name) or "__" in plans_name:
        raise PlanningError(f"invalid plans name {plans_name!r}: use letters, digits, '_', '-', '.', and no '__' "
                            f"(nnU-Net separates Trainer__Plans__configuration with '__')")
    if plans_name == source_plans:
        raise PlanningError(f"plans name {plans_name!r} equals the source plans; choose a new name (the source "
                            f"plans file is never modified)")


def _features_per_stage(base: int, n_stages: int, max_features: int) -> List[int]:
    # same rule as _features_per_stage in ExperimentPlanner.get_plans_for_configuration
    return [min(max_features, base * 2 ** i) for i in range(n_stages)]


def _resize_per_stage(values: Sequence[int], n: int) -> List[int]:
    """Truncate, or extend by repeating the last value (nnU-Net's per-stage tuples are constant at the tail)."""
    values = list(values)
    return values[:n] if n <= len(values) else values + [values[-1]] * (n - len(values))


def recompute_topology(arch_kwargs: dict, spacing: Sequence[float], patch_size: Sequence[int]) -> Tuple[dict, List[int]]:
    """New architecture kwargs for ``patch_size`` and the patch padded to nnU-Net's divisibility.

    Uses nnU-Net's ``get_pool_and_conv_props`` with the planner's min feature map edge length (4), as
    ``ExperimentPlanner.get_plans_for_configuration`` does. Everything else (conv op, norm, nonlinearity, base
    width) is kept from the source architecture.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    dim = len(spacing)
    # like the planner: topology from the requested patch, which is then padded to a multiple of 2**n_pool per axis
    _, strides, kernels, padded, _ = get_pool_and_conv_props(spacing, patch_size, FEATUREMAP_MIN_EDGE_LENGTH,
                                                             999999)
    n_stages = len(strides)
    if n_stages < 2:
        raise PlanningError(f"patch size {list(patch_size)} is too small for a U-Net: nnU-Net needs at least "
                            f"{2 * FEATUREMAP_MIN_EDGE_LENGTH} voxels along an axis to pool once")

    new = deepcopy(arch_kwargs)
    old_features = list(arch_kwargs["features_per_stage"])
    # the source's cap if it reached one (repeated last width), else nnU-Net's default cap for this dimensionality
    cap = old_features[-1] if len(old_features) > 1 and old_features[-1] == old_features[-2] else MAX_FEATURES[dim]
    new["n_stages"] = n_stages
    new["features_per_stage"] = _features_per_stage(old_features[0], n_stages, cap)
    new["kernel_sizes"] = [list(k) for k in kernels]
    new["strides"] = [list(s) for s in strides]
    # PlainConvUNet: n_conv_per_stage; ResidualEncoderUNet: n_blocks_per_stage
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in new:
            new[key] = _resize_per_stage(arch_kwargs[key], n_stages)
    if "n_conv_per_stage_decoder" in new:
        new["n_conv_per_stage_decoder"] = _resize_per_stage(arch_kwargs["n_conv_per_stage_decoder"], n_stages - 1)
    return new, [int(p) for p in padded]


def bottleneck_size(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> List[int]:
    """Feature map edge lengths at the deepest stage."""
    total = np.prod(np.asarray(strides, dtype=np.int64), axis=0)
    return [int(p // t) for p, t in zip(patch_size, total)]


def _resolved_configuration(plans: dict, configuration: str) -> dict:
    """The configuration with nnU-Net's ``inherits_from`` resolved (as PlansManager.get_configuration does)."""
    configs = plans["configurations"]
    if configuration not in configs:
        raise PlanningError(f"configuration {configuration!r} is not in the plans; available: "
                            f"{', '.join(configs)}")
    c = deepcopy(configs[configuration])
    if "inherits_from" in c:
        parent = _resolved_configuration(plans, c.pop("inherits_from"))
        parent.update(c)
        c = parent
    return c


def derive_plans(source: dict, plans_name: str, configuration: str, batch_size: Optional[int] = None,
                 patch_size: Optional[Sequence[int]] = None) -> DerivedPlans:
    """Copy of ``source`` named ``plans_name`` with ``configuration``'s batch and/or patch size changed."""
    source_name = source.get("plans_name", "?")
    validate_plans_name(plans_name, source_name)
    if batch_size is None and patch_size is None:
        raise PlanningError("nothing to change: give a batch size and/or a patch size")
    conf = _resolved_configuration(source, configuration)
    plans = deepcopy(source)
    plans["plans_name"] = plans_name
    target = plans["configurations"][configuration]  # only overridden keys go here (keeps inherits_from working)
    changes = []

    if batch_size is not None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise PlanningError(f"batch size must be a positive integer, got {batch_size}")
        target["batch_size"] = int(batch_size)
        changes.append(f"batch_size: {conf['batch_size']} -> {int(batch_size)}")

    if patch_size is not None:
        patch_size = [int(p) for p in patch_size]
        old_patch, spacing = list(conf["patch_size"]), conf["spacing"]
        median = conf.get("median_image_size_in_voxels", old_patch)
        if len(patch_size) != len(old_patch):
            raise PlanningError(f"patch size {patch_size} has {len(patch_size)} axes but configuration "
                                f"{configuration!r} is {len(old_patch)}D (patch {old_patch})")
        for axis, (p, o, m) in enumerate(zip(patch_size, old_patch, median)):
            if p < 1:
                raise PlanningError(f"patch size {patch_size} must be positive")
            if p > max(o, m):
                raise PlanningError(f"patch size {patch_size} is larger than both the source patch {old_patch} and "
                                    f"the median image size {[int(v) for v in median]} along axis {axis}; nnU-Net "
                                    f"would only pad the images")
        if patch_size != old_patch:
            arch = conf["architecture"]
            new_kwargs, padded = recompute_topology(arch["arch_kwargs"], spacing, patch_size)
            target["architecture"] = {**deepcopy(arch), "arch_kwargs": new_kwargs}
            target["patch_size"] = padded
            note = "" if padded == patch_size else f" (requested {patch_size}, padded to nnU-Net's divisibility)"
            changes.append(f"patch_size: {old_patch} -> {padded}{note}")
            changes.append(f"n_stages: {arch['arch_kwargs']['n_stages']} -> {new_kwargs['n_stages']}; strides "
                           f"{new_kwargs['strides']}; features_per_stage {new_kwargs['features_per_stage']}; "
                           f"bottleneck feature map {bottleneck_size(padded, new_kwargs['strides'])}")
        else:
            changes.append(f"patch_size: {old_patch} (unchanged)")

    plans["hidiff_derived_from"] = {
        "tool": "nnunetv2_hidiff_plan",
        "source_plans": source_name,
        "configuration": configuration,
        "batch_size": target.get("batch_size"),
        "patch_size": target.get("patch_size"),
        "data_identifier_shared": conf["data_identifier"],
    }
    return DerivedPlans(plans, plans_name, configuration, changes)


def load_preset(path: str) -> dict:
    """A preset JSON (see plans/README.md); unknown keys are an error so typos do not pass silently."""
    if not os.path.isfile(path):
        raise PlanningError(f"{path}: preset file does not exist")
    try:
        with open(path) as f:
            preset = json.load(f)
    except json.JSONDecodeError as e:
        raise PlanningError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(preset, dict):
        raise PlanningError(f"{path}: a preset must be a JSON object")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise PlanningError(f"{path}: unknown preset key(s) {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    return preset


def find_dataset_folder(preprocessed: str, dataset: str) -> str:
    """``DatasetXXX_Name`` folder in nnUNet_preprocessed for an ID ("902", 902) or a full name."""
    if not os.path.isdir(preprocessed):
        raise PlanningError(f"nnUNet_preprocessed folder {preprocessed} does not exist")
    dataset = str(dataset)
    if dataset.startswith("Dataset"):
        candidates = [dataset] if os.path.isdir(os.path.join(preprocessed, dataset)) else []
    else:
        try:
            prefix = f"Dataset{int(dataset):03d}_"
        except ValueError:
            raise PlanningError(f"dataset {dataset!r} is neither an ID nor a DatasetXXX_Name") from None
        candidates = sorted(d for d in os.listdir(preprocessed)
                            if d.startswith(prefix) and os.path.isdir(os.path.join(preprocessed, d)))
    if len(candidates) != 1:
        found = "none" if not candidates else ", ".join(candidates)
        raise PlanningError(f"dataset {dataset} in {preprocessed}: expected one folder, found {found}. Run "
                            f"nnUNetv2_plan_and_preprocess -d <ID> (or nnUNetv2_extract_fingerprint + "
                            f"nnUNetv2_plan_experiment) first")
    return os.path.join(preprocessed, candidates[0])


@dataclass
class PlanResult:
    path: str
    derived: DerivedPlans
    written: bool  # False if an identical file already existed
    preprocessed_data_present: bool


def create_plans(dataset: str, configuration: str = "2d", batch_size: Optional[int] = None,
                 patch_size: Optional[Sequence[int]] = None, source_plans: str = "nnUNetPlans",
                 plans_name: Optional[str] = None, preprocessed: Optional[str] = None,
                 overwrite: bool = False) -> PlanResult:
    """Write ``$nnUNet_preprocessed/<dataset>/<plans_name>.json`` derived from ``<source_plans>.json``.

    An existing identical file is left alone; an existing different file is only replaced with ``overwrite``.
    """
    if preprocessed is None:
        from nnunetv2.paths import nnUNet_preprocessed
        if not nnUNet_preprocessed.is_set():
            raise PlanningError("nnUNet_preprocessed is not set. Export it (see nnU-Net's "
                                "documentation/setting_up_paths.md) and run nnUNetv2_plan_and_preprocess first")
        preprocessed = nnUNet_preprocessed.get()
    folder = find_dataset_folder(preprocessed, dataset)
    source_file = os.path.join(folder, f"{source_plans}.json")
    if not os.path.isfile(source_file):
        raise PlanningError(f"{source_file}: source plans not found. Run nnUNetv2_plan_and_preprocess -d <ID> (or "
                            f"nnUNetv2_extract_fingerprint + nnUNetv2_plan_experiment) first, or pick existing plans "
                            f"with --source-plans")
    with open(source_file) as f:
        source = json.load(f)
    if plans_name is None:
        plans_name = default_plans_name(source_plans, batch_size, patch_size)
    derived = derive_plans(source, plans_name, configuration, batch_size, patch_size)
    target = os.path.join(folder, f"{plans_name}.json")
    written = True
    if os.path.isfile(target):
        with open(target) as f:
            existing = json.load(f)
        if existing == json.loads(json.dumps(derived.plans)):
            written = False
        elif not overwrite:
            raise PlanningError(f"{target} already exists with different content (results trained with it may "
                                f"depend on it); use --overwrite to replace it or choose another --plans-name")
    if written:
        atomic_write_json(derived.plans, target, indent=4)
    data_dir = os.path.join(folder, derived.plans["configurations"][configuration].get(
        "data_identifier", _resolved_configuration(source, configuration)["data_identifier"]))
    return PlanResult(target, derived, written, os.path.isdir(data_dir))
