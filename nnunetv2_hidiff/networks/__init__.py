"""HiDiff networks: binary/real building blocks, the diffusion refiner, the X-Former, HiDiffNetwork,
factories from nnU-Net plans and Table XI-style accounting."""
from .accounting import account
from .binary import (ApproxSign, BinaryConv2d, BinaryConv3d, BinaryLinear, TimeActivation, TimeThreshold,
                     TimestepEmbedding, binarize_activation, binarize_weight, pack_binary_weights)
from .blocks import FeatureFusion, RefinerBlock
from .config import ARCHITECTURE_FIELDS, HiDiffConfig, HiDiffConfigurationError
from .factory import build_hidiff_network, build_hidiff_network_from_plans, build_segmentor
from .hidiff_network import HiDiffNetwork, SegmentorOutput, check_decision
from .refiner import HiDiffRefiner, refiner_widths
from .xformer import CrossAttention, CrossTransformerBlock, XFormer

__all__ = [
    "ARCHITECTURE_FIELDS", "ApproxSign", "BinaryConv2d", "BinaryConv3d", "BinaryLinear", "CrossAttention", "CrossTransformerBlock",
    "FeatureFusion", "HiDiffConfig", "HiDiffConfigurationError", "HiDiffNetwork", "HiDiffRefiner", "RefinerBlock", "SegmentorOutput", "TimeActivation",
    "TimeThreshold", "TimestepEmbedding", "XFormer", "account", "binarize_activation", "binarize_weight",
    "build_hidiff_network", "check_decision", "build_hidiff_network_from_plans", "build_segmentor", "pack_binary_weights",
    "refiner_widths",
]
