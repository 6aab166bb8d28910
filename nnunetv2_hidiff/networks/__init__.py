"""HiDiff networks: binary/real building blocks, the diffusion refiner, the X-Former, HiDiffNetwork,
factories from nnU-Net plans and Table XI-style accounting."""
from .accounting import account
from .binary import (ApproxSign, BinaryConv2d, BinaryConv3d, BinaryLinear, TimeActivation, TimeThreshold,
                     TimestepEmbedding, binarize_activation, binarize_weight, pack_binary_weights)
from .blocks import FeatureFusion, RefinerBlock
from .factory import build_hidiff_network, build_hidiff_network_from_plans, build_segmentor
from .hidiff_network import HiDiffNetwork, SegmentorOutput
from .refiner import HiDiffRefiner, refiner_widths
from .xformer import CrossAttention, CrossTransformerBlock, XFormer

__all__ = [
    "ApproxSign", "BinaryConv2d", "BinaryConv3d", "BinaryLinear", "CrossAttention", "CrossTransformerBlock",
    "FeatureFusion", "HiDiffNetwork", "HiDiffRefiner", "RefinerBlock", "SegmentorOutput", "TimeActivation",
    "TimeThreshold", "TimestepEmbedding", "XFormer", "account", "binarize_activation", "binarize_weight",
    "build_hidiff_network", "build_hidiff_network_from_plans", "build_segmentor", "pack_binary_weights",
    "refiner_widths",
]
