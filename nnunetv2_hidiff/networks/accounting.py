"""Parameter, storage and operation accounting for HiDiff networks (Table XI style).

Conventions (all explicit, as Table XI's are not):
- storage: parameters only (no BN running statistics, no optimizer state). Weights of binary
  layers (:class:`~.binary.BinaryConv2d`/3d, :class:`~.binary.BinaryLinear`) count 1 bit each plus
  one 32-bit scale per output channel (mean|W|, what a deployed XNOR kernel stores); every other
  parameter (including biases of binary layers) counts 32 bits. 1 MB = 2^20 bytes.
- operations: multiply-accumulates of convolutions, transposed convolutions, linear layers and the
  attention matrix products (QKᵀ and A·V), measured with forward hooks on a batch-1 dummy input of
  the given patch size. 1 real MAC = 1 FLOP (the convention of thop/ptflops and of the FLOP tables
  this one is compared with; multiply by 2 for "1 MAC = 2 FLOPs"). 1 binary MAC = 1 BOP and
  64 BOPs = 1 FLOP (the paper's convention, Sec. III-E.7). Norms, activations, pooling, upsampling,
  softmax and element-wise ops are not counted.
- "real twin" numbers of a binary refiner count every parameter at 32 bits and every MAC as a FLOP.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .config import HiDiffConfig
from .xformer import CrossAttention

__all__ = ["account", "module_storage_bits", "count_macs", "main", "run", "BOPS_PER_FLOP"]

BOPS_PER_FLOP = 64
_MB = 2 ** 20


def module_storage_bits(module: nn.Module) -> Dict[str, int]:
    """Bits to store the parameters of ``module``: {'binary_bits', 'real_bits', 'bits', 'bits_if_real'}."""
    binary_bits = real_bits = 0
    counted = set()
    for m in module.modules():
        if getattr(m, "is_binary", False):
            w = m.weight
            binary_bits += w.numel() + 32 * w.shape[0]  # 1 bit per weight + one fp32 scale per output channel
            counted.add(id(w))
    total_params = 0
    for p in module.parameters():
        total_params += p.numel()
        if id(p) not in counted:
            real_bits += 32 * p.numel()
    return {"binary_bits": binary_bits, "real_bits": real_bits, "bits": binary_bits + real_bits,
            "bits_if_real": 32 * total_params}


def count_macs(module: nn.Module, fn) -> Dict[str, float]:
    """MACs of one call ``fn()`` that executes ``module`` (or parts of it), split into real and binary.

    Returns {'real_macs', 'binary_macs'}; binary MACs are those of layers flagged ``is_binary`` and of
    binarized attention products.
    """
    totals = {"real_macs": 0.0, "binary_macs": 0.0}

    def add(m, macs):
        binary = getattr(m, "is_binary", False) or (isinstance(m, CrossAttention) and m.binary)
        totals["binary_macs" if binary else "real_macs"] += float(macs)

    def conv_hook(m, inp, out):
        add(m, out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size))

    def convt_hook(m, inp, out):
        add(m, inp[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size))

    def linear_hook(m, inp, out):
        add(m, out.numel() * m.in_features)

    def attention_hook(m, inp, out):
        x, y = inp[0], inp[1]  # (B, Nq, C), (B, Nk, C)
        add(m, 2 * x.shape[0] * x.shape[1] * y.shape[1] * m.dim)  # QKᵀ and A·V over all heads

    handles = []
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            handles.append(m.register_forward_hook(convt_hook))
        elif isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, CrossAttention):
            handles.append(m.register_forward_hook(attention_hook))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return totals


def account(network, patch_size: Sequence[int], num_input_channels: int) -> dict:
    """Parameters, storage (MB) and operations of a :class:`HiDiffNetwork` for one patch.

    Returns a dict with
      segmentor: params, storage_mb, flops (one forward, deep supervision off);
      refiner:   params, binary_params (weights of binary layers), binary (bool), storage_mb (as built),
                 storage_mb_real (same parameters at 32 bits), real_macs, binary_macs (BOPs),
                 flops_per_step (real_macs + BOPs/64), flops_per_step_real (all MACs as FLOPs);
      num_inference_steps, total_flops (segmentor + steps × refiner step, per sample), and the
      conventions used. See the module docstring.
    """
    seg, ref = network.segmentor, network.refiner
    device = next(network.parameters()).device
    x = torch.zeros(1, num_input_channels, *patch_size, device=device)
    was_training = network.training
    decoder = getattr(seg, "decoder", None)
    ds = getattr(decoder, "deep_supervision", None)
    network.eval()
    try:
        if ds is not None:
            decoder.deep_supervision = False
        with torch.no_grad():
            seg_ops = count_macs(seg, lambda: seg(x))
            features = network.segment(x).features
            k = network.num_classes
            y = torch.zeros(1, k, *patch_size, device=device)
            p = torch.full((1, k, *patch_size), 1.0 / k, device=device)
            t = torch.full((1,), network.diffusion.num_steps, dtype=torch.long, device=device)
        # the refiner with autograd on: its inference fast path calls folded convs without their modules' hooks
        with torch.enable_grad():
            ref_ops = count_macs(ref, lambda: ref(x, y, p, t, [f.detach() for f in features]))
    finally:
        if ds is not None:
            decoder.deep_supervision = ds
        network.train(was_training)

    seg_bits = module_storage_bits(seg)
    ref_bits = module_storage_bits(ref)
    binary_params = sum(m.weight.numel() for m in ref.modules() if getattr(m, "is_binary", False))
    seg_flops = seg_ops["real_macs"] + seg_ops["binary_macs"] / BOPS_PER_FLOP
    step_flops = ref_ops["real_macs"] + ref_ops["binary_macs"] / BOPS_PER_FLOP
    steps = int(network.settings()["steps"]) if hasattr(network, "settings") else network.diffusion.num_steps
    return {
        "patch_size": [int(v) for v in patch_size],
        "segmentor": {
            "params": sum(p.numel() for p in seg.parameters()),
            "storage_mb": seg_bits["bits"] / 8 / _MB,
            "flops": seg_flops,
        },
        "refiner": {
            "binary": binary_params > 0,
            "params": sum(p.numel() for p in ref.parameters()),
            "binary_params": binary_params,
            "storage_mb": ref_bits["bits"] / 8 / _MB,
            "storage_mb_real": ref_bits["bits_if_real"] / 8 / _MB,
            "real_macs": ref_ops["real_macs"],
            "binary_macs": ref_ops["binary_macs"],
            "flops_per_step": step_flops,
            "flops_per_step_real": ref_ops["real_macs"] + ref_ops["binary_macs"],
        },
        "num_inference_steps": steps,
        "total_flops": seg_flops + steps * step_flops,
        "conventions": {"mac_flops": 1, "bops_per_flop": BOPS_PER_FLOP, "mb_bytes": _MB,
                        "binary_weight_bits": 1, "scale_bits_per_out_channel": 32},
    }


def _resolve_plans(args) -> tuple:
    if args.plans:
        plans = args.plans
        dataset_json = args.dataset_json or os.path.join(os.path.dirname(plans), "dataset.json")
        return plans, dataset_json
    if args.dataset is None:
        raise SystemExit("give --plans (and --dataset-json) or -d DATASET")
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if nnUNet_preprocessed is None:
        raise SystemExit("nnUNet_preprocessed is not set; use --plans/--dataset-json instead")
    folder = os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(args.dataset))
    return os.path.join(folder, args.plans_identifier + ".json"), os.path.join(folder, "dataset.json")


def _fmt_flops(v: float) -> str:
    return f"{v / 1e9:9.3f} G"


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """The CLI's work: parse ``argv``, print the report, return {'binary': account(...), 'real': account(...)}."""
    parser = argparse.ArgumentParser(
        prog="nnunetv2_hidiff_accounting",
        description="Parameters, storage and FLOPs of the HiDiff segmentor and refiner (binary vs real) for a plan.")
    parser.add_argument("--plans", help="path to an nnUNetPlans.json")
    parser.add_argument("--dataset-json", help="path to dataset.json (default: next to --plans)")
    parser.add_argument("-d", "--dataset", help="dataset name or id, resolved in nnUNet_preprocessed")
    parser.add_argument("-p", "--plans-identifier", default="nnUNetPlans")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--patch-size", type=int, nargs="+", help="default: the plan's patch size")
    default = HiDiffConfig()  # nnUNetTrainerHiDiff's configuration
    parser.add_argument("--width", type=int, default=default.refiner_width,
                        help=f"refiner base width (default {default.refiner_width}, nnUNetTrainerHiDiff's; the "
                             f"paper's: 32)")
    parser.add_argument("--max-width", type=int, default=default.refiner_max_width, help="refiner maximum width")
    parser.add_argument("--no-xformer", action="store_true")
    parser.add_argument("--steps", type=int, default=default.num_diffusion_steps,
                        help="diffusion steps T (the total counts T refinement steps)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .factory import _load_json, build_hidiff_network_from_plans

    plans_path, dataset_json_path = _resolve_plans(args)
    plans = _load_json(plans_path)
    dataset_json = _load_json(dataset_json_path)
    patch = args.patch_size or PlansManager(plans).get_configuration(args.configuration).patch_size
    c_in = len(dataset_json["channel_names"] if "channel_names" in dataset_json else dataset_json["modality"])
    results = {}
    for name, binary in (("binary", True), ("real", False)):
        net = build_hidiff_network_from_plans(
            plans, args.configuration, c_in, None, dataset_json=dataset_json, enable_deep_supervision=False,
            binary=binary, use_xformer=not args.no_xformer, refiner_width=args.width,
            refiner_max_width=args.max_width, num_diffusion_steps=args.steps, inference_steps=None)
        results[name] = account(net, patch, c_in)
    if args.json:
        print(json.dumps(results, indent=1))
        return results

    b, r = results["binary"], results["real"]
    seg = b["segmentor"]
    steps = b["num_inference_steps"]
    print(f"HiDiff accounting: {plans.get('dataset_name', plans_path)} / {args.configuration}, patch "
          f"{'x'.join(map(str, patch))}, {c_in} input channel(s), K = {net.num_classes}, T = {steps}, "
          f"refiner width {args.width}..{args.max_width}, X-Former {'off' if args.no_xformer else 'on'}")
    print("conventions: 1 real MAC = 1 FLOP; 64 binary MACs (BOPs) = 1 FLOP; binary weights 1 bit + fp32 "
          "per-output-channel scale, all other parameters 32 bit; MB = 2^20 bytes; per patch, batch 1")
    rows = [
        ("segmentor", seg["params"], seg["storage_mb"], seg["flops"], None),
        ("refiner binary", b["refiner"]["params"], b["refiner"]["storage_mb"], b["refiner"]["flops_per_step"],
         b["refiner"]["binary_macs"]),
        ("refiner real", r["refiner"]["params"], r["refiner"]["storage_mb"], r["refiner"]["flops_per_step"],
         r["refiner"]["binary_macs"]),
    ]
    print(f"{'':16s} {'params':>11s} {'storage MB':>11s} {'FLOPs/step':>12s} {'of which BOPs':>14s}")
    for name, params, mb, flops, bops in rows:
        bops_s = "" if bops is None else f"{bops / 1e9:11.3f} G"
        print(f"{name:16s} {params:11,d} {mb:11.3f} {_fmt_flops(flops):>12s} {bops_s:>14s}")
    rb, rr = b["refiner"], r["refiner"]
    print(f"refiner binary/real: storage 1/{rr['storage_mb'] / rb['storage_mb']:.1f}, "
          f"FLOPs per step 1/{rr['flops_per_step'] / rb['flops_per_step']:.1f} "
          f"(real MACs left in the binary refiner: {rb['real_macs'] / 1e9:.3f} G)")
    print(f"Table XI form (FLOPs x1e10): binary {seg['flops'] / 1e10:.3f} + {rb['flops_per_step'] / 1e10:.4f} x {steps}"
          f" = {b['total_flops'] / 1e10:.3f};  real {seg['flops'] / 1e10:.3f} + {rr['flops_per_step'] / 1e10:.4f} x "
          f"{steps} = {r['total_flops'] / 1e10:.3f}")
    print(f"Table XI form (storage MB): binary {seg['storage_mb']:.2f} + {rb['storage_mb']:.2f};  "
          f"real {seg['storage_mb']:.2f} + {rr['storage_mb']:.2f}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``nnunetv2_hidiff_accounting``, e.g.

        nnunetv2_hidiff_accounting --plans nnUNetPlans.json --dataset-json dataset.json -c 2d [--patch-size H W]
        nnunetv2_hidiff_accounting -d 901 -p nnUNetPlans -c 2d          (needs nnUNet_preprocessed)
    """
    run(argv)


if __name__ == "__main__":
    main()
