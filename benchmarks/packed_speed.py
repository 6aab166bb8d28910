"""1-bit inference speed (issue 15): bit-packed XNOR-popcount kernels against float convolutions (prints numbers).

1. every binary 3x3 conv of the refiner at the given plan and patch: the packed conv (TB fused into the packing,
   BN into the scale) against torch's float conv of the same shape on ±1 inputs (what the simulated path runs);
2. one refiner step (eval, no autograd): packed binary, simulated binary, real-valued twin, and the segmentor's
   forward for scale; the packed step's largest deviation from the simulated one.

    python benchmarks/packed_speed.py --dataset 902 --patch 256 256 --trainer nnUNetTrainerHiDiff --threads 1

Plans come from tests/data/plans (nnU-Net's default plans of the full datasets), weights are random with
non-trivial BN statistics. Medians of --repeats after one warm-up call. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from cost_ratios import PLANS  # noqa: E402
from refiner_speed import timeit  # noqa: E402


def build(trainer: str, dataset: str, patch, real: bool = False):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_hidiff.trainer_lookup import trainer_class

    _, plans_file, dj_file = PLANS[dataset]
    plans, dataset_json = json.loads(plans_file.read_text()), json.loads(dj_file.read_text())
    if patch:
        plans["configurations"]["2d"]["patch_size"] = list(patch)
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    k = pm.get_label_manager(dataset_json).num_segmentation_heads
    c = len(dataset_json["channel_names"])
    torch.manual_seed(0)
    cls = trainer_class(trainer)
    if real:  # the real-valued twin: same class, binary_refiner off
        cls = type(f"{trainer}_realTwin", (cls,), {"binary_refiner": False})
    net = cls.build_network_architecture(pm, cm, c, k, enable_deep_supervision=False).eval()
    with torch.no_grad():
        for m in net.refiner.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.normal_(0, 0.3)
    return net, torch.randn(1, c, *cm.patch_size, generator=torch.Generator().manual_seed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="902", choices=sorted(PLANS))
    parser.add_argument("--patch", type=int, nargs=2, default=None, help="patch size (default: the plan's)")
    parser.add_argument("--trainer", default="nnUNetTrainerHiDiff")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--isa", default=None, help="force a kernel: scalar, avx2 or avx512-vpopcntdq (default: the "
                                                    "best this CPU has)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nnunetv2_hidiff.networks import packed
    if args.isa:
        packed.set_isa(args.isa)
    from nnunetv2_hidiff.networks.blocks import RefinerBlock

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels: {packed.isa()}")
    net, x = build(args.trainer, args.dataset, args.patch)
    real, _ = build(args.trainer, args.dataset, args.patch, real=True)
    with torch.no_grad():
        seg = net.segment(x)
        p = torch.softmax(seg.logits, 1)
        y = torch.bernoulli(p, generator=torch.Generator().manual_seed(0))
        proj = net.refiner.project_features(seg.features)
        real_proj = real.refiner.project_features(real.segment(x).features)
        inputs = {}
        hooks = [m.register_forward_pre_hook(lambda m, a: (inputs.setdefault(m, a[0]), None)[1])
                 for m in net.refiner.modules() if isinstance(m, RefinerBlock)]
        net.packed = False
        net.refiner(x, y, p, 10, projected=proj)
        for h in hooks:
            h.remove()
        print(f"\n{args.dataset} patch {list(x.shape[2:])}, {args.trainer}: per binary conv, packed vs float conv "
              f"of the same shape on ±1 inputs")
        print(f"{'C_in → C_out':>14s} {'input':>11s} {'stride':>7s} {'float ms':>9s} {'packed ms':>10s} {'speed-up':>9s}")
        for blk, inp in inputs.items():
            conv = blk.conv
            pm1 = torch.where(inp > 0, 1.0, -1.0)
            w = conv.binary_weight()
            pc = blk.packed_conv()
            thr = torch.zeros(inp.shape[0], inp.shape[1])
            t_float = timeit(lambda: F.conv2d(pm1, w, None, conv.stride, conv.padding), args.repeats)
            t_packed = timeit(lambda: pc(inp, thr), args.repeats)
            print(f"{conv.in_channels:>6d} → {conv.out_channels:<5d} {'×'.join(map(str, inp.shape[2:])):>11s} "
                  f"{'×'.join(map(str, conv.stride)):>7s} {t_float * 1e3:9.2f} {t_packed * 1e3:10.2f} "
                  f"{t_float / t_packed:8.2f}x")
        step = {}
        outs = {}
        for name, network, projected, is_packed in (("binary, simulated", net, proj, False),
                                                    ("binary, packed", net, proj, True),
                                                    ("real-valued", real, real_proj, False)):
            network.packed = is_packed
            outs[name] = network.refiner(x, y, p, 10, projected=projected)
            step[name] = timeit(lambda: network.refiner(x, y, p, 10, projected=projected), args.repeats)
        t_seg = timeit(lambda: net.segment(x), args.repeats)
        print(f"\none refiner step (ε̂ logits), segmentor forward {t_seg * 1e3:.1f} ms:")
        for name, t in step.items():
            print(f"  {name:18s} {t * 1e3:9.1f} ms   packed is {t / step['binary, packed']:.2f}x faster")
        diff = (outs["binary, packed"] - outs["binary, simulated"]).abs().max().item()
        print(f"  packed vs simulated: max |Δ ε̂ logits| = {diff:.2e}")


if __name__ == "__main__":
    main()
