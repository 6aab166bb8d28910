"""Factories building a :class:`HiDiffNetwork` from nnU-Net plans (no dataset folders needed)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Union

from torch import nn

from .config import HiDiffConfig
from .hidiff_network import HiDiffNetwork
from .refiner import HiDiffRefiner

__all__ = ["build_hidiff_network", "build_hidiff_network_from_plans", "build_segmentor", "conv_dim_of"]


def build_segmentor(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                    enable_deep_supervision: bool = True) -> nn.Module:
    """The network nnU-Net's plan configures, built exactly as nnUNetTrainer.build_network_architecture
    does in nnunetv2 2.8.1 (get_network_from_plans with the plan's class and kwargs, He init)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=enable_deep_supervision)


def conv_dim_of(segmentor: nn.Module) -> int:
    """Number of spatial dims of the segmentor (from encoder.conv_op, e.g. Conv2d → 2)."""
    conv_op = getattr(segmentor.encoder, "conv_op", None)
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
    if conv_op not in dims:
        raise NotImplementedError(f"cannot infer the spatial dims of a segmentor with conv_op={conv_op}")
    return dims[conv_op]


OPTION_ALIASES = {"binary": "binary_refiner", "schedule": "noise_schedule", "blocks_per_stage": "refiner_blocks_per_stage"}


def build_hidiff_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                         enable_deep_supervision: bool = True, *, config: Optional[HiDiffConfig] = None,
                         segmentor: Optional[nn.Module] = None, trainer_name: Optional[str] = None,
                         **options) -> HiDiffNetwork:
    """Build segmentor + refiner + diffusion from a PlansManager/ConfigurationManager.

    The first five arguments are exactly those of nnUNetTrainer.build_network_architecture in
    nnunetv2 2.8.1, so a trainer can return this directly. The HiDiff configuration is ``config`` (a
    :class:`HiDiffConfig`; default: its defaults, which are nnUNetTrainerHiDiff's), with ``options`` replacing
    fields of it by name (``binary``, ``schedule`` and ``blocks_per_stage`` are accepted for ``binary_refiner``,
    ``noise_schedule`` and ``refiner_blocks_per_stage``). Pass ``segmentor`` to wrap an already-built segmentor (it
    must expose .encoder → skips and .decoder(skips)); otherwise the plan's network is built with
    :func:`build_segmentor`. ``trainer_name`` is stored with the weights (it names the fix when a checkpoint of
    another architecture is loaded).

    The refiner mirrors the segmentor's encoder: its stages, strides (encoder.strides) and the
    channels of the fused skips (encoder.output_channels) are read from the built segmentor.
    """
    from nnunetv2_hidiff.diffusion import BernoulliDiffusion

    config = config if config is not None else HiDiffConfig()
    if options:
        config = dataclasses.replace(config, **{OPTION_ALIASES.get(k, k): v for k, v in options.items()})
    if segmentor is None:
        segmentor = build_segmentor(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                    enable_deep_supervision)
    encoder = segmentor.encoder
    diffusion = BernoulliDiffusion(num_steps=config.num_diffusion_steps, schedule=config.noise_schedule, s=0.008)
    refiner = HiDiffRefiner(
        dim=conv_dim_of(segmentor), in_channels=num_input_channels, num_classes=num_output_channels,
        strides=encoder.strides, seg_channels=encoder.output_channels, width=config.refiner_width,
        max_width=config.refiner_max_width, binary=config.binary_refiner, use_xformer=config.use_xformer,
        blocks_per_stage=config.refiner_blocks_per_stage,
        prior_residual_alpha_bars=diffusion.alpha_bars.tolist() if config.prior_residual else None)
    network = HiDiffNetwork(segmentor, refiner, diffusion, num_classes=num_output_channels, config=config,
                            trainer_name=trainer_name)
    network.packed = config.packed_inference  # stays False where no kernel loads (one warning)
    return network


def _load_json(path_or_dict: Union[dict, str]) -> dict:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    with open(path_or_dict) as f:
        return json.load(f)


def build_hidiff_network_from_plans(plans: Union[dict, str], configuration: str = "2d",
                                    num_input_channels: Optional[int] = None,
                                    num_output_channels: Optional[int] = None,
                                    dataset_json: Union[dict, str, None] = None,
                                    enable_deep_supervision: bool = True, **options) -> HiDiffNetwork:
    """MedNeXt-style convenience: plans dict or nnUNetPlans.json path → HiDiffNetwork.

    Channel counts are given explicitly or derived from ``dataset_json`` (dict or path):
    C_in = len(channel_names) (or "modality"), K = label_manager.num_segmentation_heads (regions and
    ignore label respected). ``options`` are the keyword options of :func:`build_hidiff_network`.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(_load_json(plans))
    configuration_manager = plans_manager.get_configuration(configuration)
    if num_input_channels is None or num_output_channels is None:
        if dataset_json is None:
            raise ValueError("give num_input_channels and num_output_channels, or dataset_json")
        dj = _load_json(dataset_json)
        if num_input_channels is None:
            num_input_channels = len(dj["channel_names"] if "channel_names" in dj else dj["modality"])
        if num_output_channels is None:
            num_output_channels = plans_manager.get_label_manager(dj).num_segmentation_heads
    return build_hidiff_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                enable_deep_supervision, **options)
