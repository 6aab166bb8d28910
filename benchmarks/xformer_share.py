"""How much of one packed refiner step the X-Former takes (issue 15: do the BX-Former's binary linears pay?).

Times the X-Former modules inside a packed refiner step with forward hooks (the trainer's network from a shipped
default plan, random weights, batch 1, eval), against the whole step. Packing the BX-Former's binary projections
could save at most this share.

    python benchmarks/xformer_share.py --dataset 902 --patch 256 256 --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from packed_speed import build  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="902", choices=["901", "902"])
    parser.add_argument("--patch", type=int, nargs=2, default=None, help="patch size (default: the plan's)")
    parser.add_argument("--trainer", default="nnUNetTrainerHiDiff")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nnunetv2_hidiff.networks import packed
    from nnunetv2_hidiff.networks.xformer import XFormer

    net, x = build(args.trainer, args.dataset, args.patch)
    spent = [0.0]
    xformers = [m for m in net.refiner.modules() if isinstance(m, XFormer)]
    for m in xformers:
        m.register_forward_pre_hook(lambda m, a: setattr(m, "_start", time.perf_counter()))
        m.register_forward_hook(lambda m, a, o: spent.__setitem__(0, spent[0] + time.perf_counter() - m._start))
    with torch.no_grad():
        seg = net.segment(x)
        p = torch.softmax(seg.logits, 1)
        y = torch.bernoulli(p, generator=torch.Generator().manual_seed(0))
        proj = net.refiner.project_features(seg.features)
        net.packed = True
        for _ in range(2):
            net.refiner(x, y, p, 10, projected=proj)
        spent[0] = 0.0
        start = time.perf_counter()
        for _ in range(args.repeats):
            net.refiner(x, y, p, 10, projected=proj)
        total = (time.perf_counter() - start) / args.repeats
    linear = sum(q.numel() for m in xformers for mod in m.modules() if isinstance(mod, torch.nn.Linear)
                 for q in mod.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels: {packed.isa()}; {args.dataset} "
          f"patch {list(x.shape[2:])}, {args.trainer}: packed refiner step {total * 1e3:.1f} ms (mean of "
          f"{args.repeats}), X-Former {spent[0] / args.repeats * 1e3:.1f} ms = {spent[0] / args.repeats / total:.1%}"
          f" of it ({len(xformers)} module(s), {linear} linear parameters)")


if __name__ == "__main__":
    main()
